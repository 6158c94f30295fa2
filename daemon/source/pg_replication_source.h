#pragma once
// The replication connection to the legacy database (replication=database): publication and
// slot management, START_REPLICATION with pgoutput proto_version 1, keepalives, standby status
// updates and dispatch of decoded messages.

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/core/interfaces.h"
#include "daemon/source/pgoutput_decoder.h"

typedef struct pg_conn PGconn;

namespace walshift {

// The tables (schema, table) `publication` publishes: listed, all tables, or (PostgreSQL 15+)
// every table of a listed schema. Empty when it does not exist.
absl::StatusOr<std::set<std::pair<std::string, std::string>>> PublicationMembers(PGconn* conn,
                                                                                 const std::string& publication);

struct PgReplicationSourceOptions {
  std::string dsn;                  // libpq connection string of the source database
  std::string slot;                 // logical slot name (pgoutput)
  std::string publication;          // publication name
  std::string pipeline;             // the pipeline's name, for the rebuild procedure of a lost slot
  std::vector<std::string> tables;  // schema.table of every mapped source table
  // schema.table of published tables no mapping names that the config says to leave alone.
  std::vector<std::string> ignore_tables;
  // Replication origins whose transactions are passed over (see PgOutputDecoder).
  std::vector<std::string> ignore_origins;
  absl::Duration feedback_interval = absl::Seconds(10);
  // Nothing received from the walsender (data or keepalive) for this long while walshiftd is
  // reading: the connection is dead, Poll() returns kUnavailable. After half of it a status
  // update asks the walsender for a reply. ZeroDuration: never.
  absl::Duration receive_timeout = absl::Seconds(60);
  std::string application_name = "walshiftd";
  // When the slot is created now: export its snapshot (valid until Start()).
  bool export_snapshot = false;
  // The targets hold checkpoints: a missing slot is an error (the changes since are lost), not
  // something to create.
  bool slot_must_exist = false;
  // PostgreSQL 14+: protocol 2 with streaming of large in-progress transactions.
  bool stream_large_transactions = true;
  // ha: this walshiftd just became the leader, so a walsender still streaming the slot serves a
  // replaced one: Start() terminates it instead of waiting for it to notice.
  bool take_over_slot = false;
};

class PgReplicationSource : public ChangeSource {
 public:
  // Connects, creates the publication (the mapped tables only) and the slot when absent, and
  // adds mapped tables missing from an existing publication. kUnavailable when the server is
  // unreachable; kFailedPrecondition for configuration problems (wal_level, missing table);
  // kDataLoss marked IsSlotLost() when the slot was invalidated, or is missing while
  // `slot_must_exist`.
  static absl::StatusOr<std::unique_ptr<PgReplicationSource>> Create(const PgReplicationSourceOptions& options);
  ~PgReplicationSource() override;

  absl::Status Start(Lsn start_lsn) override;
  absl::StatusOr<int> Poll(ChangeHandler& handler, absl::Duration wait) override;
  absl::Status SendFeedback(Lsn flushed, bool force) override;
  Lsn ConfirmIdle() override;
  Lsn received_lsn() const override { return received_lsn_.load(); }
  uint64_t ignored_origin_transactions() const override { return decoder_.ignored_transactions(); }
  void set_catching_up(bool catching_up) override { catching_up_.store(catching_up, std::memory_order_relaxed); }

  // The snapshot exported when Create() created the slot (options.export_snapshot), else
  // nullopt. Valid until Start().
  const std::optional<ExportedSnapshot>& exported_snapshot() const override { return exported_; }

  // A snapshot for a copy when the pipeline's slot already exists: a temporary slot named
  // `slot_name` is created with an exported snapshot and dropped when the returned holder is
  // destroyed. Its `lsn` is later than the main slot's position.
  class TemporarySnapshot {
   public:
    ~TemporarySnapshot();
    const ExportedSnapshot& snapshot() const { return snapshot_; }

   private:
    friend class PgReplicationSource;
    PGconn* conn_ = nullptr;
    ExportedSnapshot snapshot_;
  };
  static absl::StatusOr<std::unique_ptr<TemporarySnapshot>> ExportTemporarySnapshot(const std::string& dsn,
                                                                                    const std::string& slot_name);

 private:
  explicit PgReplicationSource(PgReplicationSourceOptions options);
  // Steps of Create(), in this order: the publication must exist before the slot so that
  // pgoutput finds it in the slot's historic catalog snapshot.
  absl::Status CheckWalLevel();
  absl::Status CheckTables();
  absl::Status EnsurePublication();
  absl::Status EnsureSlot();
  static absl::StatusOr<ExportedSnapshot> CreateSlot(PGconn* conn, const std::string& slot, bool temporary,
                                                     bool export_snapshot);
  // Decodes one XLogData message taken from the queue. `data` is a PQgetCopyData buffer
  // (writable, NUL at data[len]).
  absl::Status HandleXLogData(char* data, size_t len, ChangeHandler& handler);

  // The reader thread owns conn_ once Start() succeeded: it reads CopyData messages into a
  // bounded queue (so the walsender keeps streaming while the pipeline waits on a target),
  // answers keepalives and sends every standby status update.
  void ReaderLoop();
  absl::Status SendStatusUpdate(bool reply_requested = false);  // reader thread only
  void FinishReader(absl::Status status);
  void WakeReader();

  struct Chunk {
    char* data;
    size_t len;
  };
  // Small on purpose: when the pipeline is slower than the walsender, a full queue soon leaves
  // the data in the socket, the walsender's writes block and it sends in large batches
  // instead of one send() per message (measured: 5.4 s instead of 7.8 s of walsender CPU for a
  // 1M-row transaction).
  static constexpr size_t kMaxQueuedBytes = 4 << 20;
  // Longest wait for less than SO_RCVLOWAT bytes (and the feedback timer's granularity).
  static constexpr int kReaderPollMs = 5;
  // SO_RCVLOWAT while the pipeline is busy: a wake then reads a worthwhile amount (one wake per
  // message would cost more CPU than the message). While the pipeline waits for data: 1.
  static constexpr int kBacklogLowat = 64 * 1024;
  // A stream denser than this many messages per second (measured over 100 ms) is coalesced:
  // the reader wakes every kCoalesceMs at most and hands everything over in one batch, instead
  // of one wake of two threads per message, which would cost more CPU than the apply.
  static constexpr uint64_t kCoalesceRate = 2000;
  static constexpr int kCoalesceMs = 1;

  PgReplicationSourceOptions options_;
  PGconn* conn_ = nullptr;
  int server_version_ = 0;  // PQserverVersion of the source
  std::optional<ExportedSnapshot> exported_;
  bool streaming_ = false;   // START_REPLICATION succeeded
  PgOutputDecoder decoder_;  // main thread only
  std::atomic<Lsn> received_lsn_{kInvalidLsn};
  std::atomic<Lsn> last_flushed_{kInvalidLsn};  // highest `flushed` ever passed to SendFeedback()

  std::thread reader_;
  int wake_fds_[2] = {-1, -1};  // self-pipe that interrupts the reader's poll()
  std::mutex mu_;
  std::condition_variable data_ready_;     // queue_ non-empty or reader finished
  std::condition_variable feedback_sent_;  // feedback_done_ advanced or reader finished
  std::deque<Chunk> queue_;                // guarded by mu_
  bool consumer_waiting_ = false;          // guarded by mu_: Poll() waits for data
  std::atomic<bool> coalescing_{false};    // the reader coalesces a dense stream
  // Catching up on a backlog, the reader leaves data in the socket until kBacklogLowat or
  // kReaderPollMs: the walsender, which bounds a catch-up, then writes in large batches instead
  // of one send() per message.
  std::atomic<bool> catching_up_{false};
  size_t queued_bytes_ = 0;                // guarded by mu_
  bool stop_ = false;                      // guarded by mu_
  bool reader_done_ = false;               // guarded by mu_
  absl::Status reader_status_;             // guarded by mu_: why the reader stopped
  uint64_t feedback_requested_ = 0;        // guarded by mu_
  uint64_t feedback_done_ = 0;             // guarded by mu_
  // For ConfirmIdle(): messages queued and taken by Poll() so far, and the latest keepalive's
  // position with how many messages were queued before it.
  uint64_t queued_total_ = 0;        // guarded by mu_
  uint64_t taken_total_ = 0;         // guarded by mu_
  Lsn keepalive_lsn_ = kInvalidLsn;  // guarded by mu_
  uint64_t keepalive_after_ = 0;     // guarded by mu_
};

}  // namespace walshift
