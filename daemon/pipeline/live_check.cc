#include "daemon/pipeline/live_check.h"

#include <algorithm>
#include <map>
#include <optional>
#include <tuple>
#include <set>

#include "absl/strings/str_cat.h"
#include "daemon/apply/pg_sink.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/pg_schema_inspector.h"

namespace walshift {
namespace {

// The relation pgoutput would announce for `table`, read from the catalog; nullopt with a
// problem appended when it cannot be replicated.
absl::StatusOr<std::optional<SourceRelation>> DescribeSource(PGconn* conn, const std::string& table,
                                                             std::vector<std::string>* problems,
                                                             const std::string& where) {
  ASSIGN_OR_RETURN(
      pg::ResultPtr rel,
      pg::ExecParams(conn,
                     "SELECT c.oid::text, n.nspname, c.relname, c.relreplident::text, c.relkind::text "
                     "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE c.oid = to_regclass($1)",
                     {pg::QuoteQualified(table).c_str()}, "reading the source catalog"));
  if (PQntuples(rel.get()) == 0) {
    problems->push_back(absl::StrCat(where, ": source table ", table, " does not exist"));
    return std::nullopt;
  }
  SourceRelation r;
  r.oid = static_cast<Oid>(std::stoul(PQgetvalue(rel.get(), 0, 0)));
  r.schema = PQgetvalue(rel.get(), 0, 1);
  r.name = PQgetvalue(rel.get(), 0, 2);
  r.replica_identity = PQgetvalue(rel.get(), 0, 3)[0];
  r.version = 1;
  std::string kind = PQgetvalue(rel.get(), 0, 4);
  if (kind != "r" && kind != "p") {
    problems->push_back(absl::StrCat(where, ": source ", table, " is not a table"));
    return std::nullopt;
  }
  // Key columns as pgoutput flags them: the replica identity index, or the primary key.
  std::string oid = PQgetvalue(rel.get(), 0, 0);
  ASSIGN_OR_RETURN(
      pg::ResultPtr cols,
      pg::ExecParams(conn,
                     "SELECT a.attname, a.atttypid::text, a.atttypmod::text, "
                     "  CASE c.relreplident WHEN 'f' THEN true "
                     "    WHEN 'n' THEN false "
                     "    ELSE EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND "
                     "      (CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END) "
                     "      AND a.attnum = ANY(i.indkey)) END "
                     "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                     "WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped "
                     "ORDER BY a.attnum",
                     {oid.c_str()}, "reading the source columns"));
  bool any_key = false;
  for (int i = 0; i < PQntuples(cols.get()); ++i) {
    SourceColumn c;
    c.name = PQgetvalue(cols.get(), i, 0);
    c.type_oid = static_cast<Oid>(std::stoul(PQgetvalue(cols.get(), i, 1)));
    c.type_modifier = std::stoi(PQgetvalue(cols.get(), i, 2));
    c.part_of_key = PQgetvalue(cols.get(), i, 3)[0] == 't';
    any_key |= c.part_of_key;
    r.columns.push_back(std::move(c));
  }
  if (!any_key) {
    problems->push_back(absl::StrCat(
        where, ": source table ", table, " has no primary key and no usable REPLICA IDENTITY; "
        "its updates and deletes cannot be replicated (add a primary key, or ALTER TABLE ... "
        "REPLICA IDENTITY USING INDEX / FULL)"));
    return std::nullopt;
  }
  return r;
}

}  // namespace

absl::Status CheckLiveSchemas(const config::Settings& settings,
                              const std::vector<std::shared_ptr<const MappingModule>>& modules,
                              const std::string& file_name) {
  std::vector<std::string> problems;
  ASSIGN_OR_RETURN(pg::ConnPtr source, pg::Connect(settings.source_dsn, "source",
                                                   "application_name=walshiftd-check"));
  std::map<std::string, pg::ConnPtr> targets;
  std::map<std::string, std::string> target_dsns;
  for (const auto& t : settings.targets) {
    ASSIGN_OR_RETURN(targets[t.name], pg::Connect(t.dsn, absl::StrCat("target ", t.name),
                                                  "application_name=walshiftd-check"));
    target_dsns[t.name] = t.dsn;
  }
  PgSchemaInspector inspector(settings.source_dsn, target_dsns);
  // (target, table, column) → the mapping that writes it.
  std::map<std::tuple<std::string, std::string, std::string>, std::string> claims;
  for (size_t i = 0; i < modules.size(); ++i) {
    const MappingModule& m = *modules[i];
    const std::string& where = settings.mappings[i].path;
    ASSIGN_OR_RETURN(auto relation, DescribeSource(source.get(), m.source_table(), &problems, where));
    if (!relation) continue;
    auto bound = m.Bind(*relation, inspector);
    if (!bound.ok()) {
      if (bound.status().code() == absl::StatusCode::kUnavailable) return bound.status();
      problems.push_back(std::string(bound.status().message()));
      continue;
    }
    for (const OpShape* shape : (*bound)->shapes()) {
      absl::Status st = PgSink::ValidateShape(targets[shape->target].get(), *shape);
      if (!st.ok()) {
        if (st.code() == absl::StatusCode::kUnavailable) return st;
        problems.push_back(absl::StrCat(where, " (", m.source_table(), "): target ", shape->target,
                                        ": ", st.message()));
        break;  // the other statements of this mapping fail for the same reason
      }
      if (shape->kind != OpKind::kUpsert && shape->kind != OpKind::kUpdateOnly) continue;
      for (size_t v = 0; v < shape->values.size(); ++v) {
        if (std::find(shape->key.begin(), shape->key.end(), static_cast<int>(v)) != shape->key.end())
          continue;
        auto key = std::make_tuple(shape->target, shape->table, shape->values[v].column);
        auto [it, inserted] = claims.emplace(key, where);
        if (!inserted && it->second != where) {
          problems.push_back(absl::StrCat(where, ": target column ", shape->table, ".",
                                          shape->values[v].column, " (target ", shape->target,
                                          ") is also written by ", it->second));
        }
      }
    }
  }
  if (!problems.empty()) return config::ProblemsStatus(file_name, problems);
  return absl::OkStatus();
}

}  // namespace walshift
