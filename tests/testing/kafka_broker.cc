#include "tests/testing/kafka_broker.h"

#include "absl/strings/str_cat.h"

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
      rd_kafka_conf_set(conf, "client.id", "walshift-embedded-kafka", err, sizeof(err)) !=
          RD_KAFKA_CONF_OK) {
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

absl::Status EmbeddedKafka::CreateTopic(const std::string& name, int partitions,
                                        int replication_factor) {
  if (name.empty() || partitions < 1 || replication_factor < 1 ||
      replication_factor > broker_count_) {
    return absl::InvalidArgumentError(absl::StrCat("EmbeddedKafka: CreateTopic(\"", name, "\", ",
                                                   partitions, ", ", replication_factor, ") with ",
                                                   broker_count_, " broker(s)"));
  }
  rd_kafka_resp_err_t e =
      rd_kafka_mock_topic_create(mcluster_, name.c_str(), partitions, replication_factor);
  if (e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
    return absl::AlreadyExistsError(absl::StrCat("EmbeddedKafka: topic ", name, " exists"));
  }
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::InternalError(
        absl::StrCat("EmbeddedKafka: create topic ", name, ": ", rd_kafka_err2str(e)));
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
    return absl::InternalError(
        absl::StrCat("EmbeddedKafka: broker ", broker_id, " down: ", rd_kafka_err2str(e)));
  }
  return absl::OkStatus();
}

absl::Status EmbeddedKafka::SetBrokerUp(int32_t broker_id) {
  if (absl::Status st = CheckBrokerId(broker_id); !st.ok()) return st;
  rd_kafka_resp_err_t e = rd_kafka_mock_broker_set_up(mcluster_, broker_id);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::InternalError(
        absl::StrCat("EmbeddedKafka: broker ", broker_id, " up: ", rd_kafka_err2str(e)));
  }
  return absl::OkStatus();
}

}  // namespace walshift::testing
