// walshiftctl cutover --config FORWARD.yaml --reverse-config REVERSE.yaml [options]
// walshiftctl rollback --config FORWARD.yaml --reverse-config REVERSE.yaml [options]
//
// The end of a migration, as steps that each print what they proved and refuse to go on when
// they cannot. A cutover:
//   1 preflight        both configs pair up (each ignores the other's replication origin), the
//                      reverse config loads, nothing is parked, the forward pipeline is running
//   2 writes stopped   legacy writes stop (--stop-writes revoke: INSERT/UPDATE/DELETE/TRUNCATE
//                      revoked on the mapped legacy tables from every role but walshift's; or
//                      application: the application stopped them). A SHARE lock on the tables
//                      waits for the writes in flight; the legacy position then is recorded.
//   3 drained          every forward target's checkpoint passed that position
//   4 verified         the verify gate (walshiftctl verify --gate) of the forward pipeline
//   5 sequences        every new-schema sequence behind a mapped column set past its legacy one
//   6 reverse          the reverse pipeline's slot exists (nothing the new schema is given from
//                      now on is lost) and its walshiftd streams
// then "cut over at LSN ..., reverse streaming from ...". The application may write to the new
// schema. A rollback is the mirror: new-schema writes stop, the reverse pipeline drains and is
// gated, sequences go back, and the privileges the cutover revoked on the legacy tables are
// granted back; the forward pipeline never stopped (it passes over what the reverse applied).
// Every step is recorded in walshift.cutover in the new schema's database before the next
// starts: an interrupted cutover (walshiftctl or walshiftd killed) continues where it stopped
// when run again, or is undone with --abort.

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "daemon/config/config.h"
#include "daemon/core/change.h"
#include "daemon/core/crash_point.h"
#include "daemon/core/lsn.h"
#include "daemon/core/origin.h"
#include "daemon/core/status_macros.h"
#include "daemon/pipeline/live_check.h"
#include "daemon/pg/pg_util.h"
#include "daemon/source/pg_replication_source.h"
#include "daemon/state/pg_state.h"
#include "daemon/state/target_state.h"
#include "tools/walshiftctl/commands.h"
#include "tools/walshiftctl/reverse.h"
#include "transforms/columns/columns.pb.h"
#include "transforms/merge/merge.pb.h"
#include "transforms/registry.h"
#include "transforms/soft_delete/soft_delete.pb.h"
#include "transforms/split/split.pb.h"
#include "daemon/config/yaml_proto.h"
#include "spdlog/spdlog.h"

namespace walshift::ctl {
namespace {

struct Options {
  std::string forward_path, reverse_path;
  std::string stop_writes = "revoke";  // revoke | application
  int64_t margin = 1000;
  double settle = 120;
  bool abort = false;
  bool status = false;
  bool finish = false;
};

// A forward pipeline and its reverse one, checked to pair up.
struct Pair {
  config::Settings fwd, rev;
  const config::TargetSettings* fresh = nullptr;   // the forward target the reverse pipeline reads
  const config::TargetSettings* legacy = nullptr;  // the reverse pipeline's target
  std::string forward_origin, reverse_origin;
};

absl::StatusOr<Pair> LoadPair(const Options& o) {
  Pair p;
  ASSIGN_OR_RETURN(p.fwd, config::LoadSettingsFile(o.forward_path));
  ASSIGN_OR_RETURN(p.rev, config::LoadSettingsFile(o.reverse_path));
  (void)pg::SetConnectionDefaults(p.fwd.connection_defaults);
  std::vector<std::string> problems;
  for (const auto& t : p.fwd.targets)
    if (!t.documents() && t.dsn == p.rev.source_dsn) p.fresh = &t;
  if (p.fresh == nullptr) {
    problems.push_back(absl::StrCat("the reverse pipeline ", p.rev.proto.pipeline(), " (", o.reverse_path,
                                    ") must read the database of one of ", p.fwd.proto.pipeline(),
                                    "'s targets: its source DSN is none of theirs"));
  }
  if (p.rev.targets.size() != 1 || p.rev.targets[0].documents() || p.rev.targets[0].dsn != p.fwd.source_dsn) {
    problems.push_back(absl::StrCat("the reverse pipeline ", p.rev.proto.pipeline(),
                                    " must have one target: the forward pipeline's source database (the legacy "
                                    "schema), with the same DSN"));
  } else {
    p.legacy = &p.rev.targets[0];
  }
  if (p.fwd.proto.pipeline() == p.rev.proto.pipeline()) problems.push_back("the two pipelines have the same name");
  if (p.rev.proto.snapshot().mode() != v1::SNAPSHOT_NEVER) {
    problems.push_back(absl::StrCat(o.reverse_path,
                                    ": snapshot.mode must be never (both sides are equal at the cutover; a copy "
                                    "would write the new schema's rows over the legacy ones)"));
  }
  if (p.fresh && p.legacy) {
    p.forward_origin = state::ReplicationOriginName(p.fwd.proto.pipeline(), p.fresh->name);
    p.reverse_origin = state::ReplicationOriginName(p.rev.proto.pipeline(), p.legacy->name);
    auto lists = [](const config::Settings& s, const std::string& origin) {
      const auto& l = s.proto.source().ignore_origins();
      return std::find(l.begin(), l.end(), origin) != l.end();
    };
    if (!lists(p.rev, p.forward_origin)) {
      problems.push_back(absl::StrCat(o.reverse_path, ": source.ignore_origins must list ", p.forward_origin,
                                      " (what the forward pipeline applies), or the reverse pipeline would send the "
                                      "forward pipeline's changes back to the legacy schema"));
    }
    if (!lists(p.fwd, p.reverse_origin)) {
      problems.push_back(absl::StrCat(o.forward_path, ": source.ignore_origins must list ", p.reverse_origin,
                                      " (what the reverse pipeline applies), or the forward pipeline would send the "
                                      "new schema's changes back to it; add it and restart the forward walshiftd"));
    }
  }
  // Both pipelines against the live schemas, as walshiftd --check does.
  for (const auto& [s, path] : {std::pair{&p.fwd, o.forward_path}, std::pair{&p.rev, o.reverse_path}}) {
    auto modules = transforms::BuildModules(*s, path);
    absl::Status st = modules.status();
    if (modules.ok()) st = CheckLiveSchemas(*s, *modules, path);
    if (!st.ok()) problems.push_back(std::string(st.message()));
  }
  if (!problems.empty()) return absl::FailedPreconditionError(absl::StrJoin(problems, "\n"));
  return p;
}

std::string Role(PGconn* c) {
  auto r = pg::Exec(c, "SELECT current_user", "reading the role");
  return r.ok() ? PQgetvalue(r->get(), 0, 0) : "";
}

// The source tables of a pipeline's mappings, schema.table.
std::vector<std::string> SourceTables(const config::Settings& s) {
  std::set<std::string> t;
  for (const auto& m : s.mappings) t.insert(m.common.source());
  return {t.begin(), t.end()};
}

std::string RegclassArray(const std::vector<std::string>& tables) {
  std::vector<std::string> items;
  for (const auto& t : tables) items.push_back(absl::StrCat("to_regclass(", pg::QuoteLiteral(pg::QuoteQualified(t)), ")"));
  return absl::StrCat("ARRAY[", absl::StrJoin(items, ", "), "]::regclass[]");
}

// The tables and every partition below them: an application may write a partition directly.
std::string TablesAndPartitions(const std::vector<std::string>& tables) {
  // pg_partition_tree() lists nothing for a table that is not partitioned.
  const std::string all = RegclassArray(tables);
  return absl::StrCat("(SELECT x AS oid FROM unnest(", all, ") x WHERE x IS NOT NULL UNION SELECT p.relid FROM unnest(",
                      all, ") t(x) CROSS JOIN LATERAL pg_catalog.pg_partition_tree(t.x) p)");
}

std::string TextArray(const std::vector<std::string>& items) {
  std::vector<std::string> quoted;
  for (const auto& k : items) quoted.push_back(pg::QuoteLiteral(k));
  return absl::StrCat("ARRAY[", absl::StrJoin(quoted, ", "), "]::text[]");
}

// The write privileges on `tables` (and their partitions) of every role but `keep`, table-wide
// and per column, as the JSON the state keeps: [{database, schema, name, role, privileges
// [, columns] [, grant_option]}] (grant_option: the role may grant them on, restored with them).
absl::StatusOr<std::string> WriteGrants(PGconn* c, const std::string& database, const std::vector<std::string>& tables,
                                        const std::vector<std::string>& keep, std::vector<std::string>* superusers,
                                        std::string* listing) {
  const std::string rel = TablesAndPartitions(tables);
  const std::string others = absl::StrCat("coalesce(r.rolname, 'PUBLIC') <> ALL (", TextArray(keep), ")");
  std::string sql = absl::StrCat(
      "WITH g AS ("
      "  SELECT n.nspname AS schema, c.relname AS name, coalesce(r.rolname, 'PUBLIC') AS role, "
      "         string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) AS privs, NULL::jsonb AS cols, "
      "         coalesce(bool_or(r.rolsuper), false) AS super, a.is_grantable AS grantable "
      "  FROM ", rel, " rel JOIN pg_class c ON c.oid = rel.oid JOIN pg_namespace n ON n.oid = c.relnamespace "
      "  CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a "
      "  LEFT JOIN pg_roles r ON r.oid = a.grantee "
      "  WHERE a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE') AND ", others,
      " GROUP BY 1, 2, 3, a.is_grantable "
      "  UNION ALL "
      "  SELECT n.nspname, c.relname, coalesce(r.rolname, 'PUBLIC'), a.privilege_type, "
      "         jsonb_agg(att.attname ORDER BY att.attnum), coalesce(bool_or(r.rolsuper), false), a.is_grantable "
      "  FROM ", rel, " rel JOIN pg_class c ON c.oid = rel.oid JOIN pg_namespace n ON n.oid = c.relnamespace "
      "  JOIN pg_attribute att ON att.attrelid = c.oid AND att.attnum > 0 AND NOT att.attisdropped "
      "   AND att.attacl IS NOT NULL "
      "  CROSS JOIN LATERAL aclexplode(att.attacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
      "  WHERE a.privilege_type IN ('INSERT', 'UPDATE') AND ", others, " GROUP BY 1, 2, 3, 4, a.is_grantable) "
      "SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object('database', ", pg::QuoteLiteral(database),
      ", 'schema', g.schema, 'name', g.name, 'role', g.role, 'privileges', g.privs, 'columns', g.cols, "
      "'grant_option', CASE WHEN g.grantable THEN true END)) "
      "ORDER BY g.schema, g.name, g.role, g.cols IS NOT NULL, g.privs, g.grantable), '[]')::text, "
      "coalesce(string_agg(DISTINCT g.role, ', ') FILTER (WHERE g.super), ''), "
      "coalesce(string_agg(format('%s on %I.%I: %s%s', g.role, g.schema, g.name, g.privs, "
      "  CASE WHEN g.cols IS NULL THEN '' ELSE ' (' || (SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(g.cols) "
      "  x) || ')' END || CASE WHEN g.grantable THEN ' WITH GRANT OPTION' ELSE '' END), E'\n' "
      "  ORDER BY g.schema, g.name, g.role, g.cols IS NOT NULL, g.privs, g.grantable), '') FROM g");
  ASSIGN_OR_RETURN(pg::ResultPtr r, pg::Exec(c, sql, "reading who may write the mapped tables"));
  std::string supers = PQgetvalue(r.get(), 0, 1);
  if (!supers.empty()) *superusers = absl::StrSplit(supers, ", ");
  if (listing != nullptr) *listing = PQgetvalue(r.get(), 0, 2);
  return std::string(PQgetvalue(r.get(), 0, 0));
}

// REVOKE (or GRANT back) the privileges in `grants` (the JSON above) of `database`. The entries
// come from the state table: only write privileges are accepted and every name is quoted.
absl::Status ApplyGrants(PGconn* c, const std::string& grants, const std::string& database, bool grant) {
  std::string sql = absl::StrCat(
      "DO $d$ DECLARE g jsonb; who text; cols text; BEGIN "
      "FOR g IN SELECT * FROM jsonb_array_elements(", pg::QuoteLiteral(grants), "::jsonb) LOOP "
      "  CONTINUE WHEN g->>'database' IS DISTINCT FROM ", pg::QuoteLiteral(database), "; "
      "  IF coalesce(g->>'privileges', '') !~ '^(INSERT|UPDATE|DELETE|TRUNCATE)(, (INSERT|UPDATE|DELETE|TRUNCATE))*$' "
      "     OR g->>'schema' IS NULL OR g->>'name' IS NULL OR g->>'role' IS NULL THEN "
      "    RAISE EXCEPTION 'walshift.cutover holds an entry that is not a write privilege: %', g; "
      "  END IF; "
      "  who := CASE WHEN g->>'role' = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(g->>'role') END; "
      "  cols := CASE WHEN g ? 'columns' THEN ' (' || (SELECT string_agg(quote_ident(x), ', ') "
      "          FROM jsonb_array_elements_text(g->'columns') x) || ')' ELSE '' END; "
      "  EXECUTE format(", grant ? "'GRANT %s%s ON %I.%I TO %s%s'" : "'REVOKE %s%s ON %I.%I FROM %s%s'",
      ", g->>'privileges', cols, g->>'schema', g->>'name', who, ",
      grant ? "CASE WHEN g->>'grant_option' = 'true' THEN ' WITH GRANT OPTION' ELSE '' END" : "''", "); "
      "END LOOP; END $d$");
  return pg::Exec(c, sql, grant ? "granting the write privileges back" : "revoking the write privileges").status();
}

// Who can still write `tables` (or a partition) after the revoke, but `keep` and superusers:
// grants another role made (a REVOKE removes only its own role's), membership in a role that
// keeps its privileges (pg_write_all_data, walshift's own), a table the revoking role does not
// own. One line per role and table.
absl::StatusOr<std::vector<std::string>> RemainingWriters(PGconn* c, const std::vector<std::string>& tables,
                                                          const std::vector<std::string>& keep) {
  std::string sql = absl::StrCat(
      "SELECT r.rolname || ' on ' || c.oid::regclass::text || ' (' || concat_ws(', ', "
      "  CASE WHEN has_table_privilege(r.oid, c.oid, 'INSERT') THEN 'INSERT' END, "
      "  CASE WHEN has_table_privilege(r.oid, c.oid, 'UPDATE') THEN 'UPDATE' END, "
      "  CASE WHEN has_table_privilege(r.oid, c.oid, 'DELETE') THEN 'DELETE' END, "
      "  CASE WHEN has_table_privilege(r.oid, c.oid, 'TRUNCATE') THEN 'TRUNCATE' END, "
      "  CASE WHEN NOT has_table_privilege(r.oid, c.oid, 'INSERT, UPDATE') "
      "        AND has_any_column_privilege(r.oid, c.oid, 'INSERT, UPDATE') THEN 'INSERT or UPDATE of columns' END) "
      "  || CASE WHEN EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles k ON k.oid = m.roleid "
      "                       WHERE m.member = r.oid AND k.rolname = ANY (", TextArray(keep), ")) "
      "          THEN ', as a member of walshift''s role' ELSE '' END || ')' "
      "FROM ", TablesAndPartitions(tables), " rel JOIN pg_class c ON c.oid = rel.oid CROSS JOIN pg_roles r "
      "WHERE NOT r.rolsuper AND r.rolname !~ '^pg_' AND r.rolname <> ALL (", TextArray(keep), ") "
      "  AND (has_table_privilege(r.oid, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') "
      "       OR has_any_column_privilege(r.oid, c.oid, 'INSERT, UPDATE')) "
      "ORDER BY 1");
  ASSIGN_OR_RETURN(pg::ResultPtr r, pg::Exec(c, sql, "reading who may still write the mapped tables"));
  std::vector<std::string> out;
  for (int i = 0; i < PQntuples(r.get()); ++i) out.push_back(PQgetvalue(r.get(), i, 0));
  return out;
}

// Sessions of walshift's own roles that walshift did not open: a revoke cannot stop them.
absl::StatusOr<std::vector<std::string>> ForeignSessions(PGconn* c, const std::vector<std::string>& keep) {
  ASSIGN_OR_RETURN(
      pg::ResultPtr r,
      pg::Exec(c,
               absl::StrCat("SELECT DISTINCT usename || ' (application_name ' || quote_literal(application_name) || ', '"
                            " || coalesce(host(client_addr), 'local') || ')' FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = "
                            "current_database() AND usename = ANY (",
                            TextArray(keep), ") AND application_name !~ '^walshift' ORDER BY 1"),
               "reading the sessions of walshift's roles"));
  std::vector<std::string> out;
  for (int i = 0; i < PQntuples(r.get()); ++i) out.push_back(PQgetvalue(r.get(), i, 0));
  return out;
}

// `revoked` without the entries of `database` (granted back).
absl::StatusOr<std::string> Without(PGconn* c, const std::string& revoked, const std::string& database) {
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::Exec(c,
                            absl::StrCat("SELECT coalesce(jsonb_agg(e), '[]')::text FROM jsonb_array_elements(",
                                         pg::QuoteLiteral(revoked.empty() ? "[]" : revoked),
                                         "::jsonb) e WHERE e->>'database' <> ", pg::QuoteLiteral(database)),
                            "recording the privileges"));
  return std::string(PQgetvalue(r.get(), 0, 0));
}

// Grants back what `row` revoked on `database` and forgets it.
absl::Status GrantBack(PGconn* target_db, PGconn* state_db, state::CutoverRow* row, const std::string& database) {
  RETURN_IF_ERROR(ApplyGrants(target_db, row->revoked, database, /*grant=*/true));
  ASSIGN_OR_RETURN(row->revoked, Without(state_db, row->revoked, database));
  return absl::OkStatus();
}

// Waits for the writes in flight on `tables` (a SHARE lock waits for every writer and holds new
// ones back for the instant it is held), then returns the WAL position after them and commits a
// fence message past it, so that the pipeline reading this database moves its checkpoint there.
absl::StatusOr<Lsn> StopPosition(PGconn* c, const std::vector<std::string>& tables, double settle) {
  std::vector<std::string> quoted;
  for (const auto& t : tables) quoted.push_back(pg::QuoteQualified(t));
  RETURN_IF_ERROR(pg::Exec(c, "BEGIN", "locking the mapped tables").status());
  RETURN_IF_ERROR(
      pg::Exec(c, absl::StrCat("SET LOCAL lock_timeout = '", static_cast<int>(settle * 1000), "ms'"), "lock_timeout")
          .status());
  absl::Status locked =
      pg::Exec(c, absl::StrCat("LOCK TABLE ", absl::StrJoin(quoted, ", "), " IN SHARE MODE"),
               "waiting for the writes in flight on the mapped tables")
          .status();
  if (!locked.ok()) {
    (void)pg::Exec(c, "ROLLBACK", "");
    return locked;
  }
  ASSIGN_OR_RETURN(pg::ResultPtr r, pg::Exec(c, "SELECT pg_current_wal_insert_lsn()::text", "reading the position"));
  Lsn at = ParseLsn(PQgetvalue(r.get(), 0, 0)).value_or(kInvalidLsn);
  RETURN_IF_ERROR(pg::Exec(c, "COMMIT", "locking the mapped tables").status());
  RETURN_IF_ERROR(
      pg::Exec(c, "SELECT pg_logical_emit_message(true, 'walshift.fence', 'cutover')", "writing the fence").status());
  return at;
}

// Until every target of `s` has its checkpoint at or past `goal`.
absl::Status WaitCheckpoints(const config::Settings& s, Lsn goal, double settle) {
  absl::Time deadline = absl::Now() + absl::Seconds(settle);
  for (const auto& t : s.targets) {
    state::TargetStateReader reader(t, s.proto.pipeline());
    for (;;) {
      auto row = reader.Checkpoint();
      Lsn at = row.ok() && *row ? (*row)->lsn : kInvalidLsn;
      if (at != kInvalidLsn && at >= goal) break;
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            "pipeline ", s.proto.pipeline(), ": target ", t.name, " has applied up to ",
            at == kInvalidLsn ? "nothing" : FormatLsn(at), ", not yet ", FormatLsn(goal), " after ", settle,
            " s", row.ok() ? "" : absl::StrCat(" (", row.status().message(), ")"),
            "; is its walshiftd running? Run the command again to go on waiting"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  return absl::OkStatus();
}

// Per forward mapping, the pairs (source table.column, target table.column) copied as they are:
// where a sequence behind the source column has a counterpart behind the target column.
std::vector<std::pair<std::string, std::string>> CopiedColumns(const config::Settings& s, const std::string& target) {
  std::vector<std::pair<std::string, std::string>> out;
  auto add = [&](const std::string& src, const std::string& table,
                 const google::protobuf::Map<std::string, transforms::columns::ColumnSource>& cols) {
    for (const auto& [to, from] : cols)
      if (from.value_case() == transforms::columns::ColumnSource::kColumn)
        out.push_back({absl::StrCat(src, "\t", from.column()), absl::StrCat(QualifiedTableName(table), "\t", to)});
  };
  for (const auto& m : s.mappings) {
    if (m.common.target() != target) continue;
    std::vector<std::string> ignored;
    const std::string& mod = m.common.module();
    // columns and soft_delete: one target table, the source's name unless renamed, and with no
    // columns listed every column keeps its name.
    auto one_table = [&](auto c) {
      config::ParseYamlInto(m.module_node, &c, m.path, &ignored);
      std::string table = c.table().empty() ? m.common.source() : c.table();
      if (c.columns().empty()) out.push_back({absl::StrCat(m.common.source(), "\t*"), QualifiedTableName(table)});
      add(m.common.source(), table, c.columns());
    };
    if (mod == "columns") {
      one_table(transforms::columns::ColumnsConfig());
    } else if (mod == "soft_delete") {
      one_table(transforms::soft_delete::SoftDeleteConfig());
    } else if (mod == "merge") {
      transforms::merge::MergeConfig c;
      config::ParseYamlInto(m.module_node, &c, m.path, &ignored);
      add(m.common.source(), c.table(), c.columns());
    } else if (mod == "split") {
      transforms::split::SplitConfig c;
      config::ParseYamlInto(m.module_node, &c, m.path, &ignored);
      for (const auto& part : c.into()) add(m.common.source(), part.table(), part.columns());
    }
  }
  return out;
}

// A sequence cutover.sequences lists, as the server names it; kNotFound naming the database when
// it is not there.
absl::StatusOr<std::string> ListedSequence(PGconn* c, const std::string& name, const char* db) {
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::ExecParams(c,
                                  "SELECT c.oid::regclass::text FROM pg_catalog.pg_class c "
                                  "WHERE c.oid = to_regclass($1) AND c.relkind = 'S'",
                                  {name.c_str()}, absl::StrCat("looking up the sequence ", name)));
  if (PQntuples(r.get()) == 0) {
    return absl::NotFoundError(absl::StrCat("cutover.sequences names ", name, ", which is not a sequence in the ", db,
                                            " database: correct the name (schema-qualified) or remove the entry"));
  }
  return std::string(PQgetvalue(r.get(), 0, 0));
}

// Sets the sequence behind every copied column of `to` past the one behind its `from` column
// (plus `margin`), never lowering one. A sequence of a mapped `to` table that no `from` sequence
// sets (its keys came from the application or an expression) is set past the highest value its
// column holds, plus `margin`: a key the other side wrote is never handed out again. `listed`:
// (from sequence, to sequence) pairs of the config (cutover.sequences), each of which must exist.
// Prints each.
absl::Status SyncSequences(PGconn* from, PGconn* to, const std::vector<std::pair<std::string, std::string>>& pairs,
                           const std::vector<std::pair<std::string, std::string>>& listed, int64_t margin,
                           const char* from_name, const char* to_name) {
  // The sequences behind columns, expanded for identity mappings (every column of the table).
  auto sequences = [](PGconn* c, const std::string& table_col) -> absl::StatusOr<std::map<std::string, std::string>> {
    std::vector<std::string> parts = absl::StrSplit(table_col, '\t');
    std::string table = parts[0];
    std::string sql = absl::StrCat(
        "SELECT a.attname, pg_get_serial_sequence(", pg::QuoteLiteral(pg::QuoteQualified(table)),
        ", a.attname) FROM pg_attribute a WHERE a.attrelid = to_regclass(", pg::QuoteLiteral(pg::QuoteQualified(table)),
        ") AND a.attnum > 0 AND NOT a.attisdropped AND pg_get_serial_sequence(",
        pg::QuoteLiteral(pg::QuoteQualified(table)), ", a.attname) IS NOT NULL",
        parts.size() > 1 && parts[1] != "*" ? absl::StrCat(" AND a.attname = ", pg::QuoteLiteral(parts[1])) : "");
    ASSIGN_OR_RETURN(pg::ResultPtr r, pg::Exec(c, sql, absl::StrCat("reading the sequences of ", table)));
    std::map<std::string, std::string> out;
    for (int i = 0; i < PQntuples(r.get()); ++i) out[PQgetvalue(r.get(), i, 0)] = PQgetvalue(r.get(), i, 1);
    return out;
  };
  auto next_value = [](PGconn* c, const std::string& seq) -> absl::StatusOr<int64_t> {
    ASSIGN_OR_RETURN(pg::ResultPtr r,
                     pg::Exec(c, absl::StrCat("SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END "
                                              "FROM ", seq),
                              absl::StrCat("reading ", seq)));
    int64_t v = 0;
    (void)absl::SimpleAtoi(PQgetvalue(r.get(), 0, 0), &v);
    return v;
  };
  int set = 0;
  std::set<std::string> done;  // `to` sequences set
  // Sets `to_seq` so that it hands out `above` + margin next, unless it is already past that.
  auto raise = [&](const std::string& to_seq, int64_t above, const std::string& why) -> absl::Status {
    done.insert(to_seq);
    ASSIGN_OR_RETURN(int64_t to_next, next_value(to, to_seq));
    int64_t goal = above + margin;
    if (to_next >= goal) {
      std::printf("    %s: next value %lld, already past %s + %lld\n", to_seq.c_str(), static_cast<long long>(to_next),
                  why.c_str(), static_cast<long long>(margin));
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(pg::Exec(to, absl::StrCat("SELECT setval(", pg::QuoteLiteral(to_seq), ", ", goal, ", false)"),
                             absl::StrCat("setting ", to_seq))
                        .status());
    std::printf("    %s: next value %lld (%s + margin %lld)\n", to_seq.c_str(), static_cast<long long>(goal),
                why.c_str(), static_cast<long long>(margin));
    ++set;
    return absl::OkStatus();
  };
  std::set<std::string> to_tables;  // every mapped `to` table
  for (const auto& [src, dst] : pairs) {
    std::vector<std::string> sp = absl::StrSplit(src, '\t');
    std::vector<std::string> dp = absl::StrSplit(dst, '\t');
    to_tables.insert(dp[0]);
    ASSIGN_OR_RETURN(auto from_seqs, sequences(from, src));
    for (const auto& [col, from_seq] : from_seqs) {
      std::string to_col = dp.size() > 1 ? dp[1] : col;
      ASSIGN_OR_RETURN(auto to_seqs, sequences(to, absl::StrCat(dp[0], "\t", to_col)));
      if (to_seqs.empty()) {
        std::printf("    %s.%s has no sequence in the %s schema (%s.%s uses %s): new keys come from the application\n",
                    dp[0].c_str(), to_col.c_str(), to_name, sp[0].c_str(), col.c_str(), from_seq.c_str());
        continue;
      }
      ASSIGN_OR_RETURN(int64_t from_next, next_value(from, from_seq));
      RETURN_IF_ERROR(raise(to_seqs.begin()->second, from_next,
                            absl::StrCat(from_name, " ", from_seq, " next ", from_next)));
    }
  }
  for (const auto& [from_listed, to_listed] : listed) {
    ASSIGN_OR_RETURN(std::string from_seq, ListedSequence(from, from_listed, from_name));
    ASSIGN_OR_RETURN(std::string to_seq, ListedSequence(to, to_listed, to_name));
    ASSIGN_OR_RETURN(int64_t from_next, next_value(from, from_seq));
    RETURN_IF_ERROR(raise(to_seq, from_next, absl::StrCat(from_name, " ", from_seq, " next ", from_next, ", listed")));
  }
  for (const std::string& table : to_tables) {
    ASSIGN_OR_RETURN(auto to_seqs, sequences(to, table));
    for (const auto& [col, to_seq] : to_seqs) {
      if (done.count(to_seq) != 0) continue;
      ASSIGN_OR_RETURN(pg::ResultPtr r,
                       pg::Exec(to,
                                absl::StrCat("SELECT coalesce(max(", pg::QuoteIdent(col), "), 0)::bigint FROM ",
                                             pg::QuoteQualified(table)),
                                absl::StrCat("reading the highest ", table, ".", col)));
      int64_t highest = 0;
      (void)absl::SimpleAtoi(PQgetvalue(r.get(), 0, 0), &highest);
      RETURN_IF_ERROR(raise(to_seq, highest + 1,
                            absl::StrCat("the highest ", table, ".", col, " is ", highest, ", no ", from_name,
                                         " sequence behind it")));
    }
  }
  std::printf("    %d sequences set\n", set);
  return absl::OkStatus();
}

// The reverse pipeline's slot and publication on the new schema's database, created when absent
// (from then on nothing written there is lost), and the slot's position.
absl::StatusOr<Lsn> EnsureReverseSlot(const config::Settings& r) {
  PgReplicationSourceOptions so;
  so.dsn = r.source_dsn;
  so.slot = r.slot;
  so.publication = r.publication;
  so.pipeline = r.proto.pipeline();
  so.application_name = "walshiftctl";
  so.tables = SourceTables(r);
  for (const auto& t : r.proto.source().ignore_tables()) so.ignore_tables.push_back(QualifiedTableName(t));
  ASSIGN_OR_RETURN(auto source, PgReplicationSource::Create(so));
  source.reset();
  ASSIGN_OR_RETURN(pg::ConnPtr c, pg::Connect(r.source_dsn, "the new schema's database", "application_name=walshiftctl"));
  ASSIGN_OR_RETURN(pg::ResultPtr row,
                   pg::ExecParams(c.get(),
                                  "SELECT coalesce(confirmed_flush_lsn, restart_lsn)::text FROM pg_replication_slots "
                                  "WHERE slot_name = $1",
                                  {r.slot.c_str()}, "reading the reverse pipeline's slot"));
  if (PQntuples(row.get()) == 0) return absl::InternalError("the reverse pipeline's slot is missing right after its creation");
  return ParseLsn(PQgetvalue(row.get(), 0, 0)).value_or(kInvalidLsn);
}

// Whether `s`'s walshiftd streams: its slot is active.
absl::StatusOr<bool> Streaming(const config::Settings& s) {
  ASSIGN_OR_RETURN(pg::ConnPtr c, pg::Connect(s.source_dsn, "source", "application_name=walshiftctl"));
  ASSIGN_OR_RETURN(pg::ResultPtr r, pg::ExecParams(c.get(),
                                                   "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                                                   {s.slot.c_str()}, "reading the slot"));
  return PQntuples(r.get()) == 1 && *PQgetvalue(r.get(), 0, 0) == 't';
}

absl::Status WaitStreaming(const config::Settings& s, const std::string& path, double settle) {
  absl::Time deadline = absl::Now() + absl::Seconds(settle);
  bool told = false;
  for (;;) {
    ASSIGN_OR_RETURN(bool on, Streaming(s));
    if (on) return absl::OkStatus();
    if (!told) {
      std::printf("    waiting for the walshiftd of %s to stream (start it: walshiftd --config %s)\n",
                  s.proto.pipeline().c_str(), path.c_str());
      std::fflush(stdout);
      told = true;
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("the walshiftd of ", s.proto.pipeline(), " is not streaming after ",
                                                      settle, " s; start it and run the command again"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

absl::Status NothingParked(const config::Settings& s) {
  for (const auto& t : s.targets) {
    if (t.documents()) continue;
    std::string what = absl::StrCat("target ", t.name);
    ASSIGN_OR_RETURN(pg::ConnPtr c, pg::Connect(t.dsn, what, "application_name=walshiftctl"));
    ASSIGN_OR_RETURN(auto parked, state::ReadParked(c.get(), s.proto.pipeline(), what));
    uint64_t n = 0;
    for (const auto& [_, k] : parked) n += k;
    if (n > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pipeline ", s.proto.pipeline(), ": ", n, " changes are parked in walshift.dead_letter of target ", t.name,
          " (walshiftctl dead-letter list --config ...): retry or discard them first"));
    }
  }
  return absl::OkStatus();
}

// Refused while the walshiftd of `s` streams (its slot is active).
absl::Status NotStreaming(PGconn* c, const config::Settings& s) {
  const std::string& name = s.proto.pipeline();
  ASSIGN_OR_RETURN(pg::ResultPtr active,
                   pg::ExecParams(c,
                                  "SELECT coalesce(active_pid::text, '?') FROM pg_catalog.pg_replication_slots "
                                  "WHERE slot_name = $1 AND active",
                                  {s.slot.c_str()}, absl::StrCat("reading the slot of ", name)));
  if (PQntuples(active.get()) > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the walshiftd of ", name, " still streams its slot ", s.slot, " (walsender pid ",
                     PQgetvalue(active.get(), 0, 0), "): stop it and any standby of it, then run the command again"));
  }
  return absl::OkStatus();
}

// Retiring a pipeline once nothing will stream through it again (--finish): what holds WAL or
// names it on the servers goes. Its slot (which keeps WAL on its source for as long as it
// exists), the publication walshift created for it (one the config names is the team's, and
// stays), and the replication origins of its apply and copy sessions in its targets. Refused
// while its walshiftd streams. Each part that is already gone is passed over, so a run that was
// interrupted is finished by running it again.
absl::Status RetirePipeline(const config::Settings& s) {
  const std::string& name = s.proto.pipeline();
  ASSIGN_OR_RETURN(pg::ConnPtr c, pg::Connect(s.source_dsn, absl::StrCat("the source of ", name),
                                              "application_name=walshiftctl"));
  RETURN_IF_ERROR(NotStreaming(c.get(), s));
  ASSIGN_OR_RETURN(pg::ResultPtr dropped,
                   pg::ExecParams(c.get(),
                                  "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM "
                                  "pg_catalog.pg_replication_slots WHERE slot_name = $1",
                                  {s.slot.c_str()}, absl::StrCat("dropping the slot of ", name)));
  std::printf("    %s: slot %s %s\n", name.c_str(), s.slot.c_str(),
              PQntuples(dropped.get()) > 0 ? "dropped" : "already gone");
  if (s.proto.source().publication().empty()) {
    ASSIGN_OR_RETURN(pg::ResultPtr pub,
                     pg::ExecParams(c.get(), "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
                                    {s.publication.c_str()}, absl::StrCat("reading the publication of ", name)));
    if (PQntuples(pub.get()) > 0) {
      RETURN_IF_ERROR(pg::Exec(c.get(), absl::StrCat("DROP PUBLICATION IF EXISTS ", pg::QuoteIdent(s.publication)),
                               absl::StrCat("dropping the publication of ", name))
                          .status());
    }
    std::printf("    %s: publication %s %s\n", name.c_str(), s.publication.c_str(),
                PQntuples(pub.get()) > 0 ? "dropped" : "already gone");
  } else {
    std::printf("    %s: publication %s is named in its config and stays: DROP PUBLICATION %s once nothing else uses "
                "it\n",
                name.c_str(), s.publication.c_str(), pg::QuoteIdent(s.publication).c_str());
  }
  for (const auto& t : s.targets) {
    if (t.documents()) continue;
    std::string what = absl::StrCat("target ", t.name);
    ASSIGN_OR_RETURN(pg::ConnPtr tc, pg::Connect(t.dsn, what, "application_name=walshiftctl"));
    const std::string origin = state::ReplicationOriginName(name, t.name);
    const std::string copies = CopyOriginName(origin, 0).substr(0, origin.size() + 6);  // "<origin>/copy-"
    ASSIGN_OR_RETURN(pg::ResultPtr origins,
                     pg::ExecParams(tc.get(),
                                    "SELECT roname FROM pg_catalog.pg_replication_origin WHERE roname = $1 OR "
                                    "starts_with(roname, $2) ORDER BY 1",
                                    {origin.c_str(), copies.c_str()}, absl::StrCat(what, ": reading origins")));
    int n = PQntuples(origins.get()), gone = 0;
    for (int i = 0; i < n; ++i) {
      auto st = pg::ExecParams(tc.get(), "SELECT pg_catalog.pg_replication_origin_drop($1)",
                               {PQgetvalue(origins.get(), i, 0)}, absl::StrCat(what, ": dropping an origin"));
      if (st.ok()) {
        ++gone;
      } else if (absl::StrContains(st.status().message(), "(SQLSTATE 42501)")) {
        std::printf("    %s: the role may not drop replication origins in target %s; a superuser can: SELECT "
                    "pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = '%s' OR "
                    "starts_with(roname, '%s')\n",
                    name.c_str(), t.name.c_str(), origin.c_str(), copies.c_str());
        break;
      } else {
        return st.status();
      }
    }
    std::printf("    %s: %d replication origin%s dropped in target %s\n", name.c_str(), gone, gone == 1 ? "" : "s",
                t.name.c_str());
  }
  return absl::OkStatus();
}

// The step order of each direction; a step is done when the recorded one is at or past it.
// "reverse_slot" and "resuming" are recorded before the other side's writes are granted: from
// there on an abort is refused, since the application may be writing the other schema.
const std::vector<std::string> kCutoverSteps = {"preflight", "revoking",     "writes_stopped",  "drained", "verified",
                                                "sequences", "reverse_slot", "reverse_started", "done"};
const std::vector<std::string> kRollbackSteps = {"preflight", "revoking", "writes_stopped", "drained", "verified",
                                                 "sequences", "resuming", "writes_resumed", "done"};

int StepIndex(const std::vector<std::string>& steps, const std::string& s) {
  auto it = std::find(steps.begin(), steps.end(), s);
  return it == steps.end() ? -1 : static_cast<int>(it - steps.begin());
}

int Fail(const std::string& what, const absl::Status& st) {
  std::printf("%s: %s\n", what.c_str(), std::string(st.message()).c_str());
  return st.code() == absl::StatusCode::kUnavailable || st.code() == absl::StatusCode::kInternal ? 2 : 1;
}

// --finish. After a cutover: the migration is final, so the reverse pipeline (the rollback path)
// and the forward one (idle since the legacy writes stopped) are retired, and the cutover is
// recorded as finished, which no cutover or rollback continues. After a rollback: the reverse
// pipeline is retired, so that its slot stops keeping WAL on the new database; a later cutover
// creates it again.
template <typename Record>
int Finish(const Pair& p, bool rollback, state::CutoverRow* row, const Record& record) {
  const char* cmd = rollback ? "rollback" : "cutover";
  const std::string& fp = p.fwd.proto.pipeline();
  const std::string state = row ? row->state : "none";
  const bool ready = rollback ? state == "rolled_back"
                              : state == "cut_over" || state == "finishing" || state == "finished";
  if (!ready) {
    std::printf("%s --finish refused: pipeline %s is %s; only a %s is finished (walshiftctl %s --status)\n", cmd,
                fp.c_str(), state.c_str(), rollback ? "rollback that is done (rolled_back)" : "cutover that is done (cut_over)",
                cmd);
    return 1;
  }
  std::vector<const config::Settings*> retired = {&p.rev};
  if (!rollback) retired.push_back(&p.fwd);
  for (const config::Settings* s : retired) {
    auto c = pg::Connect(s->source_dsn, absl::StrCat("the source of ", s->proto.pipeline()),
                         "application_name=walshiftctl");
    if (!c.ok()) return Fail(cmd, c.status());
    if (absl::Status st = NotStreaming(c->get(), *s); !st.ok()) {
      std::printf("%s --finish refused: %s\n", cmd, std::string(st.message()).c_str());
      return 1;
    }
  }
  if (!rollback && row->state == "cut_over") {
    row->state = "finishing";
    if (absl::Status st = record("finishing", state::CutoverStamp::kNone,
                                 "finishing: the reverse and forward pipelines are retired, no rollback from here");
        !st.ok())
      return Fail(cmd, st);
  }
  std::printf("retiring %s\n", rollback ? "the reverse pipeline" : "the reverse and the forward pipelines");
  for (const config::Settings* s : retired) {
    if (absl::Status st = RetirePipeline(*s); !st.ok()) return Fail(cmd, st);
  }
  if (rollback) {
    if (absl::Status st = record(row->step, state::CutoverStamp::kNone,
                                 absl::StrCat("reverse pipeline ", p.rev.proto.pipeline(), " retired"));
        !st.ok())
      return Fail(cmd, st);
    std::printf("the reverse pipeline %s is retired: its slot no longer keeps WAL on the new database. %s streams "
                "on; a later walshiftctl cutover creates the reverse slot again (start its walshiftd when step 6 asks)."
                "\n",
                p.rev.proto.pipeline().c_str(), fp.c_str());
    return 0;
  }
  row->state = "finished";
  if (absl::Status st = record("done", state::CutoverStamp::kNone, "finished: both pipelines retired"); !st.ok())
    return Fail(cmd, st);
  std::printf("the migration of %s is finished: nothing of walshift's holds WAL on either database any more, and "
              "there is no rollback. %s. walshift's state stays in both databases as its record (walshift.cutover "
              "keeps the history): DROP SCHEMA walshift CASCADE in each once no other pipeline uses it, and remove "
              "the services of both walshiftds; started again, they refuse (their slots are gone).\n",
              fp.c_str(),
              row->stop_writes == "revoke"
                  ? "The legacy tables stay read-only for the application (the privileges the cutover revoked are "
                    "listed in walshift.cutover.revoked)"
                  : "The application must not write to the legacy tables");
  return 0;
}

int Run(const Options& o, bool rollback) {
  const char* cmd = rollback ? "rollback" : "cutover";
  spdlog::set_level(spdlog::level::warn);  // the steps print what they do
  auto pair = LoadPair(o);
  if (!pair.ok()) {
    std::printf("%s refused:\n%s\n", cmd, std::string(pair.status().message()).c_str());
    return 2;
  }
  Pair& p = *pair;
  const std::string& fp = p.fwd.proto.pipeline();
  auto legacy = pg::Connect(p.fwd.source_dsn, "the legacy database", "application_name=walshiftctl");
  auto fresh = pg::Connect(p.fresh->dsn, "the new schema's database", "application_name=walshiftctl");
  if (!legacy.ok()) return Fail(cmd, legacy.status());
  if (!fresh.ok()) return Fail(cmd, fresh.status());
  PGconn* lc = legacy->get();
  PGconn* nc = fresh->get();
  const std::string what = absl::StrCat("target ", p.fresh->name);
  if (absl::Status st = state::EnsureSchema(nc, what); !st.ok()) return Fail(cmd, st);
  auto current = state::ReadCutover(nc, fp, what);
  if (!current.ok()) return Fail(cmd, current.status());

  if (o.status) {
    if (!*current) {
      std::printf("pipeline %s: no cutover recorded\n", fp.c_str());
      return 0;
    }
    const auto& c = **current;
    std::printf("pipeline %s: %s, last step %s; writes stopped by %s at %s (%s)%s%s\n", fp.c_str(), c.state.c_str(),
                c.step.c_str(), c.stop_writes.c_str(), c.stop_lsn == kInvalidLsn ? "-" : FormatLsn(c.stop_lsn).c_str(),
                c.writes_stopped_at.empty() ? "-" : c.writes_stopped_at.c_str(),
                c.reverse_lsn == kInvalidLsn ? "" : "; reverse from ",
                c.reverse_lsn == kInvalidLsn ? "" : FormatLsn(c.reverse_lsn).c_str());
    return 0;
  }

  state::CutoverRow row;
  const std::string in_progress = rollback ? "rolling_back" : "cutting_over";
  const std::string finished = rollback ? "rolled_back" : "cut_over";
  const auto& steps = rollback ? kRollbackSteps : kCutoverSteps;
  if (*current) row = **current;
  auto record = [&](const std::string& step, state::CutoverStamp stamp, const std::string& note) {
    row.step = step;
    absl::Status st = state::WriteCutover(nc, row, stamp, note, what);
    if (st.ok()) CrashPoint(absl::StrCat(cmd, ".", step).c_str());
    return st;
  };

  if (o.finish) return Finish(p, rollback, current->has_value() ? &row : nullptr, record);

  if (o.abort) {
    // Undoes the write stop of an unfinished run: the side whose writes it stopped gets them back,
    // and the state is what it was before the run started.
    if (!*current || row.state != in_progress) {
      std::printf("%s --abort: no %s in progress for %s (state %s)\n", cmd, cmd, fp.c_str(),
                  *current ? row.state.c_str() : "none");
      return 1;
    }
    const std::string& last = rollback ? "resuming" : "reverse_slot";
    if (StepIndex(steps, row.step) >= StepIndex(steps, last)) {
      std::printf("%s --abort: the %s schema's writes may already be granted back and the application writing "
                  "there: finish it (walshiftctl %s) and then %s\n",
                  cmd, rollback ? "legacy" : "new", cmd,
                  rollback ? "cut over again (walshiftctl cutover)" : "roll back (walshiftctl rollback)");
      return 1;
    }
    const char* side = rollback ? "new" : "legacy";
    if (absl::Status st = GrantBack(rollback ? nc : lc, nc, &row, side); !st.ok()) return Fail(cmd, st);
    row.state = rollback ? "cut_over" : "aborted";
    if (absl::Status st = record("done", state::CutoverStamp::kWritesResumed,
                                 absl::StrCat(cmd, " aborted: ", side, " writes granted back"));
        !st.ok())
      return Fail(cmd, st);
    std::printf("%s aborted: the %s tables' write privileges are granted back; %s streams as before\n", cmd, side,
                rollback ? p.rev.proto.pipeline().c_str() : fp.c_str());
    return 0;
  }

  if (row.state == "finishing" || row.state == "finished") {
    std::printf("%s refused: the migration of %s is %s (walshiftctl cutover --finish): its pipelines are retired and "
                "there is no rollback%s\n",
                cmd, fp.c_str(), row.state.c_str(),
                row.state == "finishing" ? "; run walshiftctl cutover --finish again to complete it" : "");
    return 1;
  }
  // Which cutover this run continues, or starts.
  if (!*current || row.state == (rollback ? "cut_over" : "rolled_back") || (!rollback && row.state == "aborted")) {
    if (rollback && !*current) {
      std::printf("rollback refused: pipeline %s has not been cut over\n", fp.c_str());
      return 1;
    }
    std::string revoked = row.revoked;
    row = state::CutoverRow();
    row.pipeline = fp;
    row.reverse_pipeline = p.rev.proto.pipeline();
    row.state = in_progress;
    row.stop_writes = o.stop_writes;
    // The privileges a cutover revoked on legacy stay revoked until a rollback grants them back,
    // and the other way round: carried from the previous run.
    row.revoked = revoked.empty() ? "[]" : revoked;
    row.step = "";
  } else if (row.state == finished) {
    std::printf("pipeline %s: already %s (walshiftctl %s --status)\n", fp.c_str(), finished.c_str(), cmd);
    return 0;
  } else if (row.state != in_progress) {
    std::printf("%s refused: pipeline %s is %s; %s first\n", cmd, fp.c_str(), row.state.c_str(),
                rollback ? "finish the cutover (walshiftctl cutover)" : "finish the rollback (walshiftctl rollback)");
    return 1;
  } else {
    std::printf("continuing the %s of %s after step %s\n", cmd, fp.c_str(), row.step.c_str());
  }
  auto done = [&](const std::string& step) { return StepIndex(steps, row.step) >= StepIndex(steps, step); };

  // The pipeline writes stop on and the one that drains: forward for a cutover, reverse for a rollback.
  const config::Settings& draining = rollback ? p.rev : p.fwd;
  const std::string& draining_path = rollback ? o.reverse_path : o.forward_path;
  PGconn* stopped_db = rollback ? nc : lc;
  const char* stopped_name = rollback ? "new" : "legacy";

  // walshift's own roles keep their privileges: the pipeline reading the tables and the one
  // writing them.
  auto kept_roles = [&]() -> absl::StatusOr<std::vector<std::string>> {
    std::vector<std::string> keep = {Role(stopped_db)};
    ASSIGN_OR_RETURN(pg::ConnPtr writer, pg::Connect(rollback ? p.fresh->dsn : p.legacy->dsn,
                                                     "the pipeline writing there", "application_name=walshiftctl"));
    keep.push_back(Role(writer.get()));
    return keep;
  };

  // 1. preflight
  if (!done("preflight")) {
    std::printf("step 1/6 preflight\n");
    if (absl::Status st = NothingParked(draining); !st.ok()) return Fail("preflight", st);
    for (const auto& q : p.fwd.proto.cutover().sequences()) {
      auto legacy_seq = ListedSequence(lc, q.source(), "legacy");
      if (!legacy_seq.ok()) return Fail("preflight", legacy_seq.status());
      auto new_seq = ListedSequence(nc, q.target(), "new");
      if (!new_seq.ok()) return Fail("preflight", new_seq.status());
    }
    auto on = Streaming(draining);
    if (!on.ok()) return Fail("preflight", on.status());
    if (!*on) {
      return Fail("preflight", absl::FailedPreconditionError(absl::StrCat(
                                   "the walshiftd of ", draining.proto.pipeline(), " is not streaming (its slot ",
                                   draining.slot, " is not active): start it first")));
    }
    // The forward pipeline's commits on the new database must carry its origin, or the reverse
    // pipeline would send them back.
    auto origin = pg::ExecParams(nc, "SELECT pg_replication_origin_oid($1) IS NOT NULL", {p.forward_origin.c_str()},
                                 "reading the forward pipeline's replication origin");
    if (!origin.ok()) return Fail("preflight", origin.status());
    if (*PQgetvalue(origin->get(), 0, 0) != 't') {
      return Fail("preflight",
                  absl::FailedPreconditionError(absl::StrCat(
                      "the forward pipeline does not apply with the replication origin ", p.forward_origin,
                      " on the new schema's database (its role may not use replication origins: walshiftd warned at "
                      "start): grant EXECUTE on pg_replication_origin_create(text) and "
                      "pg_replication_origin_session_setup(text) to it, or run it as a superuser, and restart it")));
    }
    if (o.stop_writes != "revoke" && o.stop_writes != "application") {
      return Fail("preflight", absl::InvalidArgumentError("--stop-writes must be revoke or application"));
    }
    std::printf("    the pipelines pair up: %s ignores %s, %s ignores %s; both configs load; nothing is parked; %s "
                "streams\n",
                p.rev.proto.pipeline().c_str(), p.forward_origin.c_str(), fp.c_str(), p.reverse_origin.c_str(),
                draining.proto.pipeline().c_str());
    if (absl::Status st = record("preflight", state::CutoverStamp::kNewCutover, "preflight passed"); !st.ok())
      return Fail(cmd, st);
  }

  // 2. stop the writes
  const std::vector<std::string> tables = SourceTables(draining);
  if (!done("revoking")) {
    std::printf("step 2/6 stopping writes on the %s tables (%s): %s\n", stopped_name, absl::StrJoin(tables, ", ").c_str(),
                row.stop_writes == "revoke" ? "revoking INSERT, UPDATE, DELETE, TRUNCATE"
                                          : "the application has stopped them");
    if (row.stop_writes == "revoke") {
      auto keep = kept_roles();
      if (!keep.ok()) return Fail("stopping writes", keep.status());
      std::vector<std::string> superusers;
      std::string listing;
      auto grants = WriteGrants(stopped_db, stopped_name, tables, *keep, &superusers, &listing);
      if (!grants.ok()) return Fail("stopping writes", grants.status());
      if (!superusers.empty()) {
        std::printf("    warning: %s %s superuser%s: a revoke does not stop %s writes\n",
                    absl::StrJoin(superusers, ", ").c_str(), superusers.size() == 1 ? "is a" : "are",
                    superusers.size() == 1 ? "" : "s", superusers.size() == 1 ? "its" : "their");
      }
      auto foreign = ForeignSessions(stopped_db, *keep);
      if (!foreign.ok()) return Fail("stopping writes", foreign.status());
      for (const auto& f : *foreign) {
        std::printf("    warning: a session of walshift's role %s is not walshift's: a revoke does not stop it; the "
                    "application must not use walshift's roles\n",
                    f.c_str());
      }
      // Kept with what earlier cutovers revoked on the other database, to grant each back in turn.
      auto others = Without(nc, row.revoked, stopped_name);
      if (!others.ok()) return Fail("stopping writes", others.status());
      auto merged = pg::Exec(nc, absl::StrCat("SELECT (", pg::QuoteLiteral(*others), "::jsonb || ",
                                              pg::QuoteLiteral(*grants), "::jsonb)::text"),
                             "recording the privileges");
      if (!merged.ok()) return Fail("stopping writes", merged.status());
      row.revoked = PQgetvalue(merged->get(), 0, 0);
      if (listing.empty()) {
        std::printf("    no role but walshift's has write privileges there\n");
      } else {
        std::printf("    revoking:\n      %s\n", absl::StrReplaceAll(listing, {{"\n", "\n      "}}).c_str());
      }
    }
    if (absl::Status st = record("revoking", state::CutoverStamp::kNone, "privileges recorded"); !st.ok())
      return Fail(cmd, st);
  }
  if (!done("writes_stopped")) {
    if (row.stop_writes == "revoke") {
      if (absl::Status st = ApplyGrants(stopped_db, row.revoked, stopped_name, /*grant=*/false); !st.ok())
        return Fail("stopping writes", st);
      // A REVOKE that removed less than asked only warns: prove that nobody can write any more.
      auto keep = kept_roles();
      if (!keep.ok()) return Fail("stopping writes", keep.status());
      auto remaining = RemainingWriters(stopped_db, tables, *keep);
      if (!remaining.ok()) return Fail("stopping writes", remaining.status());
      if (!remaining->empty()) {
        std::printf("stopping writes: after the revoke these roles can still write the %s tables:\n    %s\n"
                    "Revoke those privileges as the role that granted them (or the owner, or a superuser), or end "
                    "the membership, and run the command again; or undo with walshiftctl %s --abort\n",
                    stopped_name, absl::StrJoin(*remaining, "\n    ").c_str(), cmd);
        return 1;
      }
      std::printf("    no role but walshift's and superusers can write the %s tables\n", stopped_name);
    }
    auto at = StopPosition(stopped_db, tables, o.settle);
    if (!at.ok()) return Fail("stopping writes", at.status());
    row.stop_lsn = *at;
    std::printf("    no write in flight: the %s database stands at %s\n", stopped_name, FormatLsn(*at).c_str());
    if (absl::Status st = record("writes_stopped", state::CutoverStamp::kWritesStopped, "writes stopped"); !st.ok())
      return Fail(cmd, st);
  }

  // 3. drain
  if (!done("drained")) {
    std::printf("step 3/6 waiting until %s has applied %s\n", draining.proto.pipeline().c_str(),
                FormatLsn(row.stop_lsn).c_str());
    absl::Time t0 = absl::Now();
    if (absl::Status st = WaitCheckpoints(draining, row.stop_lsn, o.settle); !st.ok()) return Fail("drain", st);
    std::printf("    every target of %s has applied it (%.1f s)\n", draining.proto.pipeline().c_str(),
                absl::ToDoubleSeconds(absl::Now() - t0));
    if (absl::Status st = record("drained", state::CutoverStamp::kNone, "drained"); !st.ok()) return Fail(cmd, st);
  }

  // 4. the verify gate
  if (!done("verified")) {
    std::printf("step 4/6 verify gate of %s\n", draining.proto.pipeline().c_str());
    std::fflush(stdout);
    std::string settle = absl::StrCat(o.settle);
    std::vector<std::string> args = {"--config", draining_path, "--gate", "--settle", settle};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    int rc = VerifyCommand(static_cast<int>(argv.size()), argv.data());
    std::fflush(stdout);
    if (rc != 0) {
      std::printf("%s stopped at the verify gate (exit %d): the writes stay stopped; repair the drift (walshiftctl "
                  "verify --repair) and run the command again%s\n",
                  cmd, rc, rollback ? "" : ", or undo it with walshiftctl cutover --abort");
      return 1;
    }
    if (absl::Status st = record("verified", state::CutoverStamp::kNone, "verify gate passed"); !st.ok())
      return Fail(cmd, st);
  }

  // 5. sequences
  if (!done("sequences")) {
    std::printf("step 5/6 sequences of the %s schema past the %s ones (margin %lld)\n", rollback ? "legacy" : "new",
                stopped_name, static_cast<long long>(o.margin));
    auto pairs = CopiedColumns(p.fwd, p.fresh->name);
    if (rollback) {
      for (auto& pr : pairs) std::swap(pr.first, pr.second);
      // An identity mapping's pair names whole tables: "legacy\t*" <-> "new".
      for (auto& pr : pairs) {
        if (absl::EndsWith(pr.second, "\t*")) {
          pr.second.resize(pr.second.size() - 2);
          pr.first += "\t*";
        }
      }
    }
    std::vector<std::pair<std::string, std::string>> listed;
    for (const auto& q : p.fwd.proto.cutover().sequences()) {
      listed.push_back(rollback ? std::make_pair(q.target(), q.source()) : std::make_pair(q.source(), q.target()));
    }
    absl::Status st = rollback ? SyncSequences(nc, lc, pairs, listed, o.margin, "new", "legacy")
                               : SyncSequences(lc, nc, pairs, listed, o.margin, "legacy", "new");
    if (!st.ok()) return Fail("sequences", st);
    if (absl::Status st = record("sequences", state::CutoverStamp::kNone, "sequences set"); !st.ok())
      return Fail(cmd, st);
  }

  // 6. the other direction
  if (!rollback && !done("reverse_slot")) {
    std::printf("step 6/6 the reverse pipeline %s\n", p.rev.proto.pipeline().c_str());
    auto at = EnsureReverseSlot(p.rev);
    if (!at.ok()) return Fail("reverse pipeline", at.status());
    row.reverse_lsn = *at;
    std::printf("    its slot %s exists from %s: nothing written to the new schema from now on is lost\n",
                p.rev.slot.c_str(), FormatLsn(*at).c_str());
    if (absl::Status st = WaitStreaming(p.rev, o.reverse_path, o.settle); !st.ok()) return Fail("reverse pipeline", st);
    std::printf("    its walshiftd streams\n");
    if (absl::Status st = record("reverse_slot", state::CutoverStamp::kNone, "reverse slot created and streamed");
        !st.ok())
      return Fail(cmd, st);
  }
  if (!rollback && !done("reverse_started")) {
    // A rollback before this cutover left the new schema's tables read-only for the application.
    if (absl::Status st = GrantBack(nc, nc, &row, "new"); !st.ok()) return Fail("granting back", st);
    if (absl::Status st = record("reverse_started", state::CutoverStamp::kNone, "reverse streaming"); !st.ok())
      return Fail(cmd, st);
  }
  if (rollback && !done("resuming")) {
    std::printf("step 6/6 legacy writes back\n");
    if (absl::Status st = record("resuming", state::CutoverStamp::kNone, "granting legacy writes back"); !st.ok())
      return Fail(cmd, st);
  }
  if (rollback && !done("writes_resumed")) {
    if (absl::Status st = GrantBack(lc, nc, &row, "legacy"); !st.ok()) return Fail("granting back", st);
    auto on = Streaming(p.fwd);
    std::printf("    the privileges the cutover revoked on the legacy tables are granted back; %s %s\n", fp.c_str(),
                on.ok() && *on ? "streams" : "is NOT streaming: start its walshiftd");
    if (absl::Status st = record("writes_resumed", state::CutoverStamp::kNone, "legacy writes granted back");
        !st.ok())
      return Fail(cmd, st);
  }
  row.state = finished;
  if (absl::Status st = record("done", state::CutoverStamp::kWritesResumed, finished); !st.ok()) return Fail(cmd, st);
  auto final_row = state::ReadCutover(nc, fp, what);
  double paused = final_row.ok() && *final_row ? (*final_row)->paused_s : -1;
  if (!rollback) {
    std::printf("cut over at LSN %s (legacy), reverse streaming from %s (new); legacy writes stopped for %.1f s.\n"
                "The application may now write to the new schema. %s: the reverse pipeline %s keeps them equal to the "
                "new schema, for a rollback (walshiftctl rollback).\n",
                FormatLsn(row.stop_lsn).c_str(), FormatLsn(row.reverse_lsn).c_str(), paused,
                row.stop_writes == "revoke" ? "The legacy tables stay read-only for it"
                                            : "It must not write to the legacy tables any more",
                p.rev.proto.pipeline().c_str());
  } else {
    std::printf("rolled back at LSN %s (new); writes stopped for %.1f s. The application may write to the legacy "
                "schema again; %s streams it to the new one, whose mapped tables %s. "
                "The reverse pipeline's slot %s keeps WAL on the new database while it exists: stop its walshiftd and "
                "drop it (SELECT pg_drop_replication_slot('%s')) unless another cutover follows.\n",
                FormatLsn(row.stop_lsn).c_str(), paused, fp.c_str(),
                row.stop_writes == "revoke" ? "stay read-only for the application" : "it must not write any more",
                p.rev.slot.c_str(), p.rev.slot.c_str());
  }
  return 0;
}

int Usage(const char* cmd) {
  std::fprintf(stderr,
               "usage: walshiftctl %s --config FORWARD.yaml --reverse-config REVERSE.yaml\n"
               "                  [--stop-writes revoke|application] [--margin N] [--settle S] [--abort] [--status]\n"
               "  --stop-writes revoke       revoke INSERT, UPDATE, DELETE, TRUNCATE on the mapped tables from every\n"
               "                             role but walshift's (the default; granted back by a rollback)\n"
               "  --stop-writes application  the application stopped writing; walshift waits for the writes in\n"
               "                             flight and the verify gate catches any that follow\n"
               "  --margin N                 how far past the other side's value sequences are set (default 1000)\n"
               "  --settle S                 how long each wait may take (default 120)\n"
               "  --abort                    undo the write stop of an unfinished run (before the other side's\n"
               "                             writes are granted)\n"
               "  --finish                   once done and kept: cutover --finish retires both pipelines (their\n"
               "                             slots, publications and origins; no rollback after it); rollback\n"
               "                             --finish retires the reverse one (a later cutover creates it again)\n",
               cmd);
  return 2;
}

int Command(int argc, char** argv, bool rollback) {
  Options o;
  const char* cmd = rollback ? "rollback" : "cutover";
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--config" || a == "-c") && i + 1 < argc)
      o.forward_path = argv[++i];
    else if (a == "--reverse-config" && i + 1 < argc)
      o.reverse_path = argv[++i];
    else if (a == "--stop-writes" && i + 1 < argc)
      o.stop_writes = argv[++i];
    else if (a == "--margin" && i + 1 < argc && absl::SimpleAtoi(argv[i + 1], &o.margin) && o.margin >= 0)
      ++i;
    else if (a == "--settle" && i + 1 < argc && absl::SimpleAtod(argv[i + 1], &o.settle) && o.settle > 0)
      ++i;
    else if (a == "--abort")
      o.abort = true;
    else if (a == "--status")
      o.status = true;
    else if (a == "--finish")
      o.finish = true;
    else
      return Usage(cmd);
  }
  if (o.forward_path.empty() || o.reverse_path.empty()) return Usage(cmd);
  return Run(o, rollback);
}

}  // namespace

int CutoverCommand(int argc, char** argv) { return Command(argc, argv, /*rollback=*/false); }
int RollbackCommand(int argc, char** argv) { return Command(argc, argv, /*rollback=*/true); }

}  // namespace walshift::ctl
