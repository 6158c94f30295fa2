#include "daemon/pipeline/backfill.h"

#include <algorithm>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/pg_schema_inspector.h"
#include "spdlog/spdlog.h"

namespace walshift {
namespace {

constexpr char kKeySeparator = '\x1f';

// pg_current_snapshot() text: "xmin:xmax:xip,xip,...".
struct Snapshot {
  uint64_t xmin = 0, xmax = 0;
  std::set<uint64_t> xip;
  bool Running(uint64_t xid) const { return xid >= xmax || xip.count(xid) > 0; }
};

Snapshot ParseSnapshot(absl::string_view text) {
  Snapshot s;
  std::vector<absl::string_view> parts = absl::StrSplit(text, ':');
  if (parts.size() < 2) return s;
  (void)absl::SimpleAtoi(parts[0], &s.xmin);
  (void)absl::SimpleAtoi(parts[1], &s.xmax);
  if (parts.size() > 2) {
    for (absl::string_view x : absl::StrSplit(parts[2], ',', absl::SkipEmpty())) {
      uint64_t xid = 0;
      if (absl::SimpleAtoi(x, &xid)) s.xip.insert(xid);
    }
  }
  return s;
}

absl::StatusOr<std::string> Value(PGconn* conn, const std::string& sql, std::initializer_list<const char*> params,
                                  absl::string_view context) {
  ASSIGN_OR_RETURN(pg::ResultPtr r, pg::ExecParams(conn, sql, params, context));
  if (PQntuples(r.get()) != 1) return absl::InternalError(absl::StrCat(context, ": no result"));
  return std::string(PQgetvalue(r.get(), 0, 0));
}

}  // namespace

std::string BackfillChunk::RowKey(const std::vector<std::optional<std::string>>& row,
                                  const std::vector<int>& key_columns) {
  std::string key;
  for (size_t i = 0; i < key_columns.size(); ++i) {
    if (i > 0) key.push_back(kKeySeparator);
    const auto& v = row[key_columns[i]];
    if (v) key += *v;
  }
  return key;
}

std::string BackfillChunk::TupleKey(const Tuple& tuple, const std::vector<int>& key_columns) {
  std::string key;
  for (size_t i = 0; i < key_columns.size(); ++i) {
    if (i > 0) key.push_back(kKeySeparator);
    if (static_cast<size_t>(key_columns[i]) < tuple.size()) {
      const Datum& d = tuple[key_columns[i]];
      if (!d.is_null()) key.append(d.view().data(), d.view().size());
    }
  }
  return key;
}

Backfiller::Backfiller(std::string source_dsn, std::string pipeline, int64_t chunk_rows)
    : source_dsn_(std::move(source_dsn)), pipeline_(std::move(pipeline)), chunk_rows_(chunk_rows) {
  thread_ = std::thread([this] { Loop(); });
}

Backfiller::~Backfiller() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    // A query the source holds up (a lock, a synchronous standby that went away with the
    // pipeline's connection) must not hold up the pipeline's retry.
    char err[256];
    if (cancel_ != nullptr) PQcancel(cancel_, err, sizeof(err));
  }
  cv_.notify_all();
  thread_.join();
}

void Backfiller::Request(const std::string& table, std::vector<std::string> after_key) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!queued_tables_.insert(table).second) {
      spdlog::info("backfill of {} is already under way", table);
      return;
    }
    jobs_.push_back({table, std::move(after_key)});
  }
  cv_.notify_all();
}

std::shared_ptr<const BackfillChunk> Backfiller::Chunk(const std::string& id) {
  // A chunk is stored before its high watermark is emitted, so there is nothing to wait for.
  std::lock_guard<std::mutex> lock(mu_);
  auto it = chunks_.find(id);
  return it == chunks_.end() ? nullptr : it->second;
}

void Backfiller::Applied(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    applied_.insert(id);
  }
  cv_.notify_all();
}

absl::Status Backfiller::TakeError() {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status st = error_;
  error_ = absl::OkStatus();
  return st;
}

void Backfiller::Loop() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      job = jobs_.front();
    }
    absl::Status st;
    // A lost source connection is retried; anything else ends this backfill with an error.
    for (int attempt = 0;; ++attempt) {
      st = RunJob(job);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;  // whatever RunJob says: its query may have been cancelled
      }
      if (st.code() != absl::StatusCode::kUnavailable || attempt >= 20) break;
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, std::chrono::seconds(1), [&] { return stopping_; })) return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (!st.ok() && st.code() != absl::StatusCode::kCancelled && error_.ok()) {
      error_ = absl::Status(st.code(), absl::StrCat("backfill of ", job.table, ": ", st.message()));
    }
    // Said at once: the pipeline only takes the error at the next high watermark, and a
    // backfill that failed before emitting one would otherwise stay silent.
    if (!st.ok() && st.code() != absl::StatusCode::kCancelled) {
      spdlog::error("backfill of {} stopped: {}", job.table, std::string(st.message()));
    }
    jobs_.erase(jobs_.begin());
    queued_tables_.erase(job.table);
  }
}

absl::Status Backfiller::RunJob(Job& job) {
  ASSIGN_OR_RETURN(pg::ConnPtr conn, pg::Connect(source_dsn_, "source", "application_name=walshiftd-backfill"));
  PGconn* c = conn.get();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::CancelledError("stopping");
    cancel_ = PQgetCancel(c);
  }
  absl::Cleanup forget_cancel = [this] {
    std::lock_guard<std::mutex> lock(mu_);
    PQfreeCancel(cancel_);
    cancel_ = nullptr;
  };
  std::vector<std::string> problems;
  ASSIGN_OR_RETURN(auto described, DescribeSourceTable(c, job.table, &problems, "backfill"));
  if (!described) return absl::FailedPreconditionError(absl::StrJoin(problems, "; "));
  auto relation = std::make_shared<const SourceRelation>(*std::move(described));
  ASSIGN_OR_RETURN(auto pk, ReadPrimaryKey(c, *relation));
  if (pk.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(job.table, " has no primary key to walk in order"));
  }
  std::vector<int> key_columns;
  std::vector<std::string> key_names, key_types;
  for (const auto& [name, type] : pk) {
    key_names.push_back(pg::QuoteIdent(name));
    key_types.push_back(type);
    key_columns.push_back(relation->ColumnIndex(name));
  }
  std::vector<std::string> cols;
  for (const auto& col : relation->columns) cols.push_back(pg::QuoteIdent(col.name));
  std::vector<std::string> placeholders;
  for (size_t i = 0; i < key_types.size(); ++i) placeholders.push_back(absl::StrCat("$", i + 1, "::", key_types[i]));
  std::string key_list = absl::StrJoin(key_names, ", ");
  ASSIGN_OR_RETURN(std::string from, SourceRowsFrom(c, *relation));
  std::string select = absl::StrCat("SELECT ", absl::StrJoin(cols, ", "), " FROM ", from);
  std::string first = absl::StrCat(select, " ORDER BY ", key_list, " LIMIT ", chunk_rows_);
  std::string next = absl::StrCat(select, " WHERE (", key_list, ") > (", absl::StrJoin(placeholders, ", "),
                                  ") ORDER BY ", key_list, " LIMIT ", chunk_rows_);
  spdlog::info("backfill of {}: walking {} rows at a time by ({}){}", job.table, chunk_rows_, key_list,
               job.after_key.empty() ? "" : absl::StrCat(" after (", absl::StrJoin(job.after_key, ", "), ")"));

  uint64_t total = 0;
  for (int n = 0;; ++n) {
    std::string id = absl::StrCat(job.table, "#", ++next_id_, "@", absl::ToUnixMicros(absl::Now()));
    std::string content = absl::StrCat(pipeline_, "\t", id);
    std::vector<std::string> raw_keys;
    for (int k : key_columns) raw_keys.push_back(relation->columns[k].name);
    std::string low = absl::StrCat(content, "\t", absl::StrJoin(raw_keys, std::string(1, kKeySeparator)));
    RETURN_IF_ERROR(Value(c, "SELECT pg_logical_emit_message(true, $1, $2)::text", {kBackfillLow, low.c_str()},
                          "emitting the low watermark")
                        .status());
    // Every transaction whose commit precedes the low watermark must be visible to the chunk's
    // read: a commit record can precede the watermark's while its transaction still shows as
    // running, so wait for the transactions running now.
    ASSIGN_OR_RETURN(std::string after_low, Value(c, "SELECT pg_current_snapshot()::text", {}, "reading the snapshot"));
    Snapshot running = ParseSnapshot(after_low);
    absl::Time waiting_since = absl::Now();
    bool warned = false;
    pg::ResultPtr rows;
    for (;;) {
      RETURN_IF_ERROR(pg::Exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "BEGIN").status());
      ASSIGN_OR_RETURN(std::string now, Value(c, "SELECT pg_current_snapshot()::text", {}, "reading the snapshot"));
      Snapshot s = ParseSnapshot(now);
      bool clear = std::none_of(running.xip.begin(), running.xip.end(), [&](uint64_t x) { return s.Running(x); });
      if (clear) {
        std::vector<const char*> params;
        for (const auto& k : job.after_key) params.push_back(k.c_str());
        ASSIGN_OR_RETURN(rows, job.after_key.empty() ? pg::Exec(c, first, "reading a chunk")
                                                     : pg::ExecParams(c, next, params, "reading a chunk"));
        RETURN_IF_ERROR(pg::Exec(c, "COMMIT", "COMMIT").status());
        break;
      }
      RETURN_IF_ERROR(pg::Exec(c, "ROLLBACK", "ROLLBACK").status());
      if (!warned && absl::Now() - waiting_since > absl::Seconds(10)) {
        spdlog::warn("backfill of {}: waiting for transactions that were running at the low watermark ({})", job.table,
                     after_low);
        warned = true;
      }
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, std::chrono::milliseconds(5), [&] { return stopping_; })) {
        return absl::CancelledError("stopping");
      }
    }
    auto chunk = std::make_shared<BackfillChunk>();
    chunk->id = id;
    chunk->table = job.table;
    chunk->relation = relation;
    chunk->key_columns = key_columns;
    const int nrows = PQntuples(rows.get());
    chunk->rows.reserve(nrows);
    for (int r = 0; r < nrows; ++r) {
      std::vector<std::optional<std::string>> row;
      for (size_t col = 0; col < cols.size(); ++col) {
        if (PQgetisnull(rows.get(), r, col))
          row.emplace_back();
        else
          row.emplace_back(std::string(PQgetvalue(rows.get(), r, col), PQgetlength(rows.get(), r, col)));
      }
      chunk->rows.push_back(std::move(row));
    }
    chunk->last = nrows < chunk_rows_;
    std::vector<std::string> last_key;
    if (nrows > 0) {
      for (int k : key_columns) last_key.push_back(*chunk->rows.back()[k]);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      chunks_.clear();  // earlier chunks were applied (or belong to a replay that no longer matters)
      chunks_[id] = chunk;
    }
    cv_.notify_all();
    RETURN_IF_ERROR(Value(c, "SELECT pg_logical_emit_message(true, $1, $2)::text", {kBackfillHigh, content.c_str()},
                          "emitting the high watermark")
                        .status());
    // One chunk in flight: wait until the pipeline has applied it.
    {
      std::unique_lock<std::mutex> lock(mu_);
      while (!applied_.count(id)) {
        if (stopping_) return absl::CancelledError("stopping");
        cv_.wait_for(lock, std::chrono::milliseconds(100));
      }
      applied_.erase(id);
    }
    total += nrows;
    if (chunk->last) {
      spdlog::info("backfill of {}: done, {} rows read in {} chunks", job.table, total, n + 1);
      return absl::OkStatus();
    }
    job.after_key = std::move(last_key);
  }
}

}  // namespace walshift
