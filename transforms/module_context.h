#pragma once
// What a mapping module's factory is given besides its own typed config: the mapping's place
// and common keys, and every mapping of the configuration with its module config already
// parsed (typed siblings, e.g. the other merge mappings into the same table). Modules depend on
// this, daemon/core and their own config proto only: the registry parses the YAML.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/core/interfaces.h"
#include "google/protobuf/message.h"
#include "walshift/v1/config.pb.h"

namespace walshift::transforms {

struct MappingInfo {
  std::string path;    // "mappings[3]", for messages
  v1::Mapping common;  // source normalized to schema.table; target and module defaulted
  // The module's config message; null when its module is unknown or its keys did not parse.
  std::shared_ptr<const google::protobuf::Message> config;
};

struct MappingContext {
  const MappingInfo& self;
  const std::vector<MappingInfo>& all;  // every mapping, in config order (self among them)

  // `m`'s config as T when its module's config message is T.
  template <typename T>
  static const T* ConfigAs(const MappingInfo& m) {
    return dynamic_cast<const T*>(m.config.get());
  }
};

// "path[i]".
inline std::string IndexPath(const std::string& path, size_t index) { return absl::StrCat(path, "[", index, "]"); }

// The status a factory returns for its problems: kInvalidArgument, one problem per line, each
// naming its key path.
inline absl::Status ConfigProblems(const std::vector<std::string>& problems) {
  return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
}

}  // namespace walshift::transforms
