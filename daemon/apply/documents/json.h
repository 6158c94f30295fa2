#pragma once
// A small JSON DOM for the document store. Numbers keep their exact decimal text (never a
// double), so a numeric(40,10) value survives a round trip; objects keep their keys sorted
// bytewise. Equality and order compare numbers numerically and exactly; the order is the one
// PostgreSQL's jsonb uses to sort values (see Json::Compare).

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace walshift::documents {

class Json {
 public:
  // In the order Compare() sorts types (PostgreSQL's jsonb: Null < String < Number < Boolean
  // < Array < Object).
  enum class Type : uint8_t { kNull, kString, kNumber, kBool, kArray, kObject };
  using Array = std::vector<Json>;
  using Object = std::map<std::string, Json>;  // std::string orders bytewise (unsigned char)

  Json() = default;  // null
  static Json Bool(bool b);
  // `text` must be a valid JSON number (IsNumber); it is kept as written.
  static Json Number(std::string text);
  static Json Number(int64_t n);
  static Json String(std::string s);
  static Json MakeArray(Array elements = {});
  static Json MakeObject(Object fields = {});

  // Parses one RFC 8259 JSON text (surrounding whitespace allowed). Strings must be valid
  // UTF-8; duplicate object keys keep the last value (as jsonb does). kInvalidArgument saying
  // what was expected and at which byte offset.
  static absl::StatusOr<Json> Parse(absl::string_view text);
  // True when `text` is exactly one JSON number.
  static bool IsNumber(absl::string_view text);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_object() const { return type_ == Type::kObject; }
  bool is_array() const { return type_ == Type::kArray; }
  // Accessors: the value must be of that type.
  bool bool_value() const { return bool_; }
  const std::string& number_text() const { return text_; }
  const std::string& string_value() const { return text_; }
  const Array& array() const { return array_; }
  Array& mutable_array() { return array_; }
  const Object& object() const { return object_; }
  Object& mutable_object() { return object_; }

  // Objects: the field named `key`, or nullptr (also when this is not an object).
  const Json* Find(absl::string_view key) const;
  // Objects: sets field `key`.
  void Set(const std::string& key, Json value) { object_[key] = std::move(value); }

  // Compact text: no whitespace, object keys in bytewise order, '"', '\\' and control
  // characters escaped (control characters as \u00XX), other UTF-8 passed through.
  std::string Serialize() const;
  void AppendTo(std::string* out) const;
  // A text that is equal for two values exactly when they are equal (==): Serialize() with
  // every number in one normalized form. For hashing and index keys, not for output.
  std::string CanonicalText() const;

  // Total order of jsonb (PostgreSQL's jsonb_cmp), with strings and keys compared bytewise
  // (the C collation). Different types order by Type; numbers numerically; arrays and objects
  // first by size, then element by element (objects pair by pair in jsonb's storage order:
  // shorter keys first, then bytewise, key before value). As in jsonb, an empty array at the
  // top level sorts below every scalar (null included). Returns <0, 0 or >0.
  static int Compare(const Json& a, const Json& b);
  // Deep equality; numbers are equal when numerically equal (1.50 == 1.5, 1e2 == 100).
  friend bool operator==(const Json& a, const Json& b) { return Compare(a, b) == 0; }
  friend bool operator!=(const Json& a, const Json& b) { return Compare(a, b) != 0; }
  friend bool operator<(const Json& a, const Json& b) { return Compare(a, b) < 0; }
  friend bool operator>(const Json& a, const Json& b) { return Compare(a, b) > 0; }

 private:
  void Append(std::string* out, bool canonical) const;
  static int CompareValues(const Json& a, const Json& b, bool top);

  Type type_ = Type::kNull;
  bool bool_ = false;
  std::string text_;  // number text or string
  Array array_;
  Object object_;
};

// Compares two valid JSON (or PostgreSQL numeric) number texts exactly. <0, 0 or >0.
int CompareNumbers(absl::string_view a, absl::string_view b);

// The text PostgreSQL's numeric type prints for number `text` (what to_jsonb and jsonb make of
// a number): no exponent, no leading zeros, the scale numeric_in derives ("1.50" stays,
// "1.5e-07" → "0.00000015", "1e+20" → "100000000000000000000", "-0" → "0"). Accepts a JSON
// number, or a float's text ("1e+20", a leading '+'). kInvalidArgument for anything else or an
// exponent beyond ±1000 (numeric's own limit).
absl::StatusOr<std::string> PgNumericText(absl::string_view text);

// Replaces every number in `value` by its PgNumericText (to_jsonb of a json value).
absl::Status CanonicalizeNumbers(Json* value);

}  // namespace walshift::documents
