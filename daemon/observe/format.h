#pragma once
// Small text formats shared by walshiftd and walshiftctl.

#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace walshift {

// A JSON string literal of `s` (quotes added, control characters escaped).
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

// `s` on one line: a line break and the indentation after it become "; ", trailing white space
// goes. A server error arrives as several lines (ERROR, DETAIL, HINT, CONTEXT); one event or log
// record stays one line, so that grep and line-based log collectors keep it whole.
inline std::string OneLine(absl::string_view s) {
  std::vector<absl::string_view> lines = absl::StrSplit(s, absl::ByAnyChar("\r\n"), absl::SkipWhitespace());
  for (absl::string_view& line : lines) line = absl::StripAsciiWhitespace(line);
  return absl::StrJoin(lines, "; ");
}

// Bytes in binary units: "512 B", "1.5 MiB".
inline std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f %s", b, units[u]) : absl::StrFormat("%.1f %s", b, units[u]);
}

}  // namespace walshift
