#pragma once
// Wires one pipeline: the replication source, the mapping modules and one sink per target.
// Runs on one thread: decode → map → queue in the target pipeline; groups are committed with
// their checkpoint at transaction boundaries; the slot is confirmed only up to the lowest
// durable checkpoint of all targets.

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "daemon/apply/open_sink.h"
#include "daemon/config/config.h"
#include "daemon/core/interfaces.h"
#include "daemon/observe/status.h"
#include "daemon/pipeline/backfill.h"
#include "daemon/pipeline/dead_letter.h"
#include "daemon/pipeline/initial_copy.h"
#include "daemon/pipeline/leadership.h"
#include "daemon/pipeline/pg_schema_inspector.h"

namespace walshift {

class Pipeline : public ChangeHandler {
 public:
  // `status` (outliving the pipeline) receives its state, progress and counters.
  Pipeline(config::Settings settings, std::vector<std::shared_ptr<const MappingModule>> modules,
           PipelineStatus* status);
  ~Pipeline() override;

  // Streams until `stop` becomes true (then flushes at a transaction boundary, sends final
  // feedback and returns OK) or a non-retryable error occurs. Lost connections, serialization
  // failures and deadlocks reconnect with backoff and resume from the checkpoints.
  absl::Status Run(const std::atomic<bool>& stop);
  // After Run stopped on a value a target rejected: the commit LSN of the source transaction
  // (what walshiftctl skip takes); kInvalidLsn otherwise.
  Lsn stopped_at() const { return stopped_at_; }

  absl::Status OnBegin(const TransactionBegin& begin) override;
  absl::Status OnRelation(std::shared_ptr<const SourceRelation> relation) override;
  absl::Status OnChange(const RowChange& change) override;
  absl::Status OnTruncate(const TruncateChange& truncate) override;
  absl::Status OnCommit(const TransactionCommit& commit) override;
  absl::Status OnMessage(const LogicalMessage& message) override;

 private:
  struct Binding {
    const MappingModule* module;
    std::unique_ptr<BoundMapping> bound;
    size_t sink;
  };
  struct RelationBindings {
    uint64_t version = 0;
    std::vector<Binding> bindings;
    std::string table;
    uint64_t unreported = 0;  // changes not yet added to the status
    bool whole_rows = false;  // some binding writes whole rows (see BoundMapping::writes_whole_rows)
    bool owner = false;       // the table owns rows of other mappings (owner:)
  };

  absl::Status RunOnce(const std::atomic<bool>& stop, bool* made_progress);
  // ha: stands by until this walshiftd leads (*stopped when `stop` came first).
  absl::Status AwaitLeadership(const std::atomic<bool>& stop, bool* stopped);
  // ha: renews the lease when due (`force`: now); kAborted once leadership is lost.
  absl::Status RenewLeadership(bool force);
  // ha: this walshiftd's role and the leader it knows, into the status.
  void ReportLeadership();
  // ha: the leader's epoch in target `t` (0 without ha).
  int64_t EpochOf(size_t t) const;
  // The replication origin the apply sessions for target `t` set ("": apply.replication_origin off).
  std::string ApplyOrigin(const config::TargetSettings& t) const;
  absl::StatusOr<RelationBindings*> BindingsFor(const SourceRelation& relation);
  absl::Status FlushAll();
  // Copies the rows the source has into `targets` (no checkpoint yet) and writes their
  // checkpoints at the position streaming starts from. *stopped when `stop` interrupted it.
  // `made_progress` is set when a range was committed (a retry after it starts its backoff
  // afresh).
  absl::Status CopyExistingRows(const std::vector<size_t>& targets, const std::atomic<bool>& stop, bool* stopped,
                                bool* made_progress);
  // Maps one change for one binding, leaving out what a copy's snapshot already shows.
  absl::Status MapChange(const Binding& b, const RowChange& change);
  // Re-backfill (see backfill.h): a request, a low watermark, a high watermark.
  absl::Status OnBackfillRequest(const std::string& table);
  absl::Status OnBackfillHigh(const std::string& id);
  // Writes the backfill's progress row into every target `table` maps to.
  absl::Status EmitBackfillProgress(const std::string& table, const char* state,
                                    const std::vector<std::string>* last_key, uint64_t rows);
  // Continues backfills that were running when walshiftd stopped.
  absl::Status ResumeBackfills();
  Backfiller& backfiller();
  Lsn MinDurable() const;  // the lowest committed checkpoint of the targets
  Lsn MinFlushed() const;  // the lowest checkpoint on the targets' disks: what the slot confirms

  config::Settings settings_;
  PipelineStatus* status_;
  std::vector<size_t> group_transactions_;  // per sink: source transactions in the open group
  std::vector<std::shared_ptr<const MappingModule>> modules_;
  std::vector<size_t> module_sink_;  // module index → sink index

  // Per connection lifetime.
  std::vector<std::unique_ptr<Sink>> sinks_;
  std::vector<std::function<absl::Status(const TargetOp&)>> emit_;
  std::vector<char> skip_;  // per sink: the open transaction is at or below its checkpoint
  std::unique_ptr<PgSchemaInspector> inspector_;
  std::unique_ptr<Leadership> leadership_;  // ha only
  std::unique_ptr<ChangeSource> source_;
  absl::flat_hash_map<Oid, RelationBindings> bindings_;
  // Mapped source tables by oid (their configured name), and unmapped ones left alone.
  std::map<Oid, std::string> mapped_oids_;
  std::set<std::string> ignored_tables_;
  // Owned rows (MappingModule::owned): owner source table → the mappings whose rows it owns.
  // When an owner's mapping writes a row, FillOwned maps those mappings' current source rows
  // for it, through bindings made from the catalog (per connection lifetime).
  absl::Status FillOwned(const Binding& owner, const RowChange& change);
  std::map<std::string, std::vector<size_t>> owned_by_;
  struct FillBinding {
    std::shared_ptr<const SourceRelation> relation;
    std::unique_ptr<BoundMapping> bound;
  };
  std::map<size_t, FillBinding> fill_bindings_;
  // OnChange scratch: the columns an update left out, and the row completed from the source.
  std::vector<int> missing_;
  Tuple completed_row_;
  // Bindings replaced by a newer relation version, kept until the open group is flushed.
  std::vector<RelationBindings> retired_;
  CopySkipPlan copy_skip_;
  // Re-backfill: the thread, the open watermark windows (id → table, key columns and the keys
  // changed since the low watermark), bindings against the relations chunks were read with,
  // rows applied per table, and the progress row's shape per target.
  std::unique_ptr<Backfiller> backfiller_;
  struct Window {
    std::string table;
    std::vector<std::string> key_names;
    std::set<std::string> changed;
  };
  std::map<std::string, Window> windows_;
  std::map<const SourceRelation*, std::vector<Binding>> backfill_bindings_;
  std::map<std::string, uint64_t> backfill_rows_;
  std::vector<std::unique_ptr<OpShape>> progress_shapes_;
  bool in_transaction_ = false;
  // After a data error, the group is replayed one source transaction per target transaction up
  // to this position, so everything before the failing transaction is committed and the error
  // names it alone.
  Lsn isolate_until_ = kInvalidLsn;
  absl::Status replayed_for_;            // the error that started that replay
  std::set<std::string> upsert_tables_;  // target tables whose new rows are always upserted
  bool streamed_ = false;                // this attempt reached a transaction of the stream
  TransactionBegin begin_;
  const std::atomic<bool>* stop_ = nullptr;  // RunOnce's
  // walshiftctl skip: per sink, the commit LSN of the source transaction to leave out (read from
  // the target's walshift.settings at each attempt), and whether the open transaction is it.
  // Its changes are recorded in walshift.skipped instead, and the request is cleared with it.
  std::vector<Lsn> skip_lsn_;
  std::vector<char> skipping_;
  bool any_skipping_ = false;
  struct SkipShapes {
    std::unique_ptr<OpShape> record, clear;
  };
  std::vector<SkipShapes> skip_shapes_;
  std::vector<uint32_t> skipped_changes_;  // per sink, of the open skipped transaction
  int rejected_by_ = -1;                    // the sink whose Apply or Flush failed first in this attempt
  Lsn stopped_at_ = kInvalidLsn;            // see stopped_at()
  absl::Status ReadSkipRequests();
  // `table`: the source table by its mapped name.
  absl::Status RecordSkipped(size_t sink, const RowChange* change, const SourceRelation& relation,
                             const std::string& table, const char* operation);
  absl::Status ClearSkip(size_t sink);
  // on_error: dead_letter (see dead_letter.h). Per module: whether its rejected changes are
  // parked, and its position among the mappings of its source table and target; per sink: the
  // parked changes, the shapes that write them, the changes parked in the open source
  // transaction, the flood limit, and events to publish once their group committed.
  std::vector<char> dead_letter_on_;
  std::vector<int> mapping_ordinal_;
  bool any_dead_letter_ = false;  // a module parks, or a target holds parked changes
  std::vector<DeadLetterBook> parked_;
  std::vector<DeadLetterShapes> dead_letter_shapes_;
  std::vector<int> parked_seq_;
  std::vector<DeadLetterLimit> dead_letter_limits_;
  std::vector<std::vector<v1::DeadLetterEvent>> dead_letter_events_;
  // What the operations being emitted come from (set around each BoundMapping::Map).
  struct MapContext {
    const MappingModule* module = nullptr;
    const RowChange* change = nullptr;
    const char* operation = "";         // insert, update, delete, backfill, fill
    const std::string* table = nullptr;  // the source table by its mapped name
    int ops = 0;                         // operations emitted for the change so far
  };
  MapContext map_context_;
  // Sets map_context_ for the operations emitted inside it, and clears it after.
  class MapScope {
   public:
    MapScope(Pipeline* p, const MappingModule* module, const RowChange* change, const char* operation,
             const std::string& table)
        : p_(p) {
      p_->map_context_ = MapContext{module, change, operation, &table, 0};
    }
    ~MapScope() { p_->map_context_ = MapContext(); }
    MapScope(const MapScope&) = delete;
    MapScope& operator=(const MapScope&) = delete;

   private:
    Pipeline* p_;
  };
  // Resolves the changes parked in `table` of `sink` that a TRUNCATE (or a clear of a merged
  // source's columns, `source` set) makes moot: discarded, as the rows they would write are gone.
  absl::Status ResolveTruncated(size_t sink, const TargetOp& op);
  // Retry: relations and bindings made from the catalog (per attempt).
  std::map<std::string, std::shared_ptr<const SourceRelation>> retry_relations_;
  std::map<size_t, std::unique_ptr<BoundMapping>> retry_bindings_;
  absl::Status LoadParked();
  // emit_[sink]: parks an operation behind a parked change of its rows; while isolating a
  // failing transaction, applies a dead_letter mapping's operation on its own and parks it
  // when the target rejects it.
  absl::Status EmitOp(size_t sink, const TargetOp& op);
  absl::Status Park(size_t sink, const TargetOp& op, int op_index, std::vector<std::string> keys,
                    const Rejection* rejection, const ParkedChange* behind);
  absl::Status OnDeadLetterRequest(const LogicalMessage& message);
  // Re-maps `parked` through the current mapping and applies what it writes to its rows;
  // *rejection is set when the target rejects it again.
  absl::Status RetryParked(size_t sink, const ParkedChange& parked, std::optional<Rejection>* rejection,
                           bool* wrote);
  void DeadLetterEvent(size_t sink, const ParkedChange& parked, v1::DeadLetterAction action, const std::string& by,
                       const std::string& reason);
  size_t group_changes_ = 0;
  uint64_t changes_seen_ = 0;  // every change handed over (liveness ticks)
  uint64_t ignored_origins_seen_ = 0;  // source_->ignored_origin_transactions() already counted
  absl::Time group_started_ = absl::InfinitePast();
  PgTimestamp last_commit_time_ = 0;  // the source commit time of the last transaction received
};

}  // namespace walshift
