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

}  // namespace
}  // namespace walshift
