#pragma once
// The one explicit list of mapping modules. A module is a factory from its YAML config (parsed
// into its own config message) to an immutable, shared MappingModule.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/config/config.h"
#include "daemon/core/interfaces.h"

namespace walshift::transforms {

// Appends one line per problem (each naming its key path) and returns null on failure.
// `all` is the whole configuration, for modules that coordinate with sibling mappings.
using ModuleFactory = std::unique_ptr<MappingModule> (*)(const config::Settings& all,
                                                          const config::MappingSettings& mapping,
                                                          std::vector<std::string>* problems);

struct ModuleEntry {
  const char* name;
  ModuleFactory create;
  const char* summary;
};

// Every module walshift knows, in one list (see registry.cc).
const std::vector<ModuleEntry>& Modules();

// Builds every mapping's module. kInvalidArgument listing all problems (unknown module names
// included) in the config's problem format.
absl::StatusOr<std::vector<std::shared_ptr<const MappingModule>>> BuildModules(
    const config::Settings& settings, const std::string& file_name);

}  // namespace walshift::transforms
