#include "daemon/apply/pg_sink.h"

#include <poll.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "daemon/core/crash_point.h"
#include "daemon/core/status_macros.h"
#include "daemon/state/pg_state.h"
#include "spdlog/spdlog.h"

namespace walshift {
namespace {

bool IsArray(const OpShape& shape) { return IsArrayOp(shape.kind); }

}  // namespace

// The target's WAL insert position (past every commit of this session) and how far it is flushed.
constexpr char kWalPositionSql[] = "SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text";

PgSink::PgSink(PgSinkOptions options) : options_(std::move(options)) {}
PgSink::~PgSink() = default;

absl::StatusOr<std::unique_ptr<PgSink>> PgSink::Create(const PgSinkOptions& options) {
  std::unique_ptr<PgSink> sink(new PgSink(options));
  sink->batching_ = options.batch_rows > 1;
  std::string what = absl::StrCat("target ", options.name);
  ASSIGN_OR_RETURN(sink->conn_, pg::Connect(options.dsn, what, "application_name=walshiftd"));
  PGconn* c = sink->conn_.get();
  RETURN_IF_ERROR(state::EnsureSchema(c, what));
  RETURN_IF_ERROR(state::HoldWriterLock(c, options.pipeline, options.epoch, what));
  if (!options.replication_origin.empty()) {
    RETURN_IF_ERROR(state::UseReplicationOrigin(c, options.pipeline, options.replication_origin, what));
  }
  // Durable commits (the checkpoint is what the slot is confirmed to); one generic plan per
  // prepared statement instead of re-planning multi-row statements on their first executions.
  RETURN_IF_ERROR(pg::Exec(c,
                           absl::StrCat("SET synchronous_commit = ", options.synchronous_commit ? "on" : "off",
                                        "; SET plan_cache_mode = force_generic_plan"),
                           what)
                      .status());
  ASSIGN_OR_RETURN(sink->durable_lsn_, state::ReadCheckpoint(c, options.pipeline, what));
  if (!options.synchronous_commit && sink->durable_lsn_ != kInvalidLsn) {
    // The checkpoint read may be a commit of an earlier session that is not flushed yet: on disk
    // once the flush passes where the WAL stands now.
    ASSIGN_OR_RETURN(pg::ResultPtr r, pg::Exec(c, kWalPositionSql, what));
    sink->committed_.push_back(sink->durable_lsn_);
    sink->NoteWalPosition(ParseLsn(PQgetvalue(r.get(), 0, 0)).value_or(kInvalidLsn),
                          ParseLsn(PQgetvalue(r.get(), 0, 1)).value_or(kInvalidLsn));
  }
  // Asynchronous commits: the checkpoint also reads where the target's WAL stands, which bounds
  // every group committed before it (see NoteWalPosition).
  std::string checkpoint = state::CheckpointUpsertSql(/*wal_positions=*/!options.synchronous_commit);
  pg::ResultPtr p(PQprepare(c, "walshift_checkpoint", checkpoint.c_str(), 3, nullptr));
  RETURN_IF_ERROR(pg::ResultStatus(c, p.get(), absl::StrCat(what, ": preparing the checkpoint")));
  if (PQsetnonblocking(c, 1) != 0 || PQenterPipelineMode(c) != 1) {
    return sink->BrokenConnection("entering pipeline mode");
  }
  spdlog::info("target {}: connected ({}), checkpoint {}", options.name, pg::RedactDsn(options.dsn),
               sink->durable_lsn_ == kInvalidLsn ? "none" : FormatLsn(sink->durable_lsn_));
  return sink;
}

absl::Status PgSink::SendControl(const char* sql) {
  if (PQsendQueryParams(conn_.get(), sql, 0, nullptr, nullptr, nullptr, nullptr, 0) != 1) {
    return BrokenConnection(sql);
  }
  pending_.push_back(Pending{Pending::kControl});
  return absl::OkStatus();
}

absl::StatusOr<const PgSink::Variant*> PgSink::VariantFor(const TargetOp& op) {
  const OpShape& shape = *op.shape;
  // Which values are written: a value whose input is an unchanged TOAST datum is left alone.
  bool omit_any = false;
  for (int i = 0; i < shape.num_params; ++i) {
    if (op.params[i].is_unchanged_toast()) {
      omit_any = true;
      break;
    }
  }
  if (!omit_any) {
    auto it = full_variant_.find(shape.id);
    if (it != full_variant_.end()) return it->second;
  }
  auto omitted = [&](const TargetValue& v) {
    if (!omit_any) return false;
    if (v.param >= 0) return op.params[v.param].is_unchanged_toast();
    for (int in : v.sql_inputs)
      if (!op.params[shape.inputs[in].param].is_unchanged_toast()) return false;
    return !v.sql_inputs.empty();  // an expression is left alone only when all inputs are
  };
  omit_key_.clear();
  absl::StrAppend(&omit_key_, shape.id, ":");
  for (const TargetValue& v : shape.values) omit_key_.push_back(omitted(v) ? '1' : '0');
  for (int k : shape.key) {
    if (omitted(shape.values[k])) {
      return absl::DataLossError(absl::StrCat("source ", shape.source_table, " at LSN ", FormatLsn(op.lsn),
                                              ": key column ", shape.values[k].column, " of ", shape.table,
                                              " arrived as an unchanged TOAST value"));
    }
  }
  auto found = variants_.find(omit_key_);
  if (found != variants_.end()) return found->second.get();

  auto v = std::make_unique<Variant>();
  PlanStatement(shape, omit_key_.substr(omit_key_.size() - shape.values.size()), v.get());
  if (shape.kind == OpKind::kDelete || shape.kind == OpKind::kUpdateOnly) {
    ASSIGN_OR_RETURN(v->column_types, ColumnTypes(shape.table));
  }
  if (IsArray(shape)) v->run_statements = RenderArrayRun(shape);
  v->coalesce = shape.kind == OpKind::kUpsert && CoalesceSafe(shape);
  int n = static_cast<int>(v->params.size());
  int cap = IsArray(shape) ? static_cast<int>(options_.batch_rows)
            : n == 0 || !shape.condition.empty() || shape.kind == OpKind::kClearColumns
                ? 1
                : std::min<int>(static_cast<int>(options_.batch_rows), 65535 / n);
  v->max_rows = 1;
  while (v->max_rows * 2 <= cap) v->max_rows *= 2;

  const Variant* result = v.get();
  if (!omit_any) full_variant_[shape.id] = result;
  variants_.emplace(omit_key_, std::move(v));
  return result;
}

absl::StatusOr<const std::map<std::string, std::string>*> PgSink::ColumnTypes(const std::string& table) {
  auto it = column_types_.find(table);
  if (it != column_types_.end()) return it->second.get();
  ASSIGN_OR_RETURN(PGconn * c, CatalogConnection());
  ASSIGN_OR_RETURN(auto types, ReadColumnTypes(c, table));
  auto owned = std::make_unique<std::map<std::string, std::string>>(std::move(types));
  const auto* raw = owned.get();
  column_types_[table] = std::move(owned);
  return raw;
}

absl::StatusOr<const PgSink::Prepared*> PgSink::StatementFor(const Variant& v, int rows, Lsn lsn, bool plain_insert,
                                                             int batch_statement) {
  const int cache_key = batch_statement >= 0 ? -1 - batch_statement : rows * 2 + (plain_insert ? 1 : 0);
  auto it = v.statements.find(cache_key);
  if (it != v.statements.end()) return it->second.get();
  auto prepared = std::make_unique<Prepared>();
  prepared->name = absl::StrCat("ws", ++statement_counter_);
  prepared->rows = rows;
  prepared->plain_insert = plain_insert;
  std::string sql = batch_statement >= 0 ? v.run_statements[batch_statement] : RenderStatement(v, rows, plain_insert);
  spdlog::debug("target {}: prepare {} for {} {} ({} rows): {}", options_.name, prepared->name,
                OpKindName(v.shape->kind), v.shape->table, rows, sql);
  if (PQsendPrepare(conn_.get(), prepared->name.c_str(), sql.c_str(),
                    static_cast<int>(v.params.size()) * (batch_statement >= 0 ? 1 : rows), nullptr) != 1) {
    return BrokenConnection("sending a prepare");
  }
  Pending p{Pending::kPrepare};
  p.shape = v.shape;
  p.lsn = lsn;
  p.arena_offset = arena_.size();
  arena_.append(sql);  // kept for the error message
  arena_.push_back('\0');
  pending_.push_back(p);
  const Prepared* result = prepared.get();
  v.statements.emplace(cache_key, std::move(prepared));
  return result;
}

absl::Status PgSink::Send(const Variant& v, int rows, const char* const* values, Lsn first_lsn, Lsn last_lsn,
                          const TargetOp* single, bool plain_insert, int batch_statement) {
  ASSIGN_OR_RETURN(const Prepared* prepared, StatementFor(v, rows, first_lsn, plain_insert, batch_statement));
  const int n = static_cast<int>(v.params.size()) * (batch_statement >= 0 ? 1 : rows);
  if (PQsendQueryPrepared(conn_.get(), prepared->name.c_str(), n, values, nullptr, nullptr, 0) != 1) {
    return BrokenConnection("sending a statement");
  }
  Pending p{Pending::kStatement};
  p.isolated = isolating_;
  p.shape = v.shape;
  p.lsn = first_lsn;
  p.last_lsn = last_lsn;
  p.rows = rows;
  p.plain_insert = plain_insert;
  size_t bytes = 0;
  for (int i = 0; i < n; ++i) bytes += (values[i] ? std::strlen(values[i]) : 0) + 8;
  p.bytes = bytes;
  if (rows == 1) {
    // Keep a copy of the parameters until the result arrives, for error messages; a batch's
    // last row may go out alone, with only its statement's values at hand.
    p.arena_offset = arena_.size();
    auto keep = [&](DatumKind kind, const char* data, uint32_t len) {
      arena_.push_back(static_cast<char>(kind));
      arena_.append(reinterpret_cast<const char*>(&len), sizeof(len));
      arena_.append(data ? data : "", len);
    };
    for (int slot = 0; slot < v.shape->num_params; ++slot) {
      if (single != nullptr) {
        const Datum& d = single->params[slot];
        keep(d.kind, d.data, d.is_null() ? 0 : d.length);
        continue;
      }
      auto at = std::find(v.params.begin(), v.params.end(), slot);
      if (at == v.params.end()) {
        keep(DatumKind::kUnchangedToast, nullptr, 0);
      } else if (const char* value = values[at - v.params.begin()]) {
        keep(DatumKind::kText, value, static_cast<uint32_t>(std::strlen(value)));
      } else {
        keep(DatumKind::kNull, nullptr, 0);
      }
    }
  }
  pending_.push_back(p);
  pending_bytes_ += bytes;
  // (ApplyIsolated syncs and reads everything right after its statement.)
  if (isolating_) return absl::OkStatus();
  if (pending_.size() > options_.max_pending_statements || pending_bytes_ > options_.max_pending_bytes) {
    return Pump(/*block=*/true, /*drain_all=*/false);
  }
  if ((++statements_sent_ & 63) == 0) return Pump(/*block=*/false, /*drain_all=*/false);
  return absl::OkStatus();
}

absl::Status PgSink::SendTruncates() {
  if (truncate_tables_.empty()) return absl::OkStatus();
  std::vector<std::string> quoted;
  for (const std::string& t : truncate_tables_) quoted.push_back(pg::QuoteQualified(t));
  // Without CASCADE, as the source sends every table its TRUNCATE reached.
  std::string sql =
      absl::StrCat("TRUNCATE ", absl::StrJoin(quoted, ", "), truncate_restart_ ? " RESTART IDENTITY" : "");
  if (PQsendQueryParams(conn_.get(), sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0) != 1) {
    return BrokenConnection("sending a truncate");
  }
  Pending p{Pending::kTruncate};
  p.shape = truncate_shape_;
  p.lsn = truncate_lsn_;
  p.last_lsn = truncate_lsn_;
  p.arena_offset = arena_.size();
  arena_.append(absl::StrJoin(truncate_tables_, ", "));  // kept for the error message
  arena_.push_back('\0');
  pending_.push_back(p);
  truncate_tables_.clear();
  truncate_shape_ = nullptr;
  return absl::OkStatus();
}

absl::Status PgSink::Apply(const TargetOp& op) {
  if (!first_error_.ok()) return first_error_;
  if (!group_open_) {
    RETURN_IF_ERROR(SendControl("BEGIN"));
    group_open_ = true;
  }
  ++group_changes_;
  if (op.shape->kind == OpKind::kTruncate) {
    RETURN_IF_ERROR(FlushBatch());
    if (!truncate_tables_.empty() && truncate_restart_ != op.restart_identity) RETURN_IF_ERROR(SendTruncates());
    if (truncate_tables_.empty()) {
      truncate_shape_ = op.shape;
      truncate_lsn_ = op.lsn;
      truncate_restart_ = op.restart_identity;
    }
    if (std::find(truncate_tables_.begin(), truncate_tables_.end(), op.shape->table) == truncate_tables_.end())
      truncate_tables_.push_back(op.shape->table);
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(SendTruncates());
  ASSIGN_OR_RETURN(const Variant* v, VariantFor(op));
  if ((op.shape->kind == OpKind::kUpsert || IsArray(*op.shape)) && batching_ && v->max_rows > 1) {
    return AddToBatch(*v, op);
  }
  RETURN_IF_ERROR(FlushBatch());
  const size_t n = v->params.size();
  values_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const Datum& d = op.params[v->params[i]];
    values_[i] = d.is_null() ? nullptr : d.data;
  }
  return Send(*v, 1, values_.data(), op.lsn, op.lsn, &op);
}

absl::Status PgSink::ApplyIsolated(const TargetOp& op, std::optional<Rejection>* rejected) {
  rejected->reset();
  if (!first_error_.ok()) return first_error_;
  if (op.shape->kind == OpKind::kTruncate) return Apply(op);
  RETURN_IF_ERROR(FlushBatch());
  RETURN_IF_ERROR(SendTruncates());
  if (!group_open_) {
    RETURN_IF_ERROR(SendControl("BEGIN"));
    group_open_ = true;
  }
  RETURN_IF_ERROR(SendControl("SAVEPOINT walshift_op"));
  const bool batching = batching_;
  batching_ = false;
  isolating_ = true;
  absl::Status sent = Apply(op);
  batching_ = batching;
  isolating_ = false;
  RETURN_IF_ERROR(sent);
  if (PQpipelineSync(conn_.get()) != 1) return BrokenConnection("sync");
  pending_.push_back(Pending{Pending::kSync});
  absl::Status st = Pump(/*block=*/true, /*drain_all=*/true, /*through_errors=*/true);
  if (first_error_.ok()) {
    RETURN_IF_ERROR(st);
    return SendControl("RELEASE SAVEPOINT walshift_op");
  }
  if (st.code() == absl::StatusCode::kUnavailable) return st;  // the connection, not the value
  absl::string_view cls = absl::string_view(first_error_sqlstate_).substr(0, 2);
  if (!first_error_isolated_ || (cls != "22" && cls != "23")) return first_error_;
  // The server's transaction is aborted up to the savepoint: undo the statement alone.
  Rejection r{first_error_sqlstate_, first_error_constraint_, first_error_};
  first_error_ = absl::OkStatus();
  first_error_isolated_ = false;
  RETURN_IF_ERROR(SendControl("ROLLBACK TO SAVEPOINT walshift_op"));
  RETURN_IF_ERROR(SendControl("RELEASE SAVEPOINT walshift_op"));
  if (PQpipelineSync(conn_.get()) != 1) return BrokenConnection("sync");
  pending_.push_back(Pending{Pending::kSync});
  RETURN_IF_ERROR(Pump(/*block=*/true, /*drain_all=*/true));
  --group_changes_;
  *rejected = std::move(r);
  return absl::OkStatus();
}

void PgSink::EndTransaction(const TransactionCommit& commit) {
  have_commit_ = true;
  last_commit_ = commit;
}

absl::StatusOr<Lsn> PgSink::Flush() {
  if (!first_error_.ok()) return first_error_;
  RETURN_IF_ERROR(FlushBatch());
  RETURN_IF_ERROR(SendTruncates());
  if (!have_commit_) {
    if (group_open_) {
      return absl::InternalError(
          absl::StrCat("target ", options_.name, ": flush requested inside a source transaction"));
    }
    return durable_lsn_;
  }
  if (!group_open_) {
    RETURN_IF_ERROR(SendControl("BEGIN"));
    group_open_ = true;
  }
  checkpoint_lsn_text_ = FormatLsn(last_commit_.end_lsn);
  checkpoint_time_text_ = FormatPgTimestamp(last_commit_.commit_time);
  const char* values[3] = {options_.pipeline.c_str(), checkpoint_lsn_text_.c_str(), checkpoint_time_text_.c_str()};
  if (PQsendQueryPrepared(conn_.get(), "walshift_checkpoint", 3, values, nullptr, nullptr, 0) != 1) {
    return BrokenConnection("sending the checkpoint");
  }
  pending_.push_back(Pending{options_.synchronous_commit ? Pending::kControl : Pending::kWalPosition});
  wal_read_ = false;
  CrashPoint("apply.before_commit");  // the group is sent but not committed
  RETURN_IF_ERROR(SendControl("COMMIT"));
  if (PQpipelineSync(conn_.get()) != 1) return BrokenConnection("sync");
  pending_.push_back(Pending{Pending::kSync});
  RETURN_IF_ERROR(Pump(/*block=*/true, /*drain_all=*/true));
  CrashPoint("apply.after_commit");  // committed on the target, not yet confirmed to the source
  durable_lsn_ = last_commit_.end_lsn;
  if (!options_.synchronous_commit) {
    // Read before this commit: it bounds the groups committed earlier, not this one.
    if (wal_read_) NoteWalPosition(wal_insert_, wal_flush_);
    committed_.push_back(durable_lsn_);
  }
  applied_changes_ += group_changes_;
  group_changes_ = 0;
  group_open_ = false;
  have_commit_ = false;
  return durable_lsn_;
}

void PgSink::NoteWalPosition(Lsn insert, Lsn flushed) {
  flush_read_at_ = absl::Now();
  if (insert == kInvalidLsn || flushed == kInvalidLsn) return;
  // Every commit noted before this reading ends at or below `insert`.
  for (Lsn checkpoint : committed_) unflushed_.emplace_back(insert, checkpoint);
  committed_.clear();
  while (!unflushed_.empty() && unflushed_.front().first <= flushed) {
    flushed_lsn_ = std::max(flushed_lsn_, unflushed_.front().second);
    unflushed_.pop_front();
  }
}

absl::Status PgSink::PollFlushed(absl::Duration max_age) {
  if (!first_error_.ok()) return first_error_;
  if ((unflushed_.empty() && committed_.empty()) || group_open_ || absl::Now() - flush_read_at_ < max_age) {
    return absl::OkStatus();
  }
  wal_read_ = false;
  if (PQsendQueryParams(conn_.get(), kWalPositionSql, 0, nullptr, nullptr, nullptr, nullptr, 0) != 1) {
    return BrokenConnection("reading the WAL position");
  }
  pending_.push_back(Pending{Pending::kWalPosition});
  if (PQpipelineSync(conn_.get()) != 1) return BrokenConnection("sync");
  pending_.push_back(Pending{Pending::kSync});
  RETURN_IF_ERROR(Pump(/*block=*/true, /*drain_all=*/true));
  if (wal_read_) NoteWalPosition(wal_insert_, wal_flush_);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CopyChunk>> PgSink::CopyChunks(const std::string& source_table) {
  ASSIGN_OR_RETURN(PGconn * c, CatalogConnection());
  return state::ReadCopyChunks(c, options_.pipeline, source_table, kInvalidLsn, absl::StrCat("target ", options_.name));
}

absl::StatusOr<PGconn*> PgSink::CatalogConnection() {
  if (!catalog_conn_) {
    ASSIGN_OR_RETURN(catalog_conn_, pg::Connect(options_.dsn, absl::StrCat("target ", options_.name),
                                                "application_name=walshiftd-catalog"));
  }
  return catalog_conn_.get();
}

absl::Status PgSink::CommitChunk(const CopyChunk& chunk) {
  state::Statement marker = state::CopyChunkInsert(options_.pipeline, chunk);
  const char* sql = marker.sql.c_str();
  const std::vector<const char*>& params = marker.params;
  if (!first_error_.ok()) return first_error_;
  RETURN_IF_ERROR(FlushBatch());
  RETURN_IF_ERROR(SendTruncates());
  if (!group_open_) {
    RETURN_IF_ERROR(SendControl("BEGIN"));
    group_open_ = true;
  }
  if (PQsendQueryParams(conn_.get(), sql, static_cast<int>(params.size()), nullptr, params.data(), nullptr, nullptr,
                        0) != 1) {
    return BrokenConnection("sending the copy range's marker");
  }
  pending_.push_back(Pending{Pending::kControl});
  RETURN_IF_ERROR(SendControl("COMMIT"));
  if (PQpipelineSync(conn_.get()) != 1) return BrokenConnection("sync");
  pending_.push_back(Pending{Pending::kSync});
  RETURN_IF_ERROR(Pump(/*block=*/true, /*drain_all=*/true));
  applied_changes_ += group_changes_;
  group_changes_ = 0;
  group_open_ = false;
  return absl::OkStatus();
}

absl::Status PgSink::Pump(bool block, bool drain_all, bool through_errors) {
  PGconn* c = conn_.get();
  // The server holds small results in its output buffer until a Sync or Flush: ask for them
  // before waiting, or a short backlog of large statements would wait forever.
  if (block && !drain_all && PQsendFlushRequest(c) != 1) return BrokenConnection("flush request");
  for (;;) {
    int flush = PQflush(c);
    if (flush < 0) return BrokenConnection("sending");
    if (PQconsumeInput(c) != 1) return BrokenConnection("receiving");
    while (!pending_.empty() && !PQisBusy(c)) {
      RETURN_IF_ERROR(HandleResult(PQgetResult(c)));
    }
    if (!first_error_.ok() && !through_errors) return first_error_;
    if (PQstatus(c) != CONNECTION_OK) return BrokenConnection("connection lost");
    bool done;
    if (drain_all) {
      done = pending_.empty() && flush == 0;
    } else if (block) {
      done = pending_.size() <= options_.max_pending_statements / 2 && pending_bytes_ <= options_.max_pending_bytes / 2;
    } else {
      done = true;
    }
    if (done) return absl::OkStatus();
    struct pollfd pfd;
    pfd.fd = PQsocket(c);
    pfd.events = POLLIN | (flush == 1 ? POLLOUT : 0);
    pfd.revents = 0;
    int rc = poll(&pfd, 1, 1000);
    if (rc < 0 && errno != EINTR) return BrokenConnection("poll");
  }
}

absl::Status PgSink::HandleResult(PGresult* result) {
  if (pending_.empty()) {
    if (result) PQclear(result);
    return absl::InternalError(absl::StrCat("target ", options_.name, ": unexpected result"));
  }
  Pending& front = pending_.front();
  auto pop = [&]() {
    pending_bytes_ -= front.bytes;
    pending_.pop_front();
    if (pending_.empty()) {
      arena_.clear();
    } else if (pending_.front().arena_offset > (1u << 20) && pending_.front().arena_offset > arena_.size() / 2) {
      size_t cut = pending_.front().arena_offset;
      arena_.erase(0, cut);
      for (Pending& p : pending_) p.arena_offset -= std::min(cut, p.arena_offset);
    }
  };
  // A connection the server ended (pg_terminate_backend, shutdown) stops answering in the
  // middle of the pipeline: the results missing from then on are a lost connection.
  auto out_of_order = [&](const char* what) {
    if (first_error_.code() == absl::StatusCode::kUnavailable) return first_error_;
    if (PQstatus(conn_.get()) == CONNECTION_BAD) return BrokenConnection("reading results");
    return absl::InternalError(absl::StrCat("target ", options_.name, ": ", what));
  };
  if (result == nullptr) {
    if (front.kind == Pending::kSync) return out_of_order("result out of order");
    pop();
    return absl::OkStatus();
  }
  ExecStatusType st = PQresultStatus(result);
  if (st == PGRES_PIPELINE_SYNC) {
    PQclear(result);
    if (front.kind != Pending::kSync) return out_of_order("sync out of order");
    pop();
    return absl::OkStatus();
  }
  if (st == PGRES_FATAL_ERROR && first_error_.ok()) {
    first_error_ = ErrorFor(front, result);
    const char* sqlstate = PQresultErrorField(result, PG_DIAG_SQLSTATE);
    const char* constraint = PQresultErrorField(result, PG_DIAG_CONSTRAINT_NAME);
    first_error_sqlstate_ = sqlstate ? sqlstate : "";
    first_error_constraint_ = constraint ? constraint : "";
    first_error_isolated_ = front.kind == Pending::kStatement && front.isolated;
  }
  if (st == PGRES_TUPLES_OK && front.kind == Pending::kWalPosition && PQntuples(result) == 1 &&
      PQnfields(result) == 2) {
    wal_insert_ = ParseLsn(PQgetvalue(result, 0, 0)).value_or(kInvalidLsn);
    wal_flush_ = ParseLsn(PQgetvalue(result, 0, 1)).value_or(kInvalidLsn);
    wal_read_ = true;
  }
  PQclear(result);
  return absl::OkStatus();
}

}  // namespace walshift
