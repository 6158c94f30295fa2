// walshiftctl events: walshiftd's events (LagEvent, StateEvent, DriftEvent) read from a Kafka
// topic and decoded, one line each.
//
// The publisher's contract: key = pipeline (plus "/" and the source table for drift), header
// `walshift-type` = the message's full name, header `content-type` = application/x-protobuf
// (binary) or application/json (proto3 JSON). A message that breaks it is reported and skipped.

#include <signal.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "tools/walshiftctl/commands.h"
#include "walshift/v1/events.pb.h"
#include <librdkafka/rdkafka.h>

namespace walshift::ctl {
namespace {

constexpr int kMetadataTimeoutMs = 10000;
// Without --follow: give up when the brokers send nothing (no message, no end of partition)
// for this long.
constexpr absl::Duration kStallTimeout = absl::Seconds(15);

volatile std::sig_atomic_t g_stop = 0;
void OnStopSignal(int) { g_stop = 1; }

struct KafkaDeleter {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
using KafkaPtr = std::unique_ptr<rd_kafka_t, KafkaDeleter>;

// The last error librdkafka reported (error_cb, called from rd_kafka_poll/consumer_poll).
struct ClientErrors {
  std::string last;
  bool fatal = false;
};

void OnKafkaError(rd_kafka_t*, int err, const char* reason, void* opaque) {
  auto* errors = static_cast<ClientErrors*>(opaque);
  errors->last = reason;
  errors->fatal |= err == RD_KAFKA_RESP_ERR__FATAL;
}

// librdkafka's own log lines would repeat every connection attempt; only critical ones pass.
void OnKafkaLog(const rd_kafka_t*, int level, const char* fac, const char* buf) {
  if (level <= 2) std::fprintf(stderr, "walshiftctl: librdkafka %s: %s\n", fac, buf);
}

using Event = std::variant<v1::LagEvent, v1::StateEvent, v1::DriftEvent>;

// A new, empty event of the type `type` names. kNotFound for a type this tool does not know.
absl::StatusOr<Event> NewEvent(absl::string_view type) {
  if (type == v1::LagEvent::descriptor()->full_name()) return Event(std::in_place_type<v1::LagEvent>);
  if (type == v1::StateEvent::descriptor()->full_name()) return Event(std::in_place_type<v1::StateEvent>);
  if (type == v1::DriftEvent::descriptor()->full_name()) return Event(std::in_place_type<v1::DriftEvent>);
  return absl::NotFoundError(absl::StrCat("unknown walshift-type \"", absl::CHexEscape(type), "\""));
}

// Decodes `value` (in `content_type`; binary protobuf when the header is missing) as the event
// `type` names. kNotFound for an unknown type, kInvalidArgument for a value that does not decode.
absl::StatusOr<Event> Decode(absl::string_view type, absl::string_view content_type, absl::string_view value) {
  absl::StatusOr<Event> event = NewEvent(type);
  if (!event.ok()) return event.status();
  google::protobuf::Message& message = std::visit([](auto& m) -> google::protobuf::Message& { return m; }, *event);
  if (content_type == "application/json") {
    google::protobuf::util::JsonParseOptions o;
    o.ignore_unknown_fields = true;  // events from a newer walshiftd
    auto s = google::protobuf::util::JsonStringToMessage(google::protobuf::StringPiece(value.data(), value.size()),
                                                         &message, o);
    if (!s.ok()) {
      std::string why(s.message());
      why = why.substr(0, why.find('\n'));  // the parser adds the input and a caret
      return absl::InvalidArgumentError(
          absl::StrCat("cannot decode ", type, " from JSON (", value.size(), " bytes): ", why));
    }
  } else if (content_type.empty() || content_type == "application/x-protobuf") {
    if (!message.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot decode ", type, " from binary protobuf (", value.size(), " bytes)"));
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown content-type \"", absl::CHexEscape(content_type), "\""));
  }
  return event;
}

// The event's own time, else the Kafka message's, in UTC to the second.
std::string When(const google::protobuf::Timestamp& t, int64_t kafka_ms) {
  absl::Time when = t.seconds() != 0 || t.nanos() != 0 ? absl::FromUnixSeconds(t.seconds())
                    : kafka_ms > 0                     ? absl::FromUnixMillis(kafka_ms)
                                                       : absl::InfinitePast();
  if (when == absl::InfinitePast()) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", when, absl::UTCTimeZone());
}

std::string StateName(v1::PipelineState s) {
  const std::string& name = v1::PipelineState_Name(s);
  return name.empty() ? absl::StrCat("state ", static_cast<int>(s)) : name;
}

std::string Rate(double r) { return r < 10 ? absl::StrFormat("%.1f", r) : absl::StrFormat("%.0f", r); }

std::string Lag(double bytes, double seconds) { return absl::StrFormat("%s / %.1f s", HumanBytes(bytes), seconds); }

std::string EscapeLineBreaks(absl::string_view v) { return absl::StrReplaceAll(v, {{"\n", "\\n"}, {"\r", "\\r"}}); }

// The part of a line after time and pipeline.
std::string Describe(const v1::LagEvent& e) {
  std::string out =
      absl::StrCat("LAG    ", StateName(e.state()), "  lag ", Lag(static_cast<double>(e.lag_bytes()), e.lag_seconds()));
  const char* sep = "  ";
  for (const v1::TargetLag& t : e.targets()) {
    absl::StrAppend(&out, sep, t.target(), ": applied ", t.applied_lsn().empty() ? "-" : t.applied_lsn());
    if (e.targets_size() > 1 && (t.lag_bytes() > 0 || t.lag_seconds() > 0))
      absl::StrAppend(&out, " (lag ", Lag(static_cast<double>(t.lag_bytes()), t.lag_seconds()), ")");
    absl::StrAppend(&out, ", ", Rate(t.changes_per_second()), " changes/s");
    sep = "; ";
  }
  if (!e.wal_status().empty()) {
    absl::StrAppend(&out, "  slot ", e.wal_status(), ", retains ",
                    HumanBytes(static_cast<double>(e.retained_wal_bytes())));
  }
  return out;
}

std::string Describe(const v1::StateEvent& e) {
  std::string out = "STATE  ";
  if (e.previous() != v1::STATE_UNSPECIFIED && e.previous() != e.state())
    absl::StrAppend(&out, StateName(e.previous()), " -> ");
  absl::StrAppend(&out, StateName(e.state()));
  if (e.alarm() != v1::ALARM_UNSPECIFIED)
    absl::StrAppend(&out, "  ALARM ", v1::AlarmKind_Name(e.alarm()), e.cleared() ? " CLEARED" : "");
  // A server error's DETAIL and HINT lines stay on the event's line.
  if (!e.message().empty()) absl::StrAppend(&out, "  ", OneLine(e.message()));
  if (!e.warning().empty()) absl::StrAppend(&out, "  WARNING: ", OneLine(e.warning()));
  return out;
}

std::string Describe(const v1::DriftEvent& e) {
  const std::string& kind = v1::DriftKind_Name(e.kind());
  std::string out =
      absl::StrCat("DRIFT  ", kind.empty() ? absl::StrCat("kind ", e.kind()) : kind, " ", e.source_table());
  if (!e.target_table().empty()) absl::StrAppend(&out, " -> ", e.target_table());
  if (!e.target().empty()) absl::StrAppend(&out, " (", e.target(), ")");
  absl::StrAppend(&out, " key (", e.key(), ")");
  const char* sep = "  ";
  for (const v1::ColumnDiff& c : e.columns()) {
    // A value's line breaks are shown escaped: joined, two values could not be told apart.
    absl::StrAppend(&out, sep, c.column(), ": expected ", EscapeLineBreaks(c.expected()), " actual ",
                    EscapeLineBreaks(c.actual()));
    sep = "; ";
  }
  return out;
}

struct Options {
  std::string brokers, topic;
  bool from_beginning = false, follow = false, json = false;
};

// Prints one Kafka message: the decoded event, or a line saying why it was skipped.
void PrintMessage(const rd_kafka_message_t* msg, const Options& options) {
  absl::string_view key =
      msg->key != nullptr ? absl::string_view(static_cast<const char*>(msg->key), msg->key_len) : absl::string_view();
  absl::string_view value = msg->payload != nullptr
                                ? absl::string_view(static_cast<const char*>(msg->payload), msg->len)
                                : absl::string_view();
  std::optional<std::string> type;
  std::string content_type;
  rd_kafka_headers_t* headers = nullptr;
  if (rd_kafka_message_headers(msg, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    const void* v = nullptr;
    size_t n = 0;
    if (rd_kafka_header_get_last(headers, "walshift-type", &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR)
      type = v != nullptr ? std::string(static_cast<const char*>(v), n) : "";
    if (rd_kafka_header_get_last(headers, "content-type", &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR && v != nullptr)
      content_type.assign(static_cast<const char*>(v), n);
  }
  absl::StatusOr<Event> event = type.has_value()
                                    ? Decode(*type, content_type, value)
                                    : absl::StatusOr<Event>(absl::NotFoundError("no walshift-type header"));
  if (!event.ok()) {
    std::string why = std::string(event.status().message());
    if (options.json) {
      std::printf("{\"type\":%s,\"key\":%s,\"partition\":%d,\"offset\":%lld,\"error\":%s}\n",
                  type.has_value() ? JsonString(*type).c_str() : "null", JsonString(key).c_str(), msg->partition,
                  static_cast<long long>(msg->offset), JsonString(why).c_str());
    } else {
      std::printf("skipped  partition %d offset %lld key \"%s\" (%zu bytes): %s\n", msg->partition,
                  static_cast<long long>(msg->offset), absl::CHexEscape(key).c_str(), value.size(), why.c_str());
    }
    return;
  }
  if (options.json) {
    google::protobuf::util::JsonPrintOptions o;
    o.preserve_proto_field_names = true;
    std::string json;
    const google::protobuf::Message& m =
        std::visit([](const auto& e) -> const google::protobuf::Message& { return e; }, *event);
    (void)google::protobuf::util::MessageToJsonString(m, &json, o);  // cannot fail for a parsed message
    std::printf("{\"type\":%s,\"key\":%s,\"partition\":%d,\"offset\":%lld,\"event\":%s}\n", JsonString(*type).c_str(),
                JsonString(key).c_str(), msg->partition, static_cast<long long>(msg->offset), json.c_str());
    return;
  }
  rd_kafka_timestamp_type_t ts_type;
  int64_t kafka_ms = rd_kafka_message_timestamp(msg, &ts_type);
  std::visit(
      [&](const auto& e) {
        std::string pipeline = e.pipeline().empty() ? absl::CHexEscape(key) : e.pipeline();
        std::printf("%s  %s  %s\n", When(e.time(), kafka_ms).c_str(), pipeline.c_str(), Describe(e).c_str());
      },
      *event);
}

int Usage(FILE* f, int code) {
  std::fprintf(f,
               "usage: walshiftctl events --brokers HOST:PORT[,...] --topic TOPIC [--from-beginning] [--follow] "
               "[--json]\n"
               "  Prints walshiftd's events (lag, state changes, drift) from a Kafka topic, one per line;\n"
               "  --json prints each as a JSON object. Without --follow, stops at the end of every\n"
               "  partition. Exit 0 done, 2 usage error, brokers unreachable or no such topic.\n");
  return code;
}

}  // namespace

int EventsCommand(int argc, char** argv) {
  Options options;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--brokers" || a == "-b") && i + 1 < argc)
      options.brokers = argv[++i];
    else if ((a == "--topic" || a == "-t") && i + 1 < argc)
      options.topic = argv[++i];
    else if (a == "--from-beginning")
      options.from_beginning = true;
    else if (a == "--follow" || a == "-f")
      options.follow = true;
    else if (a == "--json")
      options.json = true;
    else if (a == "--help" || a == "-h")
      return Usage(stdout, 0);
    else
      return Usage(stderr, 2);
  }
  if (options.brokers.empty() || options.topic.empty()) return Usage(stderr, 2);

  ClientErrors errors;
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[512];
  const std::pair<const char*, const char*> settings[] = {
      {"bootstrap.servers", options.brokers.c_str()},
      {"client.id", "walshiftctl"},
      // librdkafka's assign() needs a group; it is never joined (partitions are assigned) and
      // offsets are never committed to it.
      {"group.id", "walshiftctl"},
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"enable.partition.eof", "true"},
  };
  for (const auto& [k, v] : settings) {
    if (rd_kafka_conf_set(conf, k, v, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
      std::fprintf(stderr, "walshiftctl: %s\n", err);
      rd_kafka_conf_destroy(conf);
      return 2;
    }
  }
  rd_kafka_conf_set_error_cb(conf, OnKafkaError);
  rd_kafka_conf_set_log_cb(conf, OnKafkaLog);
  rd_kafka_conf_set_opaque(conf, &errors);
  KafkaPtr rk(rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err)));
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    std::fprintf(stderr, "walshiftctl: %s\n", err);
    return 2;
  }

  // The topic's partitions; the metadata request also proves a broker is reachable. It lists
  // all topics: asking for one topic by name lets brokers that allow it (and librdkafka's mock
  // cluster, always) create it.
  const rd_kafka_metadata_t* md = nullptr;
  rd_kafka_resp_err_t e = rd_kafka_metadata(rk.get(), 1, nullptr, &md, kMetadataTimeoutMs);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    rd_kafka_poll(rk.get(), 0);  // serves error_cb
    std::fprintf(stderr, "walshiftctl: no metadata from the Kafka brokers %s within %d s (%s)%s%s\n",
                 options.brokers.c_str(), kMetadataTimeoutMs / 1000, rd_kafka_err2str(e),
                 errors.last.empty() ? "" : ": ", errors.last.c_str());
    return 2;
  }
  std::vector<int32_t> partitions;
  rd_kafka_resp_err_t topic_err = RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
  for (int i = 0; i < md->topic_cnt; ++i) {
    if (options.topic != md->topics[i].topic) continue;
    topic_err = md->topics[i].err;
    for (int p = 0; p < md->topics[i].partition_cnt; ++p) partitions.push_back(md->topics[i].partitions[p].id);
  }
  rd_kafka_metadata_destroy(md);
  if (topic_err != RD_KAFKA_RESP_ERR_NO_ERROR || partitions.empty()) {
    std::fprintf(stderr, "walshiftctl: topic %s: %s\n", options.topic.c_str(),
                 topic_err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ? "no such topic"
                 : topic_err != RD_KAFKA_RESP_ERR_NO_ERROR            ? rd_kafka_err2str(topic_err)
                                                                      : "no partitions");
    return 2;
  }

  rd_kafka_poll_set_consumer(rk.get());
  rd_kafka_topic_partition_list_t* assignment = rd_kafka_topic_partition_list_new(static_cast<int>(partitions.size()));
  for (int32_t p : partitions) {
    rd_kafka_topic_partition_list_add(assignment, options.topic.c_str(), p)->offset =
        options.from_beginning ? RD_KAFKA_OFFSET_BEGINNING : RD_KAFKA_OFFSET_END;
  }
  e = rd_kafka_assign(rk.get(), assignment);
  rd_kafka_topic_partition_list_destroy(assignment);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    std::fprintf(stderr, "walshiftctl: cannot read topic %s: %s\n", options.topic.c_str(), rd_kafka_err2str(e));
    return 2;
  }

  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  // Without --follow: done once every partition reported its end at least once.
  std::vector<int32_t> at_end;
  absl::Time last_progress = absl::Now();
  std::string reported_error;
  int code = 0;
  while (!g_stop) {
    rd_kafka_message_t* msg = rd_kafka_consumer_poll(rk.get(), 200);
    if (errors.fatal) {
      if (msg != nullptr) rd_kafka_message_destroy(msg);
      std::fprintf(stderr, "walshiftctl: Kafka: %s\n", errors.last.c_str());
      code = 2;
      break;
    }
    if (!errors.last.empty() && errors.last != reported_error) {
      std::fprintf(stderr, "walshiftctl: Kafka: %s\n", errors.last.c_str());
      reported_error = errors.last;
    }
    if (msg == nullptr) {
      if (!options.follow && absl::Now() - last_progress > kStallTimeout) {
        std::fprintf(stderr, "walshiftctl: nothing from the Kafka brokers %s for %.0f s; giving up\n",
                     options.brokers.c_str(), absl::ToDoubleSeconds(kStallTimeout));
        code = 2;
        break;
      }
      continue;
    }
    last_progress = absl::Now();
    if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      if (std::find(at_end.begin(), at_end.end(), msg->partition) == at_end.end()) at_end.push_back(msg->partition);
    } else if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      std::fprintf(stderr, "walshiftctl: partition %d: %s\n", msg->partition, rd_kafka_message_errstr(msg));
    } else {
      PrintMessage(msg, options);
      std::fflush(stdout);
    }
    rd_kafka_message_destroy(msg);
    if (!options.follow && at_end.size() == partitions.size()) break;
  }
  std::fflush(stdout);
  rd_kafka_consumer_close(rk.get());
  return code;
}

}  // namespace walshift::ctl
