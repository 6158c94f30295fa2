#include "daemon/copy/copy_text.h"

#include "absl/strings/str_cat.h"

namespace walshift {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

absl::Status DecodeCopyTextRow(char* line, size_t len, size_t columns, std::vector<Datum>* out) {
  if (len > 0 && line[len - 1] == '\n') --len;
  out->clear();
  size_t in = 0;
  for (;;) {
    char* start = line + in;
    char* w = start;
    // "\N" alone is NULL; "\\N" or a field that merely contains \N is text.
    if (in + 1 < len && line[in] == '\\' && line[in + 1] == 'N' && (in + 2 == len || line[in + 2] == '\t')) {
      out->push_back(Datum{DatumKind::kNull, 0, nullptr});
      in += 2;
    } else {
      while (in < len && line[in] != '\t') {
        char c = line[in++];
        if (c != '\\') {
          *w++ = c;
          continue;
        }
        if (in >= len) return absl::DataLossError("COPY row ends inside an escape");
        char e = line[in++];
        switch (e) {
          case 'b':
            *w++ = '\b';
            break;
          case 'f':
            *w++ = '\f';
            break;
          case 'n':
            *w++ = '\n';
            break;
          case 'r':
            *w++ = '\r';
            break;
          case 't':
            *w++ = '\t';
            break;
          case 'v':
            *w++ = '\v';
            break;
          case 'x': {
            int v = 0, digits = 0;
            while (digits < 2 && in < len && HexValue(line[in]) >= 0) v = v * 16 + HexValue(line[in++]), ++digits;
            if (digits == 0) {
              *w++ = 'x';
            } else {
              *w++ = static_cast<char>(v);
            }
            break;
          }
          default:
            if (e >= '0' && e <= '7') {
              int v = e - '0', digits = 1;
              while (digits < 3 && in < len && line[in] >= '0' && line[in] <= '7')
                v = v * 8 + (line[in++] - '0'), ++digits;
              *w++ = static_cast<char>(v);
            } else {
              *w++ = e;  // \\ and any other escaped character stand for themselves
            }
        }
      }
      out->push_back(Datum{DatumKind::kText, static_cast<uint32_t>(w - start), start});
    }
    // The separator (or the line's end) becomes the value's terminator once it has been read.
    bool more = in < len;
    char* terminator = out->back().is_null() ? nullptr : start + out->back().length;
    if (terminator != nullptr) *terminator = '\0';
    if (!more) break;
    ++in;  // the tab
  }
  if (out->size() != columns) {
    return absl::DataLossError(absl::StrCat("COPY row has ", out->size(), " values, expected ", columns));
  }
  return absl::OkStatus();
}

}  // namespace walshift
