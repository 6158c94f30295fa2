// Server restarts under load: the target PostgreSQL restarted in immediate mode (a crash of
// the server) while a group is open, the target stopped for a minute, the source restarted
// mid-stream and in the middle of the initial copy. walshiftd must never exit, reconnect with
// backoff, and end with the target equal to the mapped source, both directions.

#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/fault/fault_fixture.h"

namespace walshift::testing {
namespace {

// Retries come quickly in these tests; the backoff itself is the default code path.
constexpr char kFastRetries[] = R"(
apply: {group_max_changes: 500, group_max_ms: 100, reconnect_initial_ms: 100, reconnect_max_ms: 2000}
monitor: {heartbeat_interval_s: 1}
)";

class RestartTest : public FaultTest {
 protected:
  // Waits (up to 10 s) until walshiftd has a target transaction open: a group sent and not yet
  // committed. False when none was seen.
  bool WaitForOpenGroup() {
    std::string sql =
        absl::StrCat("SELECT count(*)::text FROM pg_stat_activity WHERE datname = '", target_db_,
                     "' AND application_name = 'walshiftd' AND xact_start IS NOT NULL AND state <> 'idle'");
    absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      auto v = target_cluster_->QueryValue("postgres", sql);
      if (v.ok() && *v != "0") return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return false;
  }
};

TEST_F(RestartTest, TargetRestartedImmediateMidGroupEndsExact) {
  CreateTables();
  std::string config = EventsConfig(kFastRetries);
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  auto workload = StartPgbench(Workload(4, absl::Seconds(12)));
  ASSERT_NE(workload, nullptr);
  int mid_group = 0;
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    if (WaitForOpenGroup()) ++mid_group;
    ASSERT_TRUE(target_cluster_->Stop(PgCluster::StopMode::kImmediate).ok());
    ASSERT_TRUE(target_cluster_->Restart().ok()) << target_cluster_->LogTail();
    ASSERT_TRUE(daemon_->Running()) << DaemonLog();
  }
  EXPECT_GE(mid_group, 1) << "no restart landed while a group was open";
  auto done = workload->Wait(absl::Seconds(120));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  ExpectExact();
  EXPECT_GE(CountInLog("retrying in"), 3) << DaemonLog();
  std::cout << "target restarts: 3 (" << mid_group << " with a group open), reconnects: " << CountInLog("retrying in")
            << "\n";
  EXPECT_TRUE(StopDaemon().success());
}

// Target commits are asynchronous, as PostgreSQL's apply worker's: a crash of the target loses
// the groups its WAL had not flushed yet. The slot is confirmed only up to what is flushed, so
// walshiftd streams those groups again and the target ends exact, every change applied once.
TEST_F(RestartTest, TargetCrashLosesUnflushedCommitsAndTheyAreStreamedAgain) {
  CreateTables();
  Source("INSERT INTO events SELECT g, 1, md5(g::text) FROM generate_series(1, 200) g");
  std::string config = EventsConfig(R"(
apply: {reconnect_initial_ms: 100, reconnect_max_ms: 2000}
monitor: {heartbeat_interval_s: 0}
)",
                                    "{SOURCE}", "{TARGET}", "feedback_interval_s: 1");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  // The WAL writer flushes a partly filled page only every wal_writer_delay: 10 s here, so the
  // next commits stay in the target's memory for a while.
  auto set_delay = [&](const char* value) {
    for (std::string sql : {absl::StrCat("ALTER SYSTEM SET wal_writer_delay = '", value, "'"),
                            std::string("SELECT pg_reload_conf()"), std::string("CHECKPOINT")}) {
      auto r = target_cluster_->Query("postgres", sql);
      ASSERT_TRUE(r.ok()) << sql << ": " << r.status();
    }
  };
  set_delay("10s");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  for (int i = 1; i <= 10; ++i) Source(absl::StrCat("UPDATE events SET n = n + 1 WHERE id = ", i));
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  std::this_thread::sleep_for(std::chrono::seconds(3));  // several feedback intervals
  auto unflushed = target_cluster_->QueryValue(
      "postgres", "SELECT (pg_current_wal_flush_lsn() < pg_current_wal_insert_lsn())::text");
  std::string committed = *TargetRows(absl::StrCat("SELECT commit_lsn::text FROM walshift.checkpoint WHERE pipeline = '",
                                                   pipeline_, "'"))[0][0];
  PgRows confirmed = SourceRows(absl::StrCat("SELECT confirmed_flush_lsn::text, (confirmed_flush_lsn < '", committed,
                                             "')::text FROM pg_replication_slots WHERE slot_name = '", slot_, "'"));
  ASSERT_EQ(confirmed.size(), 1u);
  ASSERT_TRUE(unflushed.ok()) << unflushed.status();
  if (*unflushed == "true") {
    EXPECT_EQ(*confirmed[0][1], "true") << "the slot is confirmed at " << *confirmed[0][0]
                                        << ", past commits the target has not flushed (checkpoint " << committed << ")";
  } else {
    std::cout << "the target flushed its WAL before the crash (nothing to lose this time)\n";
  }

  ASSERT_TRUE(target_cluster_->Stop(PgCluster::StopMode::kImmediate).ok());
  ASSERT_TRUE(target_cluster_->Restart().ok()) << target_cluster_->LogTail();
  set_delay("200ms");
  std::string after = *TargetRows(absl::StrCat("SELECT commit_lsn::text FROM walshift.checkpoint WHERE pipeline = '",
                                               pipeline_, "'"))[0][0];
  std::cout << "target checkpoint before the crash " << committed << ", after it " << after << "; slot confirmed "
            << *confirmed[0][0] << "\n";
  ASSERT_TRUE(daemon_->Running()) << DaemonLog();
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  ExpectExact();
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(RestartTest, TargetStoppedForAMinuteEndsExact) {
  CreateTables();
  // The default backoff ceiling (30 s) would leave up to 30 s idle after the target is back;
  // 5 s keeps the test short.
  std::string config = EventsConfig(R"(
apply: {reconnect_max_ms: 5000}
monitor: {heartbeat_interval_s: 1}
)");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  // The legacy database keeps changing all the time the target is away.
  auto workload = StartPgbench(Workload(2, absl::Seconds(70), /*rate=*/100));
  ASSERT_NE(workload, nullptr);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  size_t from = LogSize();
  ASSERT_TRUE(target_cluster_->Stop(PgCluster::StopMode::kFast).ok());
  absl::Time stopped = absl::Now();
  while (absl::Now() - stopped < absl::Seconds(60)) {
    ASSERT_TRUE(daemon_->Running()) << "walshiftd exited while the target was down:\n" << DaemonLog();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  int retries = CountInLog("retrying in", from);
  EXPECT_GE(retries, 5) << DaemonLog();
  EXPECT_GE(CountInLog("cannot connect to target main", from), 1) << DaemonLog();
  ASSERT_TRUE(target_cluster_->Restart().ok()) << target_cluster_->LogTail();
  absl::Time back = absl::Now();
  auto done = workload->Wait(absl::Seconds(120));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  ExpectExact();
  std::cout << "target down 60 s: " << retries << " reconnect attempts, caught up "
            << absl::ToInt64Seconds(absl::Now() - back) << " s after it was back (pgbench still running)\n";
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(RestartTest, SourceRestartedMidStreamEndsExact) {
  CreateTables();
  std::string config = EventsConfig(kFastRetries);
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  for (auto mode : {PgCluster::StopMode::kImmediate, PgCluster::StopMode::kFast}) {
    // The restart aborts pgbench's clients too: their outcome does not matter, only that what
    // the source committed reaches the target.
    auto workload = StartPgbench(Workload(4, absl::Seconds(4)));
    ASSERT_NE(workload, nullptr);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    size_t from = LogSize();
    absl::Status stopped = source_cluster_->Stop(mode);
    ASSERT_TRUE(stopped.ok()) << stopped << "\n" << source_cluster_->LogTail();
    ASSERT_TRUE(source_cluster_->Restart().ok()) << source_cluster_->LogTail();
    (void)workload->Wait(absl::Seconds(60));
    ASSERT_TRUE(daemon_->Running()) << DaemonLog();
    EXPECT_TRUE(WaitForLog("retrying in", from, absl::Seconds(30))) << DaemonLog();
  }
  auto after = StartPgbench(Workload(4, absl::Seconds(3)));
  ASSERT_NE(after, nullptr);
  auto done = after->Wait(absl::Seconds(60));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  ExpectExact();
  EXPECT_TRUE(StopDaemon().success());
}

// A source shutting down (fast mode) waits until every walsender's client has confirmed all the
// WAL it was sent, the shutdown checkpoint included. With wal_sender_timeout off it waits for
// ever, so walshiftd, idle, must confirm WAL that held nothing for it (as PostgreSQL's own
// apply worker does); heartbeats are off so that no failed heartbeat write ends the
// replication connection first. The same confirmation moves the slot over WAL of tables that
// are not mapped, so the source does not keep it.
TEST_F(RestartTest, SourceStoppedFastWhileIdleDoesNotWaitForWalshiftd) {
  CreateTables();
  ASSERT_TRUE(source_cluster_->Exec("postgres", "ALTER SYSTEM SET wal_sender_timeout = 0").ok());
  ASSERT_TRUE(source_cluster_->Exec("postgres", "SELECT pg_reload_conf()").ok());
  std::string config = EventsConfig(R"(
apply: {reconnect_initial_ms: 100, reconnect_max_ms: 2000}
monitor: {heartbeat_interval_s: 0}
)");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  auto workload = StartPgbench(Workload(2, absl::Seconds(2)));
  ASSERT_NE(workload, nullptr);
  ASSERT_TRUE(workload->Wait(absl::Seconds(60)).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();

  Source("CREATE TABLE not_mapped (id int PRIMARY KEY, v text); "
         "INSERT INTO not_mapped SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
  auto wal = source_cluster_->QueryValue("postgres", "SELECT pg_current_wal_lsn()::text");
  ASSERT_TRUE(wal.ok()) << wal.status();
  std::string moved_sql = absl::StrCat(
      "SELECT (confirmed_flush_lsn >= '", *wal, "')::text FROM pg_replication_slots WHERE slot_name = '", slot_, "'");
  bool moved = false;
  for (absl::Time deadline = absl::Now() + absl::Seconds(60); !moved && absl::Now() < deadline;) {
    auto v = source_cluster_->QueryValue("postgres", moved_sql);
    moved = v.ok() && *v == "true";
    if (!moved) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(moved) << "the slot did not move past " << *wal << " (WAL of a table no mapping names)";

  absl::Status stopped = source_cluster_->Stop(PgCluster::StopMode::kFast);
  ASSERT_TRUE(stopped.ok()) << stopped << "\n" << source_cluster_->LogTail();
  ASSERT_TRUE(source_cluster_->Restart().ok()) << source_cluster_->LogTail();
  ASSERT_TRUE(daemon_->Running()) << DaemonLog();
  auto after = StartPgbench(Workload(2, absl::Seconds(2)));
  ASSERT_NE(after, nullptr);
  auto done = after->Wait(absl::Seconds(60));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  ExpectExact();
  EXPECT_TRUE(StopDaemon().success());
}

// The initial copy of 300,000 rows in ranges of 5,000, two workers, with the source restarted
// (immediate mode) once a few ranges are in and pgbench writing all over the key space. The
// copy resumes: the committed ranges are kept, the rest is copied under a new snapshot.
TEST_F(RestartTest, SourceRestartedMidCopyResumesAndEndsExact) {
  CreateTables();
  Source(
      "INSERT INTO events SELECT g, g % 100, md5(g::text) FROM generate_series(1, 300000) g;"
      "ANALYZE events");
  std::string config = EventsConfig(absl::StrCat(kFastRetries, "snapshot: {workers: 2, chunk_rows: 5000}\n"));
  ASSERT_TRUE(StartDaemon(config).ok());
  auto workload = StartPgbench(Workload(2, absl::Seconds(5), /*rate=*/0, /*max_id=*/300000));
  ASSERT_NE(workload, nullptr);
  std::string chunks =
      absl::StrCat("SELECT count(*)::text FROM walshift.copy_chunk WHERE pipeline = '", pipeline_, "'");
  absl::Time deadline = absl::Now() + absl::Seconds(60);
  int copied = 0;
  while (absl::Now() < deadline) {
    auto v = target_cluster_->QueryValue(target_db_, chunks);
    if (v.ok() && std::stoi(*v) >= 3) {
      copied = std::stoi(*v);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_GE(copied, 3) << "the copy never committed 3 ranges:\n" << DaemonLog();
  size_t from = LogSize();
  ASSERT_TRUE(source_cluster_->Stop(PgCluster::StopMode::kImmediate).ok());
  ASSERT_TRUE(source_cluster_->Restart().ok()) << source_cluster_->LogTail();
  auto stopped_at = target_cluster_->QueryValue(target_db_, chunks);
  (void)workload->Wait(absl::Seconds(60));
  auto after = StartPgbench(Workload(2, absl::Seconds(3), /*rate=*/0, /*max_id=*/300000));
  ASSERT_NE(after, nullptr);
  auto done = after->Wait(absl::Seconds(60));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(300)).ok()) << DaemonLog();
  ExpectExact();
  // It resumed: the ranges of the first run were not copied again.
  EXPECT_TRUE(WaitForLog("initial copy interrupted with", from, absl::Seconds(1))) << DaemonLog();
  EXPECT_TRUE(WaitForLog("resuming it; ranges already committed", from, absl::Seconds(1))) << DaemonLog();
  EXPECT_TRUE(WaitForLog("done by an earlier run", from, absl::Seconds(1))) << DaemonLog();
  // No key range was copied twice: the recorded ranges do not overlap.
  EXPECT_EQ(TargetRows(absl::StrCat("SELECT count(*)::text FROM walshift.copy_chunk a JOIN walshift.copy_chunk b ON "
                                    "a.ctid < b.ctid AND a.pipeline = b.pipeline AND int8range(a.lo, a.hi) && "
                                    "int8range(b.lo, b.hi) WHERE a.pipeline = '",
                                    pipeline_, "'")),
            (PgRows{{"0"}}));
  std::cout << "source restarted with " << stopped_at.value_or("?") << " of 60 ranges committed; copy resumed\n";
  EXPECT_TRUE(StopDaemon().success());
}

}  // namespace
}  // namespace walshift::testing
