// Pipeline: on_error: dead_letter (see dead_letter.h): parking rejected changes and those behind
// them, and walshiftctl dead-letter retry and discard when the stream reaches them.
#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/pipeline.h"
#include "google/protobuf/util/time_util.h"
#include "spdlog/spdlog.h"

namespace walshift {


absl::Status Pipeline::LoadParked() {
  parked_.assign(sinks_.size(), DeadLetterBook());
  parked_seq_.assign(sinks_.size(), 0);
  dead_letter_events_.assign(sinks_.size(), {});
  dead_letter_shapes_.clear();
  retry_relations_.clear();
  retry_bindings_.clear();
  any_dead_letter_ = std::any_of(dead_letter_on_.begin(), dead_letter_on_.end(), [](char c) { return c != 0; });
  for (size_t i = 0; i < settings_.targets.size(); ++i) {
    const auto& t = settings_.targets[i];
    dead_letter_shapes_.push_back(MakeDeadLetterShapes(t.name));
    if (t.documents()) continue;
    std::string what = absl::StrCat("target ", t.name);
    ASSIGN_OR_RETURN(pg::ConnPtr conn, pg::Connect(t.dsn, what, "application_name=walshiftd-catalog"));
    RETURN_IF_ERROR(parked_[i].Load(conn.get(), settings_.proto.pipeline(), what));
    if (!parked_[i].empty()) {
      any_dead_letter_ = true;
      spdlog::warn("target {}: {} change{} parked in walshift.dead_letter; later changes of the same rows are parked "
                   "behind them until walshiftctl dead-letter retry or discard resolves them",
                   t.name, parked_[i].size(), parked_[i].size() == 1 ? " is" : "s are");
    }
    status_->SetParked(i, parked_[i].size());
  }
  return absl::OkStatus();
}

absl::Status Pipeline::EmitOp(size_t i, const TargetOp& op) {
  Sink* sink = sinks_[i].get();
  MapContext& c = map_context_;
  if (any_dead_letter_ && c.module != nullptr) {
    const int op_index = c.ops++;
    if (op.shape->kind == OpKind::kTruncate || op.shape->kind == OpKind::kClearColumns) {
      if (!parked_[i].empty()) RETURN_IF_ERROR(ResolveTruncated(i, op));
    } else {
      std::vector<std::string> keys;
      if (!parked_[i].empty()) {
        keys = OpRowKeys(op);
        if (const ParkedChange* first = parked_[i].Blocking(keys)) {
          return Park(i, op, op_index, std::move(keys), nullptr, first);
        }
      }
      if (isolate_until_ != kInvalidLsn) {
        size_t m = std::find_if(modules_.begin(), modules_.end(), [&](const auto& p) { return p.get() == c.module; }) -
                   modules_.begin();
        if (m < modules_.size() && dead_letter_on_[m]) {
          std::optional<Rejection> rejected;
          absl::Status st = sink->ApplyIsolated(op, &rejected);
          if (!st.ok()) {
            if (rejected_by_ < 0) rejected_by_ = static_cast<int>(i);
            return st;
          }
          if (!rejected) return absl::OkStatus();
          if (keys.empty()) keys = OpRowKeys(op);
          return Park(i, op, op_index, std::move(keys), &*rejected, nullptr);
        }
      }
    }
  }
  absl::Status st = sink->Apply(op);
  if (!st.ok() && rejected_by_ < 0) rejected_by_ = static_cast<int>(i);
  return st;
}

absl::Status Pipeline::ResolveTruncated(size_t i, const TargetOp& op) {
  // Only a truncate of the whole table, or a clear of the columns this source fills, reaches
  // every row: the parked changes of those rows (from that source, for a clear) are moot.
  std::vector<std::pair<Lsn, int>> moot;
  for (ParkedChange* p : parked_[i].All()) {
    if (p->target_table != op.shape->table) continue;
    if (op.shape->kind == OpKind::kClearColumns && map_context_.table != nullptr &&
        p->source_table != *map_context_.table)
      continue;
    moot.push_back(p->position());
  }
  const std::string reason = absl::StrCat("the source's TRUNCATE at LSN ", FormatLsn(op.lsn), " emptied ",
                                          op.shape->kind == OpKind::kTruncate ? "the table" : "these columns");
  for (const auto& pos : moot) {
    ParkedChange* p = parked_[i].Find(pos);
    RETURN_IF_ERROR(EmitResolve(dead_letter_shapes_[i], settings_.proto.pipeline(), *p, "discarded", "walshiftd",
                                reason, [&](const TargetOp& record) { return sinks_[i]->Apply(record); }));
    spdlog::warn("target {}: discarded the parked change {}/{} ({} of {} {}): {}", sinks_[i]->name(),
                 FormatLsn(p->commit_lsn), p->seq, p->target_operation, p->target_table, p->target_key, reason);
    DeadLetterEvent(i, *p, v1::DEAD_LETTER_DISCARDED, "walshiftd", reason);
    parked_[i].Remove(pos);
  }
  return absl::OkStatus();
}

absl::Status Pipeline::Park(size_t i, const TargetOp& op, int op_index, std::vector<std::string> keys,
                            const Rejection* rejection, const ParkedChange* behind) {
  const MapContext& c = map_context_;
  const std::string& target = sinks_[i]->name();
  if (rejection == nullptr) {
    absl::Status admitted = dead_letter_limits_[i].AdmitBehind(parked_[i].size(), target);
    if (!admitted.ok()) {
      if (rejected_by_ < 0) rejected_by_ = static_cast<int>(i);
      return absl::Status(admitted.code(), absl::StrCat(admitted.message(), "; the change it would park: ",
                                                        OpKindName(op.shape->kind), " of ", op.shape->table, " (",
                                                        OpKeyText(op), ") at LSN ", FormatLsn(op.lsn)));
    }
  } else {
    absl::Status admitted = dead_letter_limits_[i].Admit(parked_[i].size(), target, absl::Now());
    if (!admitted.ok()) {
      if (rejected_by_ < 0) rejected_by_ = static_cast<int>(i);
      return absl::Status(admitted.code(),
                          absl::StrCat(admitted.message(), "; the change it would park: ", rejection->error.message(),
                                       "; see walshiftctl dead-letter list, fix the cause, then walshiftctl "
                                       "dead-letter retry (or raise the limit)"));
    }
  }
  ParkedChange p;
  p.commit_lsn = begin_.final_lsn;
  p.seq = ++parked_seq_[i];
  p.commit_time = begin_.commit_time;
  p.change_lsn = c.change != nullptr && c.change->lsn != kInvalidLsn ? c.change->lsn : op.lsn;
  p.source_table = c.table != nullptr ? *c.table : op.shape->source_table;
  p.operation = c.operation;
  p.op_index = op_index;
  size_t m = std::find_if(modules_.begin(), modules_.end(), [&](const auto& x) { return x.get() == c.module; }) -
             modules_.begin();
  p.mapping = m < mapping_ordinal_.size() ? mapping_ordinal_[m] : 0;
  p.target_table = op.shape->table;
  p.target_operation = OpKindName(op.shape->kind);
  p.target_key = OpKeyText(op);
  p.row_keys = std::move(keys);
  p.source_change = c.change != nullptr ? SourceChangeJson(*c.change) : "{}";
  p.mapped_values = OpValuesJson(op);
  if (rejection != nullptr) {
    p.sqlstate = rejection->sqlstate;
    p.constraint = rejection->constraint;
    p.message = std::string(rejection->error.message());
  } else {
    p.behind_commit_lsn = behind->commit_lsn;
    p.behind_seq = behind->seq;
    p.message = absl::StrCat("parked behind the parked change ", FormatLsn(behind->commit_lsn), "/", behind->seq,
                             " of the same row (", behind->target_table, " ", behind->target_key, ")");
  }
  RETURN_IF_ERROR(EmitPark(dead_letter_shapes_[i], settings_.proto.pipeline(), p,
                           [&](const TargetOp& record) { return sinks_[i]->Apply(record); }));
  spdlog::warn("target {}: parked {} of {} ({}) for source {} at LSN {} as {}/{} in walshift.dead_letter: {}", target,
               p.target_operation, p.target_table, p.target_key, p.source_table, FormatLsn(p.change_lsn),
               FormatLsn(p.commit_lsn), p.seq, p.message);
  status_->CountError(rejection != nullptr ? "dead_letter" : "dead_letter_behind");
  DeadLetterEvent(i, p, v1::DEAD_LETTER_PARKED, "", "");
  parked_[i].Add(std::move(p));
  return absl::OkStatus();
}

void Pipeline::DeadLetterEvent(size_t i, const ParkedChange& p, v1::DeadLetterAction action, const std::string& by,
                               const std::string& reason) {
  v1::DeadLetterEvent e;
  e.set_pipeline(settings_.proto.pipeline());
  *e.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
  e.set_target(sinks_[i]->name());
  e.set_action(action);
  e.set_source_table(p.source_table);
  e.set_change_lsn(FormatLsn(p.change_lsn));
  e.set_commit_lsn(FormatLsn(p.commit_lsn));
  e.set_seq(p.seq);
  e.set_target_table(p.target_table);
  e.set_target_key(p.target_key);
  e.set_target_operation(p.target_operation);
  e.set_sqlstate(p.sqlstate);
  e.set_message(p.message);
  e.set_constraint(p.constraint);
  e.set_behind(p.behind_commit_lsn != kInvalidLsn);
  e.set_by(by);
  e.set_reason(reason);
  dead_letter_events_[i].push_back(std::move(e));
}

absl::Status Pipeline::OnDeadLetterRequest(const LogicalMessage& message) {
  // walshiftctl writes them in a transaction of their own: acted on at its place in commit order.
  if (!message.transactional) return absl::OkStatus();
  DeadLetterRequest req;
  absl::Status parsed = ParseDeadLetterRequest(message.content, &req);
  if (!parsed.ok()) {
    spdlog::warn("a walshiftctl dead-letter request at LSN {} is unreadable ({}): left alone", FormatLsn(message.lsn),
                 std::string(parsed.message()));
    return absl::OkStatus();
  }
  if (req.pipeline != settings_.proto.pipeline()) return absl::OkStatus();
  size_t i = 0;
  while (i < sinks_.size() && sinks_[i]->name() != req.target) ++i;
  if (i == sinks_.size()) {
    spdlog::warn("walshiftctl dead-letter {} at LSN {} names target {}, which this pipeline does not have: left alone",
                 req.action, FormatLsn(message.lsn), req.target);
    return absl::OkStatus();
  }
  if (skip_[i]) return absl::OkStatus();  // applied there in an earlier group
  std::vector<ParkedChange*> connected = parked_[i].Connected(req.changes);
  if (connected.empty()) {
    spdlog::warn("target {}: walshiftctl dead-letter {} at LSN {}: none of the changes it names is parked (any more)",
                 req.target, req.action, FormatLsn(message.lsn));
    return absl::OkStatus();
  }
  if (connected.size() > req.changes.size()) {
    spdlog::info("target {}: dead-letter {} takes {} parked changes with it that write the same rows", req.target,
                 req.action, connected.size() - req.changes.size());
  }
  const std::string& pipeline = settings_.proto.pipeline();
  auto apply = [&](const TargetOp& op) { return sinks_[i]->Apply(op); };
  std::vector<std::pair<Lsn, int>> resolved;
  if (req.action == "discard") {
    for (ParkedChange* p : connected) {
      RETURN_IF_ERROR(EmitResolve(dead_letter_shapes_[i], pipeline, *p, "discarded", req.by, req.reason, apply));
      spdlog::warn("target {}: discarded the parked change {}/{} ({} of {} {}) as {} asked: {}", req.target,
                   FormatLsn(p->commit_lsn), p->seq, p->target_operation, p->target_table, p->target_key, req.by,
                   req.reason.empty() ? "no reason given" : req.reason);
      DeadLetterEvent(i, *p, v1::DEAD_LETTER_DISCARDED, req.by, req.reason);
      resolved.push_back(p->position());
    }
  } else {
    // In stream order; once one fails again, every later one of its rows stays parked behind it.
    std::set<std::string> blocked;
    for (ParkedChange* p : connected) {
      bool behind_failed = false;
      for (const std::string& k : p->row_keys) behind_failed |= blocked.count(k) > 0;
      if (behind_failed) {
        // Still behind a change that was rejected again: counted as tried, so that walshiftctl
        // sees the request was acted on.
        ++p->attempts;
        RETURN_IF_ERROR(EmitRefail(dead_letter_shapes_[i], pipeline, *p, apply));
        blocked.insert(p->row_keys.begin(), p->row_keys.end());
        continue;
      }
      std::optional<Rejection> rejection;
      bool wrote = false;
      absl::Status retried = RetryParked(i, *p, &rejection, &wrote);
      if (!retried.ok()) {
        if (retried.code() == absl::StatusCode::kUnavailable || retried.code() == absl::StatusCode::kAborted) {
          return retried;
        }
        // The target refused the retry otherwise than with a value (a column the fix renamed):
        // this attempt's group cannot go on, and the request comes back with every restart.
        if (rejected_by_ < 0) rejected_by_ = static_cast<int>(i);
        return absl::Status(
            retried.code(),
            absl::StrCat("retrying the parked change ", FormatLsn(p->commit_lsn), "/", p->seq, " (", p->target_operation,
                         " of ", p->target_table, " ", p->target_key, ") as walshiftctl dead-letter retry asked: ",
                         retried.message(), "; fix that and start walshiftd again, or leave the request out with "
                         "walshiftctl skip --config <config> --lsn ", FormatLsn(begin_.final_lsn),
                         " (the source transaction that holds it; the changes stay parked)"));
      }
      if (rejection) {
        ++p->attempts;
        if (!rejection->sqlstate.empty()) p->sqlstate = rejection->sqlstate;
        p->constraint = rejection->constraint;
        p->message = std::string(rejection->error.message());
        RETURN_IF_ERROR(EmitRefail(dead_letter_shapes_[i], pipeline, *p, apply));
        spdlog::warn("target {}: the parked change {}/{} was rejected again (attempt {}); it stays parked: {}",
                     req.target, FormatLsn(p->commit_lsn), p->seq, p->attempts, p->message);
        DeadLetterEvent(i, *p, v1::DEAD_LETTER_RETRY_FAILED, req.by, req.reason);
        blocked.insert(p->row_keys.begin(), p->row_keys.end());
        continue;
      }
      std::string note = wrote ? req.reason : absl::StrCat("the current mappings write nothing to this row",
                                                           req.reason.empty() ? "" : "; ", req.reason);
      if (!wrote) {
        spdlog::warn("target {}: the parked change {}/{}: the current mapping of {} writes nothing to {} {} any more",
                     req.target, FormatLsn(p->commit_lsn), p->seq, p->source_table, p->target_table, p->target_key);
      }
      RETURN_IF_ERROR(EmitResolve(dead_letter_shapes_[i], pipeline, *p, "retried", req.by, note, apply));
      spdlog::info("target {}: retried the parked change {}/{} ({} of {} {})", req.target, FormatLsn(p->commit_lsn),
                   p->seq, p->target_operation, p->target_table, p->target_key);
      DeadLetterEvent(i, *p, v1::DEAD_LETTER_RETRIED, req.by, note);
      resolved.push_back(p->position());
    }
  }
  for (const auto& pos : resolved) parked_[i].Remove(pos);
  return absl::OkStatus();
}

absl::Status Pipeline::RetryParked(size_t i, const ParkedChange& p, std::optional<Rejection>* rejection, bool* wrote) {
  // The mapping that parked it: the same position among those of its source table and target.
  size_t m = modules_.size();
  for (size_t k = 0; k < modules_.size(); ++k) {
    if (modules_[k]->source_table() == p.source_table && module_sink_[k] == i && mapping_ordinal_[k] == p.mapping) {
      m = k;
    }
  }
  auto again = [&](std::string why) {
    *rejection = Rejection{"", "", absl::FailedPreconditionError(std::move(why))};
    return absl::OkStatus();
  };
  if (m == modules_.size()) {
    return again(absl::StrCat("no mapping of ", p.source_table, " to target ", sinks_[i]->name(), " (number ",
                              p.mapping + 1, ") any more: discard it, or restore the mapping"));
  }
  auto& relation = retry_relations_[p.source_table];
  if (relation == nullptr) {
    auto described = inspector_->DescribeSource(p.source_table);
    if (!described.ok()) {
      retry_relations_.erase(p.source_table);
      return again(absl::StrCat("source table ", p.source_table, ": ", described.status().message()));
    }
    relation = *described;
  }
  auto& bound = retry_bindings_[m];
  if (bound == nullptr) {
    auto made = modules_[m]->Bind(*relation, *inspector_);
    if (!made.ok()) {
      retry_bindings_.erase(m);
      return again(absl::StrCat("the mapping of ", p.source_table, " does not fit the source now: ",
                                made.status().message()));
    }
    bound = *std::move(made);
  }
  ChangeKind kind = p.operation == "insert" || p.operation == "fill" ? ChangeKind::kInsert
                    : p.operation == "delete"                        ? ChangeKind::kDelete
                                                                     : ChangeKind::kUpdate;
  RebuiltChange rebuilt;
  absl::Status st = RebuildChange(p.source_change, kind, *relation, &rebuilt);
  if (!st.ok()) return again(std::string(st.message()));
  rebuilt.change.lsn = p.change_lsn;
  // The one operation it parked: the same position among those the mapping emits for the
  // change, writing the same rows (another one of the change, if any, was applied then).
  int index = 0;
  bool other = false;
  absl::Status mapped = bound->Map(rebuilt.change, [&](const TargetOp& op) -> absl::Status {
    if (index++ != p.op_index || *rejection) return absl::OkStatus();
    if (op.shape->table != p.target_table || OpRowKeys(op) != p.row_keys) {
      other = true;
      return absl::OkStatus();
    }
    *wrote = true;
    return sinks_[i]->ApplyIsolated(op, rejection);
  });
  if (!mapped.ok() && *wrote) return mapped;  // from the target
  if (!mapped.ok()) return again(absl::StrCat("mapping it again: ", mapped.message()));
  if (other) {
    return again(absl::StrCat("the current mapping of ", p.source_table, " writes other rows for it than ",
                              p.target_table, " ", p.target_key, ": discard it (and backfill ", p.source_table,
                              " if its rows differ)"));
  }
  return absl::OkStatus();
}

}  // namespace walshift
