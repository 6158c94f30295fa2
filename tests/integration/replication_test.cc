// End to end on real PostgreSQL: walshiftd streams a legacy database through the `columns`
// module into a target database.

#include <fstream>
#include <signal.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class ReplicationTest : public DaemonTest {};

const std::string kOrdersConfig = kOneTarget + R"(apply: {group_max_ms: 50}
mappings:
  - source: public.orders
    target: main
    module: columns
    table: app.orders_v2
    key: [order_id]
    columns:
      order_id: id
      customer: customer_id
      total_cents: {sql: "round(amount * 100)::bigint"}
      state: status
      origin: {const: legacy}
)";

TEST_F(ReplicationTest, InsertUpdateDeleteTruncateWithSqlAndConst) {
  Source("CREATE TABLE orders (id int PRIMARY KEY, customer_id text, amount numeric(10,2), status text)");
  Target(
      "CREATE SCHEMA app; CREATE TABLE app.orders_v2 (order_id int PRIMARY KEY, customer text, "
      "total_cents bigint, state text, origin text, untouched text DEFAULT 'kept')");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOrdersConfig)).ok());
  // The slot exists once the daemon has connected; changes before that are not streamed.
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();

  Source("INSERT INTO orders SELECT g, 'c' || g, g * 1.25, 'new' FROM generate_series(1, 100) g");
  Source("UPDATE orders SET status = 'paid', amount = amount + 1 WHERE id % 3 = 0");
  Source("DELETE FROM orders WHERE id % 10 = 0");
  Source("UPDATE orders SET id = id + 1000 WHERE id = 7");  // a primary key update
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();

  PgRows expected = SourceRows(
      "SELECT id::text, customer_id, round(amount * 100)::bigint::text, status, 'legacy', 'kept' "
      "FROM orders ORDER BY id");
  PgRows actual = TargetRows(
      "SELECT order_id::text, customer, total_cents::text, state, origin, untouched FROM app.orders_v2 "
      "ORDER BY order_id");
  EXPECT_EQ(actual.size(), 90u);
  EXPECT_EQ(actual, expected);
  EXPECT_TRUE(TargetRows("SELECT 1 FROM app.orders_v2 WHERE order_id = 7").empty());

  Source("TRUNCATE orders");
  Source("INSERT INTO orders VALUES (1, 'x', 1, 'new')");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT order_id::text FROM app.orders_v2"), (PgRows{{"1"}}));

  ExitStatus st = StopDaemon();
  EXPECT_TRUE(st.success()) << st.ToString();
  // Final feedback: the slot is confirmed up to the checkpoint, never past it.
  auto confirmed = SourceRows(absl::StrCat(
      "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'walshift_", pipeline_, "'"));
  auto checkpoint =
      TargetRows(absl::StrCat("SELECT commit_lsn::text FROM walshift.checkpoint WHERE pipeline = '", pipeline_, "'"));
  ASSERT_EQ(confirmed.size(), 1u);
  ASSERT_EQ(checkpoint.size(), 1u);
  EXPECT_EQ(confirmed[0][0], checkpoint[0][0]);
}

TEST_F(ReplicationTest, TruncateIgnoredWhenConfigured) {
  Source("CREATE TABLE t (id int PRIMARY KEY, v text)");
  Target("CREATE TABLE t (id int PRIMARY KEY, v text)");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + R"(mappings: [{source: t, truncate: ignore}]
)"))
                  .ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO t VALUES (1, 'a'), (2, 'b')");
  Source("TRUNCATE t");
  Source("INSERT INTO t VALUES (3, 'c')");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT id::text FROM t ORDER BY id"), (PgRows{{"1"}, {"2"}, {"3"}}));
}

// pgoutput announces a relation again whenever its cache entry is invalidated (ANALYZE, a
// statistics target, a new column elsewhere): walshiftd binds the new version while operations
// of the old one still wait in the open group, unflushed.
TEST_F(ReplicationTest, RelationAnnouncedAgainMidGroup) {
  Source("CREATE TABLE t (id int PRIMARY KEY, v text)");
  Target("CREATE TABLE t (id int PRIMARY KEY, v text)");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + R"(apply: {group_max_ms: 5000}
mappings: [{source: t}]
)"))
                  .ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  for (int round = 0; round < 5; ++round) {
    Source(absl::StrCat("BEGIN; INSERT INTO t SELECT g, 'a' FROM generate_series(", round * 1000 + 1, ", ",
                        round * 1000 + 500, ") g; ALTER TABLE t ALTER COLUMN v SET STATISTICS ", 100 + round,
                        "; INSERT INTO t SELECT g, 'b' FROM generate_series(", round * 1000 + 501, ", ",
                        round * 1000 + 1000, ") g; COMMIT"));
    Source("ANALYZE t");
  }
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT count(*)::text, count(*) FILTER (WHERE v = 'b')::text FROM t"),
            (PgRows{{"5000", "2500"}}));
  EXPECT_THAT(DaemonLog(), ::testing::HasSubstr("relation version 3"));  // announced again, bound again
}

TEST_F(ReplicationTest, EveryTypeRoundTripsThroughIdentity) {
  const char* ddl_types = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');";
  const char* cols =
      "(id int PRIMARY KEY, c_small smallint, c_int int, c_big bigint, c_num numeric, c_num_p numeric(40,20), "
      "c_real real, c_double double precision, c_text text, c_varchar varchar(20), c_char char(5), c_bool bool, "
      "c_date date, c_time time, c_ts timestamp, c_tstz timestamptz, c_interval interval, c_uuid uuid, "
      "c_json json, c_jsonb jsonb, c_bytea bytea, c_ints int[], c_texts text[], c_mood mood, c_long text)";
  Source(absl::StrCat(ddl_types, "CREATE TABLE types ", cols));
  Target(absl::StrCat(ddl_types, "CREATE TABLE types ", cols));
  // The same enum column into text in a second target table.
  Target("CREATE TABLE moods (id int PRIMARY KEY, mood text)");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + R"(mappings:
  - {source: public.types}
  - {source: public.types, table: public.moods, key: [id], columns: {id: id, mood: c_mood}}
)"))
                  .ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source(R"(SET TIME ZONE 'America/New_York';
INSERT INTO types VALUES
 (1, -32768, -2147483648, -9223372036854775808, 'NaN', 12345678901234567890.12345678901234567890,
  'Infinity', '-Infinity', '', '', '', true, '2024-02-29', '23:59:59.999999', '1999-12-31 23:59:59.5',
  '2024-03-10 02:30:00-05', '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{"a": [1, 2, {"b": null}]}', '{"z": 1, "a": "ü"}', '\x00ff10', '{1,NULL,3}', '{"a b","c,d",NULL,"é"}',
  'happy', repeat('x', 3000)),
 (2, 32767, 2147483647, 9223372036854775807, 3.14159265358979323846264338327950288419716939937510,
  -0.0000000000000000001, 3.4028235e38, 1.7976931348623157e308, 'Grüße, 世界 — ☃', 'varchar', 'ch', false,
  '0001-01-01', '00:00', 'infinity', '-infinity', '-1 days -00:00:01', '00000000-0000-0000-0000-000000000000',
  '[]', 'null', '', '{}', '{}', 'sad', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 200) g)),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL))");
  Source("UPDATE types SET c_text = 'tab\there\nnewline \\ backslash ''quote''' WHERE id = 3");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  const char* q = "SELECT t::text FROM types t ORDER BY id";
  PgRows src = SourceRows(q);
  ASSERT_EQ(src.size(), 3u);
  EXPECT_EQ(TargetRows(q), src);
  EXPECT_EQ(TargetRows("SELECT id::text, mood FROM moods ORDER BY id"),
            (PgRows{{"1", "happy"}, {"2", "sad"}, {"3", std::nullopt}}));
}

TEST_F(ReplicationTest, UnchangedToastValueIsKeptOnUpdate) {
  Source("CREATE TABLE docs (id int PRIMARY KEY, title text, body text)");
  Target("CREATE TABLE docs (id int PRIMARY KEY, title text, body text)");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + R"(mappings: [{source: docs}]
)"))
                  .ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  // Incompressible, so it is stored out of line and an update of title leaves it unchanged.
  Source("INSERT INTO docs SELECT 1, 'v1', string_agg(md5(random()::text), '') FROM generate_series(1, 2000)");
  Source("UPDATE docs SET title = 'v2' WHERE id = 1");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  const char* q = "SELECT id::text, title, md5(body), length(body)::text FROM docs";
  PgRows src = SourceRows(q);
  ASSERT_EQ(src.size(), 1u);
  EXPECT_EQ((*src[0][3]), "64000");
  EXPECT_EQ(TargetRows(q), src);
}

TEST_F(ReplicationTest, LargeTransactionOf200kRows) {
  Source("CREATE TABLE big (id bigint PRIMARY KEY, payload text, n int)");
  Target("CREATE TABLE big (id bigint PRIMARY KEY, payload text, n int)");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + R"(mappings: [{source: big}]
)"))
                  .ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO big SELECT g, md5(g::text), g % 97 FROM generate_series(1, 200000) g");
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(300)).ok()) << DaemonLog();
  const char* q = "SELECT count(*)::text, sum(n)::text, md5(string_agg(payload, ',' ORDER BY id)) FROM big";
  EXPECT_EQ(TargetRows(q), SourceRows(q));
}

TEST_F(ReplicationTest, SameKeyChangesInOneGroupKeepCommitOrder) {
  Source("CREATE TABLE kv (k int PRIMARY KEY, v text, u text)");
  Target("CREATE TABLE kv (k int PRIMARY KEY, v text, u text UNIQUE)");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + R"(apply: {group_max_ms: 5000}
mappings: [{source: kv}]
)"))
                  .ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  // Upserts of one key repeat inside a batch, deletes and re-inserts interleave, and a unique
  // value moves from one key to another: the target must end exactly as the source.
  Source(R"(BEGIN;
INSERT INTO kv SELECT g, 'a' || g, 'u' || g FROM generate_series(1, 1000) g;
UPDATE kv SET v = v || 'b' WHERE k % 2 = 0;
DELETE FROM kv WHERE k % 3 = 0;
INSERT INTO kv SELECT g, 'again' || g, 'w' || g FROM generate_series(3, 1000, 3) g;
UPDATE kv SET u = 'moved' WHERE k = 7;
UPDATE kv SET u = 'u7' WHERE k = 8;
UPDATE kv SET k = k + 5000 WHERE k % 10 = 1;
COMMIT)");
  // A key repeats after another row gave up the unique value it takes: merging the two
  // upserts of key 4 into one row would violate the target's UNIQUE (u).
  Source(
      "BEGIN; UPDATE kv SET v = 'x' WHERE k = 4; UPDATE kv SET u = 'free' WHERE k = 5; "
      "UPDATE kv SET u = 'u5' WHERE k = 4; COMMIT");
  for (int i = 0; i < 50; ++i) Source(absl::StrCat("UPDATE kv SET v = 'loop", i, "' WHERE k = 2"));
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  const char* q = "SELECT k::text, v, u FROM kv ORDER BY k";
  PgRows src = SourceRows(q);
  EXPECT_EQ(src.size(), 1000u);
  EXPECT_TRUE(TargetRows(q) == src);
  // Right the first time, not healed by replaying a failed group.
  EXPECT_THAT(DaemonLog(), ::testing::Not(HasSubstr("replaying")));
}

TEST_F(ReplicationTest, LostConnectionsReconnectAndResume) {
  Source("CREATE TABLE t (id int PRIMARY KEY, n int)");
  Target("CREATE TABLE t (id int PRIMARY KEY, n int)");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + R"(apply: {reconnect_initial_ms: 50, reconnect_max_ms: 500}
mappings: [{source: t}]
)"))
                  .ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  for (int round = 0; round < 3; ++round) {
    Source(absl::StrCat("INSERT INTO t SELECT g, ", round, " FROM generate_series(", round * 1000 + 1, ", ",
                        round * 1000 + 1000, ") g"));
    // Cut the target connections, then the source's walsender.
    Target("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'walshiftd%'");
    Source("UPDATE t SET n = n + 10");
    Source(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE active_pid IS NOT NULL "
        "AND slot_name = '" +
        slot_ + "'");
    Source(absl::StrCat("DELETE FROM t WHERE id % 7 = ", round));
  }
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  const char* q = "SELECT id::text, n::text FROM t ORDER BY id";
  PgRows src = SourceRows(q);
  EXPECT_GT(src.size(), 2000u);
  EXPECT_TRUE(TargetRows(q) == src);
  EXPECT_TRUE(daemon_->Running());
  EXPECT_THAT(DaemonLog(), HasSubstr("retrying in"));
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(ReplicationTest, RoutesToTwoTargetsAndConfirmsTheLowerCheckpoint) {
  ASSERT_TRUE(target_cluster_->CreateDatabase(target_db_ + "_b").ok());
  std::string second = target_cluster_->Dsn(target_db_ + "_b");
  Source("CREATE TABLE users (id int PRIMARY KEY, email text); CREATE TABLE carts (id int PRIMARY KEY, user_id int)");
  Target("CREATE TABLE users (id int PRIMARY KEY, email text)");
  ASSERT_TRUE(target_cluster_->Exec(target_db_ + "_b", "CREATE TABLE carts (id int PRIMARY KEY, user_id int)").ok());
  ASSERT_TRUE(StartDaemon(WriteConfig(absl::StrCat(R"(
pipeline: {PIPELINE}
targets: [{name: auth, dsn: "{TARGET}"}, {name: cart, dsn: ")",
                                                   second, R"("}]
source: {dsn: "{SOURCE}", feedback_interval_s: 1}
mappings:
  - {source: users, target: auth}
  - {source: carts, target: cart}
)")))
                  .ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 100) g");
  Source("INSERT INTO carts SELECT g, g FROM generate_series(1, 50) g");
  Source("DELETE FROM users WHERE id > 90");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  // The fence covers the first target; the second commits right after it.
  std::string cp_query = "SELECT commit_lsn::text FROM walshift.checkpoint WHERE pipeline = '" + pipeline_ + "'";
  auto cp_a = target_cluster_->QueryValue(target_db_, cp_query);
  ASSERT_TRUE(cp_a.ok());
  // Compared as pg_lsn: a later group may already have moved both on.
  std::string b_reached = "SELECT coalesce((SELECT commit_lsn >= '" + *cp_a +
                          "'::pg_lsn FROM walshift.checkpoint WHERE pipeline = '" + pipeline_ + "'), false)::text";
  for (int i = 0; i < 200; ++i) {
    auto b = target_cluster_->QueryValue(target_db_ + "_b", b_reached);
    if (b.ok() && *b == "true") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM users"), (PgRows{{"90"}}));
  auto carts = target_cluster_->Query(target_db_ + "_b", "SELECT count(*)::text FROM carts");
  ASSERT_TRUE(carts.ok());
  EXPECT_EQ(*carts, (PgRows{{"50"}}));
  // Each target keeps its own checkpoint; both advance even when a group has nothing for one.
  EXPECT_EQ(target_cluster_->QueryValue(target_db_ + "_b", b_reached).value_or(""), "true");
  auto cp_b = target_cluster_->QueryValue(target_db_ + "_b", cp_query);
  ASSERT_TRUE(cp_b.ok());

  // Hold the cart target's checkpoint row: its group cannot commit, so the slot must not be
  // confirmed past the cart checkpoint although the auth target moves on.
  std::string cart_dsn = second;
  auto lock = PgCluster::Binary("psql");
  ASSERT_TRUE(lock.ok());
  SubprocessOptions holder;
  holder.argv = {*lock,    "-X", "-q",
                 cart_dsn, "-c", "BEGIN; SELECT 1 FROM walshift.checkpoint FOR UPDATE; SELECT pg_sleep(4); COMMIT;"};
  auto held = Subprocess::Start(holder);
  ASSERT_TRUE(held.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  Source("INSERT INTO users VALUES (1000, 'late'); INSERT INTO carts VALUES (1000, 1000)");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto confirmed = SourceRows("SELECT (confirmed_flush_lsn <= '" + *cp_b +
                              "')::text FROM pg_replication_slots WHERE slot_name = '" + slot_ + "'");
  ASSERT_EQ(confirmed.size(), 1u);
  EXPECT_EQ(*confirmed[0][0], "true") << "the slot moved past a checkpoint that was not durable";
  ASSERT_TRUE((*held)->Wait(absl::Seconds(30)).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  for (int i = 0; i < 200; ++i) {
    carts = target_cluster_->Query(target_db_ + "_b", "SELECT count(*)::text FROM carts");
    if (carts.ok() && *carts == PgRows{{"51"}}) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(*carts, (PgRows{{"51"}}));
}

TEST_F(ReplicationTest, NewRowsAlreadyInTheTargetAreUpserted) {
  Source("CREATE TABLE t (id int PRIMARY KEY, v text)");
  Target("CREATE TABLE t (id int PRIMARY KEY, v text)");
  // Rows the target already has (copied earlier, or drift): source inserts of the same keys.
  Target("INSERT INTO t SELECT g, 'stale' FROM generate_series(1, 2000, 7) g");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + "mappings: [{source: t}]\n")).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO t SELECT g, 'fresh' || g FROM generate_series(1, 2000) g");
  Source("INSERT INTO t SELECT g, 'later' || g FROM generate_series(2001, 3000) g");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  const char* q = "SELECT id::text, v FROM t ORDER BY id";
  PgRows src = SourceRows(q);
  EXPECT_EQ(src.size(), 3000u);
  EXPECT_TRUE(TargetRows(q) == src);
  EXPECT_THAT(DaemonLog(), HasSubstr("replaying with upserts"));
  EXPECT_TRUE(daemon_->Running());
}

TEST_F(ReplicationTest, RejectedValueStopsNamingTableKeyLsnAndColumn) {
  Source("CREATE TABLE accounts (id int PRIMARY KEY, code text, balance int)");
  Target("CREATE TABLE accounts (id int PRIMARY KEY, code varchar(3), balance int CHECK (balance >= 0))");
  std::string config = WriteConfig(kOneTarget + "mappings: [{source: accounts}]\n");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO accounts VALUES (1, 'abc', 5)");
  Source("INSERT INTO accounts VALUES (42, 'toolong', 5)");
  auto st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->exit_code(), 1) << st->ToString();
  std::string log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("public.accounts"));
  EXPECT_THAT(log, HasSubstr("key (id=42)"));
  EXPECT_THAT(log, HasSubstr("at LSN "));
  EXPECT_THAT(log, HasSubstr("column code"));
  EXPECT_THAT(log, HasSubstr("too long"));
  // Row values stay out of the log by default (log.values: redact); the key names the row.
  EXPECT_THAT(log, HasSubstr("values redacted (log.values: redact)"));
  EXPECT_THAT(log, Not(HasSubstr("toolong")));
  // Shown where the config says so.
  config = WriteConfig(kOneTarget + "log: {values: show}\nmappings: [{source: accounts}]\n");
  // The good row before it is applied; nothing after the failing transaction is.
  EXPECT_EQ(TargetRows("SELECT id::text FROM accounts"), (PgRows{{"1"}}));

  // A restart fails the same way instead of skipping the row. The row is alone in its batch
  // and goes out as a one-row statement: the first report, made before the transaction is
  // isolated, names it too.
  ASSERT_TRUE(StartDaemon(config).ok());
  st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->exit_code(), 1);
  EXPECT_THAT(DaemonLog(), HasSubstr("key (id=42), column code (character varying(3), from code): ERROR:  value too "
                                     "long for type character varying(3) (SQLSTATE 22001); values (code=toolong, "
                                     "balance=5); replaying one transaction at a time"));

  // Fixing the target lets it continue; a check violation names the constraint.
  Target("ALTER TABLE accounts ALTER COLUMN code TYPE text");
  Source("INSERT INTO accounts VALUES (43, 'neg', -1)");
  ASSERT_TRUE(StartDaemon(config).ok());
  st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->exit_code(), 1);
  log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("key (id=43)"));
  EXPECT_THAT(log, HasSubstr("constraint accounts_balance_check"));
  EXPECT_EQ(TargetRows("SELECT id::text FROM accounts ORDER BY id"), (PgRows{{"1"}, {"42"}}));
}

// A walshiftd that stopped on an error leaves it in the target: `walshiftctl status` reports the
// pipeline as stopped (exit 1) with the error, until walshiftd runs again and applies past it.
TEST_F(ReplicationTest, StatusReportsAPipelineStoppedOnAnErrorUntilItMovesAgain) {
  Source("CREATE TABLE accounts (id int PRIMARY KEY, code text, balance int)");
  Target("CREATE TABLE accounts (id int PRIMARY KEY, code varchar(3), balance int)");
  std::string config = WriteConfig(kOneTarget + "mappings: [{source: accounts}]\n");
  ASSERT_TRUE(StartDaemon(config).ok());
  Source("INSERT INTO accounts VALUES (1, 'abc', 5)");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  RunResult status = Walshiftctl({"status", "--config", config});
  EXPECT_EQ(status.status.exit_code(), 0) << status.stdout_text << status.stderr_text;
  Source("INSERT INTO accounts VALUES (42, 'toolong', 5)");
  auto st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->exit_code(), 1) << st->ToString();

  status = Walshiftctl({"status", "--config", config});
  EXPECT_EQ(status.status.exit_code(), 1) << status.stdout_text;
  EXPECT_THAT(status.stdout_text, HasSubstr("!! STOPPED: walshiftd stopped on an error at "));
  EXPECT_THAT(status.stdout_text, HasSubstr("(exit 1) at LSN "));
  EXPECT_THAT(status.stdout_text, HasSubstr("public.accounts"));
  EXPECT_THAT(status.stdout_text, HasSubstr("key (id=42)"));
  EXPECT_THAT(status.stdout_text, HasSubstr("value too long"));
  EXPECT_THAT(status.stdout_text, HasSubstr("STOPPED "));  // the target's row
  RunResult json = Walshiftctl({"status", "--config", config, "--json"});
  EXPECT_EQ(json.status.exit_code(), 1);
  EXPECT_THAT(json.stdout_text, HasSubstr("\"stopped_on_error\":{\"at\":"));
  EXPECT_THAT(json.stdout_text, HasSubstr("\"exit_code\":1"));
  // Kept across runs: a walshiftd that fails again still reports it.
  ASSERT_TRUE(StartDaemon(config).ok());
  st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(Walshiftctl({"status", "--config", config}).status.exit_code(), 1);

  // Fixed, walshiftd applies past it, and the status is healthy again.
  Target("ALTER TABLE accounts ALTER COLUMN code TYPE text");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  status = Walshiftctl({"status", "--config", config});
  EXPECT_EQ(status.status.exit_code(), 0) << status.stdout_text;
  EXPECT_THAT(status.stdout_text, Not(HasSubstr("STOPPED")));
  EXPECT_TRUE(StopDaemon().success());
}

// Another pipeline's walshiftd on the address a config names: walshiftctl status does not show its
// status as this pipeline's.
TEST_F(ReplicationTest, StatusDoesNotTakeAnotherPipelinesEndpointForItsOwn) {
  Source("CREATE TABLE accounts (id int PRIMARY KEY)");
  Target("CREATE TABLE accounts (id int PRIMARY KEY)");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + "mappings: [{source: accounts}]\n")).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  int port = StatusPort();
  ASSERT_GT(port, 0);
  std::string other = absl::StrReplaceAll(kOneTarget, {{"{PIPELINE}", "another_pipeline"},
                                                       {"127.0.0.1:0", absl::StrCat("127.0.0.1:", port)},
                                                       {"{SOURCE}", source_cluster_->Dsn(source_db_)},
                                                       {"{TARGET}", target_cluster_->Dsn(target_db_)}});
  std::string path = dir_ + "/another.yaml";
  std::ofstream(path) << other << "mappings: [{source: accounts}]\n";
  RunResult status = Walshiftctl({"status", "--config", path});
  EXPECT_THAT(status.stdout_text, HasSubstr(absl::StrCat("the status endpoint at 127.0.0.1:", port, " serves pipeline ",
                                                         pipeline_, ", not another_pipeline; reading the databases "
                                                         "directly")));
  EXPECT_THAT(status.stdout_text, HasSubstr("pipeline another_pipeline"));
  EXPECT_TRUE(StopDaemon().success());
}

// A value the target rejects stops walshiftd naming the way on: walshiftctl skip leaves out
// exactly that one source transaction (recorded change by change in walshift.skipped), the
// transactions after it apply, the verifier sees what is missing, and once the target takes the
// value a backfill heals it.
TEST_F(ReplicationTest, SkipLeavesOutExactlyTheRejectedTransactionAndABackfillHealsIt) {
  Source("CREATE TABLE accounts (id int PRIMARY KEY, code text, balance int)");
  Target("CREATE TABLE accounts (id int PRIMARY KEY, code varchar(3), balance int)");
  std::string config = WriteConfig(kOneTarget + "mappings: [{source: accounts}]\n");
  ASSERT_TRUE(StartDaemon(config).ok());
  Source("INSERT INTO accounts VALUES (1, 'abc', 5)");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source(
      "BEGIN; INSERT INTO accounts VALUES (2, 'ok', 1); INSERT INTO accounts VALUES (42, 'toolong', 5);"
      "UPDATE accounts SET balance = 6 WHERE id = 1; COMMIT");
  Source("INSERT INTO accounts VALUES (3, 'xyz', 7)");
  auto st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(st->exit_code(), 1) << DaemonLog();
  std::string log = DaemonLog();
  const std::string hint = "walshiftctl skip --config <config> --lsn ";
  size_t at = log.find(hint);
  ASSERT_NE(at, std::string::npos) << log;
  std::string lsn = log.substr(at + hint.size(), log.find_first_of(", \n", at + hint.size()) - at - hint.size());

  // The stop recorded in the target names the same transaction.
  RunResult stopped = Walshiftctl({"status", "--config", config, "--json"});
  EXPECT_THAT(stopped.stdout_text, HasSubstr(absl::StrCat("\"lsn\":\"", lsn, "\"")));
  RunResult skip = Walshiftctl({"skip", "--config", config, "--lsn", lsn});
  EXPECT_EQ(skip.status.exit_code(), 0) << skip.stdout_text << skip.stderr_text;
  EXPECT_THAT(skip.stdout_text, HasSubstr(absl::StrCat("committed at ", lsn, " is skipped on main")));
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_THAT(DaemonLog(), HasSubstr(absl::StrCat("committed at LSN ", lsn, " (3 changes), as walshiftctl skip asked")));
  // Exactly that transaction is left out; the one after it is applied.
  EXPECT_EQ(TargetRows("SELECT id::text, code, balance::text FROM accounts ORDER BY id"),
            (PgRows{{"1", "abc", "5"}, {"3", "xyz", "7"}}));
  EXPECT_EQ(TargetRows("SELECT commit_lsn::text, source_table, operation, key FROM walshift.skipped ORDER BY seq"),
            (PgRows{{lsn, "public.accounts", "insert", "id=2"},
                    {lsn, "public.accounts", "insert", "id=42"},
                    {lsn, "public.accounts", "update", "id=1"}}));
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM walshift.settings WHERE name = 'skip_transaction'"),
            (PgRows{{"0"}}));
  // Applied past it: a second request has nothing to skip.
  EXPECT_EQ(Walshiftctl({"skip", "--config", config, "--lsn", lsn}).status.exit_code(), 1);

  RunResult verify = Walshiftctl({"verify", "--config", config});
  EXPECT_EQ(verify.status.exit_code(), 1);
  EXPECT_THAT(verify.stdout_text, HasSubstr("2 missing, 0 extra, 1 mismatched"));
  EXPECT_THAT(verify.stdout_text,
              HasSubstr(absl::StrCat("skipped: 3 changes of public.accounts left out by walshiftctl skip "
                                     "(transactions committed at ",
                                     lsn, ", listed in walshift.skipped)")));
  Target("ALTER TABLE accounts ALTER COLUMN code TYPE text");
  RunResult backfill = Walshiftctl({"backfill", "--config", config, "--table", "public.accounts", "--wait", "120"});
  EXPECT_EQ(backfill.status.exit_code(), 0) << backfill.stdout_text << backfill.stderr_text << DaemonLog();
  verify = Walshiftctl({"verify", "--config", config});
  EXPECT_EQ(verify.status.exit_code(), 0) << verify.stdout_text;
  const char* q = "SELECT id::text, code, balance::text FROM accounts ORDER BY id";
  EXPECT_EQ(TargetRows(q), SourceRows(q));
  EXPECT_TRUE(StopDaemon().success());
}

// Fencing: a walshiftd whose checkpoint another walshiftd has moved past (it was paused, or cut
// off, while the other took over) commits nothing more: its transaction fails with the
// checkpoint, data included, and it stops saying it is stale.
TEST_F(ReplicationTest, AStaleWriterCommitsNothingOnceAnotherMovedTheCheckpointPastIt) {
  Source("CREATE TABLE accounts (id int PRIMARY KEY, balance int)");
  Target("CREATE TABLE accounts (id int PRIMARY KEY, balance int)");
  std::string config = WriteConfig(kOneTarget + "mappings: [{source: accounts}]\n");
  ASSERT_TRUE(StartDaemon(config).ok());
  Source("INSERT INTO accounts VALUES (1, 5)");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  // What another walshiftd applying ahead of this one leaves behind.
  Target("UPDATE walshift.checkpoint SET commit_lsn = 'FF/0'");
  Source("UPDATE accounts SET balance = 6 WHERE id = 1; INSERT INTO accounts VALUES (2, 7)");
  auto st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->exit_code(), 1) << DaemonLog();
  EXPECT_THAT(DaemonLog(), HasSubstr("this target's checkpoint is at FF/0, past "));
  EXPECT_THAT(DaemonLog(), HasSubstr("this one is stale (nothing of its transaction was committed)"));
  EXPECT_THAT(DaemonLog(), HasSubstr("(SQLSTATE WS001)"));
  EXPECT_EQ(TargetRows("SELECT id::text, balance::text FROM accounts ORDER BY id"), (PgRows{{"1", "5"}}));
}

// The legacy schema changes under a running pipeline: a column appears that the target cannot
// take, or a column the mapping reads is dropped. walshiftd stops at the first change that
// needs it, naming the table, the column and the LSN, after applying everything before it; once
// the target or the mapping is fixed it goes on from there.
TEST_F(ReplicationTest, SourceSchemaChangeStopsNamingTableColumnAndLsn) {
  Source(
      "CREATE TABLE a (id int PRIMARY KEY, v text, w text);"
      "CREATE TABLE b (id int PRIMARY KEY, v text)");
  Target(
      "CREATE TABLE a2 (id int PRIMARY KEY, val text, w text);"
      "CREATE TABLE b (id int PRIMARY KEY, v text)");
  const std::string mappings = R"(mappings:
  - {source: a, table: a2, key: [id], columns: {id: id, val: v, w: w}}
  - {source: b}
)";
  std::string config = WriteConfig(kOneTarget + mappings);
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO a VALUES (1, 'one', 'x'); INSERT INTO b VALUES (1, 'one')");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();

  // A new source column that the identity mapping of b writes and the target lacks.
  Source("ALTER TABLE b ADD COLUMN extra int DEFAULT 7");
  Source("INSERT INTO a VALUES (2, 'two', 'y')");
  Source("INSERT INTO b VALUES (2, 'two', 8)");
  auto st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->exit_code(), 1) << DaemonLog();
  std::string log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("public.b"));
  EXPECT_THAT(log, HasSubstr("column \"extra\" of relation \"b\" does not exist"));
  EXPECT_THAT(log, HasSubstr("source public.b, first needed at LSN "));
  EXPECT_THAT(log, HasSubstr("if public.b gained a column, add it to the target table or list the mapping's columns"));
  EXPECT_EQ(TargetRows("SELECT id::text FROM a2 ORDER BY id"), (PgRows{{"1"}, {"2"}}));
  EXPECT_EQ(TargetRows("SELECT id::text FROM b ORDER BY id"), (PgRows{{"1"}}));
  // The target gets the column: the row is applied on restart.
  Target("ALTER TABLE b ADD COLUMN extra int");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT id::text, extra::text FROM b ORDER BY id"), (PgRows{{"1", std::nullopt}, {"2", "8"}}));

  // A column the mapping of a reads is dropped in the source while walshiftd runs.
  Source("ALTER TABLE a DROP COLUMN w");
  Source("INSERT INTO a VALUES (3, 'three')");
  st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_NE(st->exit_code(), 0) << DaemonLog();
  log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("source column 'w' does not exist in public.a"));
  EXPECT_THAT(log, HasSubstr("at LSN "));
  EXPECT_EQ(TargetRows("SELECT id::text FROM a2 ORDER BY id"), (PgRows{{"1"}, {"2"}}));
  // The mapping no longer names it: walshiftd goes on from the change that stopped it.
  config = WriteConfig(kOneTarget + R"(mappings:
  - {source: a, table: a2, key: [id], columns: {id: id, val: v}}
  - {source: b}
)");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT id::text, val, w FROM a2 ORDER BY id"),
            (PgRows{{"1", "one", "x"}, {"2", "two", "y"}, {"3", "three", std::nullopt}}));
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(ReplicationTest, RestartResumesFromCheckpointWithoutReapplying) {
  Source("CREATE TABLE counters (id int PRIMARY KEY, n int)");
  // A trigger counts every row the target receives: replay after the checkpoint would show.
  Target(
      "CREATE TABLE counters (id int PRIMARY KEY, n int);"
      "CREATE TABLE applied (n bigint); INSERT INTO applied VALUES (0);"
      "CREATE FUNCTION count_applied() RETURNS trigger LANGUAGE plpgsql AS "
      "$$BEGIN UPDATE applied SET n = n + 1; RETURN NEW; END$$;"
      "CREATE TRIGGER c BEFORE INSERT OR UPDATE ON counters FOR EACH ROW EXECUTE FUNCTION count_applied()");
  std::string config = WriteConfig(kOneTarget + R"(mappings: [{source: counters}]
)");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  for (int i = 1; i <= 50; ++i) Source(absl::StrCat("INSERT INTO counters VALUES (", i, ", 0)"));
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_TRUE(StopDaemon().success());
  for (int i = 51; i <= 60; ++i) Source(absl::StrCat("INSERT INTO counters VALUES (", i, ", 0)"));
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT n::text FROM applied"), (PgRows{{"60"}}));
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM counters"), (PgRows{{"60"}}));
}

}  // namespace
}  // namespace walshift::testing
