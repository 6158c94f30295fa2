#include "daemon/pipeline/privilege_check.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/core/status_macros.h"
#include "daemon/source/pg_replication_source.h"

namespace walshift {
namespace {

bool Yes(PGresult* r, int row, int col) { return std::string_view(PQgetvalue(r, row, col)) == "t"; }

}  // namespace

absl::Status CheckSourcePrivileges(PGconn* source, const config::Settings& settings,
                                   const std::vector<std::string>& tables, std::vector<std::string>* problems) {
  const std::string what = "source: privileges";
  ASSIGN_OR_RETURN(
      pg::ResultPtr role,
      pg::ExecParams(
          source,
          "SELECT quote_ident(current_user), quote_ident(current_database()), (r.rolsuper OR r.rolreplication "
          "    OR coalesce(pg_has_role(current_user, to_regrole('rds_replication'), 'MEMBER'), false)), "
          "  current_setting('wal_level'), current_setting('max_replication_slots'), "
          "  (SELECT count(*) FROM pg_catalog.pg_replication_slots)::text, current_setting('max_wal_senders'), "
          "  (SELECT count(*) FROM pg_catalog.pg_stat_replication)::text, "
          "  has_database_privilege(current_database(), 'CREATE'), "
          // (PostgreSQL 17 added a fourth argument with a default: found by name and the text payload.)
          "  coalesce((SELECT bool_or(has_function_privilege(p.oid, 'EXECUTE')) FROM pg_catalog.pg_proc p "
          "    WHERE p.proname = 'pg_logical_emit_message' AND p.pronamespace = 'pg_catalog'::regnamespace "
          "      AND p.proargtypes[2] = 'text'::regtype), false), "
          "  (SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)::text, quote_ident($2), "
          "  coalesce((SELECT string_agg(p.oid::regprocedure::text, ', ') FROM pg_catalog.pg_proc p "
          "    WHERE p.proname = 'pg_logical_emit_message' AND p.pronamespace = 'pg_catalog'::regnamespace "
          "      AND p.proargtypes[2] = 'text'::regtype), 'pg_logical_emit_message(boolean, text, text)') "
          "FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
          {settings.slot.c_str(), settings.publication.c_str()}, what));
  if (PQntuples(role.get()) != 1) return absl::InternalError(absl::StrCat(what, ": the current role is not in pg_roles"));
  PGresult* r = role.get();
  // Names as SQL, quoted where they must be.
  const std::string user = PQgetvalue(r, 0, 0);
  const std::string db = PQgetvalue(r, 0, 1);
  const std::string pub = PQgetvalue(r, 0, 11);
  const std::string emit = PQgetvalue(r, 0, 12);
  if (std::string_view(PQgetvalue(r, 0, 3)) != "logical") {
    problems->push_back(absl::StrCat("source: wal_level is '", PQgetvalue(r, 0, 3),
                                     "', and logical decoding needs 'logical': ALTER SYSTEM SET wal_level = logical, "
                                     "then restart the server"));
  }
  if (!Yes(r, 0, 2)) {
    problems->push_back(absl::StrCat("source: role ", user,
                                     " has no REPLICATION attribute, which the replication slot and the stream need: "
                                     "ALTER ROLE ",
                                     user, " REPLICATION (on Amazon RDS and Aurora: GRANT rds_replication TO ", user,
                                     ")"));
  }
  const bool slot_exists = std::string_view(PQgetvalue(r, 0, 10)) != "0";
  if (!slot_exists && std::stoi(PQgetvalue(r, 0, 5)) >= std::stoi(PQgetvalue(r, 0, 4))) {
    problems->push_back(absl::StrCat("source: the replication slot ", settings.slot,
                                     " does not exist and none is free (max_replication_slots = ", PQgetvalue(r, 0, 4),
                                     ", ", PQgetvalue(r, 0, 5),
                                     " in use, see pg_replication_slots): drop one no longer used "
                                     "(SELECT pg_drop_replication_slot('name')), or raise max_replication_slots and "
                                     "restart the server"));
  }
  if (!slot_exists && std::stoi(PQgetvalue(r, 0, 7)) >= std::stoi(PQgetvalue(r, 0, 6))) {
    problems->push_back(absl::StrCat("source: every WAL sender is in use (max_wal_senders = ", PQgetvalue(r, 0, 6),
                                     ", see pg_stat_replication): raise max_wal_senders and restart the server"));
  }
  if (!Yes(r, 0, 9)) {
    problems->push_back(absl::StrCat("source: role ", user,
                                     " cannot run pg_logical_emit_message, which heartbeats and backfill watermarks "
                                     "use: GRANT EXECUTE ON FUNCTION pg_catalog.",
                                     emit, " TO ", user));
  }

  // Each mapped table: readable, and who owns it (creating a publication of it, or adding it to
  // one, takes its owner).
  struct Table {
    std::pair<std::string, std::string> key;  // (schema, table)
    std::string name;                          // schema.table as quoted SQL
    std::string owner;
    bool owned = false;
    bool partitioned = false;
  };
  std::vector<Table> found;
  for (const std::string& table : tables) {
    auto [schema, name] = pg::SplitQualified(table);
    ASSIGN_OR_RETURN(pg::ResultPtr t,
                     pg::ExecParams(source,
                                    "SELECT format('%I.%I', n.nspname, c.relname), quote_ident(pg_get_userbyid(c.relowner)), "
                                    "  pg_has_role(c.relowner, 'USAGE'), c.relkind = 'p', "
                                    "  has_schema_privilege(n.oid, 'USAGE'), has_table_privilege(c.oid, 'SELECT'), "
                                    "  quote_ident(n.nspname) "
                                    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                                    "WHERE n.nspname = $1 AND c.relname = $2",
                                    {schema.c_str(), name.c_str()}, what));
    if (PQntuples(t.get()) != 1) continue;  // reported as missing by the schema check
    Table f{{schema, name}, PQgetvalue(t.get(), 0, 0), PQgetvalue(t.get(), 0, 1), Yes(t.get(), 0, 2),
            Yes(t.get(), 0, 3)};
    if (!Yes(t.get(), 0, 4)) {
      problems->push_back(absl::StrCat("source: role ", user, " has no USAGE on the schema of ", f.name,
                                       ": GRANT USAGE ON SCHEMA ", PQgetvalue(t.get(), 0, 6), " TO ", user));
    } else if (!Yes(t.get(), 0, 5)) {
      problems->push_back(absl::StrCat("source: role ", user, " cannot read ", f.name,
                                       ", which the initial copy, row completion, backfill and verify read: "
                                       "GRANT SELECT ON ",
                                       f.name, " TO ", user));
    }
    found.push_back(std::move(f));
  }

  ASSIGN_OR_RETURN(pg::ResultPtr p,
                   pg::ExecParams(source,
                                  "SELECT pg_has_role(pubowner, 'USAGE'), pubviaroot, "
                                  "  quote_ident(pg_get_userbyid(pubowner)) FROM pg_catalog.pg_publication WHERE pubname = $1",
                                  {settings.publication.c_str()}, what));
  std::vector<std::string> not_owned, all_names;
  for (const Table& t : found) {
    all_names.push_back(t.name);
    if (!t.owned) not_owned.push_back(absl::StrCat(t.name, " (owned by ", t.owner, ")"));
  }
  if (PQntuples(p.get()) == 0) {
    if (found.empty() || (not_owned.empty() && Yes(r, 0, 8))) return absl::OkStatus();
    std::string create = absl::StrCat("CREATE PUBLICATION ", pub, " FOR TABLE ", absl::StrJoin(all_names, ", "),
                                      " WITH (publish_via_partition_root = true)");
    if (!not_owned.empty()) {
      problems->push_back(absl::StrCat("source: the publication ", settings.publication, " does not exist, and role ",
                                       user, " cannot create it: a publication of a table takes its owner, and ",
                                       absl::StrJoin(not_owned, ", "), " are not the role's. Have the owner create it: ",
                                       create));
    } else {
      problems->push_back(absl::StrCat("source: the publication ", settings.publication, " does not exist, and role ",
                                       user, " cannot create it without CREATE on the database: GRANT CREATE ON DATABASE ",
                                       db, " TO ", user, "; or create it in advance: ", create));
    }
    return absl::OkStatus();
  }
  const bool owns_pub = Yes(p.get(), 0, 0);
  const std::string pub_owner = PQgetvalue(p.get(), 0, 2);
  ASSIGN_OR_RETURN(auto members, PublicationMembers(source, settings.publication));
  std::vector<std::string> missing;
  bool missing_not_owned = false;
  for (const Table& t : found) {
    if (members.count(t.key)) continue;
    missing.push_back(t.name);
    missing_not_owned |= !t.owned;
  }
  if (!missing.empty() && (!owns_pub || missing_not_owned)) {
    problems->push_back(absl::StrCat("source: the publication ", settings.publication, " does not publish ",
                                     absl::StrJoin(missing, ", "), ", and role ", user,
                                     " cannot add them (that takes the owner of the publication, ", pub_owner,
                                     ", and of each table): as their owner run ALTER PUBLICATION ", pub, " ADD TABLE ",
                                     absl::StrJoin(missing, ", ")));
  }
  bool partitioned = false;
  for (const Table& t : found) partitioned |= t.partitioned;
  if (partitioned && !Yes(p.get(), 0, 1) && !owns_pub) {
    problems->push_back(absl::StrCat("source: the publication ", settings.publication,
                                     " publishes partitioned tables by partition, and role ", user,
                                     " cannot make it publish them through their root (that takes its owner, ",
                                     pub_owner, "): as the owner run ALTER PUBLICATION ", pub,
                                     " SET (publish_via_partition_root = true)"));
  }
  return absl::OkStatus();
}

}  // namespace walshift
