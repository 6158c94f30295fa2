#include "daemon/pipeline/session_zone.h"

#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "daemon/state/pg_state.h"
#include "spdlog/spdlog.h"

namespace walshift {
namespace {

constexpr const char* kZoneSetting = "timezone";

}  // namespace

absl::StatusOr<SessionZone> PinSessionTimeZone(const config::Settings& settings, bool record) {
  pg::SetSessionTimeZone("");  // the lookups below see server defaults, not walshiftd's PGTZ
  const std::string& pipeline = settings.proto.pipeline();
  std::map<std::string, pg::ConnPtr> targets;
  std::map<std::string, std::optional<std::string>> recorded;
  for (const auto& t : settings.targets) {
    if (t.documents()) continue;  // (documents hold instants as the source's text says them)
    std::string what = absl::StrCat("target ", t.name);
    ASSIGN_OR_RETURN(targets[t.name], pg::Connect(t.dsn, what, "application_name=walshiftd"));
    ASSIGN_OR_RETURN(recorded[t.name], state::ReadSetting(targets[t.name].get(), pipeline, kZoneSetting, what));
  }
  SessionZone out;
  std::vector<std::string> seen;
  for (const auto& [name, zone] : recorded) {
    if (zone) seen.push_back(absl::StrCat(name, ": ", *zone));
    if (zone && out.zone.empty()) out.zone = *zone;
  }
  for (const auto& [name, zone] : recorded) {
    if (zone && *zone != out.zone && settings.proto.source().timezone().empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("the targets recorded different time zones for pipeline ", pipeline, " (",
                       absl::StrJoin(seen, "; "), "); set source.timezone to the one their values were written in"));
    }
  }
  if (!settings.proto.source().timezone().empty()) {
    if (!out.zone.empty() && out.zone != settings.proto.source().timezone()) {
      spdlog::warn(
          "source.timezone {} replaces the time zone {} recorded for pipeline {}: values converted "
          "before were read in {}",
          settings.proto.source().timezone(), out.zone, pipeline, out.zone);
    }
    out.zone = settings.proto.source().timezone();
    out.origin = "source.timezone";
  } else if (!out.zone.empty()) {
    out.origin = "recorded in the targets";
  } else {
    ASSIGN_OR_RETURN(pg::ConnPtr src,
                     pg::Connect(settings.source_dsn, "source", "application_name=walshiftd"));
    ASSIGN_OR_RETURN(pg::ResultPtr r,
                     pg::Exec(src.get(), "SELECT current_setting('TimeZone')", "source: reading the default TimeZone"));
    out.zone = PQgetvalue(r.get(), 0, 0);
    out.origin = "the source database's default";
  }
  // A zone the server does not know is refused here, by name, rather than by every connection.
  for (auto& [name, conn] : targets) {
    auto ok = pg::ExecParams(conn.get(), "SELECT set_config('TimeZone', $1, false)", {out.zone.c_str()},
                             absl::StrCat("target ", name, ": TimeZone"));
    if (!ok.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "time zone '", out.zone, "' (", out.origin, ") is not known to target ", name, ": ", ok.status().message()));
    }
  }
  if (record) {
    for (auto& [name, conn] : targets) {
      if (recorded[name] == out.zone) continue;
      std::string what = absl::StrCat("target ", name);
      RETURN_IF_ERROR(state::WriteSetting(conn.get(), pipeline, kZoneSetting, out.zone, what));
    }
  }
  pg::SetSessionTimeZone(out.zone);
  return out;
}

}  // namespace walshift
