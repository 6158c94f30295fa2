#pragma once
// The `columns` mapping module: one source row becomes one target row. Each target column is
// a source column, a constant, or an SQL expression over the source row's column names that
// the target database evaluates. Insert and update upsert by key; a key change moves the target
// row to its new key (an UPDATE of the key, so values the change did not carry stay); delete
// deletes by key; truncate empties the table (unless `truncate: ignore`).
//
// Unchanged TOAST values (pgoutput 'u') are never written: a copied column is left as it is.
// An `sql:` expression whose inputs are all unchanged is left as it is too. An expression that
// mixes a TOAST-able input with other inputs needs the old value, which only REPLICA IDENTITY
// FULL provides: without it the mapping is rejected when the table is bound, saying so. The
// same holds for a row that can re-enter the target (a filter that becomes true again, a soft
// delete undone): it is written whole, so the pipeline completes such an update from the
// source's current row first (BoundMapping::writes_whole_rows).

#include <memory>
#include <string>
#include <vector>

#include "daemon/core/interfaces.h"
#include "transforms/columns/columns.pb.h"
#include "transforms/module_context.h"

namespace walshift::transforms::columns {

// kInvalidArgument listing every problem of the config, one per line.
absl::StatusOr<std::unique_ptr<MappingModule>> Create(const ColumnsConfig& config, const MappingContext& context);

// The source column names an SQL expression refers to (identifiers outside string literals,
// not followed by '(' and not after '.' or '::'), matched against `candidates` (unquoted names
// case-insensitively, quoted names exactly). Exposed for tests.
std::vector<std::string> ExpressionInputs(absl::string_view sql, const std::vector<std::string>& candidates);

// What a module built on `columns` adds to its rules.
struct BindOptions {
  // Rows can leave the target and come back through an update (soft_delete's flag); with
  // `filter:` they can anyway. Such an update must carry the whole row.
  bool rows_reenter = false;
  // Other mappings write the same target rows (merge): an insert in this source may find the
  // row present, so rows are always upserted.
  bool shared_rows = false;
  // Rows exist only while another mapping wrote them (`owner:`): inserts and updates update
  // the row's columns when it is there and never create it.
  bool update_only = false;
};

// Binds a `columns` mapping to a relation: the plan other modules build on (soft_delete wraps
// it). `path` names the mapping in messages.
absl::StatusOr<std::unique_ptr<BoundMapping>> BindColumns(const std::string& path, const v1::Mapping& common,
                                                          const ColumnsConfig& config, const SourceRelation& relation,
                                                          SchemaInspector& inspector, const BindOptions& options = {});

// The target table a columns config writes: `table`, or the source table's name.
std::string TargetTable(const v1::Mapping& common, const ColumnsConfig& config);

class ColumnsModule : public MappingModule {
 public:
  ColumnsModule(std::string path, v1::Mapping common, ColumnsConfig config);

  const std::string& source_table() const override { return common_.source(); }
  const std::string& target() const override { return common_.target(); }
  absl::StatusOr<std::unique_ptr<BoundMapping>> Bind(const SourceRelation& relation,
                                                     SchemaInspector& inspector) const override;
  std::vector<std::string> target_tables() const override { return {TargetTable(common_, config_)}; }

 private:
  std::string path_;
  v1::Mapping common_;
  ColumnsConfig config_;
};

}  // namespace walshift::transforms::columns
