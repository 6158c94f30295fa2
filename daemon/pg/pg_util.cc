#include "daemon/pg/pg_util.h"

#include <atomic>
#include <cstdlib>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

namespace walshift::pg {

absl::StatusCode CodeForSqlState(absl::string_view s) {
  if (s.size() != 5) return absl::StatusCode::kInternal;
  absl::string_view cls = s.substr(0, 2);
  // 55006: a replication slot still held by a walsender that is exiting.
  if (cls == "08" || s == "57P01" || s == "57P02" || s == "57P03" || cls == "53" || s == "55006")
    return absl::StatusCode::kUnavailable;
  // WS002: walshift.fence, this walshiftd was replaced as the pipeline's leader (ha).
  if (s == "40001" || s == "40P01" || s == "WS002") return absl::StatusCode::kAborted;
  // 21: cardinality, e.g. a run whose rows meet in one target row under the target's equality.
  if (cls == "42" || cls == "0A" || cls == "21" || cls == "23" || cls == "22" || cls == "2B" || cls == "2F" ||
      cls == "44" || cls == "P0" || cls == "55" || cls == "25" || cls == "28" || cls == "3F")
    return absl::StatusCode::kFailedPrecondition;
  return absl::StatusCode::kInternal;
}

namespace {
std::atomic<bool> g_show_values{false};
}  // namespace

void SetShowValues(bool show) { g_show_values.store(show); }
bool ShowValues() { return g_show_values.load(); }

std::string RedactValues(absl::string_view message, absl::string_view sqlstate) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(message, '\n')) {
    std::string out(line);
    // Every column of the row, for check and not-null violations.
    if (size_t at = out.find("Failing row contains ("); at != std::string::npos) {
      out = absl::StrCat(out.substr(0, at), "Failing row contains (redacted).");
    } else if (absl::StartsWith(sqlstate, "22") || absl::StartsWith(out, "CONTEXT:  COPY ")) {
      // Data exceptions quote the value they could not take (invalid input syntax for type
      // integer: "abc"), and COPY's CONTEXT line the value or the whole input line: from the
      // first quote to the last, so a value holding quotes goes whole.
      size_t open = out.find('"'), close = out.rfind('"');
      if (open != std::string::npos && close > open) out.replace(open, close - open + 1, "(redacted)");
    }
    lines.push_back(std::move(out));
  }
  return absl::StrJoin(lines, "\n");
}

std::string RedactOtherKeys(absl::string_view message, absl::string_view row_key) {
  std::string out(message);
  for (size_t at = out.find("Key ("); at != std::string::npos; at = out.find("Key (", at + 1)) {
    size_t eq = out.find(")=(", at);
    if (eq == std::string::npos) break;
    if (absl::string_view(out).substr(at + 5, eq - at - 5) == row_key) continue;
    size_t end = out.find(") already exists", eq);
    if (end == std::string::npos) end = out.find(") conflicts with", eq);
    if (end == std::string::npos) continue;
    out.replace(eq + 3, end - eq - 3, "redacted");
  }
  return out;
}

absl::Status ResultStatus(PGconn* conn, const PGresult* result, absl::string_view context) {
  if (result == nullptr) {
    std::string msg = conn ? PQerrorMessage(conn) : "no connection";
    return absl::UnavailableError(absl::StrCat(context, ": ", absl::StripTrailingAsciiWhitespace(msg)));
  }
  switch (PQresultStatus(result)) {
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_COPY_OUT:
    case PGRES_COPY_IN:
    case PGRES_COPY_BOTH:
    case PGRES_PIPELINE_SYNC:
    case PGRES_SINGLE_TUPLE:
      return absl::OkStatus();
    default:
      break;
  }
  const char* state = PQresultErrorField(result, PG_DIAG_SQLSTATE);
  std::string msg = PQresultErrorMessage(result);
  if (msg.empty() && conn) msg = PQerrorMessage(conn);
  absl::StatusCode code = absl::StatusCode::kUnavailable;
  if (state != nullptr) {
    code = CodeForSqlState(state);
  } else if (conn != nullptr && PQstatus(conn) == CONNECTION_OK) {
    code = absl::StatusCode::kInternal;
  }
  if (state != nullptr && !ShowValues()) msg = RedactValues(msg, state);
  std::string text = absl::StrCat(context, ": ", absl::StripTrailingAsciiWhitespace(msg));
  if (state != nullptr) absl::StrAppend(&text, " (SQLSTATE ", state, ")");
  return absl::Status(code, text);
}

namespace {
std::string& PinnedZone() {
  static std::string* zone = new std::string();
  return *zone;
}

// Parsed key=value pairs of SetConnectionDefaults().
using ConninfoPairs = std::vector<std::pair<std::string, std::string>>;
ConninfoPairs& ConnectionDefaultPairs() {
  static ConninfoPairs* pairs = new ConninfoPairs();
  return *pairs;
}

absl::StatusOr<ConninfoPairs> ParseConninfo(const std::string& conninfo) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
  if (opts == nullptr) {
    std::string msg = err ? err : "unparsable";
    if (err) PQfreemem(err);
    return absl::InvalidArgumentError(std::string(absl::StripTrailingAsciiWhitespace(msg)));
  }
  ConninfoPairs out;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    if (o->val != nullptr) out.emplace_back(o->keyword, o->val);
  }
  PQconninfoFree(opts);
  return out;
}
}  // namespace

absl::Status SetConnectionDefaults(const std::string& conninfo) {
  absl::StatusOr<ConninfoPairs> pairs = ParseConninfo(conninfo);
  if (!pairs.ok()) return absl::InvalidArgumentError(absl::StrCat("connection defaults: ", pairs.status().message()));
  ConnectionDefaultPairs() = *std::move(pairs);
  return absl::OkStatus();
}

void SetSessionTimeZone(const std::string& zone) {
  unsetenv("PGTZ");
  unsetenv("PGDATESTYLE");
  PinnedZone() = zone;
}

const std::string& SessionTimeZone() { return PinnedZone(); }

absl::StatusOr<ConnPtr> Connect(const std::string& dsn, absl::string_view what, const std::string& extra) {
  // The connection defaults come first: the DSN, expanded as the dbname (key=value or
  // postgresql:// URI), overrides them. The session settings and `extra` (key=value pairs)
  // follow as separate parameters, which win over the DSN.
  std::vector<std::string> keys, vals;
  for (const auto& [key, value] : ConnectionDefaultPairs()) {
    keys.push_back(key);
    vals.push_back(value);
  }
  std::string options =
      "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c bytea_output=hex "
      "-c standard_conforming_strings=on -c lc_monetary=C -c xmloption=content";
  if (!PinnedZone().empty()) {
    // In the options string, spaces and backslashes are escaped with a backslash.
    std::string zone;
    for (char c : PinnedZone()) {
      if (c == ' ' || c == '\\') zone.push_back('\\');
      zone.push_back(c);
    }
    absl::StrAppend(&options, " -c TimeZone=", zone);
  }
  for (const char* key : {"dbname", "client_encoding", "options"}) keys.emplace_back(key);
  for (const std::string& value : {dsn, std::string("UTF8"), options}) vals.push_back(value);
  if (!extra.empty()) {
    absl::StatusOr<ConninfoPairs> pairs = ParseConninfo(extra);
    if (!pairs.ok())
      return absl::InvalidArgumentError(absl::StrCat(what, ": bad connection options: ", pairs.status().message()));
    for (const auto& [key, value] : *pairs) {
      keys.push_back(key);
      vals.push_back(value);
    }
  }
  std::vector<const char*> k, v;
  for (size_t i = 0; i < keys.size(); ++i) {
    k.push_back(keys[i].c_str());
    v.push_back(vals[i].c_str());
  }
  k.push_back(nullptr);
  v.push_back(nullptr);
  ConnPtr conn(PQconnectdbParams(k.data(), v.data(), /*expand_dbname=*/1));
  if (conn == nullptr) return absl::UnavailableError(absl::StrCat(what, ": out of memory"));
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(conn.get());
    return absl::UnavailableError(
        absl::StrCat("cannot connect to ", what, " (", RedactDsn(dsn), "): ", absl::StripTrailingAsciiWhitespace(msg)));
  }
  PQsetNoticeProcessor(
      conn.get(),
      [](void*, const char* message) {
        spdlog::debug("server notice: {}", absl::StripTrailingAsciiWhitespace(message).data());
      },
      nullptr);
  return conn;
}

absl::StatusOr<ResultPtr> Exec(PGconn* conn, const std::string& sql, absl::string_view context) {
  ResultPtr r(PQexec(conn, sql.c_str()));
  absl::Status st = ResultStatus(conn, r.get(), context);
  if (!st.ok()) return st;
  return r;
}

absl::StatusOr<ResultPtr> ExecParams(PGconn* conn, const std::string& sql, std::initializer_list<const char*> params,
                                     absl::string_view context) {
  return ExecParams(conn, sql, std::vector<const char*>(params), context);
}

absl::StatusOr<ResultPtr> ExecParams(PGconn* conn, const std::string& sql, const std::vector<const char*>& values,
                                     absl::string_view context) {
  ResultPtr r(
      PQexecParams(conn, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(), nullptr, nullptr, 0));
  absl::Status st = ResultStatus(conn, r.get(), context);
  if (!st.ok()) return st;
  return r;
}

std::string TextArrayLiteral(const std::vector<const char*>& values) {
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out.push_back(',');
    if (values[i] == nullptr) {
      out.append("NULL");
      continue;
    }
    out.push_back('"');
    for (const char* c = values[i]; *c; ++c) {
      if (*c == '"' || *c == '\\') out.push_back('\\');
      out.push_back(*c);
    }
    out.push_back('"');
  }
  out.push_back('}');
  return out;
}

std::string TextArrayLiteral(const std::vector<std::string>& values) {
  std::vector<const char*> ptrs;
  ptrs.reserve(values.size());
  for (const std::string& v : values) ptrs.push_back(v.c_str());
  return TextArrayLiteral(ptrs);
}

std::string ConninfoValue(absl::string_view value) {
  if (!value.empty() && value.find_first_of(" '\\") == absl::string_view::npos) return std::string(value);
  std::string out = "'";
  for (char c : value) {
    if (c == '\\' || c == '\'') out += '\\';
    out += c;
  }
  out += "'";
  return out;
}

std::string QuoteIdent(absl::string_view ident) {
  return absl::StrCat("\"", absl::StrReplaceAll(ident, {{"\"", "\"\""}}), "\"");
}

std::string QuoteLiteral(absl::string_view value) {
  bool backslash = value.find('\\') != absl::string_view::npos;
  std::string out = backslash ? "E'" : "'";
  for (char c : value) {
    if (c == '\'')
      out += "''";
    else if (c == '\\')
      out += "\\\\";
    else
      out += c;
  }
  out += "'";
  return out;
}

std::pair<std::string, std::string> SplitQualified(absl::string_view qualified) {
  size_t dot = qualified.find('.');
  if (dot == absl::string_view::npos) return {"public", std::string(qualified)};
  return {std::string(qualified.substr(0, dot)), std::string(qualified.substr(dot + 1))};
}

std::string QuoteQualified(absl::string_view qualified) {
  auto [schema, table] = SplitQualified(qualified);
  return absl::StrCat(QuoteIdent(schema), ".", QuoteIdent(table));
}

std::string RedactDsn(const std::string& dsn) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(dsn.c_str(), &err);
  if (opts == nullptr) {
    if (err) PQfreemem(err);
    return "<unparsable connection string>";
  }
  std::string out;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    if (o->val == nullptr || o->val[0] == '\0') continue;
    absl::string_view key = o->keyword;
    if (!out.empty()) out += ' ';
    if (key == "password") {
      absl::StrAppend(&out, key, "=********");
    } else {
      absl::StrAppend(&out, key, "=", o->val);
    }
  }
  PQconninfoFree(opts);
  return out;
}

std::optional<int64_t> OptionalInt(const PGresult* r, int row, int col) {
  if (PQgetisnull(r, row, col)) return std::nullopt;
  int64_t v = 0;
  if (!absl::SimpleAtoi(PQgetvalue(r, row, col), &v)) return std::nullopt;
  return v;
}

}  // namespace walshift::pg
