#include "daemon/source/pg_replication_source.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "daemon/core/slot_loss.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "libpq-fe.h"
#include "spdlog/spdlog.h"
#include <sys/socket.h>

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
absl::StatusOr<std::optional<std::string>> QueryValue(PGconn* conn, const std::string& sql, absl::string_view context) {
  ASSIGN_OR_RETURN(pg::ResultPtr result, pg::Exec(conn, sql, context));
  if (PQntuples(result.get()) == 0 || PQnfields(result.get()) == 0 || PQgetisnull(result.get(), 0, 0)) {
    return std::optional<std::string>();
  }
  return std::optional<std::string>(PQgetvalue(result.get(), 0, 0));
}

struct FreeCopyBuffer {
  void operator()(char* p) const { PQfreemem(p); }
};

}  // namespace

PgReplicationSource::PgReplicationSource(PgReplicationSourceOptions options) : options_(std::move(options)) {}

PgReplicationSource::~PgReplicationSource() {
  if (reader_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    WakeReader();
    reader_.join();
  }
  for (Chunk& c : queue_) PQfreemem(c.data);
  for (int fd : wake_fds_)
    if (fd >= 0) close(fd);
  if (conn_ != nullptr) PQfinish(conn_);
}

absl::StatusOr<std::unique_ptr<PgReplicationSource>> PgReplicationSource::Create(
    const PgReplicationSourceOptions& options) {
  if (options.slot.empty() || options.publication.empty()) {
    return absl::FailedPreconditionError("source: slot and publication names must be set");
  }
  if (options.publication.find('\\') != std::string::npos) {
    // START_REPLICATION's option values are plain '...' literals without backslash escapes.
    return absl::FailedPreconditionError(
        absl::StrCat("source: publication name ", options.publication, " must not contain a backslash"));
  }
  if (options.tables.empty()) {
    return absl::FailedPreconditionError("source: no mapped source tables");
  }
  std::string extra =
      absl::StrCat("replication=database application_name=", pg::ConninfoValue(options.application_name));
  ASSIGN_OR_RETURN(pg::ConnPtr conn, pg::Connect(options.dsn, "source", extra));
  std::unique_ptr<PgReplicationSource> source(new PgReplicationSource(options));
  source->conn_ = conn.release();
  spdlog::info("source: connected to {} (replication=database)", pg::RedactDsn(options.dsn));
  source->server_version_ = PQserverVersion(source->conn_);
  RETURN_IF_ERROR(source->CheckWalLevel());
  RETURN_IF_ERROR(source->CheckTables());
  RETURN_IF_ERROR(source->EnsurePublication());
  RETURN_IF_ERROR(source->EnsureSlot());
  return source;
}

absl::Status PgReplicationSource::CheckWalLevel() {
  ASSIGN_OR_RETURN(std::optional<std::string> level, QueryValue(conn_, "SHOW wal_level", "source: SHOW wal_level"));
  if (level.value_or("") != "logical") {
    return absl::FailedPreconditionError(
        absl::StrCat("source: wal_level is '", level.value_or(""),
                     "', logical decoding needs wal_level = logical (set it in postgresql.conf and restart "
                     "the source server)"));
  }
  return absl::OkStatus();
}

absl::Status PgReplicationSource::CheckTables() {
  for (const std::string& table : options_.tables) {
    ASSIGN_OR_RETURN(
        std::optional<std::string> oid,
        QueryValue(conn_, absl::StrCat("SELECT to_regclass(", pg::QuoteLiteral(pg::QuoteQualified(table)), ")"),
                   "source: to_regclass"));
    if (!oid.has_value()) {
      return absl::FailedPreconditionError(
          absl::StrCat("source: mapped table ", table, " does not exist in the source database"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::set<std::pair<std::string, std::string>>> PublicationMembers(PGconn* conn,
                                                                                 const std::string& publication) {
  const std::string pub_literal = pg::QuoteLiteral(publication);
  // Membership by relation (pg_publication_tables lists partitions, not their root, when the
  // publication does not publish through the root).
  ASSIGN_OR_RETURN(
      pg::ResultPtr members,
      pg::Exec(conn,
               absl::StrCat("SELECT n.nspname, c.relname FROM pg_catalog.pg_publication p "
                            "JOIN pg_catalog.pg_publication_rel r ON r.prpubid = p.oid "
                            "JOIN pg_catalog.pg_class c ON c.oid = r.prrelid "
                            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE p.pubname = ",
                            pub_literal,
                            " UNION SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
                            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace, "
                            "pg_catalog.pg_publication p WHERE p.pubname = ",
                            pub_literal, " AND c.relkind IN ('r', 'p') AND (p.puballtables",
                            PQserverVersion(conn) >= 150000 ? " OR c.relnamespace IN (SELECT pnnspid FROM "
                                                              "pg_catalog.pg_publication_namespace WHERE pnpubid = p.oid)"
                                                            : "",
                            ")"),
               "source: reading publication tables"));
  std::set<std::pair<std::string, std::string>> out;
  for (int row = 0; row < PQntuples(members.get()); ++row)
    out.insert({PQgetvalue(members.get(), row, 0), PQgetvalue(members.get(), row, 1)});
  return out;
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
                            absl::StrCat("SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot "
                                         "FROM pg_catalog.pg_publication WHERE pubname = ",
                                         pub_literal),
                            "source: reading publication"));
  // A partitioned table's changes are published under the root, the table the mapping names
  // (partitions attached later, and rows moving between partitions, included).
  if (PQntuples(pub.get()) == 0) {
    RETURN_IF_ERROR(pg::Exec(conn_,
                             absl::StrCat("CREATE PUBLICATION ", pub_ident, " FOR TABLE ", quoted_list(wanted),
                                          " WITH (publish_via_partition_root = true)"),
                             "source: CREATE PUBLICATION")
                        .status());
    spdlog::info("source: created publication {} for {} table(s)", options_.publication, wanted.size());
    return absl::OkStatus();
  }

  // An existing publication must publish every kind of row change, or changes would be lost
  // without a trace.
  static constexpr const char* kActions[] = {"inserts", "updates", "deletes"};
  for (int i = 0; i < 3; ++i) {
    if (absl::string_view(PQgetvalue(pub.get(), 0, i)) != "t") {
      return absl::FailedPreconditionError(absl::StrCat("source: publication ", options_.publication,
                                                        " does not publish ", kActions[i],
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

  if (absl::string_view(PQgetvalue(pub.get(), 0, 4)) != "t") {
    ASSIGN_OR_RETURN(std::optional<std::string> partitioned,
                     QueryValue(conn_,
                                absl::StrCat("SELECT string_agg(c.oid::regclass::text, ', ') FROM pg_class c "
                                             "WHERE c.relkind = 'p' AND c.oid = ANY(",
                                             pg::QuoteLiteral(pg::TextArrayLiteral([&] {
                                               std::vector<std::string> quoted;
                                               for (const std::string& t : options_.tables)
                                                 quoted.push_back(pg::QuoteQualified(t));
                                               return quoted;
                                             }())),
                                             "::text[]::regclass[])"),
                                "source: reading partitioned tables"));
    if (partitioned.has_value()) {
      RETURN_IF_ERROR(
          pg::Exec(conn_, absl::StrCat("ALTER PUBLICATION ", pub_ident, " SET (publish_via_partition_root = true)"),
                   "source: ALTER PUBLICATION SET (publish_via_partition_root = true)")
              .status());
      spdlog::info(
          "source: publication {} now publishes partitioned {} through the root "
          "(publish_via_partition_root = true)",
          options_.publication, *partitioned);
    }
  }

  ASSIGN_OR_RETURN(auto members, PublicationMembers(conn_, options_.publication));
  std::set<std::pair<std::string, std::string>> missing = wanted;
  for (const auto& member : members) missing.erase(member);
  // Tables the publication sends that no mapping names would stop walshiftd at their first
  // change: say so now.
  std::set<std::pair<std::string, std::string>> ignored;
  for (const std::string& t : options_.ignore_tables) ignored.insert(pg::SplitQualified(t));
  ASSIGN_OR_RETURN(pg::ResultPtr published,
                   pg::Exec(conn_,
                            absl::StrCat("SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables "
                                         "WHERE pubname = ",
                                         pub_literal),
                            "source: reading published tables"));
  std::vector<std::string> extra;
  for (int row = 0; row < PQntuples(published.get()); ++row) {
    std::pair<std::string, std::string> t{PQgetvalue(published.get(), row, 0), PQgetvalue(published.get(), row, 1)};
    if (!wanted.count(t) && !ignored.count(t)) extra.push_back(absl::StrCat(t.first, ".", t.second));
  }
  if (!extra.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("source: publication ", options_.publication, " also publishes ", absl::StrJoin(extra, ", "),
                     ", which no mapping names; their changes would have nowhere to go. Map them, list them under "
                     "source.ignore_tables to leave their changes alone on purpose, or use a publication of the "
                     "mapped tables only (walshiftd creates one when source.publication names none that exists)"));
  }
  if (missing.empty()) return absl::OkStatus();
  RETURN_IF_ERROR(pg::Exec(conn_, absl::StrCat("ALTER PUBLICATION ", pub_ident, " ADD TABLE ", quoted_list(missing)),
                           "source: ALTER PUBLICATION ADD TABLE")
                      .status());
  std::vector<std::string> names;
  for (const auto& [schema, table] : missing) names.push_back(absl::StrCat(schema, ".", table));
  spdlog::info("source: added {} to publication {}", absl::StrJoin(names, ", "), options_.publication);
  spdlog::warn(
      "source: changes to {} committed before they joined publication {} are not "
      "streamed; those tables need a snapshot copy",
      absl::StrJoin(names, ", "), options_.publication);
  return absl::OkStatus();
}

absl::Status PgReplicationSource::EnsureSlot() {
  ASSIGN_OR_RETURN(pg::ResultPtr slot,
                   pg::Exec(conn_,
                            absl::StrCat("SELECT slot_type, plugin, database = current_database(), "
                                         "coalesce(wal_status, '') FROM pg_catalog.pg_replication_slots "
                                         "WHERE slot_name = ",
                                         pg::QuoteLiteral(options_.slot)),
                            "source: reading replication slots"));
  const std::string rebuild = SlotRebuildProcedure(options_.slot, options_.pipeline);
  if (PQntuples(slot.get()) > 0 && std::string(PQgetvalue(slot.get(), 0, 3)) == "lost") {
    return SlotLost(absl::DataLossError(
        absl::StrCat("source: replication slot ", options_.slot,
                     " was invalidated (wal_status lost): the source removed WAL it still needed "
                     "(max_slot_wal_keep_size), so the changes after the targets' checkpoints are gone and the "
                     "pipeline cannot resume. ",
                     rebuild)));
  }
  if (PQntuples(slot.get()) == 0 && options_.slot_must_exist) {
    return SlotLost(absl::DataLossError(
        absl::StrCat("source: replication slot ", options_.slot,
                     " does not exist, but the targets hold checkpoints of this pipeline: it was dropped. If "
                     "walshiftctl cutover --finish or rollback --finish retired the pipeline, this walshiftd is no "
                     "longer needed: remove its service. Otherwise the changes since the checkpoints are lost, and "
                     "walshiftd does not recreate the slot silently. ",
                     rebuild)));
  }
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
  ASSIGN_OR_RETURN(ExportedSnapshot created,
                   CreateSlot(conn_, options_.slot, /*temporary=*/false, options_.export_snapshot));
  if (options_.export_snapshot) exported_ = created;
  spdlog::info("source: created logical replication slot {} (pgoutput), consistent point {}{}", options_.slot,
               FormatLsn(created.lsn), options_.export_snapshot ? absl::StrCat(", snapshot ", created.name) : "");
  return absl::OkStatus();
}

absl::StatusOr<ExportedSnapshot> PgReplicationSource::CreateSlot(PGconn* conn, const std::string& slot, bool temporary,
                                                                 bool export_snapshot) {
  // PostgreSQL 17+: the pipeline's slot is a failover slot, which a physical standby with
  // sync_replication_slots keeps in step, so that it continues on the standby after a promotion.
  // (Not on a source that is itself a standby: a slot made there cannot be a failover slot.)
  bool failover = !temporary && PQserverVersion(conn) >= 170000;
  if (failover) {
    auto recovery = pg::Exec(conn, "SELECT pg_catalog.pg_is_in_recovery()", "source: reading the server's role");
    failover = recovery.ok() && PQgetvalue(recovery->get(), 0, 0)[0] == 'f';
  }
  std::string options = failover ? absl::StrCat("(SNAPSHOT '", export_snapshot ? "export" : "nothing",
                                                "', FAILOVER true)")
                                 : (export_snapshot ? "EXPORT_SNAPSHOT" : "NOEXPORT_SNAPSHOT");
  ASSIGN_OR_RETURN(pg::ResultPtr created,
                   pg::Exec(conn,
                            absl::StrCat("CREATE_REPLICATION_SLOT ", pg::QuoteIdent(slot), temporary ? " TEMPORARY" : "",
                                         " LOGICAL pgoutput ", options),
                            "source: CREATE_REPLICATION_SLOT"));
  if (failover) spdlog::info("source: slot {} created as a failover slot (PostgreSQL 17+)", slot);
  // slot_name, consistent_point, snapshot_name, output_plugin
  if (PQntuples(created.get()) != 1 || PQnfields(created.get()) < 3) {
    return absl::InternalError("source: CREATE_REPLICATION_SLOT returned no consistent point");
  }
  ExportedSnapshot out;
  auto lsn = ParseLsn(PQgetvalue(created.get(), 0, 1));
  if (!lsn) return absl::InternalError("source: CREATE_REPLICATION_SLOT returned an unreadable consistent point");
  out.lsn = *lsn;
  if (!PQgetisnull(created.get(), 0, 2)) out.name = PQgetvalue(created.get(), 0, 2);
  return out;
}

PgReplicationSource::TemporarySnapshot::~TemporarySnapshot() {
  if (conn_ != nullptr) PQfinish(conn_);  // the temporary slot goes with its session
}

absl::StatusOr<std::unique_ptr<PgReplicationSource::TemporarySnapshot>> PgReplicationSource::ExportTemporarySnapshot(
    const std::string& dsn, const std::string& slot_name) {
  ASSIGN_OR_RETURN(pg::ConnPtr conn,
                   pg::Connect(dsn, "source", "replication=database application_name=walshiftd-copy"));
  auto holder = std::unique_ptr<TemporarySnapshot>(new TemporarySnapshot());
  ASSIGN_OR_RETURN(holder->snapshot_, CreateSlot(conn.get(), slot_name, /*temporary=*/true,
                                                 /*export_snapshot=*/true));
  holder->conn_ = conn.release();
  spdlog::info("source: exported snapshot {} at {} (temporary slot {})", holder->snapshot_.name,
               FormatLsn(holder->snapshot_.lsn), slot_name);
  return holder;
}

absl::Status PgReplicationSource::Start(Lsn start_lsn) {
  if (streaming_) return absl::FailedPreconditionError("source: replication already started");
  // PostgreSQL 14 and later stream a transaction larger than logical_decoding_work_mem while
  // it runs (protocol 2) instead of decoding all of it to the walsender's disk before sending
  // any: its changes wait in walshiftd's spool until it commits (see StreamSpool).
  const bool stream = server_version_ >= 140000 && options_.stream_large_transactions;
  decoder_.set_protocol_version(stream ? 2 : 1);
  decoder_.set_ignored_origins({options_.ignore_origins.begin(), options_.ignore_origins.end()});
  std::string sql = absl::StrCat("START_REPLICATION SLOT ", pg::QuoteIdent(options_.slot), " LOGICAL ",
                                 FormatLsn(start_lsn), " (proto_version '", stream ? "2" : "1",
                                 "', publication_names ", pg::QuoteLiteral(pg::QuoteIdent(options_.publication)),
                                 ", messages 'true'", stream ? ", streaming 'on'" : "", ")");
  pg::ResultPtr result(PQexec(conn_, sql.c_str()));
  const char* busy = result != nullptr ? PQresultErrorField(result.get(), PG_DIAG_SQLSTATE) : nullptr;
  if (busy != nullptr && absl::string_view(busy) == "55006" && options_.take_over_slot) {
    // "replication slot is active for PID n": the walsender of the leader this one replaced.
    auto active = pg::Exec(conn_,
                           absl::StrCat("SELECT active_pid::text FROM pg_catalog.pg_replication_slots WHERE slot_name = ",
                                        pg::QuoteLiteral(options_.slot), " AND active_pid IS NOT NULL"),
                           "source: reading the replication slot's walsender");
    if (active.ok() && PQntuples(active->get()) == 1) {
      std::string pid = PQgetvalue(active->get(), 0, 0);
      spdlog::warn("source: slot {} is streamed by walsender pid {}, which serves the replaced leader: terminating it",
                   options_.slot, pid);
      (void)pg::Exec(conn_, absl::StrCat("SELECT pg_catalog.pg_terminate_backend(", pid, ")"),
                     "source: terminating the replaced leader's walsender");
      for (absl::Time until = absl::Now() + absl::Seconds(10); absl::Now() < until;) {
        auto still = pg::Exec(conn_,
                              absl::StrCat("SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = ",
                                           pg::QuoteLiteral(options_.slot), " AND active_pid IS NOT NULL"),
                              "source: reading the replication slot's walsender");
        if (!still.ok() || PQntuples(still->get()) == 0) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      result.reset(PQexec(conn_, sql.c_str()));
    }
  }
  if (result != nullptr && PQresultStatus(result.get()) == PGRES_COPY_BOTH) {
    streaming_ = true;
    if (pipe2(wake_fds_, O_CLOEXEC | O_NONBLOCK) != 0) {
      return absl::InternalError(absl::StrCat("source: pipe: ", std::strerror(errno)));
    }
    if (PQsetnonblocking(conn_, 1) != 0) {
      return absl::UnavailableError(absl::StrCat("source: ", ConnectionMessage(conn_)));
    }
    reader_ = std::thread([this] { ReaderLoop(); });
    spdlog::info("source: streaming slot {} from {}", options_.slot, FormatLsn(start_lsn));
    return absl::OkStatus();
  }
  const char* state = result != nullptr ? PQresultErrorField(result.get(), PG_DIAG_SQLSTATE) : nullptr;
  absl::Status status = pg::ResultStatus(conn_, result.get(), "source: START_REPLICATION");
  if (state != nullptr && absl::string_view(state) == "55006") {
    // "replication slot is active for PID n": usually the walsender of our previous,
    // dead connection that has not noticed yet. Retryable, unlike the rest of class 55.
    return absl::UnavailableError(status.message());
  }
  if (state != nullptr &&
      (absl::string_view(state) == "58P01" ||
       (absl::string_view(state) == "55000" && absl::StrContains(status.message(), "invalidated")))) {
    // The slot may have been invalidated after it was read. But 58P01 is any missing file (the
    // output plugin during a package upgrade, say), so the slot itself decides: only one the
    // server reports lost is lost; anything else is retried, never a rebuild of a healthy slot.
    auto slot = pg::Exec(conn_,
                         absl::StrCat("SELECT coalesce(wal_status, '') = 'lost' OR restart_lsn IS NULL "
                                      "FROM pg_catalog.pg_replication_slots WHERE slot_name = ",
                                      pg::QuoteLiteral(options_.slot)),
                         "source: reading the replication slot after START_REPLICATION failed");
    if (slot.ok() && PQntuples(slot->get()) == 1 && PQgetvalue(slot->get(), 0, 0)[0] == 't') {
      return SlotLost(absl::DataLossError(
          absl::StrCat(status.message(), ". ", SlotRebuildProcedure(options_.slot, options_.pipeline))));
    }
    return absl::UnavailableError(absl::StrCat(status.message(), " (the slot itself is not lost: retrying)"));
  }
  if (status.ok()) {
    return absl::InternalError(absl::StrCat("source: START_REPLICATION returned ",
                                            PQresStatus(PQresultStatus(result.get())), " instead of COPY_BOTH"));
  }
  return status;
}

absl::StatusOr<int> PgReplicationSource::Poll(ChangeHandler& handler, absl::Duration wait) {
  if (!streaming_) return absl::FailedPreconditionError("source: Poll before Start");
  std::deque<Chunk> taken;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (queue_.empty() && !reader_done_ && wait > absl::ZeroDuration()) {
      // What arrived while the pipeline was busy may still be in the socket, below the reader's
      // SO_RCVLOWAT: the reader reads it now, and from now on wakes for every byte.
      consumer_waiting_ = true;
      if (!coalescing_.load(std::memory_order_relaxed) && !catching_up_.load(std::memory_order_relaxed)) WakeReader();
      data_ready_.wait_for(lock, absl::ToChronoMilliseconds(wait), [&] { return !queue_.empty() || reader_done_; });
      consumer_waiting_ = false;
    }
    if (queue_.empty() && reader_done_) {
      return reader_status_.ok() ? absl::UnavailableError("source: replication stream closed") : reader_status_;
    }
    bool was_full = queued_bytes_ >= kMaxQueuedBytes;
    taken_total_ += queue_.size();
    taken.swap(queue_);
    queued_bytes_ = 0;
    if (was_full) WakeReader();
  }
  int dispatched = 0;
  absl::Status status;
  for (Chunk& c : taken) {
    if (status.ok()) {
      status = HandleXLogData(c.data, c.len, handler);
      ++dispatched;
    }
    PQfreemem(c.data);
  }
  if (!status.ok()) return status;
  return dispatched;
}

absl::Status PgReplicationSource::HandleXLogData(char* data, size_t len, ChangeHandler& handler) {
  // The payload ends where the buffer ends, so data[len] is its trailing NUL.
  Lsn data_start = GetU64(data + 1);
  return decoder_.Decode(data + kXLogDataHeader, len - kXLogDataHeader, data_start, handler);
}

void PgReplicationSource::WakeReader() {
  char b = 1;
  (void)!write(wake_fds_[1], &b, 1);
}

void PgReplicationSource::FinishReader(absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  reader_status_ = std::move(status);
  reader_done_ = true;
  data_ready_.notify_all();
  feedback_sent_.notify_all();
}

void PgReplicationSource::ReaderLoop() {
  absl::Time last_feedback = absl::Now();
  bool reply_requested = false;
  // The receive timeout: when the last message arrived, and whether the walsender was already
  // asked for a reply since.
  absl::Time last_received = absl::Now();
  bool solicited = false;
  const absl::Duration timeout = options_.receive_timeout;
  // While the pipeline works (applies, commits), the reader wakes only for a worthwhile amount
  // of data: what arrives meanwhile is taken in one batch when the pipeline asks for more.
  // While the pipeline waits for data, it wakes for every byte, so that a change reaches it at
  // once. See kBacklogLowat.
  int lowat = 1;
  auto set_lowat = [&](int bytes) {
    if (bytes == lowat) return;
    lowat = bytes;
    (void)setsockopt(PQsocket(conn_), SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat));
  };
  set_lowat(kBacklogLowat);
  // Data messages since window_start, for the coalescing decision (see kCoalesceRate).
  uint64_t window_messages = 0;
  absl::Time window_start = absl::Now();
  bool coalesce = false;
  for (;;) {
    bool full;
    bool waited_for;  // the pipeline waits for data
    uint64_t requested;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) break;
      full = queued_bytes_ >= kMaxQueuedBytes;
      requested = feedback_requested_;
      waited_for = consumer_waiting_ && queue_.empty();
    }
    // Everything libpq has buffered goes to the queue, keepalives are answered here.
    bool received = false;  // the clock is read once per batch below, not per message
    bool queued = false;    // a data message went to the queue
    while (!full) {
      char* raw = nullptr;
      int n = PQgetCopyData(conn_, &raw, /*async=*/1);
      if (n == 0) break;
      if (n < 0) {
        std::string why = n == -1 ? "source: the server ended the replication stream"
                                  : absl::StrCat("source: replication stream failed: ", ConnectionMessage(conn_));
        if (n == -1) {
          while (PGresult* r = PQgetResult(conn_)) {
            pg::ResultPtr result(r);
            absl::Status st = pg::ResultStatus(conn_, r, "source: replication stream ended");
            if (!st.ok()) why = std::string(st.message());
          }
        }
        FinishReader(absl::UnavailableError(why));
        return;
      }
      size_t len = static_cast<size_t>(n);
      received = true;
      if (raw[0] == 'k' && len >= kKeepaliveSize) {
        Lsn end = GetU64(raw + 1);
        if (end > received_lsn_.load()) received_lsn_.store(end);
        reply_requested |= raw[17] != 0;
        PQfreemem(raw);
        std::lock_guard<std::mutex> lock(mu_);
        if (end >= keepalive_lsn_) {
          keepalive_lsn_ = end;
          keepalive_after_ = queued_total_;
        }
        continue;
      }
      if (raw[0] != 'w' || len < kXLogDataHeader) {
        absl::Status bad = absl::DataLossError(absl::StrCat("source: unexpected replication message type 0x",
                                                            absl::Hex(static_cast<uint8_t>(raw[0]), absl::kZeroPad2),
                                                            " (length ", len, ")"));
        PQfreemem(raw);
        FinishReader(bad);
        return;
      }
      Lsn seen = std::max(GetU64(raw + 1), GetU64(raw + 9));
      if (seen > received_lsn_.load()) received_lsn_.store(seen);
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back({raw, len});
      queued = true;
      ++window_messages;
      ++queued_total_;
      queued_bytes_ += len;
      full = queued_bytes_ >= kMaxQueuedBytes;
      data_ready_.notify_one();
    }
    absl::Time now = absl::Now();
    if (now - window_start >= absl::Milliseconds(100)) {
      coalesce = window_messages * 10 > kCoalesceRate;
      coalescing_.store(coalesce, std::memory_order_relaxed);
      window_messages = 0;
      window_start = now;
    }
    // Data handed to a waiting pipeline keeps it busy: what follows can wait in the socket until
    // it asks again (Poll wakes the reader). A keepalive alone leaves it waiting. Under a dense
    // stream the reader wakes once per kCoalesceMs at most.
    const bool backlog = catching_up_.load(std::memory_order_relaxed);
    set_lowat(waited_for && !queued && !coalesce && !backlog ? 1 : kBacklogLowat);
    // While the queue is full walshiftd does not read, so the walsender's silence is ours.
    if (received || full) last_received = now;
    if (received) solicited = false;
    if (timeout > absl::ZeroDuration()) {
      absl::Duration quiet = now - last_received;
      if (quiet >= timeout) {
        std::string why = absl::StrCat("source: nothing received from the walsender for ", absl::ToInt64Seconds(quiet),
                                       " s (source.receive_timeout_s ", absl::ToInt64Seconds(timeout),
                                       "): the replication connection is considered dead");
        spdlog::warn("{}; closing it", why);
        FinishReader(absl::UnavailableError(why));
        return;
      }
      if (!solicited && quiet >= timeout / 2) {
        // Like PostgreSQL's walreceiver: ask for a keepalive before giving up on the peer.
        spdlog::debug("source: nothing received for {} ms; asking the walsender for a reply",
                      absl::ToInt64Milliseconds(quiet));
        absl::Status st = SendStatusUpdate(/*reply_requested=*/true);
        if (!st.ok()) {
          FinishReader(st);
          return;
        }
        solicited = true;
        last_feedback = now;
      }
    }
    // Standby status updates: when asked by the server or the pipeline, and periodically.
    bool forced = requested != 0 && requested != feedback_done_;
    if (reply_requested || forced || now - last_feedback >= options_.feedback_interval) {
      absl::Status st = SendStatusUpdate();
      if (!st.ok()) {
        FinishReader(st);
        return;
      }
      last_feedback = now;
      reply_requested = false;
      std::lock_guard<std::mutex> lock(mu_);
      feedback_done_ = requested;
      feedback_sent_.notify_all();
    }
    pollfd fds[2] = {};
    fds[0].fd = PQsocket(conn_);
    fds[0].events = full ? 0 : POLLIN;
    fds[1].fd = wake_fds_[0];
    fds[1].events = POLLIN;
    int rc = ::poll(fds, 2, coalesce && !backlog ? kCoalesceMs : kReaderPollMs);
    if (rc < 0 && errno != EINTR) {
      FinishReader(absl::UnavailableError(absl::StrCat("source: poll: ", std::strerror(errno))));
      return;
    }
    if (fds[1].revents & POLLIN) {
      char buf[64];
      while (read(wake_fds_[0], buf, sizeof(buf)) > 0) {
      }
    }
    // A full queue leaves the data in the socket: libpq's buffer must not grow instead.
    if (!full && PQconsumeInput(conn_) == 0) {
      FinishReader(
          absl::UnavailableError(absl::StrCat("source: replication connection lost: ", ConnectionMessage(conn_))));
      return;
    }
  }
  // Stopping: confirm what is durable one last time.
  absl::Status st = SendStatusUpdate();
  FinishReader(st.ok() ? absl::CancelledError("source: stopped") : st);
}

absl::Status PgReplicationSource::SendFeedback(Lsn flushed, bool force) {
  if (!streaming_) return absl::FailedPreconditionError("source: SendFeedback before Start");
  // Only positions the caller reported durable are ever confirmed, and never less than one
  // confirmed before.
  Lsn prev = last_flushed_.load();
  while (flushed > prev && !last_flushed_.compare_exchange_weak(prev, flushed)) {
  }
  if (!force) return absl::OkStatus();  // the reader sends it with its next update
  std::unique_lock<std::mutex> lock(mu_);
  uint64_t ticket = ++feedback_requested_;
  WakeReader();
  feedback_sent_.wait_for(lock, std::chrono::seconds(5), [&] { return feedback_done_ >= ticket || reader_done_; });
  if (reader_done_ && !reader_status_.ok() && !absl::IsCancelled(reader_status_)) return reader_status_;
  return absl::OkStatus();
}

Lsn PgReplicationSource::ConfirmIdle() {
  Lsn idle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A message queued before the keepalive and not yet taken may hold a change: not idle.
    if (keepalive_lsn_ == kInvalidLsn || keepalive_after_ > taken_total_) return kInvalidLsn;
    idle = keepalive_lsn_;
  }
  Lsn prev = last_flushed_.load();
  bool advanced = false;
  while (idle > prev && !(advanced = last_flushed_.compare_exchange_weak(prev, idle))) {
  }
  if (!advanced) return idle;
  // Said at once: a walsender waiting for it at shutdown asked only once.
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++feedback_requested_;
  }
  WakeReader();
  return idle;
}

absl::Status PgReplicationSource::SendStatusUpdate(bool reply_requested) {
  Lsn flush = last_flushed_.load();
  Lsn write = std::max(received_lsn_.load(), flush);
  char msg[kStatusUpdateSize];
  msg[0] = 'r';
  PutU64(msg + 1, write);
  PutU64(msg + 9, flush);
  PutU64(msg + 17, flush);  // apply: nothing counts as applied before it is durable
  PutU64(msg + 25, static_cast<uint64_t>(PgNow()));
  msg[33] = reply_requested ? 1 : 0;
  if (PQputCopyData(conn_, msg, sizeof(msg)) != 1) {
    return absl::UnavailableError(absl::StrCat("source: sending standby status update: ", ConnectionMessage(conn_)));
  }
  // Non-blocking: a status update is tiny; flush until the socket took it.
  for (int i = 0; i < 1000; ++i) {
    int f = PQflush(conn_);
    if (f == 0) break;
    if (f < 0) {
      return absl::UnavailableError(absl::StrCat("source: sending standby status update: ", ConnectionMessage(conn_)));
    }
    pollfd fd{PQsocket(conn_), POLLOUT, 0};
    ::poll(&fd, 1, 10);
  }
  spdlog::debug("source: feedback write {} flush {}", FormatLsn(write), FormatLsn(flush));
  return absl::OkStatus();
}

}  // namespace walshift
