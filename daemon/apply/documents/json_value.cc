#include "daemon/apply/documents/json_value.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "daemon/core/status_macros.h"

namespace walshift::documents {
namespace {

enum class Family : uint8_t { kText, kNumber, kBool, kJson, kTimestamp, kTimestampTz };

// The type's name without modifiers ("numeric(12,2)" → "numeric", "timestamp(3) with time
// zone" → "timestamp with time zone"), lower case, single spaces.
std::string BaseName(absl::string_view type) {
  std::string out;
  int depth = 0;
  for (char c : type) {
    if (c == '(') {
      ++depth;
    } else if (c == ')') {
      if (depth > 0) --depth;
    } else if (depth == 0) {
      if (c == ' ' && (out.empty() || out.back() == ' ')) continue;
      out.push_back(absl::ascii_tolower(c));
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

Family FamilyOf(absl::string_view type) {
  std::string base = BaseName(type);
  if (base == "smallint" || base == "integer" || base == "bigint" || base == "numeric" || base == "real" ||
      base == "double precision" || base == "int2" || base == "int4" || base == "int8" || base == "float4" ||
      base == "float8" || base == "decimal") {
    return Family::kNumber;
  }
  if (base == "boolean" || base == "bool") return Family::kBool;
  if (base == "json" || base == "jsonb") return Family::kJson;
  if (base == "timestamp without time zone" || base == "timestamp") return Family::kTimestamp;
  if (base == "timestamp with time zone" || base == "timestamptz") return Family::kTimestampTz;
  return Family::kText;
}

bool AllDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!absl::ascii_isdigit(c)) return false;
  return true;
}

absl::Status BadValue(absl::string_view text, absl::string_view type, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("value \"", absl::CHexEscape(text.substr(0, 64)),
                                                 text.size() > 64 ? "..." : "", "\" of type ",
                                                 type.empty() ? "text" : type, ": ", why));
}

// "2024-01-02 03:04:05.123456[+05:30[:15]][ BC]" → ISO 8601 as to_jsonb writes it.
absl::StatusOr<Json> TimestampToJson(absl::string_view text, absl::string_view type, bool with_zone) {
  if (text == "infinity" || text == "-infinity") return Json::String(std::string(text));
  size_t space = text.find(' ');
  if (space == absl::string_view::npos || space + 9 > text.size() || !absl::ascii_isdigit(text[space + 1])) {
    return BadValue(text, type, "not an ISO timestamp (the source's DateStyle must be ISO)");
  }
  std::string out(text);
  out[space] = 'T';
  if (!with_zone) return Json::String(std::move(out));
  // The offset starts at the first sign after the time of day and runs to " BC" or the end.
  size_t sign = out.find_first_of("+-", space + 1);
  if (sign == std::string::npos) return BadValue(text, type, "no UTC offset");
  size_t end = out.find(' ', sign);
  if (end == std::string::npos) end = out.size();
  absl::string_view offset = absl::string_view(out).substr(sign + 1, end - sign - 1);
  if (offset.size() == 2 && AllDigits(offset)) {
    out.insert(end, ":00");
  } else if (!(offset.size() == 5 || offset.size() == 8) || !AllDigits(offset.substr(0, 2)) || offset[2] != ':' ||
             !AllDigits(offset.substr(3, 2)) ||
             (offset.size() == 8 && (offset[5] != ':' || !AllDigits(offset.substr(6, 2))))) {
    return BadValue(text, type, "malformed UTC offset");
  }
  return Json::String(std::move(out));
}

absl::StatusOr<Json> ScalarToJson(absl::string_view text, absl::string_view type) {
  switch (FamilyOf(type)) {
    case Family::kText:
      return Json::String(std::string(text));
    case Family::kNumber: {
      if (text == "NaN" || text == "Infinity" || text == "-Infinity") return Json::String(std::string(text));
      auto n = PgNumericText(text);
      if (!n.ok()) return BadValue(text, type, n.status().message());
      return Json::Number(*std::move(n));
    }
    case Family::kBool:
      if (text == "t" || text == "true") return Json::Bool(true);
      if (text == "f" || text == "false") return Json::Bool(false);
      return BadValue(text, type, "not a boolean (t or f)");
    case Family::kJson: {
      auto parsed = Json::Parse(text);
      if (!parsed.ok()) return BadValue(text, type, parsed.status().message());
      absl::Status st = CanonicalizeNumbers(&*parsed);
      if (!st.ok()) return BadValue(text, type, st.message());
      return parsed;
    }
    case Family::kTimestamp:
      return TimestampToJson(text, type, false);
    case Family::kTimestampTz:
      return TimestampToJson(text, type, true);
  }
  return Json::String(std::string(text));
}

// Reads PostgreSQL's array output format (array_out): optional dimension decoration
// "[1:2]=", nested braces, elements quoted ("..." with backslash escapes) or bare (trimmed;
// NULL is the null element).
class ArrayReader {
 public:
  ArrayReader(absl::string_view text, absl::string_view type, absl::string_view element_type)
      : s_(text), type_(type), element_type_(element_type), delim_(BaseName(element_type) == "box" ? ';' : ',') {}

  absl::StatusOr<Json> Read() {
    if (!s_.empty() && s_[0] == '[') {
      size_t eq = s_.find('=');
      if (eq == absl::string_view::npos) return Bad("dimension decoration without '='");
      pos_ = eq + 1;
    }
    SkipSpace();
    ASSIGN_OR_RETURN(Json v, ReadLevel(0));
    SkipSpace();
    if (pos_ != s_.size()) return Bad("text after the closing '}'");
    return v;
  }

 private:
  absl::Status Bad(absl::string_view why) const {
    return BadValue(s_, type_, absl::StrCat(why, " (at byte ", pos_, ")"));
  }
  void SkipSpace() {
    while (pos_ < s_.size() && absl::ascii_isspace(s_[pos_])) ++pos_;
  }

  absl::StatusOr<Json> ReadLevel(int depth) {
    if (depth > 6) return Bad("more than 6 dimensions");
    if (pos_ >= s_.size() || s_[pos_] != '{') return Bad("expected '{'");
    ++pos_;
    Json::Array elements;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return Json::MakeArray();
    }
    while (true) {
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == '{') {
        ASSIGN_OR_RETURN(Json sub, ReadLevel(depth + 1));
        elements.push_back(std::move(sub));
      } else {
        ASSIGN_OR_RETURN(Json e, ReadElement());
        elements.push_back(std::move(e));
      }
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == delim_) {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return Json::MakeArray(std::move(elements));
      }
      return Bad(absl::StrCat("expected '", std::string(1, delim_), "' or '}'"));
    }
  }

  absl::StatusOr<Json> ReadElement() {
    std::string value;
    if (pos_ < s_.size() && s_[pos_] == '"') {
      ++pos_;
      while (true) {
        if (pos_ >= s_.size()) return Bad("unterminated quoted element");
        char c = s_[pos_++];
        if (c == '"') break;
        if (c == '\\') {
          if (pos_ >= s_.size()) return Bad("backslash at the end");
          c = s_[pos_++];
        }
        value.push_back(c);
      }
      return Convert(value);
    }
    bool escaped = false;
    size_t last_kept = 0;  // length of `value` through its last escaped or non-space byte
    while (pos_ < s_.size() && s_[pos_] != delim_ && s_[pos_] != '}') {
      char c = s_[pos_++];
      if (c == '{' || c == '"') return Bad("unexpected character in a bare element");
      if (c == '\\') {
        if (pos_ >= s_.size()) return Bad("backslash at the end");
        value.push_back(s_[pos_++]);
        escaped = true;
        last_kept = value.size();
        continue;
      }
      value.push_back(c);
      if (!absl::ascii_isspace(c)) last_kept = value.size();
    }
    value.resize(last_kept);
    if (value.empty() && !escaped) return Bad("empty element");
    if (!escaped && absl::EqualsIgnoreCase(value, "NULL")) return Json();
    return Convert(value);
  }

  absl::StatusOr<Json> Convert(absl::string_view element) {
    auto v = ScalarToJson(element, element_type_);
    if (!v.ok()) return BadValue(s_, type_, absl::StrCat("element: ", v.status().message()));
    return v;
  }

  absl::string_view s_, type_, element_type_;
  char delim_;
  size_t pos_ = 0;
};

}  // namespace

absl::StatusOr<Json> TextToJson(absl::string_view text, absl::string_view type) {
  absl::string_view t = absl::StripAsciiWhitespace(type);
  if (absl::EndsWith(t, "[]")) {
    absl::string_view element = t;
    while (absl::ConsumeSuffix(&element, "[]")) {
    }
    return ArrayReader(text, type, absl::StripAsciiWhitespace(element)).Read();
  }
  return ScalarToJson(text, t);
}

absl::StatusOr<Json> DatumToJson(const Datum& d, absl::string_view type) {
  switch (d.kind) {
    case DatumKind::kNull:
      return Json();
    case DatumKind::kUnchangedToast:
      return absl::DataLossError("an unchanged TOAST value (the source did not send it) cannot be written as JSON");
    case DatumKind::kText:
      return TextToJson(d.view(), type);
  }
  return Json();
}

}  // namespace walshift::documents
