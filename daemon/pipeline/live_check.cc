#include "daemon/pipeline/live_check.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "daemon/apply/open_sink.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/pg_schema_inspector.h"
#include "daemon/pipeline/privilege_check.h"
#include "daemon/state/pg_state.h"

namespace walshift {
namespace {

// What the target's catalog says about a type: its category, and for arrays and domains the
// type underneath.
struct TypeFacts {
  std::string name;
  char category = 0;
  std::string element;  // arrays: the element type (by oid)
};

absl::StatusOr<std::optional<TypeFacts>> ReadTypeFacts(PGconn* conn, const std::string& type) {
  // Domains are looked through to their base type; a type the target does not know is nullopt.
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::ExecParams(conn,
                                  "WITH RECURSIVE d(oid) AS (SELECT to_regtype($1)::oid "
                                  "  UNION ALL SELECT t.typbasetype FROM pg_type t JOIN d ON t.oid = d.oid "
                                  "  WHERE t.typtype = 'd') "
                                  "SELECT format_type(t.oid, NULL), t.typcategory::text, t.typelem::regtype::text "
                                  "FROM d JOIN pg_type t ON t.oid = d.oid WHERE t.typtype <> 'd'",
                                  {type.c_str()}, absl::StrCat("reading type ", type, " in the target")));
  if (PQntuples(r.get()) == 0) return std::nullopt;
  TypeFacts f;
  f.name = PQgetvalue(r.get(), 0, 0);
  f.category = PQgetvalue(r.get(), 0, 1)[0];
  f.element = PQgetvalue(r.get(), 0, 2);
  return f;
}

// Whether the target can read the text form of a `source` value as `target` (a column value is
// sent as text and parsed by the target column type's input function). True when some values
// may parse (text into int, numeric into int); false only when no value ever can (a timestamp
// into an int, a boolean into a date, a uuid into an inet).
absl::StatusOr<bool> TextFormReadable(PGconn* conn, const std::string& source, const std::string& target) {
  ASSIGN_OR_RETURN(auto s, ReadTypeFacts(conn, source));
  ASSIGN_OR_RETURN(auto t, ReadTypeFacts(conn, target));
  if (!s || !t) return true;  // unknown to the target: it arrives as text, judged per value
  if (s->name == t->name || t->category == 'S' || s->category == 'S') return true;
  if (t->name == "json" || t->name == "jsonb") {
    return s->category == 'N' || s->category == 'B' || s->name == "json" || s->name == "jsonb";
  }
  if (s->category == 'A' && t->category == 'A') return TextFormReadable(conn, s->element, t->element);
  // Within one category the text forms agree (int/numeric, date/timestamp, enum/enum, ...);
  // user-defined types ('U': uuid, bytea, json, ...) only with themselves. 0/1 reads as a boolean.
  if (s->category == t->category) return s->category != 'U';
  return s->category == 'N' && t->category == 'B';
}

// Every target column filled straight from a source column can read that column's values.
absl::Status CheckValueTypes(const SourceRelation& relation, const OpShape& shape, SchemaInspector& inspector,
                             PGconn* target, const std::string& where, std::vector<std::string>* problems,
                             std::vector<std::string>* notes) {
  ASSIGN_OR_RETURN(SourceTableInfo info, inspector.Describe(relation, shape.target));
  ASSIGN_OR_RETURN(auto target_types, inspector.TargetColumnTypes(shape.target, shape.table));
  for (const TargetValue& v : shape.values) {
    const SourceColumnInfo* src = info.Find(v.origin);
    auto tgt = target_types.find(v.column);
    if (v.param < 0 || src == nullptr || tgt == target_types.end()) continue;
    const bool naive = absl::StartsWith(src->type, "timestamp without time zone");
    const bool aware = absl::StartsWith(src->type, "timestamp with time zone");
    if (notes != nullptr && ((naive && tgt->second == "timestamp with time zone") ||
                             (aware && tgt->second == "timestamp without time zone"))) {
      std::string note =
          absl::StrCat(where, ": ", shape.source_table, ".", v.origin, " (", src->type, ") into ", shape.table, ".",
                       v.column, " (", tgt->second, ") in target ", shape.target,
                       naive ? " reads each value as local time in " : " writes each instant as local time in ",
                       pg::SessionTimeZone().empty() ? "the target's TimeZone" : pg::SessionTimeZone(),
                       " (source.timezone sets another zone)");
      if (std::find(notes->begin(), notes->end(), note) == notes->end()) notes->push_back(std::move(note));
    }
    ASSIGN_OR_RETURN(bool readable, TextFormReadable(target, src->type, tgt->second));
    if (!readable) {
      problems->push_back(absl::StrCat(where, " (", shape.source_table, "): source column ", v.origin, " (", src->type,
                                       ") cannot fill ", shape.table, ".", v.column, " (", tgt->second, ") in target ",
                                       shape.target,
                                       ": no value of the one type reads as the other; convert it "
                                       "with an sql: expression"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckLiveSchemas(const config::Settings& settings,
                              const std::vector<std::shared_ptr<const MappingModule>>& modules,
                              const std::string& file_name, std::vector<std::string>* notes) {
  std::vector<std::string> problems;
  ASSIGN_OR_RETURN(pg::ConnPtr source, pg::Connect(settings.source_dsn, "source", "application_name=walshiftd-check"));
  std::map<std::string, std::unique_ptr<ShapeChecker>> targets;
  for (const auto& t : settings.targets) {
    ASSIGN_OR_RETURN(targets[t.name], OpenShapeChecker(t, "walshiftd-check"));
  }
  // What a run needs besides the schemas: privileges, the publication, slots, the state schema.
  std::vector<std::string> tables;
  for (const auto& m : modules)
    if (std::find(tables.begin(), tables.end(), m->source_table()) == tables.end()) tables.push_back(m->source_table());
  RETURN_IF_ERROR(CheckSourcePrivileges(source.get(), settings, tables, &problems));
  for (const auto& t : settings.targets) {
    PGconn* conn = targets[t.name]->connection();
    if (conn != nullptr) RETURN_IF_ERROR(state::CheckStatePrivileges(conn, absl::StrCat("target ", t.name), &problems));
  }
  PgSchemaInspector inspector(settings.source_dsn, settings.targets);
  std::vector<char> whole_rows(modules.size(), 0);  // the mapping can remove rows and bring them back
  // (target, table, column) → the mapping that writes it.
  std::map<std::tuple<std::string, std::string, std::string>, std::string> claims;
  for (size_t i = 0; i < modules.size(); ++i) {
    const MappingModule& m = *modules[i];
    const std::string& where = settings.mappings[i].path;
    ASSIGN_OR_RETURN(auto relation, DescribeSourceTable(source.get(), m.source_table(), &problems, where));
    if (!relation) continue;
    if (notes != nullptr) {
      ASSIGN_OR_RETURN(std::string from, SourceRowsFrom(source.get(), *relation));
      if (!absl::StartsWith(from, "ONLY ")) {
        notes->push_back(absl::StrCat(
            m.source_table(),
            " is partitioned: its changes are published through the root, and PostgreSQL does not "
            "publish a TRUNCATE of a single partition that way; truncate the root, or DELETE a partition's rows"));
      }
    }
    if (notes != nullptr && relation->replica_identity != 'f' &&
        std::none_of(relation->columns.begin(), relation->columns.end(),
                     [](const SourceColumn& c) { return c.part_of_key; })) {
      std::string note = absl::StrCat(
          m.source_table(),
          " has no primary key and no replica identity: walshift replicates its inserts and "
          "truncates only, and while it is in the publication the legacy database refuses UPDATE and DELETE on it "
          "(PostgreSQL's rule for published tables). If they happen, add a primary key, or ALTER TABLE ",
          m.source_table(), " REPLICA IDENTITY FULL and give the mapping a key:");
      if (std::find(notes->begin(), notes->end(), note) == notes->end()) notes->push_back(std::move(note));
    }
    auto bound = m.Bind(*relation, inspector);
    if (bound.ok()) whole_rows[i] = (*bound)->writes_whole_rows();
    if (!bound.ok()) {
      if (bound.status().code() == absl::StatusCode::kUnavailable) return bound.status();
      problems.push_back(std::string(bound.status().message()));
      continue;
    }
    for (const OpShape* shape : (*bound)->shapes()) {
      ShapeChecker& checker = *targets[shape->target];
      absl::Status st = checker.Check(*shape);
      if (!st.ok()) {
        if (st.code() == absl::StatusCode::kUnavailable) return st;
        problems.push_back(
            absl::StrCat(where, " (", m.source_table(), "): target ", shape->target, ": ", st.message()));
        break;  // the other statements of this mapping fail for the same reason
      }
      if (shape->kind != OpKind::kUpsert && shape->kind != OpKind::kUpdateOnly) continue;
      if (checker.connection() != nullptr) {  // a document holds any value, typed by the source
        RETURN_IF_ERROR(CheckValueTypes(*relation, *shape, inspector, checker.connection(), where, &problems, notes));
      }
      for (size_t v = 0; v < shape->values.size(); ++v) {
        if (std::find(shape->key.begin(), shape->key.end(), static_cast<int>(v)) != shape->key.end()) continue;
        // A key change's move writes the key columns too.
        if (std::any_of(shape->match.begin(), shape->match.end(),
                        [&](const TargetValue& m) { return m.column == shape->values[v].column; }))
          continue;
        auto key = std::make_tuple(shape->target, shape->table, shape->values[v].column);
        auto [it, inserted] = claims.emplace(key, where);
        if (!inserted && it->second != where) {
          problems.push_back(absl::StrCat(where, ": target column ", shape->table, ".", shape->values[v].column,
                                          " (target ", shape->target, ") is also written by ", it->second));
        }
      }
    }
  }
  // Rows several mappings write, where one of them can take rows away and bring them back (a
  // filter, a soft delete): the others recreate what it removed unless they leave existence to
  // it (owner:).
  if (notes != nullptr) {
    for (size_t i = 0; i < modules.size(); ++i) {
      // (A JSON element is rewritten whole, but its parent row stays.)
      if (!whole_rows[i] || settings.mappings[i].common.module() == "json_array") continue;
      for (const std::string& table : modules[i]->target_tables()) {
        for (size_t j = 0; j < modules.size(); ++j) {
          if (j == i || modules[j]->target() != modules[i]->target()) continue;
          auto tables = modules[j]->target_tables();
          if (std::find(tables.begin(), tables.end(), table) == tables.end()) continue;
          auto own = modules[j]->owned();
          if (own && own->owner == modules[i]->source_table()) continue;
          notes->push_back(absl::StrCat(
              "warning: ", settings.mappings[i].path, " (", modules[i]->source_table(), ") removes rows of ", table,
              " (filter or soft delete) that ", settings.mappings[j].path, " (", modules[j]->source_table(),
              ") also writes, and ", settings.mappings[j].path, " would write them again without ",
              modules[i]->source_table(), "'s columns: give it owner: ", modules[i]->source_table()));
        }
      }
    }
  }
  if (!problems.empty()) return config::ProblemsStatus(file_name, problems);
  return absl::OkStatus();
}

}  // namespace walshift
