#pragma once
// Publishes walshift's events (proto/walshift/v1/events.proto): to Kafka when configured, and
// to the log. Publishing never blocks: with Kafka, events wait in librdkafka's bounded queue
// (an idempotent producer, acks=all, its own delivery thread); when the queue is full the event
// is dropped and counted. A broker outage only delays delivery; librdkafka reconnects.

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "daemon/observe/status.h"
#include "walshift/v1/config.pb.h"
#include "walshift/v1/events.pb.h"

typedef struct rd_kafka_s rd_kafka_t;
typedef struct rd_kafka_message_s rd_kafka_message_t;

namespace walshift {

void DeliveryReport(rd_kafka_t*, const rd_kafka_message_t*, void*);

class EventPublisher {
 public:
  // kInvalidArgument when the Kafka settings are rejected by librdkafka.
  // `secrets`: further properties (config::Settings::kafka_secrets), never logged.
  static absl::StatusOr<std::unique_ptr<EventPublisher>> Create(
      const v1::Config& config, const std::vector<std::pair<std::string, std::string>>& secrets = {});
  ~EventPublisher();  // waits up to 5 s for queued events

  void Publish(const v1::LagEvent& event);
  void Publish(const v1::StateEvent& event);
  void Publish(const v1::DriftEvent& event);
  void Publish(const v1::DeadLetterEvent& event);
  // Drift events are also logged, one warning each, unless turned off (walshiftctl verify
  // prints its own report).
  void set_log_drift(bool log) { log_drift_ = log; }

  KafkaView view() const;

 private:
  EventPublisher() = default;
  void Produce(const std::string& topic, const std::string& key, const google::protobuf::Message& event);
  void PollLoop();

  bool json_ = false;
  std::string brokers_, lag_topic_, state_topic_, drift_topic_, dead_letter_topic_;
  rd_kafka_t* kafka_ = nullptr;
  std::atomic<uint64_t> delivered_{0}, failed_{0}, dropped_{0};
  std::atomic<bool> stopping_{false};
  bool log_drift_ = true;
  bool show_values_ = false;  // log.values: show
  std::thread poller_;

  friend void DeliveryReport(rd_kafka_t*, const rd_kafka_message_t*, void*);
};

}  // namespace walshift
