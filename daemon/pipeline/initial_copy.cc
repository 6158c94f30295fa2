#include "daemon/pipeline/initial_copy.h"

#include <algorithm>
#include <condition_variable>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/apply/open_sink.h"
#include "daemon/apply/pg_copy_writer.h"
#include "daemon/apply/pg_statements.h"
#include "daemon/copy/copy_text.h"
#include "daemon/core/crash_point.h"
#include "daemon/core/origin.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/initial_copy_internal.h"
#include "daemon/pipeline/pg_schema_inspector.h"
#include "daemon/state/target_state.h"
#include "spdlog/spdlog.h"

namespace walshift {
namespace {
// How often one range is copied again after a deadlock with another worker before the copy
// gives up (and the pipeline retries from the ranges committed so far).
constexpr int kMaxChunkConflicts = 20;
}  // namespace
namespace {

using pg::OptionalInt;

std::string RangeText(const std::optional<int64_t>& lo, const std::optional<int64_t>& hi) {
  return absl::StrCat("[", lo ? absl::StrCat(*lo) : "-inf", ", ", hi ? absl::StrCat(*hi) : "+inf", ")");
}

}  // namespace

absl::Status ImportSnapshot(PGconn* conn, const std::string& snapshot) {
  RETURN_IF_ERROR(pg::Exec(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "source: BEGIN").status());
  return pg::Exec(conn, absl::StrCat("SET TRANSACTION SNAPSHOT ", pg::QuoteLiteral(snapshot)),
                  absl::StrCat("source: importing snapshot ", snapshot))
      .status();
}

// ---------------------------------------------------------------------------------------------
// CopySkipPlan

absl::Status CopySkipPlan::Load(Sink& sink, size_t target_index, Lsn after) {
  ASSIGN_OR_RETURN(std::vector<CopyChunk> chunks, sink.CopyChunks(""));
  for (const CopyChunk& c : chunks) {
    if (after != kInvalidLsn && c.snapshot_lsn <= after) continue;
    Table& t = tables_[{c.source_table, target_index}];
    t.key_column = c.key_column;
    CopyRange range;
    range.lo = c.lo;
    range.hi = c.hi;
    range.snapshot_lsn = c.snapshot_lsn;
    t.ranges.push_back(range);
  }
  return absl::OkStatus();
}

const CopySkipPlan::Table* CopySkipPlan::Find(const std::string& source_table, size_t target_index) const {
  auto it = tables_.find({source_table, target_index});
  return it == tables_.end() ? nullptr : &it->second;
}

Lsn CopySkipPlan::SnapshotFor(const Table& table, const Datum* key) {
  int64_t k = 0;
  if (!table.key_column.empty() &&
      (key == nullptr || key->is_null() || key->is_unchanged_toast() || !absl::SimpleAtoi(key->view(), &k))) {
    return kInvalidLsn;
  }
  // A range can be recorded twice: a walshiftd killed while its range's commit was still on the
  // way leaves it to be copied again by the next run, under a later snapshot. The earlier
  // snapshot decides: replaying every change after it ends on the source's rows whatever the
  // later copy wrote (each change rewrites or deletes its whole row or element), whereas
  // skipping up to the later one would keep what the later copy cannot undo (a row deleted, an
  // element moved to another parent, in between).
  Lsn earliest = kInvalidLsn;
  for (const CopyRange& r : table.ranges) {
    if (!table.key_column.empty() && !r.Contains(k)) continue;
    if (earliest == kInvalidLsn || r.snapshot_lsn < earliest) earliest = r.snapshot_lsn;
  }
  return earliest;
}

// ---------------------------------------------------------------------------------------------
// InitialCopy

InitialCopy::InitialCopy(InitialCopyOptions options) : options_(std::move(options)) {}
InitialCopy::~InitialCopy() = default;

absl::Status InitialCopy::Run(const std::atomic<bool>& stop) {
  started_ = absl::Now();
  RETURN_IF_ERROR(Plan());
  if (tasks_.empty()) return absl::OkStatus();
  int workers = std::max(1, std::min<int>(options_.workers, static_cast<int>(tasks_.size())));
  // A document store has no row locks: two workers writing one document (a merged row, a
  // parent's array) would lose one's change, so its rows are copied by one worker.
  for (size_t t : options_.targets)
    if (options_.settings->targets[t].documents()) workers = 1;
  std::condition_variable cv;
  std::vector<std::thread> threads;
  std::atomic<int> running{workers};
  for (int i = 0; i < workers; ++i) {
    threads.emplace_back([this, i, &stop, &running, &cv] {
      WorkerLoop(i, stop);
      running.fetch_sub(1);
      cv.notify_all();
    });
  }
  {
    std::unique_lock<std::mutex> lock(mu_);
    absl::Time next_log = absl::Now() + absl::Seconds(10);
    while (running.load() > 0) {
      cv.wait_for(lock, std::chrono::seconds(1));
      // Outside the copy's lock: the status endpoint reads the copy's report under its own
      // lock, and tick() takes that one.
      lock.unlock();
      if (options_.tick) options_.tick();
      if (running.load() > 0 && absl::Now() >= next_log) {
        next_log = absl::Now() + absl::Seconds(10);
        LogProgress(false);
      }
      lock.lock();
    }
  }
  for (auto& t : threads) t.join();
  LogProgress(true);
  if (!error_.ok()) return error_;
  if (stop.load()) return absl::CancelledError("initial copy stopped");
  return absl::OkStatus();
}

std::string InitialCopy::OriginOf(size_t target, int session) const {
  if (target >= options_.origins.size() || options_.origins[target].empty()) return "";
  return CopyOriginName(options_.origins[target], session);
}

void InitialCopy::WorkerLoop(int index, const std::atomic<bool>& stop) {
  Worker w;
  w.index = index;
  auto fail = [&](const absl::Status& st) {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.ok()) error_ = st;
  };
  auto conn =
      pg::Connect(options_.settings->source_dsn, "source", absl::StrCat("application_name=walshiftd-copy-", index));
  if (!conn.ok()) return fail(conn.status());
  w.source = *std::move(conn);
  absl::Status st = ImportSnapshot(w.source.get(), snapshot_name_);
  if (!st.ok()) return fail(st);
  w.inspector = std::make_unique<PgSchemaInspector>(options_.settings->source_dsn, options_.settings->targets);
  for (;;) {
    Task* task = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu_);
      for (;;) {
        if (!error_.ok() || stop.load()) return;
        task = NextTaskLocked();
        if (task != nullptr) break;
        bool left = std::any_of(tasks_.begin(), tasks_.end(), [](const auto& t) { return !t->taken; });
        if (!left) return;
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        lock.lock();
      }
      task->taken = true;
      if (task->unit->report.started == absl::InfinitePast()) task->unit->report.started = absl::Now();
    }
    st = CopyTask(w, *task, stop);
    if (!st.ok()) return fail(st);
    std::lock_guard<std::mutex> lock(mu_);
    if (--task->unit->remaining == 0) task->unit->report.finished = absl::Now();
    ++task->unit->report.chunks_done;
    ++committed_;
  }
}

absl::Status InitialCopy::CopyTask(Worker& w, Task& task, const std::atomic<bool>& stop) {
  Unit& u = *task.unit;
  const config::Settings& settings = *options_.settings;
  const std::string& target_name = settings.targets[u.target].name;
  std::string where =
      absl::StrCat("initial copy of ", u.source_table, " into target ", target_name,
                   u.key_column.empty() ? "" : absl::StrCat(", ", u.key_column, " in ", RangeText(task.lo, task.hi)));
  auto& bound = w.bound[&u];
  if (bound.empty()) {
    for (size_t m : u.modules) {
      auto b = (*options_.modules)[m]->Bind(*u.relation, *w.inspector);
      if (!b.ok()) return absl::Status(b.status().code(), absl::StrCat(where, ": ", b.status().message()));
      bound.push_back(*std::move(b));
    }
  }
  std::vector<std::string> cols;
  for (const auto& c : u.relation->columns) cols.push_back(pg::QuoteIdent(c.name));
  std::vector<std::string> conds;
  if (task.lo) conds.push_back(absl::StrCat(pg::QuoteIdent(u.key_column), " >= ", *task.lo));
  if (task.hi) conds.push_back(absl::StrCat(pg::QuoteIdent(u.key_column), " < ", *task.hi));
  std::string sql =
      absl::StrCat("COPY (SELECT ", absl::StrJoin(cols, ", "), " FROM ", u.from,
                   conds.empty() ? "" : absl::StrCat(" WHERE ", absl::StrJoin(conds, " AND ")), ") TO STDOUT");

  // Up to three attempts: a plain INSERT meeting a row the target has is redone with upserts;
  // a data error in a multi-row statement is redone one row at a time to name the row.
  bool plain = true, batching = true;
  int conflicts = 0;  // deadlocks and serialization failures of this range so far
  // Rows that are plain inserts of one shape go through COPY FROM STDIN.
  const OpShape* copy_shape = nullptr;
  if (!options_.dry_run && bound.size() == 1 && !settings.targets[u.target].documents()) {
    for (const OpShape* shape : bound[0]->shapes()) {
      if (shape->kind != OpKind::kUpsert) continue;
      copy_shape = copy_shape == nullptr && PgCopyWriter::Copyable(*shape) ? shape : nullptr;
      if (copy_shape == nullptr) break;
    }
  }
  const absl::Status not_copyable = absl::AbortedError("a row that is not a plain insert");
  for (int attempt = 0;; ++attempt) {
    Sink* sink = nullptr;
    PgCopyWriter* copier = nullptr;
    std::function<absl::Status(const TargetOp&)> emit;
    if (copy_shape != nullptr && plain) {
      auto& owned = w.copiers[u.target];
      if (!owned) {
        ASSIGN_OR_RETURN(owned, PgCopyWriter::Connect(target_name, settings.targets[u.target].dsn,
                                                            settings.proto.pipeline(), EpochOf(u.target),
                                                            OriginOf(u.target, 2 * w.index + 1)));
      }
      copier = owned.get();
      RETURN_IF_ERROR(copier->Begin(*copy_shape));
      emit = [copier, copy_shape, &not_copyable](const TargetOp& op) {
        if (op.shape != copy_shape || !op.new_row) return not_copyable;
        return copier->Add(op);
      };
    } else if (options_.dry_run) {
      emit = [&](const TargetOp& op) -> absl::Status {
        const OpShape& shape = *op.shape;
        if (!shape.condition.empty()) {
          // The filter is evaluated by the target, read-only.
          auto& conn = w.dry_run_targets[u.target];
          if (!conn) {
            ASSIGN_OR_RETURN(conn, pg::Connect(settings.targets[u.target].dsn, absl::StrCat("target ", target_name),
                                               "application_name=walshiftd-dry-run"));
          }
          std::vector<const char*> values;
          std::string condition = ExpressionSql(shape, shape.condition, shape.condition_inputs, [&](int slot) {
            values.push_back(op.params[slot].is_null() ? nullptr : op.params[slot].data);
            return absl::StrCat("$", values.size());
          });
          std::string q = absl::StrCat("SELECT coalesce(", condition, ", false)");
          ASSIGN_OR_RETURN(pg::ResultPtr r, pg::ExecParams(conn.get(), q.c_str(), values, "evaluating the filter"));
          if (PQgetvalue(r.get(), 0, 0)[0] != 't') return absl::OkStatus();
        }
        std::lock_guard<std::mutex> lock(mu_);
        const char* what = shape.kind == OpKind::kUpsert        ? "upsert into "
                           : shape.kind == OpKind::kUpdateOnly  ? "update of "
                           : shape.kind == OpKind::kDelete      ? "delete from "
                           : shape.kind == OpKind::kArrayUpsert ? "array element into "
                           : shape.kind == OpKind::kArrayRemove ? "array element out of "
                                                                : "clear of ";
        ++u.report.writes[absl::StrCat(what, shape.table)];
        return absl::OkStatus();
      };
    } else {
      auto& owned = w.sinks[u.target];
      if (!owned) {
        SinkOptions o;
        o.pipeline = settings.proto.pipeline();
        o.synchronous_commit = false;
        o.epoch = EpochOf(u.target);
        o.replication_origin = OriginOf(u.target, 2 * w.index);
        ASSIGN_OR_RETURN(owned, OpenSink(settings.targets[u.target], o));
      }
      owned->set_plain_inserts(plain);
      owned->set_batching(batching);
      sink = owned.get();
      emit = [sink](const TargetOp& op) { return sink->Apply(op); };
    }

    pg::ResultPtr start(PQexec(w.source.get(), sql.c_str()));
    if (PQresultStatus(start.get()) != PGRES_COPY_OUT) {
      return pg::ResultStatus(w.source.get(), start.get(), absl::StrCat(where, ": COPY"));
    }
    Tuple tuple;
    RowChange change;
    change.kind = ChangeKind::kInsert;
    change.relation = u.relation.get();
    change.new_tuple = &tuple;
    change.lsn = options_.snapshot.lsn;
    change.snapshot = true;
    uint64_t rows = 0;
    absl::Status failed;
    for (;;) {
      char* buf = nullptr;
      int len = PQgetCopyData(w.source.get(), &buf, 0);
      if (len < 0) break;
      absl::Status st = failed.ok()
                            ? DecodeCopyTextRow(buf, static_cast<size_t>(len), u.relation->columns.size(), &tuple)
                            : absl::OkStatus();
      if (failed.ok() && st.ok()) {
        for (const auto& b : bound) {
          st = b->Map(change, emit);
          if (!st.ok()) break;
        }
      }
      if (!st.ok() && failed.ok()) {
        std::string key;
        for (size_t c = 0; c < u.relation->columns.size() && c < tuple.size(); ++c) {
          if (!u.relation->columns[c].part_of_key) continue;
          absl::StrAppend(&key, key.empty() ? "" : ", ", u.relation->columns[c].name, "=",
                          tuple[c].is_null() ? "NULL" : std::string(tuple[c].view().substr(0, 64)));
        }
        absl::Status named(st.code(), absl::StrCat(where, ": row (", key, "): ", st.message()));
        if (options_.dry_run && st.code() != absl::StatusCode::kUnavailable) {
          std::lock_guard<std::mutex> lock(mu_);
          if (u.report.failures.size() < 5) u.report.failures.push_back(std::string(named.message()));
          ++u.report.failure_count;
        } else {
          failed = named;  // keep reading: the COPY must be drained before the connection is reused
        }
      }
      PQfreemem(buf);
      ++rows;
      if (rows % 1024 == 0) {
        std::lock_guard<std::mutex> lock(mu_);
        u.report.rows += 1024;
        if (stop.load() && failed.ok()) failed = absl::CancelledError("initial copy stopped");
      }
    }
    pg::ResultPtr end(PQgetResult(w.source.get()));
    absl::Status copy_status = pg::ResultStatus(w.source.get(), end.get(), absl::StrCat(where, ": COPY"));
    while (PGresult* extra = PQgetResult(w.source.get())) PQclear(extra);
    {
      std::lock_guard<std::mutex> lock(mu_);
      u.report.rows += rows % 1024;
    }
    RETURN_IF_ERROR(copy_status);
    if (failed.ok() && (sink != nullptr || copier != nullptr)) failed = ConflictPoint("copy.before_chunk_commit");
    if (failed.ok() && (sink != nullptr || copier != nullptr)) {
      CopyChunk chunk;
      chunk.source_table = u.source_table;
      chunk.key_column = u.key_column;
      chunk.lo = task.lo;
      chunk.hi = task.hi;
      chunk.snapshot_lsn = options_.snapshot.lsn;
      chunk.rows = rows;
      failed = copier != nullptr ? copier->Commit(settings.proto.pipeline(), chunk) : sink->CommitChunk(chunk);
      CrashPoint("copy.after_chunk");
    }
    if (failed.ok()) return absl::OkStatus();
    // The chunk's target transaction is abandoned with its connection.
    {
      std::lock_guard<std::mutex> lock(mu_);
      u.report.rows -= std::min<uint64_t>(u.report.rows, rows);
    }
    w.sinks.erase(u.target);
    w.copiers.erase(u.target);
    if (copier != nullptr && absl::StrContains(failed.message(), not_copyable.message())) {
      copy_shape = nullptr;  // the mapping makes more than plain inserts: the general path
      continue;
    }
    if (failed.code() == absl::StatusCode::kAborted && conflicts < kMaxChunkConflicts && !stop.load()) {
      // A deadlock or serialization failure with another worker writing the same target rows
      // (merged rows, JSON arrays of one parent): only this range is copied again.
      ++conflicts;
      int64_t ms = std::min<int64_t>(2000, 20LL << std::min(conflicts, 7));
      ms = ms / 2 + static_cast<int64_t>(std::hash<std::thread::id>()(std::this_thread::get_id()) % (ms / 2 + 1));
      spdlog::info("{}: {}; copying the range again in {} ms (conflict {} of at most {})", where,
                   std::string(failed.message()), ms, conflicts, kMaxChunkConflicts);
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++u.report.retries;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      continue;
    }
    if (failed.code() == absl::StatusCode::kAlreadyExists && plain) {
      spdlog::info("{}: the target already has some of these rows; copying the range again with upserts", where);
      plain = false;
      continue;
    }
    if (failed.code() == absl::StatusCode::kFailedPrecondition && batching && attempt < 2) {
      spdlog::warn("{}: {}; copying the range again one row at a time to name the row", where,
                   std::string(failed.message()));
      batching = false;
      plain = false;
      continue;
    }
    if (failed.code() == absl::StatusCode::kCancelled) return failed;
    return absl::Status(failed.code(), absl::StrCat(where, ": ", failed.message()));
  }
}

void InitialCopy::LogProgress(bool final) {
  absl::Time now = absl::Now();
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& u : units_) {
    const CopyUnitReport& r = u->report;
    if (r.started == absl::InfinitePast() && !final) continue;
    absl::Time end = r.finished != absl::InfinitePast() ? r.finished : now;
    double secs = r.started == absl::InfinitePast() ? 0 : absl::ToDoubleSeconds(end - r.started);
    double rate = secs > 0 ? r.rows / secs : 0;
    uint64_t total = std::max<uint64_t>(r.estimated_rows, r.rows + r.rows_before);
    uint64_t left = total - std::min(total, r.rows + r.rows_before);
    std::string eta = r.finished != absl::InfinitePast() ? "done"
                      : rate > 0                         ? absl::StrCat("ETA ", static_cast<int64_t>(left / rate), " s")
                                                         : "ETA unknown";
    if (final && r.finished == absl::InfinitePast() && r.started == absl::InfinitePast()) eta = "not started";
    spdlog::info("initial copy: {} -> {}: {} of about {} rows ({}%), chunks {}/{}, {:.0f} rows/s, {}", u->source_table,
                 r.target, r.rows + r.rows_before, total, total ? (100 * (r.rows + r.rows_before) / total) : 100,
                 r.chunks_done, r.chunks_total, rate, eta);
  }
}

std::vector<CopyUnitReport> InitialCopy::Report() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<CopyUnitReport> out;
  for (const auto& u : units_) out.push_back(u->report);
  return out;
}

}  // namespace walshift
