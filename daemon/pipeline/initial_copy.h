#pragma once
// The initial copy: the rows a legacy table already has, read under one exported snapshot and
// written through the same mapping modules and sinks as streamed changes.
//
// Units are (source table, target). Tables whose primary key is one integer column are cut
// into key ranges ("chunks") of about `chunk_rows` rows; other tables are one chunk. Each chunk
// commits in its own target transaction together with its row in walshift.copy_chunk (key
// range, snapshot LSN, rows), so a restart copies only the ranges still missing, under a new
// snapshot. Streaming then starts from the slot's position, and a change of a key whose range
// was copied under a later snapshot is skipped while its transaction precedes that snapshot
// (CopySkipPlan): every row ends up as exactly its snapshot plus the changes after it.
//
// Workers import the same snapshot. A unit waits for the units whose target tables its own
// target tables reference by foreign key, so parents are complete before children.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "daemon/config/config.h"
#include "daemon/core/interfaces.h"
#include "daemon/observe/status.h"
#include "daemon/pg/pg_util.h"

namespace walshift {

// A key range of one copied source table: [lo, hi), either end unbounded when absent.
struct CopyRange {
  std::optional<int64_t> lo, hi;
  Lsn snapshot_lsn = kInvalidLsn;
  bool Contains(int64_t key) const { return (!lo || key >= *lo) && (!hi || key < *hi); }
};

// Which changes streaming must leave out after a copy: those of transactions the snapshot of
// their key's range already shows.
class CopySkipPlan {
 public:
  struct Table {
    std::string key_column;  // empty: one range covers the whole table
    std::vector<CopyRange> ranges;
  };
  // Reads the ranges `sink` (target `target_index`) recorded whose snapshot is later than
  // `after`.
  absl::Status Load(Sink& sink, size_t target_index, Lsn after);
  bool empty() const { return tables_.empty(); }
  const Table* Find(const std::string& source_table, size_t target_index) const;
  // The earliest snapshot LSN of the ranges covering `key` (the text of the key column; null:
  // the whole-table range), or kInvalidLsn when no range holds it.
  static Lsn SnapshotFor(const Table& table, const Datum* key);

 private:
  std::map<std::pair<std::string, size_t>, Table> tables_;
};

struct InitialCopyOptions {
  const config::Settings* settings = nullptr;
  const std::vector<std::shared_ptr<const MappingModule>>* modules = nullptr;
  std::vector<size_t> module_target;  // target index of each module
  std::vector<size_t> targets;        // target indices to copy into
  // The snapshot to read (its LSN is recorded with every chunk). Dry run: empty; the copy
  // exports its own.
  ExportedSnapshot snapshot;
  int workers = 2;
  int64_t chunk_rows = 100000;
  // Write nothing: map every row, count what would be written, collect mapping failures.
  bool dry_run = false;
  // ha: the leader's epoch in each target (by target index; empty: none), fencing every range.
  std::vector<int64_t> epochs;
  // The apply origin of each target (by target index; empty: none): worker N's sink writes with
  // CopyOriginName(origin, 2N) and its COPY session with 2N + 1 (an origin serves one session),
  // so that a pipeline reading the target passes over the copy too.
  std::vector<std::string> origins;
  // Called about every second while the copy runs (the pipeline's liveness).
  std::function<void()> tick;
};

class InitialCopy {
 public:
  explicit InitialCopy(InitialCopyOptions options);
  ~InitialCopy();

  // Copies every unit of `targets` still missing. OK when all are complete (or, dry run, all
  // were read); kCancelled when `stop` became true; otherwise the first error, naming table,
  // key and target.
  absl::Status Run(const std::atomic<bool>& stop);

  std::vector<CopyUnitReport> Report() const;
  // Ranges this run committed (not those an earlier run left).
  size_t committed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return committed_;
  }

 private:
  struct Unit;
  struct Task;
  struct Worker;
  absl::Status Plan();
  void WorkerLoop(int index, const std::atomic<bool>& stop);
  absl::Status CopyTask(Worker& w, Task& task, const std::atomic<bool>& stop);
  void LogProgress(bool final);
  int64_t EpochOf(size_t target) const { return target < options_.epochs.size() ? options_.epochs[target] : 0; }
  // The origin of copy session `session` (see InitialCopyOptions::origins) into `target`.
  std::string OriginOf(size_t target, int session) const;
  // Next task whose unit's foreign-key parents are complete; nullptr when none is ready.
  Task* NextTaskLocked();

  InitialCopyOptions options_;
  pg::ConnPtr planner_;  // holds the snapshot it exported (dry run) until the copy ends
  std::vector<std::unique_ptr<Unit>> units_;
  std::vector<std::unique_ptr<Task>> tasks_;
  mutable std::mutex mu_;
  std::string snapshot_name_;
  absl::Status error_;
  bool cycle_warned_ = false;
  size_t committed_ = 0;
  absl::Time started_ = absl::InfinitePast();
};

}  // namespace walshift
