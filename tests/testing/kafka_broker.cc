#include "tests/testing/kafka_broker.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace walshift::testing {

absl::StatusOr<std::unique_ptr<EmbeddedKafka>> EmbeddedKafka::Start(int broker_count) {
  if (broker_count < 1) {
    return absl::InvalidArgumentError(absl::StrCat("EmbeddedKafka: broker_count ", broker_count));
  }
  std::unique_ptr<EmbeddedKafka> kafka(new EmbeddedKafka());
  kafka->broker_count_ = broker_count;

  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  // The host handle never connects anywhere; keep it from warning about bootstrap.servers.
  if (rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err)) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(conf, "client.id", "walshift-embedded-kafka", err, sizeof(err)) != RD_KAFKA_CONF_OK) {
    rd_kafka_conf_destroy(conf);
    return absl::InternalError(absl::StrCat("EmbeddedKafka: config: ", err));
  }
  kafka->host_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (kafka->host_ == nullptr) {
    rd_kafka_conf_destroy(conf);
    return absl::InternalError(absl::StrCat("EmbeddedKafka: rd_kafka_new: ", err));
  }
  kafka->mcluster_ = rd_kafka_mock_cluster_new(kafka->host_, broker_count);
  if (kafka->mcluster_ == nullptr) {
    return absl::InternalError("EmbeddedKafka: rd_kafka_mock_cluster_new failed");
  }
  const char* bootstraps = rd_kafka_mock_cluster_bootstraps(kafka->mcluster_);
  if (bootstraps == nullptr || *bootstraps == '\0') {
    return absl::InternalError("EmbeddedKafka: mock cluster has no bootstrap address");
  }
  kafka->bootstrap_ = bootstraps;
  return kafka;
}

EmbeddedKafka::~EmbeddedKafka() {
  if (mcluster_ != nullptr) rd_kafka_mock_cluster_destroy(mcluster_);
  if (host_ != nullptr) rd_kafka_destroy(host_);
}

absl::Status EmbeddedKafka::CreateTopic(const std::string& name, int partitions, int replication_factor) {
  if (name.empty() || partitions < 1 || replication_factor < 1 || replication_factor > broker_count_) {
    return absl::InvalidArgumentError(absl::StrCat("EmbeddedKafka: CreateTopic(\"", name, "\", ", partitions, ", ",
                                                   replication_factor, ") with ", broker_count_, " broker(s)"));
  }
  rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mcluster_, name.c_str(), partitions, replication_factor);
  if (e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
    return absl::AlreadyExistsError(absl::StrCat("EmbeddedKafka: topic ", name, " exists"));
  }
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::InternalError(absl::StrCat("EmbeddedKafka: create topic ", name, ": ", rd_kafka_err2str(e)));
  }
  return absl::OkStatus();
}

absl::Status EmbeddedKafka::CheckBrokerId(int32_t broker_id) const {
  if (broker_id == -1 || (broker_id >= 1 && broker_id <= broker_count_)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("EmbeddedKafka: no broker ", broker_id, " (brokers 1..", broker_count_, ")"));
}

absl::Status EmbeddedKafka::SetBrokerDown(int32_t broker_id) {
  if (absl::Status st = CheckBrokerId(broker_id); !st.ok()) return st;
  rd_kafka_resp_err_t e = rd_kafka_mock_broker_set_down(mcluster_, broker_id);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::InternalError(absl::StrCat("EmbeddedKafka: broker ", broker_id, " down: ", rd_kafka_err2str(e)));
  }
  return absl::OkStatus();
}

absl::Status EmbeddedKafka::SetBrokerUp(int32_t broker_id) {
  if (absl::Status st = CheckBrokerId(broker_id); !st.ok()) return st;
  rd_kafka_resp_err_t e = rd_kafka_mock_broker_set_up(mcluster_, broker_id);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::InternalError(absl::StrCat("EmbeddedKafka: broker ", broker_id, " up: ", rd_kafka_err2str(e)));
  }
  return absl::OkStatus();
}

// Every message of `topic` (partition 0) from the beginning to its current end.
std::vector<KafkaRecord> ReadTopic(const std::string& bootstrap, const std::string& topic) {
  std::vector<KafkaRecord> out;
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof(err));
  rd_kafka_conf_set(conf, "group.id", "walshift-observe-test", err, sizeof(err));
  rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof(err));
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
  if (rk == nullptr) return out;
  rd_kafka_topic_partition_list_t* parts = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(parts, topic.c_str(), 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
  rd_kafka_assign(rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk, 500);
    if (m == nullptr) continue;
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      rd_kafka_message_destroy(m);
      break;
    }
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      KafkaRecord r;
      r.value.assign(static_cast<const char*>(m->payload), m->len);
      if (m->key) r.key.assign(static_cast<const char*>(m->key), m->key_len);
      rd_kafka_headers_t* h = nullptr;
      const void* v = nullptr;
      size_t n = 0;
      if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR &&
          rd_kafka_header_get_last(h, "walshift-type", &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        r.type.assign(static_cast<const char*>(v), n);
      }
      out.push_back(std::move(r));
    }
    rd_kafka_message_destroy(m);
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return out;
}

}  // namespace walshift::testing
