#include "daemon/pipeline/session_zone.h"

#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/apply/pg_sink.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "spdlog/spdlog.h"

namespace walshift {
namespace {

constexpr const char* kZoneSetting = "timezone";

// The zone recorded for the pipeline in one target, if any.
absl::StatusOr<std::optional<std::string>> RecordedZone(PGconn* conn, const std::string& pipeline,
                                                        const std::string& what) {
  ASSIGN_OR_RETURN(pg::ResultPtr exists,
                   pg::Exec(conn, "SELECT to_regclass('walshift.settings') IS NOT NULL", what));
  if (PQgetvalue(exists.get(), 0, 0)[0] != 't') return std::optional<std::string>();
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::ExecParams(conn, "SELECT value FROM walshift.settings WHERE pipeline = $1 AND name = $2",
                                  {pipeline.c_str(), kZoneSetting}, absl::StrCat(what, ": reading walshift.settings")));
  if (PQntuples(r.get()) == 0) return std::optional<std::string>();
  return std::optional<std::string>(PQgetvalue(r.get(), 0, 0));
}

}  // namespace

absl::StatusOr<SessionZone> PinSessionTimeZone(const config::Settings& settings, bool record) {
  pg::SetSessionTimeZone("");  // the lookups below see server defaults, not walshiftd's PGTZ
  const std::string& pipeline = settings.proto.pipeline();
  std::map<std::string, pg::ConnPtr> targets;
  std::map<std::string, std::optional<std::string>> recorded;
  for (const auto& t : settings.targets) {
    std::string what = absl::StrCat("target ", t.name);
    ASSIGN_OR_RETURN(targets[t.name], pg::Connect(t.dsn, what, "application_name=walshiftd connect_timeout=10"));
    ASSIGN_OR_RETURN(recorded[t.name], RecordedZone(targets[t.name].get(), pipeline, what));
  }
  SessionZone out;
  std::vector<std::string> seen;
  for (const auto& [name, zone] : recorded) {
    if (zone) seen.push_back(absl::StrCat(name, ": ", *zone));
    if (zone && out.zone.empty()) out.zone = *zone;
  }
  for (const auto& [name, zone] : recorded) {
    if (zone && *zone != out.zone && settings.proto.source().timezone().empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the targets recorded different time zones for pipeline ", pipeline, " (", absl::StrJoin(seen, "; "),
          "); set source.timezone to the one their values were written in"));
    }
  }
  if (!settings.proto.source().timezone().empty()) {
    if (!out.zone.empty() && out.zone != settings.proto.source().timezone()) {
      spdlog::warn("source.timezone {} replaces the time zone {} recorded for pipeline {}: values converted "
                   "before were read in {}", settings.proto.source().timezone(), out.zone, pipeline, out.zone);
    }
    out.zone = settings.proto.source().timezone();
    out.origin = "source.timezone";
  } else if (!out.zone.empty()) {
    out.origin = "recorded in the targets";
  } else {
    ASSIGN_OR_RETURN(pg::ConnPtr src, pg::Connect(settings.source_dsn, "source",
                                                  "application_name=walshiftd connect_timeout=10"));
    ASSIGN_OR_RETURN(pg::ResultPtr r, pg::Exec(src.get(), "SELECT current_setting('TimeZone')",
                                               "source: reading the default TimeZone"));
    out.zone = PQgetvalue(r.get(), 0, 0);
    out.origin = "the source database's default";
  }
  // A zone the server does not know is refused here, by name, rather than by every connection.
  for (auto& [name, conn] : targets) {
    auto ok = pg::ExecParams(conn.get(), "SELECT set_config('TimeZone', $1, false)", {out.zone.c_str()},
                             absl::StrCat("target ", name, ": TimeZone"));
    if (!ok.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("time zone '", out.zone, "' (", out.origin,
                                                        ") is not known to target ", name, ": ", ok.status().message()));
    }
  }
  if (record) {
    for (auto& [name, conn] : targets) {
      if (recorded[name] == out.zone) continue;
      std::string what = absl::StrCat("target ", name);
      RETURN_IF_ERROR(PgSink::EnsureSchema(conn.get(), what));
      RETURN_IF_ERROR(pg::ExecParams(conn.get(),
                                     "INSERT INTO walshift.settings (pipeline, name, value) VALUES ($1, $2, $3) "
                                     "ON CONFLICT (pipeline, name) DO UPDATE SET value = EXCLUDED.value, "
                                     "recorded_at = now()",
                                     {pipeline.c_str(), kZoneSetting, out.zone.c_str()},
                                     absl::StrCat(what, ": recording the time zone"))
                          .status());
    }
  }
  pg::SetSessionTimeZone(out.zone);
  return out;
}

}  // namespace walshift
