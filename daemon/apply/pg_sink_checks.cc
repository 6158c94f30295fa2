// PgSink: checks of operation shapes against the live target schema (walshiftd --check, start).
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

absl::StatusOr<std::map<std::string, std::string>> PgSink::ReadColumnTypes(PGconn* conn, const std::string& table) {
  ASSIGN_OR_RETURN(
      pg::ResultPtr r,
      pg::ExecParams(conn,
                     absl::StrCat("SELECT a.attname, ", pg::kUnlimitedTypeSql,
                                  " FROM pg_attribute a "
                                  "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped"),
                     {pg::QuoteQualified(table).c_str()}, absl::StrCat("reading the column types of ", table)));
  std::map<std::string, std::string> out;
  for (int i = 0; i < PQntuples(r.get()); ++i) out[PQgetvalue(r.get(), i, 0)] = PQgetvalue(r.get(), i, 1);
  return out;
}

absl::Status PgSink::ValidateShape(const OpShape& shape) {
  ASSIGN_OR_RETURN(PGconn * c, CatalogConnection());
  return ValidateShape(c, shape);
}

absl::Status PgSink::ValidateShape(PGconn* conn, const OpShape& shape) {
  PgStatementPlan v;
  PlanStatement(shape, std::string(shape.values.size(), '0'), &v);
  std::map<std::string, std::string> types;
  if (shape.kind != OpKind::kTruncate && !IsArrayOp(shape.kind)) {
    ASSIGN_OR_RETURN(types, ReadColumnTypes(conn, shape.table));
    v.column_types = &types;
  }
  RETURN_IF_ERROR(ValidateStatement(conn, shape, RenderStatement(v, 1), v.params.size()));
  if (IsArrayOp(shape.kind)) {
    for (const std::string& sql : RenderArrayRun(shape))
      RETURN_IF_ERROR(ValidateStatement(conn, shape, sql, v.params.size()));
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
    spdlog::warn(
        "the GIN index on {}.{} in target {} keeps fastupdate on, so every update and delete of {} "
        "searches its pending list; turn it off ({}) or create the index as: {}",
        shape.table, column, shape.target, shape.source_table, def, advice);
    return;
  }
  spdlog::warn(
      "no GIN index on {}.{} in target {}: every update and delete of {} scans the whole table for its "
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
                                              nulls.empty() ? "" : absl::StrCat("(", absl::StrJoin(nulls, ", "), ")"))
                                     .c_str()));
    st = pg::ResultStatus(conn, e.get(), "server");
    pg::ResultPtr d(PQexec(conn, "DEALLOCATE walshift_check"));
    if (st.ok()) return absl::OkStatus();
  }
  std::string grant;
  if (absl::StrContains(st.message(), "SQLSTATE 42501")) {
    // EXPLAIN checks the privileges the statement needs: name the grant that covers a run.
    auto [schema, table] = pg::SplitQualified(shape.table);
    std::string role = "the role", schema_sql = pg::QuoteIdent(schema), table_sql = pg::QuoteQualified(shape.table);
    auto names = pg::ExecParams(conn, "SELECT quote_ident(current_user), quote_ident($1), quote_ident($2)",
                                {schema.c_str(), table.c_str()}, "naming the grant");
    if (names.ok()) {  // quoted only where they must be
      role = PQgetvalue(names->get(), 0, 0);
      schema_sql = PQgetvalue(names->get(), 0, 1);
      table_sql = absl::StrCat(schema_sql, ".", PQgetvalue(names->get(), 0, 2));
    }
    const char* privileges = shape.kind == OpKind::kTruncate ? "TRUNCATE" : "SELECT, INSERT, UPDATE, DELETE";
    grant = absl::StrCat("; walshiftd's role needs USAGE on the schema and ", privileges,
                         " on the table: GRANT USAGE ON SCHEMA ", schema_sql, " TO ", role, "; GRANT ", privileges,
                         " ON ", table_sql, " TO ", role);
  }
  return absl::Status(st.code(), absl::StrCat(OpKindName(shape.kind), " into ", shape.table, ": ",
                                              absl::StripPrefix(st.message(), "server: "), grant, "; statement: ", sql));
}

}  // namespace walshift
