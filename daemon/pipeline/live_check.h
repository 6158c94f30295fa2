#pragma once
// `walshiftd --check`: every mapping against the live schemas, all problems at once.

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "daemon/config/config.h"
#include "daemon/core/interfaces.h"

namespace walshift {

// Connects to the source and every target and checks each mapping: the source table exists and
// has a primary key or usable REPLICA IDENTITY; the mapping binds (source columns exist, key
// rules, TOAST rules); every statement it can produce prepares in its target (target table and
// columns exist, sql: expressions compile, the key is covered by a unique constraint); no two
// mappings write the same non-key target column. Returns OK, kInvalidArgument listing every
// problem (each naming its mapping), or kUnavailable when a database cannot be reached.
// `notes` (optional) receives what a user should know although it is not a problem: each
// conversion between a value without a zone and an instant, and the zone it uses.
absl::Status CheckLiveSchemas(const config::Settings& settings,
                              const std::vector<std::shared_ptr<const MappingModule>>& modules,
                              const std::string& file_name, std::vector<std::string>* notes = nullptr);

}  // namespace walshift
