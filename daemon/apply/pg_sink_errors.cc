// PgSink: what a failed statement is reported as (table, key, column, LSN, values).
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

constexpr size_t kMaxShownValue = 64;

std::string Shorten(absl::string_view v) {
  if (v.size() <= kMaxShownValue) return std::string(v);
  return absl::StrCat(v.substr(0, kMaxShownValue), "... (", v.size(), " bytes)");
}

}  // namespace
}  // namespace walshift

namespace walshift {

absl::Status PgSink::BrokenConnection(absl::string_view what) {
  std::string msg = conn_ ? PQerrorMessage(conn_.get()) : "";
  return absl::UnavailableError(
      absl::StrCat("target ", options_.name, ": ", what, ": ", absl::StripTrailingAsciiWhitespace(msg)));
}

std::vector<std::pair<DatumKind, absl::string_view>> PgSink::DecodeParams(const Pending& pending) const {
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
  for (const TargetValue& v : IsArrayOp(shape.kind) ? shape.array.element : shape.values) {
    if (v.param < 0 || v.param >= static_cast<int>(params.size()) || params[v.param].first != DatumKind::kText)
      continue;
    auto type = pg::ExecParams(conn->get(),
                               "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                               "to_regclass($1) AND attname = $2 AND attnum > 0 AND NOT attisdropped",
                               {pg::QuoteQualified(shape.table).c_str(), v.column.c_str()}, "probe");
    if (!type.ok() || PQntuples(type->get()) != 1) continue;
    std::string type_name = PQgetvalue(type->get(), 0, 0);
    std::string value(params[v.param].second);
    // Assignment semantics (an explicit cast would silently cut a too long varchar).
    (void)pg::Exec(conn->get(), "BEGIN", "probe");
    auto made = pg::Exec(conn->get(), absl::StrCat("CREATE TEMP TABLE walshift_probe (v ", type_name, ")"), "probe");
    auto insert = made.ok()
                      ? pg::ExecParams(conn->get(), "INSERT INTO walshift_probe VALUES ($1)", {value.c_str()}, "probe")
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
      case DatumKind::kNull:
        return "NULL";
      case DatumKind::kUnchangedToast:
        return "(unchanged)";
      case DatumKind::kText:
        return Shorten(params[slot].second);
    }
    return "?";
  };
  std::vector<std::string> parts;
  auto describe = [&](const TargetValue& v) {
    if (v.param >= 0) {
      parts.push_back(absl::StrCat(v.column, "=", show(v.param)));
    } else {
      std::vector<std::string> ins;
      for (int in : v.sql_inputs) ins.push_back(absl::StrCat(shape.inputs[in].name, "=", show(shape.inputs[in].param)));
      parts.push_back(absl::StrCat(v.column, "=(", v.sql, " with ", absl::StrJoin(ins, ", "), ")"));
    }
  };
  if (IsArrayOp(shape.kind)) {
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
    describe(shape.values[i]);
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
  if (detail) {
    absl::StrAppend(&extra, "; detail: ", pg::ShowValues() || !sqlstate ? std::string(detail)
                                                                         : pg::RedactValues(detail, sqlstate));
  }
  if (!pg::ShowValues() && sqlstate && pending.shape != nullptr &&
      (absl::string_view(sqlstate) == "23505" || absl::string_view(sqlstate) == "23P01")) {
    // Keys of the row itself stay; another unique index's values go.
    std::vector<std::string> key;
    for (int k : pending.shape->key) key.push_back(pending.shape->values[k].column);
    std::string row_key = absl::StrJoin(key, ", ");
    server_msg = pg::RedactOtherKeys(server_msg, row_key);
    extra = pg::RedactOtherKeys(extra, row_key);
  }
  switch (pending.kind) {
    case Pending::kStatement: {
      const OpShape& shape = *pending.shape;
      if (pending.plain_insert && sqlstate && absl::string_view(sqlstate) == "23505") {
        conflict_table_ = shape.table;
        return absl::AlreadyExistsError(
            absl::StrCat("target ", options_.name, ": ", shape.table, " already has rows that source inserts at LSN ",
                         FormatLsn(pending.lsn), "..", FormatLsn(pending.last_lsn), " create (", server_msg, ")"));
      }
      if (pending.rows > 1) {
        return absl::Status(
            server.code(),
            absl::StrCat("cannot apply ", OpKindName(shape.kind), " of ", pending.rows, " rows to ", shape.table,
                         " (target ", options_.name, ") for source ", shape.source_table, " at LSN ",
                         FormatLsn(pending.lsn), "..", FormatLsn(pending.last_lsn),
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
          absl::StrCat(
              "cannot apply ", OpKindName(shape.kind), " to ", shape.table, " (target ", options_.name, ") for source ",
              shape.source_table, " at LSN ", FormatLsn(pending.lsn),
              pending.last_lsn > pending.lsn ? absl::StrCat("..", FormatLsn(pending.last_lsn)) : "", ", key (",
              DescribeParams(pending, true), ")", col, ": ", server_msg, extra,
              shape.kind == OpKind::kDelete ? ""
              : pg::ShowValues()            ? absl::StrCat("; values (", DescribeParams(pending, false), ")")
                                            : "; values redacted (log.values: redact)"));
    }
    case Pending::kTruncate:
      return absl::Status(server.code(),
                          absl::StrCat("cannot apply truncate of ", arena_.c_str() + pending.arena_offset, " (target ",
                                       options_.name, ") for source ", pending.shape->source_table, " at LSN ",
                                       FormatLsn(pending.lsn), ": ", server_msg, extra));
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
          absl::StrCat("cannot prepare the ", OpKindName(pending.shape->kind), " statement for ", pending.shape->table,
                       " (target ", options_.name, ", source ", pending.shape->source_table, ", first needed at LSN ",
                       FormatLsn(pending.lsn), "): ", server_msg, extra, hint,
                       "; statement: ", arena_.c_str() + pending.arena_offset));
    }
    default:
      return absl::Status(server.code(), absl::StrCat("target ", options_.name, ": ", server_msg, extra));
  }
}

}  // namespace walshift
