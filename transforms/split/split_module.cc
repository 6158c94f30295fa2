#include "transforms/split/split_module.h"

#include "absl/strings/str_cat.h"
#include "daemon/core/status_macros.h"
#include "transforms/columns/columns_module.h"
#include "transforms/split/split.pb.h"

namespace walshift::transforms::split {
namespace {

using EmitFn = std::function<absl::Status(const TargetOp&)>;

class BoundSplit : public BoundMapping {
 public:
  explicit BoundSplit(std::vector<std::unique_ptr<BoundMapping>> parts) : parts_(std::move(parts)) {}

  absl::Status Map(const RowChange& change, const EmitFn& emit) const override {
    if (change.kind == ChangeKind::kDelete) {
      // Referencing parts (listed later) go first.
      for (auto it = parts_.rbegin(); it != parts_.rend(); ++it) RETURN_IF_ERROR((*it)->Map(change, emit));
      return absl::OkStatus();
    }
    for (const auto& part : parts_) RETURN_IF_ERROR(part->Map(change, emit));
    return absl::OkStatus();
  }

  absl::Status MapTruncate(Lsn lsn, const EmitFn& emit) const override {
    for (auto it = parts_.rbegin(); it != parts_.rend(); ++it) RETURN_IF_ERROR((*it)->MapTruncate(lsn, emit));
    return absl::OkStatus();
  }

  bool writes_whole_rows() const override {
    for (const auto& part : parts_)
      if (part->writes_whole_rows()) return true;
    return false;
  }

  std::vector<const OpShape*> shapes() const override {
    std::vector<const OpShape*> out;
    for (const auto& part : parts_)
      for (const OpShape* s : part->shapes()) out.push_back(s);
    return out;
  }

 private:
  std::vector<std::unique_ptr<BoundMapping>> parts_;
};

class SplitModule : public MappingModule {
 public:
  SplitModule(std::string path, v1::Mapping common, SplitConfig config)
      : path_(std::move(path)), common_(std::move(common)) {
    for (const Part& p : config.into()) {
      columns::ColumnsConfig c;
      c.set_table(p.table());
      *c.mutable_key() = p.key();
      *c.mutable_columns() = p.columns();
      parts_.push_back(std::move(c));
      v1::Mapping part_common = common_;
      if (!p.filter().empty()) {
        part_common.set_filter(common_.filter().empty() ? p.filter()
                                                        : absl::StrCat("(", common_.filter(), ") AND (", p.filter(), ")"));
      }
      part_commons_.push_back(std::move(part_common));
    }
  }

  const std::string& source_table() const override { return common_.source(); }
  const std::string& target() const override { return common_.target(); }

  absl::StatusOr<std::unique_ptr<BoundMapping>> Bind(const SourceRelation& relation,
                                                     SchemaInspector& inspector) const override {
    std::vector<std::unique_ptr<BoundMapping>> bound;
    for (size_t i = 0; i < parts_.size(); ++i) {
      ASSIGN_OR_RETURN(auto part,
                       columns::BindColumns(IndexPath(path_ + ".into", i), part_commons_[i], parts_[i], relation,
                                            inspector));
      bound.push_back(std::move(part));
    }
    return std::make_unique<BoundSplit>(std::move(bound));
  }

 private:
  std::string path_;
  v1::Mapping common_;
  std::vector<columns::ColumnsConfig> parts_;
  std::vector<v1::Mapping> part_commons_;  // the mapping with each part's filter
};

}  // namespace

absl::StatusOr<std::unique_ptr<MappingModule>> Create(const SplitConfig& config, const MappingContext& context) {
  const MappingInfo& mapping = context.self;
  std::vector<std::string> problems;
  SplitConfig cfg = config;
  for (int i = 0; i < cfg.into_size(); ++i) {
    const Part& p = cfg.into(i);
    for (int k = 0; k < p.key_size(); ++k) {
      if (!p.columns().contains(p.key(k))) {
        problems.push_back(absl::StrCat(IndexPath(mapping.path + ".into", i), ".key[", k, "]: '", p.key(k),
                                        "' is not one of the part's columns"));
      }
    }
  }
  if (!problems.empty()) return ConfigProblems(problems);
  return std::make_unique<SplitModule>(mapping.path, mapping.common, std::move(cfg));
}

}  // namespace walshift::transforms::split
