// The initial copy: rows the legacy database had before walshiftd started, copied through the
// mappings under one snapshot while a workload keeps writing, then streamed; a kill -9 in the
// middle of the copy; a value the target rejects; and --dry-run counts.

#include <signal.h>

#include <fstream>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/test_paths.h"

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;

class CopyTest : public DaemonTest {
 protected:
  // accounts (160,000 rows) and orders (40,000 rows, each referencing an account) in the
  // legacy database; the new schema keeps the foreign key, so parents must be copied first.
  // accounts_v2 has sql: columns (multi-row statements), orders_v2 plain ones (COPY).
  void CreateSchemas() {
    Source(
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL);"
        "CREATE TABLE orders (id bigint PRIMARY KEY, account_id int NOT NULL REFERENCES accounts, "
        "amount numeric(12,2) NOT NULL);"
        "INSERT INTO accounts SELECT g, 'owner ' || g, g % 1000 FROM generate_series(1, 160000) g;"
        "INSERT INTO orders SELECT g, 1 + (g * 7) % 160000, g % 500 FROM generate_series(1, 40000) g;"
        "ANALYZE accounts; ANALYZE orders");
    Target(
        "CREATE TABLE accounts_v2 (account_id int PRIMARY KEY, owner text NOT NULL, balance_cents bigint NOT NULL);"
        "CREATE TABLE orders_v2 (order_id bigint PRIMARY KEY, "
        "account_id int NOT NULL REFERENCES accounts_v2 ON DELETE CASCADE, amount numeric(12,2) NOT NULL)");
  }

  std::string Config() {
    return WriteConfig(kOneTarget + R"(snapshot: {workers: 2, chunk_rows: 20000}
apply: {group_max_changes: 500}
mappings:
  - source: orders
    table: orders_v2
    key: [order_id]
    columns: {order_id: id, account_id: account_id, amount: amount}   # plain inserts: COPY FROM STDIN
  - source: accounts
    table: accounts_v2
    key: [account_id]
    columns: {account_id: id, owner: owner, balance_cents: {sql: "(balance * 100)::bigint"}}
)");
  }

  // Updates, inserts past the copied range, and deletes, on both tables, keeping the legacy
  // data consistent.
  std::unique_ptr<Subprocess> StartWorkload(int transactions) {
    std::string script = dir_ + "/workload.sql";
    std::ofstream(script) << "\\set a random(1, 170000)\n"
                             "\\set o random(1, 50000)\n"
                             "BEGIN;\n"
                             "INSERT INTO accounts VALUES (:a, 'new ' || :a, :a % 77) ON CONFLICT (id) DO UPDATE "
                             "SET balance = accounts.balance + 1, owner = accounts.owner || '+';\n"
                             "INSERT INTO orders VALUES (:o, :a, :o % 13) ON CONFLICT (id) DO UPDATE SET amount = "
                             "orders.amount + 1;\n"
                             "DELETE FROM orders WHERE id = :o + 7;\n"
                             // Another client may give the account an order meanwhile: then
                             // the foreign key refuses the delete, and the account stays.
                             "DO $$ BEGIN DELETE FROM accounts WHERE id = :a + 3 AND NOT EXISTS "
                             "(SELECT 1 FROM orders WHERE account_id = :a + 3); "
                             "EXCEPTION WHEN foreign_key_violation THEN NULL; END $$;\n"
                             "COMMIT;\n";
    // Clients lock accounts in random order: a deadlock is retried, as an application would.
    return StartPgbench({"-c", "3", "-j", "1", "-t", std::to_string(transactions), "--max-tries", "20", "-f", script});
  }

  // The target drifts behind walshift's back: rows lost and values changed.
  void InjectDrift() {
    Target(
        "SET session_replication_role = replica;"  // past the foreign key of orders_v2
        "DELETE FROM accounts_v2 WHERE account_id % 17 = 0;"
        "UPDATE accounts_v2 SET owner = 'drifted' WHERE account_id % 23 = 0");
  }

  absl::StatusOr<RunResult> Backfill(const std::string& config, const std::string& table) {
    SubprocessOptions o;
    o.argv = {BinaryPath("walshiftctl"), "backfill", "--config", config, "--table", table, "--wait", "600"};
    return Subprocess::Run(o, absl::Minutes(11));
  }

  // The first rows (by their first column) one side has and the other lacks or holds otherwise.
  static std::string Differences(const PgRows& expected, const PgRows& actual) {
    std::map<std::string, const std::vector<std::optional<std::string>>*> want, got;
    for (const auto& r : expected) want[r[0].value_or("NULL")] = &r;
    for (const auto& r : actual) got[r[0].value_or("NULL")] = &r;
    std::string out;
    int shown = 0;
    for (const auto& [k, r] : want) {
      auto it = got.find(k);
      if (it != got.end() && *it->second == *r) continue;
      absl::StrAppend(&out, "\n  key ", k, it == got.end() ? ": missing in the target" : ": differs in the target");
      if (++shown == 10) return out;
    }
    for (const auto& [k, r] : got) {
      if (want.count(k)) continue;
      absl::StrAppend(&out, "\n  key ", k, ": extra in the target");
      if (++shown == 10) return out;
    }
    return out;
  }

  void ExpectTargetExact() {
    PgRows expected = SourceRows("SELECT id::text, owner, (balance * 100)::bigint::text FROM accounts ORDER BY id");
    PgRows actual =
        TargetRows("SELECT account_id::text, owner, balance_cents::text FROM accounts_v2 ORDER BY account_id");
    EXPECT_GT(expected.size(), 150000u);
    EXPECT_EQ(actual.size(), expected.size());
    EXPECT_TRUE(actual == expected) << "accounts_v2 differs from the mapped source" << Differences(expected, actual);
    expected = SourceRows("SELECT id::text, account_id::text, amount::text FROM orders ORDER BY id");
    actual = TargetRows("SELECT order_id::text, account_id::text, amount::text FROM orders_v2 ORDER BY order_id");
    EXPECT_GT(expected.size(), 30000u);
    EXPECT_EQ(actual.size(), expected.size());
    EXPECT_TRUE(actual == expected) << "orders_v2 differs from the mapped source" << Differences(expected, actual)
                                    << "\n"
                                    << DaemonLog();
  }
};

TEST_F(CopyTest, ExistingRowsCopiedWhileTheSourceKeepsWriting) {
  CreateSchemas();
  auto workload = StartWorkload(3000);
  ASSERT_NE(workload, nullptr);
  ASSERT_TRUE(StartDaemon(Config()).ok());
  auto done = workload->Wait(absl::Seconds(300));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(300)).ok()) << DaemonLog();
  ExpectTargetExact();
  std::string log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("initial copy complete"));
  EXPECT_THAT(log, HasSubstr("public.accounts into target main: about 160000 rows, 8 chunks to copy"));
  EXPECT_THAT(
      log,
      HasSubstr("public.orders into target main: about 40000 rows, 2 chunks to copy, after 1 referenced table(s)"));
  // One snapshot for every range: the slot's own.
  EXPECT_EQ(TargetRows("SELECT count(*)::text, count(DISTINCT snapshot_lsn)::text FROM walshift.copy_chunk"),
            (PgRows{{"10", "1"}}));
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(CopyTest, KilledDuringTheCopyResumesAndEndsExact) {
  CreateSchemas();
  std::string config = Config();
  auto workload = StartWorkload(4000);
  ASSERT_NE(workload, nullptr);
  // Killed after the third finished range (of ten), while the workload writes.
  ASSERT_TRUE(StartDaemon(config, {{"WALSHIFT_CRASH_AT", "copy.after_chunk:3"}}).ok());
  auto st = daemon_->Wait(absl::Seconds(120));
  ASSERT_TRUE(st.ok());
  ASSERT_TRUE(st->signaled() && st->term_signal() == SIGKILL) << st->ToString() << "\n" << DaemonLog();
  PgRows kept = TargetRows("SELECT count(*)::text FROM walshift.copy_chunk");
  ASSERT_EQ(kept.size(), 1u);
  int64_t ranges_before = 0;
  ASSERT_TRUE(absl::SimpleAtoi(*kept[0][0], &ranges_before));
  EXPECT_GE(ranges_before, 3);
  EXPECT_LT(ranges_before, 10);
  EXPECT_TRUE(TargetRows("SELECT 1 FROM walshift.checkpoint").empty()) << "checkpoint before the copy finished";

  ASSERT_TRUE(StartDaemon(config).ok());
  auto done = workload->Wait(absl::Seconds(300));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(300)).ok()) << DaemonLog();
  ExpectTargetExact();
  std::string log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("done by an earlier run"));
  EXPECT_THAT(log, HasSubstr("temporary slot"));
  // The ranges of the first run kept their snapshot; the rest came from the second.
  EXPECT_EQ(TargetRows("SELECT count(DISTINCT snapshot_lsn)::text FROM walshift.copy_chunk"), (PgRows{{"2"}}));
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(CopyTest, BackfillOfOneTableWhileStreamingHealsDriftAndKeepsDeletesDeleted) {
  CreateSchemas();
  std::string config = Config();
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(300)).ok()) << DaemonLog();
  InjectDrift();
  auto workload = StartWorkload(3000);
  ASSERT_NE(workload, nullptr);
  auto r = Backfill(config, "accounts");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 0) << r->stdout_text << r->stderr_text << DaemonLog();
  EXPECT_THAT(r->stdout_text, HasSubstr("backfill of public.accounts requested at LSN"));
  EXPECT_THAT(r->stdout_text, HasSubstr("done"));
  auto done = workload->Wait(absl::Seconds(300));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(300)).ok()) << DaemonLog();
  ExpectTargetExact();
  EXPECT_THAT(DaemonLog(), HasSubstr("backfill of public.accounts: done"));
  EXPECT_EQ(TargetRows("SELECT state, (rows > 150000)::text FROM walshift.backfill"), (PgRows{{"done", "true"}}));

  // A table no mapping reads is refused by walshiftctl.
  r = Backfill(config, "public.nope");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status.exit_code(), 2);
  EXPECT_THAT(r->stderr_text, HasSubstr("no mapping of pipeline"));
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(CopyTest, BackfillChunkLostWithItsConnectionIsReadAgain) {
  CreateSchemas();
  std::string config = Config();
  // The connection drops after the third chunk was handed to the target and before it
  // committed: the pipeline retries from its checkpoint in the same process.
  ASSERT_TRUE(StartDaemon(config, {{"WALSHIFT_FAULT_AT", "pipeline.after_backfill_chunk:3"}}).ok());
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(300)).ok()) << DaemonLog();
  InjectDrift();
  auto r = Backfill(config, "accounts");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 0) << r->stdout_text << r->stderr_text << DaemonLog();
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(300)).ok()) << DaemonLog();
  ExpectTargetExact();
  std::string log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("fault point pipeline.after_backfill_chunk reached"));
  EXPECT_THAT(log, HasSubstr("backfill of public.accounts was under way; continuing"));
  EXPECT_THAT(log, HasSubstr("backfill of public.accounts: done"));
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(CopyTest, RejectedValueNamesTableAndKey) {
  Source(
      "CREATE TABLE items (id int PRIMARY KEY, code text);"
      "INSERT INTO items SELECT g, g::text FROM generate_series(1, 5000) g;"
      "UPDATE items SET code = 'not a number' WHERE id = 4242");
  Target("CREATE TABLE items (id int PRIMARY KEY, code int)");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + "mappings: [{source: items}]\n")).ok());
  auto st = daemon_->Wait(absl::Seconds(120));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->exit_code(), 1) << DaemonLog();
  std::string log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("initial copy of public.items into target main"));
  EXPECT_THAT(log, HasSubstr("key (id=4242)"));
  EXPECT_THAT(log, HasSubstr("column code"));
  // The value the server quotes is personal data until log.values says show.
  EXPECT_THAT(log, HasSubstr("invalid input syntax for type integer: (redacted)"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("not a number")));
}

TEST_F(CopyTest, DryRunCountsEqualRowsWrittenAfterwards) {
  Source(
      "CREATE TABLE posts (id int PRIMARY KEY, state text, body text);"
      "INSERT INTO posts SELECT g, CASE WHEN g % 3 = 0 THEN 'draft' ELSE 'live' END, 'post ' || g "
      "FROM generate_series(1, 30000) g");
  Target(
      "CREATE TABLE posts (id int PRIMARY KEY, state text, body text);"
      "CREATE TABLE live_posts (id int PRIMARY KEY, body text)");
  std::string config = WriteConfig(kOneTarget + R"(snapshot: {chunk_rows: 7000}
mappings:
  - {source: posts}
  - {source: posts, table: live_posts, key: [id], columns: {id: id, body: body}, filter: "state = 'live'"}
)");
  SubprocessOptions o;
  o.argv = {BinaryPath("walshiftd"), "--config", config, "--dry-run"};
  auto r = Subprocess::Run(o, absl::Minutes(2));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 0) << r->stdout_text << r->stderr_text;
  // "  upsert into public.live_posts    20000"
  auto count_of = [&](const std::string& what) -> int64_t {
    for (absl::string_view line : absl::StrSplit(r->stdout_text, '\n')) {
      if (!absl::StrContains(line, what)) continue;
      std::vector<absl::string_view> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
      int64_t n = -1;
      if (!words.empty() && absl::SimpleAtoi(words.back(), &n)) return n;
    }
    return -1;
  };
  int64_t all = count_of("upsert into public.posts"), live = count_of("upsert into public.live_posts");
  EXPECT_EQ(all, 30000) << r->stdout_text;
  EXPECT_EQ(live, 20000) << r->stdout_text;
  EXPECT_THAT(r->stdout_text, HasSubstr("public.posts -> target main: 30000 rows read, 0 mapping failures"));
  // Nothing was written, not even walshift's own tables or a slot.
  EXPECT_TRUE(TargetRows("SELECT 1 FROM posts UNION ALL SELECT 1 FROM live_posts").empty());
  EXPECT_TRUE(SourceRows("SELECT 1 FROM pg_replication_slots WHERE slot_name = '" + slot_ + "'").empty());

  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM posts"), (PgRows{{absl::StrCat(all)}}));
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM live_posts"), (PgRows{{absl::StrCat(live)}}));
  EXPECT_TRUE(StopDaemon().success());
}

}  // namespace
}  // namespace walshift::testing
