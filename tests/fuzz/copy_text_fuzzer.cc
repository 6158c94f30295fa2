// The COPY text row decoder on arbitrary lines: the first input byte is the expected column
// count (0-63), the rest is one line. A malformed row must come back as a status; a decoded row
// has exactly that many values, each inside the line and NUL-terminated.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "daemon/copy/copy_text.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  size_t columns = data[0] % 64;
  std::vector<char> line(data + 1, data + size);
  line.push_back('\0');
  std::vector<walshift::Datum> row;
  absl::Status st = walshift::DecodeCopyTextRow(line.data(), line.size() - 1, columns, &row);
  if (!st.ok()) return 0;
  if (row.size() != columns) __builtin_trap();
  const char* begin = line.data();
  const char* end = line.data() + line.size();
  for (const walshift::Datum& d : row) {
    if (d.kind != walshift::DatumKind::kText) continue;
    if (d.data < begin || d.data + d.length >= end || d.data[d.length] != '\0') __builtin_trap();
  }
  return 0;
}
