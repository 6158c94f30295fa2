#pragma once
// The one explicit list of mapping modules. A module is a typed factory: the registry parses a
// mapping's module keys (YAML) into the module's own config message, then calls
// Create(const Config&, const MappingContext&) for an immutable, shared MappingModule.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/config/config.h"
#include "daemon/core/interfaces.h"
#include "transforms/module_context.h"

namespace walshift::transforms {

struct ModuleEntry {
  const char* name;
  // A new, empty config message of the module.
  std::function<std::unique_ptr<google::protobuf::Message>()> new_config;
  // The factory: kInvalidArgument listing the config's problems, one per line.
  std::function<absl::StatusOr<std::unique_ptr<MappingModule>>(const google::protobuf::Message&, const MappingContext&)>
      create;
  const char* summary;
};

// A registry entry for a module whose factory takes its config message `Config`.
template <typename Config>
ModuleEntry Module(const char* name,
                   absl::StatusOr<std::unique_ptr<MappingModule>> (*create)(const Config&, const MappingContext&),
                   const char* summary) {
  return ModuleEntry{name, [] { return std::make_unique<Config>(); },
                     [create](const google::protobuf::Message& m, const MappingContext& c) {
                       return create(static_cast<const Config&>(m), c);
                     },
                     summary};
}

// Every module walshift knows, in one list (see registry.cc).
const std::vector<ModuleEntry>& Modules();

// Builds every mapping's module. kInvalidArgument listing all problems (unknown module names
// included) in the config's problem format.
absl::StatusOr<std::vector<std::shared_ptr<const MappingModule>>> BuildModules(const config::Settings& settings,
                                                                               const std::string& file_name);

}  // namespace walshift::transforms
