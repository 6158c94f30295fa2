// DecodeCopyTextRow against the text COPY TO STDOUT writes: tabs between values, \N for NULL,
// backslash escapes (and the octal/hex forms COPY FROM accepts), a trailing newline.

#include "daemon/copy/copy_text.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace walshift {
namespace {

std::vector<std::string> Decode(std::string line, size_t columns, absl::Status* status = nullptr) {
  line.push_back('\0');  // the writable byte after the row
  std::vector<Datum> out;
  absl::Status st = DecodeCopyTextRow(line.data(), line.size() - 1, columns, &out);
  if (status != nullptr) *status = st;
  std::vector<std::string> values;
  if (!st.ok()) return values;
  for (const Datum& d : out) {
    if (d.is_null()) {
      values.push_back("<NULL>");
    } else {
      EXPECT_EQ(d.data[d.length], '\0') << "value not NUL-terminated";
      values.emplace_back(d.data, d.length);
    }
  }
  return values;
}

TEST(CopyTextTest, PlainValuesAndNulls) {
  EXPECT_EQ(Decode("1\thello\t\\N\n", 3), (std::vector<std::string>{"1", "hello", "<NULL>"}));
  EXPECT_EQ(Decode("\\N\t\\N\n", 2), (std::vector<std::string>{"<NULL>", "<NULL>"}));
  EXPECT_EQ(Decode("only", 1), (std::vector<std::string>{"only"}));
}

TEST(CopyTextTest, EmptyStringsAreNotNull) {
  EXPECT_EQ(Decode("\t\n", 2), (std::vector<std::string>{"", ""}));
  EXPECT_EQ(Decode("a\t\tb\n", 3), (std::vector<std::string>{"a", "", "b"}));
}

TEST(CopyTextTest, Escapes) {
  EXPECT_EQ(Decode("tab\\there\tnew\\nline\tback\\\\slash\n", 3),
            (std::vector<std::string>{"tab\there", "new\nline", "back\\slash"}));
  EXPECT_EQ(Decode("\\b\\f\\r\\v\n", 1), (std::vector<std::string>{"\b\f\r\v"}));
  // The text "\N" is written as \\N and is not NULL.
  EXPECT_EQ(Decode("\\\\N\t\\Nx\n", 2), (std::vector<std::string>{"\\N", "Nx"}));
  EXPECT_EQ(Decode("\\101\\x41\\7\n", 1), (std::vector<std::string>{"AA\a"}));
}

TEST(CopyTextTest, Utf8PassesThrough) {
  EXPECT_EQ(Decode("zoë\t日本語\n", 2), (std::vector<std::string>{"zoë", "日本語"}));
}

TEST(CopyTextTest, WrongColumnCountOrDanglingEscapeIsDataLoss) {
  absl::Status st;
  Decode("1\t2\n", 3, &st);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(st.message().find("2 values, expected 3"), std::string::npos) << st;
  Decode("abc\\", 1, &st);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace walshift
