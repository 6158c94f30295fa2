#pragma once
// An in-process Kafka-protocol broker for tests and the demo: librdkafka's mock cluster
// (rdkafka_mock.h). Real clients (walshift's publisher, kcat) talk to it over TCP on 127.0.0.1.
// It keeps messages in memory only; topics can be created explicitly or are auto-created on
// first use; brokers can be taken down and up to simulate outages.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

namespace walshift::testing {

// Thread-safe: the mock cluster runs on its own thread and every method only posts requests
// to it.
class EmbeddedKafka {
 public:
  // Starts `broker_count` brokers (ids 1..broker_count) listening on 127.0.0.1 ephemeral ports.
  // kInvalidArgument for broker_count < 1, kInternal when librdkafka fails.
  static absl::StatusOr<std::unique_ptr<EmbeddedKafka>> Start(int broker_count = 1);

  EmbeddedKafka(const EmbeddedKafka&) = delete;
  EmbeddedKafka& operator=(const EmbeddedKafka&) = delete;
  // Stops the brokers; clients still connected see disconnects.
  ~EmbeddedKafka();

  // "127.0.0.1:port[,127.0.0.1:port...]", for bootstrap.servers / kcat -b.
  const std::string& bootstrap() const { return bootstrap_; }
  int broker_count() const { return broker_count_; }

  // Creates `name` with `partitions` partitions (leaders spread over the brokers).
  // kInvalidArgument for bad counts (replication_factor must not exceed broker_count()),
  // kAlreadyExists when the topic exists, kInternal otherwise.
  absl::Status CreateTopic(const std::string& name, int partitions = 1, int replication_factor = 1);

  // Disconnects broker `broker_id` (1-based, -1 for all) and refuses new connections until
  // SetBrokerUp. Leadership does not move. kInvalidArgument for an unknown id.
  absl::Status SetBrokerDown(int32_t broker_id);
  absl::Status SetBrokerUp(int32_t broker_id);

  // The underlying mock cluster, for fault injection this class does not wrap
  // (rd_kafka_mock_push_request_errors, rd_kafka_mock_broker_set_rtt...). Owned by this object.
  rd_kafka_mock_cluster_t* mock() const { return mcluster_; }

 private:
  EmbeddedKafka() = default;
  absl::Status CheckBrokerId(int32_t broker_id) const;

  rd_kafka_t* host_ = nullptr;  // The handle the mock cluster requires; never used otherwise.
  rd_kafka_mock_cluster_t* mcluster_ = nullptr;
  std::string bootstrap_;
  int broker_count_ = 0;
};

// One message as a consumer sees it: the walshift-type header, key and value.
struct KafkaRecord {
  std::string type;
  std::string key;
  std::string value;
};

// Every message of `topic` (partition 0) from the beginning to its current end, with a real
// librdkafka consumer.
std::vector<KafkaRecord> ReadTopic(const std::string& bootstrap, const std::string& topic);

}  // namespace walshift::testing
