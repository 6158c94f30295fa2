#pragma once
// COPY ... TO STDOUT text format, as the source server writes it: one row per line, columns
// separated by tabs, \N for NULL, backslash escapes for backslash, tab, newline and the other
// control characters.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "daemon/core/change.h"

namespace walshift {

// Decodes one row in place (values only shrink). `line` holds `len` bytes, with or without
// the trailing newline, and a writable byte at line[len]. Each value is NUL-terminated in
// `line` and `out` (resized to the row's column count) points into it. kDataLoss naming the
// problem when the row does not have `columns` values or has a malformed escape.
absl::Status DecodeCopyTextRow(char* line, size_t len, size_t columns, std::vector<Datum>* out);

}  // namespace walshift
