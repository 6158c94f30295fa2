// walshiftctl status over walshiftd's HTTP endpoint (GET /status), and the helpers every
// walshiftctl command shares.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "daemon/core/slot_loss.h"
#include "google/protobuf/util/json_util.h"
#include "httplib.h"
#include "tools/walshiftctl/commands.h"
#include "walshift/v1/events.pb.h"

namespace walshift::ctl {

using google::protobuf::Struct;
using google::protobuf::Value;

namespace {

constexpr int kDefaultPort = 9187;

struct Endpoint {
  std::string scheme_host_port;  // for httplib::Client
  std::string path;              // of the status document
};

// Accepts [http://|https://]host[:port][/prefix]; host may be a bracketed IPv6 address. A
// wildcard listen address (0.0.0.0, [::]) means the local host.
absl::StatusOr<Endpoint> ParseUrl(absl::string_view url) {
  std::string scheme = "http";
  if (absl::ConsumePrefix(&url, "https://")) {
    scheme = "https";
  } else if (!absl::ConsumePrefix(&url, "http://") && absl::StrContains(url, "://")) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported URL '", url, "' (http:// or https:// only)"));
  }
  size_t slash = url.find('/');
  absl::string_view host_port = url.substr(0, slash);
  std::string path = slash == absl::string_view::npos ? "" : std::string(url.substr(slash));
  std::string host;
  absl::string_view port_text;
  bool v6 = false;
  if (absl::ConsumePrefix(&host_port, "[")) {
    size_t close = host_port.find(']');
    if (close == absl::string_view::npos) return absl::InvalidArgumentError(absl::StrCat("bad URL '", url, "'"));
    host = std::string(host_port.substr(0, close));
    v6 = true;
    absl::string_view rest = host_port.substr(close + 1);
    if (!rest.empty() && !absl::ConsumePrefix(&rest, ":"))
      return absl::InvalidArgumentError(absl::StrCat("bad URL '", url, "'"));
    port_text = rest;
  } else {
    size_t colon = host_port.find(':');
    host = std::string(host_port.substr(0, colon));
    if (colon != absl::string_view::npos) port_text = host_port.substr(colon + 1);
  }
  int port = kDefaultPort;
  if (!port_text.empty() && (port_text.size() > 5 || !absl::SimpleAtoi(port_text, &port) || port < 1 || port > 65535))
    return absl::InvalidArgumentError(absl::StrCat("bad port in URL '", url, "'"));
  if (host.empty() || host.find_first_of(v6 ? "/?#[]" : ":/?#[]") != std::string::npos)
    return absl::InvalidArgumentError(absl::StrCat("bad host in URL '", url, "'"));
  if (host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  while (absl::EndsWith(path, "/")) path.pop_back();
  if (!absl::EndsWith(path, "/status")) path += "/status";
  return Endpoint{absl::StrCat(scheme, "://", v6 ? "[" : "", host, v6 ? "]" : "", ":", port), path};
}

const Value* Field(const Struct& s, const std::string& name) {
  auto it = s.fields().find(name);
  return it == s.fields().end() ? nullptr : &it->second;
}

// A number, also when written as a JSON string (proto3 JSON writes 64-bit integers so).
double Number(const Struct& s, const std::string& name) {
  const Value* v = Field(s, name);
  if (v == nullptr) return 0;
  if (v->kind_case() == Value::kNumberValue) return v->number_value();
  double d = 0;
  if (v->kind_case() == Value::kStringValue && absl::SimpleAtod(v->string_value(), &d)) return d;
  return 0;
}

std::string Text(const Struct& s, const std::string& name) {
  const Value* v = Field(s, name);
  return v != nullptr && v->kind_case() == Value::kStringValue ? v->string_value() : "";
}

bool Bool(const Struct& s, const std::string& name) {
  const Value* v = Field(s, name);
  return v != nullptr && v->kind_case() == Value::kBoolValue && v->bool_value();
}

const Struct* Object(const Struct& s, const std::string& name) {
  const Value* v = Field(s, name);
  return v != nullptr && v->kind_case() == Value::kStructValue ? &v->struct_value() : nullptr;
}

// The "lag" object as the LagEvent it is; an empty event when it is missing or unreadable.
v1::LagEvent LagOf(const Struct& status) {
  v1::LagEvent lag;
  const Value* v = Field(status, "lag");
  if (v == nullptr || v->kind_case() != Value::kStructValue) return lag;
  std::string json;
  google::protobuf::util::JsonParseOptions o;
  o.ignore_unknown_fields = true;
  if (!google::protobuf::util::MessageToJsonString(v->struct_value(), &json).ok() ||
      !google::protobuf::util::JsonStringToMessage(json, &lag, o).ok()) {
    lag.Clear();
  }
  return lag;
}

bool Lagging(double bytes, double seconds, const LagLimits& limits) {
  return bytes > limits.max_lag_bytes || seconds > limits.max_lag_seconds;
}

// "12,000".
std::string Grouped(double n) {
  std::string digits = absl::StrFormat("%.0f", std::max(0.0, n));
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string Rate(double r) { return r < 10 ? absl::StrFormat("%.1f", r) : absl::StrFormat("%.0f", r); }

// "14 s", "3 m 20 s", "2 h 05 m".
std::string HumanSeconds(double s) {
  long n = std::lround(std::max(0.0, s));
  if (n < 60) return absl::StrFormat("%d s", n);
  if (n < 3600) return absl::StrFormat("%d m %02d s", n / 60, n % 60);
  return absl::StrFormat("%d h %02d m", n / 3600, n % 3600 / 60);
}

std::string ProgressBar(double fraction, int width) {
  fraction = std::clamp(fraction, 0.0, 1.0);
  int full = static_cast<int>(fraction * width);
  return absl::StrCat("[", std::string(full, '#'), std::string(width - full, '.'), "]");
}

void AppendCopyLine(const Struct& unit, std::string* out) {
  double rows = Number(unit, "rows"), estimated = Number(unit, "estimated_rows");
  double chunks_done = Number(unit, "chunks_done"), chunks_total = Number(unit, "chunks_total");
  double fraction = estimated > 0 ? rows / estimated : chunks_total > 0 ? chunks_done / chunks_total : 0;
  fraction = std::clamp(fraction, 0.0, 1.0);
  double eta = Number(unit, "eta_seconds");
  absl::StrAppend(out, "  copy     ", Text(unit, "source_table"), " -> ", Text(unit, "target"), "  ",
                  ProgressBar(fraction, 20), absl::StrFormat(" %3.0f%%  ", std::floor(fraction * 100 + 1e-9)),
                  Grouped(rows), " / ", estimated > 0 ? Grouped(estimated) : "?", " rows  ",
                  Grouped(Number(unit, "rows_per_second")), " rows/s  ETA ",
                  Field(unit, "eta_seconds") != nullptr && eta >= 0 ? HumanSeconds(eta) : "?", "\n");
}

}  // namespace

namespace {
std::string& StatusToken() {
  static std::string* token = new std::string();
  return *token;
}
}  // namespace

void SetStatusToken(std::string token) { StatusToken() = std::move(token); }

absl::StatusOr<std::string> FetchStatus(const std::string& url) {
  absl::StatusOr<Endpoint> endpoint = ParseUrl(url);
  if (!endpoint.ok()) return endpoint.status();
  httplib::Client client(endpoint->scheme_host_port);
  client.set_connection_timeout(std::chrono::seconds(2));
  client.set_read_timeout(std::chrono::seconds(5));
  httplib::Headers headers;
  if (!StatusToken().empty()) headers.emplace("Authorization", absl::StrCat("Bearer ", StatusToken()));
  httplib::Result res = client.Get(endpoint->path, headers);
  std::string where = absl::StrCat(endpoint->scheme_host_port, endpoint->path);
  if (!res) {
    return absl::UnavailableError(absl::StrCat(
        "walshiftd's status endpoint ", where, " is unreachable (",
        res.error() == httplib::Error::Connection ? "cannot connect" : httplib::to_string(res.error()), ")"));
  }
  if (res->status != 200) {
    return absl::FailedPreconditionError(absl::StrCat(
        where, " answered HTTP ", res->status,
        res->status == 401 ? " (it wants a bearer token: --config with status.token_file, or --token-file)" : ""));
  }
  return res->body;
}

absl::StatusOr<Struct> ParseStatus(absl::string_view body) {
  Struct status;
  auto s =
      google::protobuf::util::JsonStringToMessage(google::protobuf::StringPiece(body.data(), body.size()), &status);
  if (!s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("not a walshiftd status document: ", std::string(s.message())));
  }
  return status;
}

int StatusExitCode(const Struct& status, const LagLimits& limits) {
  v1::LagEvent lag = LagOf(status);
  for (const v1::Alarm& a : lag.alarms())
    if (a.kind() == v1::SLOT_LOST || a.kind() == v1::SLOT_MISSING) return kExitSlotLost;
  if (Text(status, "state") == "ERROR" || !lag.alarms().empty()) return 1;
  if (Lagging(static_cast<double>(lag.lag_bytes()), lag.lag_seconds(), limits)) return 1;
  for (const v1::TargetLag& t : lag.targets())
    if (Lagging(static_cast<double>(t.lag_bytes()), t.lag_seconds(), limits)) return 1;
  return 0;
}

std::string RenderStatus(const Struct& status, const LagLimits& limits) {
  std::string state = Text(status, "state"), message = Text(status, "state_message");
  std::string out = absl::StrCat("pipeline ", Text(status, "pipeline"), "  ", state.empty() ? "?" : state);
  if (!Text(status, "state_since").empty()) absl::StrAppend(&out, " since ", Text(status, "state_since"));
  absl::StrAppend(&out, message.empty() ? "" : absl::StrCat(": ", message), "\n");
  if (const Struct* ha = Object(status, "ha"); ha != nullptr) {
    const bool leader = Text(*ha, "role") == "leader";
    absl::StrAppend(&out, "  ha       walshiftd ", Text(*ha, "node"), leader ? " LEADS" : " stands by", " (epoch ",
                    Grouped(Number(*ha, "epoch")), leader ? absl::StrCat(" since ", Text(*ha, "leading_since")) : "",
                    ")", leader ? "" : absl::StrCat("; the leader is ", Text(*ha, "leader")), "\n");
  }

  v1::LagEvent lag = LagOf(status);
  const Struct* source = Object(status, "source");
  if (source != nullptr && Field(*source, "reachable") != nullptr && !Bool(*source, "reachable")) {
    absl::StrAppend(&out, "  source   UNREACHABLE: ", Text(*source, "error"), "\n");
  } else if (lag.source_lsn().empty()) {
    absl::StrAppend(&out, "  source   not read yet\n");
  } else {
    absl::StrAppend(&out, "  source   current WAL ", lag.source_lsn(), "; slot wal_status ",
                    lag.wal_status().empty() ? "?" : lag.wal_status(), ", retains ",
                    HumanBytes(static_cast<double>(lag.retained_wal_bytes())), " of WAL");
    if (lag.safe_wal_size() >= 0 && !lag.wal_status().empty())
      absl::StrAppend(&out, ", ", HumanBytes(static_cast<double>(lag.safe_wal_size())), " more before it is lost");
    absl::StrAppend(&out, "\n");
  }

  for (const v1::Alarm& a : lag.alarms()) {
    absl::StrAppend(
        &out, "  !! ", v1::AlarmKind_Name(a.kind()), " since ",
        absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(a.since().seconds()), absl::UTCTimeZone()), ": ",
        a.message(), "\n");
  }
  const Value* dead_letter = Field(status, "dead_letter");
  if (dead_letter != nullptr && dead_letter->kind_case() == Value::kListValue) {
    for (const Value& d : dead_letter->list_value().values()) {
      if (d.kind_case() != Value::kStructValue || Number(d.struct_value(), "parked") <= 0) continue;
      absl::StrAppend(&out, "  !! PARKED: ", Grouped(Number(d.struct_value(), "parked")), " changes in ",
                      Text(d.struct_value(), "target"),
                      "'s walshift.dead_letter (walshiftctl dead-letter list); the gate fails until they are "
                      "retried or discarded\n");
    }
  }
  if (Number(status, "retry_attempt") > 0) {
    absl::StrAppend(&out, "  retrying (attempt ", Grouped(Number(status, "retry_attempt")), ", failing since ",
                    Text(status, "failing_since"), ")\n");
  }
  absl::StrAppend(
      &out, absl::StrFormat("\n  %-12s %-8s %-22s %-14s %s\n", "TARGET", "STATE", "LAG", "APPLIED LSN", "THROUGHPUT"));
  if (lag.targets().empty()) absl::StrAppend(&out, "  (no lag report yet)\n");
  for (const v1::TargetLag& t : lag.targets()) {
    double bytes = static_cast<double>(t.lag_bytes());
    bool applied = !t.applied_lsn().empty() && t.applied_lsn() != "0/0";
    const char* row_state = !applied ? "waiting" : Lagging(bytes, t.lag_seconds(), limits) ? "LAGGING" : "ok";
    absl::StrAppend(&out, absl::StrFormat("  %-12s %-8s %-22s %-14s %s changes/s, %s tx/s\n", t.target(), row_state,
                                          absl::StrFormat("%s / %.1f s", HumanBytes(bytes), t.lag_seconds()),
                                          applied ? t.applied_lsn() : "-", Rate(t.changes_per_second()),
                                          Rate(t.transactions_per_second())));
  }

  std::string copy;
  const Value* units = Field(status, "copy");
  if (units != nullptr && units->kind_case() == Value::kListValue) {
    for (const Value& u : units->list_value().values())
      if (u.kind_case() == Value::kStructValue && !Bool(u.struct_value(), "done"))
        AppendCopyLine(u.struct_value(), &copy);
  }
  absl::StrAppend(&out, copy.empty() ? "" : "\n", copy, "\n");

  const Struct* kafka = Object(status, "kafka");
  if (kafka == nullptr || !Bool(*kafka, "enabled")) {
    absl::StrAppend(&out, "  kafka    disabled\n");
  } else {
    absl::StrAppend(&out, "  kafka    enabled (", Text(*kafka, "brokers"), "): queued ",
                    Grouped(Number(*kafka, "queued")), ", delivered ", Grouped(Number(*kafka, "delivered")),
                    ", dropped ", Grouped(Number(*kafka, "dropped")), ", failed ", Grouped(Number(*kafka, "failed")),
                    "\n");
  }
  if (Number(status, "errors") > 0)
    absl::StrAppend(&out, "  errors   ", Grouped(Number(status, "errors")), " since start (see the log)\n");
  return out;
}

int HttpStatusCommand(const std::string& url, const HttpStatusOptions& options, std::optional<std::string> first_body) {
  for (;;) {
    absl::StatusOr<std::string> body =
        first_body.has_value() ? absl::StatusOr<std::string>(*std::move(first_body)) : FetchStatus(url);
    first_body.reset();
    absl::StatusOr<Struct> status = body.ok() ? ParseStatus(*body) : body.status();
    int code = 2;
    if (options.watch > 0 && !options.json && isatty(1)) std::printf("\033[H\033[2J");
    if (!status.ok()) {
      std::fprintf(stderr, "walshiftctl: %s\n", std::string(status.status().message()).c_str());
    } else if (options.json) {
      std::printf("%s%s", body->c_str(), absl::EndsWith(*body, "\n") ? "" : "\n");
      code = StatusExitCode(*status, options.limits);
    } else {
      std::printf("%s", RenderStatus(*status, options.limits).c_str());
      code = StatusExitCode(*status, options.limits);
    }
    std::fflush(stdout);
    if (options.watch <= 0) return code;
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(options.watch * 1000)));
  }
}

}  // namespace walshift::ctl
