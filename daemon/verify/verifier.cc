#include "daemon/verify/verifier.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/apply/pg_statements.h"
#include "daemon/core/status_macros.h"
#include "daemon/observe/format.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/pg_schema_inspector.h"
#include "daemon/state/pg_state.h"
#include "daemon/state/target_state.h"
#include "daemon/verify/document_verifier.h"
#include "daemon/verify/table_verifier.h"
#include "google/protobuf/util/time_util.h"
#include "spdlog/spdlog.h"

namespace walshift {

absl::StatusOr<std::vector<VerifyTableReport>> VerifyOnce(const VerifyOptions& options, const std::atomic<bool>& stop) {
  std::vector<VerifyTableReport> out;
  std::map<size_t, std::vector<size_t>> document_targets;  // target → its mappings
  for (size_t m = 0; m < options.modules->size(); ++m) {
    const MappingModule& module = *(*options.modules)[m];
    if (!options.table.empty() && module.source_table() != options.table) continue;
    if (options.honor_mapping_switch && options.settings->mappings[m].common.has_verify() &&
        !options.settings->mappings[m].common.verify()) {
      continue;
    }
    if (options.settings->targets[options.module_target[m]].documents()) {
      document_targets[options.module_target[m]].push_back(m);
      continue;
    }
    ASSIGN_OR_RETURN(VerifyTableReport r, verify_internal::VerifyTable(options, module, options.module_target[m],
                                                                       options.settings->mappings[m].path, stop));
    out.push_back(std::move(r));
  }
  for (const auto& [target, modules] : document_targets) {
    // A document may be written by several mappings: all of the target's mappings at once.
    std::vector<size_t> all = modules;
    if (!options.table.empty()) {
      all.clear();
      for (size_t m = 0; m < options.modules->size(); ++m)
        if (options.module_target[m] == target) all.push_back(m);
    }
    ASSIGN_OR_RETURN(auto reports, VerifyDocumentTarget(options, target, all, stop));
    for (auto& r : reports) out.push_back(std::move(r));
  }
  return out;
}

ContinuousVerifier::ContinuousVerifier(VerifyOptions options, PipelineStatus* status, absl::Duration interval)
    : options_(std::move(options)), status_(status), interval_(interval) {
  thread_ = std::thread([this] { Loop(); });
}

ContinuousVerifier::~ContinuousVerifier() {
  stop_.store(true);
  thread_.join();
}

void ContinuousVerifier::Loop() {
  // Cumulative counters per mapping; a pass adds its rows and confirmed differences.
  std::map<std::string, VerifyView> views;
  std::map<std::string, uint64_t> pass_rows;
  options_.honor_mapping_switch = true;
  options_.progress = [&](const VerifyTableReport& r, bool finished) {
    VerifyView& v = views[r.mapping];
    v.mapping = r.mapping;
    v.source_table = r.source_table;
    v.target = r.target;
    v.rows_verified += r.checked - pass_rows[r.mapping];
    pass_rows[r.mapping] = r.checked;
    if (finished) {
      v.missing += r.missing;
      v.extra += r.extra;
      v.mismatched += r.mismatched;
      v.last_full_pass = absl::Now();
      pass_rows[r.mapping] = 0;
    }
    status_->SetVerify(v);
  };
  auto sleep = [&](absl::Duration d) {
    absl::Time until = absl::Now() + d;
    while (absl::Now() < until && !stop_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  };
  // Let the pipeline reach streaming first: a copy in progress is not drift.
  while (!stop_.load() && status_->state() != v1::STREAMING) sleep(absl::Seconds(1));
  std::set<std::string> reported_before, reported_now;
  options_.already_reported = &reported_before;
  options_.reported_now = &reported_now;
  while (!stop_.load()) {
    // ha: only the leader verifies (a standby's pass would double the load and the reports).
    if (!status_->leading()) {
      sleep(absl::Seconds(1));
      continue;
    }
    pass_rows.clear();
    reported_now.clear();
    auto reports = VerifyOnce(options_, stop_);
    if (reports.ok()) reported_before.swap(reported_now);  // a drift still there is not news
    if (!reports.ok()) {
      if (reports.status().code() != absl::StatusCode::kCancelled) {
        spdlog::warn("drift verifier: {}; next pass in 60 s", std::string(reports.status().message()));
        sleep(absl::Seconds(60));
      }
      continue;
    }
    uint64_t rows = 0, drift = 0;
    for (const auto& r : *reports) rows += r.checked, drift += r.drift();
    spdlog::info("drift verifier: full pass over {} mappings, {} rows, {} differences", reports->size(), rows, drift);
    sleep(interval_);
  }
}

absl::Status WaitCaughtUp(const config::Settings& settings, absl::Duration timeout) {
  ASSIGN_OR_RETURN(pg::ConnPtr src, pg::Connect(settings.source_dsn, "source", "application_name=walshift-verify"));
  ASSIGN_OR_RETURN(Lsn goal, verify_internal::CurrentLsn(src.get()));
  // A fence right after it moves the checkpoints past it without waiting for the next heartbeat
  // (best effort: a role that may not emit messages waits for the heartbeat).
  (void)pg::Exec(src.get(), "SELECT pg_logical_emit_message(true, 'walshift.fence', 'gate')", "writing the fence");
  std::vector<std::string> behind;
  absl::Time deadline = absl::Now() + timeout;
  for (const auto& t : settings.targets) {
    state::TargetStateReader reader(t, settings.proto.pipeline());
    for (;;) {
      ASSIGN_OR_RETURN(std::optional<state::CheckpointRow> row, reader.Checkpoint());
      Lsn at = row ? row->lsn : kInvalidLsn;
      if (at != kInvalidLsn && at >= goal) break;
      if (absl::Now() >= deadline) {
        behind.push_back(absl::StrCat(t.name, " at ", FormatLsn(at)));
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  if (!behind.empty()) {
    return absl::DeadlineExceededError(absl::StrCat("not caught up to the source position ", FormatLsn(goal),
                                                    " within ", absl::FormatDuration(timeout), ": ",
                                                    absl::StrJoin(behind, ", ")));
  }
  return absl::OkStatus();
}

}  // namespace walshift
