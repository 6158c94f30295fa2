#pragma once
// The drift verifier: one pass over every mapped source table (or one), through the same
// mapping modules as the apply, comparing what the target should hold with what it holds.
//
// Forward walk: the source table in primary-key order, in chunks read under one snapshot
// together with the source's WAL position L. Each row is mapped as an insert; every upsert the
// mapping produces must find its target row with equal values (compared by the target in the
// column's type: numerics by value, timestamps by instant, json as jsonb), every delete (or an
// upsert whose filter is false) must find none. Only the columns the mapping writes are
// compared, so a merge compares the columns a source owns.
// Reverse walk (tables one mapping fills, keyed by source columns): target keys whose source
// row does not exist are EXTRA.
//
// No false alarms from changes in flight: a difference is re-checked once the target's
// checkpoint has passed L, with the source row read again (at L2) and the target read only
// after the checkpoint passed L2; if the source row changed meanwhile the row is retried, and a
// row that keeps changing is counted as unsettled, never as drift.

#include <atomic>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/config/config.h"
#include "daemon/core/interfaces.h"
#include "daemon/observe/events.h"
#include "daemon/observe/status.h"
#include "walshift/v1/events.pb.h"

namespace walshift {

struct VerifyTableReport;

struct VerifyOptions {
  const config::Settings* settings = nullptr;
  const std::vector<std::shared_ptr<const MappingModule>>* modules = nullptr;
  std::vector<size_t> module_target;
  std::string table;  // only this source table (schema.table); empty: all
  int chunk_rows = 500;
  size_t max_shown = 10;  // differences kept per table and kind (missing, extra, mismatch) for the report
  // How long to wait for the target's checkpoint to pass a read position.
  absl::Duration settle = absl::Seconds(120);
  EventPublisher* events = nullptr;   // DriftEvents (optional)
  bool record = true;                 // rows in walshift.drift of the target
  bool delete_extras = false;         // --repair: delete confirmed extra rows found by the reverse walk
  double rows_per_second = 0;         // 0: as fast as it goes
  bool honor_mapping_switch = false;  // skip mappings with `verify: false`
  // Continuous passes: differences `already_reported` (by the previous pass) are counted but not
  // published or recorded again; every difference found goes into `reported_now`.
  const std::set<std::string>* already_reported = nullptr;
  std::set<std::string>* reported_now = nullptr;
  // Called after every chunk and at the end of each mapping with its report so far.
  std::function<void(const VerifyTableReport&, bool finished)> progress;
};

struct VerifyTableReport {
  std::string mapping;  // config path, e.g. mappings[2]
  std::string source_table, target;
  uint64_t checked = 0, missing = 0, extra = 0, mismatched = 0, unsettled = 0, skipped = 0, deleted = 0;
  bool extras_checked = false;
  std::string note;  // what was not verified, and why
  double seconds = 0;
  std::vector<v1::DriftEvent> shown;
  uint64_t drift() const { return missing + extra + mismatched; }
  // Keeps `event` among the samples unless `max_per_kind` of its kind are kept already.
  void Show(v1::DriftEvent event, size_t max_per_kind) {
    size_t kept = 0;
    for (const auto& e : shown) kept += e.kind() == event.kind();
    if (kept < max_per_kind) shown.push_back(std::move(event));
  }
};

// One full pass. kUnavailable when a database cannot be reached.
absl::StatusOr<std::vector<VerifyTableReport>> VerifyOnce(const VerifyOptions& options, const std::atomic<bool>& stop);

// The verifier inside walshiftd: full passes with a rows/s budget, one after another
// (verify.interval_s apart), counters into the status, drift as events and walshift.drift rows.
class ContinuousVerifier {
 public:
  ContinuousVerifier(VerifyOptions options, PipelineStatus* status, absl::Duration interval);
  ~ContinuousVerifier();  // stops the thread

 private:
  void Loop();
  VerifyOptions options_;
  PipelineStatus* status_;
  absl::Duration interval_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Waits until every target's checkpoint of the pipeline has reached the source's WAL position
// at the time of the call (the cutover gate). kDeadlineExceeded naming the targets behind.
absl::Status WaitCaughtUp(const config::Settings& settings, absl::Duration timeout);

}  // namespace walshift
