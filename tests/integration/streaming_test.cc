// Large transactions that the walsender streams while they run (pgoutput protocol 2): with
// logical_decoding_work_mem at its minimum (64kB) on the test's source database, any
// transaction of a few hundred rows streams. Inserts, updates and deletes; savepoints rolled
// back; an aborted transaction; two streams interleaved that commit in the opposite order from
// their start; DDL and unchanged TOAST values inside a stream; walshiftd killed mid-stream and
// at every kill point of the stream's path. Each ends with the target equal to the source and,
// where it is counted, no change applied twice.

#include <thread>

#include "absl/strings/str_cat.h"
#include "daemon/pg/pg_util.h"
#include "gmock/gmock.h"
#include "tests/fault/applied_once.h"
#include "tests/integration/daemon_fixture.h"

namespace walshift::testing {
namespace {

class StreamingTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    // The walsender of this database streams every transaction past 64kB of changes.
    auto r = source_cluster_->Query("postgres",
                                    absl::StrCat("ALTER DATABASE ", source_db_, " SET logical_decoding_work_mem = '64kB'"));
    ASSERT_TRUE(r.ok()) << r.status();
    Source("CREATE TABLE items (id int PRIMARY KEY, v text, n int)");
    Target("CREATE TABLE items (id int PRIMARY KEY, v text, n int)");
  }

  std::string Config() { return WriteConfig(absl::StrCat(kOneTarget, "mappings: [{source: items}]\n")); }

  // Transactions the walsender of this test's slot streamed so far.
  int64_t StreamedTransactions() {
    PgRows r = SourceRows(absl::StrCat(
        "SELECT coalesce((SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = '", slot_, "'), 0)::text"));
    return std::stoll(*r[0][0]);
  }

  void ExpectEqual(const std::string& table, const std::string& columns) {
    std::string sql = absl::StrCat("SELECT ", columns, " FROM ", table, " ORDER BY 1");
    PgRows expected = SourceRows(sql);
    PgRows actual = TargetRows(sql);
    EXPECT_EQ(actual.size(), expected.size()) << table;
    EXPECT_TRUE(actual == expected) << table << ": the target differs from the source";
  }

  pg::ConnPtr SourceSession() {
    auto c = pg::Connect(source_cluster_->Dsn(source_db_), "source", "");
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }
  void Exec(PGconn* c, const std::string& sql) { ASSERT_TRUE(pg::Exec(c, sql, "source").ok()) << sql; }
};

TEST_F(StreamingTest, InsertsUpdatesAndDeletesOfAStreamedTransaction) {
  ASSERT_TRUE(StartDaemon(Config()).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  int64_t before = StreamedTransactions();
  Source(
      "BEGIN;"
      "INSERT INTO items SELECT g, md5(g::text), g FROM generate_series(1, 5000) g;"
      "UPDATE items SET n = n * 2, v = 'u' || v WHERE id % 2 = 0;"
      "DELETE FROM items WHERE id % 10 = 0;"
      "UPDATE items SET id = id + 100000 WHERE id = 7;"
      "COMMIT");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_GT(StreamedTransactions(), before) << "the walsender did not stream the transaction";
  ExpectEqual("items", "id, v, n");
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM items")[0][0], "4500");
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(StreamingTest, RolledBackSavepointsAndAnAbortedTransactionLeaveNoTrace) {
  ASSERT_TRUE(StartDaemon(Config()).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source(
      "BEGIN;"
      "INSERT INTO items SELECT g, 'a', g FROM generate_series(1, 2000) g;"
      "SAVEPOINT s1;"
      "INSERT INTO items SELECT g, 's1', g FROM generate_series(2001, 4000) g;"
      "SAVEPOINT s2;"
      "UPDATE items SET v = 's2' WHERE id <= 1000;"
      "ROLLBACK TO s1;"  // s1 and s2, nested in it, are undone
      "INSERT INTO items SELECT g, 'b', g FROM generate_series(5001, 6000) g;"
      "SAVEPOINT s3;"
      "DELETE FROM items WHERE id <= 100;"
      "RELEASE s3;"  // kept
      "SAVEPOINT s4;"
      "UPDATE items SET v = 's4' WHERE id > 5000;"
      "ROLLBACK TO s4;"
      "UPDATE items SET n = -n WHERE id BETWEEN 101 AND 200;"
      "COMMIT");
  Source(
      "BEGIN;"
      "INSERT INTO items SELECT g, 'aborted', g FROM generate_series(10001, 14000) g;"
      "UPDATE items SET v = 'aborted' WHERE id <= 2000;"
      "ROLLBACK");
  Source("INSERT INTO items VALUES (20000, 'after', 1)");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  ExpectEqual("items", "id, v, n");
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM items WHERE v IN ('s1', 's2', 's4', 'aborted')")[0][0], "0");
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM items")[0][0], "2901");
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(StreamingTest, InterleavedStreamsCommitInTheOppositeOrderOfTheirStart) {
  ASSERT_TRUE(StartDaemon(Config()).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  int64_t before = StreamedTransactions();
  pg::ConnPtr first = SourceSession(), second = SourceSession();
  ASSERT_TRUE(first && second);
  Exec(first.get(), "BEGIN; INSERT INTO items SELECT g, 'first', g FROM generate_series(1, 3000) g");
  Exec(second.get(), "BEGIN; INSERT INTO items SELECT g, 'second', g FROM generate_series(100001, 103000) g");
  Exec(first.get(), "INSERT INTO items SELECT g, 'first', g FROM generate_series(3001, 6000) g");
  Exec(second.get(), "UPDATE items SET n = n + 1; COMMIT");  // started second, commits first
  // The first transaction now rewrites rows the second committed: applied after them, or the
  // target would keep 'second'.
  Exec(first.get(), "UPDATE items SET v = 'first after second' WHERE id > 100000; COMMIT");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_GE(StreamedTransactions(), before + 2) << "both transactions should have streamed";
  ExpectEqual("items", "id, v, n");
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM items WHERE v = 'first after second'")[0][0], "3000");
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(StreamingTest, DdlAndUnchangedToastValuesInsideAStream) {
  Source("CREATE TABLE docs (id int PRIMARY KEY, body text, n int)");
  Target("CREATE TABLE docs (id int PRIMARY KEY, body text, n int, note text)");
  // Bodies of random hex, too large to stay in the row: stored out of line (TOAST).
  Source(
      "INSERT INTO docs SELECT g, (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 400) i), "
      "0 FROM generate_series(1, 20) g");
  ASSERT_TRUE(StartDaemon(WriteConfig(absl::StrCat(kOneTarget, "mappings: [{source: items}, {source: docs}]\n"))).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  int64_t before = StreamedTransactions();
  Source(
      "BEGIN;"
      "UPDATE docs SET n = n + 1;"  // body unchanged: sent as 'unchanged TOAST'
      "INSERT INTO items SELECT g, md5(g::text), g FROM generate_series(1, 3000) g;"
      "ALTER TABLE docs ADD COLUMN note text;"
      "UPDATE docs SET note = 'noted ' || id WHERE id % 2 = 0;"
      "UPDATE docs SET n = n + 10 WHERE id % 3 = 0;"
      "COMMIT");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_GT(StreamedTransactions(), before);
  ExpectEqual("docs", "id, md5(body), n, note");
  ExpectEqual("items", "id, v, n");
  EXPECT_TRUE(StopDaemon().success());
}

// walshiftd killed with SIGKILL while a transaction streams, and at each kill point of the
// stream's path (a message spooled, a message replayed at commit, the target group of the
// replayed transaction before and after its commit): the walsender streams the transaction
// again, and it is applied once.
TEST_F(StreamingTest, KilledMidStreamAndAtEveryKillPointAppliesItOnce) {
  Source(absl::StrCat(kStampFunctionSql, "ALTER TABLE items ADD COLUMN stamp bigint;", StampTriggerSql("items")));
  Target(absl::StrCat(kCountingFunctionSql, "ALTER TABLE items ADD COLUMN stamp bigint;",
                      CountingTriggerSql("items", "id", {"stamp"})));
  // No heartbeat: the only transactions are the test's.
  std::string config =
      WriteConfig(absl::StrCat(kOneTarget, "monitor: {heartbeat_interval_s: 0}\nmappings: [{source: items}]\n"));
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();

  // Killed while the stream is open: the transaction is still running on the source.
  pg::ConnPtr session = SourceSession();
  ASSERT_TRUE(session);
  Exec(session.get(), "BEGIN; INSERT INTO items SELECT g, 'k', g FROM generate_series(1, 4000) g");
  std::this_thread::sleep_for(std::chrono::seconds(1));
  daemon_->Kill();
  ASSERT_TRUE(StartDaemon(config).ok());
  Exec(session.get(), "UPDATE items SET n = n + 1 WHERE id % 2 = 0; COMMIT");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  ExpectEqual("items", "id, v, n, stamp");
  ASSERT_TRUE(StopDaemon().success());

  // The transaction is committed while walshiftd is stopped, so it is the first thing the next
  // run receives (streamed: it is decoded past logical_decoding_work_mem) and meets each point.
  int base = 10000;
  for (const char* point :
       {"source.stream_spooled:2000", "source.stream_replayed:2000", "apply.before_commit:1", "apply.after_commit:1"}) {
    SCOPED_TRACE(point);
    int64_t before = StreamedTransactions();
    Source(absl::StrCat("BEGIN; INSERT INTO items SELECT g, 'p', g FROM generate_series(", base, ", ", base + 3999,
                        ") g; UPDATE items SET v = 'q' WHERE id % 3 = 0; DELETE FROM items WHERE id % 7 = 0; COMMIT"));
    base += 10000;
    ASSERT_TRUE(StartDaemon(config, {{"WALSHIFT_CRASH_AT", point}}).ok());
    auto died = daemon_->Wait(absl::Seconds(60));
    ASSERT_TRUE(died.ok() && died->signaled()) << "walshiftd did not reach kill point " << point << "\n" << DaemonLog();
    EXPECT_GT(StreamedTransactions(), before);
    ASSERT_TRUE(StartDaemon(config).ok());
    ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
    ExpectEqual("items", "id, v, n, stamp");
    ASSERT_TRUE(StopDaemon().success());
  }
  EXPECT_TRUE(TargetRows(kAppliedTwiceSql).empty()) << "a change was applied twice";
  EXPECT_EQ(TargetRows(UnloggedStampsSql("items", "id", "stamp"))[0][0], "0");
}

}  // namespace
}  // namespace walshift::testing
