#pragma once
// Applies target operations to one PostgreSQL target database through libpq pipeline mode.
// Source transactions are grouped into one target transaction (BEGIN ... COMMIT) together with
// the pipeline's row in walshift.checkpoint, so a crash leaves the target before or after a
// whole group. Statements are prepared once per (shape, written column set); values are always
// bound as text parameters and identifiers always quoted.

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "daemon/apply/pg_statements.h"
#include "daemon/core/interfaces.h"
#include "daemon/pg/pg_util.h"

namespace walshift {

struct PgSinkOptions {
  std::string name;      // target name from the config
  std::string dsn;       // secret
  std::string pipeline;  // checkpoint row key
  size_t max_pending_statements = 2000;
  size_t max_pending_bytes = 4 << 20;
  // Consecutive upserts of one shape are sent as one multi-row statement of up to this many
  // rows (1: one statement per row, as when isolating a failing transaction).
  size_t batch_rows = 256;
  // Off: commits do not wait for the target's WAL flush, which is read after each commit
  // instead (flushed_lsn()). Streaming and the initial copy's chunks commit this way; a group is
  // confirmed to the source only once the flush passed its commit, so a target that crashes
  // loses nothing the source does not still have.
  bool synchronous_commit = true;
  // ha: the leader's epoch in this target (0: none); every transaction is fenced with it.
  int64_t epoch = 0;
  // The replication origin the session applies with (empty: none); see
  // state::SetUpReplicationOrigin. A role that may not use origins is warned about (once per
  // target and process) and applies without.
  std::string replication_origin;
};

class PgSink : public Sink {
 public:
  // Connects, creates walshift.checkpoint when absent and reads this pipeline's checkpoint.
  // kUnavailable when the target cannot be reached.
  static absl::StatusOr<std::unique_ptr<PgSink>> Create(const PgSinkOptions& options);
  ~PgSink() override;

  const std::string& name() const override { return options_.name; }
  absl::Status Apply(const TargetOp& op) override;
  // In a savepoint of its own, synchronously (see Sink::ApplyIsolated).
  absl::Status ApplyIsolated(const TargetOp& op, std::optional<Rejection>* rejected) override;
  void EndTransaction(const TransactionCommit& commit) override;
  absl::StatusOr<Lsn> Flush() override;
  Lsn durable_lsn() const override { return durable_lsn_; }
  Lsn flushed_lsn() const override { return options_.synchronous_commit ? durable_lsn_ : flushed_lsn_; }
  absl::Status PollFlushed(absl::Duration max_age) override;
  size_t pending_changes() const override { return group_changes_; }
  absl::Status CommitChunk(const CopyChunk& chunk) override;
  absl::StatusOr<std::vector<CopyChunk>> CopyChunks(const std::string& source_table) override;
  uint64_t applied_changes() const override { return applied_changes_; }
  // True when a group is open (BEGIN sent, COMMIT not yet).
  bool group_open() const { return group_open_; }

  // Prepares the statements `shape` produces (every value written) and discards them:
  // kFailedPrecondition with the server's message when the target table, a column, the key's
  // unique constraint or an sql: expression does not fit the live schema. On `conn`, or on
  // the sink's catalog connection.
  absl::Status ValidateShape(const OpShape& shape) override;
  static absl::Status ValidateShape(PGconn* conn, const OpShape& shape);
  // The type (format_type without modifier) of every column of `table` on `conn`, by name;
  // empty when the table does not exist.
  static absl::StatusOr<std::map<std::string, std::string>> ReadColumnTypes(PGconn* conn, const std::string& table);
  // Prepares `sql` (of `params` parameters) and plans it with NULL parameters.
  static absl::Status ValidateStatement(PGconn* conn, const OpShape& shape, const std::string& sql, size_t params);

  // Multi-row statements (and the plain INSERT of new rows) on or off; off, every operation is
  // its own upsert/delete. New rows of rows source INSERTs created go out as plain INSERTs
  // (default on). Upsert tables: those whose new rows always go out as upserts (a plain INSERT
  // met a row there before).
  void set_batching(bool on) override { batching_ = on && options_.batch_rows > 1; }
  void set_plain_inserts(bool on) override { plain_inserts_ = on; }
  void set_upsert_tables(std::set<std::string> tables) override { upsert_tables_ = std::move(tables); }
  const std::string& conflict_table() const override { return conflict_table_; }

 private:
  explicit PgSink(PgSinkOptions options);

  // Warns when the parent table of an array shape lacks the GIN index its updates need.
  static void WarnAboutArrayIndex(PGconn* conn, const OpShape& shape);
  // An ordinary connection for catalog questions and state reads, opened once.
  absl::StatusOr<PGconn*> CatalogConnection();

  struct Prepared {
    std::string name;
    int rows = 1;
    bool plain_insert = false;  // INSERT without ON CONFLICT
  };
  // One (shape, written columns) combination (see PgStatementPlan), and its prepared
  // statements by row count.
  struct Variant : PgStatementPlan {
    int max_rows = 1;
    bool coalesce = false;                    // repeated keys in a batch may be merged (see CoalesceSafe)
    std::vector<std::string> run_statements;  // array shapes: RenderArrayRun
    mutable absl::flat_hash_map<int, std::unique_ptr<Prepared>> statements;
  };
  // Upserts waiting to be sent as one statement. Values are copied (NUL-terminated): the
  // decoder's buffer does not outlive the message.
  struct Batch {
    const Variant* variant = nullptr;
    int rows = 0;
    std::vector<char> new_row;  // per row: created by a source INSERT (see TargetOp::new_row)
    std::string data;
    std::vector<int64_t> offsets;  // rows x params: offset into data, -1 for NULL
    absl::flat_hash_map<uint64_t, int> rows_by_key;
    Lsn first_lsn = kInvalidLsn, last_lsn = kInvalidLsn;
  };
  // What an outstanding command was, to attribute its result.
  struct Pending {
    enum Kind : uint8_t { kControl, kPrepare, kStatement, kTruncate, kSync, kWalPosition } kind = kControl;
    const OpShape* shape = nullptr;
    Lsn lsn = kInvalidLsn;
    Lsn last_lsn = kInvalidLsn;
    int rows = 1;
    bool plain_insert = false;
    bool isolated = false;    // the statement of ApplyIsolated
    size_t arena_offset = 0;  // single-row statements: a copy of the op's parameters
    size_t bytes = 0;
  };

  absl::Status SendControl(const char* sql);
  // Sends the truncates queued by Apply as one TRUNCATE statement (nothing when none).
  absl::Status SendTruncates();
  // The column types of `table` in the target (see Variant::column_types), read once.
  absl::StatusOr<const std::map<std::string, std::string>*> ColumnTypes(const std::string& table);
  absl::StatusOr<const Variant*> VariantFor(const TargetOp& op);
  // `batch_statement` >= 0: that entry of the variant's run_statements, with array parameters.
  absl::StatusOr<const Prepared*> StatementFor(const Variant& v, int rows, Lsn lsn, bool plain_insert = false,
                                               int batch_statement = -1);
  // Sends one statement of `rows` rows; `single` (rows == 1) is kept for error messages.
  absl::Status Send(const Variant& v, int rows, const char* const* values, Lsn first_lsn, Lsn last_lsn,
                    const TargetOp* single, bool plain_insert = false, int batch_statement = -1);
  // Sends the batch of a shape with batch_statements: one text[] parameter per slot.
  absl::Status FlushArrayBatch();
  absl::Status AddToBatch(const Variant& v, const TargetOp& op);
  absl::Status FlushBatch();
  // True when the target table's only unique index is `shape`'s key and it has no exclusion
  // constraint, self-referencing foreign key or user trigger. Cached per table.
  bool CoalesceSafe(const OpShape& shape);
  // Reads whatever results are available without blocking (block=false), or waits until the
  // backlog is within bounds (block=true), or until everything through the last sync has
  // been answered (drain_all=true). `through_errors`: an error does not end the wait (the
  // results up to the sync are read all the same).
  absl::Status Pump(bool block, bool drain_all, bool through_errors = false);
  absl::Status HandleResult(PGresult* result);
  absl::Status ErrorFor(const Pending& pending, const PGresult* result);
  std::string DescribeParams(const Pending& pending, bool key_only) const;
  std::vector<std::pair<DatumKind, absl::string_view>> DecodeParams(const Pending& pending) const;
  std::string ProbeColumn(const Pending& pending) const;
  absl::Status BrokenConnection(absl::string_view what);

  PgSinkOptions options_;
  pg::ConnPtr conn_;
  absl::flat_hash_map<std::string, std::unique_ptr<Variant>> variants_;
  absl::flat_hash_map<uint32_t, const Variant*> full_variant_;  // fast path: nothing omitted
  Batch batch_;
  bool batching_ = true;
  bool plain_inserts_ = true;
  std::set<std::string> upsert_tables_;
  std::string conflict_table_;
  pg::ConnPtr catalog_conn_;  // ordinary connection for catalog questions
  absl::flat_hash_map<std::string, bool> coalesce_safe_;
  absl::flat_hash_map<std::string, std::unique_ptr<std::map<std::string, std::string>>> column_types_;
  // Truncates waiting to go out together: target tables in order, the first op's shape and
  // LSN for messages, and whether sequences restart.
  std::vector<std::string> truncate_tables_;
  const OpShape* truncate_shape_ = nullptr;
  Lsn truncate_lsn_ = kInvalidLsn;
  bool truncate_restart_ = false;
  uint64_t statements_sent_ = 0;
  std::deque<Pending> pending_;
  size_t pending_bytes_ = 0;
  std::string arena_;  // parameter copies of outstanding statements
  std::vector<const char*> values_;
  std::string omit_key_;
  absl::Status first_error_;
  // Of first_error_: its SQLSTATE and constraint, and whether ApplyIsolated's statement failed.
  std::string first_error_sqlstate_, first_error_constraint_;
  bool first_error_isolated_ = false;
  bool isolating_ = false;  // inside ApplyIsolated
  bool group_open_ = false;
  bool have_commit_ = false;
  TransactionCommit last_commit_;
  size_t group_changes_ = 0;
  Lsn durable_lsn_ = kInvalidLsn;
  // Asynchronous commits. A reading of the target's WAL insert and flush positions (with each
  // group's checkpoint, before its commit; alone when the stream is quiet) bounds every commit
  // before it. committed_: checkpoints committed since the last reading; unflushed_: (insert
  // position of a reading after the commit, the checkpoint) not yet known flushed, oldest
  // first; flushed_lsn_: the newest checkpoint known flushed.
  std::vector<Lsn> committed_;
  std::deque<std::pair<Lsn, Lsn>> unflushed_;
  Lsn flushed_lsn_ = kInvalidLsn;
  Lsn wal_insert_ = kInvalidLsn, wal_flush_ = kInvalidLsn;
  bool wal_read_ = false;  // a reading arrived since it was last reset
  absl::Time flush_read_at_ = absl::InfinitePast();
  void NoteWalPosition(Lsn insert, Lsn flushed);
  uint64_t applied_changes_ = 0;
  uint32_t statement_counter_ = 0;
  std::string checkpoint_lsn_text_, checkpoint_time_text_;
};

}  // namespace walshift
