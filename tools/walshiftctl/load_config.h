#pragma once
// The configuration file a walshiftctl command reads, loaded the way walshiftd loads it, with its
// connection defaults applied to every connection the command opens.

#include <cstdio>
#include <optional>
#include <string>

#include "daemon/config/config.h"
#include "daemon/pg/pg_util.h"

namespace walshift::ctl {

// nullopt, the reason printed to stderr, when the file is not a valid configuration (the
// command exits 2).
inline std::optional<config::Settings> LoadCommandSettings(const std::string& path) {
  auto settings = config::LoadSettingsFile(path);
  if (!settings.ok()) {
    std::fprintf(stderr, "walshiftctl: invalid configuration: %s\n", std::string(settings.status().message()).c_str());
    return std::nullopt;
  }
  (void)pg::SetConnectionDefaults(settings->connection_defaults);  // valid: the loader built it
  return *std::move(settings);
}

}  // namespace walshift::ctl
