#pragma once
// Applies target operations to one PostgreSQL target database through libpq pipeline mode.
// Source transactions are grouped into one target transaction (BEGIN ... COMMIT) together with
// the pipeline's row in walshift.checkpoint, so a crash leaves the target before or after a
// whole group. Statements are prepared once per (shape, written column set); values are always
// bound as text parameters and identifiers always quoted.

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "daemon/core/interfaces.h"
#include "daemon/pg/pg_util.h"

namespace walshift {

struct PgSinkOptions {
  std::string name;      // target name from the config
  std::string dsn;       // secret
  std::string pipeline;  // checkpoint row key
  size_t max_pending_statements = 2000;
  size_t max_pending_bytes = 4 << 20;
};

class PgSink : public Sink {
 public:
  // Connects, creates walshift.checkpoint when absent and reads this pipeline's checkpoint.
  // kUnavailable when the target cannot be reached.
  static absl::StatusOr<std::unique_ptr<PgSink>> Create(const PgSinkOptions& options);
  ~PgSink() override;

  const std::string& name() const override { return options_.name; }
  absl::Status Apply(const TargetOp& op) override;
  void EndTransaction(const TransactionCommit& commit) override;
  absl::StatusOr<Lsn> Flush() override;
  Lsn durable_lsn() const override { return durable_lsn_; }
  size_t pending_changes() const override { return group_changes_; }
  // True when a group is open (BEGIN sent, COMMIT not yet).
  bool group_open() const { return group_open_; }

  // Total operations applied (committed) since start.
  uint64_t applied_changes() const { return applied_changes_; }

 private:
  explicit PgSink(PgSinkOptions options);

  struct Prepared {
    std::string name;
    std::vector<int> params;  // op parameter slot for each statement parameter, in order
    std::vector<int> values;  // indices of the shape values written (for messages)
  };
  // What an outstanding command was, to attribute its result.
  struct Pending {
    enum Kind : uint8_t { kControl, kPrepare, kStatement, kSync } kind = kControl;
    const OpShape* shape = nullptr;
    const Prepared* prepared = nullptr;
    Lsn lsn = kInvalidLsn;
    size_t arena_offset = 0;  // copy of the op's parameters (for error messages)
    size_t bytes = 0;
  };

  absl::Status SendControl(const char* sql);
  absl::StatusOr<const Prepared*> PreparedFor(const TargetOp& op);
  // Reads whatever results are available without blocking (block=false), or waits until the
  // backlog is within bounds (block=true), or until everything through the last sync has
  // been answered (drain_all=true).
  absl::Status Pump(bool block, bool drain_all);
  absl::Status HandleResult(PGresult* result);
  absl::Status ErrorFor(const Pending& pending, const PGresult* result);
  std::string DescribeParams(const Pending& pending, bool key_only) const;
  std::vector<std::pair<DatumKind, absl::string_view>> DecodeParams(const Pending& pending) const;
  std::string ProbeColumn(const Pending& pending) const;
  absl::Status BrokenConnection(absl::string_view what);

  PgSinkOptions options_;
  pg::ConnPtr conn_;
  absl::flat_hash_map<std::string, std::unique_ptr<Prepared>> prepared_;
  absl::flat_hash_map<uint32_t, const Prepared*> full_prepared_;  // fast path: nothing omitted
  std::deque<Pending> pending_;
  size_t pending_bytes_ = 0;
  std::string arena_;  // parameter copies of outstanding statements
  std::vector<const char*> values_;
  std::string omit_key_;
  absl::Status first_error_;
  bool group_open_ = false;
  bool have_commit_ = false;
  TransactionCommit last_commit_;
  size_t group_changes_ = 0;
  Lsn durable_lsn_ = kInvalidLsn;
  uint64_t applied_changes_ = 0;
  uint32_t statement_counter_ = 0;
  std::string checkpoint_lsn_text_, checkpoint_time_text_;
};

}  // namespace walshift
