#pragma once
// Explicit kill points for crash tests. With WALSHIFT_CRASH_AT="name:N" in the environment the
// process kills itself with SIGKILL the Nth time it passes the point `name`. Without the
// variable a crash point costs one branch.

namespace walshift {

void CrashPoint(const char* name);

}  // namespace walshift
