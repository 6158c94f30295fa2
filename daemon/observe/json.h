#pragma once
// A JSON string literal of `s` (quotes added, control characters escaped).

#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace walshift {

inline std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace walshift
