#pragma once
// The one place that knows every kind of target: opens the Sink of a configured target, and
// checks shapes against a live target before streaming starts (walshiftd --check, start-up).

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/config/config.h"
#include "daemon/core/interfaces.h"

typedef struct pg_conn PGconn;

namespace walshift {

struct SinkOptions {
  std::string pipeline;  // the checkpoint's name
  // PostgreSQL: pipeline backlog bounds (0: defaults).
  size_t max_pending_statements = 0;
  size_t max_pending_bytes = 0;
  // Off: commits do not wait for the target's disk; the sink tracks what is flushed
  // (Sink::flushed_lsn). Streaming and the initial copy's chunks commit this way.
  bool synchronous_commit = true;
  // ha: the leader's epoch in this target (0: none); see state::HoldWriterLock.
  int64_t epoch = 0;
  // PostgreSQL: the session applies with this replication origin (empty: none); see
  // state::SetUpReplicationOrigin.
  std::string replication_origin;
};

// Connects to (or opens) `target` and reads its checkpoint. kUnavailable when it cannot be
// reached.
absl::StatusOr<std::unique_ptr<Sink>> OpenSink(const config::TargetSettings& target, const SinkOptions& options);

// Checks shapes against one target as it is now, without writing anything.
class ShapeChecker {
 public:
  virtual ~ShapeChecker() = default;
  // kFailedPrecondition naming table and column, with the fix, when `shape` cannot be applied.
  virtual absl::Status Check(const OpShape& shape) = 0;
  // The target's PostgreSQL connection for further catalog checks; null for other kinds.
  virtual PGconn* connection() { return nullptr; }
};
absl::StatusOr<std::unique_ptr<ShapeChecker>> OpenShapeChecker(const config::TargetSettings& target,
                                                               const std::string& application_name);

}  // namespace walshift
