// The Kafka broker down for more than a minute under a pgbench load: the bounded event queue
// (kafka.queue_max_messages) overflows, the drops are counted in /status and /metrics and said
// in the log, the target keeps catching up all the while (events are never on the data path),
// and once the broker is back events flow again. The target then equals the source exactly.

#include <cmath>
#include <fstream>
#include <iostream>
#include <regex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/kafka_broker.h"
#include "walshift/v1/events.pb.h"

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;

class KafkaFaultTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    ASSERT_NO_FATAL_FAILURE(StartKafka());
  }

  // The first number after `key` in `text` ("key":N or key N), -1 when absent.
  static int64_t NumberAfter(const std::string& text, const std::string& key) {
    size_t at = text.find(key);
    if (at == std::string::npos) return -1;
    at += key.size();
    while (at < text.size() && !std::isdigit(static_cast<unsigned char>(text[at]))) ++at;
    size_t end = at;
    while (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end]))) ++end;
    return end > at ? std::stoll(text.substr(at, end - at)) : -1;
  }

  std::string Checkpoint() {
    PgRows r =
        TargetRows(absl::StrCat("SELECT commit_lsn::text FROM walshift.checkpoint WHERE pipeline = '", pipeline_, "'"));
    return r.size() == 1 && r[0][0] ? *r[0][0] : "";
  }
};

TEST_F(KafkaFaultTest, BrokerDownForMinutesQueueOverflowsDropsAreCountedApplyGoesOn) {
  Source("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL, v text)");
  Target("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL, v text)");
  constexpr int kQueueMax = 20;
  std::string config = WriteConfig(
      absl::StrCat(kOneTarget, "kafka: {brokers: \"", kafka_->bootstrap(), "\", queue_max_messages: ", kQueueMax, "}\n",
                   "monitor: {lag_interval_s: 1, heartbeat_interval_s: 1}\n", "mappings: [{source: items}]\n"));
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  int port = StatusPort();
  ASSERT_GT(port, 0);
  // Events flow before the outage.
  size_t lag_before = 0;
  for (int i = 0; i < 40 && lag_before < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    lag_before = ReadTopic(kafka_->bootstrap(), "walshift.lag").size();
  }
  ASSERT_GE(lag_before, 2u) << DaemonLog();

  ASSERT_TRUE(kafka_->SetBrokerDown(-1).ok());
  std::string script = dir_ + "/upsert.sql";
  std::ofstream(script) << "\\set id random(1, 5000)\n"
                           "INSERT INTO items VALUES (:id, 1, md5(:id::text)) ON CONFLICT (id) DO "
                           "UPDATE SET n = items.n + 1, v = md5(items.v);\n"
                           "\\set gone random(1, 5000)\n"
                           "DELETE FROM items WHERE id = :gone AND n > 3;\n";
  // About 80 s of load at a bounded rate, all of it with the broker down.
  auto workload = StartPgbench({"-c", "2", "-j", "2", "-R", "150", "-T", "80", "-f", script});
  ASSERT_NE(workload, nullptr);
  // While no event can be delivered, the target keeps catching up with the source, again and
  // again: its checkpoint moves past everything committed before each fence.
  std::vector<std::string> checkpoints;
  for (int round = 0; round < 4; ++round) {
    std::this_thread::sleep_for(std::chrono::seconds(15));
    ASSERT_TRUE(WaitCaughtUp(absl::Seconds(60)).ok()) << "round " << round << "\n" << DaemonLog();
    checkpoints.push_back(Checkpoint());
  }
  for (size_t i = 1; i < checkpoints.size(); ++i) {
    PgRows moved =
        SourceRows(absl::StrCat("SELECT ('", checkpoints[i], "'::pg_lsn > '", checkpoints[i - 1], "'::pg_lsn)::text"));
    EXPECT_EQ(moved, (PgRows{{"true"}})) << checkpoints[i - 1] << " then " << checkpoints[i];
  }
  auto done = workload->Wait(absl::Seconds(120));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(60)).ok()) << DaemonLog();
  // Still down: exact already.
  PgRows expected = SourceRows("SELECT id::text, n::text, v FROM items ORDER BY id");
  EXPECT_GT(expected.size(), 1000u);
  EXPECT_TRUE(TargetRows("SELECT id::text, n::text, v FROM items ORDER BY id") == expected)
      << "target differs from the source while the broker is down";

  // The queue overflowed: drops are counted and reported.
  std::this_thread::sleep_for(std::chrono::seconds(2));  // a lag interval: the monitor refreshes the counters
  std::string status = Get(port, "/status");
  int64_t dropped = NumberAfter(status, "\"dropped\":");
  int64_t queued = NumberAfter(status, "\"queued\":");
  EXPECT_GT(dropped, 0) << status;
  EXPECT_LE(queued, kQueueMax) << status;
  EXPECT_GT(queued, 0) << status;
  std::string metrics = Get(port, "/metrics");
  int64_t dropped_metric = NumberAfter(metrics, "walshift_kafka_dropped_total{pipeline=\"" + pipeline_ + "\"}");
  EXPECT_GE(dropped_metric, dropped) << metrics;
  std::string log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("kafka: event dropped (Local: Queue full;"));
  // Said once, then at every power of two: not once per dropped event.
  size_t lines = 0;
  for (size_t at = log.find("kafka: event dropped"); at != std::string::npos;
       at = log.find("kafka: event dropped", at + 1))
    ++lines;
  EXPECT_LE(lines, 1 + static_cast<size_t>(std::log2(std::max<int64_t>(dropped_metric, 1))) + 1) << log;
  auto ctl = Walshiftctl({"status", "--url", absl::StrCat("http://127.0.0.1:", port)});
  EXPECT_THAT(ctl.stdout_text, HasSubstr(absl::StrCat("dropped ", dropped_metric)));
  std::cerr << "broker down: " << dropped_metric << " events dropped, " << queued << " queued (max " << kQueueMax
            << "), " << expected.size() << " rows exact, checkpoints " << checkpoints.front() << " .. "
            << checkpoints.back() << "\n";

  // The broker is back: the queued events and new ones arrive.
  ASSERT_TRUE(kafka_->SetBrokerUp(-1).ok());
  int64_t delivered_before = NumberAfter(Get(port, "/status"), "\"delivered\":");
  size_t lag_after = 0;
  for (int i = 0; i < 60 && lag_after < lag_before + kQueueMax + 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    lag_after = ReadTopic(kafka_->bootstrap(), "walshift.lag").size();
  }
  // Everything queued (at most kQueueMax) plus events published after the broker came back.
  EXPECT_GE(lag_after, lag_before + kQueueMax + 3) << DaemonLog();
  std::this_thread::sleep_for(std::chrono::seconds(2));
  status = Get(port, "/status");
  EXPECT_GT(NumberAfter(status, "\"delivered\":"), delivered_before) << status;
  EXPECT_LT(NumberAfter(status, "\"queued\":"), kQueueMax) << status;
  std::cerr << "broker back: " << lag_after - lag_before << " lag events delivered since the outage began\n";

  Source("UPDATE items SET n = n + 100 WHERE id % 7 = 0");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  expected = SourceRows("SELECT id::text, n::text, v FROM items ORDER BY id");
  EXPECT_TRUE(TargetRows("SELECT id::text, n::text, v FROM items ORDER BY id") == expected);
  EXPECT_TRUE(StopDaemon().success());
}

}  // namespace
}  // namespace walshift::testing
