// walshiftctl's views of a running walshiftd: `events` decodes events produced into the
// embedded Kafka broker exactly as walshiftd's publisher writes them (both content types,
// plus messages that break the contract); `status --url` reads an HTTP status document; and
// the status renderer and exit code logic on a sample document.

#include <signal.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/testing/kafka_broker.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/test_paths.h"
#include "tools/walshiftctl/commands.h"
#include "walshift/v1/events.pb.h"
#include <librdkafka/rdkafka.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace walshift::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

struct KafkaDeleter {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
using KafkaPtr = std::unique_ptr<rd_kafka_t, KafkaDeleter>;

constexpr char kProtobuf[] = "application/x-protobuf";
constexpr char kJson[] = "application/json";

// A port nothing listens on (bound once by us, then released).
int UnusedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  return ntohs(addr.sin_port);
}

google::protobuf::Timestamp At(const std::string& rfc3339) {
  google::protobuf::Timestamp t;
  EXPECT_TRUE(google::protobuf::util::TimeUtil::FromString(rfc3339, &t)) << rfc3339;
  return t;
}

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  std::string json;
  EXPECT_TRUE(google::protobuf::util::MessageToJsonString(m, &json, o).ok());
  return json;
}

v1::StateEvent Started() {
  v1::StateEvent e;
  e.set_pipeline("orders-v2");
  *e.mutable_time() = At("2026-11-22T07:30:00Z");
  e.set_previous(v1::STARTING);
  e.set_state(v1::STREAMING);
  e.set_message("caught up with the slot");
  return e;
}

v1::LagEvent CaughtUp() {
  v1::LagEvent e;
  e.set_pipeline("orders-v2");
  *e.mutable_time() = At("2026-11-22T07:30:05Z");
  e.set_state(v1::STREAMING);
  e.set_source_lsn("0/16B3C28");
  e.set_wal_status("reserved");
  e.set_retained_wal_bytes(16 << 20);
  v1::TargetLag* t = e.add_targets();
  t->set_target("main");
  t->set_applied_lsn("0/16B3C28");
  t->set_changes_per_second(120);
  return e;
}

v1::LagEvent Behind() {
  v1::LagEvent e = CaughtUp();
  *e.mutable_time() = At("2026-11-22T07:30:10Z");
  e.set_lag_bytes(80 << 20);
  e.set_lag_seconds(12.5);
  v1::TargetLag* t = e.add_targets();
  t->set_target("archive");
  t->set_applied_lsn("0/1000000");
  t->set_lag_bytes(80 << 20);
  t->set_lag_seconds(12.5);
  t->set_changes_per_second(3.5);
  return e;
}

v1::DriftEvent Drift() {
  v1::DriftEvent e;
  e.set_pipeline("orders-v2");
  *e.mutable_time() = At("2026-11-22T07:31:00Z");
  e.set_source_table("public.orders");
  e.set_target("main");
  e.set_target_table("app.orders_v2");
  e.set_kind(v1::MISMATCH);
  e.set_key("id=4");
  v1::ColumnDiff* c = e.add_columns();
  c->set_column("total");
  c->set_expected("5");
  c->set_actual("6");
  return e;
}

class WalshiftctlEventsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<EmbeddedKafka>> k = EmbeddedKafka::Start();
    ASSERT_TRUE(k.ok()) << k.status();
    kafka_ = k->release();
  }
  static void TearDownTestSuite() {
    delete kafka_;
    kafka_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(kafka_, nullptr);
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char err[512];
    ASSERT_EQ(rd_kafka_conf_set(conf, "bootstrap.servers", kafka_->bootstrap().c_str(), err, sizeof(err)),
              RD_KAFKA_CONF_OK);
    producer_.reset(rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err)));
    ASSERT_NE(producer_, nullptr) << err;
  }

  // Produces like walshiftd's publisher: the `walshift-type` header unless `type` is empty,
  // the `content-type` header.
  void Produce(const std::string& topic, int32_t partition, const std::string& key, const std::string& type,
               const std::string& content_type, const std::string& value) {
    rd_kafka_headers_t* headers = rd_kafka_headers_new(2);
    if (!type.empty()) rd_kafka_header_add(headers, "walshift-type", -1, type.data(), type.size());
    rd_kafka_header_add(headers, "content-type", -1, content_type.data(), content_type.size());
    rd_kafka_resp_err_t e = rd_kafka_producev(
        producer_.get(), RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_PARTITION(partition),
        RD_KAFKA_V_KEY(key.data(), key.size()), RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
        RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) rd_kafka_headers_destroy(headers);  // still ours on failure
    ASSERT_EQ(e, RD_KAFKA_RESP_ERR_NO_ERROR) << rd_kafka_err2str(e);
  }
  void ProduceEvent(const std::string& topic, int32_t partition, const std::string& key,
                    const google::protobuf::Message& event, bool json) {
    Produce(topic, partition, key, event.GetDescriptor()->full_name(), json ? kJson : kProtobuf,
            json ? ToJson(event) : event.SerializeAsString());
  }
  void Flush() { ASSERT_EQ(rd_kafka_flush(producer_.get(), 30000), RD_KAFKA_RESP_ERR_NO_ERROR); }

  // Partition 0: five events in both encodings and two messages that break the contract;
  // partition 1: one event.
  void ProduceSample(const std::string& topic) {
    ASSERT_TRUE(kafka_->CreateTopic(topic, 2).ok());
    ProduceEvent(topic, 0, "orders-v2", Started(), /*json=*/false);
    ProduceEvent(topic, 0, "orders-v2", CaughtUp(), /*json=*/true);
    Produce(topic, 0, "orders-v2", "walshift.v1.LagEvent", kProtobuf, "not a protobuf");  // 'n': wire type 6
    Produce(topic, 0, "orders-v2", "", kProtobuf, CaughtUp().SerializeAsString());
    Produce(topic, 0, "orders-v2", "walshift.v1.FutureEvent", kJson, "{}");
    ProduceEvent(topic, 0, "orders-v2/public.orders", Drift(), /*json=*/false);
    ProduceEvent(topic, 0, "orders-v2", Behind(), /*json=*/false);
    v1::StateEvent reconnecting;
    reconnecting.set_pipeline("orders-v2");
    *reconnecting.mutable_time() = At("2026-11-22T07:32:00Z");
    reconnecting.set_previous(v1::STREAMING);
    reconnecting.set_state(v1::RECONNECTING);
    reconnecting.set_message("connection to the source lost");
    ProduceEvent(topic, 1, "orders-v2", reconnecting, /*json=*/true);
    Flush();
  }

  absl::StatusOr<RunResult> Ctl(std::vector<std::string> args, absl::Duration timeout = absl::Seconds(30)) {
    SubprocessOptions o;
    o.argv = {BinaryPath("walshiftctl")};
    o.argv.insert(o.argv.end(), args.begin(), args.end());
    return Subprocess::Run(o, timeout);
  }

  static EmbeddedKafka* kafka_;
  KafkaPtr producer_;
};

EmbeddedKafka* WalshiftctlEventsTest::kafka_ = nullptr;

std::vector<std::string> Lines(const std::string& text) { return absl::StrSplit(text, '\n', absl::SkipEmpty()); }

TEST_F(WalshiftctlEventsTest, ReadableLinesInPartitionOrder) {
  ProduceSample("readable");
  absl::StatusOr<RunResult> r =
      Ctl({"events", "--brokers", kafka_->bootstrap(), "--topic", "readable", "--from-beginning"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 0) << r->status.ToString() << "\n" << r->stderr_text;
  std::vector<std::string> partition0, partition1;
  for (const std::string& line : Lines(r->stdout_text))
    (absl::StrContains(line, "RECONNECTING") ? partition1 : partition0).push_back(line);
  EXPECT_THAT(partition0,
              ElementsAre("2026-11-22T07:30:00Z  orders-v2  STATE  STARTING -> STREAMING  caught up with the slot",
                          "2026-11-22T07:30:05Z  orders-v2  LAG    STREAMING  lag 0 B / 0.0 s  main: applied "
                          "0/16B3C28, 120 changes/s  slot reserved, retains 16.0 MiB",
                          "skipped  partition 0 offset 2 key \"orders-v2\" (14 bytes): cannot decode "
                          "walshift.v1.LagEvent from binary protobuf (14 bytes)",
                          HasSubstr("skipped  partition 0 offset 3 key \"orders-v2\" ("),
                          "skipped  partition 0 offset 4 key \"orders-v2\" (2 bytes): unknown walshift-type "
                          "\"walshift.v1.FutureEvent\"",
                          "2026-11-22T07:31:00Z  orders-v2  DRIFT  MISMATCH public.orders -> app.orders_v2 (main) "
                          "key (id=4)  total: expected 5 actual 6",
                          "2026-11-22T07:30:10Z  orders-v2  LAG    STREAMING  lag 80.0 MiB / 12.5 s  main: applied "
                          "0/16B3C28, 120 changes/s; archive: applied 0/1000000 (lag 80.0 MiB / 12.5 s), 3.5 "
                          "changes/s  slot reserved, retains 16.0 MiB"))
      << r->stdout_text;
  EXPECT_THAT(partition0[3], HasSubstr("no walshift-type header"));
  EXPECT_THAT(partition1, ElementsAre("2026-11-22T07:32:00Z  orders-v2  STATE  STREAMING -> RECONNECTING  "
                                      "connection to the source lost"));

  // From the end, without --follow: nothing to print, and done.
  r = Ctl({"events", "--brokers", kafka_->bootstrap(), "--topic", "readable"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 0) << r->stderr_text;
  EXPECT_EQ(r->stdout_text, "");
}

TEST_F(WalshiftctlEventsTest, JsonWrapsTheProto3Mapping) {
  ProduceSample("json");
  absl::StatusOr<RunResult> r =
      Ctl({"events", "--brokers", kafka_->bootstrap(), "--topic", "json", "--from-beginning", "--json"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 0) << r->status.ToString() << "\n" << r->stderr_text;
  std::vector<google::protobuf::Struct> partition0;
  int partition1 = 0;
  for (const std::string& line : Lines(r->stdout_text)) {
    google::protobuf::Struct s;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(line, &s).ok()) << line;
    if (s.fields().at("partition").number_value() == 1)
      ++partition1;
    else
      partition0.push_back(s);
  }
  EXPECT_EQ(partition1, 1);
  ASSERT_EQ(partition0.size(), 7u) << r->stdout_text;
  for (size_t i = 0; i < partition0.size(); ++i)
    EXPECT_EQ(partition0[i].fields().at("offset").number_value(), static_cast<double>(i));
  auto field = [](const google::protobuf::Struct& s, const std::string& name) -> const google::protobuf::Value& {
    return s.fields().at(name);
  };

  EXPECT_EQ(field(partition0[0], "type").string_value(), "walshift.v1.StateEvent");
  EXPECT_EQ(field(partition0[0], "key").string_value(), "orders-v2");
  v1::StateEvent started;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(ToJson(field(partition0[0], "event")), &started).ok());
  EXPECT_EQ(started.SerializeAsString(), Started().SerializeAsString());
  EXPECT_EQ(field(partition0[0], "event").struct_value().fields().at("previous").string_value(), "STARTING");

  // Proto3 JSON with the proto's field names; 64-bit integers as strings.
  const google::protobuf::Struct& lag = field(partition0[6], "event").struct_value();
  EXPECT_EQ(field(partition0[6], "type").string_value(), "walshift.v1.LagEvent");
  EXPECT_EQ(lag.fields().at("lag_bytes").string_value(), absl::StrCat(80 << 20));
  EXPECT_EQ(lag.fields().at("targets").list_value().values(1).struct_value().fields().at("applied_lsn").string_value(),
            "0/1000000");
  EXPECT_EQ(field(partition0[5], "key").string_value(), "orders-v2/public.orders");
  EXPECT_EQ(field(partition0[5], "event").struct_value().fields().at("kind").string_value(), "MISMATCH");

  // The messages that break the contract: an error instead of an event.
  EXPECT_EQ(partition0[2].fields().count("event"), 0u);
  EXPECT_THAT(field(partition0[2], "error").string_value(), HasSubstr("cannot decode walshift.v1.LagEvent"));
  EXPECT_EQ(field(partition0[3], "type").kind_case(), google::protobuf::Value::kNullValue);
  EXPECT_THAT(field(partition0[4], "error").string_value(), HasSubstr("unknown walshift-type"));
}

TEST_F(WalshiftctlEventsTest, FollowPrintsNewEventsUntilSigterm) {
  ASSERT_TRUE(kafka_->CreateTopic("follow", 1).ok());
  ProduceEvent("follow", 0, "orders-v2", Started(), /*json=*/false);
  Flush();
  SubprocessOptions o;
  o.argv = {BinaryPath("walshiftctl"), "events",  "--brokers", kafka_->bootstrap(), "--topic", "follow",
            "--from-beginning",        "--follow"};
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(o);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE((*p)->WaitForOutput(Subprocess::Stream::kStdout, "caught up with the slot", absl::Seconds(30)).ok());
  ProduceEvent("follow", 0, "orders-v2/public.orders", Drift(), /*json=*/true);
  Flush();
  absl::StatusOr<std::string> out =
      (*p)->WaitForOutput(Subprocess::Stream::kStdout, "DRIFT  MISMATCH", absl::Seconds(30));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE((*p)->Signal(SIGTERM).ok());
  absl::StatusOr<ExitStatus> exit = (*p)->Wait(absl::Seconds(10));
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(exit->success()) << exit->ToString();
}

TEST_F(WalshiftctlEventsTest, UnknownTopicAndBadArgumentsExit2) {
  absl::StatusOr<RunResult> r = Ctl({"events", "--brokers", kafka_->bootstrap(), "--topic", "no-such-topic"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 2) << r->status.ToString();
  EXPECT_THAT(r->stderr_text, HasSubstr("no-such-topic: no such topic"));
  r = Ctl({"events", "--topic", "readable"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 2);
  EXPECT_THAT(r->stderr_text, HasSubstr("usage: walshiftctl events"));
}

TEST_F(WalshiftctlEventsTest, UnreachableBrokerExits2) {
  absl::Time start = absl::Now();
  absl::StatusOr<RunResult> r =
      Ctl({"events", "--brokers", absl::StrCat("127.0.0.1:", UnusedPort()), "--topic", "t", "--follow"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 2) << r->status.ToString();
  EXPECT_THAT(r->stderr_text, HasSubstr("no metadata from the Kafka brokers"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
}

// A /status document as walshiftd serves it: copying one table, one target, Kafka on.
constexpr char kStatusJson[] = R"({
  "pipeline": "orders-v2",
  "state": "SNAPSHOTTING",
  "state_message": "",
  "state_since": "2026-11-22T07:30:00Z",
  "lag": {"pipeline": "orders-v2", "state": "SNAPSHOTTING", "source_lsn": "0/16B3C28",
          "wal_status": "reserved", "retained_wal_bytes": "1288490188", "safe_wal_size": "-1",
          "lag_bytes": "0", "lag_seconds": 0,
          "targets": [{"target": "main", "applied_lsn": "0/16B3C28", "lag_bytes": "0", "lag_seconds": 0,
                       "changes_per_second": 120.0, "transactions_per_second": 3.0}]},
  "copy": [{"source_table": "public.orders", "target": "main", "rows": 12000, "estimated_rows": 100000,
            "rows_per_second": 5400.0, "eta_seconds": 14.4, "chunks_done": 1, "chunks_total": 10, "done": false},
           {"source_table": "public.accounts", "target": "main", "rows": 500, "estimated_rows": 500,
            "rows_per_second": 100.0, "eta_seconds": 0, "chunks_done": 1, "chunks_total": 1, "done": true}],
  "kafka": {"enabled": true, "brokers": "127.0.0.1:9092", "queued": 0, "delivered": 10, "dropped": 0, "failed": 0},
  "errors": 0
})";

google::protobuf::Struct Sample() {
  absl::StatusOr<google::protobuf::Struct> s = ctl::ParseStatus(kStatusJson);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : google::protobuf::Struct();
}

TEST(WalshiftctlStatusTest, RendersAtAGlance) {
  google::protobuf::Struct s = Sample();
  std::string text = ctl::RenderStatus(s, ctl::LagLimits());
  EXPECT_THAT(text, HasSubstr("pipeline orders-v2  SNAPSHOTTING since 2026-11-22T07:30:00Z\n"));
  EXPECT_THAT(text, HasSubstr("current WAL 0/16B3C28; slot wal_status reserved, retains 1.2 GiB of WAL\n"));
  EXPECT_THAT(text, HasSubstr("main         ok       0 B / 0.0 s            0/16B3C28      120 changes/s, 3.0 tx/s"));
  EXPECT_THAT(text, HasSubstr("copy     public.orders -> main  [##..................]  12%  12,000 / 100,000 rows  "
                              "5,400 rows/s  ETA 14 s\n"));
  EXPECT_THAT(text, Not(HasSubstr("public.accounts")));  // done
  EXPECT_THAT(text, HasSubstr("kafka    enabled (127.0.0.1:9092): queued 0, delivered 10, dropped 0, failed 0"));
  EXPECT_EQ(ctl::StatusExitCode(s, ctl::LagLimits()), 0);

  // A target past the byte limit is LAGGING and the exit code 1; so is one past the seconds.
  google::protobuf::Struct lagging = s;
  auto* target = lagging.mutable_fields()
                     ->at("lag")
                     .mutable_struct_value()
                     ->mutable_fields()
                     ->at("targets")
                     .mutable_list_value()
                     ->mutable_values(0)
                     ->mutable_struct_value()
                     ->mutable_fields();
  (*target)["lag_bytes"].set_string_value("104857600");
  EXPECT_THAT(ctl::RenderStatus(lagging, ctl::LagLimits()), HasSubstr("main         LAGGING  100.0 MiB / 0.0 s"));
  EXPECT_EQ(ctl::StatusExitCode(lagging, ctl::LagLimits()), 1);
  EXPECT_EQ(ctl::StatusExitCode(lagging, ctl::LagLimits{200.0 * 1024 * 1024, 300}), 0);
  (*target)["lag_bytes"].set_string_value("0");
  (*target)["lag_seconds"].set_number_value(301);
  EXPECT_EQ(ctl::StatusExitCode(lagging, ctl::LagLimits()), 1);
  EXPECT_EQ(ctl::StatusExitCode(lagging, ctl::LagLimits{1, 600}), 0);

  google::protobuf::Struct error = s;
  (*error.mutable_fields())["state"].set_string_value("ERROR");
  (*error.mutable_fields())["state_message"].set_string_value("column \"total\" of app.orders_v2 does not exist");
  EXPECT_THAT(ctl::RenderStatus(error, ctl::LagLimits()),
              HasSubstr("ERROR since 2026-11-22T07:30:00Z: column \"total\" of app.orders_v2 does not exist\n"));
  EXPECT_EQ(ctl::StatusExitCode(error, ctl::LagLimits()), 1);

  // Fields proto3 JSON leaves out (zero values) and a document without lag or Kafka.
  absl::StatusOr<google::protobuf::Struct> bare = ctl::ParseStatus(R"({"pipeline":"p","state":"STARTING"})");
  ASSERT_TRUE(bare.ok());
  EXPECT_THAT(ctl::RenderStatus(*bare, ctl::LagLimits()), HasSubstr("(no lag report yet)"));
  EXPECT_THAT(ctl::RenderStatus(*bare, ctl::LagLimits()), HasSubstr("kafka    disabled"));
  EXPECT_EQ(ctl::StatusExitCode(*bare, ctl::LagLimits()), 0);
  EXPECT_FALSE(ctl::ParseStatus("<html>").ok());
}

TEST(WalshiftctlStatusTest, UrlOverHttp) {
  httplib::Server server;
  server.Get("/status",
             [](const httplib::Request&, httplib::Response& res) { res.set_content(kStatusJson, "application/json"); });
  int port = server.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread serving([&server] { server.listen_after_bind(); });
  while (!server.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(10));

  SubprocessOptions o;
  o.argv = {BinaryPath("walshiftctl"), "status", "--url", absl::StrCat("http://127.0.0.1:", port)};
  absl::StatusOr<RunResult> r = Subprocess::Run(o, absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 0) << r->stderr_text;
  EXPECT_THAT(r->stdout_text, HasSubstr("12,000 / 100,000 rows"));

  o.argv = {BinaryPath("walshiftctl"), "status", "--url", absl::StrCat("127.0.0.1:", port), "--json"};
  r = Subprocess::Run(o, absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 0) << r->stderr_text;
  EXPECT_EQ(r->stdout_text, absl::StrCat(kStatusJson, "\n"));

  server.stop();
  serving.join();
}

TEST(WalshiftctlStatusTest, UnreachableUrlExits2) {
  SubprocessOptions o;
  o.argv = {BinaryPath("walshiftctl"), "status", "--url", absl::StrCat("http://127.0.0.1:", UnusedPort())};
  absl::StatusOr<RunResult> r = Subprocess::Run(o, absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 2) << r->status.ToString();
  EXPECT_THAT(r->stderr_text, HasSubstr("is unreachable"));
}

}  // namespace
}  // namespace walshift::testing
