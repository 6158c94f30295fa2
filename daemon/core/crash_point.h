#pragma once
// Explicit kill points for crash tests. With WALSHIFT_CRASH_AT="name:N" in the environment the
// process kills itself with SIGKILL the Nth time it passes the point `name`. Without the
// variable a crash point costs one branch. With WALSHIFT_STALL_AT="name:N" the thread that passes
// it the Nth time stops there for good instead (a wedged apply, for watchdog tests).

#include "absl/status/status.h"

namespace walshift {

void CrashPoint(const char* name);

// The same for a lost connection: with WALSHIFT_FAULT_AT="name:N" the Nth pass of `name`
// returns kUnavailable, as a dropped target connection would, and the pipeline retries from
// its checkpoint inside the same process.
absl::Status FaultPoint(const char* name);

// And for a deadlock with another writer: with WALSHIFT_CONFLICT_AT="name:N" the Nth pass of
// `name` returns kAborted, as a deadlock or serialization failure would.
absl::Status ConflictPoint(const char* name);

}  // namespace walshift
