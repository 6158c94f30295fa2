// Names of the replication origins walshift's apply sessions set (see state::SetUpReplicationOrigin).
#pragma once

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace walshift {

// A pipeline's apply session for one target uses its origin (state::ReplicationOriginName); an
// origin serves one session at a time, so each initial-copy session writing that target uses its
// own: the origin with "/copy-<session>".
inline std::string CopyOriginName(absl::string_view origin, int session) {
  return absl::StrCat(origin, "/copy-", session);
}

// `name` without a copy worker's suffix: a pipeline that ignores an origin (source.ignore_origins)
// passes over what that pipeline's initial copy wrote as well.
inline absl::string_view OriginFamily(absl::string_view name) {
  size_t at = name.rfind("/copy-");
  if (at == absl::string_view::npos || at + 6 == name.size()) return name;
  for (char c : name.substr(at + 6))
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return name;
  return name.substr(0, at);
}

}  // namespace walshift
