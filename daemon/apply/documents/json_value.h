#pragma once
// PostgreSQL text-format values as JSON, the way to_jsonb() writes them.

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/apply/documents/json.h"
#include "daemon/core/change.h"

namespace walshift::documents {

// Converts one value in PostgreSQL's text output format, of type `type` (a format_type() name
// such as "integer", "numeric(12,2)", "timestamp(3) with time zone", "text[]"; empty: text),
// into the JSON to_jsonb() makes of it:
//   NULL → null; smallint, integer, bigint, numeric, real, double precision → a number in
//   numeric's text form (NaN, Infinity, -Infinity → strings); boolean → true/false; json,
//   jsonb → the parsed value (numbers in numeric's form, duplicate keys: the last);
//   timestamp → "YYYY-MM-DDTHH:MM:SS[.ffffff]"; timestamp with time zone → the same with the
//   offset as "+HH:MM[:SS]" (infinity stays a string); arrays ("[]" types, any number of
//   dimensions) → nested JSON arrays of their elements converted by the element type;
//   everything else (text, date, time, uuid, bytea, enums, oid, ...) → the text as a string.
// The source's DateStyle must be ISO (walshift's sessions use it). kDataLoss for an unchanged
// TOAST datum (its value was not sent); kInvalidArgument for a value that does not parse as
// its type, saying why. Messages do not repeat the value's context: callers add it.
absl::StatusOr<Json> DatumToJson(const Datum& d, absl::string_view type);

// The same for a non-NULL text value.
absl::StatusOr<Json> TextToJson(absl::string_view text, absl::string_view type);

}  // namespace walshift::documents
