#pragma once
// SchemaInspector over ordinary (non-replication) connections to the source and the targets.

#include <map>
#include <optional>
#include <vector>
#include <string>

#include "daemon/core/interfaces.h"
#include "daemon/pg/pg_util.h"

namespace walshift {

// The relation pgoutput would announce for `table` (schema.table), read from the catalog:
// live, non-generated columns in order, key flags from the replica identity. nullopt with a
// problem (prefixed by `where`) appended when the table is missing or cannot be replicated.
absl::StatusOr<std::optional<SourceRelation>> DescribeSourceTable(PGconn* conn, const std::string& table,
                                                                  std::vector<std::string>* problems,
                                                                  const std::string& where);

// The primary key of `relation` in key order: (column name, format_type with modifier).
// Empty when it has none.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadPrimaryKey(PGconn* conn,
                                                                                const SourceRelation& relation);

class PgSchemaInspector : public SchemaInspector {
 public:
  // `target_dsns`: target name → DSN. Connections are opened on first use.
  PgSchemaInspector(std::string source_dsn, std::map<std::string, std::string> target_dsns);
  absl::StatusOr<SourceTableInfo> Describe(const SourceRelation& relation,
                                           const std::string& target) override;
  absl::StatusOr<std::map<std::string, std::string>> TargetColumnTypes(
      const std::string& target, const std::string& table) override;
  absl::StatusOr<std::vector<std::string>> TargetIndexDefinitions(const std::string& target,
                                                                 const std::string& table) override;

 private:
  absl::StatusOr<PGconn*> Conn(const std::string& name, const std::string& dsn);
  absl::StatusOr<PGconn*> TargetConn(const std::string& target);
  std::string source_dsn_;
  std::map<std::string, std::string> target_dsns_;
  std::map<std::string, pg::ConnPtr> conns_;
};

}  // namespace walshift
