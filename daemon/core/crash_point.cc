#include "daemon/core/crash_point.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace walshift {
namespace {

struct Target {
  std::string name;
  std::atomic<long> remaining{0};
};

Target* Parse(const char* variable) {
  const char* spec = std::getenv(variable);
  if (spec == nullptr || *spec == '\0') return nullptr;
  auto* t = new Target;
  const char* colon = std::strrchr(spec, ':');
  t->name = colon ? std::string(spec, colon - spec) : spec;
  t->remaining = colon ? std::atol(colon + 1) : 1;
  return t;
}

// True the Nth time `name` is passed (points may be passed on several threads).
bool Reached(Target* target, const char* name) {
  return target != nullptr && target->name == name && target->remaining.fetch_sub(1) == 1;
}

}  // namespace

void CrashPoint(const char* name) {
  static Target* stall = Parse("WALSHIFT_STALL_AT");
  if (Reached(stall, name)) {
    // A wedged thread, as a hung apply would be: it never comes back (the watchdog's test).
    static const char kStall[] = "walshiftd: stall point reached, this thread stops here\n";
    (void)!write(2, kStall, sizeof(kStall) - 1);
    for (;;) pause();
  }
  static Target* target = Parse("WALSHIFT_CRASH_AT");
  if (!Reached(target, name)) return;
  static const char kMsg[] = "walshiftd: crash point reached, killing itself\n";
  (void)!write(2, kMsg, sizeof(kMsg) - 1);
  kill(getpid(), SIGKILL);
}

absl::Status FaultPoint(const char* name) {
  static Target* target = Parse("WALSHIFT_FAULT_AT");
  if (!Reached(target, name)) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("fault point ", name, " reached"));
}

absl::Status ConflictPoint(const char* name) {
  static Target* target = Parse("WALSHIFT_CONFLICT_AT");
  if (!Reached(target, name)) return absl::OkStatus();
  return absl::AbortedError(absl::StrCat("deadlock detected (conflict point ", name, " reached)"));
}

}  // namespace walshift
