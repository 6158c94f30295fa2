#include "daemon/observe/status.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "daemon/observe/format.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"

namespace walshift {
namespace {

constexpr size_t kMaxUnapplied = 65536;

google::protobuf::Timestamp ToProto(absl::Time t) {
  return google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(absl::ToUnixMicros(t));
}

// PgTimestamp: microseconds since 2000-01-01 UTC.
absl::Time FromPg(PgTimestamp ts) { return absl::FromUnixMicros(ts + 946684800LL * 1000000); }

std::string Label(absl::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

std::string Number(double v) { return absl::StrFormat("%.17g", v); }

}  // namespace

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) ++i;
  ++counts[i];
  sum += v;
  ++count;
}

PipelineStatus::PipelineStatus(std::string pipeline, std::vector<std::string> targets)
    : pipeline_(std::move(pipeline)) {
  for (auto& t : targets) targets_.push_back(Target{std::move(t)});
}

void PipelineStatus::SetState(v1::PipelineState state, const std::string& message) {
  v1::StateEvent event;
  std::function<void(const v1::StateEvent&)> listener;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state == state_ && message == state_message_) return;
    event.set_pipeline(pipeline_);
    *event.mutable_time() = ToProto(absl::Now());
    event.set_previous(state_);
    event.set_state(state);
    event.set_message(message);
    if (state != state_) state_since_ = absl::Now();
    state_ = state;
    state_message_ = message;
    listener = listener_;
  }
  if (listener) listener(event);
}

v1::PipelineState PipelineStatus::state() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_;
}

void PipelineStatus::SetStateListener(std::function<void(const v1::StateEvent&)> listener) {
  std::lock_guard<std::mutex> lock(mu_);
  listener_ = std::move(listener);
}

void PipelineStatus::Tick() {
  std::lock_guard<std::mutex> lock(mu_);
  last_tick_ = absl::Now();
}

absl::Time PipelineStatus::last_tick() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_tick_;
}

void PipelineStatus::OnReceived(Lsn end_lsn, PgTimestamp commit_time) {
  std::lock_guard<std::mutex> lock(mu_);
  if (end_lsn > received_) received_ = end_lsn;
  if (unapplied_.size() >= kMaxUnapplied) {
    // A long backlog: keep every other entry. The oldest stays exact; later ones are at most
    // one dropped neighbour younger than they should be.
    std::deque<std::pair<Lsn, PgTimestamp>> thinned;
    for (size_t i = 0; i < unapplied_.size(); i += 2) thinned.push_back(unapplied_[i]);
    unapplied_.swap(thinned);
  }
  unapplied_.emplace_back(end_lsn, commit_time);
}

void PipelineStatus::SetReceivedLsn(Lsn lsn) {
  std::lock_guard<std::mutex> lock(mu_);
  if (lsn > received_) received_ = lsn;
}

void PipelineStatus::AddIgnoredOriginTransactions(uint64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  ignored_origin_transactions_ += n;
}

void PipelineStatus::SetCaughtUp(Lsn lsn) {
  std::lock_guard<std::mutex> lock(mu_);
  if (lsn > caught_up_) caught_up_ = lsn;
}

void PipelineStatus::OnApplied(size_t target, Lsn durable, size_t changes, size_t transactions, absl::Duration took) {
  std::lock_guard<std::mutex> lock(mu_);
  if (target >= targets_.size()) return;
  Target& t = targets_[target];
  if (durable != kInvalidLsn && durable >= t.applied) {
    // The commit time of the newest received transaction at or below the checkpoint.
    for (const auto& [lsn, time] : unapplied_) {
      if (lsn > durable) break;
      t.applied_commit_time = time;
    }
    t.applied = durable;
  }
  t.changes += changes;
  t.transactions += transactions;
  if (changes > 0) {
    batch_size_.Observe(static_cast<double>(changes));
    apply_seconds_.Observe(absl::ToDoubleSeconds(took));
  }
  Lsn lowest = targets_.front().applied;
  for (const Target& x : targets_) lowest = std::min(lowest, x.applied);
  while (!unapplied_.empty() && unapplied_.front().first <= lowest) unapplied_.pop_front();
}

void PipelineStatus::AddTableChanges(const std::string& table, uint64_t changes) {
  std::lock_guard<std::mutex> lock(mu_);
  table_changes_[table] += changes;
}

void PipelineStatus::CountError(const std::string& kind) {
  std::lock_guard<std::mutex> lock(mu_);
  ++errors_[kind];
}

void PipelineStatus::RaiseAlarm(v1::AlarmKind kind, const std::string& message) {
  v1::StateEvent event;
  std::function<void(const v1::StateEvent&)> listener;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, added] = alarms_.try_emplace(kind);
    it->second.set_message(message);
    if (!added) return;
    it->second.set_kind(kind);
    *it->second.mutable_since() = ToProto(absl::Now());
    event = AlarmEventLocked(kind);
    event.set_warning(message);
    listener = listener_;
  }
  if (listener) listener(event);
}

v1::StateEvent PipelineStatus::AlarmEventLocked(v1::AlarmKind kind) const {
  v1::StateEvent event;
  event.set_pipeline(pipeline_);
  *event.mutable_time() = ToProto(absl::Now());
  event.set_state(state_);  // an alarm changes no state
  event.set_previous(state_);
  event.set_alarm(kind);
  return event;
}

void PipelineStatus::ClearAlarm(v1::AlarmKind kind, const std::string& why) {
  v1::StateEvent event;
  std::function<void(const v1::StateEvent&)> listener;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (alarms_.erase(kind) == 0) return;
    event = AlarmEventLocked(kind);
    event.set_message(why);
    event.set_cleared(true);
    listener = listener_;
  }
  if (listener) listener(event);
}

bool PipelineStatus::alarm_active(v1::AlarmKind kind) const {
  std::lock_guard<std::mutex> lock(mu_);
  return alarms_.count(kind) > 0;
}

void PipelineStatus::SetRetry(int attempt, absl::Time failing_since) {
  std::lock_guard<std::mutex> lock(mu_);
  retry_attempt_ = attempt;
  failing_since_ = failing_since;
}

void PipelineStatus::SetSource(const SourceView& source) {
  std::lock_guard<std::mutex> lock(mu_);
  source_ = source;
}

void PipelineStatus::SetSourceReader(std::function<SourceView()> reader) {
  std::lock_guard<std::mutex> refresh(refresh_mu_);  // a read in flight ends first
  std::lock_guard<std::mutex> lock(mu_);
  source_reader_ = std::move(reader);
}

void PipelineStatus::RefreshSource(absl::Duration max_age) {
  std::lock_guard<std::mutex> refresh(refresh_mu_);
  std::function<SourceView()> reader;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!source_reader_ || absl::Now() - source_.read_at < max_age) return;
    reader = source_reader_;
  }
  SourceView view = reader();  // a query on the source: the pipeline's calls must not wait for it
  std::lock_guard<std::mutex> lock(mu_);
  if (view.read_at > source_.read_at) source_ = view;
}

void PipelineStatus::SetKafka(const KafkaView& kafka) {
  std::lock_guard<std::mutex> lock(mu_);
  kafka_ = kafka;
}

void PipelineStatus::SetHa(const HaView& ha) {
  std::lock_guard<std::mutex> lock(mu_);
  ha_ = ha;
}

bool PipelineStatus::leading() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !ha_.enabled || ha_.leader;
}

void PipelineStatus::SetCopyProgress(std::function<std::vector<CopyUnitReport>()> progress) {
  std::lock_guard<std::mutex> lock(mu_);
  copy_progress_ = std::move(progress);
}

void PipelineStatus::SetVerify(const VerifyView& view) {
  std::lock_guard<std::mutex> lock(mu_);
  verify_[view.mapping] = view;
}

std::vector<CopyUnitReport> PipelineStatus::CopyLocked() {
  return copy_progress_ ? copy_progress_() : std::vector<CopyUnitReport>{};
}

v1::LagEvent PipelineStatus::Lag(bool advance_rates) {
  std::lock_guard<std::mutex> lock(mu_);
  return LagLocked(advance_rates);
}

v1::LagEvent PipelineStatus::LagLocked(bool advance_rates) {
  absl::Time now = absl::Now();
  v1::LagEvent e;
  e.set_pipeline(pipeline_);
  *e.mutable_time() = ToProto(now);
  e.set_state(state_);
  e.set_source_lsn(FormatLsn(source_.current));
  e.set_received_lsn(FormatLsn(received_));
  e.set_confirmed_lsn(FormatLsn(source_.confirmed));
  e.set_retained_wal_bytes(source_.retained_bytes);
  e.set_wal_status(source_.wal_status);
  e.set_safe_wal_size(source_.safe_wal_size);
  for (const auto& [_, alarm] : alarms_) *e.add_alarms() = alarm;
  double elapsed = absl::ToDoubleSeconds(now - rates_at_);
  for (Target& t : targets_) {
    v1::TargetLag* l = e.add_targets();
    l->set_target(t.name);
    l->set_applied_lsn(FormatLsn(t.applied));
    if (t.applied_commit_time != 0) *l->mutable_applied_commit_time() = ToProto(FromPg(t.applied_commit_time));
    // The source position is read once per lag interval (and when /status or /metrics is read);
    // what arrived since is newer. A target is behind by what the source wrote after the later
    // of its checkpoint and the position up to which the idle stream was confirmed applied.
    Lsn source = std::max(source_.current, received_);
    Lsn done = t.applied != kInvalidLsn ? std::max(t.applied, caught_up_) : kInvalidLsn;
    uint64_t bytes = source > done && done != kInvalidLsn ? source - done : 0;
    l->set_lag_bytes(bytes);
    // The oldest received commit this target has not applied.
    double seconds = 0;
    for (const auto& [lsn, time] : unapplied_) {
      if (lsn > t.applied) {
        seconds = std::max(0.0, absl::ToDoubleSeconds(now - FromPg(time)));
        break;
      }
    }
    l->set_lag_seconds(seconds);
    if (advance_rates && elapsed > 0) {
      t.changes_per_second = (t.changes - t.rate_changes) / elapsed;
      t.transactions_per_second = (t.transactions - t.rate_transactions) / elapsed;
      t.rate_changes = t.changes;
      t.rate_transactions = t.transactions;
    }
    l->set_changes_per_second(t.changes_per_second);
    l->set_transactions_per_second(t.transactions_per_second);
    l->set_applied_changes(t.changes);
    e.set_lag_bytes(std::max<uint64_t>(e.lag_bytes(), bytes));
    e.set_lag_seconds(std::max(e.lag_seconds(), seconds));
  }
  if (advance_rates) rates_at_ = now;
  return e;
}

void PipelineStatus::SetParked(size_t target, uint64_t parked) {
  std::lock_guard<std::mutex> lock(mu_);
  if (target < targets_.size()) targets_[target].parked = parked;
}

void PipelineStatus::OnDeadLetters(size_t target, uint64_t parked, const std::vector<v1::DeadLetterEvent>& events) {
  std::function<void(const v1::DeadLetterEvent&)> listener;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (target >= targets_.size()) return;
    targets_[target].parked = parked;
    for (const auto& e : events) {
      std::string action = v1::DeadLetterAction_Name(e.action());
      ++targets_[target].dead_letter[absl::AsciiStrToLower(absl::StripPrefix(action, "DEAD_LETTER_"))];
    }
    listener = dead_letter_listener_;
  }
  if (!listener) return;
  for (v1::DeadLetterEvent e : events) {
    e.set_parked(parked);
    listener(e);
  }
}

void PipelineStatus::SetDeadLetterListener(std::function<void(const v1::DeadLetterEvent&)> listener) {
  std::lock_guard<std::mutex> lock(mu_);
  dead_letter_listener_ = std::move(listener);
}

std::string PipelineStatus::StatusJson() {
  std::lock_guard<std::mutex> lock(mu_);
  std::string lag;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(LagLocked(false), &lag, o);
  std::string out = absl::StrCat(
      "{\"pipeline\":", JsonString(pipeline_), ",\"state\":", JsonString(v1::PipelineState_Name(state_)),
      ",\"state_message\":", JsonString(state_message_),
      ",\"state_since\":", JsonString(absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", state_since_, absl::UTCTimeZone())),
      ",\"retry_attempt\":", retry_attempt_, ",\"failing_since\":",
      retry_attempt_ == 0 ? "null"
                          : JsonString(absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", failing_since_, absl::UTCTimeZone())),
      ",\"ha\":",
      !ha_.enabled
          ? std::string("null")
          : absl::StrCat("{\"node\":", JsonString(ha_.node), ",\"role\":", ha_.leader ? "\"leader\"" : "\"standby\"",
                         ",\"leader\":", JsonString(ha_.leader_node), ",\"epoch\":", ha_.epoch, ",\"leading_since\":",
                         ha_.leader ? JsonString(absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", ha_.since, absl::UTCTimeZone()))
                                    : "null",
                         "}"),
      ",\"lag\":", lag, ",\"copy\":[");
  absl::Time now = absl::Now();
  bool first = true;
  for (const CopyUnitReport& r : CopyLocked()) {
    bool done = r.finished != absl::InfinitePast() || (r.chunks_total > 0 && r.chunks_done >= r.chunks_total);
    absl::Time end = r.finished != absl::InfinitePast() ? r.finished : now;
    double secs = r.started == absl::InfinitePast() ? 0 : absl::ToDoubleSeconds(end - r.started);
    double rate = secs > 0 ? r.rows / secs : 0;
    uint64_t copied = r.rows + r.rows_before;
    uint64_t total = std::max<uint64_t>(r.estimated_rows, copied);
    double eta = done ? 0 : rate > 0 ? (total - copied) / rate : -1;
    absl::StrAppend(
        &out, first ? "" : ",", "{\"source_table\":", JsonString(r.source_table), ",\"target\":", JsonString(r.target),
        ",\"rows\":", copied, ",\"estimated_rows\":", total, ",\"rows_per_second\":", absl::StrFormat("%.1f", rate),
        ",\"eta_seconds\":", absl::StrFormat("%.1f", eta), ",\"chunks_done\":", r.chunks_done,
        ",\"chunks_total\":", r.chunks_total, ",\"retries\":", r.retries, ",\"done\":", done ? "true" : "false", "}");
    first = false;
  }
  absl::StrAppend(&out, "],\"verify\":[");
  first = true;
  for (const auto& [_, v] : verify_) {
    absl::StrAppend(&out, first ? "" : ",", "{\"mapping\":", JsonString(v.mapping),
                    ",\"source_table\":", JsonString(v.source_table), ",\"target\":", JsonString(v.target),
                    ",\"rows_verified\":", v.rows_verified, ",\"missing\":", v.missing, ",\"extra\":", v.extra,
                    ",\"mismatched\":", v.mismatched, ",\"last_full_pass\":",
                    v.last_full_pass == absl::InfinitePast()
                        ? "null"
                        : JsonString(absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", v.last_full_pass, absl::UTCTimeZone())),
                    "}");
    first = false;
  }
  absl::StrAppend(&out, "],\"dead_letter\":[");
  first = true;
  for (const Target& t : targets_) {
    auto n = [&](const char* action) {
      auto it = t.dead_letter.find(action);
      return it == t.dead_letter.end() ? uint64_t{0} : it->second;
    };
    absl::StrAppend(&out, first ? "" : ",", "{\"target\":", JsonString(t.name), ",\"parked\":", t.parked,
                    ",\"parked_since_start\":", n("parked"), ",\"retried\":", n("retried"),
                    ",\"retry_failed\":", n("retry_failed"), ",\"discarded\":", n("discarded"), "}");
    first = false;
  }
  uint64_t errors = 0;
  for (const auto& [_, n] : errors_) errors += n;
  absl::StrAppend(&out, "],\"kafka\":{\"enabled\":", kafka_.enabled ? "true" : "false",
                  ",\"brokers\":", JsonString(kafka_.brokers), ",\"queued\":", kafka_.queued,
                  ",\"delivered\":", kafka_.delivered, ",\"dropped\":", kafka_.dropped, ",\"failed\":", kafka_.failed,
                  "},\"errors\":", errors, ",\"source\":{\"reachable\":", source_.reachable ? "true" : "false",
                  ",\"error\":", JsonString(source_.error),
                  ",\"ignored_origin_transactions\":", ignored_origin_transactions_, "}}");
  return out;
}

std::string PipelineStatus::PrometheusText() {
  std::lock_guard<std::mutex> lock(mu_);
  v1::LagEvent lag = LagLocked(false);
  std::string p = absl::StrCat("pipeline=\"", Label(pipeline_), "\"");
  std::string out;
  auto head = [&](const char* name, const char* type, const char* help) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  };
  head("walshift_state", "gauge", "1 for the pipeline's current state");
  for (int s = v1::STARTING; s <= v1::STANDBY; ++s) {
    absl::StrAppend(&out, "walshift_state{", p, ",state=\"", v1::PipelineState_Name(static_cast<v1::PipelineState>(s)),
                    "\"} ", s == state_ ? 1 : 0, "\n");
  }
  head("walshift_lag_bytes", "gauge", "Source WAL bytes after the target's checkpoint");
  for (const auto& t : lag.targets())
    absl::StrAppend(&out, "walshift_lag_bytes{", p, ",target=\"", Label(t.target()), "\"} ", t.lag_bytes(), "\n");
  head("walshift_lag_seconds", "gauge", "Age of the oldest received change not yet applied (0 when caught up)");
  for (const auto& t : lag.targets())
    absl::StrAppend(&out, "walshift_lag_seconds{", p, ",target=\"", Label(t.target()), "\"} ", Number(t.lag_seconds()),
                    "\n");
  head("walshift_applied_lsn", "gauge", "The target's checkpoint LSN as a number");
  for (const Target& t : targets_)
    absl::StrAppend(&out, "walshift_applied_lsn{", p, ",target=\"", Label(t.name), "\"} ", t.applied, "\n");
  head("walshift_applied_changes_total", "counter", "Changes applied per target");
  for (const Target& t : targets_)
    absl::StrAppend(&out, "walshift_applied_changes_total{", p, ",target=\"", Label(t.name), "\"} ", t.changes, "\n");
  head("walshift_applied_transactions_total", "counter", "Source transactions applied per target");
  for (const Target& t : targets_)
    absl::StrAppend(&out, "walshift_applied_transactions_total{", p, ",target=\"", Label(t.name), "\"} ",
                    t.transactions, "\n");
  head("walshift_table_changes_total", "counter", "Source changes applied per source table");
  for (const auto& [table, n] : table_changes_)
    absl::StrAppend(&out, "walshift_table_changes_total{", p, ",table=\"", Label(table), "\"} ", n, "\n");
  auto histogram = [&](const char* name, const char* help, const Histogram& h) {
    head(name, "histogram", help);
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h.counts.size(); ++i) {
      cumulative += h.counts[i];
      absl::StrAppend(&out, name, "_bucket{", p, ",le=\"", i < h.bounds.size() ? Number(h.bounds[i]) : "+Inf", "\"} ",
                      cumulative, "\n");
    }
    absl::StrAppend(&out, name, "_sum{", p, "} ", Number(h.sum), "\n", name, "_count{", p, "} ", h.count, "\n");
  };
  histogram("walshift_batch_changes", "Changes per target transaction", batch_size_);
  histogram("walshift_apply_seconds", "Time to send and commit one target transaction", apply_seconds_);
  head("walshift_errors_total", "counter",
       "Errors by kind (reconnect, resources: a target or source out of disk, memory or connections, replay, data)");
  for (const auto& [kind, n] : errors_)
    absl::StrAppend(&out, "walshift_errors_total{", p, ",kind=\"", Label(kind), "\"} ", n, "\n");
  head("walshift_dead_letter_parked", "gauge",
       "Changes parked in the target's walshift.dead_letter (on_error: dead_letter), not yet retried or discarded");
  for (const Target& t : targets_)
    absl::StrAppend(&out, "walshift_dead_letter_parked{", p, ",target=\"", Label(t.name), "\"} ", t.parked, "\n");
  head("walshift_dead_letter_total", "counter",
       "Dead-letter events by action (parked, retried, retry_failed, discarded) since start");
  for (const Target& t : targets_)
    for (const auto& [action, n] : t.dead_letter)
      absl::StrAppend(&out, "walshift_dead_letter_total{", p, ",target=\"", Label(t.name), "\",action=\"", action,
                      "\"} ", n, "\n");
  auto single = [&](const char* name, const char* type, const char* help, auto value) {
    head(name, type, help);
    absl::StrAppend(&out, name, "{", p, "} ", value, "\n");
  };
  single("walshift_received_lsn", "gauge", "The last position read from the slot", received_);
  single("walshift_ignored_origin_transactions_total", "counter",
         "Source transactions passed over for their replication origin (source.ignore_origins)",
         ignored_origin_transactions_);
  single("walshift_source_lsn", "gauge", "The source's current WAL position", source_.current);
  single("walshift_slot_retained_wal_bytes", "gauge", "WAL the slot keeps on the source", source_.retained_bytes);
  single("walshift_slot_safe_wal_size_bytes", "gauge",
         "WAL that may still be written before the slot is lost (-1: unlimited)", source_.safe_wal_size);
  head("walshift_alarm", "gauge", "1 while the alarm is raised (see AlarmKind in events.proto)");
  for (int k = v1::RETAINED_WAL; k <= v1::SLOT_MISSING; ++k) {
    auto kind = static_cast<v1::AlarmKind>(k);
    absl::StrAppend(&out, "walshift_alarm{", p, ",alarm=\"", v1::AlarmKind_Name(kind), "\"} ", alarms_.count(kind),
                    "\n");
  }
  single("walshift_leader", "gauge",
         "1 while this walshiftd applies the pipeline's changes (always without ha; the leader with it), 0 standing by",
         !ha_.enabled || ha_.leader ? 1 : 0);
  single("walshift_retry_attempt", "gauge", "Consecutive failed attempts of the pipeline (0 while it makes progress)",
         retry_attempt_);
  single("walshift_kafka_queued_events", "gauge", "Events waiting for delivery", kafka_.queued);
  single("walshift_kafka_delivered_total", "counter", "Events delivered to Kafka", kafka_.delivered);
  single("walshift_kafka_dropped_total", "counter", "Events dropped because the queue was full", kafka_.dropped);
  single("walshift_kafka_failed_total", "counter", "Events Kafka did not accept in time", kafka_.failed);
  head("walshift_verify_rows_total", "counter", "Source rows the drift verifier checked, per mapping");
  for (const auto& [m, v] : verify_)
    absl::StrAppend(&out, "walshift_verify_rows_total{", p, ",mapping=\"", Label(m), "\",table=\"",
                    Label(v.source_table), "\"} ", v.rows_verified, "\n");
  head("walshift_drift_total", "counter", "Confirmed differences by kind, per mapping");
  for (const auto& [m, v] : verify_) {
    for (const auto& [kind, n] :
         {std::pair<const char*, uint64_t>{"MISSING", v.missing}, {"EXTRA", v.extra}, {"MISMATCH", v.mismatched}}) {
      absl::StrAppend(&out, "walshift_drift_total{", p, ",mapping=\"", Label(m), "\",table=\"", Label(v.source_table),
                      "\",kind=\"", kind, "\"} ", n, "\n");
    }
  }
  head("walshift_verify_last_full_pass_timestamp_seconds", "gauge", "When the verifier last finished a full pass");
  for (const auto& [m, v] : verify_) {
    if (v.last_full_pass == absl::InfinitePast()) continue;
    absl::StrAppend(&out, "walshift_verify_last_full_pass_timestamp_seconds{", p, ",mapping=\"", Label(m),
                    "\",table=\"", Label(v.source_table), "\"} ", absl::ToUnixSeconds(v.last_full_pass), "\n");
  }
  std::vector<CopyUnitReport> copy = CopyLocked();
  head("walshift_copy_rows", "gauge", "Rows of the initial copy done per source table and target");
  for (const auto& r : copy)
    absl::StrAppend(&out, "walshift_copy_rows{", p, ",table=\"", Label(r.source_table), "\",target=\"", Label(r.target),
                    "\"} ", r.rows + r.rows_before, "\n");
  head("walshift_copy_estimated_rows", "gauge", "Estimated rows of each copied source table");
  for (const auto& r : copy)
    absl::StrAppend(&out, "walshift_copy_estimated_rows{", p, ",table=\"", Label(r.source_table), "\",target=\"",
                    Label(r.target), "\"} ", r.estimated_rows, "\n");
  head("walshift_copy_range_retries_total", "counter",
       "Ranges of the initial copy copied again after a deadlock with another copy worker");
  for (const auto& r : copy)
    absl::StrAppend(&out, "walshift_copy_range_retries_total{", p, ",table=\"", Label(r.source_table), "\",target=\"",
                    Label(r.target), "\"} ", r.retries, "\n");
  return out;
}

}  // namespace walshift
