#include "daemon/pipeline/pipeline.h"

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "daemon/core/crash_point.h"
#include "daemon/core/status_macros.h"
#include "daemon/source/pg_replication_source.h"
#include "daemon/state/target_state.h"
#include "spdlog/spdlog.h"

namespace walshift {

Pipeline::Pipeline(config::Settings settings, std::vector<std::shared_ptr<const MappingModule>> modules,
                   PipelineStatus* status)
    : settings_(std::move(settings)), status_(status), modules_(std::move(modules)) {
  for (const auto& m : modules_) {
    size_t idx = 0;
    for (size_t t = 0; t < settings_.targets.size(); ++t)
      if (settings_.targets[t].name == m->target()) idx = t;
    module_sink_.push_back(idx);
  }
  for (size_t i = 0; i < modules_.size(); ++i)
    if (auto own = modules_[i]->owned()) owned_by_[own->owner].push_back(i);
  // A table more than one mapping writes: any of them may be the first to write a row, so its
  // new rows are always upserted (a plain INSERT would meet the other's row and replay).
  std::map<std::pair<std::string, std::string>, int> writers;
  for (const auto& m : modules_)
    for (const std::string& t : m->target_tables()) ++writers[{m->target(), t}];
  for (const auto& [table, n] : writers)
    if (n > 1) upsert_tables_.insert(table.second);
  const auto& apply = settings_.proto.apply();
  for (size_t i = 0; i < modules_.size(); ++i) {
    v1::OnError on = i < settings_.mappings.size() ? settings_.mappings[i].common.on_error() : v1::ON_ERROR_UNSET;
    if (on == v1::ON_ERROR_UNSET) on = apply.on_error();
    dead_letter_on_.push_back(on == v1::ON_ERROR_DEAD_LETTER && !settings_.targets[module_sink_[i]].documents());
    int ordinal = 0;
    for (size_t k = 0; k < i; ++k)
      ordinal += modules_[k]->source_table() == modules_[i]->source_table() && module_sink_[k] == module_sink_[i];
    mapping_ordinal_.push_back(ordinal);
  }
  const auto& dl = apply.dead_letter();
  for (size_t t = 0; t < settings_.targets.size(); ++t) {
    dead_letter_limits_.emplace_back(dl.has_max_parked() ? dl.max_parked() : 1000,
                                     dl.has_max_percent() ? dl.max_percent() : 10,
                                     absl::Seconds(dl.has_window_s() ? dl.window_s() : 60));
  }
  if (settings_.proto.ha().enabled()) {
    LeadershipOptions lo;
    lo.pipeline = settings_.proto.pipeline();
    lo.node = settings_.proto.ha().node();
    for (const auto& t : settings_.targets) lo.targets.emplace_back(t.name, t.dsn);
    if (settings_.proto.ha().lease_s()) lo.lease = absl::Seconds(settings_.proto.ha().lease_s());
    lo.last_tick = [status] { return status->last_tick(); };
    leadership_ = std::make_unique<Leadership>(std::move(lo));
    ReportLeadership();
  }
}

Pipeline::~Pipeline() = default;

namespace {
constexpr const char* kChangeNames[] = {"insert", "update", "delete"};
Lsn Lowest(const std::vector<std::unique_ptr<Sink>>& sinks, Lsn (Sink::*position)() const) {
  Lsn min = kInvalidLsn;
  for (size_t i = 0; i < sinks.size(); ++i) {
    Lsn d = (sinks[i].get()->*position)();
    if (i == 0 || d < min) min = d;
  }
  return min;
}
}  // namespace

Lsn Pipeline::MinDurable() const { return Lowest(sinks_, &Sink::durable_lsn); }
Lsn Pipeline::MinFlushed() const { return Lowest(sinks_, &Sink::flushed_lsn); }

absl::Status Pipeline::MapChange(const Binding& b, const RowChange& change) {
  MapScope scope(this, b.module, &change, kChangeNames[static_cast<int>(change.kind)], b.module->source_table());
  const CopySkipPlan::Table* plan = copy_skip_.empty() ? nullptr : copy_skip_.Find(b.module->source_table(), b.sink);
  if (plan == nullptr) return b.bound->Map(change, emit_[b.sink]);
  // The copy's snapshot of the key's range already shows transactions committed before it.
  int key = plan->key_column.empty() ? -1 : change.relation->ColumnIndex(plan->key_column);
  auto shown = [&](const Tuple* tuple) {
    const Datum* d =
        key >= 0 && tuple != nullptr && static_cast<size_t>(key) < tuple->size() ? &(*tuple)[key] : nullptr;
    Lsn snapshot = CopySkipPlan::SnapshotFor(*plan, d);
    return snapshot != kInvalidLsn && begin_.final_lsn < snapshot;
  };
  const Tuple* old_row = change.old_tuple != nullptr ? change.old_tuple : change.new_tuple;
  bool skip_new = change.kind != ChangeKind::kDelete && shown(change.new_tuple);
  bool skip_old = change.kind != ChangeKind::kInsert && shown(old_row);
  switch (change.kind) {
    case ChangeKind::kInsert:
      return skip_new ? absl::OkStatus() : b.bound->Map(change, emit_[b.sink]);
    case ChangeKind::kDelete:
      return skip_old ? absl::OkStatus() : b.bound->Map(change, emit_[b.sink]);
    case ChangeKind::kUpdate:
      break;
  }
  if (skip_old && skip_new) return absl::OkStatus();
  if (!skip_old && !skip_new) return b.bound->Map(change, emit_[b.sink]);
  // A key moved between ranges copied under different snapshots: only its side that the
  // snapshot does not show is applied, as a delete of the old key or an insert of the new row.
  RowChange part = change;
  if (!skip_old) {
    part.kind = ChangeKind::kDelete;
    part.new_tuple = nullptr;
  } else {
    part.kind = ChangeKind::kInsert;
    part.old_tuple = nullptr;
    part.old_tuple_kind = 0;
  }
  map_context_.change = &part;
  map_context_.operation = kChangeNames[static_cast<int>(part.kind)];
  map_context_.ops = 0;
  return b.bound->Map(part, emit_[b.sink]);
}

absl::Status Pipeline::FlushAll() {
  for (size_t i = 0; i < sinks_.size(); ++i) {
    size_t changes = sinks_[i]->pending_changes();
    absl::Time started = absl::Now();
    absl::Status flushed = sinks_[i]->Flush().status();
    if (!flushed.ok()) {
      if (rejected_by_ < 0) rejected_by_ = static_cast<int>(i);
      return flushed;
    }
    status_->OnApplied(i, sinks_[i]->durable_lsn(), changes, group_transactions_[i], absl::Now() - started);
    group_transactions_[i] = 0;
    if (!dead_letter_events_[i].empty()) {
      status_->OnDeadLetters(i, parked_[i].size(), dead_letter_events_[i]);
      dead_letter_events_[i].clear();
    }
  }
  for (auto& [oid, rb] : bindings_) {
    if (rb.unreported == 0) continue;
    status_->AddTableChanges(rb.table, rb.unreported);
    rb.unreported = 0;
  }
  retired_.clear();
  group_changes_ = 0;
  group_started_ = absl::InfinitePast();
  return absl::OkStatus();
}

absl::StatusOr<Pipeline::RelationBindings*> Pipeline::BindingsFor(const SourceRelation& relation) {
  auto it = bindings_.find(relation.oid);
  if (it != bindings_.end() && it->second.version == relation.version) return &it->second;
  RelationBindings rb;
  rb.version = relation.version;
  const std::string name = relation.QualifiedName();
  auto known = mapped_oids_.find(relation.oid);
  const std::string mapped = known != mapped_oids_.end() ? known->second : name;
  rb.table = mapped;
  if (mapped != name) {
    std::string msg =
        absl::StrCat("source table ", mapped, " (oid ", relation.oid, ") is now named ", name,
                     "; its mappings follow it. Rename the mappings' source to ", name, " before the next restart");
    spdlog::warn("{}", msg);
    status_->SetState(v1::STREAMING, msg);
  }
  for (size_t i = 0; i < modules_.size(); ++i) {
    if (modules_[i]->source_table() != mapped) continue;
    ASSIGN_OR_RETURN(auto bound, modules_[i]->Bind(relation, *inspector_));
    rb.whole_rows |= bound->writes_whole_rows();
    rb.bindings.push_back({modules_[i].get(), std::move(bound), module_sink_[i]});
  }
  rb.owner = owned_by_.count(mapped) > 0;
  if (rb.bindings.empty()) {
    if (!ignored_tables_.count(name)) {
      return absl::FailedPreconditionError(
          absl::StrCat("source table ", name, " (oid ", relation.oid, ") is in publication ", settings_.publication,
                       " but no mapping names it, so its changes would be lost. Add a mapping for it, or list it "
                       "under source.ignore_tables to leave its changes alone on purpose"));
    }
    spdlog::info("source table {} is in source.ignore_tables: its changes are not applied", name);
  } else {
    spdlog::info("bound {} ({} mapping{}, relation version {})", name, rb.bindings.size(),
                 rb.bindings.size() == 1 ? "" : "s", relation.version);
  }
  auto& slot = bindings_[relation.oid];
  // The sinks may still hold operations of the old binding's shapes in the open group: keep it
  // alive until the group is flushed.
  if (!slot.bindings.empty()) {
    if (slot.unreported > 0) status_->AddTableChanges(slot.table, slot.unreported);
    retired_.push_back(std::move(slot));
  }
  slot = std::move(rb);
  return &slot;
}

absl::Status Pipeline::OnBegin(const TransactionBegin& begin) {
  in_transaction_ = true;
  streamed_ = true;
  begin_ = begin;
  // A transaction is applied on a target when its commit record lies below the checkpoint
  // (which stores the end of the last applied commit record).
  for (size_t i = 0; i < sinks_.size(); ++i) skip_[i] = begin.final_lsn < sinks_[i]->durable_lsn();
  std::fill(parked_seq_.begin(), parked_seq_.end(), 0);
  any_skipping_ = false;
  for (size_t i = 0; i < sinks_.size(); ++i) {
    skipping_[i] = 0;
    skipped_changes_[i] = 0;
    if (skip_[i] || skip_lsn_[i] == kInvalidLsn || begin.final_lsn < skip_lsn_[i]) continue;
    if (begin.final_lsn == skip_lsn_[i]) {
      skipping_[i] = 1;
      any_skipping_ = true;
      continue;
    }
    // Past it without meeting it: the LSN named no transaction of the stream.
    spdlog::warn(
        "target {}: walshiftctl skip --lsn {} named no source transaction walshiftd met (the next one commits at {}); "
        "nothing was skipped, and the request is cleared",
        sinks_[i]->name(), FormatLsn(skip_lsn_[i]), FormatLsn(begin.final_lsn));
    RETURN_IF_ERROR(ClearSkip(i));
  }
  if (group_started_ == absl::InfinitePast()) group_started_ = absl::Now();
  return absl::OkStatus();
}

absl::Status Pipeline::OnRelation(std::shared_ptr<const SourceRelation> relation) {
  // Bindings are checked against the relation's version at its next change (BindingsFor).
  return absl::OkStatus();
}

absl::Status Pipeline::OnChange(const RowChange& change) {
  // A large transaction is handed over in one Poll (a streamed one replayed from the spool):
  // the loop is alive for /healthz, the watchdog and the ha lease while it goes.
  if ((++changes_seen_ & 1023) == 0) status_->Tick();
  auto bound = BindingsFor(*change.relation);
  if (!bound.ok()) {
    return absl::Status(bound.status().code(),
                        absl::StrCat(bound.status().message(), " (first change of ", change.relation->QualifiedName(),
                                     " at LSN ", FormatLsn(change.lsn), ")"));
  }
  RelationBindings* rb = *bound;
  if (!windows_.empty()) {
    // A key that changes inside a backfill window is left out of its chunk.
    for (auto& [id, w] : windows_) {
      if (w.table != rb->table) continue;  // by the mapped name: a renamed table too
      std::vector<int> keys;
      for (const std::string& k : w.key_names) keys.push_back(change.relation->ColumnIndex(k));
      if (change.new_tuple) w.changed.insert(BackfillChunk::TupleKey(*change.new_tuple, keys));
      if (change.old_tuple) w.changed.insert(BackfillChunk::TupleKey(*change.old_tuple, keys));
    }
  }
  // An update that left TOASTed values out (pgoutput sends an unchanged out-of-line value as
  // 'u') cannot be written as a whole row. Mappings that write whole rows (a row re-entering a
  // filter, an undone soft delete, a JSON element) get it completed from the source's current
  // row. Values read now may be newer than the change; every later change of them is still to
  // come in the stream, so the target ends exact. When the source no longer has the row, a
  // later change in the stream deletes or moves it (and is completed itself): this one is
  // superseded and those mappings leave it out.
  bool complete = false, gone = false;
  RowChange completed;
  if (any_skipping_) {
    for (size_t s = 0; s < sinks_.size(); ++s) {
      if (!skipping_[s] || std::none_of(rb->bindings.begin(), rb->bindings.end(),
                                        [&](const Binding& b) { return b.sink == s; }))
        continue;
      static constexpr const char* kNames[] = {"insert", "update", "delete"};
      RETURN_IF_ERROR(RecordSkipped(s, &change, *change.relation, rb->table, kNames[static_cast<int>(change.kind)]));
    }
  }
  if (rb->whole_rows && change.kind == ChangeKind::kUpdate && change.old_tuple_kind != 'O') {
    for (const Binding& b : rb->bindings)
      complete |= !skip_[b.sink] && !skipping_[b.sink] && b.bound->writes_whole_rows();
    missing_.clear();
    for (size_t c = 0; complete && c < change.new_tuple->size(); ++c)
      if ((*change.new_tuple)[c].is_unchanged_toast()) missing_.push_back(static_cast<int>(c));
    complete &= !missing_.empty();
    if (complete) {
      RETURN_IF_ERROR(inspector_->WaitVisible(begin_.xid, begin_.final_lsn, stop_));
      auto found = inspector_->ReadCurrentRow(*change.relation, *change.new_tuple, missing_, &completed_row_);
      if (!found.ok()) {
        return absl::Status(found.status().code(),
                            absl::StrCat(found.status().message(), " (at LSN ", FormatLsn(change.lsn), ")"));
      }
      gone = !*found;
      completed = change;
      completed.new_tuple = &completed_row_;
      spdlog::debug(
          "update of {} at LSN {}: {} unchanged TOAST value{} {}", rb->table, FormatLsn(change.lsn), missing_.size(),
          missing_.size() == 1 ? "" : "s",
          gone ? "and the row is gone from the source: superseded by a later change" : "read from the source");
    }
  }
  const bool owner = rb->owner && change.kind != ChangeKind::kDelete;
  for (const Binding& b : rb->bindings) {
    if (skip_[b.sink] || skipping_[b.sink]) continue;
    const bool whole = complete && b.bound->writes_whole_rows();
    if (whole && gone) {
      // Superseded: the later change names only the new key, so a row under the old key (the
      // update changed it) goes now.
      if (change.old_tuple != nullptr && change.old_tuple_kind == 'K') {
        RowChange leave = change;
        leave.kind = ChangeKind::kDelete;
        leave.new_tuple = nullptr;
        RETURN_IF_ERROR(MapChange(b, leave));
      }
      continue;
    }
    const RowChange& c = whole ? completed : change;
    RETURN_IF_ERROR(MapChange(b, c));
    // An owner's insert writes a row; an update may bring one back (its filter true again, a
    // soft delete undone): the rows it owns are filled in from their sources.
    if (owner && (change.kind == ChangeKind::kInsert || b.bound->writes_whole_rows())) {
      absl::Status filled = FillOwned(b, c);
      if (!filled.ok()) {
        return absl::Status(filled.code(), absl::StrCat(filled.message(), " (filling the rows ", rb->table,
                                                        " owns, for its change at LSN ", FormatLsn(change.lsn), ")"));
      }
    }
  }
  ++group_changes_;
  ++rb->unreported;
  if (any_dead_letter_)
    for (auto& limit : dead_letter_limits_) limit.OnChange();
  return absl::OkStatus();
}

absl::Status Pipeline::FillOwned(const Binding& owner, const RowChange& change) {
  for (size_t m : owned_by_[owner.module->source_table()]) {
    if (module_sink_[m] != owner.sink || skip_[module_sink_[m]]) continue;
    auto own = modules_[m]->owned();
    auto key = owner.bound->RowKey(own->table);
    if (key.empty()) continue;  // this binding writes other rows (another table of a split)
    // The owned rows' key values, read from the owner's row.
    std::vector<std::string> columns;
    std::vector<const char*> values;
    for (const auto& [target_col, source_col] : own->key) {
      auto it = std::find_if(key.begin(), key.end(), [&](const auto& k) { return k.first == target_col; });
      if (it == key.end()) {
        return absl::FailedPreconditionError(absl::StrCat("the mapping of ", owner.module->source_table(),
                                                          " owns rows of ", own->table, " but does not write its key ",
                                                          "column ", target_col, " from a source column; ",
                                                          modules_[m]->source_table(), "'s rows cannot be found"));
      }
      const Datum& d = (*change.new_tuple)[it->second];
      if (d.kind != DatumKind::kText) break;  // no key, no owned row
      columns.push_back(source_col);
      values.push_back(d.data);
    }
    if (values.size() != own->key.size()) continue;
    FillBinding& fb = fill_bindings_[m];
    if (fb.bound == nullptr) {
      ASSIGN_OR_RETURN(fb.relation, inspector_->DescribeSource(modules_[m]->source_table()));
      ASSIGN_OR_RETURN(fb.bound, modules_[m]->Bind(*fb.relation, *inspector_));
    }
    if (!change.snapshot) RETURN_IF_ERROR(inspector_->WaitVisible(begin_.xid, begin_.final_lsn, stop_));
    ASSIGN_OR_RETURN(pg::ResultPtr rows, inspector_->ReadRowsWhere(*fb.relation, columns, values));
    Tuple tuple(fb.relation->columns.size());
    RowChange fill;
    fill.kind = ChangeKind::kInsert;
    fill.relation = fb.relation.get();
    fill.new_tuple = &tuple;
    fill.lsn = change.lsn;
    for (int r = 0; r < PQntuples(rows.get()); ++r) {
      MapScope scope(this, modules_[m].get(), &fill, "fill", modules_[m]->source_table());
      for (size_t c = 0; c < tuple.size(); ++c) {
        tuple[c] = PQgetisnull(rows.get(), r, c)
                       ? Datum{DatumKind::kNull, 0, nullptr}
                       : Datum{DatumKind::kText, static_cast<uint32_t>(PQgetlength(rows.get(), r, c)),
                               PQgetvalue(rows.get(), r, c)};
      }
      RETURN_IF_ERROR(fb.bound->Map(fill, emit_[module_sink_[m]]));
    }
    spdlog::debug("{} at LSN {}: filled {} row(s) of {} into {}", owner.module->source_table(), FormatLsn(change.lsn),
                  PQntuples(rows.get()), modules_[m]->source_table(), own->table);
  }
  return absl::OkStatus();
}

absl::Status Pipeline::OnTruncate(const TruncateChange& truncate) {
  // The tables of one TRUNCATE reach each sink one after the other, which applies them as one
  // statement (tables with foreign keys between them can only be truncated together).
  for (const SourceRelation* rel : truncate.relations) {
    ASSIGN_OR_RETURN(RelationBindings * rb, BindingsFor(*rel));
    std::set<size_t> recorded;
    for (const Binding& b : rb->bindings) {
      if (skipping_[b.sink] && recorded.insert(b.sink).second) {
        RETURN_IF_ERROR(RecordSkipped(b.sink, nullptr, *rel, rb->table, "truncate"));
      }
      if (skip_[b.sink] || skipping_[b.sink]) continue;
      auto emit = [&](const TargetOp& op) {
        TargetOp t = op;
        t.restart_identity = truncate.restart_identity;
        return emit_[b.sink](t);
      };
      MapScope scope(this, b.module, nullptr, "truncate", b.module->source_table());
      RETURN_IF_ERROR(b.bound->MapTruncate(truncate.lsn, emit));
    }
  }
  ++group_changes_;
  return absl::OkStatus();
}

absl::Status Pipeline::OnCommit(const TransactionCommit& commit) {
  in_transaction_ = false;
  for (size_t i = 0; any_skipping_ && i < sinks_.size(); ++i) {
    if (!skipping_[i]) continue;
    spdlog::warn(
        "target {}: skipped source transaction {} committed at LSN {} ({} change{}), as walshiftctl skip asked; its "
        "changes are listed in walshift.skipped, and a backfill of their tables heals them once the target takes them",
        sinks_[i]->name(), begin_.xid, FormatLsn(commit.commit_lsn), skipped_changes_[i],
        skipped_changes_[i] == 1 ? "" : "s");
    RETURN_IF_ERROR(ClearSkip(i));
    skipping_[i] = 0;
  }
  any_skipping_ = false;
  for (size_t i = 0; i < sinks_.size(); ++i) {
    if (!skip_[i]) {
      sinks_[i]->EndTransaction(commit);
      ++group_transactions_[i];
    }
  }
  status_->OnReceived(commit.end_lsn, commit.commit_time);
  last_commit_time_ = commit.commit_time;
  const auto& apply = settings_.proto.apply();
  size_t max_changes = apply.group_max_changes() ? apply.group_max_changes() : 5000;
  absl::Duration max_age = absl::Milliseconds(apply.group_max_ms() ? apply.group_max_ms() : 200);
  bool isolate = commit.end_lsn <= isolate_until_;
  if (isolate || group_changes_ >= max_changes || absl::Now() - group_started_ >= max_age) {
    RETURN_IF_ERROR(FlushAll());
    RETURN_IF_ERROR(source_->SendFeedback(MinFlushed(), /*force=*/false));
  }
  if (isolate_until_ != kInvalidLsn && commit.end_lsn >= isolate_until_) {
    // Past the replayed range: back to grouped, batched apply.
    isolate_until_ = kInvalidLsn;
    replayed_for_ = absl::OkStatus();
    for (auto& sink : sinks_) sink->set_batching(true);
  }
  CrashPoint("pipeline.after_source_commit");  // mid-group, between source transactions
  return absl::OkStatus();
}

absl::Status Pipeline::OnMessage(const LogicalMessage& message) {
  spdlog::debug("logical message prefix={} ({} bytes) at {}", std::string(message.prefix), message.content.size(),
                FormatLsn(message.lsn));
  if (message.prefix == kDeadLetterRequest) return OnDeadLetterRequest(message);
  if (!absl::StartsWith(message.prefix, kBackfillRequest)) return absl::OkStatus();
  // "<pipeline>\t..." : only this pipeline's.
  std::vector<std::string> parts = absl::StrSplit(message.content, '\t');
  if (parts.size() < 2 || parts[0] != settings_.proto.pipeline()) return absl::OkStatus();
  if (message.prefix == kBackfillRequest) return OnBackfillRequest(parts[1]);
  if (message.prefix == kBackfillLow && parts.size() >= 3) {
    std::string table = parts[1].substr(0, parts[1].find('#'));
    windows_[parts[1]] = Window{table, absl::StrSplit(parts[2], '\x1f'), {}};
    return absl::OkStatus();
  }
  if (message.prefix == kBackfillHigh) return OnBackfillHigh(parts[1]);
  return absl::OkStatus();
}

absl::Status Pipeline::ReadSkipRequests() {
  skip_lsn_.assign(sinks_.size(), kInvalidLsn);
  skipping_.assign(sinks_.size(), 0);
  skipped_changes_.assign(sinks_.size(), 0);
  any_skipping_ = false;
  skip_shapes_.clear();
  for (size_t i = 0; i < settings_.targets.size(); ++i) {
    const auto& t = settings_.targets[i];
    auto shape = [&](OpKind kind, const char* table, std::vector<TargetValue> values) {
      auto s = std::make_unique<OpShape>();
      s->kind = kind;
      s->target = t.name;
      s->table = table;
      s->source_table = table;
      s->key = kind == OpKind::kDelete ? std::vector<int>{0, 1} : std::vector<int>{0, 1, 2};
      s->num_params = static_cast<int>(values.size());
      s->values = std::move(values);
      s->id = NextOpShapeId();
      return s;
    };
    skip_shapes_.push_back(
        {shape(OpKind::kUpsert, "walshift.skipped",
               {{"pipeline", 0, "", {}, "pipeline", "text"},
                {"commit_lsn", 1, "", {}, "commit LSN", "pg_lsn"},
                {"seq", 2, "", {}, "change number", "integer"},
                {"source_table", 3, "", {}, "source table", "text"},
                {"change_lsn", 4, "", {}, "change LSN", "pg_lsn"},
                {"operation", 5, "", {}, "operation", "text"},
                {"key", 6, "", {}, "key", "text"}}),
         shape(OpKind::kDelete, "walshift.settings",
               {{"pipeline", 0, "", {}, "pipeline", "text"}, {"name", 1, "", {}, "setting", "text"}})});
    if (t.documents()) continue;  // walshiftctl skip refuses document targets
    std::string what = absl::StrCat("target ", t.name);
    ASSIGN_OR_RETURN(pg::ConnPtr conn, pg::Connect(t.dsn, what, "application_name=walshiftd-catalog"));
    ASSIGN_OR_RETURN(std::optional<std::string> lsn,
                     state::ReadSetting(conn.get(), settings_.proto.pipeline(), state::kSkipTransactionSetting, what));
    if (!lsn) continue;
    std::optional<Lsn> parsed = ParseLsn(*lsn);
    if (!parsed) return absl::DataLossError(absl::StrCat(what, ": unreadable skip request '", *lsn, "'"));
    skip_lsn_[i] = *parsed;
    spdlog::info("target {}: the source transaction committed at {} is to be skipped (walshiftctl skip)", t.name,
                 *lsn);
  }
  return absl::OkStatus();
}

absl::Status Pipeline::RecordSkipped(size_t sink, const RowChange* change, const SourceRelation& relation,
                                     const std::string& table, const char* operation) {
  auto key_of = [&](const Tuple* row) {
    std::string key;
    for (size_t c = 0; row != nullptr && c < relation.columns.size(); ++c) {
      if (!relation.columns[c].part_of_key || c >= row->size()) continue;
      const Datum& d = (*row)[c];
      absl::StrAppend(&key, key.empty() ? "" : ", ", relation.columns[c].name, "=",
                      d.kind == DatumKind::kText ? std::string(d.view()) : std::string("NULL"));
    }
    return key;
  };
  std::string key;
  if (change != nullptr) {
    key = key_of(change->kind == ChangeKind::kDelete || change->new_tuple == nullptr ? change->old_tuple
                                                                                      : change->new_tuple);
    // A key change: both rows are left as they were.
    if (change->kind == ChangeKind::kUpdate && change->old_tuple != nullptr) {
      std::string old_key = key_of(change->old_tuple);
      if (!old_key.empty() && old_key != key) key = absl::StrCat(old_key, " -> ", key);
    }
  }
  auto text = [](const std::string& s) { return Datum{DatumKind::kText, static_cast<uint32_t>(s.size()), s.c_str()}; };
  std::string commit = FormatLsn(begin_.final_lsn);
  std::string seq = absl::StrCat(++skipped_changes_[sink]);
  std::string at = FormatLsn(change != nullptr ? change->lsn : begin_.final_lsn);
  std::string op = operation;
  Datum params[7] = {text(settings_.proto.pipeline()), text(commit), text(seq), text(table), text(at), text(op),
                     key.empty() ? Datum{DatumKind::kNull, 0, nullptr} : text(key)};
  TargetOp record;
  record.shape = skip_shapes_[sink].record.get();
  record.params = params;
  record.lsn = change != nullptr ? change->lsn : begin_.final_lsn;
  return emit_[sink](record);
}

absl::Status Pipeline::ClearSkip(size_t sink) {
  const std::string name = state::kSkipTransactionSetting;
  Datum params[2] = {
      Datum{DatumKind::kText, static_cast<uint32_t>(settings_.proto.pipeline().size()),
            settings_.proto.pipeline().c_str()},
      Datum{DatumKind::kText, static_cast<uint32_t>(name.size()), name.c_str()}};
  TargetOp clear;
  clear.shape = skip_shapes_[sink].clear.get();
  clear.params = params;
  clear.lsn = begin_.final_lsn;
  skip_lsn_[sink] = kInvalidLsn;
  return emit_[sink](clear);
}

}  // namespace walshift
