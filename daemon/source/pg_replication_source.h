#pragma once
// The replication connection to the legacy database (replication=database): publication and
// slot management, START_REPLICATION with pgoutput proto_version 1, keepalives, standby status
// updates and dispatch of decoded messages.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/core/interfaces.h"
#include "daemon/source/pgoutput_decoder.h"

typedef struct pg_conn PGconn;

namespace walshift {

struct PgReplicationSourceOptions {
  std::string dsn;                       // libpq connection string of the source database
  std::string slot;                      // logical slot name (pgoutput)
  std::string publication;               // publication name
  std::vector<std::string> tables;       // schema.table of every mapped source table
  absl::Duration feedback_interval = absl::Seconds(10);
  std::string application_name = "walshiftd";
};

class PgReplicationSource : public ChangeSource {
 public:
  // Connects, creates the publication (the mapped tables only) and the slot when absent, and
  // adds mapped tables missing from an existing publication. kUnavailable when the server is
  // unreachable; kFailedPrecondition for configuration problems (wal_level, missing table).
  static absl::StatusOr<std::unique_ptr<PgReplicationSource>> Create(
      const PgReplicationSourceOptions& options);
  ~PgReplicationSource() override;

  absl::Status Start(Lsn start_lsn) override;
  absl::StatusOr<int> Poll(ChangeHandler& handler, absl::Duration wait) override;
  absl::Status SendFeedback(Lsn flushed, bool force) override;
  Lsn received_lsn() const override { return received_lsn_; }

 private:
  explicit PgReplicationSource(PgReplicationSourceOptions options);
  // Steps of Create(), in this order: the publication must exist before the slot so that
  // pgoutput finds it in the slot's historic catalog snapshot.
  absl::Status CheckWalLevel();
  absl::Status CheckTables();
  absl::Status EnsurePublication();
  absl::Status EnsureSlot();
  // Handles one CopyData message of the replication stream ('w' XLogData, 'k' keepalive).
  // `data` is a PQgetCopyData buffer (writable, NUL at data[len]).
  absl::Status HandleCopyData(char* data, size_t len, ChangeHandler& handler);
  // Waits up to `wait` for the socket to become readable, then reads what arrived.
  absl::Status WaitForData(absl::Duration wait);

  PgReplicationSourceOptions options_;
  PGconn* conn_ = nullptr;
  bool streaming_ = false;  // START_REPLICATION succeeded
  PgOutputDecoder decoder_;
  Lsn received_lsn_ = kInvalidLsn;
  Lsn last_flushed_ = kInvalidLsn;  // highest `flushed` ever passed to SendFeedback()
  bool reply_requested_ = false;
  absl::Time last_feedback_ = absl::InfinitePast();
};

}  // namespace walshift
