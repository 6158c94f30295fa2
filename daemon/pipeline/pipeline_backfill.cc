// Pipeline: re-backfill coordination (see backfill.h): requests and watermarks arrive in the
// stream, chunks are applied between them, progress is written to every target.
#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/core/crash_point.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/pipeline.h"
#include "daemon/state/target_state.h"
#include "spdlog/spdlog.h"

namespace walshift {

Backfiller& Pipeline::backfiller() {
  if (!backfiller_) {
    const auto& cfg = settings_.proto.snapshot();
    backfiller_ = std::make_unique<Backfiller>(settings_.source_dsn, settings_.proto.pipeline(),
                                               cfg.chunk_rows() ? std::min<int64_t>(cfg.chunk_rows(), 10000) : 10000);
  }
  return *backfiller_;
}

absl::Status Pipeline::OnBackfillRequest(const std::string& table) {
  bool mapped = false, pending = false;
  for (size_t i = 0; i < modules_.size(); ++i) {
    if (modules_[i]->source_table() != table) continue;
    mapped = true;
    pending |= !skip_[module_sink_[i]];
  }
  if (!mapped) {
    spdlog::warn("backfill requested for {}, which no mapping of pipeline {} names; ignored", table,
                 settings_.proto.pipeline());
    return absl::OkStatus();
  }
  if (!pending) return absl::OkStatus();  // handled before the checkpoint; resumed from walshift.backfill
  spdlog::info("backfill of {} requested", table);
  backfill_rows_[table] = 0;
  RETURN_IF_ERROR(EmitBackfillProgress(table, "running", nullptr, 0));
  backfiller().Request(table, {});
  return absl::OkStatus();
}

absl::Status Pipeline::OnBackfillHigh(const std::string& id) {
  RETURN_IF_ERROR(backfiller().TakeError());
  auto window = windows_.find(id);
  std::shared_ptr<const BackfillChunk> chunk = backfiller().Chunk(id);
  if (chunk == nullptr) {
    if (window != windows_.end()) windows_.erase(window);
    return absl::OkStatus();  // a watermark from before a restart: the backfill resumes on its own
  }
  if (window == windows_.end()) {
    // A chunk of this attempt's backfiller has its low watermark after this attempt's start
    // position, so the stream showed it: this cannot happen, and the chunk is not applied blind.
    return absl::InternalError(
        absl::StrCat("backfill of ", chunk->table, ": high watermark ", id, " arrived without its low watermark"));
  }
  auto& bindings = backfill_bindings_[chunk->relation.get()];
  if (bindings.empty()) {
    for (size_t i = 0; i < modules_.size(); ++i) {
      if (modules_[i]->source_table() != chunk->table) continue;
      ASSIGN_OR_RETURN(auto bound, modules_[i]->Bind(*chunk->relation, *inspector_));
      bindings.push_back({modules_[i].get(), std::move(bound), module_sink_[i]});
    }
  }
  // The rows the stream did not change inside the window, applied as updates of their row.
  Tuple tuple(chunk->relation->columns.size());
  RowChange change;
  change.kind = ChangeKind::kUpdate;
  change.relation = chunk->relation.get();
  change.new_tuple = &tuple;
  change.lsn = begin_.final_lsn;
  uint64_t applied = 0;
  for (const auto& row : chunk->rows) {
    if (window->second.changed.count(BackfillChunk::RowKey(row, chunk->key_columns))) continue;
    for (size_t c = 0; c < row.size(); ++c) {
      tuple[c] = row[c] ? Datum{DatumKind::kText, static_cast<uint32_t>(row[c]->size()), row[c]->c_str()}
                        : Datum{DatumKind::kNull, 0, nullptr};
    }
    // A chunk in the transaction walshiftctl skip names (its high watermark's) is left out too.
    for (size_t s = 0; any_skipping_ && s < sinks_.size(); ++s) {
      if (skipping_[s] &&
          std::any_of(bindings.begin(), bindings.end(), [&](const Binding& b) { return b.sink == s; })) {
        RETURN_IF_ERROR(RecordSkipped(s, &change, *chunk->relation, chunk->table, "backfill"));
      }
    }
    for (const Binding& b : bindings) {
      if (skip_[b.sink] || skipping_[b.sink]) continue;
      {
        MapScope scope(this, b.module, &change, "backfill", chunk->table);
        RETURN_IF_ERROR(b.bound->Map(change, emit_[b.sink]));
      }
      // A row the backfill (re)writes for an owner brings the rows it owns with it.
      if (owned_by_.count(chunk->table)) RETURN_IF_ERROR(FillOwned(b, change));
    }
    ++applied;
  }
  group_changes_ += applied;
  uint64_t& total = backfill_rows_[chunk->table];
  total += applied;
  std::vector<std::string> last_key;
  if (!chunk->rows.empty()) {
    for (int k : chunk->key_columns) last_key.push_back(chunk->rows.back()[k].value_or(""));
  }
  RETURN_IF_ERROR(EmitBackfillProgress(chunk->table, chunk->last ? "done" : "running",
                                       last_key.empty() ? nullptr : &last_key, total));
  spdlog::debug("backfill of {}: chunk {} applied {} of {} rows ({} changed in the window)", chunk->table, id, applied,
                chunk->rows.size(), window->second.changed.size());
  windows_.erase(window);
  backfiller().Applied(id);
  return FaultPoint("pipeline.after_backfill_chunk");  // handed over, not yet committed
}

absl::Status Pipeline::EmitBackfillProgress(const std::string& table, const char* state,
                                            const std::vector<std::string>* last_key, uint64_t rows) {
  if (progress_shapes_.empty()) {
    for (const auto& t : settings_.targets) {
      auto shape = std::make_unique<OpShape>();
      shape->kind = OpKind::kUpsert;
      shape->target = t.name;
      shape->table = "walshift.backfill";
      shape->source_table = "walshift.backfill";
      shape->values = {
          {"pipeline", 0, "", {}, "pipeline", "text"}, {"source_table", 1, "", {}, "table", "text"},
          {"state", 2, "", {}, "state", "text"},       {"last_key", 3, "", {}, "last key", "text[]"},
          {"rows", 4, "", {}, "rows", "bigint"},       {"updated_at", 5, "", {}, "now", "timestamp with time zone"}};
      // A database stamps the row with its own clock (walshiftctl compares it with that
      // clock); a document store gets walshiftd's.
      if (!t.documents()) shape->values.back() = {"updated_at", -1, "now()", {}, "now", ""};
      shape->key = {0, 1};
      shape->num_params = 6;
      shape->id = NextOpShapeId();
      progress_shapes_.push_back(std::move(shape));
    }
  }
  std::string key_text = last_key != nullptr ? pg::TextArrayLiteral(*last_key) : "";
  std::string rows_text = absl::StrCat(rows);
  std::string state_text = state;
  auto text = [](const std::string& s) { return Datum{DatumKind::kText, static_cast<uint32_t>(s.size()), s.c_str()}; };
  std::string now_text = FormatPgTimestamp(PgNow());
  Datum params[6] = {text(settings_.proto.pipeline()),
                     text(table),
                     text(state_text),
                     last_key ? text(key_text) : Datum{DatumKind::kNull, 0, nullptr},
                     text(rows_text),
                     text(now_text)};
  std::set<size_t> sinks;
  for (size_t i = 0; i < modules_.size(); ++i)
    if (modules_[i]->source_table() == table && !skip_[module_sink_[i]]) sinks.insert(module_sink_[i]);
  for (size_t s : sinks) {
    TargetOp op;
    op.shape = progress_shapes_[s].get();
    op.params = params;
    op.lsn = begin_.final_lsn;
    RETURN_IF_ERROR(emit_[s](op));
  }
  return absl::OkStatus();
}

absl::Status Pipeline::ResumeBackfills() {
  // table → per target that maps it: the last key it recorded as running, or nothing (no
  // running backfill there). They agree unless a stop or a lost connection fell between
  // their commits; then the backfill starts over, which is idempotent.
  struct Found {
    std::map<size_t, std::vector<std::string>> keys;  // target index → last key
    uint64_t rows = 0;
  };
  std::map<std::string, Found> found;
  for (size_t i = 0; i < settings_.targets.size(); ++i) {
    ASSIGN_OR_RETURN(std::vector<state::BackfillRow> rows,
                     state::ReadBackfills(settings_.targets[i], settings_.proto.pipeline()));
    for (const state::BackfillRow& row : rows) {
      if (row.state != "running") continue;
      Found& f = found[row.source_table];
      f.keys[i] = row.last_key.value_or(std::vector<std::string>());
      f.rows = std::max(f.rows, row.rows);
    }
  }
  for (auto& [table, f] : found) {
    std::set<size_t> mapping_targets;
    for (size_t m = 0; m < modules_.size(); ++m) {
      if (modules_[m]->source_table() == table) mapping_targets.insert(module_sink_[m]);
    }
    std::vector<std::string> after = f.keys.begin()->second;
    for (size_t t : mapping_targets) {
      auto it = f.keys.find(t);
      if (it == f.keys.end() || it->second != after) after.clear();
    }
    spdlog::info("backfill of {} was under way; continuing{}", table,
                 after.empty() ? " from the start" : absl::StrCat(" after (", absl::StrJoin(after, ", "), ")"));
    backfill_rows_[table] = after.empty() ? 0 : f.rows;
    backfiller().Request(table, std::move(after));
  }
  return absl::OkStatus();
}

}  // namespace walshift
