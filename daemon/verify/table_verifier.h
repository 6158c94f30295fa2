#pragma once
// One mapping into a PostgreSQL target, verified (see verifier.h for the method): the forward
// walk, the re-check of differences and the reverse walk for extra rows.

#include <atomic>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/pg/pg_util.h"
#include "daemon/verify/verifier.h"

namespace walshift::verify_internal {

absl::StatusOr<VerifyTableReport> VerifyTable(const VerifyOptions& options, const MappingModule& module, size_t target,
                                              const std::string& path, const std::atomic<bool>& stop);

// The source's current WAL position.
absl::StatusOr<Lsn> CurrentLsn(PGconn* conn);

}  // namespace walshift::verify_internal
