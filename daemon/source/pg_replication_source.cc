#include "daemon/source/pg_replication_source.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "libpq-fe.h"
#include "spdlog/spdlog.h"

namespace walshift {
namespace {

// Sizes of the replication protocol's CopyData messages (PostgreSQL docs, "Streaming
// Replication Protocol").
constexpr size_t kXLogDataHeader = 1 + 8 + 8 + 8;            // 'w' dataStart walEnd sendTime
constexpr size_t kKeepaliveSize = 1 + 8 + 8 + 1;             // 'k' walEnd sendTime replyRequested
constexpr size_t kStatusUpdateSize = 1 + 8 + 8 + 8 + 8 + 1;  // 'r' write flush apply clock reply

uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

void PutU64(char* p, uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    p[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
}


std::string ConnectionMessage(PGconn* conn) {
  return std::string(absl::StripTrailingAsciiWhitespace(PQerrorMessage(conn)));
}

// The first column of the single row of a query, or nullopt when the query returned no row.
absl::StatusOr<std::optional<std::string>> QueryValue(PGconn* conn, const std::string& sql,
                                                      absl::string_view context) {
  ASSIGN_OR_RETURN(pg::ResultPtr result, pg::Exec(conn, sql, context));
  if (PQntuples(result.get()) == 0 || PQnfields(result.get()) == 0 ||
      PQgetisnull(result.get(), 0, 0)) {
    return std::optional<std::string>();
  }
  return std::optional<std::string>(PQgetvalue(result.get(), 0, 0));
}

struct FreeCopyBuffer {
  void operator()(char* p) const { PQfreemem(p); }
};

}  // namespace

PgReplicationSource::PgReplicationSource(PgReplicationSourceOptions options)
    : options_(std::move(options)) {}

PgReplicationSource::~PgReplicationSource() {
  if (conn_ != nullptr) PQfinish(conn_);
}

absl::StatusOr<std::unique_ptr<PgReplicationSource>> PgReplicationSource::Create(
    const PgReplicationSourceOptions& options) {
  if (options.slot.empty() || options.publication.empty()) {
    return absl::FailedPreconditionError("source: slot and publication names must be set");
  }
  if (options.publication.find('\\') != std::string::npos) {
    // START_REPLICATION's option values are plain '...' literals without backslash escapes.
    return absl::FailedPreconditionError(absl::StrCat(
        "source: publication name ", options.publication, " must not contain a backslash"));
  }
  if (options.tables.empty()) {
    return absl::FailedPreconditionError("source: no mapped source tables");
  }
  std::string extra = absl::StrCat("replication=database application_name=",
                                   pg::ConninfoValue(options.application_name));
  ASSIGN_OR_RETURN(pg::ConnPtr conn, pg::Connect(options.dsn, "source", extra));
  std::unique_ptr<PgReplicationSource> source(new PgReplicationSource(options));
  source->conn_ = conn.release();
  spdlog::info("source: connected to {} (replication=database)", pg::RedactDsn(options.dsn));
  RETURN_IF_ERROR(source->CheckWalLevel());
  RETURN_IF_ERROR(source->CheckTables());
  RETURN_IF_ERROR(source->EnsurePublication());
  RETURN_IF_ERROR(source->EnsureSlot());
  return source;
}

absl::Status PgReplicationSource::CheckWalLevel() {
  ASSIGN_OR_RETURN(std::optional<std::string> level,
                   QueryValue(conn_, "SHOW wal_level", "source: SHOW wal_level"));
  if (level.value_or("") != "logical") {
    return absl::FailedPreconditionError(absl::StrCat(
        "source: wal_level is '", level.value_or(""),
        "', logical decoding needs wal_level = logical (set it in postgresql.conf and restart "
        "the source server)"));
  }
  return absl::OkStatus();
}

absl::Status PgReplicationSource::CheckTables() {
  for (const std::string& table : options_.tables) {
    ASSIGN_OR_RETURN(std::optional<std::string> oid,
                     QueryValue(conn_,
                                absl::StrCat("SELECT to_regclass(",
                                             pg::QuoteLiteral(pg::QuoteQualified(table)), ")"),
                                "source: to_regclass"));
    if (!oid.has_value()) {
      return absl::FailedPreconditionError(
          absl::StrCat("source: mapped table ", table, " does not exist in the source database"));
    }
  }
  return absl::OkStatus();
}

absl::Status PgReplicationSource::EnsurePublication() {
  const std::string pub_literal = pg::QuoteLiteral(options_.publication);
  const std::string pub_ident = pg::QuoteIdent(options_.publication);

  // Mapped tables, deduplicated, as (schema, table).
  std::set<std::pair<std::string, std::string>> wanted;
  for (const std::string& table : options_.tables) wanted.insert(pg::SplitQualified(table));
  auto quoted_list = [](const std::set<std::pair<std::string, std::string>>& tables) {
    std::vector<std::string> quoted;
    for (const auto& [schema, table] : tables) {
      quoted.push_back(absl::StrCat(pg::QuoteIdent(schema), ".", pg::QuoteIdent(table)));
    }
    return absl::StrJoin(quoted, ", ");
  };

  ASSIGN_OR_RETURN(pg::ResultPtr pub,
                   pg::Exec(conn_,
                            absl::StrCat("SELECT pubinsert, pubupdate, pubdelete, pubtruncate "
                                         "FROM pg_catalog.pg_publication WHERE pubname = ",
                                         pub_literal),
                            "source: reading publication"));
  if (PQntuples(pub.get()) == 0) {
    RETURN_IF_ERROR(
        pg::Exec(conn_,
                 absl::StrCat("CREATE PUBLICATION ", pub_ident, " FOR TABLE ", quoted_list(wanted)),
                 "source: CREATE PUBLICATION")
            .status());
    spdlog::info("source: created publication {} for {} table(s)", options_.publication,
                 wanted.size());
    return absl::OkStatus();
  }

  // An existing publication must publish every kind of row change, or changes would be lost
  // without a trace.
  static constexpr const char* kActions[] = {"inserts", "updates", "deletes"};
  for (int i = 0; i < 3; ++i) {
    if (absl::string_view(PQgetvalue(pub.get(), 0, i)) != "t") {
      return absl::FailedPreconditionError(absl::StrCat(
          "source: publication ", options_.publication, " does not publish ", kActions[i],
          "; use ALTER PUBLICATION ... SET (publish = 'insert, "
          "update, delete, truncate') or another publication name"));
    }
  }
  if (absl::string_view(PQgetvalue(pub.get(), 0, 3)) != "t") {
    spdlog::warn(
        "source: publication {} does not publish TRUNCATE; truncates of mapped "
        "tables will not reach the targets",
        options_.publication);
  }

  ASSIGN_OR_RETURN(pg::ResultPtr members,
                   pg::Exec(conn_,
                            absl::StrCat("SELECT schemaname, tablename FROM "
                                         "pg_catalog.pg_publication_tables WHERE pubname = ",
                                         pub_literal),
                            "source: reading publication tables"));
  std::set<std::pair<std::string, std::string>> missing = wanted;
  for (int row = 0; row < PQntuples(members.get()); ++row) {
    missing.erase({PQgetvalue(members.get(), row, 0), PQgetvalue(members.get(), row, 1)});
  }
  if (missing.empty()) return absl::OkStatus();
  RETURN_IF_ERROR(
      pg::Exec(conn_,
               absl::StrCat("ALTER PUBLICATION ", pub_ident, " ADD TABLE ", quoted_list(missing)),
               "source: ALTER PUBLICATION ADD TABLE")
          .status());
  std::vector<std::string> names;
  for (const auto& [schema, table] : missing) names.push_back(absl::StrCat(schema, ".", table));
  spdlog::info("source: added {} to publication {}", absl::StrJoin(names, ", "),
               options_.publication);
  spdlog::warn(
      "source: changes to {} committed before they joined publication {} are not "
      "streamed; those tables need a snapshot copy",
      absl::StrJoin(names, ", "), options_.publication);
  return absl::OkStatus();
}

absl::Status PgReplicationSource::EnsureSlot() {
  ASSIGN_OR_RETURN(pg::ResultPtr slot,
                   pg::Exec(conn_,
                            absl::StrCat("SELECT slot_type, plugin, database = current_database() "
                                         "FROM pg_catalog.pg_replication_slots WHERE slot_name = ",
                                         pg::QuoteLiteral(options_.slot)),
                            "source: reading replication slots"));
  if (PQntuples(slot.get()) > 0) {
    const std::string type = PQgetvalue(slot.get(), 0, 0);
    const std::string plugin = PQgetvalue(slot.get(), 0, 1);
    const std::string same_db = PQgetvalue(slot.get(), 0, 2);
    if (type != "logical" || plugin != "pgoutput" || same_db != "t") {
      return absl::FailedPreconditionError(absl::StrCat("source: replication slot ", options_.slot,
                                                        " exists but is not a logical pgoutput "
                                                        "slot of this database (type ",
                                                        type, ", plugin ", plugin, ")"));
    }
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(pg::ResultPtr created,
                   pg::Exec(conn_,
                            absl::StrCat("CREATE_REPLICATION_SLOT ", pg::QuoteIdent(options_.slot),
                                         " LOGICAL pgoutput NOEXPORT_SNAPSHOT"),
                            "source: CREATE_REPLICATION_SLOT"));
  std::string consistent_point = PQntuples(created.get()) > 0 && PQnfields(created.get()) > 1
                                     ? PQgetvalue(created.get(), 0, 1)
                                     : "?";
  spdlog::info("source: created logical replication slot {} (pgoutput), consistent point {}",
               options_.slot, consistent_point);
  return absl::OkStatus();
}

absl::Status PgReplicationSource::Start(Lsn start_lsn) {
  if (streaming_) return absl::FailedPreconditionError("source: replication already started");
  std::string sql =
      absl::StrCat("START_REPLICATION SLOT ", pg::QuoteIdent(options_.slot), " LOGICAL ",
                   FormatLsn(start_lsn), " (proto_version '1', publication_names ",
                   pg::QuoteLiteral(pg::QuoteIdent(options_.publication)), ", messages 'true')");
  pg::ResultPtr result(PQexec(conn_, sql.c_str()));
  if (result != nullptr && PQresultStatus(result.get()) == PGRES_COPY_BOTH) {
    streaming_ = true;
    last_feedback_ = absl::Now();
    spdlog::info("source: streaming slot {} from {}", options_.slot, FormatLsn(start_lsn));
    return absl::OkStatus();
  }
  const char* state =
      result != nullptr ? PQresultErrorField(result.get(), PG_DIAG_SQLSTATE) : nullptr;
  absl::Status status = pg::ResultStatus(conn_, result.get(), "source: START_REPLICATION");
  if (state != nullptr && absl::string_view(state) == "55006") {
    // "replication slot is active for PID n": usually the walsender of our previous,
    // dead connection that has not noticed yet. Retryable, unlike the rest of class 55.
    return absl::UnavailableError(status.message());
  }
  if (status.ok()) {
    return absl::InternalError(absl::StrCat("source: START_REPLICATION returned ",
                                            PQresStatus(PQresultStatus(result.get())),
                                            " instead of COPY_BOTH"));
  }
  return status;
}

absl::StatusOr<int> PgReplicationSource::Poll(ChangeHandler& handler, absl::Duration wait) {
  if (!streaming_) return absl::FailedPreconditionError("source: Poll before Start");
  int dispatched = 0;  // XLogData messages handed to the decoder
  int received = 0;    // CopyData messages of any kind
  bool waited = false;
  for (;;) {
    char* raw = nullptr;
    int n = PQgetCopyData(conn_, &raw, /*async=*/1);
    if (n > 0) {
      std::unique_ptr<char, FreeCopyBuffer> buffer(raw);
      ++received;
      if (raw[0] == 'w') ++dispatched;
      RETURN_IF_ERROR(HandleCopyData(raw, static_cast<size_t>(n), handler));
      continue;
    }
    if (n == 0) {
      if (received > 0 || waited) return dispatched;
      waited = true;
      RETURN_IF_ERROR(WaitForData(wait));
      continue;
    }
    if (n == -1) {
      // The server ended the COPY: its final result says why.
      std::string why = "server ended the replication stream";
      while (PGresult* r = PQgetResult(conn_)) {
        pg::ResultPtr result(r);
        absl::Status st = pg::ResultStatus(conn_, r, "source: replication stream ended");
        if (!st.ok()) why = std::string(st.message());
      }
      streaming_ = false;
      return absl::UnavailableError(why);
    }
    streaming_ = false;
    return absl::UnavailableError(
        absl::StrCat("source: replication stream failed: ", ConnectionMessage(conn_)));
  }
}

absl::Status PgReplicationSource::WaitForData(absl::Duration wait) {
  int timeout_ms = 0;
  if (wait == absl::InfiniteDuration()) {
    timeout_ms = -1;
  } else if (wait > absl::ZeroDuration()) {
    int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(wait, absl::Milliseconds(1)));
    timeout_ms = static_cast<int>(std::min<int64_t>(ms, std::numeric_limits<int>::max()));
  }
  pollfd fd{};
  fd.fd = PQsocket(conn_);
  fd.events = POLLIN;
  if (fd.fd < 0) return absl::UnavailableError("source: connection has no socket");
  int rc = ::poll(&fd, 1, timeout_ms);
  if (rc < 0 && errno != EINTR) {
    return absl::UnavailableError(absl::StrCat("source: poll: ", std::strerror(errno)));
  }
  if (PQconsumeInput(conn_) == 0) {
    streaming_ = false;
    return absl::UnavailableError(
        absl::StrCat("source: replication connection lost: ", ConnectionMessage(conn_)));
  }
  return absl::OkStatus();
}

absl::Status PgReplicationSource::HandleCopyData(char* data, size_t len, ChangeHandler& handler) {
  switch (data[0]) {
    case 'w': {
      if (len < kXLogDataHeader) {
        return absl::DataLossError(
            absl::StrCat("source: truncated XLogData message (length ", len, ")"));
      }
      Lsn data_start = GetU64(data + 1);
      Lsn wal_end = GetU64(data + 9);
      received_lsn_ = std::max({received_lsn_, data_start, wal_end});
      // The payload ends where the buffer ends, so data[len] is its trailing NUL.
      return decoder_.Decode(data + kXLogDataHeader, len - kXLogDataHeader, data_start, handler);
    }
    case 'k': {
      if (len < kKeepaliveSize) {
        return absl::DataLossError(
            absl::StrCat("source: truncated keepalive message (length ", len, ")"));
      }
      received_lsn_ = std::max(received_lsn_, GetU64(data + 1));
      if (data[17] != 0) {
        reply_requested_ = true;
        return SendFeedback(last_flushed_, /*force=*/true);
      }
      return absl::OkStatus();
    }
    default:
      return absl::DataLossError(absl::StrCat(
          "source: unknown replication message type 0x",
          absl::Hex(static_cast<uint8_t>(data[0]), absl::kZeroPad2), " (length ", len, ")"));
  }
}

absl::Status PgReplicationSource::SendFeedback(Lsn flushed, bool force) {
  if (!streaming_) return absl::FailedPreconditionError("source: SendFeedback before Start");
  // Only positions the caller reported durable are ever confirmed, and never less than one
  // confirmed before.
  last_flushed_ = std::max(last_flushed_, flushed);
  absl::Time now = absl::Now();
  if (!force && !reply_requested_ && now - last_feedback_ < options_.feedback_interval) {
    return absl::OkStatus();
  }
  Lsn flush = last_flushed_;
  Lsn write = std::max(received_lsn_, flush);
  char msg[kStatusUpdateSize];
  msg[0] = 'r';
  PutU64(msg + 1, write);
  PutU64(msg + 9, flush);
  PutU64(msg + 17, flush);  // apply: nothing counts as applied before it is durable
  PutU64(msg + 25, static_cast<uint64_t>(PgNow()));
  msg[33] = 0;  // no reply requested
  if (PQputCopyData(conn_, msg, sizeof(msg)) != 1 || PQflush(conn_) != 0) {
    return absl::UnavailableError(
        absl::StrCat("source: sending standby status update: ", ConnectionMessage(conn_)));
  }
  last_feedback_ = now;
  reply_requested_ = false;
  spdlog::debug("source: feedback write {} flush {}", FormatLsn(write), FormatLsn(flush));
  return absl::OkStatus();
}

}  // namespace walshift
