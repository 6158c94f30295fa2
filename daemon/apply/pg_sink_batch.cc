// PgSink: upserts and array operations batched into multi-row statements.
#include <algorithm>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "daemon/apply/pg_sink.h"
#include "daemon/core/status_macros.h"
#include "spdlog/spdlog.h"

namespace walshift {
namespace {

uint64_t HashBytes(uint64_t h, const char* data, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    h ^= static_cast<unsigned char>(data[i]);
    h *= 1099511628211ULL;
  }
  return h;
}

}  // namespace
}  // namespace walshift

namespace walshift {

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
  auto it =
      v.run_statements.empty() && !v.key_positions.empty() ? batch_.rows_by_key.find(h) : batch_.rows_by_key.end();
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
    auto c = pg::Connect(options_.dsn, absl::StrCat("target ", options_.name), "application_name=walshiftd-catalog");
    if (c.ok()) catalog_conn_ = std::move(*c);
  }
  if (catalog_conn_) {
    // Coalescing two upserts of one key inside a statement is invisible only when nothing else
    // could observe the intermediate order: no other unique index, no exclusion constraint, no
    // foreign key from the table to itself, no user trigger.
    auto r = pg::ExecParams(catalog_conn_.get(),
                            "WITH t AS (SELECT to_regclass($1) AS oid), "
                            "k AS (SELECT array_agg(a.attnum::int ORDER BY a.attnum) AS cols FROM pg_attribute a, t "
                            "      WHERE a.attrelid = t.oid AND a.attname = ANY($2::text[])) "
                            "SELECT (SELECT count(*) FROM t WHERE t.oid IS NULL) "
                            " + (SELECT count(*) FROM pg_index i, t, k WHERE i.indrelid = t.oid AND i.indisunique AND "
                            "    (SELECT array_agg(x::int ORDER BY x) FROM unnest((i.indkey::int2[])[0:i.indnkeyatts - "
                            "1]) x) IS DISTINCT FROM k.cols) "
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

}  // namespace walshift
