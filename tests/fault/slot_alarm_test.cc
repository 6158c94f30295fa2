// Slot alarms on a source with a small max_slot_wal_keep_size: retained WAL past
// monitor.max_retained_wal_bytes raises an alarm (event, /status, /metrics, log, walshiftctl)
// while walshiftd is held behind and clears once it catches up; a slot the source invalidates
// (wal_status lost), while walshiftd is stopped or while it runs, is reported as such in
// events, /status and walshiftctl status, and stops walshiftd with exit code 3 and the rebuild
// procedure, which the test then follows to an exact target.

#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "daemon/core/slot_loss.h"
#include "daemon/pg/pg_util.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/kafka_broker.h"
#include "walshift/v1/events.pb.h"

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;

class SlotAlarmTest : public DaemonTest {
 protected:
  static void SetUpTestSuite() {
    PgClusterOptions source;
    source.extra_conf = {"max_slot_wal_keep_size = 32MB", "wal_keep_size = 0", "min_wal_size = 32MB",
                         "max_wal_size = 64MB"};
    StartClusters(source, {});
  }

  void SetUp() override {
    DaemonTest::SetUp();
    ASSERT_NO_FATAL_FAILURE(StartKafka());
    Source("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL, v text)");
    Target("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL, v text)");
    Source("CREATE TABLE noise (x text)");  // not mapped, not published: WAL only
  }

  std::string Config(const std::string& monitor) {
    return WriteConfig(absl::StrCat(kOneTarget, "kafka: {brokers: \"", kafka_->bootstrap(), "\"}\n",
                                    "monitor: {lag_interval_s: 1, heartbeat_interval_s: 1", monitor, "}\n",
                                    "mappings: [{source: items}]\n"));
  }

  std::string WalStatus() {
    PgRows r = SourceRows(
        absl::StrCat("SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = '", slot_, "'"));
    return r.size() == 1 && r[0][0] ? *r[0][0] : "(no slot)";
  }

  // Writes WAL segments and checkpoints until the source invalidates the slot.
  void LoseTheSlot() {
    for (int i = 0; i < 12 && WalStatus() != "lost"; ++i) {
      for (int s = 0; s < 3; ++s)
        Source("INSERT INTO noise SELECT md5(g::text) FROM generate_series(1, 100) g; SELECT pg_switch_wal()");
      Source("CHECKPOINT");
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    ASSERT_EQ(WalStatus(), "lost");
  }

  std::vector<v1::StateEvent> StateEvents() {
    std::vector<v1::StateEvent> out;
    for (const KafkaRecord& r : ReadTopic(kafka_->bootstrap(), "walshift.state")) {
      v1::StateEvent e;
      if (e.ParseFromString(r.value)) out.push_back(e);
    }
    return out;
  }

  void ExpectExact() {
    PgRows expected = SourceRows("SELECT id::text, n::text, v FROM items ORDER BY id");
    PgRows actual = TargetRows("SELECT id::text, n::text, v FROM items ORDER BY id");
    EXPECT_EQ(actual.size(), expected.size());
    EXPECT_TRUE(actual == expected) << "target differs from the source";
  }
};

TEST_F(SlotAlarmTest, RetainedWalPastTheThresholdRaisesTheAlarmWhileBehindAndClearsOnCatchUp) {
  ASSERT_TRUE(StartDaemon(Config(", max_retained_wal_bytes: 4194304")).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  int port = StatusPort();
  ASSERT_GT(port, 0);
  // A target session holds a lock on the table: walshiftd falls behind while the source writes
  // about 10 MB of WAL.
  auto blocker = pg::Connect(target_cluster_->Dsn(target_db_), "target", "");
  ASSERT_TRUE(blocker.ok()) << blocker.status();
  ASSERT_TRUE(pg::Exec(blocker->get(), "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE", "lock").ok());
  Source("INSERT INTO items SELECT g, 1, repeat(md5(g::text), 3) FROM generate_series(1, 40000) g");
  std::string status;
  for (int i = 0; i < 300 && status.find("\"kind\":\"RETAINED_WAL\"") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = Get(port, "/status");
  }
  ASSERT_THAT(status, HasSubstr("\"kind\":\"RETAINED_WAL\"")) << status;
  EXPECT_THAT(status, HasSubstr("of WAL on the source (threshold 4.0 MiB)")) << status;
  EXPECT_THAT(Get(port, "/metrics"),
              HasSubstr("walshift_alarm{pipeline=\"" + pipeline_ + "\",alarm=\"RETAINED_WAL\"} 1"));
  EXPECT_THAT(DaemonLog(), HasSubstr("alarm RETAINED_WAL: replication slot " + slot_ + " retains "));
  auto ctl = Walshiftctl({"status", "--url", absl::StrCat("http://127.0.0.1:", port)});
  EXPECT_EQ(ctl.status.exit_code(), 1) << ctl.stdout_text << ctl.stderr_text;
  EXPECT_THAT(ctl.stdout_text, HasSubstr("!! RETAINED_WAL since "));

  // Caught up (and the slot's restart point moved on with a checkpoint): the alarm clears.
  ASSERT_TRUE(pg::Exec(blocker->get(), "COMMIT", "unlock").ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  for (int i = 0; i < 60 && status.find("RETAINED_WAL") != std::string::npos; ++i) {
    Source("CHECKPOINT");
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    status = Get(port, "/status");
  }
  EXPECT_THAT(status, ::testing::Not(HasSubstr("RETAINED_WAL"))) << status;
  EXPECT_THAT(Get(port, "/metrics"),
              HasSubstr("walshift_alarm{pipeline=\"" + pipeline_ + "\",alarm=\"RETAINED_WAL\"} 0"));
  EXPECT_THAT(DaemonLog(), HasSubstr("alarm RETAINED_WAL cleared: replication slot " + slot_ + " retains "));
  ctl = Walshiftctl({"status", "--url", absl::StrCat("http://127.0.0.1:", port)});
  EXPECT_EQ(ctl.status.exit_code(), 0) << ctl.stdout_text << ctl.stderr_text;
  ExpectExact();
  EXPECT_TRUE(StopDaemon().success());

  // On Kafka: raised once, then cleared once.
  std::vector<std::string> alarms;
  for (const v1::StateEvent& e : StateEvents()) {
    if (e.alarm() != v1::RETAINED_WAL) continue;
    alarms.push_back(e.cleared() ? "cleared" : "raised");
    if (!e.cleared()) {
      EXPECT_THAT(e.warning(), HasSubstr("retains"));
    }
  }
  EXPECT_EQ(alarms, (std::vector<std::string>{"raised", "cleared"}));
}

TEST_F(SlotAlarmTest, SlotLostWhileStoppedExitsWithItsCodeAndTheRebuildProcedureEndsExact) {
  std::string config = Config("");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO items SELECT g, 1, md5(g::text) FROM generate_series(1, 2000) g");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_TRUE(StopDaemon().success());
  // While walshiftd is stopped: changes (deletes among them) and WAL past max_slot_wal_keep_size.
  Source(
      "UPDATE items SET n = n + 1 WHERE id % 3 = 0; DELETE FROM items WHERE id % 10 = 0;"
      "INSERT INTO items SELECT g, 7, 'new' FROM generate_series(2001, 2500) g");
  ASSERT_NO_FATAL_FAILURE(LoseTheSlot());

  // walshiftctl reads it from the databases: lost, with the procedure, exit 3.
  auto ctl = Walshiftctl({"status", "--config", config});
  EXPECT_EQ(ctl.status.exit_code(), kExitSlotLost) << ctl.stdout_text << ctl.stderr_text;
  EXPECT_THAT(ctl.stdout_text, HasSubstr("SLOT_LOST"));
  EXPECT_THAT(ctl.stdout_text, HasSubstr("pg_drop_replication_slot('" + slot_ + "')"));

  // walshiftd stops at once with exit code 3 and says what to do.
  ASSERT_TRUE(StartDaemon(config).ok());
  auto exited = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(exited.ok()) << "walshiftd did not stop on a lost slot\n" << DaemonLog();
  EXPECT_EQ(exited->exit_code(), kExitSlotLost) << exited->ToString() << "\n" << DaemonLog();
  std::string log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("replication slot " + slot_ + " was invalidated (wal_status lost)"));
  EXPECT_THAT(log, HasSubstr("SELECT pg_drop_replication_slot('" + slot_ + "')"));
  EXPECT_THAT(log, HasSubstr("DELETE FROM walshift.checkpoint WHERE pipeline = '" + pipeline_ + "'"));
  EXPECT_THAT(log, HasSubstr("walshiftctl verify --config FILE --repair"));
  // Events: the alarm, the ERROR state, and a last lag event showing the slot lost.
  bool alarm = false, error = false;
  for (const v1::StateEvent& e : StateEvents()) {
    alarm |= e.alarm() == v1::SLOT_LOST && !e.cleared() && absl::StrContains(e.warning(), "wal_status lost");
    error |= e.state() == v1::ERROR && absl::StrContains(e.message(), "pg_drop_replication_slot");
  }
  EXPECT_TRUE(alarm) << "no SLOT_LOST alarm event";
  EXPECT_TRUE(error) << "no ERROR state event with the procedure";
  std::vector<KafkaRecord> lags = ReadTopic(kafka_->bootstrap(), "walshift.lag");
  ASSERT_FALSE(lags.empty());
  v1::LagEvent last;
  ASSERT_TRUE(last.ParseFromString(lags.back().value));
  EXPECT_EQ(last.wal_status(), "lost");
  ASSERT_GE(last.alarms_size(), 1);
  EXPECT_EQ(last.alarms(0).kind(), v1::SLOT_LOST);
  // Started again, it stops again the same way: never a silent recreation of the slot.
  ASSERT_TRUE(StartDaemon(config).ok());
  exited = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(exited.ok());
  EXPECT_EQ(exited->exit_code(), kExitSlotLost);

  // The procedure, step by step.
  Source(absl::StrCat("SELECT pg_drop_replication_slot('", slot_, "')"));
  for (const char* table : {"checkpoint", "copy_chunk", "backfill"})
    Target(absl::StrCat("DELETE FROM walshift.", table, " WHERE pipeline = '", pipeline_, "'"));
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  auto repair = Walshiftctl({"verify", "--config", config, "--repair"});
  EXPECT_THAT(repair.stdout_text, HasSubstr("extra rows deleted")) << repair.stdout_text << repair.stderr_text;
  Source("UPDATE items SET n = n + 1 WHERE id % 7 = 0");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  auto verify = Walshiftctl({"verify", "--config", config});
  EXPECT_EQ(verify.status.exit_code(), 0) << verify.stdout_text << verify.stderr_text;
  ExpectExact();
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(SlotAlarmTest, SlotLostWhileRunningShowsInStatusThenStopsWithItsCode) {
  std::string config = Config("");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  int port = StatusPort();
  ASSERT_GT(port, 0);
  // Held behind by a lock in the target while the source writes past max_slot_wal_keep_size.
  auto blocker = pg::Connect(target_cluster_->Dsn(target_db_), "target", "");
  ASSERT_TRUE(blocker.ok()) << blocker.status();
  ASSERT_TRUE(pg::Exec(blocker->get(), "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE", "lock").ok());
  Source("INSERT INTO items SELECT g, 1, md5(g::text) FROM generate_series(1, 1000) g");
  ASSERT_NO_FATAL_FAILURE(LoseTheSlot());
  std::string status;
  for (int i = 0; i < 100 && status.find("\"kind\":\"SLOT_LOST\"") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = Get(port, "/status");
  }
  EXPECT_THAT(status, HasSubstr("\"kind\":\"SLOT_LOST\"")) << status;
  EXPECT_THAT(status, HasSubstr("\"wal_status\":\"lost\"")) << status;
  EXPECT_THAT(status, HasSubstr("pg_drop_replication_slot")) << status;
  auto ctl = Walshiftctl({"status", "--url", absl::StrCat("http://127.0.0.1:", port)});
  EXPECT_EQ(ctl.status.exit_code(), kExitSlotLost) << ctl.stdout_text << ctl.stderr_text;
  EXPECT_THAT(ctl.stdout_text, HasSubstr("!! SLOT_LOST since "));
  ASSERT_TRUE(pg::Exec(blocker->get(), "COMMIT", "unlock").ok());
  auto exited = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(exited.ok()) << "walshiftd went on with a lost slot\n" << DaemonLog();
  EXPECT_EQ(exited->exit_code(), kExitSlotLost) << exited->ToString() << "\n" << DaemonLog();
  EXPECT_THAT(DaemonLog(), HasSubstr("pg_drop_replication_slot('" + slot_ + "')"));
}

}  // namespace
}  // namespace walshift::testing
