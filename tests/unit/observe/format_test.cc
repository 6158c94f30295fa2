#include "daemon/observe/format.h"

#include <sstream>

#include "daemon/observe/log_format.h"
#include "daemon/pg/pg_util.h"
#include "gmock/gmock.h"
#include "spdlog/sinks/ostream_sink.h"

namespace walshift {
namespace {

TEST(OneLineTest, JoinsAServerErrorsLinesWithSemicolons) {
  EXPECT_EQ(OneLine("ERROR:  duplicate key value violates unique constraint \"items_pkey\"\n"
                    "DETAIL:  Key (id)=(7) already exists.\n"),
            "ERROR:  duplicate key value violates unique constraint \"items_pkey\"; DETAIL:  Key (id)=(7) already "
            "exists.");
  EXPECT_EQ(OneLine("a  \r\n\n   b\tc\n"), "a; b\tc");
  EXPECT_EQ(OneLine("one line"), "one line");
  EXPECT_EQ(OneLine("\n\n"), "");
}

TEST(OneLineTest, TheLogFormatKeepsEveryRecordOnOneLine) {
  std::ostringstream out;
  auto logger = std::make_shared<spdlog::logger>("format_test", std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(logger);
  UseOneLineLogFormat();
  spdlog::warn("target main: ERROR:  value too long\nCONTEXT:  COPY items, line 1\n");
  spdlog::set_default_logger(previous);
  std::string text = out.str();
  EXPECT_THAT(text, ::testing::EndsWith(" warning target main: ERROR:  value too long; CONTEXT:  COPY items, line 1\n"));
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1);
}

// log.values: redact keeps a rejected row's values out of server messages, and its key in.
TEST(RedactValuesTest, HidesQuotedValuesOfDataExceptionsAndTheFailingRowButNotKeys) {
  EXPECT_EQ(pg::RedactValues("ERROR:  invalid input syntax for type integer: \"not a number\"\n"
                             "CONTEXT:  COPY items, line 1, column code: \"not a number\"",
                             "22P02"),
            "ERROR:  invalid input syntax for type integer: (redacted)\n"
            "CONTEXT:  COPY items, line 1, column code: (redacted)");
  EXPECT_EQ(pg::RedactValues("ERROR:  new row for relation \"accounts\" violates check constraint \"c\"\n"
                             "DETAIL:  Failing row contains (43, neg, -1).",
                             "23514"),
            "ERROR:  new row for relation \"accounts\" violates check constraint \"c\"\n"
            "DETAIL:  Failing row contains (redacted).");
  EXPECT_EQ(pg::RedactValues("ERROR:  null value in column \"code\" of relation \"t\" violates not-null constraint\n"
                             "CONTEXT:  COPY t, line 3: \"3\t\"quoted\"\tx\"",
                             "23502"),
            "ERROR:  null value in column \"code\" of relation \"t\" violates not-null constraint\n"
            "CONTEXT:  COPY t, line 3: (redacted)");
  const char* duplicate =
      "ERROR:  duplicate key value violates unique constraint \"items_pkey\"\nDETAIL:  Key (id)=(7) already exists.";
  EXPECT_EQ(pg::RedactValues(duplicate, "23505"), duplicate);
  EXPECT_EQ(pg::RedactOtherKeys(duplicate, "id"), duplicate);
  EXPECT_EQ(pg::RedactOtherKeys("ERROR:  duplicate key value violates unique constraint \"u\"; DETAIL:  Key (email, "
                                "region)=(a@b.c, eu) already exists.",
                                "id"),
            "ERROR:  duplicate key value violates unique constraint \"u\"; DETAIL:  Key (email, region)=(redacted) "
            "already exists.");
  EXPECT_EQ(pg::RedactValues("ERROR:  value too long for type character varying(3)", "22001"),
            "ERROR:  value too long for type character varying(3)");
}

}  // namespace
}  // namespace walshift
