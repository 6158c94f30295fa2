#include "daemon/pipeline/pg_schema_inspector.h"

#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/apply/pg_sink.h"
#include "daemon/core/lsn.h"
#include "daemon/core/status_macros.h"
#include "spdlog/spdlog.h"

namespace walshift {

absl::StatusOr<std::optional<SourceRelation>> DescribeSourceTable(PGconn* conn, const std::string& table,
                                                                  std::vector<std::string>* problems,
                                                                  const std::string& where) {
  ASSIGN_OR_RETURN(pg::ResultPtr rel,
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
                     "      AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1])) END "
                     "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                     "WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' "
                     "ORDER BY a.attnum",
                     {oid.c_str()}, "reading the source columns"));
  // A table without a primary key or usable replica identity is described too: its mappings
  // decide (an insert-only `columns` mapping replicates it; anything that needs a key refuses).
  for (int i = 0; i < PQntuples(cols.get()); ++i) {
    SourceColumn c;
    c.name = PQgetvalue(cols.get(), i, 0);
    c.type_oid = static_cast<Oid>(std::stoul(PQgetvalue(cols.get(), i, 1)));
    c.type_modifier = std::stoi(PQgetvalue(cols.get(), i, 2));
    c.part_of_key = PQgetvalue(cols.get(), i, 3)[0] == 't';
    r.columns.push_back(std::move(c));
  }
  return r;
}

absl::StatusOr<std::string> SourceRowsFrom(PGconn* conn, const SourceRelation& relation) {
  ASSIGN_OR_RETURN(pg::ResultPtr kind, pg::ExecParams(conn, "SELECT relkind = 'p' FROM pg_class WHERE oid = $1::oid",
                                                      {std::to_string(relation.oid).c_str()},
                                                      absl::StrCat("reading the kind of ", relation.QualifiedName())));
  bool partitioned = PQntuples(kind.get()) == 1 && PQgetvalue(kind.get(), 0, 0)[0] == 't';
  return absl::StrCat(partitioned ? "" : "ONLY ", pg::QuoteQualified(relation.QualifiedName()));
}

PgSchemaInspector::PgSchemaInspector(std::string source_dsn, const std::vector<config::TargetSettings>& targets)
    : source_dsn_(std::move(source_dsn)) {
  for (const auto& t : targets) {
    if (t.documents()) {
      document_targets_.insert(t.name);
    } else {
      target_dsns_[t.name] = t.dsn;
    }
  }
}

absl::StatusOr<PGconn*> PgSchemaInspector::Conn(const std::string& name, const std::string& dsn) {
  auto it = conns_.find(name);
  if (it != conns_.end() && PQstatus(it->second.get()) == CONNECTION_OK) return it->second.get();
  ASSIGN_OR_RETURN(pg::ConnPtr conn, pg::Connect(dsn, name, "application_name=walshiftd-catalog"));
  PGconn* raw = conn.get();
  conns_[name] = std::move(conn);
  return raw;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadPrimaryKey(PGconn* conn,
                                                                                const SourceRelation& relation) {
  std::string oid = std::to_string(relation.oid);
  ASSIGN_OR_RETURN(
      pg::ResultPtr pk,
      pg::ExecParams(
          conn,
          "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i "
          "JOIN LATERAL unnest((i.indkey::int2[])[0:i.indnkeyatts - 1]) WITH ORDINALITY AS k(attnum, n) ON true "
          "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
          "WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY k.n",
          {oid.c_str()}, absl::StrCat("reading the primary key of ", relation.QualifiedName())));
  std::vector<std::pair<std::string, std::string>> out;
  for (int i = 0; i < PQntuples(pk.get()); ++i)
    out.emplace_back(PQgetvalue(pk.get(), i, 0), PQgetvalue(pk.get(), i, 1));
  return out;
}

absl::StatusOr<SourceTableInfo> PgSchemaInspector::Describe(const SourceRelation& relation, const std::string& target) {
  ASSIGN_OR_RETURN(PGconn * src, Conn("source", source_dsn_));
  std::string oid = std::to_string(relation.oid);
  std::string ctx = absl::StrCat("reading the columns of ", relation.QualifiedName());
  ASSIGN_OR_RETURN(pg::ResultPtr cols,
                   pg::ExecParams(src,
                                  "SELECT a.attname, format_type(a.atttypid, a.atttypmod), "
                                  "       (t.typlen = -1 AND a.attstorage <> 'p'), c.relreplident, "
                                  // a domain's base type: how a document writes its values
                                  "       format_type(coalesce(nullif(t.typbasetype, 0), a.atttypid), "
                                  "                   CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END) "
                                  "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                                  "JOIN pg_class c ON c.oid = a.attrelid "
                                  "WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped "
                                  "ORDER BY a.attnum",
                                  {oid.c_str()}, ctx));
  ASSIGN_OR_RETURN(pg::ResultPtr pk,
                   pg::ExecParams(src,
                                  "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON "
                                  "a.attrelid = i.indrelid AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1]) "
                                  "WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY a.attnum",
                                  {oid.c_str()}, ctx));
  SourceTableInfo info;
  for (int i = 0; i < PQntuples(pk.get()); ++i) info.primary_key.push_back(PQgetvalue(pk.get(), i, 0));
  info.qualified_name = relation.QualifiedName();
  info.replica_identity = relation.replica_identity;
  auto target_dsn = target_dsns_.find(target);
  PGconn* tgt = nullptr;
  if (target_dsn != target_dsns_.end()) {
    ASSIGN_OR_RETURN(tgt, Conn(absl::StrCat("target ", target), target_dsn->second));
  }
  for (int i = 0; i < PQntuples(cols.get()); ++i) {
    SourceColumnInfo c;
    c.name = PQgetvalue(cols.get(), i, 0);
    c.type = PQgetvalue(cols.get(), i, 1);
    c.toastable = PQgetvalue(cols.get(), i, 2)[0] == 't';
    if (document_targets_.count(target)) {
      c.in_target = true;  // a document holds every value as JSON, typed by the source's type
      c.type = PQgetvalue(cols.get(), i, 4);
    } else if (tgt != nullptr) {
      auto r = pg::ExecParams(tgt, "SELECT to_regtype($1) IS NOT NULL", {c.type.c_str()},
                              absl::StrCat("checking type ", c.type, " in target ", target));
      // A type name the target cannot even parse is simply absent there.
      c.in_target = r.ok() && PQgetvalue(r->get(), 0, 0)[0] == 't';
    }
    info.columns.push_back(std::move(c));
  }
  return info;
}

absl::StatusOr<std::map<Oid, std::string>> PgSchemaInspector::SourceOids(const std::vector<std::string>& tables) {
  ASSIGN_OR_RETURN(PGconn * src, Conn("source", source_dsn_));
  std::map<Oid, std::string> out;
  for (const std::string& table : tables) {
    ASSIGN_OR_RETURN(pg::ResultPtr r,
                     pg::ExecParams(src, "SELECT to_regclass($1)::oid::text", {pg::QuoteQualified(table).c_str()},
                                    absl::StrCat("looking up ", table)));
    if (PQntuples(r.get()) == 1 && !PQgetisnull(r.get(), 0, 0))
      out[static_cast<Oid>(std::stoul(PQgetvalue(r.get(), 0, 0)))] = table;
  }
  return out;
}

absl::StatusOr<PgSchemaInspector::LiveTable> PgSchemaInspector::ReadLiveTable(PGconn* src,
                                                                              const SourceRelation& relation) {
  std::string oid = std::to_string(relation.oid);
  ASSIGN_OR_RETURN(
      pg::ResultPtr cols,
      pg::ExecParams(src,
                     "SELECT a.attrelid::regclass::text, a.attname, format_type(a.atttypid, a.atttypmod) "
                     "FROM pg_attribute a WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped",
                     {oid.c_str()}, absl::StrCat("reading the columns of ", relation.QualifiedName())));
  LiveTable out;
  if (PQntuples(cols.get()) > 0) out.name = PQgetvalue(cols.get(), 0, 0);
  for (int i = 0; i < PQntuples(cols.get()); ++i)
    out.types[PQgetvalue(cols.get(), i, 1)] = PQgetvalue(cols.get(), i, 2);
  return out;
}

absl::StatusOr<bool> PgSchemaInspector::ReadCurrentRow(const SourceRelation& relation, const Tuple& row,
                                                       const std::vector<int>& columns, Tuple* out) {
  ASSIGN_OR_RETURN(PGconn * src, Conn("source", source_dsn_));
  std::string cache_key = absl::StrCat(relation.oid, "/", relation.version, "/");
  for (int c : columns) absl::StrAppend(&cache_key, c, ",");
  auto it = row_queries_.find(cache_key);
  if (it == row_queries_.end()) {
    // The table by oid (it may have been renamed since the change), each key compared in its
    // own type so the primary key's index finds the row.
    ASSIGN_OR_RETURN(LiveTable live, ReadLiveTable(src, relation));
    if (live.name.empty()) return false;  // the table is gone
    const std::map<std::string, std::string>& types = live.types;
    RowQuery q;
    std::vector<std::string> select, where;
    for (int c : columns) select.push_back(pg::QuoteIdent(relation.columns[c].name));
    for (size_t c = 0; c < relation.columns.size(); ++c) {
      if (!relation.columns[c].part_of_key) continue;
      auto type = types.find(relation.columns[c].name);
      if (type == types.end()) return false;  // a key column was dropped: not the same row
      q.key.push_back(static_cast<int>(c));
      where.push_back(absl::StrCat(pg::QuoteIdent(relation.columns[c].name), " = $", q.key.size(), "::", type->second));
    }
    q.sql = absl::StrCat("SELECT ", absl::StrJoin(select, ", "), " FROM ", live.name, " WHERE ",
                         absl::StrJoin(where, " AND "));
    it = row_queries_.emplace(cache_key, std::move(q)).first;
  }
  std::vector<const char*> key;
  for (int c : it->second.key) {
    const Datum& d = row[c];
    if (d.kind != DatumKind::kText) {
      return absl::DataLossError(absl::StrCat(
          "update of ", relation.QualifiedName(), ": key column ", relation.columns[c].name, " arrived ",
          d.is_null() ? "NULL" : "as an unchanged TOAST value", "; the row's other values cannot be read"));
    }
    key.push_back(d.data);
  }
  ASSIGN_OR_RETURN(current_row_, pg::ExecParams(src, it->second.sql, key,
                                                absl::StrCat("reading the current row of ", relation.QualifiedName())));
  if (PQntuples(current_row_.get()) == 0) return false;
  *out = row;
  for (size_t i = 0; i < columns.size(); ++i) {
    const int f = static_cast<int>(i);
    (*out)[columns[i]] = PQgetisnull(current_row_.get(), 0, f)
                             ? Datum{DatumKind::kNull, 0, nullptr}
                             : Datum{DatumKind::kText, static_cast<uint32_t>(PQgetlength(current_row_.get(), 0, f)),
                                     PQgetvalue(current_row_.get(), 0, f)};
  }
  return true;
}

absl::Status PgSchemaInspector::WaitVisible(uint32_t xid, Lsn commit_lsn, const std::atomic<bool>* stop) {
  if (xid == 0 || xid == visible_xid_) return absl::OkStatus();
  ASSIGN_OR_RETURN(PGconn * src, Conn("source", source_dsn_));
  // The 32-bit xid of the stream made a full one: the one nearest the snapshot's xmax (a
  // transaction not yet visible is often at or above xmax, an older one below it; both are
  // within 2^31 of it).
  constexpr char kVisible[] =
      "SELECT txid_visible_in_snapshot(x + (($1::bigint - x) % 4294967296 + 4294967296 + 2147483648) % 4294967296 "
      "  - 2147483648, s)::text "
      "FROM (SELECT s, txid_snapshot_xmax(s) AS x FROM txid_current_snapshot() s) q";
  // Waiting on a commit that waits on walshiftd: its own replication connection is a
  // synchronous standby, so the commit becomes visible only once walshiftd confirmed it.
  constexpr char kSelfSync[] =
      "SELECT count(*)::text FROM pg_catalog.pg_stat_replication "
      "WHERE application_name = 'walshiftd' AND sync_state IN ('sync', 'quorum')";
  const std::string id = std::to_string(xid);
  const absl::Time start = absl::Now();
  absl::Time next_warning = start + absl::Seconds(2);
  absl::Duration pause = absl::Milliseconds(1);
  for (;;) {
    ASSIGN_OR_RETURN(pg::ResultPtr r, pg::ExecParams(src, kVisible, {id.c_str()},
                                                     "checking that a received transaction is visible on the source"));
    if (PQntuples(r.get()) == 1 && std::string_view(PQgetvalue(r.get(), 0, 0)) == "true") break;
    if (stop != nullptr && stop->load()) {
      return absl::AbortedError(absl::StrCat("stopping while waiting for source transaction ", xid, " to be visible"));
    }
    if (absl::Now() >= next_warning) {
      ASSIGN_OR_RETURN(pg::ResultPtr self, pg::Exec(src, kSelfSync, "reading the source's synchronous standbys"));
      if (std::string_view(PQgetvalue(self.get(), 0, 0)) != "0") {
        return absl::FailedPreconditionError(absl::StrCat(
            "source transaction ", xid, " (commit at LSN ", FormatLsn(commit_lsn),
            ") is not visible on the source because it waits for walshiftd itself: walshiftd's replication "
            "connection (application_name walshiftd) is a synchronous standby of the source, and walshiftd must "
            "read the row before it can confirm the commit. Take walshiftd out of synchronous_standby_names"));
      }
      spdlog::warn(
          "source transaction {} (commit at LSN {}) was received but is not yet visible on the source after {} s "
          "(a synchronous standby that does not confirm holds commits back); its row values are read once it is",
          xid, FormatLsn(commit_lsn), absl::ToInt64Seconds(absl::Now() - start));
      next_warning = absl::Now() + absl::Seconds(60);
    }
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(pause));
    pause = std::min(pause * 2, absl::Milliseconds(100));
  }
  visible_xid_ = xid;
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const SourceRelation>> PgSchemaInspector::DescribeSource(const std::string& table) {
  ASSIGN_OR_RETURN(PGconn * src, Conn("source", source_dsn_));
  std::vector<std::string> problems;
  ASSIGN_OR_RETURN(auto rel, DescribeSourceTable(src, table, &problems, table));
  if (!rel) return absl::FailedPreconditionError(absl::StrJoin(problems, "; "));
  return std::make_shared<const SourceRelation>(*std::move(rel));
}

absl::StatusOr<pg::ResultPtr> PgSchemaInspector::ReadRowsWhere(const SourceRelation& relation,
                                                               const std::vector<std::string>& columns,
                                                               const std::vector<const char*>& values) {
  ASSIGN_OR_RETURN(PGconn * src, Conn("source", source_dsn_));
  ASSIGN_OR_RETURN(LiveTable live, ReadLiveTable(src, relation));
  if (live.name.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("source table ", relation.QualifiedName(), " no longer exists"));
  }
  const std::map<std::string, std::string>& type_of = live.types;
  std::vector<std::string> select, where;
  for (const auto& c : relation.columns) select.push_back(pg::QuoteIdent(c.name));
  for (size_t i = 0; i < columns.size(); ++i) {
    auto t = type_of.find(columns[i]);
    if (t == type_of.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("source column ", relation.QualifiedName(), ".", columns[i], " does not exist"));
    }
    where.push_back(absl::StrCat(pg::QuoteIdent(columns[i]), " = $", i + 1, "::", t->second));
  }
  return pg::ExecParams(src,
                        absl::StrCat("SELECT ", absl::StrJoin(select, ", "), " FROM ", live.name, " WHERE ",
                                     absl::StrJoin(where, " AND ")),
                        values, absl::StrCat("reading the rows of ", relation.QualifiedName()));
}

absl::StatusOr<PGconn*> PgSchemaInspector::TargetConn(const std::string& target) {
  auto dsn = target_dsns_.find(target);
  if (dsn == target_dsns_.end()) return absl::NotFoundError(absl::StrCat("no target ", target));
  return Conn(absl::StrCat("target ", target), dsn->second);
}

absl::StatusOr<std::map<std::string, std::string>> PgSchemaInspector::TargetColumnTypes(const std::string& target,
                                                                                        const std::string& table) {
  if (document_targets_.count(target)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "target ", target, " is a document store, which cannot evaluate SQL: a filter: of the mapping into ", table,
        " is a predicate the target evaluates; remove it, or map these rows into a PostgreSQL target"));
  }
  ASSIGN_OR_RETURN(PGconn * conn, TargetConn(target));
  return PgSink::ReadColumnTypes(conn, table);
}

}  // namespace walshift
