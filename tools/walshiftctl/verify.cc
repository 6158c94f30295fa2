// walshiftctl verify --config FILE [--table T] [--repair] [--gate [SECONDS]] [--samples N]
//
// One full pass of the drift verifier now (see daemon/verify/verifier.h), printed per mapping:
// rows checked, missing, extra, mismatched, still changing, time, what was not verified, and
// the first differences of each kind. Exit 0 no drift, 1 drift (or the gate not met), 2 an error.

#include <algorithm>
#include <map>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "daemon/config/config.h"
#include "daemon/core/change.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/session_zone.h"
#include "daemon/state/target_state.h"
#include "daemon/verify/verifier.h"
#include "tools/walshiftctl/commands.h"
#include "tools/walshiftctl/load_config.h"
#include "transforms/registry.h"

namespace walshift::ctl {
namespace {

// One summary line per mapping, each count its own word (a count is never qualified by what
// follows it), what was not verified and why, then the samples grouped by kind.
// Changes walshiftctl skip left out, per (target, source table).
using Skipped = std::map<std::pair<std::string, std::string>, state::SkippedChanges>;

// Changes parked in walshift.dead_letter, per (target, source table).
using Parked = std::map<std::pair<std::string, std::string>, uint64_t>;

// Targets whose parked changes could not be read: the gate cannot pass on them.
void ReadLeftOut(const config::Settings& s, Skipped* skipped, Parked* parked, std::vector<std::string>* unread) {
  for (const auto& t : s.targets) {
    if (t.documents()) continue;
    std::string what = absl::StrCat("target ", t.name);
    auto conn = pg::Connect(t.dsn, what, "application_name=walshiftctl");
    if (!conn.ok()) {
      unread->push_back(std::string(conn.status().message()));
      continue;
    }
    auto rows = state::ReadSkipped(conn->get(), s.proto.pipeline(), what);
    if (rows.ok())
      for (auto& [table, c] : *rows) (*skipped)[{t.name, table}] = std::move(c);
    auto waiting = state::ReadParked(conn->get(), s.proto.pipeline(), what);
    if (waiting.ok()) {
      for (auto& [table, n] : *waiting) (*parked)[{t.name, table}] = n;
    } else {
      unread->push_back(std::string(waiting.status().message()));
    }
  }
}

void Print(const std::vector<VerifyTableReport>& reports, const Skipped& skipped, const Parked& parked) {
  for (const auto& r : reports) {
    auto n = [](uint64_t v) { return static_cast<unsigned long long>(v); };
    std::string extra = r.extras_checked ? absl::StrCat(r.extra, " extra") : "extra rows not looked for";
    std::printf("%s %s -> %s: %llu checked, %llu missing, %s, %llu mismatched, %llu still changing, %.1f s\n",
                r.mapping.c_str(), r.source_table.c_str(), r.target.c_str(), n(r.checked), n(r.missing),
                extra.c_str(), n(r.mismatched), n(r.unsettled), r.seconds);
    if (!r.note.empty()) std::printf("    not verified: %s\n", r.note.c_str());
    if (auto it = skipped.find({r.target, r.source_table}); it != skipped.end() && r.drift() > 0) {
      std::printf("    skipped: %llu changes of %s left out by walshiftctl skip (transactions committed at %s, listed "
                  "in walshift.skipped); a backfill of %s heals them\n",
                  n(it->second.changes), r.source_table.c_str(), it->second.commit_lsns.c_str(),
                  r.source_table.c_str());
    }
    if (auto it = parked.find({r.target, r.source_table}); it != parked.end()) {
      std::printf("    parked: %llu changes of %s wait in walshift.dead_letter (walshiftctl dead-letter list); their rows "
                  "differ until they are retried or discarded\n",
                  n(it->second), r.source_table.c_str());
    }
    for (v1::DriftKind kind : {v1::MISSING, v1::EXTRA, v1::MISMATCH}) {
      const uint64_t total = kind == v1::MISSING ? r.missing : kind == v1::EXTRA ? r.extra : r.mismatched;
      std::vector<const v1::DriftEvent*> samples;
      for (const auto& d : r.shown)
        if (d.kind() == kind) samples.push_back(&d);
      if (samples.empty()) continue;
      std::printf("    %s: %llu (%zu shown)\n", v1::DriftKind_Name(kind).c_str(), n(total), samples.size());
      for (const v1::DriftEvent* d : samples) {
        std::vector<std::string> cols;
        for (const auto& c : d->columns())
          cols.push_back(absl::StrCat(c.column(), ": expected ", c.expected(), ", actual ", c.actual()));
        std::printf("      %s (%s)%s%s\n", d->target_table().c_str(), d->key().c_str(), cols.empty() ? "" : "  ",
                    absl::StrJoin(cols, "; ").c_str());
      }
    }
  }
}

// Asks walshiftd to backfill `table` (walshiftctl backfill) and waits until every target says done.
absl::Status Backfill(const config::Settings& s, const std::string& table, absl::Duration timeout) {
  std::vector<std::pair<std::unique_ptr<state::TargetStateReader>, double>> targets;
  for (const auto& t : s.targets) {
    auto reader = std::make_unique<state::TargetStateReader>(t, s.proto.pipeline());
    ASSIGN_OR_RETURN(double now, reader->Clock());
    targets.emplace_back(std::move(reader), now);
  }
  ASSIGN_OR_RETURN(pg::ConnPtr src, pg::Connect(s.source_dsn, "source", "application_name=walshiftctl"));
  std::string content = absl::StrCat(s.proto.pipeline(), "\t", table);
  RETURN_IF_ERROR(pg::ExecParams(src.get(), "SELECT pg_logical_emit_message(true, 'walshift.backfill', $1)",
                                 {content.c_str()}, "requesting a backfill")
                      .status());
  absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    bool done = false;
    for (auto& [reader, since] : targets) {
      auto r = state::BackfillSince(*reader, table, since);
      if (r.ok() && *r && (*r)->state == "done") done = true;
    }
    if (done) return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("the backfill of ", table, " did not finish; --repair needs a running walshiftd"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

}  // namespace

int VerifyCommand(int argc, char** argv) {
  std::string config_path, table;
  bool repair = false, gate = false;
  double settle = 120;
  int samples = 10;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--config" || a == "-c") && i + 1 < argc)
      config_path = argv[++i];
    else if (a == "--table" && i + 1 < argc)
      table = argv[++i];
    else if (a == "--repair")
      repair = true;
    else if (a == "--gate")
      gate = true;
    else if (a == "--settle" && i + 1 < argc && absl::SimpleAtod(argv[i + 1], &settle))
      ++i;
    else if (a == "--samples" && i + 1 < argc && absl::SimpleAtoi(argv[i + 1], &samples) && samples >= 0)
      ++i;
    else {
      std::fprintf(stderr,
                   "usage: walshiftctl verify --config FILE [--table SCHEMA.TABLE] [--repair] [--gate] [--settle S] "
                   "[--samples N]\n"
                   "  --samples N   differences shown per mapping and kind (default 10; every one is counted,\n"
                   "                recorded in walshift.drift and published as a DriftEvent)\n");
      return 2;
    }
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "walshiftctl verify: --config is required\n");
    return 2;
  }
  if (!table.empty()) table = QualifiedTableName(table);
  auto settings = LoadCommandSettings(config_path);
  if (!settings) return 2;
  if (!table.empty() && std::none_of(settings->mappings.begin(), settings->mappings.end(),
                                     [&](const auto& m) { return m.common.source() == table; })) {
    std::fprintf(stderr, "walshiftctl verify: no mapping of pipeline %s reads %s\n", settings->proto.pipeline().c_str(),
                 table.c_str());
    return 2;
  }
  auto modules = transforms::BuildModules(*settings, config_path);
  if (!modules.ok()) {
    std::fprintf(stderr, "walshiftctl: invalid configuration: %s\n", std::string(modules.status().message()).c_str());
    return 2;
  }
  // The pipeline's time zone: expected and actual values are read as walshiftd writes them.
  auto zone = PinSessionTimeZone(*settings, /*record=*/false);
  if (!zone.ok()) {
    std::fprintf(stderr, "walshiftctl verify: %s\n", std::string(zone.status().message()).c_str());
    return 2;
  }
  auto events = EventPublisher::Create(settings->proto, settings->kafka_secrets);
  if (!events.ok()) {
    std::fprintf(stderr, "walshiftctl: %s\n", std::string(events.status().message()).c_str());
    return 2;
  }
  VerifyOptions o;
  o.settings = &*settings;
  o.modules = &*modules;
  for (const auto& m : *modules) {
    size_t idx = 0;
    for (size_t t = 0; t < settings->targets.size(); ++t)
      if (settings->targets[t].name == m->target()) idx = t;
    o.module_target.push_back(idx);
  }
  o.table = table;
  o.settle = absl::Seconds(settle);
  o.events = events->get();
  o.max_shown = static_cast<size_t>(samples);
  // The report below shows the differences; the log does not repeat them row by row.
  (*events)->set_log_drift(false);
  std::atomic<bool> stop{false};
  if (gate) {
    absl::Status st = WaitCaughtUp(*settings, absl::Seconds(settle));
    if (!st.ok()) {
      std::printf("gate: %s\n", std::string(st.message()).c_str());
      return st.code() == absl::StatusCode::kDeadlineExceeded ? 1 : 2;
    }
    std::printf("gate: every target has applied the source's position at the start of the pass\n");
  }
  auto reports = VerifyOnce(o, stop);
  if (!reports.ok()) {
    std::fprintf(stderr, "walshiftctl verify: %s\n", std::string(reports.status().message()).c_str());
    return 2;
  }
  Skipped skipped;
  Parked parked;
  std::vector<std::string> unread;
  ReadLeftOut(*settings, &skipped, &parked, &unread);
  Print(*reports, skipped, parked);
  uint64_t drift = 0;
  for (const auto& r : *reports) drift += r.drift();
  if (drift > 0 && repair) {
    std::printf("repairing: re-applying the drifted tables through walshiftd, deleting extra rows\n");
    std::set<std::string> tables;
    for (const auto& r : *reports) {
      if (r.missing + r.mismatched + r.extra == 0) continue;
      // (A document collection's report names every source table that fills it.)
      for (absl::string_view t : absl::StrSplit(r.source_table, ", ")) tables.insert(std::string(t));
    }
    for (const auto& t : tables) {
      absl::Status st = Backfill(*settings, t, absl::Seconds(std::max(600.0, settle)));
      if (!st.ok()) {
        std::fprintf(stderr, "walshiftctl verify: %s\n", std::string(st.message()).c_str());
        return 2;
      }
    }
    o.delete_extras = true;
    auto healed = VerifyOnce(o, stop);  // deletes the extras it confirms
    if (!healed.ok()) {
      std::fprintf(stderr, "walshiftctl verify: %s\n", std::string(healed.status().message()).c_str());
      return 2;
    }
    o.delete_extras = false;
    for (const auto& r : *healed) {
      if (r.deleted) {
        std::printf("repaired: %llu extra rows deleted from %s\n", static_cast<unsigned long long>(r.deleted),
                    r.target.c_str());
      }
    }
    std::printf("verifying again\n");
    reports = VerifyOnce(o, stop);
    if (!reports.ok()) {
      std::fprintf(stderr, "walshiftctl verify: %s\n", std::string(reports.status().message()).c_str());
      return 2;
    }
    Print(*reports, skipped, parked);
    drift = 0;
    for (const auto& r : *reports) drift += r.drift();
  }
  uint64_t unsettled = 0;
  for (const auto& r : *reports) unsettled += r.unsettled;
  std::printf("%s\n", drift == 0 ? "no drift" : absl::StrCat(drift, " differences").c_str());
  uint64_t waiting = 0;
  for (const auto& [where, n] : parked) waiting += n;
  if (gate && !unread.empty()) {
    std::printf("gate: cannot tell whether changes are parked in walshift.dead_letter: %s\n",
                absl::StrJoin(unread, "; ").c_str());
    return 1;
  }
  if (gate && waiting > 0) {
    // A parked change is a row the new schema does not have as the source does.
    std::printf("gate: %llu changes are parked in walshift.dead_letter (walshiftctl dead-letter list): retry or "
                "discard them first\n",
                static_cast<unsigned long long>(waiting));
    return 1;
  }
  if (gate && unsettled > 0) {
    // At cutover the writes have stopped: a row that could not be confirmed either way fails it.
    std::printf("gate: %llu rows could not be confirmed (is walshiftd running and caught up?)\n",
                static_cast<unsigned long long>(unsettled));
    return 1;
  }
  return drift == 0 ? 0 : 1;
}

}  // namespace walshift::ctl
