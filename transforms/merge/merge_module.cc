#include "transforms/merge/merge_module.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/core/status_macros.h"
#include "transforms/columns/columns_module.h"
#include "transforms/merge/merge.pb.h"

namespace walshift::transforms::merge {
namespace {

using EmitFn = std::function<absl::Status(const TargetOp&)>;

std::string Qualified(const std::string& table) { return QualifiedTableName(table); }

class BoundMerge : public BoundMapping {
 public:
  BoundMerge(std::unique_ptr<BoundMapping> rows, MergeConfig::OnDelete on_delete, OpShape clear, OpShape drop,
             std::vector<int> key_sources)
      : rows_(std::move(rows)),
        on_delete_(on_delete),
        clear_(std::move(clear)),
        drop_(std::move(drop)),
        key_sources_(std::move(key_sources)) {
    params_.resize(std::max(clear_.num_params, drop_.num_params));
  }

  absl::Status Map(const RowChange& change, const EmitFn& emit) const override {
    if (change.kind != ChangeKind::kDelete || on_delete_ == MergeConfig::ON_DELETE_DELETE_ROW) {
      return rows_->Map(change, emit);  // upsert of this source's columns, or delete by key
    }
    // NULL this source's columns; with delete_when_last, then drop the row if it is empty.
    const Tuple& old_row = *change.old_tuple;
    for (size_t i = 0; i < key_sources_.size(); ++i) params_[i] = old_row[key_sources_[i]];
    for (int i = static_cast<int>(key_sources_.size()); i < clear_.num_params; ++i) params_[i] = Datum{};
    TargetOp op;
    op.shape = &clear_;
    op.params = params_.data();
    op.lsn = change.lsn;
    RETURN_IF_ERROR(emit(op));
    if (on_delete_ != MergeConfig::ON_DELETE_DELETE_WHEN_LAST) return absl::OkStatus();
    op.shape = &drop_;
    return emit(op);
  }

  absl::Status MapTruncate(Lsn lsn, const EmitFn& emit) const override { return rows_->MapTruncate(lsn, emit); }
  bool writes_whole_rows() const override { return rows_->writes_whole_rows(); }
  std::vector<std::pair<std::string, int>> RowKey(const std::string& table) const override {
    return rows_->RowKey(table);
  }

  std::vector<const OpShape*> shapes() const override {
    std::vector<const OpShape*> out = rows_->shapes();
    out.push_back(&clear_);
    if (on_delete_ == MergeConfig::ON_DELETE_DELETE_WHEN_LAST) out.push_back(&drop_);
    return out;
  }

 private:
  std::unique_ptr<BoundMapping> rows_;
  MergeConfig::OnDelete on_delete_;
  OpShape clear_;  // UPDATE t SET own columns = NULL WHERE key
  OpShape drop_;   // DELETE FROM t WHERE key AND every merged column is NULL
  std::vector<int> key_sources_;
  mutable std::vector<Datum> params_;
};

class MergeModule : public MappingModule {
 public:
  MergeModule(std::string path, v1::Mapping common, MergeConfig config, std::vector<std::string> merged_columns)
      : path_(std::move(path)),
        common_(std::move(common)),
        config_(std::move(config)),
        merged_columns_(std::move(merged_columns)) {
    columns_.set_table(config_.table());
    *columns_.mutable_key() = config_.key();
    *columns_.mutable_columns() = config_.columns();
  }

  const std::string& source_table() const override { return common_.source(); }
  const std::string& target() const override { return common_.target(); }
  std::vector<std::string> target_tables() const override { return {Qualified(config_.table())}; }

  std::optional<Owned> owned() const override {
    if (config_.owner().empty()) return std::nullopt;
    Owned o;
    o.owner = Qualified(config_.owner());
    o.table = Qualified(config_.table());
    for (const std::string& k : config_.key()) o.key.emplace_back(k, config_.columns().at(k).column());
    return o;
  }

  absl::Status CanOwn(const std::string& table) const override {
    if (Qualified(config_.table()) != table)
      return absl::FailedPreconditionError(absl::StrCat("it does not write ", table));
    if (config_.on_delete() != MergeConfig::ON_DELETE_DELETE_ROW) {
      return absl::FailedPreconditionError(
          "a row it deletes would stay behind with the other sources' columns; give it on_delete: delete_row");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<BoundMapping>> Bind(const SourceRelation& relation,
                                                     SchemaInspector& inspector) const override {
    // Every source of a merged row may be the first to write it: always upserts.
    columns::BindOptions options;
    options.shared_rows = true;
    options.update_only = owned().has_value();  // only rows the owner wrote
    ASSIGN_OR_RETURN(auto rows, columns::BindColumns(path_, common_, columns_, relation, inspector, options));
    const std::string table = Qualified(config_.table());
    auto init = [&](OpShape* s, OpKind kind) {
      s->kind = kind;
      s->target = common_.target();
      s->table = table;
      s->source_table = relation.QualifiedName();
      s->id = NextOpShapeId();
    };
    OpShape clear, drop;
    init(&clear, OpKind::kUpdateOnly);
    init(&drop, OpKind::kDelete);
    std::vector<int> key_sources;
    for (const std::string& k : config_.key()) {
      int src = relation.ColumnIndex(config_.columns().at(k).column());
      if (src < 0) {
        return absl::FailedPreconditionError(absl::StrCat(path_, ".columns.", k, ": source column '",
                                                          config_.columns().at(k).column(), "' does not exist in ",
                                                          relation.QualifiedName()));
      }
      int slot = static_cast<int>(key_sources.size());
      key_sources.push_back(src);
      // Typed as the row's own key value (a document keeps a number a number).
      std::string type;
      for (const OpShape* shape : rows->shapes())
        for (const TargetValue& v : shape->values)
          if (v.column == k && v.param >= 0 && type.empty()) type = v.type;
      clear.values.push_back({k, slot, "", {}, config_.columns().at(k).column(), type});
      clear.key.push_back(slot);
      drop.values.push_back({k, slot, "", {}, config_.columns().at(k).column(), type});
      drop.key.push_back(slot);
    }
    int slot = static_cast<int>(key_sources.size());
    for (const auto& [name, _] : config_.columns()) {
      if (std::find(config_.key().begin(), config_.key().end(), name) != config_.key().end()) continue;
      clear.values.push_back({name, slot++, "", {}, "NULL", ""});
    }
    clear.num_params = slot;
    drop.num_params = static_cast<int>(key_sources.size());
    // The row is removed unless some merged column still holds a value.
    drop.keep_if_any = merged_columns_;
    return std::make_unique<BoundMerge>(std::move(rows), config_.on_delete(), std::move(clear), std::move(drop),
                                        std::move(key_sources));
  }

 private:
  std::string path_;
  v1::Mapping common_;
  MergeConfig config_;
  std::vector<std::string> merged_columns_;
  columns::ColumnsConfig columns_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MappingModule>> Create(const MergeConfig& config, const MappingContext& context) {
  const MappingInfo& mapping = context.self;
  std::vector<std::string> problems;
  MergeConfig cfg = config;
  for (int i = 0; i < cfg.key_size(); ++i) {
    auto it = cfg.columns().find(cfg.key(i));
    if (it == cfg.columns().end() || it->second.value_case() != columns::ColumnSource::kColumn) {
      problems.push_back(absl::StrCat(mapping.path, ".key[", i, "]: '", cfg.key(i),
                                      "' must be one of the columns, copied from a source column"));
    }
  }
  if (!cfg.owner().empty() && !mapping.common.filter().empty()) {
    problems.push_back(absl::StrCat(mapping.path,
                                    ".filter: a mapping with owner: fills every row its owner "
                                    "admits; filter the owner's mapping instead"));
  }
  if (!cfg.owner().empty() && cfg.on_delete() != MergeConfig::ON_DELETE_NULL_COLUMNS) {
    problems.push_back(absl::StrCat(mapping.path,
                                    ".on_delete: a mapping with owner: leaves deleting rows to its "
                                    "owner; use on_delete: null_columns (the default)"));
  }
  if (!problems.empty()) return ConfigProblems(problems);
  // Every non-key column the merge mappings of this table own (for delete_when_last).
  std::set<std::string> merged;
  for (const MappingInfo& m : context.all) {
    const MergeConfig* other = MappingContext::ConfigAs<MergeConfig>(m);
    if (other == nullptr || m.common.target() != mapping.common.target()) continue;
    if (Qualified(other->table()) != Qualified(cfg.table())) continue;
    for (const auto& [name, _] : other->columns()) {
      if (std::find(other->key().begin(), other->key().end(), name) == other->key().end()) merged.insert(name);
    }
  }
  return std::make_unique<MergeModule>(mapping.path, mapping.common, std::move(cfg),
                                       std::vector<std::string>(merged.begin(), merged.end()));
}

}  // namespace walshift::transforms::merge
