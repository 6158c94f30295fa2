#include "transforms/soft_delete/soft_delete_module.h"

#include "absl/strings/str_cat.h"
#include "daemon/core/status_macros.h"
#include "transforms/columns/columns_module.h"
#include "transforms/soft_delete/soft_delete.pb.h"

namespace walshift::transforms::soft_delete {
namespace {

using EmitFn = std::function<absl::Status(const TargetOp&)>;

class BoundSoftDelete : public BoundMapping {
 public:
  BoundSoftDelete(std::unique_ptr<BoundMapping> rows, int flag, SoftDeleteConfig::DeletedWhen when)
      : rows_(std::move(rows)), flag_(flag), when_(when) {}

  absl::Status Map(const RowChange& change, const EmitFn& emit) const override {
    if (change.kind == ChangeKind::kDelete) return rows_->Map(change, emit);
    ASSIGN_OR_RETURN(bool deleted, Deleted(change));
    if (!deleted) return rows_->Map(change, emit);  // (re)inserted with its current values
    // Marked deleted: remove the row by its old key (a key change) and by its current key.
    RowChange del = change;
    del.kind = ChangeKind::kDelete;
    if (change.old_tuple != nullptr && change.old_tuple_kind == 'K') {
      RETURN_IF_ERROR(rows_->Map(del, emit));
    }
    del.old_tuple = change.new_tuple;
    del.old_tuple_kind = 'O';
    del.new_tuple = nullptr;
    return rows_->Map(del, emit);
  }

  absl::Status MapTruncate(Lsn lsn, const EmitFn& emit) const override { return rows_->MapTruncate(lsn, emit); }

  std::vector<const OpShape*> shapes() const override { return rows_->shapes(); }
  bool writes_whole_rows() const override { return rows_->writes_whole_rows(); }
  std::vector<std::pair<std::string, int>> RowKey(const std::string& table) const override {
    return rows_->RowKey(table);
  }

 private:
  absl::StatusOr<bool> Deleted(const RowChange& change) const {
    const Datum* flag = &(*change.new_tuple)[flag_];
    if (flag->is_unchanged_toast() && change.old_tuple != nullptr && change.old_tuple_kind == 'O')
      flag = &(*change.old_tuple)[flag_];
    if (flag->is_unchanged_toast()) {
      return absl::DataLossError(
          absl::StrCat("update of ", change.relation->QualifiedName(), " at LSN ", FormatLsn(change.lsn),
                       ": the soft-delete flag ", change.relation->columns[flag_].name,
                       " arrived as an unchanged TOAST value; set REPLICA IDENTITY FULL on the source table"));
    }
    // Booleans arrive in their text form: t / f.
    auto is_true = [&] { return flag->view() == "t" || flag->view() == "true"; };
    auto is_false = [&] { return flag->view() == "f" || flag->view() == "false"; };
    switch (when_) {
      case SoftDeleteConfig::DELETED_WHEN_FALSE:
        return !flag->is_null() && is_false();
      case SoftDeleteConfig::DELETED_WHEN_TRUE:
        return !flag->is_null() && is_true();
      case SoftDeleteConfig::DELETED_WHEN_NOT_NULL:
        return !flag->is_null();
      case SoftDeleteConfig::DELETED_WHEN_NULL:
        return flag->is_null();
      default:
        return false;
    }
  }

  std::unique_ptr<BoundMapping> rows_;
  int flag_;
  SoftDeleteConfig::DeletedWhen when_;
};

class SoftDeleteModule : public MappingModule {
 public:
  SoftDeleteModule(std::string path, v1::Mapping common, SoftDeleteConfig config)
      : path_(std::move(path)), common_(std::move(common)), config_(std::move(config)) {
    columns_.set_table(config_.table());
    *columns_.mutable_key() = config_.key();
    *columns_.mutable_columns() = config_.columns();
  }

  const std::string& source_table() const override { return common_.source(); }
  const std::string& target() const override { return common_.target(); }
  std::vector<std::string> target_tables() const override { return {columns::TargetTable(common_, columns_)}; }

  absl::StatusOr<std::unique_ptr<BoundMapping>> Bind(const SourceRelation& relation,
                                                     SchemaInspector& inspector) const override {
    int flag = relation.ColumnIndex(config_.flag());
    if (flag < 0) {
      return absl::FailedPreconditionError(absl::StrCat(path_, ".flag: source column '", config_.flag(),
                                                        "' does not exist in ", relation.QualifiedName()));
    }
    columns::BindOptions options;
    options.rows_reenter = true;  // clearing the flag brings a row back
    ASSIGN_OR_RETURN(auto rows, columns::BindColumns(path_, common_, columns_, relation, inspector, options));
    return std::make_unique<BoundSoftDelete>(std::move(rows), flag, config_.deleted_when());
  }

 private:
  std::string path_;
  v1::Mapping common_;
  SoftDeleteConfig config_;
  columns::ColumnsConfig columns_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MappingModule>> Create(const SoftDeleteConfig& config, const MappingContext& context) {
  const MappingInfo& mapping = context.self;
  std::vector<std::string> problems;
  SoftDeleteConfig cfg = config;
  if (!problems.empty()) return ConfigProblems(problems);
  return std::make_unique<SoftDeleteModule>(mapping.path, mapping.common, std::move(cfg));
}

}  // namespace walshift::transforms::soft_delete
