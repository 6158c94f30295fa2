#pragma once
// on_error: dead_letter. A change a PostgreSQL target rejects with a data error (SQLSTATE class
// 22 or 23) is parked in the target's walshift.dead_letter table, in the same target
// transaction as the changes around it, and the pipeline goes on. Order per target row is
// kept: a later change that writes a row (or JSON element) a parked change writes is parked
// behind it, never applied past it. `walshiftctl dead-letter retry` re-maps the parked changes
// of those rows through the current mappings, in stream order, when the stream reaches the
// request (a logical message); `discard` records who left them out and why. Both clear the
// rows for the changes after them.
//
// Parked changes are read back at every attempt; those an attempt parks are added as it goes,
// and forgotten with it when its group rolls back.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "daemon/core/change.h"
#include "daemon/core/interfaces.h"
#include "daemon/core/target_op.h"
#include "libpq-fe.h"

namespace walshift {

// The logical message prefix of walshiftctl dead-letter retry and discard. Content: pipeline,
// target, action ("retry" or "discard"), by, reason, then the parked changes as
// "commit_lsn/seq" items joined by ','; fields separated by tabs.
inline constexpr char kDeadLetterRequest[] = "walshift.dead_letter";

struct DeadLetterRequest {
  std::string pipeline, target, action, by, reason;
  std::vector<std::pair<Lsn, int>> changes;
};
std::string FormatDeadLetterRequest(const DeadLetterRequest& request);
absl::Status ParseDeadLetterRequest(absl::string_view content, DeadLetterRequest* request);

// The target rows and JSON elements `op` writes, each as one text, so that two operations that
// write the same row share one (values written through SQL expressions count by their inputs).
std::vector<std::string> OpRowKeys(const TargetOp& op);
// The row `op` writes for a person: "id=42, region=eu" (kArrayRemove: its element's key).
std::string OpKeyText(const TargetOp& op);
// The values `op` writes as a JSON object by target column (an SQL expression's by its inputs).
std::string OpValuesJson(const TargetOp& op);
// The source change as a JSON object: {"old": {column: text|null}, "new": {...}}; unchanged
// TOAST values are listed under "unchanged" instead.
std::string SourceChangeJson(const RowChange& change);

// A change rebuilt from SourceChangeJson against the relation the source has now: columns it no
// longer has are left out, columns it gained (and unchanged TOAST values) are left unchanged.
struct RebuiltChange {
  RowChange change;
  Tuple old_tuple, new_tuple;
  std::vector<std::unique_ptr<std::string>> storage;
};
absl::Status RebuildChange(const std::string& json, ChangeKind kind, const SourceRelation& relation,
                           RebuiltChange* out);

// One parked change (a row of walshift.dead_letter).
struct ParkedChange {
  int64_t id = 0;  // 0 for one this attempt parked
  Lsn commit_lsn = kInvalidLsn;
  int seq = 0;
  PgTimestamp commit_time = 0;
  Lsn change_lsn = kInvalidLsn;
  std::string source_table, operation;  // operation: insert, update, delete, backfill
  int mapping = 0;                      // among the mappings of source_table and this target
  int op_index = 0;                     // among the operations the mapping emits for the change
  std::string target_table, target_operation, target_key;
  std::vector<std::string> row_keys;
  std::string source_change, mapped_values;  // JSON
  std::string sqlstate;                      // empty: parked behind an earlier change
  std::string message, constraint;
  Lsn behind_commit_lsn = kInvalidLsn;
  int behind_seq = 0;
  int attempts = 1;
  std::pair<Lsn, int> position() const { return {commit_lsn, seq}; }
};

// The parked changes of one target, in stream order.
class DeadLetterBook {
 public:
  absl::Status Load(PGconn* conn, const std::string& pipeline, absl::string_view what);
  size_t size() const { return parked_.size(); }
  bool empty() const { return parked_.empty(); }
  // The earliest parked change that writes one of `keys`, or nullptr.
  const ParkedChange* Blocking(const std::vector<std::string>& keys) const;
  void Add(ParkedChange change);
  // The parked changes connected with those at `positions` through rows they share
  // (transitively), in stream order. Unknown positions are left out.
  std::vector<ParkedChange*> Connected(const std::vector<std::pair<Lsn, int>>& positions);
  void Remove(const std::pair<Lsn, int>& position);
  ParkedChange* Find(const std::pair<Lsn, int>& position);
  std::vector<ParkedChange*> All();

 private:
  void Index(const ParkedChange& change);
  std::map<std::pair<Lsn, int>, ParkedChange> parked_;
  absl::flat_hash_map<std::string, std::pair<Lsn, int>> first_by_key_;
};

// The statements the pipeline writes walshift.dead_letter with, as shapes a PostgreSQL sink
// applies in its groups: the parked change (an upsert by pipeline, commit LSN and number), its
// resolution (retried or discarded, by whom, why) and another failed attempt.
struct DeadLetterShapes {
  std::unique_ptr<OpShape> park, resolve, refail;
};
DeadLetterShapes MakeDeadLetterShapes(const std::string& target);
// Applies one of them through `emit` with the values of `change`.
absl::Status EmitPark(const DeadLetterShapes& shapes, const std::string& pipeline, const ParkedChange& change,
                      const std::function<absl::Status(const TargetOp&)>& emit);
absl::Status EmitResolve(const DeadLetterShapes& shapes, const std::string& pipeline, const ParkedChange& change,
                         const std::string& state, const std::string& by, const std::string& reason,
                         const std::function<absl::Status(const TargetOp&)>& emit);
absl::Status EmitRefail(const DeadLetterShapes& shapes, const std::string& pipeline, const ParkedChange& change,
                        const std::function<absl::Status(const TargetOp&)>& emit);

// The flood limit (apply.dead_letter): changes parked and received over a sliding window.
class DeadLetterLimit {
 public:
  DeadLetterLimit(uint32_t max_parked, uint32_t max_percent, absl::Duration window)
      : max_parked_(max_parked), max_percent_(max_percent), window_(window) {}
  void OnChange() { ++changes_; }
  // From the pipeline's loop: samples the changes received, once a second.
  void Tick(absl::Time now);
  // Before parking a rejected change when `parked` are parked in the target already: an error
  // naming the limit it would pass, or OK (and it is counted).
  absl::Status Admit(size_t parked, const std::string& target, absl::Time now);
  // Before parking a change behind another: only the total counts.
  absl::Status AdmitBehind(size_t parked, const std::string& target) const;

 private:
  uint32_t max_parked_, max_percent_;
  absl::Duration window_;
  uint64_t changes_ = 0;
  std::deque<std::pair<absl::Time, uint64_t>> samples_;  // (when, changes received by then)
  std::deque<absl::Time> rejections_;
};

}  // namespace walshift
