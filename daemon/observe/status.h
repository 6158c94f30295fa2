#pragma once
// Where the pipeline stands, shared between the pipeline thread (which records), the monitor
// (which adds the source's view and publishes lag events) and the HTTP endpoint (which reads).
// Every method is thread-safe; the pipeline's calls are a mutex and a few additions each.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "daemon/core/lsn.h"
#include "walshift/v1/events.pb.h"

namespace walshift {

// Progress and, for a dry run, the result of one unit.
struct CopyUnitReport {
  std::string source_table;
  std::string target;
  uint64_t estimated_rows = 0;
  uint64_t rows = 0;         // read (and, unless dry run, written) by this run
  uint64_t rows_before = 0;  // copied by earlier runs
  int chunks_total = 0, chunks_done = 0;
  absl::Time started = absl::InfinitePast(), finished = absl::InfinitePast();
  std::map<std::string, uint64_t> writes;  // dry run: "upsert into app.t" → operations
  std::vector<std::string> failures;       // dry run: the first mapping failures
  uint64_t failure_count = 0;
  uint64_t retries = 0;  // ranges copied again after a deadlock with another copy worker
};

// Cumulative histogram with fixed upper bounds (Prometheus semantics).
struct Histogram {
  explicit Histogram(std::vector<double> bounds) : bounds(std::move(bounds)), counts(this->bounds.size() + 1) {}
  void Observe(double v);
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // per bucket (not cumulative); last is +Inf
  double sum = 0;
  uint64_t count = 0;
};

struct SourceView {
  bool reachable = false;
  std::string error;
  Lsn current = kInvalidLsn;
  Lsn confirmed = kInvalidLsn;
  bool slot_exists = false;
  std::string wal_status;
  int64_t safe_wal_size = -1;
  uint64_t retained_bytes = 0;
  absl::Time read_at = absl::InfinitePast();
};

// The continuous drift verifier's counters for one mapping.
struct VerifyView {
  std::string mapping, source_table, target;
  uint64_t rows_verified = 0;                       // since start
  uint64_t missing = 0, extra = 0, mismatched = 0;  // confirmed since start
  absl::Time last_full_pass = absl::InfinitePast();
};

// Active/standby (ha:): this walshiftd's role.
struct HaView {
  bool enabled = false;
  std::string node;
  bool leader = false;
  std::string leader_node;  // the leader the targets name (this node while leading)
  int64_t epoch = 0;        // the leader's epoch
  absl::Time since = absl::InfinitePast();  // leading since (leader only)
};

struct KafkaView {
  bool enabled = false;
  std::string brokers;
  uint64_t queued = 0, delivered = 0, dropped = 0, failed = 0;
};

class PipelineStatus {
 public:
  PipelineStatus(std::string pipeline, std::vector<std::string> targets);

  const std::string& pipeline() const { return pipeline_; }
  size_t target_count() const { return targets_.size(); }

  // State changes; calls the listener (the monitor publishes a StateEvent) outside the lock.
  void SetState(v1::PipelineState state, const std::string& message = "");
  v1::PipelineState state() const;
  void SetStateListener(std::function<void(const v1::StateEvent&)> listener);

  // The pipeline thread's loop is alive (for /healthz).
  void Tick();
  absl::Time last_tick() const;

  // A source transaction arrived (commit order); `end_lsn` is what a checkpoint stores.
  void OnReceived(Lsn end_lsn, PgTimestamp commit_time);
  void SetReceivedLsn(Lsn lsn);
  // Source transactions passed over for their replication origin (source.ignore_origins).
  void AddIgnoredOriginTransactions(uint64_t n);
  // Every target has applied everything the source sent up to `lsn` (an idle stream's
  // keepalive position, see ChangeSource::ConfirmIdle): lag is counted from there when it is
  // past a target's checkpoint.
  void SetCaughtUp(Lsn lsn);
  // A group committed on `target`: its checkpoint and what it held.
  void OnApplied(size_t target, Lsn durable, size_t changes, size_t transactions, absl::Duration took);
  // Changes applied per source table (added at group commit).
  void AddTableChanges(const std::string& table, uint64_t changes);
  void CountError(const std::string& kind);
  // on_error: dead_letter. The changes parked in `target` now (read at each attempt), and the
  // events of a group that committed (counted, then handed to the dead-letter listener, which
  // publishes them).
  void SetParked(size_t target, uint64_t parked);
  void OnDeadLetters(size_t target, uint64_t parked, const std::vector<v1::DeadLetterEvent>& events);
  void SetDeadLetterListener(std::function<void(const v1::DeadLetterEvent&)> listener);

  // Alarms (v1::AlarmKind): raising one that is not active, or clearing one that is, calls the
  // state listener with a StateEvent saying so (the state unchanged); raising an active one
  // only updates its message. `why` says what cleared it.
  void RaiseAlarm(v1::AlarmKind kind, const std::string& message);
  void ClearAlarm(v1::AlarmKind kind, const std::string& why);
  bool alarm_active(v1::AlarmKind kind) const;

  // Retrying after a retryable error: the attempt (1 for the first retry) and since when the
  // pipeline has failed; attempt 0 once an attempt made durable progress again.
  void SetRetry(int attempt, absl::Time failing_since);

  void SetSource(const SourceView& source);
  // How to read the source's view now (the monitor's); RefreshSource() calls it when the view
  // is older than `max_age`, so /status and /metrics compare with a position read now.
  void SetSourceReader(std::function<SourceView()> reader);
  void RefreshSource(absl::Duration max_age);
  void SetKafka(const KafkaView& kafka);
  void SetHa(const HaView& ha);
  // Whether this walshiftd applies changes: always without ha, only the leader with it.
  bool leading() const;
  // While copying: how to read the copy's progress; afterwards its final report.
  void SetCopyProgress(std::function<std::vector<CopyUnitReport>()> progress);
  // The verifier's counters of one mapping (keyed by `view.mapping`).
  void SetVerify(const VerifyView& view);

  // A LagEvent of the current state (rates over the time since the previous call with
  // `advance_rates`).
  v1::LagEvent Lag(bool advance_rates);

  // /status JSON and /metrics text.
  std::string StatusJson();
  std::string PrometheusText();

 private:
  // A StateEvent for alarm `kind` in the current state; mu_ held.
  v1::StateEvent AlarmEventLocked(v1::AlarmKind kind) const;
  struct Target {
    std::string name;
    Lsn applied = kInvalidLsn;
    PgTimestamp applied_commit_time = 0;
    uint64_t changes = 0, transactions = 0;
    uint64_t rate_changes = 0, rate_transactions = 0;  // at the last rate reading
    double changes_per_second = 0, transactions_per_second = 0;
    uint64_t parked = 0;
    std::map<std::string, uint64_t> dead_letter;  // events by action (parked, retried, ...)
  };
  v1::LagEvent LagLocked(bool advance_rates);
  std::vector<CopyUnitReport> CopyLocked();

  const std::string pipeline_;
  mutable std::mutex mu_;
  std::vector<Target> targets_;
  v1::PipelineState state_ = v1::STARTING;
  std::string state_message_;
  absl::Time state_since_ = absl::Now();
  std::function<void(const v1::StateEvent&)> listener_;
  std::function<void(const v1::DeadLetterEvent&)> dead_letter_listener_;
  absl::Time last_tick_ = absl::Now();
  // Received commits not yet applied everywhere: (end_lsn, commit_time), in commit order.
  std::deque<std::pair<Lsn, PgTimestamp>> unapplied_;
  Lsn received_ = kInvalidLsn;
  uint64_t ignored_origin_transactions_ = 0;
  Lsn caught_up_ = kInvalidLsn;
  std::function<SourceView()> source_reader_;
  std::mutex refresh_mu_;  // one source read at a time, outside mu_
  std::map<std::string, uint64_t> table_changes_;
  std::map<std::string, uint64_t> errors_;
  Histogram batch_size_{{1, 10, 100, 1000, 5000, 10000, 50000}};
  Histogram apply_seconds_{{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30}};
  SourceView source_;
  KafkaView kafka_;
  std::function<std::vector<CopyUnitReport>()> copy_progress_;
  std::map<std::string, VerifyView> verify_;
  absl::Time rates_at_ = absl::Now();
  std::map<v1::AlarmKind, v1::Alarm> alarms_;
  HaView ha_;
  int retry_attempt_ = 0;
  absl::Time failing_since_ = absl::InfinitePast();
};

}  // namespace walshift
