#pragma once
// WAL positions (XLogRecPtr) as the 64-bit number PostgreSQL uses, and its X/X text form.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"

namespace walshift {

using Lsn = uint64_t;
inline constexpr Lsn kInvalidLsn = 0;

// "16/B374D848" form, as pg_lsn prints it.
std::string FormatLsn(Lsn lsn);
// Parses the X/X form; nullopt on anything else.
std::optional<Lsn> ParseLsn(absl::string_view text);

// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's TimestampTz epoch.
using PgTimestamp = int64_t;
PgTimestamp PgNow();
// ISO 8601 UTC text of a PgTimestamp, for SQL parameters and logs.
std::string FormatPgTimestamp(PgTimestamp ts);

}  // namespace walshift
