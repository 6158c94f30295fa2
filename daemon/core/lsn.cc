#include "daemon/core/lsn.h"

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <ctime>

namespace walshift {

std::string FormatLsn(Lsn lsn) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%" PRIX32 "/%" PRIX32, static_cast<uint32_t>(lsn >> 32), static_cast<uint32_t>(lsn));
  return buf;
}

std::optional<Lsn> ParseLsn(absl::string_view text) {
  size_t slash = text.find('/');
  if (slash == absl::string_view::npos || slash == 0 || slash + 1 >= text.size()) return std::nullopt;
  auto hex = [](absl::string_view s, uint64_t* out) {
    if (s.empty() || s.size() > 8) return false;
    uint64_t v = 0;
    for (char c : s) {
      int d = (c >= '0' && c <= '9')   ? c - '0'
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                       : -1;
      if (d < 0) return false;
      v = v * 16 + d;
    }
    *out = v;
    return true;
  };
  uint64_t hi = 0, lo = 0;
  if (!hex(text.substr(0, slash), &hi) || !hex(text.substr(slash + 1), &lo)) return std::nullopt;
  return (hi << 32) | lo;
}

// Seconds between 1970-01-01 and 2000-01-01.
static constexpr int64_t kPgEpochOffsetSeconds = 946684800;

PgTimestamp PgNow() {
  auto now = std::chrono::system_clock::now().time_since_epoch();
  return std::chrono::duration_cast<std::chrono::microseconds>(now).count() - kPgEpochOffsetSeconds * 1000000;
}

std::string FormatPgTimestamp(PgTimestamp ts) {
  int64_t unix_us = ts + kPgEpochOffsetSeconds * 1000000;
  time_t secs = static_cast<time_t>(unix_us / 1000000);
  int64_t frac = unix_us % 1000000;
  if (frac < 0) {
    frac += 1000000;
    secs -= 1;
  }
  struct tm tm_utc;
  gmtime_r(&secs, &tm_utc);
  char buf[64];
  size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm_utc);
  std::snprintf(buf + n, sizeof(buf) - n, ".%06" PRId64 "+00", frac);
  return buf;
}

}  // namespace walshift
