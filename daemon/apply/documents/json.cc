#include "daemon/apply/documents/json.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "daemon/core/status_macros.h"

namespace walshift::documents {
namespace {

constexpr int kMaxDepth = 1000;

// A number as sign, significant digits (no leading or trailing zeros) and the decimal
// exponent of the point: value = 0.<digits> × 10^exponent. Zero has no digits.
struct Decimal {
  bool negative = false;
  std::string digits;
  int64_t exponent = 0;
};

// Splits a number text into its parts; false when it is not one. Accepts JSON numbers and
// the looser forms PostgreSQL prints or reads for numbers (leading '+', "5.", ".5").
bool SplitNumber(absl::string_view s, bool* negative, absl::string_view* int_part, absl::string_view* frac_part,
                 int64_t* exponent) {
  size_t i = 0;
  *negative = false;
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) *negative = s[i++] == '-';
  size_t start = i;
  while (i < s.size() && absl::ascii_isdigit(s[i])) ++i;
  *int_part = s.substr(start, i - start);
  *frac_part = {};
  if (i < s.size() && s[i] == '.') {
    size_t f = ++i;
    while (i < s.size() && absl::ascii_isdigit(s[i])) ++i;
    *frac_part = s.substr(f, i - f);
  }
  if (int_part->empty() && frac_part->empty()) return false;
  *exponent = 0;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    bool neg_exp = false;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) neg_exp = s[i++] == '-';
    size_t e = i;
    int64_t v = 0;
    while (i < s.size() && absl::ascii_isdigit(s[i])) {
      if (v < (int64_t{1} << 50)) v = v * 10 + (s[i] - '0');  // saturates far beyond any use
      ++i;
    }
    if (i == e) return false;
    *exponent = neg_exp ? -v : v;
  }
  return i == s.size();
}

Decimal Normalize(absl::string_view text) {
  Decimal d;
  absl::string_view int_part, frac_part;
  int64_t exp = 0;
  if (!SplitNumber(text, &d.negative, &int_part, &frac_part, &exp)) return d;
  std::string all = absl::StrCat(int_part, frac_part);
  size_t first = all.find_first_not_of('0');
  if (first == std::string::npos) {
    d.negative = false;
    return d;
  }
  size_t last = all.find_last_not_of('0');
  d.digits = all.substr(first, last - first + 1);
  d.exponent = static_cast<int64_t>(int_part.size()) - static_cast<int64_t>(first) + exp;
  return d;
}

int Sign(int v) { return v < 0 ? -1 : v > 0 ? 1 : 0; }

int CompareMagnitude(const Decimal& a, const Decimal& b) {
  if (a.digits.empty() || b.digits.empty())
    return Sign(static_cast<int>(a.digits.size()) - static_cast<int>(b.digits.size()));
  if (a.exponent != b.exponent) return a.exponent < b.exponent ? -1 : 1;
  return Sign(a.digits.compare(b.digits));
}

class Parser {
 public:
  explicit Parser(absl::string_view text) : s_(text) {}

  absl::StatusOr<Json> ParseDocument() {
    SkipSpace();
    ASSIGN_OR_RETURN(Json v, ParseValue(0));
    SkipSpace();
    if (pos_ != s_.size()) return Error("end of input");
    return v;
  }

 private:
  absl::Status Error(absl::string_view expected) const {
    if (pos_ >= s_.size())
      return absl::InvalidArgumentError(
          absl::StrCat("invalid JSON: expected ", expected, " at byte ", pos_, " (end of input)"));
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON: expected ", expected, " at byte ", pos_, " (found '",
                                                   absl::CHexEscape(s_.substr(pos_, 1)), "')"));
  }

  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }

  bool Literal(absl::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  absl::StatusOr<Json> ParseValue(int depth) {
    if (depth > kMaxDepth) return Error(absl::StrCat("at most ", kMaxDepth, " levels of nesting"));
    if (pos_ >= s_.size()) return Error("a value");
    char c = s_[pos_];
    switch (c) {
      case '{':
        return ParseObject(depth);
      case '[':
        return ParseArray(depth);
      case '"': {
        ASSIGN_OR_RETURN(std::string str, ParseString());
        return Json::String(std::move(str));
      }
      case 't':
        if (Literal("true")) return Json::Bool(true);
        return Error("a value");
      case 'f':
        if (Literal("false")) return Json::Bool(false);
        return Error("a value");
      case 'n':
        if (Literal("null")) return Json();
        return Error("a value");
      default:
        if (c == '-' || absl::ascii_isdigit(c)) return ParseNumber();
        return Error("a value");
    }
  }

  absl::StatusOr<Json> ParseNumber() {
    size_t start = pos_;
    if (s_[pos_] == '-') ++pos_;
    if (pos_ >= s_.size() || !absl::ascii_isdigit(s_[pos_])) return Error("a digit");
    if (s_[pos_] == '0') {
      ++pos_;
    } else {
      while (pos_ < s_.size() && absl::ascii_isdigit(s_[pos_])) ++pos_;
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      if (pos_ >= s_.size() || !absl::ascii_isdigit(s_[pos_])) return Error("a digit after '.'");
      while (pos_ < s_.size() && absl::ascii_isdigit(s_[pos_])) ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (pos_ >= s_.size() || !absl::ascii_isdigit(s_[pos_])) return Error("a digit in the exponent");
      while (pos_ < s_.size() && absl::ascii_isdigit(s_[pos_])) ++pos_;
    }
    return Json::Number(std::string(s_.substr(start, pos_ - start)));
  }

  absl::StatusOr<uint32_t> Hex4() {
    if (pos_ + 4 > s_.size()) return Error("4 hex digits");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_];
      int d = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (d < 0) return Error("a hex digit");
      v = v * 16 + d;
      ++pos_;
    }
    return v;
  }

  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  // Length of the valid UTF-8 sequence at pos_, or 0.
  size_t Utf8Length() const {
    const auto* p = reinterpret_cast<const unsigned char*>(s_.data()) + pos_;
    size_t left = s_.size() - pos_;
    unsigned char c = p[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 4;
      cp = c & 0x07;
    } else {
      return 0;
    }
    if (left < n) return 0;
    for (size_t i = 1; i < n; ++i) {
      if ((p[i] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    return n;
  }

  absl::StatusOr<std::string> ParseString() {
    ++pos_;  // '"'
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) return Error("'\"' closing the string");
      unsigned char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) return Error("an escaped control character");
      if (c == '\\') {
        ++pos_;
        if (pos_ >= s_.size()) return Error("an escape");
        char e = s_[pos_++];
        switch (e) {
          case '"':
            out.push_back('"');
            break;
          case '\\':
            out.push_back('\\');
            break;
          case '/':
            out.push_back('/');
            break;
          case 'b':
            out.push_back('\b');
            break;
          case 'f':
            out.push_back('\f');
            break;
          case 'n':
            out.push_back('\n');
            break;
          case 'r':
            out.push_back('\r');
            break;
          case 't':
            out.push_back('\t');
            break;
          case 'u': {
            ASSIGN_OR_RETURN(uint32_t cp, Hex4());
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
              pos_ -= 6;
              return Error("a high surrogate before a low surrogate");
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (s_.substr(pos_, 2) != "\\u") return Error("a low surrogate escape after a high surrogate");
              pos_ += 2;
              ASSIGN_OR_RETURN(uint32_t lo, Hex4());
              if (lo < 0xDC00 || lo > 0xDFFF) {
                pos_ -= 6;
                return Error("a low surrogate after a high surrogate");
              }
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            AppendUtf8(cp, &out);
            break;
          }
          default:
            --pos_;
            return Error("one of the escapes \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u");
        }
        continue;
      }
      size_t n = Utf8Length();
      if (n == 0) return Error("valid UTF-8");
      out.append(s_.data() + pos_, n);
      pos_ += n;
    }
  }

  absl::StatusOr<Json> ParseArray(int depth) {
    ++pos_;
    Json::Array elements;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return Json::MakeArray(std::move(elements));
    }
    while (true) {
      SkipSpace();
      ASSIGN_OR_RETURN(Json v, ParseValue(depth + 1));
      elements.push_back(std::move(v));
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return Json::MakeArray(std::move(elements));
      }
      return Error("',' or ']'");
    }
  }

  absl::StatusOr<Json> ParseObject(int depth) {
    ++pos_;
    Json::Object fields;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return Json::MakeObject(std::move(fields));
    }
    while (true) {
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != '"') return Error("a string key");
      ASSIGN_OR_RETURN(std::string key, ParseString());
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != ':') return Error("':'");
      ++pos_;
      SkipSpace();
      ASSIGN_OR_RETURN(Json v, ParseValue(depth + 1));
      fields[std::move(key)] = std::move(v);
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return Json::MakeObject(std::move(fields));
      }
      return Error("',' or '}'");
    }
  }

  absl::string_view s_;
  size_t pos_ = 0;
};

void AppendString(absl::string_view s, std::string* out) {
  static const char kHex[] = "0123456789abcdef";
  out->push_back('"');
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(ch);
    } else if (c < 0x20) {
      out->append("\\u00");
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 0xF]);
    } else {
      out->push_back(ch);
    }
  }
  out->push_back('"');
}

// jsonb's storage order of object keys: shorter first, then bytewise.
bool StorageOrder(const std::string* a, const std::string* b) {
  if (a->size() != b->size()) return a->size() < b->size();
  return *a < *b;
}

}  // namespace

Json Json::Bool(bool b) {
  Json j;
  j.type_ = Type::kBool;
  j.bool_ = b;
  return j;
}

Json Json::Number(std::string text) {
  Json j;
  j.type_ = Type::kNumber;
  j.text_ = std::move(text);
  return j;
}

Json Json::Number(int64_t n) { return Number(absl::StrCat(n)); }

Json Json::String(std::string s) {
  Json j;
  j.type_ = Type::kString;
  j.text_ = std::move(s);
  return j;
}

Json Json::MakeArray(Array elements) {
  Json j;
  j.type_ = Type::kArray;
  j.array_ = std::move(elements);
  return j;
}

Json Json::MakeObject(Object fields) {
  Json j;
  j.type_ = Type::kObject;
  j.object_ = std::move(fields);
  return j;
}

absl::StatusOr<Json> Json::Parse(absl::string_view text) { return Parser(text).ParseDocument(); }

bool Json::IsNumber(absl::string_view text) {
  if (text.empty() || !(text[0] == '-' || absl::ascii_isdigit(text[0]))) return false;
  auto parsed = Parse(text);
  return parsed.ok() && parsed->type() == Type::kNumber && parsed->number_text().size() == text.size();
}

const Json* Json::Find(absl::string_view key) const {
  if (type_ != Type::kObject) return nullptr;
  auto it = object_.find(std::string(key));
  return it == object_.end() ? nullptr : &it->second;
}

std::string Json::Serialize() const {
  std::string out;
  AppendTo(&out);
  return out;
}

void Json::AppendTo(std::string* out) const { Append(out, false); }

std::string Json::CanonicalText() const {
  std::string out;
  Append(&out, true);
  return out;
}

void Json::Append(std::string* out, bool canonical) const {
  switch (type_) {
    case Type::kNull:
      out->append("null");
      return;
    case Type::kBool:
      out->append(bool_ ? "true" : "false");
      return;
    case Type::kNumber: {
      if (!canonical) {
        out->append(text_);
        return;
      }
      Decimal d = Normalize(text_);
      if (d.digits.empty()) {
        out->push_back('0');
      } else {
        absl::StrAppend(out, d.negative ? "-" : "", "0.", d.digits, "e", d.exponent);
      }
      return;
    }
    case Type::kString:
      AppendString(text_, out);
      return;
    case Type::kArray: {
      out->push_back('[');
      for (size_t i = 0; i < array_.size(); ++i) {
        if (i > 0) out->push_back(',');
        array_[i].Append(out, canonical);
      }
      out->push_back(']');
      return;
    }
    case Type::kObject: {
      out->push_back('{');
      bool first = true;
      for (const auto& [k, v] : object_) {
        if (!first) out->push_back(',');
        first = false;
        AppendString(k, out);
        out->push_back(':');
        v.Append(out, canonical);
      }
      out->push_back('}');
      return;
    }
  }
}

int Json::Compare(const Json& a, const Json& b) { return CompareValues(a, b, true); }

int Json::CompareValues(const Json& a, const Json& b, bool top) {
  if (a.type_ != b.type_) {
    // jsonb stores a top-level scalar as an array of one element: an empty array sorts first.
    auto scalar = [](const Json& j) { return j.type_ != Type::kArray && j.type_ != Type::kObject; };
    if (top && a.type_ == Type::kArray && a.array_.empty() && scalar(b)) return -1;
    if (top && b.type_ == Type::kArray && b.array_.empty() && scalar(a)) return 1;
    return a.type_ < b.type_ ? -1 : 1;
  }
  switch (a.type_) {
    case Type::kNull:
      return 0;
    case Type::kBool:
      return Sign(int{a.bool_} - int{b.bool_});
    case Type::kNumber:
      return CompareNumbers(a.text_, b.text_);
    case Type::kString:
      return Sign(a.text_.compare(b.text_));
    case Type::kArray: {
      if (a.array_.size() != b.array_.size()) return a.array_.size() < b.array_.size() ? -1 : 1;
      for (size_t i = 0; i < a.array_.size(); ++i) {
        int c = CompareValues(a.array_[i], b.array_[i], false);
        if (c != 0) return c;
      }
      return 0;
    }
    case Type::kObject: {
      if (a.object_.size() != b.object_.size()) return a.object_.size() < b.object_.size() ? -1 : 1;
      std::vector<const std::string*> ka, kb;
      for (const auto& [k, v] : a.object_) ka.push_back(&k);
      for (const auto& [k, v] : b.object_) kb.push_back(&k);
      std::sort(ka.begin(), ka.end(), StorageOrder);
      std::sort(kb.begin(), kb.end(), StorageOrder);
      for (size_t i = 0; i < ka.size(); ++i) {
        int c = Sign(ka[i]->compare(*kb[i]));
        if (c != 0) return c;
        c = CompareValues(a.object_.at(*ka[i]), b.object_.at(*kb[i]), false);
        if (c != 0) return c;
      }
      return 0;
    }
  }
  return 0;
}

int CompareNumbers(absl::string_view a, absl::string_view b) {
  Decimal da = Normalize(a), db = Normalize(b);
  if (da.negative != db.negative) return da.negative ? -1 : 1;
  int c = CompareMagnitude(da, db);
  return da.negative ? -c : c;
}

absl::StatusOr<std::string> PgNumericText(absl::string_view text) {
  bool negative;
  absl::string_view int_part, frac_part;
  int64_t exp;
  if (!SplitNumber(text, &negative, &int_part, &frac_part, &exp)) {
    return absl::InvalidArgumentError(absl::StrCat("not a number: \"", absl::CHexEscape(text), "\""));
  }
  if (exp > 131072 || exp < -16383) {
    // Beyond what PostgreSQL's numeric holds: such a value only comes from json text, and is
    // kept as written rather than expanded.
    return std::string(text);
  }
  std::string all = absl::StrCat(int_part, frac_part);
  int64_t point = static_cast<int64_t>(int_part.size()) + exp;  // position of the point in `all`
  if (point < 0) {
    all.insert(0, static_cast<size_t>(-point), '0');
    point = 0;
  } else if (point > static_cast<int64_t>(all.size())) {
    all.append(static_cast<size_t>(point) - all.size(), '0');
  }
  absl::string_view whole = absl::string_view(all).substr(0, point);
  absl::string_view frac = absl::string_view(all).substr(point);
  size_t nz = whole.find_first_not_of('0');
  whole = nz == absl::string_view::npos ? "0" : whole.substr(nz);
  bool zero = whole == "0" && frac.find_first_not_of('0') == absl::string_view::npos;
  std::string out;
  if (negative && !zero) out.push_back('-');
  absl::StrAppend(&out, whole);
  if (!frac.empty()) absl::StrAppend(&out, ".", frac);
  return out;
}

absl::Status CanonicalizeNumbers(Json* value) {
  switch (value->type()) {
    case Json::Type::kNumber: {
      ASSIGN_OR_RETURN(std::string text, PgNumericText(value->number_text()));
      *value = Json::Number(std::move(text));
      return absl::OkStatus();
    }
    case Json::Type::kArray:
      for (Json& e : value->mutable_array()) RETURN_IF_ERROR(CanonicalizeNumbers(&e));
      return absl::OkStatus();
    case Json::Type::kObject:
      for (auto& [k, v] : value->mutable_object()) RETURN_IF_ERROR(CanonicalizeNumbers(&v));
      return absl::OkStatus();
    default:
      return absl::OkStatus();
  }
}

}  // namespace walshift::documents
