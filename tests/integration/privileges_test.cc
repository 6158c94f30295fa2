// walshiftd as the least-privileged roles the README's "Privileges" section creates, never as
// a superuser: `--check` names each privilege a role lacks with the statement that grants it,
// and the roles made by that section's SQL run copy, streaming, heartbeats, backfill and verify.

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/test_paths.h"

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class PrivilegesTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    source_role_ = absl::StrCat("src_", pipeline_).substr(0, 60);
    target_role_ = absl::StrCat("dst_", pipeline_).substr(0, 60);
    Source(
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2), note text);"
        "CREATE TABLE orders (id int PRIMARY KEY, account_id int NOT NULL, amount numeric(12,2));"
        "INSERT INTO accounts SELECT g, 'owner ' || g, g * 1.5, NULL FROM generate_series(1, 200) g;"
        "INSERT INTO orders SELECT g, 1 + g % 200, g FROM generate_series(1, 400) g");
    Target(
        "CREATE TABLE accounts_v2 (account_id int PRIMARY KEY, holder text NOT NULL, balance numeric(12,2), note text,"
        "  orders jsonb NOT NULL DEFAULT '[]');"
        "CREATE INDEX ON accounts_v2 USING gin (orders jsonb_path_ops) WITH (fastupdate = off)");
  }
  void TearDown() override {
    DaemonTest::TearDown();
    // Roles are the cluster's: gone with what they own and were granted in this test's databases.
    (void)source_cluster_->Exec("postgres", absl::StrCat("DROP ROLE IF EXISTS ", source_role_));
    (void)target_cluster_->Exec("postgres", absl::StrCat("DROP ROLE IF EXISTS ", target_role_));
  }
  // The config, connecting as the test's roles.
  std::string RolesConfig() {
    std::string src = absl::StrReplaceAll(source_cluster_->Dsn(source_db_), {{"user=walshift", "user=" + source_role_}});
    std::string dst = absl::StrReplaceAll(target_cluster_->Dsn(target_db_), {{"user=walshift", "user=" + target_role_}});
    return WriteConfig(absl::StrCat(R"(
pipeline: {PIPELINE}
source: {dsn: ")", src, R"("}
targets: [{name: main, dsn: ")", dst, R"("}]
status: {listen: "127.0.0.1:0"}
monitor: {heartbeat_interval_s: 1}
verify: {enabled: true, interval_s: 5}
mappings:
  - source: accounts
    table: accounts_v2
    columns: {account_id: id, holder: owner, balance: balance, note: note}
  - source: orders
    module: json_array
    table: accounts_v2
    parent_key: {account_id: account_id}
    column: orders
    element: {id: id, amount: amount}
    element_key: [id]
    owner: accounts
)"));
  }
  RunResult Check(const std::string& config) { return RunWalshiftd({"--config", config, "--check"}); }
  std::string source_role_, target_role_;
};

// The role a user first tries (REPLICATION and SELECT on the source, a login on the target):
// every privilege it lacks is named, with the statement that grants it.
TEST_F(PrivilegesTest, CheckNamesEachMissingPrivilegeWithTheStatementThatGrantsIt) {
  Source(absl::StrCat("CREATE ROLE ", source_role_, " LOGIN REPLICATION; GRANT SELECT ON accounts TO ", source_role_));
  Target(absl::StrCat("CREATE ROLE ", target_role_, " LOGIN"));
  std::string config = RolesConfig();
  RunResult r = Check(config);
  std::string out = r.stdout_text + r.stderr_text;
  EXPECT_EQ(r.status.exit_code(), 2) << out;
  EXPECT_THAT(out, HasSubstr(absl::StrCat("GRANT SELECT ON public.orders TO ", source_role_)));
  EXPECT_THAT(out, HasSubstr(absl::StrCat("the publication walshift_", pipeline_, " does not exist, and role ",
                                          source_role_, " cannot create it")));
  EXPECT_THAT(out, HasSubstr(absl::StrCat("Have the owner create it: CREATE PUBLICATION walshift_", pipeline_,
                                          " FOR TABLE public.accounts, public.orders")));
  EXPECT_THAT(out, HasSubstr(absl::StrCat("CREATE SCHEMA walshift AUTHORIZATION ", target_role_)));
  EXPECT_THAT(out, HasSubstr(absl::StrCat("GRANT SELECT, INSERT, UPDATE, DELETE ON public.accounts_v2 TO ", target_role_)));
  EXPECT_THAT(out, Not(HasSubstr("REPLICATION attribute")));

  // Without REPLICATION, that is named too.
  Source(absl::StrCat("ALTER ROLE ", source_role_, " NOREPLICATION"));
  r = Check(config);
  EXPECT_EQ(r.status.exit_code(), 2);
  EXPECT_THAT(r.stdout_text + r.stderr_text, HasSubstr(absl::StrCat("ALTER ROLE ", source_role_, " REPLICATION")));

  // State tables another role made, granted in part: each missing privilege counts.
  Target(absl::StrCat("CREATE SCHEMA walshift; CREATE TABLE walshift.checkpoint (pipeline text PRIMARY KEY);"
                      "GRANT USAGE ON SCHEMA walshift TO ", target_role_, ";"
                      "GRANT SELECT ON walshift.checkpoint TO ", target_role_));
  r = Check(config);
  EXPECT_THAT(r.stdout_text + r.stderr_text,
              HasSubstr("cannot read and write walshift's state tables walshift.checkpoint (another role created them)"));
  EXPECT_THAT(r.stdout_text + r.stderr_text,
              HasSubstr(absl::StrCat("cannot create walshift's state tables (none exist yet) in the schema walshift: "
                                     "GRANT CREATE ON SCHEMA walshift TO ",
                                     target_role_)));

  // A publication that lacks a mapped table, owned by another role: adding it takes its owner.
  Source(absl::StrCat("CREATE PUBLICATION walshift_", pipeline_, " FOR TABLE accounts"));
  r = Check(config);
  EXPECT_THAT(r.stdout_text + r.stderr_text,
              HasSubstr(absl::StrCat("as their owner run ALTER PUBLICATION walshift_", pipeline_,
                                     " ADD TABLE public.orders")));
}

// The README's least-privileged roles, pasted: walshiftd passes --check and runs the whole
// migration as them.
TEST_F(PrivilegesTest, LeastPrivilegedRolesRunCopyStreamingHeartbeatsBackfillAndVerify) {
  // README "Privileges": on the source, as the tables' owner.
  Source(absl::StrReplaceAll(
      "CREATE ROLE walshift_source LOGIN REPLICATION;"
      "GRANT USAGE ON SCHEMA public TO walshift_source;"
      "GRANT SELECT ON public.accounts, public.orders TO walshift_source;"
      "CREATE PUBLICATION walshift_PIPELINE FOR TABLE public.accounts, public.orders "
      "  WITH (publish_via_partition_root = true)",
      {{"walshift_source", source_role_}, {"PIPELINE", pipeline_}}));
  // On the target, as the tables' owner.
  Target(absl::StrReplaceAll(
      "CREATE ROLE walshift_apply LOGIN;"
      "CREATE SCHEMA walshift AUTHORIZATION walshift_apply;"
      "GRANT USAGE ON SCHEMA public TO walshift_apply;"
      "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.accounts_v2 TO walshift_apply",
      {{"walshift_apply", target_role_}}));
  std::string config = RolesConfig();
  RunResult check = Check(config);
  EXPECT_EQ(check.status.exit_code(), 0) << check.stdout_text << check.stderr_text;

  ASSERT_TRUE(StartDaemon(config).ok());  // copies the existing rows
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source(
      "INSERT INTO accounts VALUES (201, 'new', 1, 'x');"
      "UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0;"
      "INSERT INTO orders VALUES (401, 201, 5);"
      "UPDATE orders SET account_id = 3 WHERE id = 10;"
      "DELETE FROM orders WHERE id % 11 = 0;"
      "DELETE FROM accounts WHERE id = 200");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  // Heartbeats: an idle source still moves the slot on.
  std::string before = source_cluster_->QueryValue(source_db_, absl::StrCat("SELECT confirmed_flush_lsn::text FROM "
                                                                           "pg_replication_slots WHERE slot_name = '",
                                                                           slot_, "'"))
                           .value_or("");
  bool moved = false;
  for (int i = 0; i < 100 && !moved; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    moved = source_cluster_
                ->QueryValue(source_db_, absl::StrCat("SELECT (confirmed_flush_lsn > '", before,
                                                      "')::text FROM pg_replication_slots WHERE slot_name = '", slot_,
                                                      "'"))
                .value_or("") == "true";
  }
  EXPECT_TRUE(moved) << DaemonLog();

  SubprocessOptions o;
  o.argv = {BinaryPath("walshiftctl"), "backfill", "--config", config, "--table", "public.accounts", "--wait", "300"};
  auto backfill = Subprocess::Run(o, absl::Minutes(6));
  ASSERT_TRUE(backfill.ok()) << backfill.status();
  EXPECT_EQ(backfill->status.exit_code(), 0) << backfill->stdout_text << backfill->stderr_text << DaemonLog();
  RunResult verify = Walshiftctl({"verify", "--config", config});
  EXPECT_EQ(verify.status.exit_code(), 0) << verify.stdout_text << verify.stderr_text;

  ASSERT_TRUE(StopDaemon().success()) << DaemonLog();
  ASSERT_TRUE(StartDaemon(config).ok());  // a restart as the same roles
  Source("UPDATE accounts SET note = 'after restart' WHERE id = 1");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT account_id::text, holder, balance::text, coalesce(note, '-'), "
                       "(SELECT coalesce(string_agg((e->>'id') || ':' || (e->>'amount'), ',' ORDER BY (e->>'id')::int), '')"
                       "   FROM jsonb_array_elements(orders) e) FROM accounts_v2 ORDER BY 1"),
            SourceRows("SELECT a.id::text, a.owner, a.balance::text, coalesce(a.note, '-'), "
                       "(SELECT coalesce(string_agg(o.id || ':' || o.amount, ',' ORDER BY o.id), '') FROM orders o "
                       "   WHERE o.account_id = a.id) FROM accounts a ORDER BY 1"));
  EXPECT_THAT(DaemonLog(), Not(HasSubstr("permission denied")));
  EXPECT_THAT(DaemonLog(), Not(HasSubstr("42501")));
  EXPECT_TRUE(StopDaemon().success());
}

}  // namespace
}  // namespace walshift::testing
