#include "daemon/state/pg_state.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iterator>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "daemon/core/origin.h"
#include "daemon/core/status_macros.h"
#include "spdlog/spdlog.h"

namespace walshift::state {
namespace {

// The state schema's versions, oldest first: each target records the last one applied in
// walshift.schema_version, and EnsureSchema applies the rest in order, in one transaction per
// target. A change of shape is a new entry at the end (never an edit of a shipped one), so
// every release continues the state any earlier release left. Version 1 is the shape walshift
// had before the state was versioned: written with IF NOT EXISTS, it also adopts a schema an
// earlier release created.
struct Migration {
  int version;
  const char* what;
  const char* sql;
};

// Rolls back the connection's transaction, if one is still open, when it goes out of scope.
struct RollbackOnExit {
  PGconn* conn;
  ~RollbackOnExit() {
    if (PQtransactionStatus(conn) != PQTRANS_IDLE) pg::ResultPtr(PQexec(conn, "ROLLBACK"));
  }
};

constexpr const char* kBaselineDdl =
    "CREATE TABLE IF NOT EXISTS walshift.checkpoint ("
    "  pipeline text PRIMARY KEY,"
    "  commit_lsn pg_lsn NOT NULL,"
    "  commit_time timestamptz,"
    "  updated_at timestamptz NOT NULL DEFAULT now()); "
    // The initial copy's finished key ranges: each is committed with its rows, so a restart
    // copies only what is missing, and streaming knows which snapshot holds each range.
    "CREATE TABLE IF NOT EXISTS walshift.copy_chunk ("
    "  pipeline text NOT NULL,"
    "  source_table text NOT NULL,"
    "  key_column text,"  // NULL: the whole table is one range
    "  lo bigint,"        // inclusive; NULL: unbounded
    "  hi bigint,"        // exclusive; NULL: unbounded
    "  snapshot_lsn pg_lsn NOT NULL,"
    "  rows bigint NOT NULL,"
    "  copied_at timestamptz NOT NULL DEFAULT now()); "
    "CREATE INDEX IF NOT EXISTS copy_chunk_pipeline ON walshift.copy_chunk (pipeline, source_table); "
    // Re-backfills: state ('running', 'done') and the last key applied, written with each chunk.
    "CREATE TABLE IF NOT EXISTS walshift.backfill ("
    "  pipeline text NOT NULL,"
    "  source_table text NOT NULL,"
    "  state text NOT NULL,"
    "  last_key text[],"
    "  rows bigint NOT NULL DEFAULT 0,"
    "  updated_at timestamptz NOT NULL DEFAULT now(),"
    "  PRIMARY KEY (pipeline, source_table)); "
    // Differences the drift verifier confirmed (kept even when Kafka is down).
    "CREATE TABLE IF NOT EXISTS walshift.drift ("
    "  id bigserial PRIMARY KEY,"
    "  pipeline text NOT NULL,"
    "  detected_at timestamptz NOT NULL DEFAULT now(),"
    "  source_table text NOT NULL,"
    "  target_table text NOT NULL,"
    "  kind text NOT NULL,"  // MISSING, EXTRA, MISMATCH
    "  key text NOT NULL,"
    "  columns jsonb NOT NULL DEFAULT '[]',"  // [{column, expected, actual}]
    "  checked_at_lsn pg_lsn); "
    // Facts a pipeline keeps across restarts (the sessions' time zone).
    "CREATE TABLE IF NOT EXISTS walshift.settings ("
    "  pipeline text NOT NULL,"
    "  name text NOT NULL,"
    "  value text NOT NULL,"
    "  recorded_at timestamptz NOT NULL DEFAULT now(),"
    "  PRIMARY KEY (pipeline, name))";

// The error walshiftd last stopped on, per pipeline, and the target's checkpoint at that
// moment: while the checkpoint has not moved past it, the pipeline stands still on it.
constexpr const char* kErrorDdl =
    "CREATE TABLE IF NOT EXISTS walshift.error ("
    "  pipeline text PRIMARY KEY,"
    "  occurred_at timestamptz NOT NULL DEFAULT now(),"
    "  exit_code int NOT NULL,"
    "  lsn pg_lsn,"  // the source position the error names, if any
    "  checkpoint_lsn pg_lsn,"
    "  message text NOT NULL); "
    // Source transactions walshiftctl skip left out, change by change (their rows' keys), so
    // the verifier and a backfill can heal them.
    "CREATE TABLE IF NOT EXISTS walshift.skipped ("
    "  pipeline text NOT NULL,"
    "  commit_lsn pg_lsn NOT NULL,"
    "  seq int NOT NULL,"
    "  source_table text NOT NULL,"
    "  change_lsn pg_lsn NOT NULL,"
    "  operation text NOT NULL,"  // insert, update, delete, truncate, backfill (a row of a backfill chunk)
    "  key text,"                 // the source row's key, e.g. id=42
    "  skipped_at timestamptz NOT NULL DEFAULT now(),"
    "  PRIMARY KEY (pipeline, commit_lsn, seq))";

// Changes a target rejected with a data error under on_error: dead_letter, and the later changes
// of the same target rows parked behind them (see daemon/pipeline/dead_letter.h). Keyed by the
// source transaction and the order of the parked changes in it, so that a group applied again
// after a crash writes the same rows.
constexpr const char* kDeadLetterDdl =
    "CREATE TABLE IF NOT EXISTS walshift.dead_letter ("
    "  id bigserial UNIQUE,"
    "  pipeline text NOT NULL,"
    "  commit_lsn pg_lsn NOT NULL,"  // the source transaction
    "  seq int NOT NULL,"            // the parked change's number in it
    "  commit_time timestamptz,"
    "  change_lsn pg_lsn NOT NULL,"
    "  source_table text NOT NULL,"
    "  operation text NOT NULL,"  // the source change: insert, update, delete, backfill
    "  mapping int NOT NULL,"     // the mapping's position among those of source_table and target
    "  op_index int NOT NULL,"    // the operation's position among those the mapping emits for it
    "  target_table text NOT NULL,"
    "  target_operation text NOT NULL,"  // upsert, delete, update, array upsert, array remove
    "  target_key text NOT NULL,"        // the target row, e.g. id=42
    "  row_keys text[] NOT NULL,"        // every target row and JSON element the change writes
    "  source_change jsonb NOT NULL,"    // {"old": {column: text}, "new": {...}, "unchanged": [...]}
    "  mapped_values jsonb,"             // the values written, by target column
    "  sqlstate text,"                   // NULL: parked behind an earlier change of its rows
    "  message text NOT NULL,"
    "  constraint_name text,"
    "  behind_commit_lsn pg_lsn,"         // the parked change it waits behind
    "  behind_seq int,"
    "  state text NOT NULL DEFAULT 'parked',"  // parked, retried, discarded
    "  attempts int NOT NULL DEFAULT 1,"
    "  parked_at timestamptz NOT NULL DEFAULT now(),"
    "  resolved_at timestamptz,"
    "  resolved_by text,"
    "  resolution text,"
    "  PRIMARY KEY (pipeline, commit_lsn, seq)); "
    "CREATE INDEX IF NOT EXISTS dead_letter_parked ON walshift.dead_letter (pipeline, id) WHERE state = 'parked'; "
    // The checkpoint's fence: a group whose checkpoint would move back (another walshiftd
    // committed past it: this one is stale) fails, and with it the whole transaction, data
    // included. SQLSTATE WS001.
    "CREATE OR REPLACE FUNCTION walshift.stale_checkpoint(p text, attempted pg_lsn) RETURNS boolean "
    "LANGUAGE plpgsql AS $f$ BEGIN RAISE EXCEPTION USING ERRCODE = 'WS001', MESSAGE = format("
    "'pipeline %s: this target''s checkpoint is at %s, past %s that this walshiftd would commit: another "
    "walshiftd applied it, and this one is stale (nothing of its transaction was committed)', p, "
    "(SELECT commit_lsn FROM walshift.checkpoint WHERE pipeline = p), attempted); END $f$";

// Active/standby (ha:). walshift.leader holds the epoch of the pipeline's current leader; each
// leader takes a higher one when it takes over. Every writer session of a leader sets
// walshift.epoch, and walshift.fence(), called in every transaction that commits data (the
// checkpoint, a copy range), fails with SQLSTATE WS002 when another leader took over since, so
// nothing of a replaced leader's transaction commits. It reads the epoch FOR SHARE: a takeover
// (which updates the row) waits for the transactions that passed the fence before it, and the
// ones after it see the new epoch. A session without walshift.epoch (a walshiftd without ha) is
// not fenced while the pipeline has no leader, and fails with WS003 once it has one.
// walshift.lease is the leader's lease, renewed from its pipeline loop: a standby takes over a
// leader whose lease ran out (by the target's clock). A separate row, so that renewing it never
// waits for the fence's lock.
constexpr const char* kLeaderDdl =
    "CREATE TABLE IF NOT EXISTS walshift.leader ("
    "  pipeline text PRIMARY KEY,"
    "  epoch bigint NOT NULL,"
    "  node text NOT NULL,"
    "  since timestamptz NOT NULL DEFAULT now()); "
    "CREATE TABLE IF NOT EXISTS walshift.lease ("
    "  pipeline text PRIMARY KEY,"
    "  epoch bigint NOT NULL,"
    "  node text NOT NULL,"
    "  lease_s int NOT NULL,"  // the leader's ha.lease_s: standbys judge it by this, not their own
    "  renewed_at timestamptz NOT NULL DEFAULT now()); "
    "CREATE OR REPLACE FUNCTION walshift.fence(p text) RETURNS boolean LANGUAGE plpgsql AS $f$ "
    "DECLARE mine text := current_setting('walshift.epoch', true); cur bigint; who text; "
    "BEGIN "
    "  SELECT epoch, node INTO cur, who FROM walshift.leader WHERE pipeline = p FOR SHARE; "
    "  IF mine IS NULL OR mine = '' THEN "
    "    IF cur IS NULL THEN RETURN true; END IF; "
    "    RAISE EXCEPTION USING ERRCODE = 'WS003', MESSAGE = format('pipeline %s runs with ha: walshiftd %s leads it "
    "(epoch %s), and this walshiftd runs without ha; give it the same ha: section, or stop it (to run the pipeline "
    "without ha again, stop every walshiftd and DELETE FROM walshift.leader WHERE pipeline = %L)', p, who, cur, p); "
    "  END IF; "
    "  IF cur = mine::bigint THEN RETURN true; END IF; "
    "  RAISE EXCEPTION USING ERRCODE = 'WS002', MESSAGE = format('pipeline %s: walshiftd %s took over as leader "
    "(epoch %s); this walshiftd (epoch %s) was replaced and nothing of its transaction was committed', p, "
    "coalesce(who, '(none)'), coalesce(cur::text, 'none'), mine); "
    "END $f$";

// A cutover (walshiftctl cutover / rollback) between a forward pipeline and its reverse one,
// kept in the new schema's database, which both read or write: the step it reached, where the
// writes were stopped, and the privileges it revoked (to grant them back), so that a cutover
// interrupted at any step resumes or is aborted.
constexpr const char* kCutoverDdl =
    "CREATE TABLE IF NOT EXISTS walshift.cutover ("
    "  pipeline text PRIMARY KEY,"          // the forward pipeline
    "  reverse_pipeline text NOT NULL,"
    "  state text NOT NULL,"                // cutting_over, cut_over, rolling_back, rolled_back, aborted
    "  step text NOT NULL,"                 // the last step done
    "  stop_writes text NOT NULL,"          // revoke, application
    "  stop_lsn pg_lsn,"                    // where writes stopped (legacy for a cutover, new for a rollback)
    "  reverse_lsn pg_lsn,"                 // where the reverse pipeline's slot starts
    "  revoked jsonb NOT NULL DEFAULT '[]'," // [{database, table, role, privileges}] to grant back
    "  writes_stopped_at timestamptz,"
    "  writes_resumed_at timestamptz,"
    "  started_at timestamptz NOT NULL DEFAULT now(),"
    "  updated_at timestamptz NOT NULL DEFAULT now(),"
    "  history jsonb NOT NULL DEFAULT '[]')"; // [{at, state, step, note}]

constexpr Migration kMigrations[] = {
    {1, "checkpoint, copy_chunk, backfill, drift and settings", kBaselineDdl},
    {2, "error (what walshiftd stopped on) and skipped (transactions walshiftctl skip left out)", kErrorDdl},
    {3, "dead_letter (changes parked under on_error: dead_letter)", kDeadLetterDdl},
    {4, "leader, lease and fence (active/standby)", kLeaderDdl},
    {5, "cutover (walshiftctl cutover and rollback)", kCutoverDdl},
};
constexpr int kSchemaVersion = kMigrations[std::size(kMigrations) - 1].version;

}  // namespace

std::string CheckpointUpsertSql(bool wal_positions) {
  const std::string upsert =
      "WITH up AS (INSERT INTO walshift.checkpoint AS c (pipeline, commit_lsn, commit_time, updated_at) "
      "VALUES ($1, $2::pg_lsn, $3::timestamptz, now()) "
      "ON CONFLICT (pipeline) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, "
      "commit_time = EXCLUDED.commit_time, updated_at = EXCLUDED.updated_at "
      "WHERE c.commit_lsn <= EXCLUDED.commit_lsn RETURNING 1) ";
  // (The fence first: a replaced leader's transaction fails on its epoch, not on its position.)
  const std::string moved =
      "SELECT CASE WHEN NOT walshift.fence($1) THEN NULL WHEN EXISTS (SELECT 1 FROM up) THEN true "
      "ELSE walshift.stale_checkpoint($1, $2::pg_lsn) END AS moved";
  if (!wal_positions) return upsert + moved;
  return absl::StrCat(upsert, "SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text FROM (",
                      moved, ") AS f WHERE f.moved");
}

namespace {

using pg::OptionalInt;

// Whether walshift's table `table` exists (an error of a read is then real).
absl::StatusOr<bool> TableExists(PGconn* conn, const char* table, absl::string_view what) {
  ASSIGN_OR_RETURN(pg::ResultPtr r, pg::ExecParams(conn, "SELECT to_regclass($1) IS NOT NULL", {table}, what));
  return PQgetvalue(r.get(), 0, 0)[0] == 't';
}

}  // namespace

int StateSchemaVersion() { return kSchemaVersion; }

namespace {

// The version recorded in walshift.schema_version: 0 when the table is absent (a target walshift
// never ran on, or one an earlier release set up before the state was versioned).
absl::StatusOr<int> RecordedVersion(PGconn* conn, const std::string& context) {
  // Two statements: a query naming a table that does not exist fails when it is parsed.
  ASSIGN_OR_RETURN(bool exists, TableExists(conn, "walshift.schema_version", context));
  if (!exists) return 0;
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::Exec(conn, "SELECT coalesce(max(version), 0)::text FROM walshift.schema_version", context));
  int version = 0;
  if (!absl::SimpleAtoi(PQgetvalue(r.get(), 0, 0), &version)) {
    return absl::DataLossError(absl::StrCat(context, ": unreadable version ", PQgetvalue(r.get(), 0, 0)));
  }
  return version;
}

absl::Status NewerThanKnown(const std::string& context, int found) {
  return absl::FailedPreconditionError(
      absl::StrCat(context, " is at version ", found, ", newer than this walshiftd knows (", kSchemaVersion,
                   "): a newer walshiftd ran this pipeline; run that release (or a newer one), never an older one"));
}

// Adds what a permission error means here to its message.
absl::Status ExplainPrivilege(absl::Status st, absl::string_view what) {
  if (!absl::StrContains(st.message(), "SQLSTATE 42501")) return st;
  return absl::Status(st.code(),
                      absl::StrCat(st.message(), "; walshift keeps its state in the schema walshift of ", what,
                                   ": let its role create it once (GRANT CREATE ON DATABASE … TO the role), or "
                                   "create the schema for it (CREATE SCHEMA walshift AUTHORIZATION the role)"));
}

}  // namespace

absl::Status CheckStatePrivileges(PGconn* conn, absl::string_view what, std::vector<std::string>* problems) {
  std::string context = absl::StrCat(what, ": privileges on the walshift state schema");
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::Exec(conn,
                            "SELECT quote_ident(current_user), quote_ident(current_database()), "
                            "  has_database_privilege(current_database(), 'CREATE'), n.oid IS NOT NULL, "
                            "  coalesce(has_schema_privilege(n.oid, 'USAGE'), false), "
                            "  coalesce(has_schema_privilege(n.oid, 'CREATE'), false) "
                            "FROM (SELECT 1) one LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = 'walshift'",
                            context));
  const std::string role = PQgetvalue(r.get(), 0, 0);  // quoted where it must be
  const std::string db = PQgetvalue(r.get(), 0, 1);
  auto yes = [&](int c) { return std::string_view(PQgetvalue(r.get(), 0, c)) == "t"; };
  const std::string purpose = "walshift keeps its checkpoints and state there";
  if (!yes(3)) {
    if (!yes(2)) {
      problems->push_back(absl::StrCat(what, ": the schema walshift does not exist and role ", role,
                                       " cannot create it (", purpose, "): GRANT CREATE ON DATABASE ", db, " TO ",
                                       role, "; or create it for the role: CREATE SCHEMA walshift AUTHORIZATION ",
                                       role));
    }
    return absl::OkStatus();
  }
  if (!yes(4)) {
    problems->push_back(absl::StrCat(what, ": role ", role, " has no USAGE on the schema walshift (", purpose,
                                     "): GRANT USAGE, CREATE ON SCHEMA walshift TO ", role,
                                     "; or ALTER SCHEMA walshift OWNER TO ", role));
    return absl::OkStatus();
  }
  // (Without SELECT on it, the recorded version cannot be read: say so rather than fail.)
  ASSIGN_OR_RETURN(pg::ResultPtr readable,
                   pg::Exec(conn,
                            "SELECT to_regclass('walshift.schema_version') IS NULL "
                            "  OR has_table_privilege('walshift.schema_version', 'SELECT')",
                            context));
  if (std::string_view(PQgetvalue(readable.get(), 0, 0)) != "t") {
    problems->push_back(absl::StrCat(what, ": role ", role,
                                     " cannot read walshift.schema_version: GRANT SELECT, INSERT, UPDATE, DELETE ON "
                                     "ALL TABLES IN SCHEMA walshift TO ",
                                     role));
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(int version, RecordedVersion(conn, context));
  if (version < kSchemaVersion && !yes(5)) {
    problems->push_back(absl::StrCat(what, ": role ", role, " cannot create walshift's state tables (",
                                     version == 0 ? "none exist yet" : "an earlier release's need migrating",
                                     ") in the schema walshift: GRANT CREATE ON SCHEMA walshift TO ", role,
                                     "; or ALTER SCHEMA walshift OWNER TO ", role));
  }
  // The relations of the schema walshift for which `lacking` (over pg_class c) holds, listed.
  auto lacking = [&](const char* condition) {
    return pg::Exec(conn,
                    absl::StrCat("SELECT string_agg(format('walshift.%I', c.relname), ', ' ORDER BY c.relname) "
                                 "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                                 "WHERE n.nspname = 'walshift' AND ",
                                 condition),
                    context);
  };
  // (A list of privileges is true when any one is held: each on its own.)
  ASSIGN_OR_RETURN(pg::ResultPtr tables,
                   lacking("c.relkind IN ('r', 'p') AND c.relname <> 'schema_version' "
                           "  AND NOT (has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'INSERT') "
                           "    AND has_table_privilege(c.oid, 'UPDATE') AND has_table_privilege(c.oid, 'DELETE'))"));
  if (!PQgetisnull(tables.get(), 0, 0)) {
    problems->push_back(absl::StrCat(what, ": role ", role, " cannot read and write walshift's state tables ",
                                     PQgetvalue(tables.get(), 0, 0),
                                     " (another role created them): GRANT SELECT, INSERT, UPDATE, DELETE ON ALL "
                                     "TABLES IN SCHEMA walshift TO ",
                                     role, "; or make the role their owner (ALTER TABLE … OWNER TO ", role, ")"));
  }
  // walshift.drift and walshift.dead_letter number their rows from a sequence.
  // (CASE: has_sequence_privilege fails on any other relation, and the planner may test it first.)
  ASSIGN_OR_RETURN(pg::ResultPtr sequences,
                   lacking("CASE WHEN c.relkind = 'S' THEN NOT (has_sequence_privilege(c.oid, 'USAGE') OR "
                           "  has_sequence_privilege(c.oid, 'UPDATE')) END"));
  if (!PQgetisnull(sequences.get(), 0, 0)) {
    problems->push_back(absl::StrCat(what, ": role ", role, " cannot number rows of walshift's state tables with ",
                                     PQgetvalue(sequences.get(), 0, 0),
                                     " (another role created them): GRANT USAGE ON ALL SEQUENCES IN SCHEMA walshift TO ",
                                     role));
  }
  return absl::OkStatus();
}

absl::Status EnsureSchema(PGconn* conn, absl::string_view what) {
  std::string context = absl::StrCat(what, ": the walshift state schema");
  if (PQtransactionStatus(conn) != PQTRANS_IDLE || PQpipelineStatus(conn) != PQ_PIPELINE_OFF) {
    return absl::InternalError(absl::StrCat(context, ": needs an idle connection outside a transaction and pipeline"));
  }
  // Current already (every start after the first): nothing to create, no lock, no DDL, so a role
  // without CREATE works once the state exists.
  ASSIGN_OR_RETURN(int found, RecordedVersion(conn, context));
  if (found == kSchemaVersion) return absl::OkStatus();
  if (found > kSchemaVersion) return NewerThanKnown(context, found);

  // Serialized per database: walshiftd's sinks, the verifier and walshiftctl may all start at
  // once, and each would otherwise try the same migration. Read committed, so that the version
  // read after the lock sees what the process before us committed; a bounded wait for the lock.
  // The two-key advisory lock (a class id for walshift, then the purpose) stays out of the
  // single-key space applications use.
  RollbackOnExit rollback{conn};
  // CREATE SCHEMA needs CREATE on the database even when the schema exists: a schema made in
  // advance for walshiftd's role (CREATE SCHEMA walshift AUTHORIZATION role) is left alone.
  RETURN_IF_ERROR(pg::Exec(conn,
                           "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '60s'; "
                           "SELECT pg_advisory_xact_lock(2008730454, 1)",
                           context)
                      .status());
  ASSIGN_OR_RETURN(pg::ResultPtr schema,
                   pg::Exec(conn, "SELECT to_regnamespace('walshift') IS NOT NULL", context));
  if (std::string_view(PQgetvalue(schema.get(), 0, 0)) != "t") {
    RETURN_IF_ERROR(ExplainPrivilege(pg::Exec(conn, "CREATE SCHEMA IF NOT EXISTS walshift", context).status(), what));
  }
  RETURN_IF_ERROR(ExplainPrivilege(pg::Exec(conn,
                                            "CREATE TABLE IF NOT EXISTS walshift.schema_version ("
                                            "  version int PRIMARY KEY,"
                                            "  description text NOT NULL,"
                                            "  migrated_at timestamptz NOT NULL DEFAULT now())",
                                            context)
                                       .status(),
                                   what));
  ASSIGN_OR_RETURN(found, RecordedVersion(conn, context));
  if (found > kSchemaVersion) return NewerThanKnown(context, found);
  for (const Migration& m : kMigrations) {
    if (m.version <= found) continue;
    std::string step = absl::StrCat(context, ": migrating to version ", m.version, " (", m.what, ")");
    RETURN_IF_ERROR(ExplainPrivilege(pg::Exec(conn, m.sql, step).status(), what));
    std::string version = absl::StrCat(m.version);
    RETURN_IF_ERROR(pg::ExecParams(conn, "INSERT INTO walshift.schema_version (version, description) VALUES ($1, $2)",
                                   {version.c_str(), m.what}, step)
                        .status());
  }
  return pg::Exec(conn, "COMMIT", context).status();
}

absl::StatusOr<std::optional<CheckpointRow>> ReadCheckpointRow(PGconn* conn, const std::string& pipeline,
                                                               absl::string_view what) {
  ASSIGN_OR_RETURN(bool exists, TableExists(conn, "walshift.checkpoint", what));
  if (!exists) return std::optional<CheckpointRow>();
  ASSIGN_OR_RETURN(pg::ResultPtr r, pg::ExecParams(conn,
                                                   "SELECT commit_lsn::text, coalesce(commit_time::text, ''), "
                                                   "coalesce(extract(epoch FROM now() - commit_time), 0)::text, "
                                                   "extract(epoch FROM now() - updated_at)::text "
                                                   "FROM walshift.checkpoint WHERE pipeline = $1",
                                                   {pipeline.c_str()}, absl::StrCat(what, ": reading the checkpoint")));
  if (PQntuples(r.get()) == 0) return std::optional<CheckpointRow>();
  CheckpointRow row;
  auto lsn = ParseLsn(PQgetvalue(r.get(), 0, 0));
  if (!lsn) return absl::DataLossError(absl::StrCat(what, ": unreadable checkpoint ", PQgetvalue(r.get(), 0, 0)));
  row.lsn = *lsn;
  row.commit_time = PQgetvalue(r.get(), 0, 1);
  (void)absl::SimpleAtod(PQgetvalue(r.get(), 0, 2), &row.seconds_since_commit);
  (void)absl::SimpleAtod(PQgetvalue(r.get(), 0, 3), &row.seconds_since_update);
  return std::optional<CheckpointRow>(std::move(row));
}

namespace {

// The writer lock's keys: a class id for walshift's pipelines (next to 2008730454, the schema
// migrations' class), then a 31-bit FNV-1a hash of the pipeline's name, stable across releases.
constexpr const char* kWriterLockClass = "2008730455";

std::string WriterLockKey(const std::string& pipeline) {
  uint32_t h = 2166136261u;
  for (unsigned char c : pipeline) {
    h ^= c;
    h *= 16777619u;
  }
  return absl::StrCat(h & 0x7fffffffu);
}

// Other sessions holding the writer lock of `key` with a transaction open: pid, state, since,
// client, one row each.
absl::StatusOr<pg::ResultPtr> OpenWriters(PGconn* conn, const std::string& key, absl::string_view what) {
  return pg::ExecParams(
      conn,
      "SELECT a.pid::text, coalesce(a.state, ''), to_char(a.xact_start AT TIME ZONE 'UTC', "
      "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), coalesce(nullif(a.application_name, ''), 'a session') || ' from ' || "
      "coalesce(host(a.client_addr), 'a local socket') "
      "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
      "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::oid AND l.objid = $2::oid AND l.objsubid = 2 "
      "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) "
      "AND a.pid <> pg_catalog.pg_backend_pid() "
      // A session that went idle a moment ago may still have statements of its client's next
      // transaction in its receive buffer (pipelined groups, sent before the client died): it
      // is settled once it has been idle for a while.
      "AND (a.xact_start IS NOT NULL OR a.state_change > pg_catalog.clock_timestamp() - interval '250 ms')",
      {kWriterLockClass, key.c_str()}, absl::StrCat(what, ": looking for sessions of an earlier walshiftd run"));
}

std::string Describe(const PGresult* r, int i) {
  return absl::StrCat("pid ", PQgetvalue(r, i, 0), " (", PQgetvalue(r, i, 1), " since ", PQgetvalue(r, i, 2), ", ",
                      PQgetvalue(r, i, 3), ")");
}

}  // namespace

absl::Status HoldWriterLock(PGconn* conn, const std::string& pipeline, int64_t epoch, absl::string_view what) {
  std::string key = WriterLockKey(pipeline);
  std::string mine = epoch > 0 ? absl::StrCat(epoch) : "";
  return pg::ExecParams(conn,
                        "SELECT pg_catalog.pg_advisory_lock_shared($1::int, $2::int), "
                        "pg_catalog.set_config('walshift.epoch', $3, false)",
                        {kWriterLockClass, key.c_str(), mine.c_str()},
                        absl::StrCat(what, ": taking the pipeline's writer lock"))
      .status();
}

std::string ReplicationOriginName(const std::string& pipeline, const std::string& target) {
  return absl::StrCat("walshift_", pipeline, "_", target);
}

absl::StatusOr<bool> SetUpReplicationOrigin(PGconn* conn, const std::string& pipeline, const std::string& origin,
                                            absl::string_view what) {
  std::string context = absl::StrCat(what, ": setting up the replication origin ", origin);
  auto not_permitted = [](const absl::Status& st) {
    // 42501: the role may not use origins; 55000: max_replication_slots = 0.
    return absl::StrContains(st.message(), "(SQLSTATE 42501)") || absl::StrContains(st.message(), "(SQLSTATE 55000)");
  };
  auto created = pg::ExecParams(conn,
                                "SELECT pg_catalog.pg_replication_origin_create($1) "
                                "WHERE pg_catalog.pg_replication_origin_oid($1) IS NULL",
                                {origin.c_str()}, context);
  if (!created.ok()) {
    if (not_permitted(created.status())) return false;
    // 23505: another session created it at the same moment.
    if (!absl::StrContains(created.status().message(), "(SQLSTATE 23505)")) return created.status();
  }
  // 55006 "replication origin with ID n is already active for PID p": on PostgreSQL 15 an
  // origin serves one session at a time. The holder may be
  //  - a session this process just closed: a backend releases its locks and leaves
  //    pg_stat_activity before it releases its origin, so for a moment the origin is held by a
  //    pid nobody can see: waited for;
  //  - a session of this pipeline's earlier run (a walshiftd killed, its sessions not yet gone),
  //    which holds the pipeline's writer lock: ended, then waited for;
  //  - anyone else's live session: an error naming it.
  std::string key = WriterLockKey(pipeline);
  absl::Time until = absl::Now() + absl::Seconds(10);
  std::string ended_pid;
  for (;;) {
    auto set = pg::ExecParams(conn, "SELECT pg_catalog.pg_replication_origin_session_setup($1)", {origin.c_str()},
                              context);
    if (set.ok()) return true;
    if (not_permitted(set.status())) return false;
    if (!absl::StrContains(set.status().message(), "(SQLSTATE 55006)") || absl::Now() >= until) return set.status();
    absl::string_view msg = set.status().message();
    size_t at = msg.find("for PID ");
    std::string pid;
    if (at != absl::string_view::npos) {
      for (size_t i = at + 8; i < msg.size() && absl::ascii_isdigit(msg[i]); ++i) pid.push_back(msg[i]);
    }
    if (pid.empty()) return set.status();
    ASSIGN_OR_RETURN(pg::ResultPtr holder,
                     pg::ExecParams(conn,
                                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l "
                                    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::oid "
                                    "AND l.objid = $2::oid AND l.objsubid = 2 AND l.pid = $3::int), "
                                    "EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $3::int) "
                                    "FROM (SELECT 1) one WHERE $3::int <> pg_catalog.pg_backend_pid()",
                                    {kWriterLockClass, key.c_str(), pid.c_str()}, context));
    if (PQntuples(holder.get()) == 0) return set.status();  // this very session
    bool ours = PQgetvalue(holder.get(), 0, 0)[0] == 't';
    bool alive = PQgetvalue(holder.get(), 0, 1)[0] == 't';
    if (alive && !ours) return set.status();
    if (alive && ended_pid != pid) {
      RETURN_IF_ERROR(pg::ExecParams(conn, "SELECT pg_catalog.pg_terminate_backend($1::int)", {pid.c_str()}, context)
                          .status());
      spdlog::warn("{}: the replication origin {} was held by pid {}, a session of an earlier run of this "
                   "pipeline: ended it",
                   std::string(what), origin, pid);
      ended_pid = pid;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

absl::Status UseReplicationOrigin(PGconn* conn, const std::string& pipeline, const std::string& origin,
                                  absl::string_view what) {
  ASSIGN_OR_RETURN(bool set, SetUpReplicationOrigin(conn, pipeline, origin, what));
  if (set) return absl::OkStatus();
  static absl::Mutex warned_mu;
  static auto* warned = new std::set<std::string>();
  absl::MutexLock lock(&warned_mu);
  if (warned->insert(std::string(OriginFamily(origin))).second) {
    spdlog::warn("{}: changes are applied without the replication origin {}: the role may not use replication "
                 "origins (a superuser, or GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), "
                 "pg_replication_origin_session_setup(text) to it) or max_replication_slots is 0; a pipeline "
                 "reading this database (a reverse pipeline after a cutover) cannot pass over them",
                 std::string(what), std::string(OriginFamily(origin)));
  }
  return absl::OkStatus();
}

namespace {
// The leader lock's class, next to the writer lock's; the key is the same hash of the pipeline.
constexpr const char* kLeaderLockClass = "2008730456";
}  // namespace

absl::StatusOr<bool> TryLeaderLock(PGconn* conn, const std::string& pipeline, absl::string_view what) {
  std::string key = WriterLockKey(pipeline);
  ASSIGN_OR_RETURN(pg::ResultPtr r, pg::ExecParams(conn, "SELECT pg_catalog.pg_try_advisory_lock($1::int, $2::int)",
                                                   {kLeaderLockClass, key.c_str()},
                                                   absl::StrCat(what, ": taking the pipeline's leader lock")));
  return std::string_view(PQgetvalue(r.get(), 0, 0)) == "t";
}

absl::StatusOr<LeaderRow> ReadLeader(PGconn* conn, const std::string& pipeline, absl::string_view what) {
  std::string key = WriterLockKey(pipeline);
  std::string context = absl::StrCat(what, ": reading the pipeline's leader");
  LeaderRow row;
  ASSIGN_OR_RETURN(bool exists, TableExists(conn, "walshift.leader", context));
  if (exists) {
    ASSIGN_OR_RETURN(
        pg::ResultPtr r,
        pg::ExecParams(conn,
                       "SELECT l.epoch::text, l.node, to_char(l.since AT TIME ZONE 'UTC', "
                       "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), coalesce(s.node, ''), "
                       "coalesce(extract(epoch FROM now() - s.renewed_at)::text, '-1'), "
                       "coalesce(s.lease_s::text, '0') "
                       "FROM walshift.leader l LEFT JOIN walshift.lease s ON s.pipeline = l.pipeline "
                       "WHERE l.pipeline = $1",
                       {pipeline.c_str()}, context));
    if (PQntuples(r.get()) == 1) {
      (void)absl::SimpleAtoi(PQgetvalue(r.get(), 0, 0), &row.epoch);
      row.node = PQgetvalue(r.get(), 0, 1);
      row.since = PQgetvalue(r.get(), 0, 2);
      row.lease_node = PQgetvalue(r.get(), 0, 3);
      (void)absl::SimpleAtod(PQgetvalue(r.get(), 0, 4), &row.lease_age_s);
      (void)absl::SimpleAtoi(PQgetvalue(r.get(), 0, 5), &row.lease_s);
    }
  }
  ASSIGN_OR_RETURN(
      pg::ResultPtr holders,
      pg::ExecParams(conn,
                     "SELECT l.pid::text, coalesce(extract(epoch FROM now() - a.state_change), 0)::text "
                     "FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
                     "WHERE l.locktype = 'advisory' AND l.granted "
                     "AND l.mode = 'ExclusiveLock' AND l.classid = $1::oid AND l.objid = $2::oid AND l.objsubid = 2 "
                     "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) "
                     "AND l.pid <> pg_catalog.pg_backend_pid()",
                     {kLeaderLockClass, key.c_str()}, context));
  for (int i = 0; i < PQntuples(holders.get()); ++i) {
    int pid = 0;
    double silent = 0;
    if (absl::SimpleAtoi(PQgetvalue(holders.get(), i, 0), &pid)) row.lock_holders.push_back(pid);
    (void)absl::SimpleAtod(PQgetvalue(holders.get(), i, 1), &silent);
    row.holder_silent_s = i == 0 ? silent : std::min(row.holder_silent_s, silent);
  }
  return row;
}

absl::Status ReleaseLeaderLock(PGconn* conn, absl::string_view what) {
  // (The session holds no other advisory lock; unlocking one it does not hold would warn.)
  return pg::Exec(conn, "SELECT pg_catalog.pg_advisory_unlock_all()",
                  absl::StrCat(what, ": letting go of the pipeline's leader lock"))
      .status();
}

absl::Status EndOtherWriters(PGconn* conn, const std::string& pipeline, absl::string_view what) {
  const std::string key = WriterLockKey(pipeline);
  const std::string sessions =
      "SELECT l.pid::text FROM pg_catalog.pg_locks l WHERE l.locktype = 'advisory' AND l.granted "
      "AND l.classid = $1::oid AND l.objid = $2::oid AND l.objsubid = 2 "
      "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) "
      "AND l.pid <> pg_catalog.pg_backend_pid()";
  for (absl::Time until = absl::Now() + absl::Seconds(10);;) {
    ASSIGN_OR_RETURN(pg::ResultPtr r, pg::ExecParams(conn, sessions, {kWriterLockClass, key.c_str()},
                                                     absl::StrCat(what, ": looking for a replaced leader's writers")));
    if (PQntuples(r.get()) == 0) return absl::OkStatus();
    if (absl::Now() >= until) {
      return absl::UnavailableError(absl::StrCat(
          what, ": ", PQntuples(r.get()), " writer session(s) of a replaced leader of pipeline ", pipeline,
          " could not be terminated (pg_terminate_backend needs the same role or pg_signal_backend)"));
    }
    for (int i = 0; i < PQntuples(r.get()); ++i) {
      (void)pg::ExecParams(conn, "SELECT pg_catalog.pg_terminate_backend($1::int)", {PQgetvalue(r.get(), i, 0)}, what);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

absl::StatusOr<int64_t> TakeEpoch(PGconn* conn, const std::string& pipeline, const std::string& node,
                                  absl::Duration lease, absl::Duration lock_timeout, absl::string_view what) {
  std::string context = absl::StrCat(what, ": taking a new leader epoch");
  RollbackOnExit rollback{conn};
  RETURN_IF_ERROR(pg::Exec(conn,
                           absl::StrCat("BEGIN; SET LOCAL lock_timeout = '",
                                        std::max<int64_t>(1, absl::ToInt64Milliseconds(lock_timeout)), "ms'"),
                           context)
                      .status());
  ASSIGN_OR_RETURN(
      pg::ResultPtr r,
      pg::ExecParams(conn,
                     "INSERT INTO walshift.leader AS l (pipeline, epoch, node, since) VALUES ($1, 1, $2, now()) "
                     "ON CONFLICT (pipeline) DO UPDATE SET epoch = l.epoch + 1, node = EXCLUDED.node, since = now() "
                     "RETURNING epoch::text",
                     {pipeline.c_str(), node.c_str()}, context));
  std::string epoch = PQgetvalue(r.get(), 0, 0);
  std::string lease_s = absl::StrCat(std::max<int64_t>(1, absl::ToInt64Seconds(lease)));
  RETURN_IF_ERROR(pg::ExecParams(conn,
                                 "INSERT INTO walshift.lease AS s (pipeline, epoch, node, lease_s, renewed_at) "
                                 "VALUES ($1, $2::bigint, $3, $4::int, now()) ON CONFLICT (pipeline) DO UPDATE SET "
                                 "epoch = EXCLUDED.epoch, node = EXCLUDED.node, lease_s = EXCLUDED.lease_s, "
                                 "renewed_at = now()",
                                 {pipeline.c_str(), epoch.c_str(), node.c_str(), lease_s.c_str()}, context)
                      .status());
  RETURN_IF_ERROR(pg::Exec(conn, "COMMIT", context).status());
  int64_t out = 0;
  (void)absl::SimpleAtoi(epoch, &out);
  return out;
}

absl::StatusOr<bool> RenewLease(PGconn* conn, const std::string& pipeline, const std::string& node, int64_t epoch,
                                absl::string_view what) {
  std::string e = absl::StrCat(epoch);
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::ExecParams(conn,
                                  "UPDATE walshift.lease SET renewed_at = now() "
                                  "WHERE pipeline = $1 AND node = $2 AND epoch = $3::bigint",
                                  {pipeline.c_str(), node.c_str(), e.c_str()},
                                  absl::StrCat(what, ": renewing the leader's lease")));
  return std::string_view(PQcmdTuples(r.get())) == "1";
}

absl::Status SettleEarlierWriters(PGconn* conn, const std::string& pipeline, absl::string_view what,
                                  absl::Duration patience) {
  const std::string key = WriterLockKey(pipeline);
  const absl::Time give_up = absl::Now() + patience;
  bool terminated = false;
  for (;;) {
    ASSIGN_OR_RETURN(pg::ResultPtr r, OpenWriters(conn, key, what));
    const int n = PQntuples(r.get());
    if (n == 0) return absl::OkStatus();
    absl::Time now = absl::Now();
    if (now >= give_up + absl::Seconds(10)) {
      std::string who;
      for (int i = 0; i < n; ++i) absl::StrAppend(&who, i ? "; " : "", Describe(r.get(), i));
      return absl::UnavailableError(absl::StrCat(
          what, ": ", n, " session(s) of another walshiftd run of pipeline ", pipeline,
          " still have a transaction open: ", who,
          ". They could not be terminated (pg_terminate_backend needs the same role or pg_signal_backend); end them, "
          "and make sure only one walshiftd runs this pipeline"));
    }
    if (now >= give_up && !terminated) {
      terminated = true;
      for (int i = 0; i < n; ++i) {
        spdlog::warn(
            "{}: {} of an earlier walshiftd run of pipeline {} still has a transaction open after {}; terminating it "
            "so that what it holds is settled before this run reads the checkpoint (if a second walshiftd runs this "
            "pipeline, stop it: one pipeline has one walshiftd)",
            std::string(what), Describe(r.get(), i), pipeline, absl::FormatDuration(patience));
        (void)pg::ExecParams(conn, "SELECT pg_catalog.pg_terminate_backend($1::int)", {PQgetvalue(r.get(), i, 0)},
                             what);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

absl::StatusOr<Lsn> ReadCheckpoint(PGconn* conn, const std::string& pipeline, absl::string_view what) {
  ASSIGN_OR_RETURN(std::optional<CheckpointRow> row, ReadCheckpointRow(conn, pipeline, what));
  return row ? row->lsn : kInvalidLsn;
}

Statement CopyChunkInsert(const std::string& pipeline, const CopyChunk& chunk) {
  Statement s;
  s.sql =
      "INSERT INTO walshift.copy_chunk (pipeline, source_table, key_column, lo, hi, snapshot_lsn, rows) "
      "SELECT $1, $2, $3, $4::bigint, $5::bigint, $6::pg_lsn, $7::bigint WHERE walshift.fence($1)";
  s.storage = {pipeline,
               chunk.source_table,
               chunk.key_column,
               chunk.lo ? absl::StrCat(*chunk.lo) : "",
               chunk.hi ? absl::StrCat(*chunk.hi) : "",
               FormatLsn(chunk.snapshot_lsn),
               absl::StrCat(chunk.rows)};
  s.params = {s.storage[0].c_str(),
              s.storage[1].c_str(),
              chunk.key_column.empty() ? nullptr : s.storage[2].c_str(),
              chunk.lo ? s.storage[3].c_str() : nullptr,
              chunk.hi ? s.storage[4].c_str() : nullptr,
              s.storage[5].c_str(),
              s.storage[6].c_str()};
  return s;
}

absl::StatusOr<std::vector<CopyChunk>> ReadCopyChunks(PGconn* conn, const std::string& pipeline,
                                                      const std::string& source_table, Lsn after,
                                                      absl::string_view what) {
  std::vector<CopyChunk> out;
  ASSIGN_OR_RETURN(bool exists, TableExists(conn, "walshift.copy_chunk", what));
  if (!exists) return out;
  std::string after_text = FormatLsn(after == kInvalidLsn ? 0 : after);
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::ExecParams(conn,
                                  "SELECT source_table, coalesce(key_column, ''), lo, hi, snapshot_lsn::text, rows "
                                  "FROM walshift.copy_chunk WHERE pipeline = $1 AND ($2 = '' OR source_table = $2) "
                                  "AND snapshot_lsn > $3::pg_lsn ORDER BY source_table, lo NULLS FIRST",
                                  {pipeline.c_str(), source_table.c_str(), after_text.c_str()},
                                  absl::StrCat(what, ": reading walshift.copy_chunk")));
  for (int i = 0; i < PQntuples(r.get()); ++i) {
    CopyChunk c;
    c.source_table = PQgetvalue(r.get(), i, 0);
    c.key_column = PQgetvalue(r.get(), i, 1);
    c.lo = OptionalInt(r.get(), i, 2);
    c.hi = OptionalInt(r.get(), i, 3);
    c.snapshot_lsn = ParseLsn(PQgetvalue(r.get(), i, 4)).value_or(kInvalidLsn);
    c.rows = static_cast<uint64_t>(OptionalInt(r.get(), i, 5).value_or(0));
    out.push_back(std::move(c));
  }
  return out;
}

absl::StatusOr<std::vector<BackfillRow>> ReadBackfills(PGconn* conn, const std::string& pipeline,
                                                       absl::string_view what) {
  std::vector<BackfillRow> out;
  ASSIGN_OR_RETURN(bool exists, TableExists(conn, "walshift.backfill", what));
  if (!exists) return out;
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::ExecParams(conn,
                                  "SELECT b.source_table, b.state, b.last_key IS NULL, b.rows::text, "
                                  "extract(epoch FROM b.updated_at)::text, k.v FROM walshift.backfill b "
                                  "LEFT JOIN LATERAL unnest(b.last_key) WITH ORDINALITY AS k(v, n) ON true "
                                  "WHERE b.pipeline = $1 ORDER BY b.source_table, k.n",
                                  {pipeline.c_str()}, absl::StrCat(what, ": reading walshift.backfill")));
  for (int i = 0; i < PQntuples(r.get()); ++i) {
    std::string table = PQgetvalue(r.get(), i, 0);
    if (out.empty() || out.back().source_table != table) {
      BackfillRow row;
      row.source_table = table;
      row.state = PQgetvalue(r.get(), i, 1);
      if (PQgetvalue(r.get(), i, 2)[0] != 't') row.last_key.emplace();
      (void)absl::SimpleAtoi(PQgetvalue(r.get(), i, 3), &row.rows);
      (void)absl::SimpleAtod(PQgetvalue(r.get(), i, 4), &row.updated_at);
      out.push_back(std::move(row));
    }
    if (out.back().last_key && !PQgetisnull(r.get(), i, 5)) out.back().last_key->push_back(PQgetvalue(r.get(), i, 5));
  }
  return out;
}

absl::StatusOr<double> ReadClock(PGconn* conn, absl::string_view what) {
  ASSIGN_OR_RETURN(pg::ResultPtr r, pg::Exec(conn, "SELECT extract(epoch FROM now())::text", what));
  double now = 0;
  (void)absl::SimpleAtod(PQgetvalue(r.get(), 0, 0), &now);
  return now;
}

absl::Status RecordDrift(PGconn* conn, const std::string& pipeline, const std::string& source_table,
                         const std::string& target_table, const std::string& kind, const std::string& key,
                         const std::string& columns_json, const std::string& checked_at_lsn) {
  return pg::ExecParams(conn,
                        "INSERT INTO walshift.drift (pipeline, source_table, target_table, kind, key, "
                        "columns, checked_at_lsn) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::pg_lsn)",
                        {pipeline.c_str(), source_table.c_str(), target_table.c_str(), kind.c_str(), key.c_str(),
                         columns_json.c_str(), checked_at_lsn.empty() ? nullptr : checked_at_lsn.c_str()},
                        "target: recording drift")
      .status();
}

absl::StatusOr<std::optional<std::string>> ReadSetting(PGconn* conn, const std::string& pipeline,
                                                       const std::string& name, absl::string_view what) {
  ASSIGN_OR_RETURN(bool exists, TableExists(conn, "walshift.settings", what));
  if (!exists) return std::optional<std::string>();
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::ExecParams(conn, "SELECT value FROM walshift.settings WHERE pipeline = $1 AND name = $2",
                                  {pipeline.c_str(), name.c_str()}, absl::StrCat(what, ": reading walshift.settings")));
  if (PQntuples(r.get()) == 0) return std::optional<std::string>();
  return std::optional<std::string>(PQgetvalue(r.get(), 0, 0));
}

absl::Status WriteSetting(PGconn* conn, const std::string& pipeline, const std::string& name, const std::string& value,
                          absl::string_view what) {
  RETURN_IF_ERROR(EnsureSchema(conn, what));
  return pg::ExecParams(conn,
                        "INSERT INTO walshift.settings (pipeline, name, value) VALUES ($1, $2, $3) "
                        "ON CONFLICT (pipeline, name) DO UPDATE SET value = EXCLUDED.value, recorded_at = now()",
                        {pipeline.c_str(), name.c_str(), value.c_str()}, absl::StrCat(what, ": recording ", name))
      .status();
}

absl::Status RecordStopError(PGconn* conn, const std::string& pipeline, int exit_code, const std::string& message,
                             Lsn lsn, absl::string_view what) {
  std::string context = absl::StrCat(what, ": recording the error walshiftd stopped on");
  RETURN_IF_ERROR(EnsureSchema(conn, what));
  std::string code = absl::StrCat(exit_code);
  std::string at = lsn == kInvalidLsn ? std::string() : FormatLsn(lsn);
  return pg::ExecParams(conn,
                        "INSERT INTO walshift.error AS e (pipeline, occurred_at, exit_code, lsn, checkpoint_lsn, message) "
                        "SELECT $1, now(), $2::int, nullif($3, '')::pg_lsn, "
                        "  (SELECT commit_lsn FROM walshift.checkpoint WHERE pipeline = $1), $4 "
                        "ON CONFLICT (pipeline) DO UPDATE SET occurred_at = EXCLUDED.occurred_at, "
                        "  exit_code = EXCLUDED.exit_code, lsn = EXCLUDED.lsn, checkpoint_lsn = EXCLUDED.checkpoint_lsn, "
                        "  message = EXCLUDED.message",
                        {pipeline.c_str(), code.c_str(), at.c_str(), message.c_str()}, context)
      .status();
}

absl::StatusOr<std::optional<StopError>> ReadStopError(PGconn* conn, const std::string& pipeline,
                                                       absl::string_view what) {
  std::string context = absl::StrCat(what, ": reading the error walshiftd stopped on");
  ASSIGN_OR_RETURN(bool exists, TableExists(conn, "walshift.error", context));
  if (!exists) return std::optional<StopError>();
  // Current while the checkpoint has not moved since: a walshiftd that runs again and applies
  // something has left it behind.
  ASSIGN_OR_RETURN(
      pg::ResultPtr r,
      pg::ExecParams(conn,
                     "SELECT to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
                     "  e.exit_code::text, coalesce(e.lsn::text, ''), e.message, "
                     "  ((e.checkpoint_lsn IS NULL AND c.commit_lsn IS NULL) OR c.commit_lsn <= e.checkpoint_lsn) "
                     "FROM walshift.error e LEFT JOIN walshift.checkpoint c ON c.pipeline = e.pipeline "
                     "WHERE e.pipeline = $1",
                     {pipeline.c_str()}, context));
  if (PQntuples(r.get()) == 0) return std::optional<StopError>();
  StopError e;
  e.occurred_at = PQgetvalue(r.get(), 0, 0);
  (void)absl::SimpleAtoi(PQgetvalue(r.get(), 0, 1), &e.exit_code);
  e.lsn = PQgetvalue(r.get(), 0, 2);
  e.message = PQgetvalue(r.get(), 0, 3);
  e.current = PQgetvalue(r.get(), 0, 4)[0] == 't';
  return std::optional<StopError>(std::move(e));
}

absl::StatusOr<std::map<std::string, SkippedChanges>> ReadSkipped(PGconn* conn, const std::string& pipeline,
                                                                  absl::string_view what) {
  std::string context = absl::StrCat(what, ": reading walshift.skipped");
  std::map<std::string, SkippedChanges> out;
  ASSIGN_OR_RETURN(bool exists, TableExists(conn, "walshift.skipped", context));
  if (!exists) return out;
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::ExecParams(conn,
                                  "SELECT source_table, count(*)::text, "
                                  "  string_agg(DISTINCT commit_lsn::text, ', ') FROM walshift.skipped "
                                  "WHERE pipeline = $1 GROUP BY source_table",
                                  {pipeline.c_str()}, context));
  for (int i = 0; i < PQntuples(r.get()); ++i) {
    SkippedChanges& c = out[PQgetvalue(r.get(), i, 0)];
    (void)absl::SimpleAtoi(PQgetvalue(r.get(), i, 1), &c.changes);
    c.commit_lsns = PQgetvalue(r.get(), i, 2);
  }
  return out;
}

absl::StatusOr<std::map<std::string, uint64_t>> ReadParked(PGconn* conn, const std::string& pipeline,
                                                           absl::string_view what) {
  std::string context = absl::StrCat(what, ": reading walshift.dead_letter");
  std::map<std::string, uint64_t> out;
  ASSIGN_OR_RETURN(bool exists, TableExists(conn, "walshift.dead_letter", context));
  if (!exists) return out;
  ASSIGN_OR_RETURN(pg::ResultPtr r, pg::ExecParams(conn,
                                                   "SELECT source_table, count(*)::text FROM walshift.dead_letter "
                                                   "WHERE pipeline = $1 AND state = 'parked' GROUP BY source_table",
                                                   {pipeline.c_str()}, context));
  for (int i = 0; i < PQntuples(r.get()); ++i) {
    (void)absl::SimpleAtoi(PQgetvalue(r.get(), i, 1), &out[PQgetvalue(r.get(), i, 0)]);
  }
  return out;
}

}  // namespace walshift::state

namespace walshift::state {

absl::StatusOr<std::optional<CutoverRow>> ReadCutover(PGconn* conn, const std::string& pipeline,
                                                     absl::string_view what) {
  std::string context = absl::StrCat(what, ": reading the cutover of ", pipeline);
  ASSIGN_OR_RETURN(bool exists, TableExists(conn, "walshift.cutover", context));
  if (!exists) return std::nullopt;
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::ExecParams(conn,
                                  "SELECT reverse_pipeline, state, step, stop_writes, coalesce(stop_lsn::text, ''), "
                                  "coalesce(reverse_lsn::text, ''), revoked::text, "
                                  "coalesce(to_char(writes_stopped_at AT TIME ZONE 'UTC', "
                                  "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), ''), "
                                  "coalesce(extract(epoch FROM writes_resumed_at - writes_stopped_at)::text, ''), "
                                  "coalesce(extract(epoch FROM now() - writes_stopped_at)::text, '') "
                                  "FROM walshift.cutover WHERE pipeline = $1",
                                  {pipeline.c_str()}, context));
  if (PQntuples(r.get()) == 0) return std::nullopt;
  CutoverRow c;
  c.pipeline = pipeline;
  c.reverse_pipeline = PQgetvalue(r.get(), 0, 0);
  c.state = PQgetvalue(r.get(), 0, 1);
  c.step = PQgetvalue(r.get(), 0, 2);
  c.stop_writes = PQgetvalue(r.get(), 0, 3);
  c.stop_lsn = ParseLsn(PQgetvalue(r.get(), 0, 4)).value_or(kInvalidLsn);
  c.reverse_lsn = ParseLsn(PQgetvalue(r.get(), 0, 5)).value_or(kInvalidLsn);
  c.revoked = PQgetvalue(r.get(), 0, 6);
  c.writes_stopped_at = PQgetvalue(r.get(), 0, 7);
  if (!absl::SimpleAtod(PQgetvalue(r.get(), 0, 8), &c.paused_s)) c.paused_s = -1;
  if (!absl::SimpleAtod(PQgetvalue(r.get(), 0, 9), &c.stopped_for_s)) c.stopped_for_s = -1;
  return c;
}

absl::Status WriteCutover(PGconn* conn, const CutoverRow& c, CutoverStamp stamp, const std::string& note,
                          absl::string_view what) {
  std::string stop = c.stop_lsn == kInvalidLsn ? "" : FormatLsn(c.stop_lsn);
  std::string rev = c.reverse_lsn == kInvalidLsn ? "" : FormatLsn(c.reverse_lsn);
  std::string revoked = c.revoked.empty() ? "[]" : c.revoked;
  const char* stamp_sql = stamp == CutoverStamp::kWritesStopped   ? "now()"
                          : stamp == CutoverStamp::kNewCutover    ? "NULL"
                                                                  : "walshift.cutover.writes_stopped_at";
  const char* resumed_sql = stamp == CutoverStamp::kWritesResumed ? "now()"
                            : stamp == CutoverStamp::kNone        ? "walshift.cutover.writes_resumed_at"
                                                                  : "NULL";
  std::string sql = absl::StrCat(
      "INSERT INTO walshift.cutover AS c (pipeline, reverse_pipeline, state, step, stop_writes, stop_lsn, "
      "reverse_lsn, revoked, writes_stopped_at, history) VALUES ($1, $2, $3, $4, $5, nullif($6, '')::pg_lsn, "
      "nullif($7, '')::pg_lsn, $8::jsonb, ", stamp == CutoverStamp::kWritesStopped ? "now()" : "NULL",
      ", jsonb_build_array(jsonb_build_object('at', now(), 'state', $3::text, 'step', $4::text, 'note', $9::text))) "
      "ON CONFLICT (pipeline) DO UPDATE SET reverse_pipeline = EXCLUDED.reverse_pipeline, state = EXCLUDED.state, "
      "step = EXCLUDED.step, stop_writes = EXCLUDED.stop_writes, stop_lsn = EXCLUDED.stop_lsn, "
      "reverse_lsn = EXCLUDED.reverse_lsn, revoked = EXCLUDED.revoked, writes_stopped_at = ",
      absl::StrReplaceAll(stamp_sql, {{"walshift.cutover.", "c."}}), ", writes_resumed_at = ",
      absl::StrReplaceAll(resumed_sql, {{"walshift.cutover.", "c."}}),
      ", updated_at = now(), started_at = CASE WHEN EXCLUDED.state <> c.state AND EXCLUDED.step = 'preflight' "
      "THEN now() ELSE c.started_at END, history = c.history || EXCLUDED.history");
  return pg::ExecParams(conn, sql,
                        {c.pipeline.c_str(), c.reverse_pipeline.c_str(), c.state.c_str(), c.step.c_str(),
                         c.stop_writes.c_str(), stop.c_str(), rev.c_str(), revoked.c_str(), note.c_str()},
                        absl::StrCat(what, ": recording the cutover of ", c.pipeline))
      .status();
}

}  // namespace walshift::state
