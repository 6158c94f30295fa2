#include "tests/testing/kafka_broker.h"

#include <signal.h>

#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/test_paths.h"

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

struct KafkaDeleter {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
using KafkaPtr = std::unique_ptr<rd_kafka_t, KafkaDeleter>;

// Counts delivery reports (the opaque is an int[2]: {delivered, failed}).
void CountDelivery(rd_kafka_t*, const rd_kafka_message_t* msg, void* opaque) {
  int* counts = static_cast<int*>(opaque);
  ++counts[msg->err == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : 1];
}

KafkaPtr NewClient(rd_kafka_type_t type, const std::string& bootstrap,
                   std::vector<std::pair<std::string, std::string>> extra, void* opaque) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[512];
  extra.emplace_back("bootstrap.servers", bootstrap);
  extra.emplace_back("log_level", "3");
  for (const auto& [k, v] : extra) {
    EXPECT_EQ(rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof(err)), RD_KAFKA_CONF_OK) << k << ": " << err;
  }
  if (type == RD_KAFKA_PRODUCER) rd_kafka_conf_set_dr_msg_cb(conf, CountDelivery);
  rd_kafka_conf_set_opaque(conf, opaque);
  rd_kafka_t* rk = rd_kafka_new(type, conf, err, sizeof(err));
  EXPECT_NE(rk, nullptr) << err;
  if (rk == nullptr) rd_kafka_conf_destroy(conf);
  return KafkaPtr(rk);
}

absl::Status Produce(rd_kafka_t* rk, const std::string& topic, const std::string& key, const std::string& value) {
  rd_kafka_resp_err_t e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_KEY(key.data(), key.size()),
                                            RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
                                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) return absl::InternalError(rd_kafka_err2str(e));
  return absl::OkStatus();
}

// Reads `want` messages of `topic` from the beginning with a group consumer; returns their
// values (in arrival order) once `want` arrived or after `timeout`.
std::vector<std::string> Consume(const std::string& bootstrap, const std::string& topic, size_t want,
                                 absl::Duration timeout) {
  KafkaPtr consumer = NewClient(
      RD_KAFKA_CONSUMER, bootstrap,
      {{"group.id", absl::StrCat("g-", topic)}, {"auto.offset.reset", "earliest"}, {"enable.auto.commit", "false"}},
      nullptr);
  std::vector<std::string> values;
  if (consumer == nullptr) return values;
  rd_kafka_poll_set_consumer(consumer.get());
  rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, topic.c_str(), RD_KAFKA_PARTITION_UA);
  EXPECT_EQ(rd_kafka_subscribe(consumer.get(), topics), RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_topic_partition_list_destroy(topics);
  absl::Time deadline = absl::Now() + timeout;
  while (values.size() < want && absl::Now() < deadline) {
    rd_kafka_message_t* msg = rd_kafka_consumer_poll(consumer.get(), 100);
    if (msg == nullptr) continue;
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      values.emplace_back(static_cast<const char*>(msg->payload), msg->len);
    }
    rd_kafka_message_destroy(msg);
  }
  rd_kafka_consumer_close(consumer.get());
  return values;
}

TEST(EmbeddedKafkaTest, ProduceAndConsumeInProcess) {
  absl::StatusOr<std::unique_ptr<EmbeddedKafka>> kafka = EmbeddedKafka::Start();
  ASSERT_TRUE(kafka.ok()) << kafka.status();
  EXPECT_THAT((*kafka)->bootstrap(), HasSubstr("127.0.0.1:"));
  ASSERT_TRUE((*kafka)->CreateTopic("events", 3).ok());

  int counts[2] = {0, 0};
  KafkaPtr producer = NewClient(RD_KAFKA_PRODUCER, (*kafka)->bootstrap(), {}, counts);
  ASSERT_NE(producer, nullptr);
  std::set<std::string> sent;
  for (int i = 0; i < 10; ++i) {
    std::string value = absl::StrCat("value-", i);
    ASSERT_TRUE(Produce(producer.get(), "events", absl::StrCat("key-", i % 4), value).ok());
    sent.insert(value);
  }
  ASSERT_EQ(rd_kafka_flush(producer.get(), 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
  EXPECT_EQ(counts[0], 10);
  EXPECT_EQ(counts[1], 0);

  std::vector<std::string> got = Consume((*kafka)->bootstrap(), "events", 10, absl::Seconds(60));
  EXPECT_EQ(std::set<std::string>(got.begin(), got.end()), sent);
  EXPECT_THAT(got, SizeIs(10));
}

TEST(EmbeddedKafkaTest, BrokerDownThenUpDeliversQueuedMessages) {
  absl::StatusOr<std::unique_ptr<EmbeddedKafka>> kafka = EmbeddedKafka::Start(1);
  ASSERT_TRUE(kafka.ok()) << kafka.status();
  ASSERT_TRUE((*kafka)->CreateTopic("lag", 1).ok());
  int counts[2] = {0, 0};
  KafkaPtr producer = NewClient(RD_KAFKA_PRODUCER, (*kafka)->bootstrap(), {{"message.timeout.ms", "120000"}}, counts);
  ASSERT_NE(producer, nullptr);
  ASSERT_TRUE(Produce(producer.get(), "lag", "k", "before").ok());
  ASSERT_EQ(rd_kafka_flush(producer.get(), 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
  ASSERT_EQ(counts[0], 1);

  ASSERT_TRUE((*kafka)->SetBrokerDown(1).ok());
  ASSERT_TRUE(Produce(producer.get(), "lag", "k", "during").ok());
  // While the only broker is down nothing can be delivered.
  EXPECT_EQ(rd_kafka_flush(producer.get(), 1000), RD_KAFKA_RESP_ERR__TIMED_OUT);
  EXPECT_EQ(counts[0], 1);
  EXPECT_EQ(counts[1], 0);
  EXPECT_EQ(rd_kafka_outq_len(producer.get()), 1);

  ASSERT_TRUE((*kafka)->SetBrokerUp(1).ok());
  ASSERT_EQ(rd_kafka_flush(producer.get(), 60000), RD_KAFKA_RESP_ERR_NO_ERROR);
  EXPECT_EQ(counts[0], 2);
  EXPECT_EQ(counts[1], 0);
  EXPECT_EQ(Consume((*kafka)->bootstrap(), "lag", 2, absl::Seconds(60)),
            (std::vector<std::string>{"before", "during"}));
}

TEST(EmbeddedKafkaTest, SeveralBrokersAndArgumentChecks) {
  EXPECT_EQ(EmbeddedKafka::Start(0).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::unique_ptr<EmbeddedKafka>> kafka = EmbeddedKafka::Start(3);
  ASSERT_TRUE(kafka.ok()) << kafka.status();
  EXPECT_EQ((*kafka)->broker_count(), 3);
  EXPECT_THAT(std::vector<std::string>(absl::StrSplit((*kafka)->bootstrap(), ',')), SizeIs(3));
  EXPECT_TRUE((*kafka)->CreateTopic("replicated", 6, 3).ok());
  EXPECT_EQ((*kafka)->CreateTopic("replicated", 6, 3).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ((*kafka)->CreateTopic("too-many-replicas", 1, 4).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*kafka)->CreateTopic("", 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*kafka)->SetBrokerDown(4).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*kafka)->SetBrokerDown(2).ok());
  EXPECT_TRUE((*kafka)->SetBrokerUp(2).ok());
  EXPECT_TRUE((*kafka)->SetBrokerDown(-1).ok());
  EXPECT_TRUE((*kafka)->SetBrokerUp(-1).ok());
}

// Starts build/bin/walshift-devkafka with `args` and returns it with its bootstrap address.
std::unique_ptr<Subprocess> StartDevKafka(std::vector<std::string> args, std::string* bootstrap) {
  SubprocessOptions o;
  o.argv = {BinaryPath("walshift-devkafka")};
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return nullptr;
  absl::StatusOr<std::string> line = (*p)->WaitForStdoutLine(absl::Seconds(60));
  EXPECT_TRUE(line.ok()) << line.status();
  if (!line.ok()) return nullptr;
  *bootstrap = *line;
  return *std::move(p);
}

TEST(DevKafkaTest, KcatProducesAndConsumes) {
  std::optional<std::string> kcat = FindProgram("kcat");
  if (!kcat.has_value()) GTEST_SKIP() << "kcat is not in PATH";
  std::string bootstrap;
  std::unique_ptr<Subprocess> broker = StartDevKafka({"--partitions", "1", "walshift.test", "other"}, &bootstrap);
  ASSERT_NE(broker, nullptr);
  EXPECT_THAT(bootstrap, HasSubstr("127.0.0.1:"));

  SubprocessOptions produce;
  produce.argv = {*kcat, "-b", bootstrap, "-P", "-t", "walshift.test"};
  produce.stdin_data = "first\nsecond\nthird\n";
  absl::StatusOr<RunResult> p = Subprocess::Run(produce, absl::Seconds(60));
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE(p->status.success()) << p->status.ToString() << ": " << p->stderr_text;

  SubprocessOptions consume;
  consume.argv = {*kcat, "-b", bootstrap, "-C", "-t", "walshift.test", "-o", "beginning", "-c", "3", "-e"};
  absl::StatusOr<RunResult> c = Subprocess::Run(consume, absl::Seconds(60));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->status.success()) << c->status.ToString() << ": " << c->stderr_text;
  EXPECT_EQ(c->stdout_text, "first\nsecond\nthird\n");

  // Metadata lists both topics created from the command line.
  SubprocessOptions list;
  list.argv = {*kcat, "-b", bootstrap, "-L"};
  absl::StatusOr<RunResult> l = Subprocess::Run(list, absl::Seconds(60));
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_THAT(l->stdout_text, HasSubstr("topic \"walshift.test\" with 1 partitions"));
  EXPECT_THAT(l->stdout_text, HasSubstr("topic \"other\" with 1 partitions"));

  ASSERT_TRUE(broker->Signal(SIGTERM).ok());
  absl::StatusOr<ExitStatus> exit = broker->Wait(absl::Seconds(60));
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(exit->success()) << exit->ToString();
}

TEST(DevKafkaTest, PartitionsFlagAndSigint) {
  std::optional<std::string> kcat = FindProgram("kcat");
  if (!kcat.has_value()) GTEST_SKIP() << "kcat is not in PATH";
  std::string bootstrap;
  std::unique_ptr<Subprocess> broker = StartDevKafka({"--partitions", "4", "wide"}, &bootstrap);
  ASSERT_NE(broker, nullptr);
  SubprocessOptions list;
  list.argv = {*kcat, "-b", bootstrap, "-L", "-t", "wide"};
  absl::StatusOr<RunResult> l = Subprocess::Run(list, absl::Seconds(60));
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_THAT(l->stdout_text, HasSubstr("topic \"wide\" with 4 partitions"));
  ASSERT_TRUE(broker->Signal(SIGINT).ok());
  absl::StatusOr<ExitStatus> exit = broker->Wait(absl::Seconds(60));
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(exit->success()) << exit->ToString();
}

TEST(DevKafkaTest, BadArgumentsExitWithUsage) {
  SubprocessOptions o;
  o.argv = {BinaryPath("walshift-devkafka"), "--partitions", "zero", "t"};
  absl::StatusOr<RunResult> r = Subprocess::Run(o, absl::Seconds(60));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 2) << r->status.ToString();
  EXPECT_THAT(r->stderr_text, HasSubstr("usage:"));
  EXPECT_EQ(r->stdout_text, "");
}

}  // namespace
}  // namespace walshift::testing
