#include "daemon/pipeline/pipeline.h"

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "daemon/core/crash_point.h"
#include "daemon/core/status_macros.h"
#include "daemon/source/pg_replication_source.h"
#include "daemon/state/target_state.h"
#include "spdlog/spdlog.h"

namespace walshift {
namespace {
// How long the stream must be quiet before a group with complete transactions commits.
constexpr absl::Duration kIdleFlush = absl::Milliseconds(10);
}  // namespace

Pipeline::Pipeline(config::Settings settings,
                   std::vector<std::shared_ptr<const MappingModule>> modules, PipelineStatus* status)
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
}

Pipeline::~Pipeline() = default;

Lsn Pipeline::MinDurable() const {
  Lsn min = kInvalidLsn;
  for (size_t i = 0; i < sinks_.size(); ++i) {
    Lsn d = sinks_[i]->durable_lsn();
    if (i == 0 || d < min) min = d;
  }
  return min;
}

absl::Status Pipeline::Run(const std::atomic<bool>& stop) {
  const auto& apply = settings_.proto.apply();
  absl::Duration initial = absl::Milliseconds(apply.reconnect_initial_ms() ? apply.reconnect_initial_ms() : 250);
  absl::Duration ceiling = absl::Milliseconds(apply.reconnect_max_ms() ? apply.reconnect_max_ms() : 30000);
  absl::Duration backoff = initial;
  std::mt19937_64 rng(std::random_device{}());
  for (;;) {
    bool progress = false;
    absl::Status st = RunOnce(stop, &progress);
    Lsn received = source_ ? source_->received_lsn() : kInvalidLsn;
    // A table whose plain INSERT met a row the target had: its new rows are upserted from now
    // on, so the replay below happens once per table, not once per conflict.
    for (const auto& sink : sinks_)
      if (!sink->conflict_table().empty()) upsert_tables_.insert(sink->conflict_table());
    // Connections of this attempt are closed before deciding: an open group rolls back.
    source_.reset();
    sinks_.clear();
    emit_.clear();
    bindings_.clear();
    fill_bindings_.clear();
    retired_.clear();
    backfill_bindings_.clear();
    windows_.clear();
    progress_shapes_.clear();
    inspector_.reset();
    // A backfill chunk handed over in this attempt may not have committed: the backfill starts
    // again from the progress its targets recorded, and the replayed watermarks are ignored.
    backfiller_.reset();
    in_transaction_ = false;
    group_changes_ = 0;
    if (st.ok()) return st;
    if (st.code() == absl::StatusCode::kAlreadyExists && received != kInvalidLsn) {
      status_->CountError("replay");
      // Rows the target already had (drift, rows copied before): replay with upserts.
      spdlog::warn("{}; replaying with upserts", std::string(st.message()));
      isolate_until_ = std::max(isolate_until_, received);
      replayed_for_ = absl::OkStatus();  // not an error to name if the replay fails otherwise
      continue;
    }
    if (st.code() == absl::StatusCode::kFailedPrecondition && isolate_until_ == kInvalidLsn &&
        received != kInvalidLsn) {
      // Replay once with one source transaction per group: the transactions before the
      // failing one are committed, and the error is raised again by the failing one alone.
      spdlog::warn("{}; replaying one transaction at a time to commit everything before it",
                   std::string(st.message()));
      isolate_until_ = received;
      replayed_for_ = st;
      status_->CountError("replay");
      continue;
    }
    if (st.code() != absl::StatusCode::kUnavailable && st.code() != absl::StatusCode::kAborted) {
      status_->CountError("data");
      if (!replayed_for_.ok() && isolate_until_ != kInvalidLsn && !streamed_) {
        // The replay stopped before it streamed anything (a check at reconnect): the stop names
        // the error that started it first.
        return absl::Status(replayed_for_.code(),
                            absl::StrCat(replayed_for_.message(), " (replaying up to it then failed: ", st.message(), ")"));
      }
      return st;
    }
    status_->CountError("reconnect");
    status_->SetState(v1::RECONNECTING, std::string(st.message()));
    if (stop.load()) return absl::OkStatus();
    if (progress) backoff = initial;
    std::uniform_real_distribution<double> jitter(0.5, 1.0);
    absl::Duration wait = backoff * jitter(rng);
    spdlog::warn("{}; retrying in {} ms from the last checkpoint", std::string(st.message()),
                 absl::ToInt64Milliseconds(wait));
    absl::Time until = absl::Now() + wait;
    while (absl::Now() < until && !stop.load()) {
      status_->Tick();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (stop.load()) return absl::OkStatus();
    backoff = std::min(backoff * 2, ceiling);
  }
}

absl::Status Pipeline::RunOnce(const std::atomic<bool>& stop, bool* made_progress) {
  const auto& apply = settings_.proto.apply();
  streamed_ = false;
  for (const auto& t : settings_.targets) {
    SinkOptions o;
    o.pipeline = settings_.proto.pipeline();
    o.max_pending_statements = apply.pipeline_max_statements();
    o.max_pending_bytes = apply.pipeline_max_bytes();
    ASSIGN_OR_RETURN(auto sink, OpenSink(t, o));
    // Isolating a failing transaction: one upsert per row, so the error names its row.
    if (isolate_until_ != kInvalidLsn) sink->set_batching(false);
    sink->set_upsert_tables(upsert_tables_);
    Sink* raw = sink.get();
    sinks_.push_back(std::move(sink));
    emit_.push_back([raw](const TargetOp& op) { return raw->Apply(op); });
  }
  skip_.assign(sinks_.size(), 0);
  group_transactions_.assign(sinks_.size(), 0);
  for (size_t i = 0; i < sinks_.size(); ++i) status_->OnApplied(i, sinks_[i]->durable_lsn(), 0, 0, absl::ZeroDuration());
  inspector_ = std::make_unique<PgSchemaInspector>(settings_.source_dsn, settings_.targets);

  PgReplicationSourceOptions so;
  so.dsn = settings_.source_dsn;
  so.slot = settings_.slot;
  so.publication = settings_.publication;
  for (const std::string& t : settings_.proto.source().ignore_tables())
    so.ignore_tables.push_back(t.find('.') == std::string::npos ? "public." + t : t);
  for (const auto& m : modules_) {
    if (std::find(so.tables.begin(), so.tables.end(), m->source_table()) == so.tables.end())
      so.tables.push_back(m->source_table());
  }
  if (settings_.proto.source().feedback_interval_s())
    so.feedback_interval = absl::Seconds(settings_.proto.source().feedback_interval_s());
  // Targets without a checkpoint get the rows the source already has first.
  std::vector<size_t> to_copy;
  if (settings_.proto.snapshot().mode() == v1::SNAPSHOT_INITIAL) {
    for (size_t i = 0; i < sinks_.size(); ++i)
      if (sinks_[i]->durable_lsn() == kInvalidLsn) to_copy.push_back(i);
  }
  so.export_snapshot = !to_copy.empty();
  // With a checkpoint somewhere, a missing slot means lost changes: never recreate it silently.
  for (const auto& sink : sinks_) so.slot_must_exist |= sink->durable_lsn() != kInvalidLsn;
  ASSIGN_OR_RETURN(auto source, PgReplicationSource::Create(so));
  source_ = std::move(source);
  // Mapped tables are followed by oid: a table renamed or moved to another schema keeps its
  // mapping.
  ASSIGN_OR_RETURN(mapped_oids_, inspector_->SourceOids(so.tables));
  ignored_tables_ = std::set<std::string>(so.ignore_tables.begin(), so.ignore_tables.end());
  if (!to_copy.empty()) {
    bool stopped = false;
    RETURN_IF_ERROR(CopyExistingRows(to_copy, stop, &stopped));
    if (stopped) return absl::OkStatus();
  }
  copy_skip_ = CopySkipPlan();
  for (size_t i = 0; i < sinks_.size(); ++i) RETURN_IF_ERROR(copy_skip_.Load(*sinks_[i], i, sinks_[i]->durable_lsn()));
  RETURN_IF_ERROR(ResumeBackfills());
  Lsn start = MinDurable();
  spdlog::info("pipeline {}: streaming slot {} from {}", settings_.proto.pipeline(), settings_.slot,
               start == kInvalidLsn ? "the slot's confirmed position" : FormatLsn(start));
  RETURN_IF_ERROR(source_->Start(start));
  status_->SetState(v1::STREAMING);

  while (!stop.load()) {
    // With complete transactions waiting to be committed, wait only briefly for more: a quiet
    // stream for kIdleFlush commits the group, so latency stays low. Under load, groups close
    // in OnCommit by size or age instead. Otherwise (nothing open, or inside a transaction)
    // wait for data.
    bool commit_waiting = group_started_ != absl::InfinitePast() && !in_transaction_;
    ASSIGN_OR_RETURN(int n, source_->Poll(*this, commit_waiting ? kIdleFlush : absl::Seconds(1)));
    if (n > 0) *made_progress = true;
    if (n == 0 && !in_transaction_) RETURN_IF_ERROR(FlushAll());
    RETURN_IF_ERROR(source_->SendFeedback(MinDurable(), /*force=*/false));
    status_->SetReceivedLsn(source_->received_lsn());
    status_->Tick();
  }
  status_->SetState(v1::STOPPING);
  // Stopping: a transaction still open is dropped (its group rolls back with the connection)
  // and will be streamed again from the checkpoint.
  if (!in_transaction_) RETURN_IF_ERROR(FlushAll());
  RETURN_IF_ERROR(source_->SendFeedback(MinDurable(), /*force=*/true));
  spdlog::info("pipeline {}: stopped at checkpoint {}", settings_.proto.pipeline(),
               FormatLsn(MinDurable()));
  return absl::OkStatus();
}

absl::Status Pipeline::CopyExistingRows(const std::vector<size_t>& targets, const std::atomic<bool>& stop,
                                        bool* stopped) {
  InitialCopyOptions o;
  o.settings = &settings_;
  o.modules = &modules_;
  o.module_target = module_sink_;
  o.targets = targets;
  const auto& cfg = settings_.proto.snapshot();
  o.workers = cfg.workers() ? static_cast<int>(cfg.workers()) : 2;
  o.chunk_rows = cfg.chunk_rows() ? cfg.chunk_rows() : 100000;
  // Streaming starts where the slot stands. A slot created just now exported the snapshot of
  // exactly that position; an existing one (a copy that was interrupted, a target added later)
  // gets a snapshot from a temporary slot, later than its position: what streaming replays
  // from before that snapshot is skipped by range (CopySkipPlan).
  std::unique_ptr<PgReplicationSource::TemporarySnapshot> temporary;
  Lsn stream_from = kInvalidLsn;
  if (source_->exported_snapshot()) {
    o.snapshot = *source_->exported_snapshot();
    stream_from = o.snapshot.lsn;
  } else {
    ASSIGN_OR_RETURN(pg::ConnPtr conn, pg::Connect(settings_.source_dsn, "source", "application_name=walshiftd"));
    ASSIGN_OR_RETURN(pg::ResultPtr r,
                     pg::ExecParams(conn.get(),
                                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                                    {settings_.slot.c_str()}, "source: reading the slot's position"));
    if (PQntuples(r.get()) != 1 || PQgetisnull(r.get(), 0, 0)) {
      return absl::FailedPreconditionError(absl::StrCat("source: replication slot ", settings_.slot,
                                                        " has no confirmed position"));
    }
    stream_from = ParseLsn(PQgetvalue(r.get(), 0, 0)).value_or(kInvalidLsn);
    ASSIGN_OR_RETURN(temporary, PgReplicationSource::ExportTemporarySnapshot(
                                    settings_.source_dsn, absl::StrCat(settings_.slot, "_copy")));
    o.snapshot = temporary->snapshot();
  }
  std::vector<std::string> names;
  for (size_t t : targets) names.push_back(settings_.targets[t].name);
  spdlog::info("pipeline {}: initial copy into {} under snapshot {} ({}), then streaming from {}",
               settings_.proto.pipeline(), absl::StrJoin(names, ", "), o.snapshot.name,
               FormatLsn(o.snapshot.lsn), FormatLsn(stream_from));
  o.tick = [this] { status_->Tick(); };
  InitialCopy copy(o);
  status_->SetState(v1::SNAPSHOTTING);
  status_->SetCopyProgress([&copy] { return copy.Report(); });
  absl::Status st = copy.Run(stop);
  std::vector<CopyUnitReport> final_report = copy.Report();
  status_->SetCopyProgress([final_report] { return final_report; });
  if (st.code() == absl::StatusCode::kCancelled) {
    spdlog::info("pipeline {}: stopped during the initial copy; finished ranges are kept",
                 settings_.proto.pipeline());
    *stopped = true;
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(st);
  temporary.reset();
  // The copy is complete: the checkpoint marks where streaming takes over.
  TransactionCommit at;
  at.end_lsn = stream_from;
  at.commit_lsn = stream_from;
  at.commit_time = PgNow();
  for (size_t t : targets) {
    sinks_[t]->EndTransaction(at);
    RETURN_IF_ERROR(sinks_[t]->Flush().status());
  }
  spdlog::info("pipeline {}: initial copy complete", settings_.proto.pipeline());
  return absl::OkStatus();
}

absl::Status Pipeline::MapChange(const Binding& b, const RowChange& change) {
  const CopySkipPlan::Table* plan = copy_skip_.empty() ? nullptr
                                                       : copy_skip_.Find(b.module->source_table(), b.sink);
  if (plan == nullptr) return b.bound->Map(change, emit_[b.sink]);
  // The copy's snapshot of the key's range already shows transactions committed before it.
  int key = plan->key_column.empty() ? -1 : change.relation->ColumnIndex(plan->key_column);
  auto shown = [&](const Tuple* tuple) {
    const Datum* d = key >= 0 && tuple != nullptr && static_cast<size_t>(key) < tuple->size() ? &(*tuple)[key] : nullptr;
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
  return b.bound->Map(part, emit_[b.sink]);
}

absl::Status Pipeline::FlushAll() {
  for (size_t i = 0; i < sinks_.size(); ++i) {
    size_t changes = sinks_[i]->pending_changes();
    absl::Time started = absl::Now();
    RETURN_IF_ERROR(sinks_[i]->Flush().status());
    status_->OnApplied(i, sinks_[i]->durable_lsn(), changes, group_transactions_[i], absl::Now() - started);
    group_transactions_[i] = 0;
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
    std::string msg = absl::StrCat("source table ", mapped, " (oid ", relation.oid, ") is now named ", name,
                                   "; its mappings follow it. Rename the mappings' source to ", name,
                                   " before the next restart");
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
      return absl::FailedPreconditionError(absl::StrCat(
          "source table ", name, " (oid ", relation.oid, ") is in publication ", settings_.publication,
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
  if (group_started_ == absl::InfinitePast()) group_started_ = absl::Now();
  return absl::OkStatus();
}

absl::Status Pipeline::OnRelation(std::shared_ptr<const SourceRelation> relation) {
  // Bindings are checked against the relation's version at its next change (BindingsFor).
  return absl::OkStatus();
}

absl::Status Pipeline::OnChange(const RowChange& change) {
  auto bound = BindingsFor(*change.relation);
  if (!bound.ok()) {
    return absl::Status(bound.status().code(),
                        absl::StrCat(bound.status().message(), " (first change of ",
                                     change.relation->QualifiedName(), " at LSN ",
                                     FormatLsn(change.lsn), ")"));
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
  if (rb->whole_rows && change.kind == ChangeKind::kUpdate && change.old_tuple_kind != 'O') {
    for (const Binding& b : rb->bindings) complete |= !skip_[b.sink] && b.bound->writes_whole_rows();
    missing_.clear();
    for (size_t c = 0; complete && c < change.new_tuple->size(); ++c)
      if ((*change.new_tuple)[c].is_unchanged_toast()) missing_.push_back(static_cast<int>(c));
    complete &= !missing_.empty();
    if (complete) {
      auto found = inspector_->ReadCurrentRow(*change.relation, *change.new_tuple, missing_, &completed_row_);
      if (!found.ok()) {
        return absl::Status(found.status().code(), absl::StrCat(found.status().message(), " (at LSN ",
                                                                FormatLsn(change.lsn), ")"));
      }
      gone = !*found;
      completed = change;
      completed.new_tuple = &completed_row_;
      spdlog::debug("update of {} at LSN {}: {} unchanged TOAST value{} {}", rb->table, FormatLsn(change.lsn),
                    missing_.size(), missing_.size() == 1 ? "" : "s",
                    gone ? "and the row is gone from the source: superseded by a later change" : "read from the source");
    }
  }
  const bool owner = rb->owner && change.kind != ChangeKind::kDelete;
  for (const Binding& b : rb->bindings) {
    if (skip_[b.sink]) continue;
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
        return absl::FailedPreconditionError(absl::StrCat(
            "the mapping of ", owner.module->source_table(), " owns rows of ", own->table, " but does not write its key ",
            "column ", target_col, " from a source column; ", modules_[m]->source_table(), "'s rows cannot be found"));
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
    ASSIGN_OR_RETURN(pg::ResultPtr rows, inspector_->ReadRowsWhere(*fb.relation, columns, values));
    Tuple tuple(fb.relation->columns.size());
    RowChange fill;
    fill.kind = ChangeKind::kInsert;
    fill.relation = fb.relation.get();
    fill.new_tuple = &tuple;
    fill.lsn = change.lsn;
    for (int r = 0; r < PQntuples(rows.get()); ++r) {
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
    for (const Binding& b : rb->bindings) {
      if (skip_[b.sink]) continue;
      auto emit = [&](const TargetOp& op) {
        TargetOp t = op;
        t.restart_identity = truncate.restart_identity;
        return emit_[b.sink](t);
      };
      RETURN_IF_ERROR(b.bound->MapTruncate(truncate.lsn, emit));
    }
  }
  ++group_changes_;
  return absl::OkStatus();
}

absl::Status Pipeline::OnCommit(const TransactionCommit& commit) {
  in_transaction_ = false;
  for (size_t i = 0; i < sinks_.size(); ++i) {
    if (!skip_[i]) {
      sinks_[i]->EndTransaction(commit);
      ++group_transactions_[i];
    }
  }
  status_->OnReceived(commit.end_lsn, commit.commit_time);
  const auto& apply = settings_.proto.apply();
  size_t max_changes = apply.group_max_changes() ? apply.group_max_changes() : 5000;
  absl::Duration max_age = absl::Milliseconds(apply.group_max_ms() ? apply.group_max_ms() : 200);
  bool isolate = commit.end_lsn <= isolate_until_;
  if (isolate || group_changes_ >= max_changes || absl::Now() - group_started_ >= max_age) {
    RETURN_IF_ERROR(FlushAll());
    RETURN_IF_ERROR(source_->SendFeedback(MinDurable(), /*force=*/false));
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
  spdlog::debug("logical message prefix={} ({} bytes) at {}", std::string(message.prefix),
                message.content.size(), FormatLsn(message.lsn));
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
    return absl::InternalError(absl::StrCat("backfill of ", chunk->table, ": high watermark ", id,
                                            " arrived without its low watermark"));
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
    for (const Binding& b : bindings) {
      if (skip_[b.sink]) continue;
      RETURN_IF_ERROR(b.bound->Map(change, emit_[b.sink]));
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
  spdlog::debug("backfill of {}: chunk {} applied {} of {} rows ({} changed in the window)", chunk->table, id,
                applied, chunk->rows.size(), window->second.changed.size());
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
      shape->values = {{"pipeline", 0, "", {}, "pipeline", "text"},
                       {"source_table", 1, "", {}, "table", "text"},
                       {"state", 2, "", {}, "state", "text"},
                       {"last_key", 3, "", {}, "last key", "text[]"},
                       {"rows", 4, "", {}, "rows", "bigint"},
                       {"updated_at", 5, "", {}, "now", "timestamp with time zone"}};
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
  Datum params[6] = {text(settings_.proto.pipeline()), text(table), text(state_text),
                     last_key ? text(key_text) : Datum{DatumKind::kNull, 0, nullptr}, text(rows_text), text(now_text)};
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
    ASSIGN_OR_RETURN(std::vector<state::BackfillRow> rows, state::ReadBackfills(settings_.targets[i], settings_.proto.pipeline()));
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
