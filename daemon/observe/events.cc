#include "daemon/observe/events.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "spdlog/spdlog.h"
#include <librdkafka/rdkafka.h>

namespace walshift {
namespace {

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

std::string LagLine(const v1::LagEvent& e) {
  std::vector<std::string> targets;
  for (const auto& t : e.targets()) {
    targets.push_back(absl::StrCat(t.target(), " applied ", t.applied_lsn(), " lag ", t.lag_bytes(), " B/",
                                   absl::StrFormat("%.1f", t.lag_seconds()), " s ",
                                   absl::StrFormat("%.0f", t.changes_per_second()), " changes/s"));
  }
  return absl::StrCat("pipeline ", e.pipeline(), ": ", v1::PipelineState_Name(e.state()), ", source ", e.source_lsn(),
                      " received ", e.received_lsn(), "; ", absl::StrJoin(targets, "; "));
}

}  // namespace

void DeliveryReport(rd_kafka_t*, const rd_kafka_message_t* message, void* opaque) {
  auto* self = static_cast<EventPublisher*>(opaque);
  if (message->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    self->delivered_.fetch_add(1);
  } else {
    self->failed_.fetch_add(1);
    spdlog::warn("kafka: event not delivered: {}", rd_kafka_err2str(message->err));
  }
}

absl::StatusOr<std::unique_ptr<EventPublisher>> EventPublisher::Create(
    const v1::Config& config, const std::vector<std::pair<std::string, std::string>>& secrets) {
  std::unique_ptr<EventPublisher> p(new EventPublisher());
  p->show_values_ = config.log().values() == "show";
  if (!config.has_kafka()) return p;
  const v1::KafkaConfig& k = config.kafka();
  p->json_ = k.format() == v1::EVENT_FORMAT_JSON;
  p->brokers_ = k.brokers();
  p->lag_topic_ = k.lag_topic().empty() ? "walshift.lag" : k.lag_topic();
  p->state_topic_ = k.state_topic().empty() ? "walshift.state" : k.state_topic();
  p->drift_topic_ = k.drift_topic().empty() ? "walshift.drift" : k.drift_topic();
  p->dead_letter_topic_ = k.dead_letter_topic().empty() ? "walshift.dead_letter" : k.dead_letter_topic();
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[512];
  auto set = [&](const std::string& name, const std::string& value) -> absl::Status {
    if (rd_kafka_conf_set(conf, name.c_str(), value.c_str(), err, sizeof(err)) != RD_KAFKA_CONF_OK) {
      return absl::InvalidArgumentError(absl::StrCat("kafka: ", name, ": ", err));
    }
    return absl::OkStatus();
  };
  std::vector<std::pair<std::string, std::string>> settings = {
      {"bootstrap.servers", k.brokers()},
      {"enable.idempotence", "true"},
      {"acks", "all"},
      {"linger.ms", "20"},
      {"queue.buffering.max.messages", absl::StrCat(k.queue_max_messages() ? k.queue_max_messages() : 10000)},
      {"client.id", absl::StrCat("walshiftd-", config.pipeline())},
  };
  for (const auto& [name, value] : k.properties()) settings.emplace_back(name, value);
  for (const auto& [name, value] : secrets) settings.emplace_back(name, value);
  for (const auto& [name, value] : settings) {
    absl::Status st = set(name, value);
    if (!st.ok()) {
      rd_kafka_conf_destroy(conf);
      return st;
    }
  }
  rd_kafka_conf_set_opaque(conf, p.get());
  rd_kafka_conf_set_dr_msg_cb(conf, DeliveryReport);
  rd_kafka_conf_set_log_cb(conf, [](const rd_kafka_t*, int level, const char* fac, const char* buf) {
    if (level <= 3)
      spdlog::warn("kafka: {} {}", fac, buf);
    else
      spdlog::debug("kafka: {} {}", fac, buf);
  });
  p->kafka_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (p->kafka_ == nullptr) return absl::InvalidArgumentError(absl::StrCat("kafka: ", err));
  p->poller_ = std::thread([raw = p.get()] { raw->PollLoop(); });
  spdlog::info("kafka: events to {} (topics {}, {}, {}, {}; {})", p->brokers_, p->lag_topic_, p->state_topic_,
               p->drift_topic_, p->dead_letter_topic_, p->json_ ? "json" : "protobuf");
  return p;
}

EventPublisher::~EventPublisher() {
  if (kafka_ == nullptr) return;
  stopping_.store(true);
  poller_.join();
  if (rd_kafka_flush(kafka_, 5000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    spdlog::warn("kafka: {} events were still queued at exit", rd_kafka_outq_len(kafka_));
  }
  rd_kafka_destroy(kafka_);
}

void EventPublisher::PollLoop() {
  while (!stopping_.load()) rd_kafka_poll(kafka_, 100);
}

KafkaView EventPublisher::view() const {
  KafkaView v;
  v.enabled = kafka_ != nullptr;
  v.brokers = brokers_;
  if (kafka_ != nullptr) v.queued = static_cast<uint64_t>(std::max(0, rd_kafka_outq_len(kafka_)));
  v.delivered = delivered_.load();
  v.failed = failed_.load();
  v.dropped = dropped_.load();
  return v;
}

void EventPublisher::Produce(const std::string& topic, const std::string& key, const google::protobuf::Message& event) {
  if (kafka_ == nullptr) return;
  std::string value = json_ ? Json(event) : event.SerializeAsString();
  std::string type = event.GetDescriptor()->full_name();
  const char* content_type = json_ ? "application/json" : "application/x-protobuf";
  rd_kafka_headers_t* headers = rd_kafka_headers_new(2);
  rd_kafka_header_add(headers, "walshift-type", -1, type.data(), static_cast<ssize_t>(type.size()));
  rd_kafka_header_add(headers, "content-type", -1, content_type, -1);
  rd_kafka_resp_err_t err =
      rd_kafka_producev(kafka_, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_KEY(key.data(), key.size()),
                        RD_KAFKA_V_VALUE(value.data(), value.size()), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                        RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_END);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    rd_kafka_headers_destroy(headers);
    uint64_t n = dropped_.fetch_add(1) + 1;
    // Once, then at every power of two: an outage must not flood the log.
    if ((n & (n - 1)) == 0) {
      spdlog::warn("kafka: event dropped ({}; {} dropped so far)", rd_kafka_err2str(err), n);
    }
  }
}

void EventPublisher::Publish(const v1::LagEvent& event) {
  if (kafka_ == nullptr)
    spdlog::info("{}", LagLine(event));
  else
    spdlog::debug("{}", LagLine(event));
  Produce(lag_topic_, event.pipeline(), event);
}

void EventPublisher::Publish(const v1::StateEvent& event) {
  if (event.cleared()) {
    spdlog::info("pipeline {}: alarm {} cleared: {}", event.pipeline(), v1::AlarmKind_Name(event.alarm()),
                 event.message());
  } else if (!event.warning().empty()) {
    if (event.alarm() != v1::ALARM_UNSPECIFIED)
      spdlog::warn("pipeline {}: alarm {}: {}", event.pipeline(), v1::AlarmKind_Name(event.alarm()), event.warning());
    else
      spdlog::warn("pipeline {}: {}", event.pipeline(), event.warning());
  } else {
    spdlog::info("pipeline {}: {} -> {}{}", event.pipeline(), v1::PipelineState_Name(event.previous()),
                 v1::PipelineState_Name(event.state()),
                 event.message().empty() ? "" : absl::StrCat(": ", event.message()));
  }
  Produce(state_topic_, event.pipeline(), event);
}

void EventPublisher::Publish(const v1::DriftEvent& event) {
  if (log_drift_)
    spdlog::warn("pipeline {}: drift {} in {} (target {} {}) key ({})", event.pipeline(),
               v1::DriftKind_Name(event.kind()), event.source_table(), event.target(), event.target_table(),
               event.key());
  if (!show_values_ && event.columns_size() > 0) {
    // Only the key leaves for Kafka: the columns' names, not their values (log.values).
    v1::DriftEvent redacted = event;
    for (auto& c : *redacted.mutable_columns()) {
      c.set_expected("(redacted)");
      c.set_actual("(redacted)");
    }
    Produce(drift_topic_, absl::StrCat(event.pipeline(), "/", event.source_table()), redacted);
    return;
  }
  Produce(drift_topic_, absl::StrCat(event.pipeline(), "/", event.source_table()), event);
}

void EventPublisher::Publish(const v1::DeadLetterEvent& event) {
  // The pipeline logs each parked change itself.
  Produce(dead_letter_topic_, event.pipeline(), event);
}

}  // namespace walshift
