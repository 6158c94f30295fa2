#pragma once
// The verifier of one mapping into a PostgreSQL target (table_verifier.h): its state and
// helpers, shared by the forward walk (table_verifier.cc) and the re-check of differences and
// the reverse walk (table_verifier_confirm.cc).

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/apply/pg_statements.h"
#include "daemon/core/status_macros.h"
#include "daemon/observe/format.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/pg_schema_inspector.h"
#include "daemon/state/pg_state.h"
#include "daemon/state/target_state.h"
#include "daemon/verify/table_verifier.h"
#include "google/protobuf/util/time_util.h"
#include "spdlog/spdlog.h"

namespace walshift::verify_internal {

inline constexpr size_t kShownValue = 120;
inline constexpr int kRounds = 4;

using Row = std::vector<std::optional<std::string>>;

inline std::string Cut(const std::string& v) {
  return v.size() <= kShownValue ? v : absl::StrCat(v.substr(0, kShownValue), "... (", v.size(), " bytes)");
}

// Waits until the target's checkpoint reaches `lsn`; false when `settle` passes first.
inline absl::StatusOr<bool> WaitCheckpoint(PGconn* target, const std::string& pipeline, Lsn lsn, absl::Duration settle,
                                           const std::atomic<bool>& stop) {
  absl::Time deadline = absl::Now() + settle;
  for (;;) {
    ASSIGN_OR_RETURN(Lsn cp, state::ReadCheckpoint(target, pipeline, "target"));
    if (cp != kInvalidLsn && cp >= lsn) return true;
    if (absl::Now() >= deadline || stop.load()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// An expected target state: an op's shape and a copy of its parameters.
struct Expectation {
  const OpShape* shape = nullptr;
  Row params;
};

// One compiled comparison per shape, for any number of rows: the rows go into a VALUES list
// (`row` is one row's list with {{k}} for its k-th parameter), joined to the target table.
struct ShapeCheck {
  std::string head, row, tail;
  std::vector<int> slots;  // op parameter slot of each parameter of a row
  int compared = 0;        // columns compared (after present, wanted)
  std::vector<std::string> columns;
  std::vector<int> key_values;   // indices into columns of the key
  bool expect_absent = false;    // a delete
  bool only_if_present = false;  // an update-only (owned) row: absent is fine
};

class TableVerifier {
 public:
  TableVerifier(const VerifyOptions& o, const MappingModule& module, size_t target_index, std::string mapping_path,
                const std::atomic<bool>& stop)
      : o_(o), module_(module), target_index_(target_index), stop_(stop) {
    report_.mapping = std::move(mapping_path);
    report_.source_table = module.source_table();
    report_.target = o.settings->targets[target_index].name;
    for (const auto& m : o.settings->mappings)
      if (m.path == report_.mapping) unverified_.insert(m.common.unverified_columns().begin(), m.common.unverified_columns().end());
  }

  absl::StatusOr<VerifyTableReport> Run();

 private:
  absl::Status Prepare();
  absl::StatusOr<std::vector<Expectation>> Expect(const Row& row);
  absl::StatusOr<const ShapeCheck*> CheckFor(const OpShape& shape);
  // The differences of one source row now (empty: as expected).
  absl::StatusOr<std::vector<v1::DriftEvent>> Compare(const Row& row);
  // The differences of each row (batched per target table).
  absl::StatusOr<std::vector<std::vector<v1::DriftEvent>>> CompareRows(const std::vector<const Row*>& rows);
  absl::StatusOr<std::optional<Row>> ReadRow(const std::vector<std::string>& key);
  std::vector<std::string> KeyOf(const Row& row) const;
  absl::Status Confirm(std::vector<std::pair<std::vector<std::string>, Lsn>> suspects);
  absl::Status ReverseWalk();
  absl::Status Report(v1::DriftEvent event);
  // The rows/s budget: `rows` read since `started` take at least rows / rows_per_second.
  void Pace(absl::Time started, int rows);

  const VerifyOptions& o_;
  const MappingModule& module_;
  size_t target_index_;
  std::set<std::string> unverified_;  // the mapping's unverified_columns
  const std::atomic<bool>& stop_;
  VerifyTableReport report_;
  pg::ConnPtr src_, tgt_;
  std::unique_ptr<PgSchemaInspector> inspector_;
  std::shared_ptr<SourceRelation> relation_;
  std::unique_ptr<BoundMapping> bound_;
  std::vector<int> key_columns_;
  std::vector<std::string> key_types_, column_list_;
  // The source table as read: ONLY an inheritance parent's own rows, every partition of a
  // partitioned table.
  std::string source_from_;
  bool no_key_ = false;  // the source table has no primary key to walk
  std::map<uint32_t, ShapeCheck> checks_;
  // The check of a JSON array element shape (RenderArrayCheck over a run), by shape id.
  const std::string& ArrayCheck(const OpShape& shape) {
    auto it = array_checks_.find(shape.id);
    if (it == array_checks_.end()) it = array_checks_.emplace(shape.id, RenderArrayCheck(shape, true)).first;
    return it->second;
  }
  std::map<uint32_t, std::string> array_checks_;
  std::map<std::string, bool> has_equality_;
};

}  // namespace walshift::verify_internal
