#pragma once
// The time zone every session of a pipeline uses (copy, apply, verify, backfill, walshiftctl):
// it decides how a value without a zone (timestamp) becomes an instant (timestamptz) and back,
// so it must not depend on where walshiftd runs or on a server default that may change.

#include <string>

#include "absl/status/statusor.h"
#include "daemon/config/config.h"

namespace walshift {

struct SessionZone {
  std::string zone;
  std::string origin;  // for messages: "source.timezone", "recorded in the targets", ...
};

// Resolves the zone and pins it for every later connection (pg::SetSessionTimeZone):
// `source.timezone` when set; else the zone recorded for the pipeline in the targets'
// walshift.settings; else the source database's default TimeZone. With `record`, writes it
// into every target's walshift.settings that lacks it (or holds another one while the config
// overrides it). kFailedPrecondition when targets disagree; kUnavailable when a database
// cannot be reached.
absl::StatusOr<SessionZone> PinSessionTimeZone(const config::Settings& settings, bool record);

}  // namespace walshift
