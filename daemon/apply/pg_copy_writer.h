#pragma once
// Writes rows that are plain inserts of one shape with COPY ... FROM STDIN: the initial copy's
// fast path (about twice the speed of multi-row INSERTs on the target). Each chunk is one
// target transaction: Begin, Add per row, Commit with the chunk's marker statement.
// Commits are asynchronous (synchronous_commit off): the WAL being sequential, the chunks are on
// disk once the target's flush passes the checkpoint written after the copy, which is when the
// slot is first confirmed (Sink::flushed_lsn).

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/core/interfaces.h"
#include "daemon/pg/pg_util.h"

namespace walshift {

class PgCopyWriter {
 public:
  // The session holds `pipeline`'s writer lock (state::HoldWriterLock).
  // `epoch`: the leader's epoch in this target under ha (0: none), see HoldWriterLock.
  // `origin`: the replication origin its commits carry ("": none), see UseReplicationOrigin.
  static absl::StatusOr<std::unique_ptr<PgCopyWriter>> Connect(const std::string& target_name, const std::string& dsn,
                                                               const std::string& pipeline, int64_t epoch,
                                                               const std::string& origin = "");

  // Whether rows of `shape` can go through COPY: an upsert whose every value is a parameter
  // (no sql: expression, no filter).
  static bool Copyable(const OpShape& shape);

  // BEGIN; COPY shape.table (its columns) FROM STDIN.
  absl::Status Begin(const OpShape& shape);
  // One row: the op's parameter of every value, in the shape's column order.
  absl::Status Add(const TargetOp& op);
  // Ends the COPY, records `chunk` as a finished range of `pipeline` and commits. A unique
  // violation is kAlreadyExists (the target has some of the rows); a rejected value
  // kFailedPrecondition with the server's message.
  absl::Status Commit(const std::string& pipeline, const CopyChunk& chunk);

 private:
  PgCopyWriter() = default;
  absl::Status Send(bool all);
  absl::Status Fail(PGresult* result, absl::string_view what);

  std::string name_;
  pg::ConnPtr conn_;
  const OpShape* shape_ = nullptr;
  std::string buffer_;
};

}  // namespace walshift
