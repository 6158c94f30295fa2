// daemon/state against a real PostgreSQL 15 cluster: the pipeline writer lock, and a new run
// settling what an earlier run's sessions still hold before it reads a target's state.

#include "daemon/state/pg_state.h"

#include <memory>
#include <string>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_cluster.h"

namespace walshift {
namespace {

using walshift::testing::PgCluster;

class PgStateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    walshift::testing::PgClusterOptions options;
    options.name = "target";
    absl::StatusOr<std::unique_ptr<PgCluster>> c = PgCluster::Start(options);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = std::move(c).value().release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  void SetUp() override {
    db_ = absl::AsciiStrToLower(::testing::UnitTest::GetInstance()->current_test_info()->name());
    ASSERT_TRUE(cluster_->CreateDatabase(db_).ok());
    ASSERT_TRUE(cluster_->Exec(db_, "CREATE TABLE rows (id int PRIMARY KEY)").ok());
  }

  pg::ConnPtr Connect() {
    absl::StatusOr<pg::ConnPtr> c = pg::Connect(cluster_->Dsn(db_), "target");
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(c).value() : nullptr;
  }
  // A session of a writer of `pipeline` with a transaction open that inserted `id`.
  pg::ConnPtr OpenWriter(const std::string& pipeline, int id) {
    pg::ConnPtr c = Connect();
    EXPECT_TRUE(state::HoldWriterLock(c.get(), pipeline, 0, "target").ok());
    EXPECT_TRUE(pg::Exec(c.get(), absl::StrCat("BEGIN; INSERT INTO rows VALUES (", id, ")"), "target").ok());
    return c;
  }
  static bool Alive(PGconn* c) { return pg::Exec(c, "SELECT 1", "target").ok(); }
  std::string Count() { return cluster_->QueryValue(db_, "SELECT count(*)::text FROM rows").value_or("?"); }

  static PgCluster* cluster_;
  std::string db_;
};

PgCluster* PgStateTest::cluster_ = nullptr;

// The earlier run's commit lands while the new run waits; once settled it is visible. A writer
// with no transaction open (an idle session the server has not yet noticed is gone) does not
// hold anything up, and neither does another pipeline's writer.
TEST_F(PgStateTest, SettleWaitsForAnEarlierWritersTransactionOnly) {
  pg::ConnPtr idle = Connect();
  ASSERT_TRUE(state::HoldWriterLock(idle.get(), "p", 0, "target").ok());
  pg::ConnPtr other = OpenWriter("another pipeline", 2);
  pg::ConnPtr earlier = OpenWriter("p", 1);
  std::thread commit([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_TRUE(pg::Exec(earlier.get(), "COMMIT", "target").ok());
  });
  pg::ConnPtr next = Connect();
  absl::Status st = state::SettleEarlierWriters(next.get(), "p", "target main", absl::Seconds(120));
  // Read before the committing thread is joined: only a settle that waited for the commit sees
  // the row here.
  std::string seen = Count();
  commit.join();
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(seen, "1");  // the earlier writer's row, not the other pipeline's (still open)
  EXPECT_TRUE(Alive(idle.get()));
  EXPECT_TRUE(Alive(other.get()));
  EXPECT_TRUE(Alive(earlier.get()));
}

// A transaction an earlier run left open (its walshiftd gone, the server not aware of it yet)
// is terminated after the patience, so its outcome is settled: rolled back.
TEST_F(PgStateTest, SettleTerminatesATransactionLeftOpen) {
  pg::ConnPtr earlier = OpenWriter("p", 1);
  pg::ConnPtr next = Connect();
  absl::Status st = state::SettleEarlierWriters(next.get(), "p", "target main", absl::Milliseconds(200));
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_FALSE(Alive(earlier.get()));
  EXPECT_EQ(Count(), "0");
  // Nothing left: settling again returns at once.
  EXPECT_TRUE(state::SettleEarlierWriters(next.get(), "p", "target main", absl::Milliseconds(200)).ok());
}

// ha: the fence. A writer session of epoch 1 cannot commit data once epoch 2 was taken: its
// checkpoint statement fails with WS002 and the whole transaction rolls back, a copy range too. A
// transaction that passed the fence before the takeover holds it up until it ends (so that the new
// leader reads the checkpoint after it). A session without an epoch (a walshiftd without ha) is
// refused once the pipeline has a leader, and not fenced while it has none.
TEST_F(PgStateTest, FenceFailsEveryTransactionOfAReplacedEpoch) {
  pg::ConnPtr leader = Connect();
  ASSERT_TRUE(state::EnsureSchema(leader.get(), "target").ok());
  absl::StatusOr<int64_t> first = state::TakeEpoch(leader.get(), "p", "a", absl::Seconds(15), absl::Seconds(5), "target");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, 1);
  pg::ConnPtr writer = Connect();
  ASSERT_TRUE(state::HoldWriterLock(writer.get(), "p", *first, "target").ok());
  const std::string checkpoint = state::CheckpointUpsertSql(/*wal_positions=*/false);
  auto commit_group = [&](PGconn* c, int id, const char* lsn) {
    std::string sql = absl::StrCat("BEGIN; INSERT INTO rows VALUES (", id, ")");
    absl::Status st = pg::Exec(c, sql, "target").status();
    if (st.ok()) st = pg::ExecParams(c, checkpoint, {"p", lsn, "2026-01-01 00:00:00+00"}, "target").status();
    if (st.ok()) return pg::Exec(c, "COMMIT", "target").status();
    (void)pg::Exec(c, "ROLLBACK", "target");
    return st;
  };
  ASSERT_TRUE(commit_group(writer.get(), 1, "0/100").ok());

  // Passed the fence, not committed: the takeover waits for it.
  ASSERT_TRUE(pg::Exec(writer.get(), "BEGIN; INSERT INTO rows VALUES (2)", "target").ok());
  ASSERT_TRUE(pg::ExecParams(writer.get(), checkpoint, {"p", "0/200", "2026-01-01 00:00:00+00"}, "target").ok());
  pg::ConnPtr standby = Connect();
  absl::StatusOr<int64_t> blocked = state::TakeEpoch(standby.get(), "p", "b", absl::Seconds(15), absl::Milliseconds(300), "target");
  EXPECT_FALSE(blocked.ok());
  EXPECT_NE(blocked.status().message().find("55P03"), std::string::npos) << blocked.status();
  ASSERT_TRUE(pg::Exec(writer.get(), "COMMIT", "target").ok());
  absl::StatusOr<int64_t> second = state::TakeEpoch(standby.get(), "p", "b", absl::Seconds(15), absl::Seconds(5), "target");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*second, 2);

  // Replaced: nothing of epoch 1 commits any more.
  absl::Status st = commit_group(writer.get(), 3, "0/300");
  EXPECT_NE(st.message().find("WS002"), std::string::npos) << st;
  EXPECT_NE(st.message().find("walshiftd b took over as leader (epoch 2)"), std::string::npos) << st;
  state::Statement range = state::CopyChunkInsert("p", CopyChunk{"public.t", "id", 1, 100, 0x100, 99});
  ASSERT_TRUE(pg::Exec(writer.get(), "BEGIN; INSERT INTO rows VALUES (4)", "target").ok());
  absl::Status copied = pg::ExecParams(writer.get(), range.sql, range.params, "target").status();
  (void)pg::Exec(writer.get(), "ROLLBACK", "target");
  EXPECT_NE(copied.message().find("WS002"), std::string::npos) << copied;
  EXPECT_EQ(Count(), "2");
  EXPECT_EQ(cluster_->QueryValue(db_, "SELECT commit_lsn::text FROM walshift.checkpoint").value_or("?"), "0/200");

  // The new leader's sessions commit. A session without an epoch does not, as long as the
  // pipeline has a leader; another pipeline's does.
  pg::ConnPtr next = Connect();
  ASSERT_TRUE(state::HoldWriterLock(next.get(), "p", *second, "target").ok());
  EXPECT_TRUE(commit_group(next.get(), 5, "0/500").ok());
  pg::ConnPtr plain = Connect();
  ASSERT_TRUE(state::HoldWriterLock(plain.get(), "p", 0, "target").ok());
  absl::Status unfenced = commit_group(plain.get(), 6, "0/600");
  EXPECT_NE(unfenced.message().find("WS003"), std::string::npos) << unfenced;
  EXPECT_NE(unfenced.message().find("runs with ha: walshiftd b leads it (epoch 2)"), std::string::npos) << unfenced;
  std::string other = state::CheckpointUpsertSql(false);
  ASSERT_TRUE(pg::Exec(plain.get(), "BEGIN; INSERT INTO rows VALUES (7)", "target").ok());
  EXPECT_TRUE(pg::ExecParams(plain.get(), other, {"q", "0/700", "2026-01-01 00:00:00+00"}, "target").ok());
  ASSERT_TRUE(pg::Exec(plain.get(), "COMMIT", "target").ok());
  EXPECT_EQ(Count(), "4");

  // The lease is renewed only by the current epoch's node.
  EXPECT_EQ(state::RenewLease(standby.get(), "p", "b", 2, "target").value_or(false), true);
  EXPECT_EQ(state::RenewLease(leader.get(), "p", "a", 1, "target").value_or(true), false);
  absl::StatusOr<state::LeaderRow> row = state::ReadLeader(leader.get(), "p", "target");
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(row->epoch, 2);
  EXPECT_EQ(row->node, "b");
  EXPECT_GE(row->lease_age_s, 0);
}

}  // namespace
}  // namespace walshift
