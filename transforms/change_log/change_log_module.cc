#include "transforms/change_log/change_log_module.h"

#include "absl/strings/str_cat.h"
#include "transforms/change_log/change_log.pb.h"

namespace walshift::transforms::change_log {
namespace {

using EmitFn = std::function<absl::Status(const TargetOp&)>;

// The per-relation plan. Built once by Bind(); Map() only fills parameters.
class BoundChangeLog : public BoundMapping {
 public:
  BoundChangeLog(OpShape shape, std::vector<int> copied) : shape_(std::move(shape)), copied_(std::move(copied)) {
    params_.resize(shape_.num_params);
  }

  absl::Status Map(const RowChange& change, const EmitFn& emit) const override {
    // A log of changes: the rows the initial copy reads are not changes.
    if (change.snapshot) return absl::OkStatus();
    // Parameter 0: the change's WAL position; 1: the operation; 2..: copied columns. Computed
    // values live in members, so they outlive the emit() call that reads them.
    lsn_text_ = FormatLsn(change.lsn);
    const char* op = change.kind == ChangeKind::kInsert   ? "insert"
                     : change.kind == ChangeKind::kUpdate ? "update"
                                                          : "delete";
    params_[0] = Datum{DatumKind::kText, static_cast<uint32_t>(lsn_text_.size()), lsn_text_.c_str()};
    params_[1] = Datum{DatumKind::kText, static_cast<uint32_t>(strlen(op)), op};
    const Tuple& row = change.kind == ChangeKind::kDelete ? *change.old_tuple : *change.new_tuple;
    for (size_t i = 0; i < copied_.size(); ++i) params_[2 + i] = row[copied_[i]];
    TargetOp out;
    out.shape = &shape_;
    out.params = params_.data();
    out.lsn = change.lsn;
    return emit(out);
  }

  // A TRUNCATE of the source empties nothing here: the log keeps its history.
  absl::Status MapTruncate(Lsn, const EmitFn&) const override { return absl::OkStatus(); }

  std::vector<const OpShape*> shapes() const override { return {&shape_}; }

 private:
  OpShape shape_;
  std::vector<int> copied_;  // source column index of each copied value
  // Per-row scratch: a bound mapping is used by one pipeline thread only.
  mutable std::string lsn_text_;
  mutable std::vector<Datum> params_;
};

class ChangeLogModule : public MappingModule {
 public:
  ChangeLogModule(std::string path, v1::Mapping common, ChangeLogConfig config)
      : path_(std::move(path)), common_(std::move(common)), config_(std::move(config)) {}

  const std::string& source_table() const override { return common_.source(); }
  const std::string& target() const override { return common_.target(); }

  absl::StatusOr<std::unique_ptr<BoundMapping>> Bind(const SourceRelation& relation, SchemaInspector&) const override {
    // Checks against the relation happen here, once per relation version.
    std::vector<int> copied;
    for (const std::string& name : config_.copy()) {
      int idx = relation.ColumnIndex(name);
      if (idx < 0) {
        return absl::FailedPreconditionError(
            absl::StrCat(path_, ".copy: source column '", name, "' does not exist in ", relation.QualifiedName()));
      }
      if (!relation.columns[idx].part_of_key && relation.replica_identity != 'f') {
        // A delete carries only the old key: other columns would be logged as NULL.
        return absl::FailedPreconditionError(absl::StrCat(path_, ".copy: ", name, " is not part of ",
                                                          relation.QualifiedName(),
                                                          "'s replica identity, so deletes could not log it"));
      }
      copied.push_back(idx);
    }
    // One shape: upsert keyed by lsn. The sink prepares it once and batches rows.
    OpShape shape;
    shape.kind = OpKind::kUpsert;
    shape.target = common_.target();
    shape.table = config_.table();
    shape.source_table = relation.QualifiedName();
    shape.id = NextOpShapeId();
    shape.values.push_back({"lsn", 0, "", {}, "computed: the change's LSN", "text"});
    shape.values.push_back({"operation", 1, "", {}, "computed: insert, update or delete", "text"});
    for (size_t i = 0; i < copied.size(); ++i) {
      shape.values.push_back({config_.copy(i), static_cast<int>(2 + i), "", {}, config_.copy(i), ""});
    }
    shape.key = {0};
    shape.num_params = static_cast<int>(shape.values.size());
    return std::make_unique<BoundChangeLog>(std::move(shape), std::move(copied));
  }

 private:
  std::string path_;
  v1::Mapping common_;
  ChangeLogConfig config_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MappingModule>> Create(const ChangeLogConfig& config, const MappingContext& context) {
  const MappingInfo& mapping = context.self;
  std::vector<std::string> problems;
  ChangeLogConfig cfg = config;
  if (!problems.empty()) return ConfigProblems(problems);
  return std::make_unique<ChangeLogModule>(mapping.path, mapping.common, std::move(cfg));
}

}  // namespace walshift::transforms::change_log
