#pragma once
// walshift's state in any kind of target, read without a running walshiftd: the one entry
// point walshiftd, the verifier and walshiftctl use to ask a target where a pipeline stands.
// A PostgreSQL target keeps it in its `walshift` schema (pg_state.h); a document store in its
// `_walshift` directory and the `walshift.backfill` collection (daemon/apply/documents).

#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/config/config.h"
#include "daemon/state/pg_state.h"

namespace walshift::state {

// Reads one target's state again and again (polling), over one connection for a PostgreSQL
// target, opened on first use and reopened after an error.
class TargetStateReader {
 public:
  TargetStateReader(const config::TargetSettings& target, std::string pipeline);
  ~TargetStateReader();
  absl::StatusOr<std::optional<CheckpointRow>> Checkpoint();
  absl::StatusOr<std::vector<BackfillRow>> Backfills();
  absl::StatusOr<double> Clock();
  const config::TargetSettings& target() const { return target_; }

 private:
  absl::StatusOr<PGconn*> Conn();
  template <typename T>
  absl::StatusOr<T> Keep(absl::StatusOr<T> result);
  const config::TargetSettings& target_;
  std::string pipeline_;
  pg::ConnPtr conn_;
};

// The pipeline's checkpoint in `target` (std::nullopt: none yet). kUnavailable when the target
// cannot be reached; other errors when its state cannot be read.
absl::StatusOr<std::optional<CheckpointRow>> ReadCheckpointRow(const config::TargetSettings& target,
                                                               const std::string& pipeline);
// The recorded copy ranges of `pipeline` (of `source_table` when not empty).
absl::StatusOr<std::vector<CopyChunk>> ReadCopyChunks(const config::TargetSettings& target, const std::string& pipeline,
                                                      const std::string& source_table);
// The re-backfill progress rows of `pipeline`.
absl::StatusOr<std::vector<BackfillRow>> ReadBackfills(const config::TargetSettings& target,
                                                       const std::string& pipeline);
// The progress of the backfill of `source_table` written at or after `since` (ReadClock), if any.
absl::StatusOr<std::optional<BackfillRow>> BackfillSince(TargetStateReader& reader, const std::string& source_table,
                                                         double since);
// The error walshiftd stopped on, recorded in / read from a PostgreSQL target (a document
// store keeps none: OK and std::nullopt).
absl::Status RecordStopError(const config::TargetSettings& target, const std::string& pipeline, int exit_code,
                             const std::string& message, Lsn lsn);
// The changes parked in the target's walshift.dead_letter (0 for a document store).
absl::StatusOr<uint64_t> CountParked(const config::TargetSettings& target, const std::string& pipeline);
// ha: the pipeline's leader as the target records it (epoch 0: none; always so for documents).
absl::StatusOr<LeaderRow> ReadLeader(const config::TargetSettings& target, const std::string& pipeline);
absl::StatusOr<std::optional<StopError>> ReadStopError(const config::TargetSettings& target,
                                                       const std::string& pipeline);
// The target's clock (seconds since the epoch), to compare with BackfillRow::updated_at.
absl::StatusOr<double> ReadClock(const config::TargetSettings& target);

}  // namespace walshift::state
