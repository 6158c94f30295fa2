#pragma once
// walshift's own tables in a PostgreSQL target (schema `walshift`), with the one reader and
// writer of each: the checkpoint (the last source commit applied, written in the same target
// transaction as the data), copy_chunk (the initial copy's finished key ranges), backfill
// (re-backfill progress), drift (differences the verifier confirmed) and settings (facts a
// pipeline keeps across restarts). walshiftd, the verifier and walshiftctl all go through here.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "daemon/core/interfaces.h"
#include "daemon/core/lsn.h"
#include "daemon/pg/pg_util.h"

namespace walshift::state {

// Creates the schema and every table when absent, and migrates a state schema an earlier
// release left (walshift.schema_version records the versions applied), in one transaction.
// kFailedPrecondition when a newer release already migrated it further. `what` names the
// target in messages.
absl::Status EnsureSchema(PGconn* conn, absl::string_view what);
// Adds to `problems` each privilege on the walshift schema that the connection's role lacks
// for EnsureSchema and a run (creating the schema or its tables, reading and writing them),
// with the statement that grants it.
absl::Status CheckStatePrivileges(PGconn* conn, absl::string_view what, std::vector<std::string>* problems);
// The walshift.settings name of a walshiftctl skip request: the commit LSN of the source
// transaction walshiftd leaves out when it meets it.
inline constexpr char kSkipTransactionSetting[] = "skip_transaction";

// The error walshiftd last stopped on (walshift.error), kept for `walshiftctl status`.
struct StopError {
  std::string occurred_at;  // UTC, ISO 8601
  int exit_code = 0;
  std::string lsn;  // the source position the error names; empty when it names none
  std::string message;
  bool current = false;  // the checkpoint has not moved since: the pipeline stands on it
};
// Records `message` (and the target's checkpoint now) as what `pipeline`'s walshiftd stopped on,
// replacing an earlier one.
absl::Status RecordStopError(PGconn* conn, const std::string& pipeline, int exit_code, const std::string& message,
                             Lsn lsn, absl::string_view what);
// std::nullopt when none is recorded.
absl::StatusOr<std::optional<StopError>> ReadStopError(PGconn* conn, const std::string& pipeline,
                                                       absl::string_view what);
// Per source table, the changes walshiftctl skip left out (walshift.skipped): how many, and the
// commit LSNs of their transactions.
struct SkippedChanges {
  uint64_t changes = 0;
  std::string commit_lsns;  // comma-separated
};
absl::StatusOr<std::map<std::string, SkippedChanges>> ReadSkipped(PGconn* conn, const std::string& pipeline,
                                                                  absl::string_view what);
// Per source table, the changes parked in walshift.dead_letter (on_error: dead_letter) and not
// yet retried or discarded; empty when there are none (or no such table yet).
absl::StatusOr<std::map<std::string, uint64_t>> ReadParked(PGconn* conn, const std::string& pipeline,
                                                           absl::string_view what);
// The state schema version this walshiftd writes.
int StateSchemaVersion();

// Writers of a pipeline. Every walshiftd session that writes `pipeline`'s rows into a target
// holds a session-level advisory lock on (walshift, pipeline) in shared mode while it is
// connected. A walshiftd killed, or cut off, leaves its sessions to the server until it notices:
// one of them may still be executing, or committing, what the dead process sent.
// With ha, `epoch` is the leader's epoch in this target (0: none): the session's transactions are
// fenced with it (walshift.fence, SQLSTATE WS002 once another leader took over).
absl::Status HoldWriterLock(PGconn* conn, const std::string& pipeline, int64_t epoch, absl::string_view what);
// Replication origins. A session applying `pipeline`'s changes to target `target` sets up the
// origin ReplicationOriginName(pipeline, target) ("walshift_<pipeline>_<target>"; origins are
// per cluster, so two targets in one cluster need two), so every commit it makes carries the
// origin in the target's WAL and a pipeline reading that database passes them over
// (source.ignore_origins). Creates the origin when absent. Returns false, having set up
// nothing, when the role may not use replication origins (42501) or the server has
// max_replication_slots = 0. On PostgreSQL 15 an origin serves one session at a time: one still
// held by a session of this pipeline's writer lock (an earlier run's) is ended first.
std::string ReplicationOriginName(const std::string& pipeline, const std::string& target);
absl::StatusOr<bool> SetUpReplicationOrigin(PGconn* conn, const std::string& pipeline, const std::string& origin,
                                            absl::string_view what);
// SetUpReplicationOrigin for an apply or copy session; where origins may not be used, warns
// once per origin family (OriginFamily) and applies without one.
absl::Status UseReplicationOrigin(PGconn* conn, const std::string& pipeline, const std::string& origin,
                                  absl::string_view what);
// Before a run reads what a target holds (checkpoint, copied ranges): waits until no other
// session holding `pipeline`'s writer lock has a transaction open or went idle less than 250 ms
// ago (it may still be reading what a dead client pipelined to it), so that everything an
// earlier run sent is committed or rolled back, and visible. A session still in a transaction after
// `patience` is terminated (with a warning naming it) and waited for. kUnavailable, naming the
// sessions, when they cannot be settled.
absl::Status SettleEarlierWriters(PGconn* conn, const std::string& pipeline, absl::string_view what,
                                  absl::Duration patience);

// Active/standby (ha:). The leader lock is a session-level advisory lock on (walshift's leader
// class, pipeline) that the leader holds on every target for as long as it leads; the epoch and
// the lease are in walshift.leader and walshift.lease (see the state schema).
// Takes the leader lock without waiting: true when this session holds it now.
absl::StatusOr<bool> TryLeaderLock(PGconn* conn, const std::string& pipeline, absl::string_view what);
// The pipeline's leader as a target records it.
struct LeaderRow {
  int64_t epoch = 0;  // 0: no leader recorded yet
  std::string node;
  std::string since;  // UTC, ISO 8601
  std::string lease_node;
  double lease_age_s = -1;  // since the lease was last renewed, by the target's clock; -1: none
  int lease_s = 0;          // the lease's length, as its leader set it
  std::vector<int> lock_holders;  // backend pids holding the leader lock now
  double holder_silent_s = 0;     // since the holders' sessions last ran a statement (the least)
  // The lease ran out, and the lock's holder has been silent as long: it leads no more.
  // (Without a lease yet, a holder silent for a minute: it stopped between lock and epoch.)
  bool expired() const {
    if (lease_s == 0) return holder_silent_s > 60;
    return lease_age_s > lease_s && holder_silent_s > lease_s;
  }
};
absl::StatusOr<LeaderRow> ReadLeader(PGconn* conn, const std::string& pipeline, absl::string_view what);
// Takes the next epoch for `node` (and a fresh lease of length `lease`) and returns it. Waits at
// most `lock_timeout` for transactions that passed the fence of the previous epoch to end.
absl::StatusOr<int64_t> TakeEpoch(PGconn* conn, const std::string& pipeline, const std::string& node,
                                  absl::Duration lease, absl::Duration lock_timeout, absl::string_view what);
// Lets go of the leader lock a leader session holds (of every advisory lock of the session).
absl::Status ReleaseLeaderLock(PGconn* conn, absl::string_view what);
// A new leader ends every other session holding the pipeline's writer lock (idle ones too: a
// replaced leader's, or an older walshiftd's that is not fenced). kUnavailable when they cannot
// be terminated within 10 s.
absl::Status EndOtherWriters(PGconn* conn, const std::string& pipeline, absl::string_view what);
// Renews `node`'s lease of `epoch`: false when it is no longer that leader's (another took over).
absl::StatusOr<bool> RenewLease(PGconn* conn, const std::string& pipeline, const std::string& node, int64_t epoch,
                                absl::string_view what);

// The checkpoint row of `pipeline`.
struct CheckpointRow {
  Lsn lsn = kInvalidLsn;
  std::string commit_time;  // of the last applied source commit, as text
  double seconds_since_commit = 0;
  double seconds_since_update = 0;  // since the row was written
};
// std::nullopt when the pipeline has no checkpoint there (or walshift's tables do not exist
// yet); an error naming `what` when it cannot be read.
absl::StatusOr<std::optional<CheckpointRow>> ReadCheckpointRow(PGconn* conn, const std::string& pipeline,
                                                               absl::string_view what);
// The same, only the LSN (kInvalidLsn: none).
absl::StatusOr<Lsn> ReadCheckpoint(PGconn* conn, const std::string& pipeline, absl::string_view what);
// Upserts the checkpoint: $1 pipeline, $2 commit LSN, $3 commit time. One that would move it
// back fails with SQLSTATE WS001 (a stale walshiftd: another one committed past it), so the
// whole transaction, data included, rolls back. Returns one row: `moved`, or with
// `wal_positions` the target's WAL insert and flush positions after it.
std::string CheckpointUpsertSql(bool wal_positions);

// A statement and its parameters (views into `storage`).
struct Statement {
  std::string sql;
  std::vector<std::string> storage;
  std::vector<const char*> params;
};
// Records a finished copy range of `pipeline`.
Statement CopyChunkInsert(const std::string& pipeline, const CopyChunk& chunk);
// The copy ranges of `pipeline` (of `source_table` only when not empty) whose snapshot is
// later than `after`, ordered by table and range start.
absl::StatusOr<std::vector<CopyChunk>> ReadCopyChunks(PGconn* conn, const std::string& pipeline,
                                                      const std::string& source_table, Lsn after,
                                                      absl::string_view what);

// Re-backfill progress of one source table.
struct BackfillRow {
  std::string source_table;
  std::string state;                                 // running, done
  std::optional<std::vector<std::string>> last_key;  // none: nothing applied yet
  uint64_t rows = 0;
  double updated_at = 0;  // seconds since the epoch
};
absl::StatusOr<std::vector<BackfillRow>> ReadBackfills(PGconn* conn, const std::string& pipeline,
                                                       absl::string_view what);
// The target's clock, in seconds since the epoch (to compare with BackfillRow::updated_at).
absl::StatusOr<double> ReadClock(PGconn* conn, absl::string_view what);

// One confirmed difference: kind MISSING, EXTRA or MISMATCH; `columns_json` a JSON array of
// {column, expected, actual}.
absl::Status RecordDrift(PGconn* conn, const std::string& pipeline, const std::string& source_table,
                         const std::string& target_table, const std::string& kind, const std::string& key,
                         const std::string& columns_json, const std::string& checked_at_lsn);

// A fact recorded for `pipeline` (std::nullopt when none or no tables yet), and recording one.
absl::StatusOr<std::optional<std::string>> ReadSetting(PGconn* conn, const std::string& pipeline,
                                                       const std::string& name, absl::string_view what);
absl::Status WriteSetting(PGconn* conn, const std::string& pipeline, const std::string& name, const std::string& value,
                          absl::string_view what);

// Cutover (walshiftctl cutover / rollback), in the new schema's database: see walshift.cutover.
struct CutoverRow {
  std::string pipeline;          // the forward pipeline
  std::string reverse_pipeline;
  std::string state;             // cutting_over, cut_over, rolling_back, rolled_back, aborted
  std::string step;              // the last step done
  std::string stop_writes;       // revoke, application
  Lsn stop_lsn = kInvalidLsn;    // where writes stopped
  Lsn reverse_lsn = kInvalidLsn; // where the reverse pipeline's slot starts
  std::string revoked;           // JSON array [{database, table, role, privileges}]
  std::string writes_stopped_at; // ISO 8601 UTC, "" when not stopped
  double paused_s = -1;          // writes resumed - stopped, -1 until both
  double stopped_for_s = -1;     // now - writes stopped
};
absl::StatusOr<std::optional<CutoverRow>> ReadCutover(PGconn* conn, const std::string& pipeline,
                                                     absl::string_view what);
// What WriteCutover stamps: nothing; the writes stopped now; they resumed now; a new cutover
// or rollback starts (both cleared).
enum class CutoverStamp { kNone, kWritesStopped, kWritesResumed, kNewCutover };
// Creates or updates the row and appends {at, state, step, note} to its history.
absl::Status WriteCutover(PGconn* conn, const CutoverRow& row, CutoverStamp stamp, const std::string& note,
                          absl::string_view what);

}  // namespace walshift::state
