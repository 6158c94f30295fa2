// Where replication stands: lag and state events on the embedded Kafka broker, a broker outage
// that must not slow the apply, heartbeats that advance the slot on an idle source, /status and
// /metrics under a known backlog, and walshiftctl status --url exit codes.

#include <regex>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "daemon/pg/pg_util.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/kafka_broker.h"
#include "tests/testing/test_paths.h"
#include "walshift/v1/events.pb.h"
#include <librdkafka/rdkafka.h>

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;

class ObserveTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    ASSERT_NO_FATAL_FAILURE(StartKafka());
  }

  std::string Config(const std::string& extra = "") {
    return WriteConfig(absl::StrCat(kOneTarget, "kafka: {brokers: \"", kafka_->bootstrap(), "\"}\n",
                                    "monitor: {lag_interval_s: 1, heartbeat_interval_s: 1}\n", extra,
                                    "mappings: [{source: items}]\n"));
  }
};

TEST_F(ObserveTest, LagAndStateEventsArriveInOrderWithTheirFields) {
  Source("CREATE TABLE items (id int PRIMARY KEY, v text)");
  Target("CREATE TABLE items (id int PRIMARY KEY, v text)");
  ASSERT_TRUE(StartDaemon(Config()).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 500) g");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // a few lag intervals
  EXPECT_TRUE(StopDaemon().success());

  std::vector<v1::PipelineState> states;
  for (const KafkaRecord& r : ReadTopic(kafka_->bootstrap(), "walshift.state")) {
    ASSERT_EQ(r.type, "walshift.v1.StateEvent");
    EXPECT_EQ(r.key, pipeline_);
    v1::StateEvent e;
    ASSERT_TRUE(e.ParseFromString(r.value));
    EXPECT_EQ(e.pipeline(), pipeline_);
    if (!states.empty()) {
      EXPECT_EQ(e.previous(), states.back());
    }
    states.push_back(e.state());
  }
  EXPECT_EQ(states, (std::vector<v1::PipelineState>{v1::SNAPSHOTTING, v1::STREAMING, v1::STOPPING}));

  std::vector<v1::LagEvent> lags;
  for (const KafkaRecord& r : ReadTopic(kafka_->bootstrap(), "walshift.lag")) {
    ASSERT_EQ(r.type, "walshift.v1.LagEvent");
    v1::LagEvent e;
    ASSERT_TRUE(e.ParseFromString(r.value));
    lags.push_back(e);
  }
  ASSERT_GE(lags.size(), 3u);
  for (size_t i = 1; i < lags.size(); ++i) {
    EXPECT_GE(lags[i].time().seconds() * 1000000000LL + lags[i].time().nanos(),
              lags[i - 1].time().seconds() * 1000000000LL + lags[i - 1].time().nanos());
  }
  // The last one before stopping: caught up, its applied position within the source's WAL.
  const v1::LagEvent* last = nullptr;
  for (const auto& e : lags)
    if (e.state() == v1::STREAMING && e.source_lsn() != "0/0") last = &e;
  ASSERT_NE(last, nullptr);
  ASSERT_EQ(last->targets_size(), 1);
  EXPECT_EQ(last->targets(0).target(), "main");
  EXPECT_LT(last->targets(0).lag_seconds(), 1.0);  // at most a heartbeat in flight
  EXPECT_GE(last->targets(0).applied_changes(), 500u);
  EXPECT_EQ(last->wal_status(), "reserved");
  EXPECT_NE(last->targets(0).applied_lsn(), "0/0");
}

TEST_F(ObserveTest, BrokerDownApplyContinuesAndEventsResume) {
  Source("CREATE TABLE items (id int PRIMARY KEY, v text)");
  Target("CREATE TABLE items (id int PRIMARY KEY, v text)");
  ASSERT_TRUE(StartDaemon(Config()).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  int port = StatusPort();
  ASSERT_GT(port, 0);
  ASSERT_TRUE(kafka_->SetBrokerDown(-1).ok());
  // Apply goes on while no event can be delivered.
  for (int i = 0; i < 5; ++i) {
    Source(absl::StrCat("INSERT INTO items SELECT g, 'v' FROM generate_series(", i * 2000 + 1, ", ", (i + 1) * 2000,
                        ") g"));
  }
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(60)).ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM items"), (PgRows{{"10000"}}));
  std::this_thread::sleep_for(std::chrono::seconds(2));
  std::string status = Get(port, "/status");
  EXPECT_THAT(status, HasSubstr("\"enabled\":true"));
  EXPECT_THAT(status, ::testing::Not(HasSubstr("\"queued\":0,"))) << status;  // events wait
  size_t before = ReadTopic(kafka_->bootstrap(), "walshift.lag").size();      // broker down: nothing
  EXPECT_EQ(before, 0u);
  ASSERT_TRUE(kafka_->SetBrokerUp(-1).ok());
  // The queued events and new ones arrive.
  size_t after = 0;
  for (int i = 0; i < 60 && after < 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    after = ReadTopic(kafka_->bootstrap(), "walshift.lag").size();
  }
  EXPECT_GE(after, 4u) << DaemonLog();
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(ObserveTest, HeartbeatsAdvanceTheSlotOnAnIdleSource) {
  Source("CREATE TABLE items (id int PRIMARY KEY, v text)");
  Target("CREATE TABLE items (id int PRIMARY KEY, v text)");
  ASSERT_TRUE(StartDaemon(Config()).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  // WAL written elsewhere in the cluster: the mapped database itself stays idle.
  auto other = source_cluster_->Query(
      "postgres",
      "CREATE TABLE IF NOT EXISTS observe_noise (x int); INSERT INTO observe_noise SELECT generate_series(1, 20000);"
      "SELECT pg_current_wal_lsn()::text");
  ASSERT_TRUE(other.ok()) << other.status();
  std::string after_noise = *(*other).back()[0];
  std::string confirmed;
  bool advanced = false;
  for (int i = 0; i < 100 && !advanced; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    PgRows r = SourceRows(absl::StrCat("SELECT confirmed_flush_lsn::text, (confirmed_flush_lsn > '", after_noise,
                                       "')::text FROM pg_replication_slots WHERE slot_name = '", slot_, "'"));
    ASSERT_EQ(r.size(), 1u);
    confirmed = *r[0][0];
    advanced = *r[0][1] == "true";
  }
  EXPECT_TRUE(advanced) << "confirmed_flush_lsn " << confirmed << " never passed " << after_noise;
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(ObserveTest, StatusAndMetricsReflectAKnownBacklog) {
  Source("CREATE TABLE items (id int PRIMARY KEY, v text)");
  Target("CREATE TABLE items (id int PRIMARY KEY, v text)");
  std::string config = Config();
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  int port = StatusPort();
  ASSERT_GT(port, 0);
  int code = 0;
  EXPECT_EQ(Get(port, "/healthz", &code), "ok\n");
  EXPECT_EQ(code, 200);
  // Caught up can come a moment before the switch from the (empty) copy to streaming: the
  // fence may lie before the slot's consistent point, inside the copy's snapshot.
  std::string ready;
  for (int i = 0; i < 50 && ready != "STREAMING\n"; ++i) {
    ready = Get(port, "/readyz", &code);
    if (ready != "STREAMING\n") {
      EXPECT_EQ(ready, "SNAPSHOTTING\n");
      EXPECT_EQ(code, 200);  // copying counts as ready too
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  EXPECT_EQ(ready, "STREAMING\n");
  EXPECT_EQ(code, 200);

  // A target session holds a lock on the table: 1,000 rows wait.
  auto blocker = pg::Connect(target_cluster_->Dsn(target_db_), "target", "");
  ASSERT_TRUE(blocker.ok()) << blocker.status();
  ASSERT_TRUE(pg::Exec(blocker->get(), "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE", "lock").ok());
  Source("INSERT INTO items SELECT g, 'v' FROM generate_series(1, 1000) g");
  std::this_thread::sleep_for(std::chrono::seconds(3));
  std::string status = Get(port, "/status");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(status, m, std::regex("\"lag_seconds\":([0-9.]+)"))) << status;
  EXPECT_GE(std::stod(m[1]), 2.0) << status;
  ASSERT_TRUE(std::regex_search(status, m, std::regex("\"lag_bytes\":\"([0-9]+)\""))) << status;
  EXPECT_GT(std::stoll(m[1]), 0) << status;
  std::string metrics = Get(port, "/metrics");
  ASSERT_TRUE(std::regex_search(
      metrics, m, std::regex("walshift_lag_seconds\\{pipeline=\"[^\"]+\",target=\"main\"\\} ([0-9.e+]+)")))
      << metrics;
  EXPECT_GE(std::stod(m[1]), 2.0);
  // walshiftctl: lagging past a threshold → 1.
  SubprocessOptions o;
  o.argv = {BinaryPath("walshiftctl"), "status", "--url", absl::StrCat("http://127.0.0.1:", port),
            "--max-lag-seconds",       "1"};
  auto r = Subprocess::Run(o, absl::Minutes(1));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status.exit_code(), 1) << r->stdout_text << r->stderr_text;

  ASSERT_TRUE(pg::Exec(blocker->get(), "COMMIT", "unlock").ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  status = Get(port, "/status");
  ASSERT_TRUE(std::regex_search(status, m, std::regex("\"lag_seconds\":([0-9.]+)"))) << status;
  EXPECT_EQ(std::stod(m[1]), 0.0) << status;
  metrics = Get(port, "/metrics");
  EXPECT_THAT(metrics,
              HasSubstr("walshift_table_changes_total{pipeline=\"" + pipeline_ + "\",table=\"public.items\"} 1000"));
  EXPECT_THAT(metrics, HasSubstr("walshift_state{pipeline=\"" + pipeline_ + "\",state=\"STREAMING\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("walshift_batch_changes_bucket"));
  r = Subprocess::Run(o, absl::Minutes(1));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status.exit_code(), 0) << r->stdout_text << r->stderr_text;
  EXPECT_TRUE(StopDaemon().success());
}

// Lag as a reader sees it: /status compares with a source position read now (not the monitor's
// reading of a minute ago), and an idle pipeline whose database is quiet while the rest of the
// cluster writes WAL is not behind: everything the walsender sent is applied.
TEST_F(ObserveTest, LagComparesWithAFreshSourcePositionAndIsZeroOnlyWhenCaughtUp) {
  Source("CREATE TABLE items (id int PRIMARY KEY, v text)");
  Target("CREATE TABLE items (id int PRIMARY KEY, v text)");
  std::string config = WriteConfig(absl::StrCat(kOneTarget, "monitor: {lag_interval_s: 60, heartbeat_interval_s: 0}\n",
                                                "mappings: [{source: items}]\n"));
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  int port = StatusPort();
  ASSERT_GT(port, 0);
  std::smatch m;
  auto field = [&](const std::string& status, const std::string& name) -> std::string {
    if (!std::regex_search(status, m, std::regex(absl::StrCat("\"", name, "\":\"?([0-9A-F/.]+)")))) return "";
    return m[1];
  };
  auto lsn_at_least = [&](const std::string& a, const std::string& b) {
    PgRows r = SourceRows(absl::StrCat("SELECT ('", a, "'::pg_lsn >= '", b, "'::pg_lsn)::text"));
    return r.size() == 1 && *r[0][0] == "true";
  };

  // A change the target cannot apply yet (a lock holds it back): lag, against a position read
  // now, although the monitor last read the source at start.
  auto blocker = pg::Connect(target_cluster_->Dsn(target_db_), "target", "");
  ASSERT_TRUE(blocker.ok()) << blocker.status();
  ASSERT_TRUE(pg::Exec(blocker->get(), "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE", "lock").ok());
  Source("INSERT INTO items SELECT g, 'v' FROM generate_series(1, 100) g");
  std::string after_insert = *SourceRows("SELECT pg_current_wal_lsn()::text")[0][0];
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));  // /status rereads a view older than 1 s
  std::string status = Get(port, "/status");
  EXPECT_TRUE(lsn_at_least(field(status, "source_lsn"), after_insert)) << status;
  std::string bytes = field(status, "lag_bytes");
  ASSERT_FALSE(bytes.empty()) << status;
  EXPECT_GT(std::stoll(bytes), 0) << status;
  ASSERT_TRUE(pg::Exec(blocker->get(), "COMMIT", "unlock").ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();

  // WAL written in another database of the cluster only: once the walsender's keepalive past it
  // is confirmed, nothing is behind, in /status and in walshiftctl status --config alike.
  auto other = source_cluster_->Query(
      "postgres",
      "CREATE TABLE IF NOT EXISTS observe_noise (x int); INSERT INTO observe_noise SELECT generate_series(1, 5000);"
      "SELECT pg_current_wal_lsn()::text");
  ASSERT_TRUE(other.ok()) << other.status();
  std::string after_noise = *(*other).back()[0];
  bool zero = false;
  for (int i = 0; i < 100 && !zero; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    status = Get(port, "/status");
    zero = field(status, "lag_bytes") == "0" && lsn_at_least(field(status, "source_lsn"), after_noise);
  }
  EXPECT_TRUE(zero) << "an idle pipeline is still counted behind for WAL it has no change in: " << status;
  // The server writes some WAL of its own now and then (running transactions records): asked
  // again until a reading falls between two of them.
  RunResult ctl;
  for (int i = 0; i < 20; ++i) {
    ctl = Walshiftctl({"status", "--config", config, "--max-lag-bytes", "0"});
    if (ctl.status.exit_code() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  EXPECT_EQ(ctl.status.exit_code(), 0) << ctl.stdout_text << ctl.stderr_text;
  EXPECT_THAT(ctl.stdout_text, ::testing::ContainsRegex("main +ok +[0-9A-F]+/[0-9A-F]+ +0 B")) << ctl.stdout_text;
  EXPECT_TRUE(StopDaemon().success());
}

}  // namespace
}  // namespace walshift::testing
