#include "daemon/core/crash_point.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace walshift {
namespace {

struct Target {
  std::string name;
  std::atomic<long> remaining{0};
};

Target* Parse() {
  const char* spec = std::getenv("WALSHIFT_CRASH_AT");
  if (spec == nullptr || *spec == '\0') return nullptr;
  auto* t = new Target;
  const char* colon = std::strrchr(spec, ':');
  t->name = colon ? std::string(spec, colon - spec) : spec;
  t->remaining = colon ? std::atol(colon + 1) : 1;
  return t;
}

}  // namespace

void CrashPoint(const char* name) {
  static Target* target = Parse();
  if (target == nullptr || target->name != name) return;
  if (target->remaining.fetch_sub(1) > 1) return;  // points may be passed on several threads
  static const char kMsg[] = "walshiftd: crash point reached, killing itself\n";
  (void)!write(2, kMsg, sizeof(kMsg) - 1);
  kill(getpid(), SIGKILL);
}

}  // namespace walshift
