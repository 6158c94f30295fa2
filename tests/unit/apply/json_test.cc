// The document store's JSON DOM (exact numbers, strict parsing, jsonb order) and DatumToJson
// against the to_jsonb() output of PostgreSQL 15 (checked on a real server, quoted below).

#include "daemon/apply/documents/json.h"

#include <string>

#include "daemon/apply/documents/json_value.h"
#include "gtest/gtest.h"

namespace walshift::documents {
namespace {

Json P(absl::string_view text) {
  auto j = Json::Parse(text);
  EXPECT_TRUE(j.ok()) << text << ": " << j.status();
  return j.ok() ? *j : Json();
}

std::string RoundTrip(absl::string_view text) { return P(text).Serialize(); }

TEST(JsonTest, ParsesAndSerializesCompactWithSortedKeys) {
  EXPECT_EQ(RoundTrip(R"( { "b" : [1, 2.50, -0, 1e400, "x", true, false, null], "a": {"z": null, "y": {}} } )"),
            R"({"a":{"y":{},"z":null},"b":[1,2.50,-0,1e400,"x",true,false,null]})");
  EXPECT_EQ(RoundTrip("[]"), "[]");
  EXPECT_EQ(RoundTrip("\"\""), "\"\"");
  EXPECT_EQ(RoundTrip(" 0 "), "0");
  // Bytewise key order, duplicate keys keep the last value.
  EXPECT_EQ(RoundTrip(R"({"b":1,"B":2,"é":3,"a":4,"a":5})"), R"({"B":2,"a":5,"b":1,"é":3})");
}

TEST(JsonTest, KeepsBigNumbersExactly) {
  const std::string big = "12345678901234567890.1234567890";
  EXPECT_EQ(RoundTrip(big), big);
  EXPECT_EQ(P(big), P("12345678901234567890.123456789"));
  EXPECT_LT(P(big), P("12345678901234567890.1234567891"));
  EXPECT_GT(P("123456789012345678901234567890"), P("123456789012345678901234567889"));
  EXPECT_EQ(RoundTrip("-1.000000000000000000000000000001E+5"), "-1.000000000000000000000000000001E+5");
}

TEST(JsonTest, Escapes) {
  Json s = P(R"("\u00e9\ud83d\ude00\n\t\"\\\/\u0001 é")");
  EXPECT_EQ(s.string_value(), "\xC3\xA9\xF0\x9F\x98\x80\n\t\"\\/\x01 \xC3\xA9");
  EXPECT_EQ(s.Serialize(), "\"\xC3\xA9\xF0\x9F\x98\x80\\u000a\\u0009\\\"\\\\/\\u0001 \xC3\xA9\"");
  EXPECT_EQ(Json::String(std::string("a\0b", 3)).Serialize(), "\"a\\u0000b\"");
  EXPECT_EQ(P(Json::String("\x7f\x1f").Serialize()).string_value(), "\x7f\x1f");
}

TEST(JsonTest, RejectsInvalidInputSayingWhere) {
  for (const char* bad : {"",
                          " ",
                          "{",
                          "[1,]",
                          "[1 2]",
                          "01",
                          "1.",
                          ".5",
                          "-",
                          "+1",
                          "1e",
                          "\"\x01\"",
                          "\"\\x\"",
                          "{\"a\" 1}",
                          "{\"a\":1,}",
                          "{a:1}",
                          "[1] x",
                          "\"\\udc00\"",
                          "\"\\ud800\"",
                          "\"\\ud800\\u0041\"",
                          "\"\xff\"",
                          "\"\xC0\xAF\"",
                          "\"\xED\xA0\x80\"",
                          "tru",
                          "nul",
                          "NaN",
                          "Infinity",
                          "'a'",
                          "\"abc",
                          "[\"a\"",
                          "\"\\u12g4\""}) {
    auto j = Json::Parse(bad);
    EXPECT_FALSE(j.ok()) << "accepted: " << bad;
    if (!j.ok()) {
      EXPECT_EQ(j.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(j.status().message().find("at byte"), std::string::npos) << j.status();
    }
  }
  EXPECT_EQ(Json::Parse("[1,]").status().message(), "invalid JSON: expected a value at byte 3 (found ']')");
  std::string deep(2000, '[');
  EXPECT_FALSE(Json::Parse(deep).ok());
}

TEST(JsonTest, OrdersLikeJsonb) {
  // Null < String < Number < Boolean < Array < Object, an empty top-level array first
  // (checked with jsonb's < on PostgreSQL 15).
  std::vector<std::string> ascending = {"[]",    "null",       "\"\"",      "\"B\"",     "\"a\"",
                                        "\"é\"", "-10",        "-1.5",      "0",         "1e-5",
                                        "1",     "100",        "false",     "true",      "[null]",
                                        "[1]",   "[[]]",       "[1,2]",     "[1,3]",     "[0,0,0]",
                                        "{}",    "{\"aa\":0}", "{\"b\":1}", "{\"b\":2}", "{\"a\":1,\"b\":1}"};
  for (size_t i = 0; i < ascending.size(); ++i) {
    for (size_t j = 0; j < ascending.size(); ++j) {
      int c = Json::Compare(P(ascending[i]), P(ascending[j]));
      EXPECT_EQ(c < 0, i < j) << ascending[i] << " vs " << ascending[j];
      EXPECT_EQ(c == 0, i == j) << ascending[i] << " vs " << ascending[j];
    }
  }
  EXPECT_EQ(P("1.50"), P("1.5"));
  EXPECT_EQ(P("1e2"), P("100"));
  EXPECT_EQ(P("-0"), P("0.000"));
  EXPECT_EQ(P("[1.0,{\"a\":10E-1}]"), P("[1,{\"a\":1}]"));
  EXPECT_NE(P("[1]"), P("[1,1]"));
  EXPECT_EQ(P("1.50").CanonicalText(), P("15e-1").CanonicalText());
  EXPECT_NE(P("1.5").CanonicalText(), P("15").CanonicalText());
  EXPECT_EQ(CompareNumbers("0.001", "1e-3"), 0);
  EXPECT_LT(CompareNumbers("-2", "-1"), 0);
  EXPECT_GT(CompareNumbers("1e10", "9999999999"), 0);
}

TEST(JsonTest, PgNumericText) {
  EXPECT_EQ(*PgNumericText("1.50"), "1.50");
  EXPECT_EQ(*PgNumericText("1.5e-07"), "0.00000015");
  EXPECT_EQ(*PgNumericText("1e+20"), "100000000000000000000");
  EXPECT_EQ(*PgNumericText("1.0e1"), "10");
  EXPECT_EQ(*PgNumericText("1.20e5"), "120000");
  EXPECT_EQ(*PgNumericText("-0"), "0");
  EXPECT_EQ(*PgNumericText("-0.0"), "0.0");
  EXPECT_EQ(*PgNumericText("007"), "7");
  EXPECT_EQ(*PgNumericText("-12.345e1"), "-123.45");
  // Expanded as numeric holds it; beyond numeric's range kept as written (json text only).
  EXPECT_EQ(PgNumericText("1e1001")->size(), 1002u);
  EXPECT_EQ(*PgNumericText("1e200000"), "1e200000");
  EXPECT_FALSE(PgNumericText("abc").ok());
  EXPECT_FALSE(PgNumericText("1.2.3").ok());
}

std::string J(absl::string_view text, absl::string_view type) {
  auto j = TextToJson(text, type);
  if (!j.ok()) return "ERROR: " + std::string(j.status().message());
  return j->Serialize();
}

// Expected values: select to_jsonb('<text>'::<type>) on PostgreSQL 15 (session TimeZone UTC
// where it matters), compact.
TEST(DatumToJsonTest, Numbers) {
  EXPECT_EQ(J("42", "integer"), "42");
  EXPECT_EQ(J("-32768", "smallint"), "-32768");
  EXPECT_EQ(J("9223372036854775807", "bigint"), "9223372036854775807");
  EXPECT_EQ(J("12345678901234567890.1234567890", "numeric(40,10)"), "12345678901234567890.1234567890");
  EXPECT_EQ(J("1.50", "numeric"), "1.50");
  EXPECT_EQ(J("-0", "numeric"), "0");
  EXPECT_EQ(J("1e+20", "double precision"), "100000000000000000000");
  EXPECT_EQ(J("1.5e-07", "double precision"), "0.00000015");
  EXPECT_EQ(J("1e-05", "real"), "0.00001");
  EXPECT_EQ(J("NaN", "numeric"), "\"NaN\"");
  EXPECT_EQ(J("Infinity", "double precision"), "\"Infinity\"");
  EXPECT_EQ(J("-Infinity", "real"), "\"-Infinity\"");
  EXPECT_EQ(J("Infinity", "numeric"), "\"Infinity\"");
  EXPECT_EQ(J("1", "oid"), "\"1\"");  // to_jsonb(1::oid) is a string
  EXPECT_NE(J("abc", "integer").find("ERROR: value \"abc\" of type integer"), std::string::npos);
}

TEST(DatumToJsonTest, BooleansAndJson) {
  EXPECT_EQ(J("t", "boolean"), "true");
  EXPECT_EQ(J("f", "boolean"), "false");
  EXPECT_NE(J("yes", "boolean").find("ERROR"), std::string::npos);
  EXPECT_EQ(J(R"({"b":1e2,"a":[1.0]})", "json"), R"({"a":[1.0],"b":100})");
  EXPECT_EQ(J(R"({"x": 1.0e1})", "json"), R"({"x":10})");
  EXPECT_EQ(J(R"({"a": 1, "a": 2, "bb": 1, "c": 3})", "jsonb"), R"({"a":2,"bb":1,"c":3})");
  EXPECT_EQ(J("\"s\"", "jsonb"), "\"s\"");
  EXPECT_NE(J("{", "jsonb").find("ERROR"), std::string::npos);
}

TEST(DatumToJsonTest, Timestamps) {
  EXPECT_EQ(J("2026-12-02 00:46:44.792", "timestamp(3) without time zone"), "\"2026-12-02T00:46:44.792\"");
  EXPECT_EQ(J("2026-12-02 00:46:44.792004+00", "timestamp with time zone"), "\"2026-12-02T00:46:44.792004+00:00\"");
  EXPECT_EQ(J("2020-01-01 10:00:00+05:30", "timestamp with time zone"), "\"2020-01-01T10:00:00+05:30\"");
  EXPECT_EQ(J("2020-01-01 10:00:00+05:30:15", "timestamp with time zone"), "\"2020-01-01T10:00:00+05:30:15\"");
  EXPECT_EQ(J("2020-01-01 10:00:00-03", "timestamp(0) with time zone"), "\"2020-01-01T10:00:00-03:00\"");
  EXPECT_EQ(J("0044-03-15 12:00:00+00 BC", "timestamp with time zone"), "\"0044-03-15T12:00:00+00:00 BC\"");
  EXPECT_EQ(J("0044-03-15 12:00:00 BC", "timestamp without time zone"), "\"0044-03-15T12:00:00 BC\"");
  EXPECT_EQ(J("10000-01-01 00:00:00", "timestamp without time zone"), "\"10000-01-01T00:00:00\"");
  EXPECT_EQ(J("infinity", "timestamp with time zone"), "\"infinity\"");
  EXPECT_EQ(J("-infinity", "timestamp without time zone"), "\"-infinity\"");
  EXPECT_EQ(J("2020-01-01 BC", "date"), "\"2020-01-01 BC\"");
  EXPECT_EQ(J("infinity", "date"), "\"infinity\"");
  EXPECT_EQ(J("12:30:00", "time without time zone"), "\"12:30:00\"");
  EXPECT_EQ(J("12:30:00+02", "time with time zone"), "\"12:30:00+02\"");
  EXPECT_NE(J("Wed Dec 02 00:46:44 2026", "timestamp without time zone").find("DateStyle"), std::string::npos);
}

TEST(DatumToJsonTest, Arrays) {
  EXPECT_EQ(J("{1,2,NULL}", "integer[]"), "[1,2,null]");
  EXPECT_EQ(J("{{1,2},{3,NULL}}", "integer[]"), "[[1,2],[3,null]]");
  EXPECT_EQ(J(R"({"a b","c\"d",NULL})", "text[]"), R"(["a b","c\"d",null])");
  EXPECT_EQ(J(R"({"NULL",null})", "text[]"), R"(["NULL",null])");
  EXPECT_EQ(J("{ a , b }", "text[]"), R"(["a","b"])");
  EXPECT_EQ(J("[1:2]={1,2}", "integer[]"), "[1,2]");
  EXPECT_EQ(J("{}", "integer[]"), "[]");
  EXPECT_EQ(J("{t,f}", "boolean[]"), "[true,false]");
  EXPECT_EQ(J("{1.50,NaN}", "numeric(10,2)[]"), R"([1.50,"NaN"])");
  EXPECT_EQ(J(R"({"2020-01-01 00:00:00+00"})", "timestamp with time zone[]"), R"(["2020-01-01T00:00:00+00:00"])");
  EXPECT_EQ(J(R"({"{\"b\":1e2,\"a\":[1.0]}"})", "json[]"), R"([{"a":[1.0],"b":100}])");
  EXPECT_EQ(J(R"x({"(3,4),(1,2)";"(7,8),(5,6)"})x", "box[]"), R"x(["(3,4),(1,2)","(7,8),(5,6)"])x");
  EXPECT_EQ(J(R"x({"(1,a)"})x", "text[]"), R"x(["(1,a)"])x");
  EXPECT_EQ(J(R"({a\,b,"x\\y"})", "character varying(5)[]"), R"(["a,b","x\\y"])");
  EXPECT_NE(J("{1,2", "integer[]").find("ERROR"), std::string::npos);
  EXPECT_NE(J("{1,x}", "integer[]").find("ERROR"), std::string::npos);
}

TEST(DatumToJsonTest, EverythingElseIsAString) {
  EXPECT_EQ(J("hello", ""), "\"hello\"");
  EXPECT_EQ(J("x\ny", "text"), "\"x\\u000ay\"");
  EXPECT_EQ(J("ab", "character varying(20)"), "\"ab\"");
  EXPECT_EQ(J("\\x0102", "bytea"), "\"\\\\x0102\"");
  EXPECT_EQ(J("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "uuid"), "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"");
  EXPECT_EQ(J("1 day", "interval"), "\"1 day\"");
  EXPECT_EQ(J("happy", "public.mood"), "\"happy\"");
}

TEST(DatumToJsonTest, NullAndUnchangedToast) {
  Datum null;
  EXPECT_EQ(DatumToJson(null, "integer")->Serialize(), "null");
  Datum toast;
  toast.kind = DatumKind::kUnchangedToast;
  auto j = DatumToJson(toast, "text");
  EXPECT_EQ(j.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(j.status().message().find("unchanged TOAST"), std::string::npos);
  std::string v = "7";
  Datum text{DatumKind::kText, 1, v.c_str()};
  EXPECT_EQ(DatumToJson(text, "bigint")->Serialize(), "7");
}

}  // namespace
}  // namespace walshift::documents
