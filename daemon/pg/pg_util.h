#pragma once
// Small libpq helpers shared by the source and apply sides: result ownership, the one mapping
// of SQLSTATE to absl::StatusCode (the retry policy), connection and quoting.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "libpq-fe.h"

namespace walshift::pg {

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

struct ConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using ConnPtr = std::unique_ptr<PGconn, ConnDeleter>;

// The retry policy, in one place:
//   class 08 (connection exception), 57P01..57P03 (shutdown), a dead connection -> kUnavailable
//   40001 serialization failure, 40P01 deadlock                          -> kAborted
//   class 42 (undefined table/column, syntax), 0A, 23, 22, 2B...          -> kFailedPrecondition
//   anything else                                                         -> kInternal
absl::StatusCode CodeForSqlState(absl::string_view sqlstate);

// Status of a finished result: OK for COMMAND_OK/TUPLES_OK/COPY_*/PIPELINE_SYNC; otherwise the
// code from CodeForSqlState() and "<context>: <server message> (SQLSTATE xxxxx)". A null result
// or a bad connection is kUnavailable.
absl::Status ResultStatus(PGconn* conn, const PGresult* result, absl::string_view context);

// Settings pinned for every session walshift opens, so that no value depends on walshift's
// environment or a server default: DateStyle ISO, IntervalStyle postgres, extra_float_digits 3,
// bytea_output hex, standard_conforming_strings on, lc_monetary C, xmloption content, and the
// time zone set here (empty: the server's default, used only to find that default). Call once
// at start-up, before any other thread connects: it also removes PGTZ and PGDATESTYLE from the
// environment, which libpq would otherwise send after (and so over) these settings.
void SetSessionTimeZone(const std::string& zone);
const std::string& SessionTimeZone();

// Row values in the messages of server errors (log.values). Off (the default, `redact`): a
// data exception's (SQLSTATE class 22) quoted values and a constraint violation's failing row
// ("Failing row contains (...)") are replaced with "(redacted)" by ResultStatus; the key a
// unique violation names stays (it identifies the row). Call once at start-up.
void SetShowValues(bool show);
bool ShowValues();
// `message` of a server error of `sqlstate` with its row values replaced as above.
std::string RedactValues(absl::string_view message, absl::string_view sqlstate);
// The values of "Key (columns)=(values)" in a unique or exclusion violation's message replaced
// with "(redacted)" unless `columns` are exactly `row_key` ("id" or "a, b"): another unique
// index (an email, say) is not the row's key, and its values may be personal data.
std::string RedactOtherKeys(absl::string_view message, absl::string_view row_key);

// libpq parameters every later Connect() uses unless its DSN sets them itself (the DSN and
// Connect's `extra` win): config::Settings::connection_defaults, i.e. connect_timeout,
// keepalives, keepalives_idle, keepalives_interval, keepalives_count and tcp_user_timeout, so
// that every connection notices a peer that went silent. Call once at start-up, before any
// other thread connects. kInvalidArgument when `conninfo` does not parse.
absl::Status SetConnectionDefaults(const std::string& conninfo);

// SQL over pg_attribute `a` naming a column's type without its modifier, as a cast target that
// never cuts a value: format_type(atttypid, NULL), except that char(n) and bit(n) become bpchar
// and bit varying (without a modifier they would mean char(1) and bit(1)).
inline constexpr const char* kUnlimitedTypeSql =
    "CASE a.atttypid WHEN 'bpchar'::regtype THEN 'bpchar' WHEN 'bit'::regtype THEN 'bit varying' "
    "ELSE format_type(a.atttypid, NULL) END";

// Connects (blocking) with `dsn` (key=value or a postgresql:// URI) plus `extra`, a key=value
// connection string whose settings win over the DSN's (e.g. "replication=database").
// Sets client_encoding UTF8 and the session settings above so text values round-trip.
// kUnavailable on failure, message without the password.
absl::StatusOr<ConnPtr> Connect(const std::string& dsn, absl::string_view what, const std::string& extra = "");

// The integer in a result cell; std::nullopt for NULL or text that is not one.
std::optional<int64_t> OptionalInt(const PGresult* r, int row, int col);

// Runs one simple-protocol command and returns its result (kind checked by ResultStatus).
absl::StatusOr<ResultPtr> Exec(PGconn* conn, const std::string& sql, absl::string_view context);
// Runs one parameterized command with text parameters.
absl::StatusOr<ResultPtr> ExecParams(PGconn* conn, const std::string& sql, std::initializer_list<const char*> params,
                                     absl::string_view context);
// The same with parameters decided at run time (nullptr: NULL).
absl::StatusOr<ResultPtr> ExecParams(PGconn* conn, const std::string& sql, const std::vector<const char*>& params,
                                     absl::string_view context);

// "schema"."table" from "schema.table" (or "table" -> "public"."table"), quoted as identifiers.
std::string QuoteQualified(absl::string_view qualified);
// A value for a key=value connection string, single-quoted (\ and ' escaped) when needed.
std::string ConninfoValue(absl::string_view value);
// One identifier, quoted with double quotes (embedded quotes doubled).
std::string QuoteIdent(absl::string_view ident);
// A string literal in single quotes, for the few places a protocol command takes no parameters.
// A text[] literal of `values`: every element double-quoted, with " and \ escaped.
std::string TextArrayLiteral(const std::vector<std::string>& values);
// The same with NULL elements for null pointers.
std::string TextArrayLiteral(const std::vector<const char*>& values);

std::string QuoteLiteral(absl::string_view value);
// Splits "schema.table" (default schema public).
std::pair<std::string, std::string> SplitQualified(absl::string_view qualified);

// The connection string with password (and passfile) values replaced by "********", for logs.
std::string RedactDsn(const std::string& dsn);

}  // namespace walshift::pg
