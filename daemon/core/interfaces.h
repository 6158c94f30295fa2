#pragma once
// The small abstract interfaces the pipeline is wired from. No libpq or librdkafka here.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "daemon/core/change.h"
#include "daemon/core/target_op.h"

namespace walshift {

// Receives the decoded replication stream in order. Any non-OK status stops decoding and is
// returned by the source's Poll().
class ChangeHandler {
 public:
  virtual ~ChangeHandler() = default;
  virtual absl::Status OnBegin(const TransactionBegin& begin) = 0;
  // A RELATION message: only updates caches; checks happen at the relation's first change.
  virtual absl::Status OnRelation(std::shared_ptr<const SourceRelation> relation) = 0;
  virtual absl::Status OnChange(const RowChange& change) = 0;
  virtual absl::Status OnTruncate(const TruncateChange& truncate) = 0;
  virtual absl::Status OnCommit(const TransactionCommit& commit) = 0;
  virtual absl::Status OnMessage(const LogicalMessage& message) = 0;
};

// A snapshot of the source exported by a replication connection that creates a slot: the
// rows it shows are exactly those of transactions committed before `lsn`, the slot's
// consistent point. Valid while the holder lives (and its connection sends no command).
struct ExportedSnapshot {
  std::string name;  // for SET TRANSACTION SNAPSHOT
  Lsn lsn = kInvalidLsn;
};

// A logical replication stream. Not thread-safe: one pipeline thread drives it.
class ChangeSource {
 public:
  virtual ~ChangeSource() = default;
  // Starts streaming after `start_lsn` (kInvalidLsn: from the slot's confirmed position).
  virtual absl::Status Start(Lsn start_lsn) = 0;
  // Dispatches every message already received, then returns. When none was buffered, first
  // waits up to `wait` for one. Returns how many messages were dispatched. kUnavailable when
  // the connection is lost.
  virtual absl::StatusOr<int> Poll(ChangeHandler& handler, absl::Duration wait) = 0;
  // Reports positions to the server: write = everything received, flush = apply = `flushed`
  // (durable on every target). Sent when `force`, when the server asked, or when the last
  // report is older than the feedback interval.
  virtual absl::Status SendFeedback(Lsn flushed, bool force) = 0;
  // The caller applied every message Poll() gave it, made it durable on every target and holds
  // no open source transaction. The server's position of a keepalive received after those
  // messages is then confirmed too (the WAL in between held nothing for this slot), as
  // PostgreSQL's own apply worker does: the slot moves over WAL that holds no change for the
  // pipeline, and a source shutting down, which waits until its walsenders' clients confirm
  // everything sent, does not wait for wal_sender_timeout. Returns that position (everything
  // up to it is applied), or kInvalidLsn when no keepalive came after the last message taken.
  virtual Lsn ConfirmIdle() = 0;
  // The pipeline is catching up on a backlog (its last transaction committed on the source well
  // before now): the source may then favour throughput over latency when it reads.
  virtual void set_catching_up(bool catching_up) {}
  // Highest WAL position received so far (XLogData end or keepalive).
  virtual Lsn received_lsn() const = 0;
  // Source transactions dispatched without their changes because their replication origin is
  // one the pipeline ignores (source.ignore_origins), since this source was created.
  virtual uint64_t ignored_origin_transactions() const { return 0; }
  // The snapshot exported when the slot was created just now (valid until Start()), if any.
  virtual const std::optional<ExportedSnapshot>& exported_snapshot() const = 0;
};

// One finished range of the initial copy, recorded in the target together with its rows (see
// daemon/pipeline/initial_copy.h).
struct CopyChunk {
  std::string source_table;
  std::string key_column;         // empty: the range is the whole table
  std::optional<int64_t> lo, hi;  // [lo, hi), unbounded when absent
  Lsn snapshot_lsn = kInvalidLsn;
  uint64_t rows = 0;
};

// A change the target rejected with a data error (see Sink::ApplyIsolated).
struct Rejection {
  std::string sqlstate;
  std::string constraint;  // the constraint it violated, if the server named one
  // What Apply would have failed with: table, key, column, LSN and the server's message.
  absl::Status error;
};

// Applies target operations to one target (a database, a document store), grouping source
// transactions into one target transaction whose checkpoint (the end LSN of its last source
// transaction) becomes durable with it. Not thread-safe. Every sink applies every OpKind of
// target_op.h, or refuses the shape in ValidateShape before streaming starts.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual const std::string& name() const = 0;
  // kFailedPrecondition naming table and column, with the fix, when this target cannot apply
  // `shape` (a missing table or column, an SQL expression a target without SQL cannot run).
  virtual absl::Status ValidateShape(const OpShape& shape) = 0;
  // Queues one operation in the open group. Errors of earlier operations may surface here.
  virtual absl::Status Apply(const TargetOp& op) = 0;
  // Applies `op` on its own in the open group and waits for its result. A value the target
  // rejects with a data error (SQLSTATE class 22 or 23) is undone alone (the group goes on) and
  // returned in *rejected; any other error is returned as from Apply. A sink that cannot undo
  // one operation applies it as Apply does.
  virtual absl::Status ApplyIsolated(const TargetOp& op, std::optional<Rejection>* rejected) {
    rejected->reset();
    return Apply(op);
  }
  // Marks the end of a source transaction inside the open group.
  virtual void EndTransaction(const TransactionCommit& commit) = 0;
  // Commits the open group together with the checkpoint of its last transaction and waits
  // until it is durable. Returns the checkpoint LSN now durable on this target.
  virtual absl::StatusOr<Lsn> Flush() = 0;
  // Commits the open group (opening one if needed) with `chunk` recorded instead of a
  // checkpoint: the initial copy's unit of progress.
  virtual absl::Status CommitChunk(const CopyChunk& chunk) = 0;
  // The copy ranges recorded for `pipeline` (every source table when `source_table` is empty).
  virtual absl::StatusOr<std::vector<CopyChunk>> CopyChunks(const std::string& source_table) = 0;
  // The committed checkpoint (kInvalidLsn when none): what a reader of the target sees applied.
  virtual Lsn durable_lsn() const = 0;
  // The checkpoint that is also on the target's disk. A sink that commits asynchronously (as
  // PostgreSQL's own apply worker does: synchronous_commit off) has its groups visible at once
  // and on disk once the target's WAL flush passes their commit; only this position may be
  // confirmed to the source. Equal to durable_lsn() for a sink that commits synchronously.
  virtual Lsn flushed_lsn() const { return durable_lsn(); }
  // Between groups: reads how far the target's WAL is flushed when a committed group is not
  // known to be on disk and the last reading is older than `max_age`.
  virtual absl::Status PollFlushed(absl::Duration max_age) { return absl::OkStatus(); }
  // Operations queued in the open group.
  virtual size_t pending_changes() const = 0;
  // Total operations applied (committed) since start.
  virtual uint64_t applied_changes() const = 0;

  // Apply tuning, only between groups. Batching off: every operation is applied on its own,
  // as when isolating a failing transaction.
  virtual void set_batching(bool on) {}
  // Whether rows source INSERTs created may be written without conflict handling (a conflict
  // then fails the group with kAlreadyExists).
  virtual void set_plain_inserts(bool on) {}
  // Target tables whose new rows always go out with conflict handling; and the table of the
  // last conflict this sink met, if any.
  virtual void set_upsert_tables(std::set<std::string> tables) {}
  virtual const std::string& conflict_table() const {
    static const std::string none;
    return none;
  }
};

// Turns the row changes of one bound source relation into target operations.
class BoundMapping {
 public:
  virtual ~BoundMapping() = default;
  // Calls `emit` for every operation the change produces, in order.
  virtual absl::Status Map(const RowChange& change, const std::function<absl::Status(const TargetOp&)>& emit) const = 0;
  // The operations a TRUNCATE of the source table produces (may be none).
  virtual absl::Status MapTruncate(Lsn lsn, const std::function<absl::Status(const TargetOp&)>& emit) const = 0;
  // Every operation shape the mapping can emit, for checks against the live target schema.
  virtual std::vector<const OpShape*> shapes() const = 0;
  // True when an update is written as a whole row (or element) that may not be in the target
  // yet, so every value must be known: the pipeline then completes an update that left TOASTed
  // values out from the source's current row before mapping it (see Pipeline::OnChange).
  virtual bool writes_whole_rows() const { return false; }
  // For an owner's mapping (see MappingModule::owner): the key of the row it writes in target
  // table `table`, as (target column, source column index) pairs; empty when it writes no such
  // row or its key is not copied from source columns.
  virtual std::vector<std::pair<std::string, int>> RowKey(const std::string& table) const { return {}; }
};

// What a mapping module may ask about the live schemas when it binds a relation.
struct SourceColumnInfo {
  std::string name;
  std::string type;        // format_type() on the source
  bool toastable = false;  // varlena with storage other than plain
  bool in_target = false;  // `type` exists under that name in the target
};

struct SourceTableInfo {
  std::string qualified_name;
  char replica_identity = 'd';
  std::vector<SourceColumnInfo> columns;  // live columns in attnum order
  std::vector<std::string> primary_key;   // primary key columns (empty when none)
  const SourceColumnInfo* Find(absl::string_view name) const {
    for (const auto& c : columns)
      if (c.name == name) return &c;
    return nullptr;
  }
};

class SchemaInspector {
 public:
  virtual ~SchemaInspector() = default;
  // Source catalog facts about `relation`, with each type checked against `target`.
  virtual absl::StatusOr<SourceTableInfo> Describe(const SourceRelation& relation, const std::string& target) = 0;
  // The type (without modifier) of each column of `table` in `target`, by column name; empty
  // when the table does not exist.
  virtual absl::StatusOr<std::map<std::string, std::string>> TargetColumnTypes(const std::string& target,
                                                                               const std::string& table) = 0;
  // pg_get_indexdef() of each index of `table` in `target` (advisory: modules use it to warn
  // about missing indexes; unimplemented where there is no catalog to ask).
  virtual absl::StatusOr<std::vector<std::string>> TargetIndexDefinitions(const std::string& target,
                                                                          const std::string& table) {
    return absl::UnimplementedError("no target catalog");
  }
};

// A configured mapping module instance: immutable, shared.
class MappingModule {
 public:
  virtual ~MappingModule() = default;
  virtual const std::string& source_table() const = 0;  // schema.table
  virtual const std::string& target() const = 0;
  // Checks the mapping against the relation and builds the per-row plan. kFailedPrecondition
  // with a message naming table and column when the mapping cannot apply.
  virtual absl::StatusOr<std::unique_ptr<BoundMapping>> Bind(const SourceRelation& relation,
                                                             SchemaInspector& inspector) const = 0;

  // Owned rows: a mapping whose target rows exist only while another source's mapping has
  // written them names that source (schema.table) here, with the target table and how its key
  // is read from this mapping's source (target column → source column). It only fills rows
  // that exist; the pipeline fills its current rows in when the owner writes a row.
  struct Owned {
    std::string owner;
    std::string table;
    std::vector<std::pair<std::string, std::string>> key;
  };
  virtual std::optional<Owned> owned() const { return std::nullopt; }
  // The target tables this mapping writes rows into (for ownership checks).
  virtual std::vector<std::string> target_tables() const { return {}; }
  // Whether this mapping can own rows of `table`: it writes them and deletes them whole. An
  // error says why not, and the fix.
  virtual absl::Status CanOwn(const std::string& table) const {
    for (const std::string& t : target_tables())
      if (t == table) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat("it does not write ", table));
  }
};

}  // namespace walshift
