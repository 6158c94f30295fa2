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

constexpr size_t kMaxShownValue = 64;

bool IsArray(const OpShape& shape) {
  return shape.kind == OpKind::kArrayUpsert || shape.kind == OpKind::kArrayRemove;
}

std::string Shorten(absl::string_view v) {
  if (v.size() <= kMaxShownValue) return std::string(v);
  return absl::StrCat(v.substr(0, kMaxShownValue), "... (", v.size(), " bytes)");
}

}  // namespace

PgSink::PgSink(PgSinkOptions options) : options_(std::move(options)) {}
PgSink::~PgSink() = default;

absl::StatusOr<std::unique_ptr<PgSink>> PgSink::Create(const PgSinkOptions& options) {
  std::unique_ptr<PgSink> sink(new PgSink(options));
  sink->batching_ = options.batch_rows > 1;
  std::string what = absl::StrCat("target ", options.name);
  ASSIGN_OR_RETURN(sink->conn_, pg::Connect(options.dsn, what, "application_name=walshiftd"));
  PGconn* c = sink->conn_.get();
  RETURN_IF_ERROR(state::EnsureSchema(c, what));
  // Durable commits (the checkpoint is what the slot is confirmed to); one generic plan per
  // prepared statement instead of re-planning multi-row statements on their first executions.
  RETURN_IF_ERROR(pg::Exec(c, absl::StrCat("SET synchronous_commit = ", options.synchronous_commit ? "on" : "off",
                                           "; SET plan_cache_mode = force_generic_plan"),
                           what).status());
  ASSIGN_OR_RETURN(sink->durable_lsn_, state::ReadCheckpoint(c, options.pipeline, what));
  pg::ResultPtr p(PQprepare(c, "walshift_checkpoint", state::kCheckpointUpsertSql, 3, nullptr));
  RETURN_IF_ERROR(pg::ResultStatus(c, p.get(), absl::StrCat(what, ": preparing the checkpoint")));
  if (PQsetnonblocking(c, 1) != 0 || PQenterPipelineMode(c) != 1) {
    return sink->BrokenConnection("entering pipeline mode");
  }
  spdlog::info("target {}: connected ({}), checkpoint {}", options.name, pg::RedactDsn(options.dsn),
               sink->durable_lsn_ == kInvalidLsn ? "none" : FormatLsn(sink->durable_lsn_));
  return sink;
}

absl::Status PgSink::BrokenConnection(absl::string_view what) {
  std::string msg = conn_ ? PQerrorMessage(conn_.get()) : "";
  return absl::UnavailableError(absl::StrCat("target ", options_.name, ": ", what, ": ",
                                             absl::StripTrailingAsciiWhitespace(msg)));
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
      return absl::DataLossError(absl::StrCat(
          "source ", shape.source_table, " at LSN ", FormatLsn(op.lsn), ": key column ",
          shape.values[k].column, " of ", shape.table, " arrived as an unchanged TOAST value"));
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

absl::StatusOr<std::map<std::string, std::string>> PgSink::ReadColumnTypes(PGconn* conn, const std::string& table) {
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::ExecParams(conn,
                                  absl::StrCat("SELECT a.attname, ", pg::kUnlimitedTypeSql, " FROM pg_attribute a "
                                               "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped"),
                                  {pg::QuoteQualified(table).c_str()},
                                  absl::StrCat("reading the column types of ", table)));
  std::map<std::string, std::string> out;
  for (int i = 0; i < PQntuples(r.get()); ++i) out[PQgetvalue(r.get(), i, 0)] = PQgetvalue(r.get(), i, 1);
  return out;
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

absl::Status PgSink::ValidateShape(const OpShape& shape) {
  ASSIGN_OR_RETURN(PGconn * c, CatalogConnection());
  return ValidateShape(c, shape);
}

absl::Status PgSink::ValidateShape(PGconn* conn, const OpShape& shape) {
  PgStatementPlan v;
  PlanStatement(shape, std::string(shape.values.size(), '0'), &v);
  std::map<std::string, std::string> types;
  if (shape.kind != OpKind::kTruncate && !IsArray(shape)) {
    ASSIGN_OR_RETURN(types, ReadColumnTypes(conn, shape.table));
    v.column_types = &types;
  }
  RETURN_IF_ERROR(ValidateStatement(conn, shape, RenderStatement(v, 1), v.params.size()));
  if (IsArray(shape)) {
    for (const std::string& sql : RenderArrayRun(shape)) RETURN_IF_ERROR(ValidateStatement(conn, shape, sql, v.params.size()));
    if (shape.kind == OpKind::kArrayRemove) WarnAboutArrayIndex(conn, shape);
  }
  return absl::OkStatus();
}

void PgSink::WarnAboutArrayIndex(PGconn* conn, const OpShape& shape) {
  // Updates and deletes find their element's parent with `column @> [key]`: without a GIN index
  // on the column that is a scan of the whole parent table per change, and with a GIN index
  // whose fastupdate is on, a scan of its pending list (measured: about five times slower under
  // a backlog). Neither is wrong, so it is a warning.
  auto defs = pg::ExecParams(conn, "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = to_regclass($1)",
                             {pg::QuoteQualified(shape.table).c_str()}, "reading indexes");
  if (!defs.ok()) return;
  const std::string& column = shape.array.column;
  const std::string col = pg::QuoteIdent(column);
  std::string advice = absl::StrCat("CREATE INDEX ON ", pg::QuoteQualified(shape.table), " USING gin (", col,
                                    " jsonb_path_ops) WITH (fastupdate = off)");
  for (int i = 0; i < PQntuples(defs->get()); ++i) {
    std::string def = PQgetvalue(defs->get(), i, 0);
    bool on_column = false;
    for (const std::string& name : {col, column}) {  // pg_get_indexdef quotes only where it must
      on_column |= absl::StrContains(def, absl::StrCat(" USING gin (", name, " ")) ||
                   absl::StrContains(def, absl::StrCat(" USING gin (", name, ")"));
    }
    if (!on_column) continue;
    if (absl::StrContains(def, "fastupdate=off") || absl::StrContains(def, "fastupdate='off'")) return;
    spdlog::warn("the GIN index on {}.{} in target {} keeps fastupdate on, so every update and delete of {} "
                 "searches its pending list; turn it off ({}) or create the index as: {}",
                 shape.table, column, shape.target, shape.source_table, def, advice);
    return;
  }
  spdlog::warn("no GIN index on {}.{} in target {}: every update and delete of {} scans the whole table for its "
               "element; create one: {}",
               shape.table, column, shape.target, shape.source_table, advice);
}

absl::Status PgSink::ValidateStatement(PGconn* conn, const OpShape& shape, const std::string& sql, size_t params) {
  pg::ResultPtr r(PQprepare(conn, "walshift_check", sql.c_str(), static_cast<int>(params), nullptr));
  absl::Status st = pg::ResultStatus(conn, r.get(), "server");
  if (st.ok()) {
    // Planning finds the unique index the key needs (ON CONFLICT): EXPLAIN plans without
    // running anything.
    std::vector<std::string> nulls(params, "NULL");
    pg::ResultPtr e(PQexec(conn, absl::StrCat("EXPLAIN EXECUTE walshift_check",
                                              nulls.empty() ? "" : absl::StrCat("(", absl::StrJoin(nulls, ", "), ")")).c_str()));
    st = pg::ResultStatus(conn, e.get(), "server");
    pg::ResultPtr d(PQexec(conn, "DEALLOCATE walshift_check"));
    if (st.ok()) return absl::OkStatus();
  }
  return absl::Status(st.code(), absl::StrCat(OpKindName(shape.kind), " into ", shape.table, ": ",
                                              absl::StripPrefix(st.message(), "server: "),
                                              "; statement: ", sql));
}

absl::StatusOr<const PgSink::Prepared*> PgSink::StatementFor(const Variant& v, int rows, Lsn lsn,
                                                             bool plain_insert, int batch_statement) {
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

absl::Status PgSink::Send(const Variant& v, int rows, const char* const* values, Lsn first_lsn,
                          Lsn last_lsn, const TargetOp* single, bool plain_insert, int batch_statement) {
  ASSIGN_OR_RETURN(const Prepared* prepared, StatementFor(v, rows, first_lsn, plain_insert, batch_statement));
  const int n = static_cast<int>(v.params.size()) * (batch_statement >= 0 ? 1 : rows);
  if (PQsendQueryPrepared(conn_.get(), prepared->name.c_str(), n, values, nullptr, nullptr, 0) != 1) {
    return BrokenConnection("sending a statement");
  }
  Pending p{Pending::kStatement};
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
  if (pending_.size() > options_.max_pending_statements || pending_bytes_ > options_.max_pending_bytes) {
    return Pump(/*block=*/true, /*drain_all=*/false);
  }
  if ((++statements_sent_ & 63) == 0) return Pump(/*block=*/false, /*drain_all=*/false);
  return absl::OkStatus();
}

namespace {
uint64_t HashBytes(uint64_t h, const char* data, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    h ^= static_cast<unsigned char>(data[i]);
    h *= 1099511628211ULL;
  }
  return h;
}
}  // namespace

absl::Status PgSink::AddToBatch(const Variant& v, const TargetOp& op) {
  if (batch_.variant != &v) {
    RETURN_IF_ERROR(FlushBatch());
    batch_.variant = &v;
  }
  const size_t n = v.params.size();
  uint64_t h = 14695981039346656037ULL;
  for (int pos : v.key_positions) {
    const Datum& d = op.params[v.params[pos]];
    h = HashBytes(h, d.is_null() ? "\xff" : d.data, d.is_null() ? 1 : d.length + 1);
  }
  auto same_key = [&](int row) {
    for (int pos : v.key_positions) {
      const Datum& d = op.params[v.params[pos]];
      int64_t off = batch_.offsets[row * n + pos];
      if (d.is_null() || off < 0) {
        if (d.is_null() != (off < 0)) return false;
        continue;
      }
      if (absl::string_view(batch_.data.data() + off) != d.view()) return false;
    }
    return true;
  };
  int row;
  // Run statements take repeated keys as they come; a kUpsert statement cannot.
  auto it = v.run_statements.empty() && !v.key_positions.empty() ? batch_.rows_by_key.find(h)
                                                                        : batch_.rows_by_key.end();
  if (it != batch_.rows_by_key.end() && v.coalesce && same_key(it->second)) {
    // A later upsert of the same key with the same written columns supersedes the earlier one.
    row = it->second;
  } else {
    if (it != batch_.rows_by_key.end()) {  // the key (or its hash) repeats: start a new batch
      RETURN_IF_ERROR(FlushBatch());
      batch_.variant = &v;
    }
    row = batch_.rows++;
    batch_.new_row.push_back(op.new_row);
    batch_.rows_by_key[h] = row;
    batch_.offsets.resize(batch_.rows * n);
    if (row == 0) batch_.first_lsn = op.lsn;
  }
  for (size_t i = 0; i < n; ++i) {
    const Datum& d = op.params[v.params[i]];
    if (d.is_null()) {
      batch_.offsets[row * n + i] = -1;
    } else {
      batch_.offsets[row * n + i] = static_cast<int64_t>(batch_.data.size());
      batch_.data.append(d.data, d.length);
      batch_.data.push_back('\0');
    }
  }
  batch_.last_lsn = op.lsn;
  if (batch_.rows >= v.max_rows) return FlushBatch();
  return absl::OkStatus();
}

bool PgSink::CoalesceSafe(const OpShape& shape) {
  std::string key_names = "{";
  for (size_t i = 0; i < shape.key.size(); ++i) {
    absl::StrAppend(&key_names, i ? "," : "", "\"");
    for (char c : shape.values[shape.key[i]].column) {
      if (c == '"' || c == '\\') key_names.push_back('\\');
      key_names.push_back(c);
    }
    key_names.push_back('"');
  }
  key_names.push_back('}');
  std::string cache_key = absl::StrCat(shape.table, "|", key_names);
  auto it = coalesce_safe_.find(cache_key);
  if (it != coalesce_safe_.end()) return it->second;
  bool safe = false;
  if (!catalog_conn_) {
    auto c = pg::Connect(options_.dsn, absl::StrCat("target ", options_.name),
                         "application_name=walshiftd-catalog");
    if (c.ok()) catalog_conn_ = std::move(*c);
  }
  if (catalog_conn_) {
    // Coalescing two upserts of one key inside a statement is invisible only when nothing else
    // could observe the intermediate order: no other unique index, no exclusion constraint, no
    // foreign key from the table to itself, no user trigger.
    auto r = pg::ExecParams(
        catalog_conn_.get(),
        "WITH t AS (SELECT to_regclass($1) AS oid), "
        "k AS (SELECT array_agg(a.attnum::int ORDER BY a.attnum) AS cols FROM pg_attribute a, t "
        "      WHERE a.attrelid = t.oid AND a.attname = ANY($2::text[])) "
        "SELECT (SELECT count(*) FROM t WHERE t.oid IS NULL) "
        " + (SELECT count(*) FROM pg_index i, t, k WHERE i.indrelid = t.oid AND i.indisunique AND "
        "    (SELECT array_agg(x::int ORDER BY x) FROM unnest((i.indkey::int2[])[0:i.indnkeyatts - 1]) x) IS DISTINCT FROM k.cols) "
        " + (SELECT count(*) FROM pg_constraint c, t WHERE c.conrelid = t.oid AND "
        "    (c.contype = 'x' OR (c.contype = 'f' AND c.confrelid = t.oid))) "
        " + (SELECT count(*) FROM pg_trigger g, t WHERE g.tgrelid = t.oid AND NOT g.tgisinternal)",
        {pg::QuoteQualified(shape.table).c_str(), key_names.c_str()}, "checking unique indexes");
    safe = r.ok() && std::string(PQgetvalue(r->get(), 0, 0)) == "0";
  }
  spdlog::debug("target {}: {} repeated keys in one statement for {}", options_.name,
                safe ? "coalescing" : "not coalescing", shape.table);
  coalesce_safe_[cache_key] = safe;
  return safe;
}

absl::Status PgSink::FlushBatch() {
  if (batch_.rows == 0) {
    batch_.variant = nullptr;
    return absl::OkStatus();
  }
  const Variant& v = *batch_.variant;
  const size_t n = v.params.size();
  int done = v.run_statements.empty() || batch_.rows == 1 ? 0 : batch_.rows;
  if (done > 0) RETURN_IF_ERROR(FlushArrayBatch());
  while (done < batch_.rows) {
    // Power-of-two statement sizes: a handful of prepared statements per variant.
    int rows = 1;
    while (rows * 2 <= batch_.rows - done && rows * 2 <= v.max_rows) rows *= 2;
    values_.resize(rows * n);
    for (size_t i = 0; i < rows * n; ++i) {
      int64_t off = batch_.offsets[done * n + i];
      values_[i] = off < 0 ? nullptr : batch_.data.data() + off;
    }
    // Rows that source INSERTs created need no conflict handling: a plain INSERT is cheaper.
    bool plain = plain_inserts_ && v.shape->kind == OpKind::kUpsert && !upsert_tables_.count(v.shape->table);
    for (int r = done; r < done + rows && plain; ++r) plain = batch_.new_row[r];
    RETURN_IF_ERROR(Send(v, rows, values_.data(), batch_.first_lsn, batch_.last_lsn, nullptr, plain));
    done += rows;
  }
  batch_.rows = 0;
  batch_.variant = nullptr;
  batch_.data.clear();
  batch_.new_row.clear();
  batch_.offsets.clear();
  batch_.rows_by_key.clear();
  return absl::OkStatus();
}

absl::Status PgSink::FlushArrayBatch() {
  const Variant& v = *batch_.variant;
  const size_t n = v.params.size();
  std::vector<std::string> arrays(n);
  std::vector<const char*> column(batch_.rows);
  for (size_t i = 0; i < n; ++i) {
    for (int r = 0; r < batch_.rows; ++r) {
      int64_t off = batch_.offsets[r * n + i];
      column[r] = off < 0 ? nullptr : batch_.data.data() + off;
    }
    arrays[i] = pg::TextArrayLiteral(column);
  }
  values_.resize(n);
  for (size_t i = 0; i < n; ++i) values_[i] = arrays[i].c_str();
  for (size_t s = 0; s < v.run_statements.size(); ++s) {
    RETURN_IF_ERROR(Send(v, batch_.rows, values_.data(), batch_.first_lsn, batch_.last_lsn, nullptr,
                         /*plain_insert=*/false, static_cast<int>(s)));
  }
  return absl::OkStatus();
}

absl::Status PgSink::SendTruncates() {
  if (truncate_tables_.empty()) return absl::OkStatus();
  std::vector<std::string> quoted;
  for (const std::string& t : truncate_tables_) quoted.push_back(pg::QuoteQualified(t));
  // Without CASCADE, as the source sends every table its TRUNCATE reached.
  std::string sql = absl::StrCat("TRUNCATE ", absl::StrJoin(quoted, ", "),
                                 truncate_restart_ ? " RESTART IDENTITY" : "");
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
      return absl::InternalError(absl::StrCat("target ", options_.name,
                                              ": flush requested inside a source transaction"));
    }
    return durable_lsn_;
  }
  if (!group_open_) {
    RETURN_IF_ERROR(SendControl("BEGIN"));
    group_open_ = true;
  }
  checkpoint_lsn_text_ = FormatLsn(last_commit_.end_lsn);
  checkpoint_time_text_ = FormatPgTimestamp(last_commit_.commit_time);
  const char* values[3] = {options_.pipeline.c_str(), checkpoint_lsn_text_.c_str(),
                           checkpoint_time_text_.c_str()};
  if (PQsendQueryPrepared(conn_.get(), "walshift_checkpoint", 3, values, nullptr, nullptr, 0) != 1) {
    return BrokenConnection("sending the checkpoint");
  }
  pending_.push_back(Pending{Pending::kControl});
  CrashPoint("apply.before_commit");  // the group is sent but not committed
  RETURN_IF_ERROR(SendControl("COMMIT"));
  if (PQpipelineSync(conn_.get()) != 1) return BrokenConnection("sync");
  pending_.push_back(Pending{Pending::kSync});
  RETURN_IF_ERROR(Pump(/*block=*/true, /*drain_all=*/true));
  CrashPoint("apply.after_commit");  // committed on the target, not yet confirmed to the source
  durable_lsn_ = last_commit_.end_lsn;
  applied_changes_ += group_changes_;
  group_changes_ = 0;
  group_open_ = false;
  have_commit_ = false;
  return durable_lsn_;
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
  if (PQsendQueryParams(conn_.get(), sql, static_cast<int>(params.size()), nullptr, params.data(), nullptr,
                        nullptr, 0) != 1) {
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

absl::Status PgSink::Pump(bool block, bool drain_all) {
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
    if (!first_error_.ok()) return first_error_;
    if (PQstatus(c) != CONNECTION_OK) return BrokenConnection("connection lost");
    bool done;
    if (drain_all) {
      done = pending_.empty() && flush == 0;
    } else if (block) {
      done = pending_.size() <= options_.max_pending_statements / 2 &&
             pending_bytes_ <= options_.max_pending_bytes / 2;
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
    } else if (pending_.front().arena_offset > (1u << 20) &&
               pending_.front().arena_offset > arena_.size() / 2) {
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
  }
  PQclear(result);
  return absl::OkStatus();
}

std::vector<std::pair<DatumKind, absl::string_view>> PgSink::DecodeParams(
    const Pending& pending) const {
  std::vector<std::pair<DatumKind, absl::string_view>> params;
  size_t off = pending.arena_offset;
  for (int i = 0; i < pending.shape->num_params && off + 5 <= arena_.size(); ++i) {
    auto kind = static_cast<DatumKind>(arena_[off]);
    uint32_t len;
    std::memcpy(&len, arena_.data() + off + 1, sizeof(len));
    params.emplace_back(kind, absl::string_view(arena_.data() + off + 5, len));
    off += 5 + len;
  }
  return params;
}

std::string PgSink::ProbeColumn(const Pending& pending) const {
  // The server does not name the column of a value it cannot convert: try each copied value
  // against its target column's type on a separate connection.
  const OpShape& shape = *pending.shape;
  auto params = DecodeParams(pending);
  auto conn = pg::Connect(options_.dsn, absl::StrCat("target ", options_.name));
  if (!conn.ok()) return "(unknown)";
  for (const TargetValue& v : IsArray(shape) ? shape.array.element : shape.values) {
    if (v.param < 0 || v.param >= static_cast<int>(params.size()) ||
        params[v.param].first != DatumKind::kText)
      continue;
    auto type = pg::ExecParams(
        conn->get(),
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
        "to_regclass($1) AND attname = $2 AND attnum > 0 AND NOT attisdropped",
        {pg::QuoteQualified(shape.table).c_str(), v.column.c_str()}, "probe");
    if (!type.ok() || PQntuples(type->get()) != 1) continue;
    std::string type_name = PQgetvalue(type->get(), 0, 0);
    std::string value(params[v.param].second);
    // Assignment semantics (an explicit cast would silently cut a too long varchar).
    (void)pg::Exec(conn->get(), "BEGIN", "probe");
    auto made = pg::Exec(conn->get(), absl::StrCat("CREATE TEMP TABLE walshift_probe (v ", type_name, ")"), "probe");
    auto insert = made.ok() ? pg::ExecParams(conn->get(), "INSERT INTO walshift_probe VALUES ($1)",
                                             {value.c_str()}, "probe")
                            : absl::StatusOr<pg::ResultPtr>(made.status());
    (void)pg::Exec(conn->get(), "ROLLBACK", "probe");
    if (made.ok() && !insert.ok()) return absl::StrCat(v.column, " (", type_name, ", from ", v.origin, ")");
  }
  std::vector<std::string> exprs;
  for (const TargetValue& v : shape.values)
    if (v.param < 0) exprs.push_back(v.column);
  if (!exprs.empty()) return absl::StrCat("(one of the sql: columns ", absl::StrJoin(exprs, ", "), ")");
  return "(unknown)";
}

std::string PgSink::DescribeParams(const Pending& pending, bool key_only) const {
  const OpShape& shape = *pending.shape;
  auto params = DecodeParams(pending);
  auto show = [&](int slot) -> std::string {
    if (slot < 0 || slot >= static_cast<int>(params.size())) return "?";
    switch (params[slot].first) {
      case DatumKind::kNull: return "NULL";
      case DatumKind::kUnchangedToast: return "(unchanged)";
      case DatumKind::kText: return Shorten(params[slot].second);
    }
    return "?";
  };
  std::vector<std::string> parts;
  auto describe = [&](const TargetValue& v) {
    if (v.param >= 0) {
      parts.push_back(absl::StrCat(v.column, "=", show(v.param)));
    } else {
      std::vector<std::string> ins;
      for (int in : v.sql_inputs)
        ins.push_back(absl::StrCat(shape.inputs[in].name, "=", show(shape.inputs[in].param)));
      parts.push_back(absl::StrCat(v.column, "=(", v.sql, " with ", absl::StrJoin(ins, ", "), ")"));
    }
  };
  if (IsArray(shape)) {
    // By the source columns the op's slots hold: the element key's are the key.
    const ArraySpec& a = shape.array;
    std::vector<std::string> names(shape.num_params);
    std::vector<char> is_key(shape.num_params, 0);
    auto name = [&](const TargetValue& v) {
      if (v.param >= 0 && v.param < shape.num_params) names[v.param] = v.origin == "const" ? "(constant)" : v.origin;
      for (int in : v.sql_inputs) names[shape.inputs[in].param] = shape.inputs[in].name;
    };
    for (const TargetValue& v : shape.values) name(v);
    for (const TargetValue& v : a.element) name(v);
    for (int k : a.element_key)
      if (a.element[k].param >= 0) is_key[a.element[k].param] = 1;
    for (int slot = 0; slot < shape.num_params; ++slot)
      if (static_cast<bool>(is_key[slot]) == key_only) parts.push_back(absl::StrCat(names[slot], "=", show(slot)));
    return absl::StrJoin(parts, ", ");
  }
  for (size_t i = 0; i < shape.values.size(); ++i) {
    bool key = std::find(shape.key.begin(), shape.key.end(), static_cast<int>(i)) != shape.key.end();
    if (key_only != key) continue;
    const TargetValue& v = shape.values[i];
    if (v.param >= 0) {
      parts.push_back(absl::StrCat(v.column, "=", show(v.param)));
    } else {
      std::vector<std::string> ins;
      for (int in : v.sql_inputs)
        ins.push_back(absl::StrCat(shape.inputs[in].name, "=", show(shape.inputs[in].param)));
      parts.push_back(absl::StrCat(v.column, "=(", v.sql, " with ", absl::StrJoin(ins, ", "), ")"));
    }
  }
  return absl::StrJoin(parts, ", ");
}

absl::Status PgSink::ErrorFor(const Pending& pending, const PGresult* result) {
  absl::Status server = pg::ResultStatus(conn_.get(), result, "server");
  std::string server_msg(absl::StripPrefix(server.message(), "server: "));
  const char* detail = PQresultErrorField(result, PG_DIAG_MESSAGE_DETAIL);
  const char* column = PQresultErrorField(result, PG_DIAG_COLUMN_NAME);
  const char* constraint = PQresultErrorField(result, PG_DIAG_CONSTRAINT_NAME);
  const char* sqlstate = PQresultErrorField(result, PG_DIAG_SQLSTATE);
  std::string extra;
  if (detail) absl::StrAppend(&extra, "; detail: ", detail);
  switch (pending.kind) {
    case Pending::kStatement: {
      const OpShape& shape = *pending.shape;
      if (pending.plain_insert && sqlstate && absl::string_view(sqlstate) == "23505") {
        conflict_table_ = shape.table;
        return absl::AlreadyExistsError(absl::StrCat(
            "target ", options_.name, ": ", shape.table, " already has rows that source inserts at LSN ",
            FormatLsn(pending.lsn), "..", FormatLsn(pending.last_lsn), " create (", server_msg, ")"));
      }
      if (pending.rows > 1) {
        return absl::Status(
            server.code(),
            absl::StrCat("cannot apply ", OpKindName(shape.kind), " of ", pending.rows, " rows to ",
                         shape.table, " (target ", options_.name, ") for source ", shape.source_table,
                         " at LSN ", FormatLsn(pending.lsn), "..", FormatLsn(pending.last_lsn),
                         column ? absl::StrCat(", column ", column) : "",
                         constraint ? absl::StrCat(", constraint ", constraint) : "", ": ", server_msg, extra));
      }
      std::string col;
      if (column) {
        col = absl::StrCat(", column ", column);
      } else if (constraint) {
        col = absl::StrCat(", constraint ", constraint);
      } else if (sqlstate && absl::string_view(sqlstate).substr(0, 2) == "22" && !shape.values.empty()) {
        col = absl::StrCat(", column ", ProbeColumn(pending));
      }
      return absl::Status(
          server.code(),
          absl::StrCat("cannot apply ", OpKindName(shape.kind), " to ", shape.table, " (target ",
                       options_.name, ") for source ", shape.source_table, " at LSN ",
                       FormatLsn(pending.lsn),
                       pending.last_lsn > pending.lsn ? absl::StrCat("..", FormatLsn(pending.last_lsn)) : "",
                       ", key (", DescribeParams(pending, true), ")", col,
                       ": ", server_msg, extra,
                       shape.kind == OpKind::kDelete ? "" : absl::StrCat("; values (", DescribeParams(pending, false), ")")));
    }
    case Pending::kTruncate:
      return absl::Status(server.code(),
                          absl::StrCat("cannot apply truncate of ", arena_.c_str() + pending.arena_offset,
                                       " (target ", options_.name, ") for source ", pending.shape->source_table,
                                       " at LSN ", FormatLsn(pending.lsn), ": ", server_msg, extra));
    case Pending::kPrepare: {
      // A statement that no longer fits the target: most often the source table changed (an
      // identity mapping writes every source column, a new one included).
      std::string hint;
      if (sqlstate && absl::string_view(sqlstate) == "42703") {
        hint = absl::StrCat("; if ", pending.shape->source_table,
                            " gained a column, add it to the target table or list the mapping's columns");
      }
      return absl::Status(
          server.code(),
          absl::StrCat("cannot prepare the ", OpKindName(pending.shape->kind), " statement for ",
                       pending.shape->table, " (target ", options_.name, ", source ",
                       pending.shape->source_table, ", first needed at LSN ", FormatLsn(pending.lsn),
                       "): ", server_msg, extra, hint, "; statement: ", arena_.c_str() + pending.arena_offset));
    }
    default:
      return absl::Status(server.code(), absl::StrCat("target ", options_.name, ": ", server_msg, extra));
  }
}

}  // namespace walshift
