#pragma once
// Online re-backfill of one source table while the pipeline streams (the DBLog method).
//
// A request arrives through the source's WAL: a logical message with prefix
// `walshift.backfill` and content "<pipeline>\t<schema.table>" (walshiftctl backfill emits it).
// The backfill thread then walks the table in primary-key order, one chunk at a time:
//   1. emits a low watermark (message `walshift.backfill.low`, content
//      "<pipeline>\t<id>\t<key column>\x1f<key column>...");
//   2. waits until every transaction in progress when the low watermark committed is visible,
//      then reads the next chunk of rows;
//   3. emits a high watermark (`walshift.backfill.high`).
// The pipeline, reading the stream in commit order, notes every key of the table that changes
// between the two watermarks. At the high watermark it drops those keys from the chunk (the
// stream carries their newer state) and applies the rest as updates, in order with the
// stream. A row deleted during the backfill is therefore never written back.
//
// Progress (the last key applied) is a row of walshift.backfill in each target, written in the
// same transaction as the chunk; after a restart the backfill continues from there.

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "daemon/core/change.h"
#include "libpq-fe.h"

namespace walshift {

inline constexpr char kBackfillRequest[] = "walshift.backfill";
inline constexpr char kBackfillLow[] = "walshift.backfill.low";
inline constexpr char kBackfillHigh[] = "walshift.backfill.high";

// Rows read between two watermarks.
struct BackfillChunk {
  std::string id;
  std::string table;
  std::shared_ptr<const SourceRelation> relation;
  std::vector<int> key_columns;  // indices into relation->columns
  // Row values as text (nullopt: NULL), in relation column order.
  std::vector<std::vector<std::optional<std::string>>> rows;
  bool last = false;  // the table has no rows after this chunk
  // The key text of a row (key column values joined with \x1f), as KeyText() gives for a change.
  static std::string RowKey(const std::vector<std::optional<std::string>>& row, const std::vector<int>& key_columns);
  static std::string TupleKey(const Tuple& tuple, const std::vector<int>& key_columns);
};

class Backfiller {
 public:
  Backfiller(std::string source_dsn, std::string pipeline, int64_t chunk_rows);
  ~Backfiller();  // stops the thread

  // Starts walking `table` after `after_key` (key column values; empty: from the start), unless
  // a backfill of it is running already. Backfills run one after another.
  void Request(const std::string& table, std::vector<std::string> after_key);

  // The chunk whose high watermark is `id` (it is stored before that watermark is emitted);
  // nullptr when unknown: a watermark replayed from before a restart, whose range the resumed
  // backfill reads again.
  std::shared_ptr<const BackfillChunk> Chunk(const std::string& id);
  // The pipeline has applied chunk `id`: the thread then prepares the next one.
  void Applied(const std::string& id);

  // The first error of the thread (a vanished table, ...), reported once.
  absl::Status TakeError();

 private:
  struct Job {
    std::string table;
    std::vector<std::string> after_key;
  };
  void Loop();
  absl::Status RunJob(Job& job);

  std::string source_dsn_, pipeline_;
  int64_t chunk_rows_;
  std::mutex mu_;
  std::condition_variable cv_;
  PGcancel* cancel_ = nullptr;  // the running job's source query, cancelled on destruction
  std::vector<Job> jobs_;
  std::set<std::string> queued_tables_;
  std::map<std::string, std::shared_ptr<const BackfillChunk>> chunks_;
  std::set<std::string> applied_;  // ids of chunks the pipeline has applied
  absl::Status error_;
  bool stopping_ = false;
  uint64_t next_id_ = 0;
  std::thread thread_;
};

}  // namespace walshift
