#pragma once
// SchemaInspector over ordinary (non-replication) connections to the source and the targets.

#include <atomic>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "daemon/config/config.h"
#include "daemon/core/interfaces.h"
#include "daemon/pg/pg_util.h"

namespace walshift {

// The relation pgoutput would announce for `table` (schema.table), read from the catalog:
// live, non-generated columns in order, key flags from the replica identity. nullopt with a
// problem (prefixed by `where`) appended when the table is missing or cannot be replicated.
// The FROM item that reads the rows of `relation` as its changes are published: ONLY an
// inheritance parent's own rows, every partition of a partitioned table.
absl::StatusOr<std::string> SourceRowsFrom(PGconn* conn, const SourceRelation& relation);

// (A table without any key column is returned as it is: its mappings decide.)
absl::StatusOr<std::optional<SourceRelation>> DescribeSourceTable(PGconn* conn, const std::string& table,
                                                                  std::vector<std::string>* problems,
                                                                  const std::string& where);

// The primary key of `relation` in key order: (column name, format_type with modifier).
// Empty when it has none.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadPrimaryKey(PGconn* conn,
                                                                                const SourceRelation& relation);

class PgSchemaInspector : public SchemaInspector {
 public:
  // Connections are opened on first use. A documents target has no catalog: every source type
  // is its own there, and it has no column types to read (a filter: is refused).
  PgSchemaInspector(std::string source_dsn, const std::vector<config::TargetSettings>& targets);
  absl::StatusOr<SourceTableInfo> Describe(const SourceRelation& relation, const std::string& target) override;
  absl::StatusOr<std::map<std::string, std::string>> TargetColumnTypes(const std::string& target,
                                                                       const std::string& table) override;
  // The oid of each source table (schema.table) that exists now, with the name it was asked by.
  absl::StatusOr<std::map<Oid, std::string>> SourceOids(const std::vector<std::string>& tables);
  // Reads the source's current values of `columns` for the row whose replica identity (key)
  // columns equal those of `row`, and sets *out to `row` with those values in their places
  // (views valid until the next call). False when the source has no such row now (it was
  // deleted, its key changed, or the table was truncated since). kDataLoss when a key value of
  // `row` is missing.
  absl::StatusOr<bool> ReadCurrentRow(const SourceRelation& relation, const Tuple& row, const std::vector<int>& columns,
                                      Tuple* out);
  // Waits until source transaction `xid` (its commit record at `commit_lsn`) is visible to new
  // snapshots on the source. The walsender may send a commit before the committing session has
  // made it visible (PostgreSQL makes a commit visible after its record is flushed, and after a
  // synchronous standby confirmed it): a row read in between is the row before the change, or
  // none under a key the change gave it. Checked once per transaction; kAborted once `stop` is
  // set (when given).
  absl::Status WaitVisible(uint32_t xid, Lsn commit_lsn, const std::atomic<bool>* stop);
  // The source table `table` as the catalog describes it now (columns in pgoutput's order).
  absl::StatusOr<std::shared_ptr<const SourceRelation>> DescribeSource(const std::string& table);
  // The source's current rows of `relation` whose `columns` equal `values` (text), every column
  // in `relation`'s order.
  absl::StatusOr<pg::ResultPtr> ReadRowsWhere(const SourceRelation& relation, const std::vector<std::string>& columns,
                                              const std::vector<const char*>& values);

 private:
  absl::StatusOr<PGconn*> Conn(const std::string& name, const std::string& dsn);
  absl::StatusOr<PGconn*> TargetConn(const std::string& target);
  // The source table of `relation` now, by oid: its current name (quoted, qualified as needed;
  // empty when it no longer exists) and each column's type.
  struct LiveTable {
    std::string name;
    std::map<std::string, std::string> types;
  };
  static absl::StatusOr<LiveTable> ReadLiveTable(PGconn* src, const SourceRelation& relation);
  std::string source_dsn_;
  std::map<std::string, std::string> target_dsns_;
  std::set<std::string> document_targets_;
  std::map<std::string, pg::ConnPtr> conns_;
  // ReadCurrentRow: the statement per (relation oid, version, columns), the key columns it
  // binds, and the last result (the views handed out point into it).
  struct RowQuery {
    std::string sql;
    std::vector<int> key;
  };
  std::map<std::string, RowQuery> row_queries_;
  uint32_t visible_xid_ = 0;  // the last transaction WaitVisible saw visible
  pg::ResultPtr current_row_;
};

}  // namespace walshift
