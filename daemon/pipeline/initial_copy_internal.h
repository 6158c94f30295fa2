#pragma once
// The initial copy's units, tasks and workers (see initial_copy.h), shared by its planning
// (initial_copy_plan.cc) and its workers (initial_copy.cc).

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "daemon/apply/pg_copy_writer.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/initial_copy.h"
#include "daemon/pipeline/pg_schema_inspector.h"

namespace walshift {

// Starts a read-only repeatable-read transaction on `conn` showing `snapshot`.
absl::Status ImportSnapshot(PGconn* conn, const std::string& snapshot);

struct InitialCopy::Unit {
  std::string source_table;
  size_t target = 0;
  std::vector<size_t> modules;
  std::shared_ptr<const SourceRelation> relation;
  std::string key_column;  // chunked by this integer primary key column; empty: one chunk
  std::string from;        // the FROM item that reads its rows
  std::set<std::string> target_tables;
  std::vector<Unit*> parents;  // units whose target tables ours reference
  int remaining = 0;           // tasks not finished
  CopyUnitReport report;
  uint64_t rows_since_log = 0;
};

struct InitialCopy::Task {
  Unit* unit = nullptr;
  std::optional<int64_t> lo, hi;
  bool taken = false;
};

struct InitialCopy::Worker {
  int index = 0;
  pg::ConnPtr source;
  std::map<size_t, std::unique_ptr<Sink>> sinks;            // by target index
  std::map<size_t, std::unique_ptr<PgCopyWriter>> copiers;  // by target index
  std::map<size_t, pg::ConnPtr> dry_run_targets;            // dry run: condition checks
  std::unique_ptr<PgSchemaInspector> inspector;
  std::map<const Unit*, std::vector<std::unique_ptr<BoundMapping>>> bound;
};

}  // namespace walshift
