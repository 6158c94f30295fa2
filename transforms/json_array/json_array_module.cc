#include "transforms/json_array/json_array_module.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/core/status_macros.h"
#include "transforms/columns/columns_module.h"
#include "transforms/json_array/json_array.pb.h"

namespace walshift::transforms::json_array {
namespace {

using EmitFn = std::function<absl::Status(const TargetOp&)>;
using columns::ColumnSource;

// Where a parameter comes from: a source column or a constant.
struct Slot {
  int source_column = -1;
  const std::string* constant = nullptr;
};

class BoundJsonArray : public BoundMapping {
 public:
  BoundJsonArray(OpShape upsert, OpShape moving, std::vector<Slot> upsert_slots, OpShape remove,
                 std::vector<Slot> remove_slots)
      : upsert_(std::move(upsert)),
        moving_(std::move(moving)),
        upsert_slots_(std::move(upsert_slots)),
        remove_(std::move(remove)),
        remove_slots_(std::move(remove_slots)) {
    params_.resize(std::max(upsert_slots_.size(), remove_slots_.size()));
  }

  absl::Status Map(const RowChange& change, const EmitFn& emit) const override {
    switch (change.kind) {
      case ChangeKind::kDelete:
        return Emit(remove_, remove_slots_, change, *change.old_tuple, emit);
      case ChangeKind::kUpdate:  // may have moved it to another parent
        // The child's key changed: the element under its old key goes first.
        if (change.old_tuple != nullptr && KeyChanged(*change.old_tuple, *change.new_tuple)) {
          RETURN_IF_ERROR(Emit(remove_, remove_slots_, change, *change.old_tuple, emit));
        }
        return Emit(moving_, upsert_slots_, change, *change.new_tuple, emit);
      default:
        return Emit(upsert_, upsert_slots_, change, *change.new_tuple, emit);
    }
  }

  absl::Status MapTruncate(Lsn, const EmitFn&) const override {
    // Emptying the parents' arrays is not the same as deleting them; keep them as they are.
    return absl::OkStatus();
  }

  std::vector<const OpShape*> shapes() const override { return {&upsert_, &moving_, &remove_}; }
  // An element is rebuilt from every field on each update.
  bool writes_whole_rows() const override { return true; }

 private:
  bool KeyChanged(const Tuple& old_row, const Tuple& new_row) const {
    for (const Slot& s : remove_slots_) {
      if (s.source_column < 0) continue;
      const Datum& a = old_row[s.source_column];
      const Datum& b = new_row[s.source_column];
      if (a.is_unchanged_toast() || b.is_unchanged_toast()) continue;
      if (a.is_null() != b.is_null() || (!a.is_null() && a.view() != b.view())) return true;
    }
    return false;
  }

  absl::Status Emit(const OpShape& shape, const std::vector<Slot>& slots, const RowChange& change, const Tuple& row,
                    const EmitFn& emit) const {
    for (size_t i = 0; i < slots.size(); ++i) {
      const Slot& s = slots[i];
      if (s.constant != nullptr) {
        params_[i] = Datum{DatumKind::kText, static_cast<uint32_t>(s.constant->size()), s.constant->c_str()};
        continue;
      }
      const Datum* d = &row[s.source_column];
      if (d->is_unchanged_toast() && change.old_tuple != nullptr && change.old_tuple_kind == 'O')
        d = &(*change.old_tuple)[s.source_column];
      if (d->is_unchanged_toast()) {
        return absl::DataLossError(
            absl::StrCat("update of ", change.relation->QualifiedName(), " at LSN ", FormatLsn(change.lsn), ": ",
                         change.relation->columns[s.source_column].name,
                         " arrived as an unchanged TOAST value, which a JSON element must carry; set REPLICA "
                         "IDENTITY FULL on the source table"));
      }
      params_[i] = *d;
    }
    TargetOp op;
    op.shape = &shape;
    op.params = params_.data();
    op.lsn = change.lsn;
    return emit(op);
  }

  OpShape upsert_;
  OpShape moving_;
  std::vector<Slot> upsert_slots_;
  OpShape remove_;
  std::vector<Slot> remove_slots_;
  mutable std::vector<Datum> params_;
};

}  // namespace

namespace {

class JsonArrayModule : public MappingModule {
 public:
  JsonArrayModule(std::string path, v1::Mapping common, JsonArrayConfig config)
      : path_(std::move(path)), common_(std::move(common)), config_(std::move(config)) {}

  const std::string& source_table() const override { return common_.source(); }
  const std::string& target() const override { return common_.target(); }

  std::vector<std::string> target_tables() const override { return {ParentTable()}; }
  absl::Status CanOwn(const std::string&) const override {
    return absl::FailedPreconditionError("a json_array child does not own its parent row");
  }
  std::string ParentTable() const { return QualifiedTableName(config_.table()); }

  std::optional<Owned> owned() const override {
    if (config_.owner().empty()) return std::nullopt;
    Owned o;
    o.owner = QualifiedTableName(config_.owner());
    o.table = ParentTable();
    for (const auto& [target_col, source_col] : config_.parent_key()) o.key.emplace_back(target_col, source_col);
    return o;
  }

  absl::StatusOr<std::unique_ptr<BoundMapping>> Bind(const SourceRelation& relation,
                                                     SchemaInspector& inspector) const override {
    ASSIGN_OR_RETURN(SourceTableInfo info, inspector.Describe(relation, common_.target()));
    const bool full = relation.replica_identity == 'f';
    // Element keys come from the child's key, so a delete (which carries only the key) finds it.
    for (const std::string& k : config_.element_key()) {
      ASSIGN_OR_RETURN(int s, SourceColumn(relation, config_.element().at(k).column(), absl::StrCat("element.", k)));
      if (!full && !relation.columns[s].part_of_key) {
        return absl::FailedPreconditionError(
            absl::StrCat(path_, ".element_key: ", k, " comes from ", relation.columns[s].name,
                         ", which is not part of ", relation.QualifiedName(),
                         "'s replica identity; a delete could not find the element. Use the child's primary "
                         "key, or set REPLICA IDENTITY FULL"));
      }
    }
    // And they identify a child across every parent: the whole key, or one child's delete (or
    // move) would take the elements of its siblings elsewhere with it.
    std::vector<std::string> uncovered;
    for (size_t c = 0; c < relation.columns.size(); ++c) {
      const std::string& name = relation.columns[c].name;
      bool key = full ? std::find(info.primary_key.begin(), info.primary_key.end(), name) != info.primary_key.end()
                      : relation.columns[c].part_of_key;
      if (!key) continue;
      bool covered = false;
      for (const std::string& k : config_.element_key()) covered |= config_.element().at(k).column() == name;
      if (!covered) uncovered.push_back(name);
    }
    if (!uncovered.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          path_, ".element_key: it must identify a child of ", relation.QualifiedName(),
          " across all parents, but leaves out its key column(s) ", absl::StrJoin(uncovered, ", "),
          ": a delete of one child would remove its siblings' elements from other parents. Add element fields "
          "copied from them to element_key"));
    }
    std::string table = ParentTable();
    auto type_of = [&](int s) {
      const SourceColumnInfo* ci = info.Find(relation.columns[s].name);
      return ci == nullptr || !ci->in_target ? std::string("text") : ci->type;
    };
    std::vector<std::string> names;
    for (const auto& c : relation.columns) names.push_back(c.name);
    // Each shape binds its own slots: a source column (once each) or a constant.
    struct Slots {
      std::vector<Slot> slots;
      std::vector<int> slot_of;
    };
    auto slot = [&](Slots& p, int s) {
      if (p.slot_of.empty()) p.slot_of.assign(relation.columns.size(), -1);
      if (p.slot_of[s] < 0) {
        p.slot_of[s] = static_cast<int>(p.slots.size());
        p.slots.push_back({s, nullptr});
      }
      return p.slot_of[s];
    };
    auto is_key = [&](const std::string& f) {
      return std::find(config_.element_key().begin(), config_.element_key().end(), f) != config_.element_key().end();
    };
    // The element's fields (all, or only the element key) in name order.
    auto element = [&](OpShape* shape, Slots& p, bool key_only) -> absl::Status {
      std::vector<std::string> fields;
      for (const auto& [f, _] : config_.element())
        if (!key_only || is_key(f)) fields.push_back(f);
      std::sort(fields.begin(), fields.end());
      for (const std::string& f : fields) {
        const ColumnSource& src = config_.element().at(f);
        TargetValue v;
        v.column = f;
        switch (src.value_case()) {
          case ColumnSource::kColumn: {
            ASSIGN_OR_RETURN(int s, SourceColumn(relation, src.column(), absl::StrCat("element.", f)));
            v.param = slot(p, s);
            v.type = type_of(s);
            v.origin = src.column();
            break;
          }
          case ColumnSource::kConst:
            v.param = static_cast<int>(p.slots.size());
            p.slots.push_back({-1, &src.const_()});
            v.type = "text";
            v.origin = "const";
            break;
          case ColumnSource::kSql:
            v.sql = src.sql();
            v.origin = absl::StrCat("sql: ", src.sql());
            for (const std::string& in : columns::ExpressionInputs(src.sql(), names)) {
              int s = relation.ColumnIndex(in);
              v.sql_inputs.push_back(static_cast<int>(shape->inputs.size()));
              shape->inputs.push_back({in, type_of(s), slot(p, s)});
            }
            break;
          default:
            return absl::FailedPreconditionError(absl::StrCat(path_, ".element.", f, ": no value"));
        }
        if (is_key(f)) shape->array.element_key.push_back(static_cast<int>(shape->array.element.size()));
        shape->array.element.push_back(std::move(v));
      }
      return absl::OkStatus();
    };
    auto init = [&](OpShape* s, OpKind kind) {
      s->kind = kind;
      s->target = common_.target();
      s->table = table;
      s->source_table = relation.QualifiedName();
      s->id = NextOpShapeId();
      s->array.column = config_.column();
      s->array.owned = !config_.owner().empty();
      s->array.sort_by = config_.sort_by();
      for (const auto& [target_col, _] : config_.parent_key()) s->array.parent_columns.push_back(target_col);
    };
    Slots up, gone;
    OpShape upsert, remove;
    init(&upsert, OpKind::kArrayUpsert);
    for (const auto& [target_col, source_col] : config_.parent_key()) {
      ASSIGN_OR_RETURN(int s, SourceColumn(relation, source_col, absl::StrCat("parent_key.", target_col)));
      TargetValue v;
      v.column = target_col;
      v.param = slot(up, s);
      v.type = type_of(s);
      v.origin = source_col;
      upsert.key.push_back(static_cast<int>(upsert.values.size()));
      upsert.values.push_back(std::move(v));
    }
    RETURN_IF_ERROR(element(&upsert, up, false));
    upsert.num_params = static_cast<int>(up.slots.size());
    // An update may have moved the element to another parent: it leaves every other parent.
    OpShape moving = upsert;
    moving.id = NextOpShapeId();
    moving.array.leave_others = true;
    init(&remove, OpKind::kArrayRemove);
    RETURN_IF_ERROR(element(&remove, gone, true));
    remove.num_params = static_cast<int>(gone.slots.size());
    return std::make_unique<BoundJsonArray>(std::move(upsert), std::move(moving), std::move(up.slots),
                                            std::move(remove), std::move(gone.slots));
  }

 private:
  absl::StatusOr<int> SourceColumn(const SourceRelation& relation, const std::string& name,
                                   const std::string& where) const {
    int idx = relation.ColumnIndex(name);
    if (idx < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(path_, ".", where, ": source column '", name, "' does not exist in ", relation.QualifiedName()));
    }
    return idx;
  }

  std::string path_;
  v1::Mapping common_;
  JsonArrayConfig config_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MappingModule>> Create(const JsonArrayConfig& config, const MappingContext& context) {
  const MappingInfo& mapping = context.self;
  std::vector<std::string> problems;
  JsonArrayConfig cfg = config;
  for (int i = 0; i < cfg.element_key_size(); ++i) {
    auto it = cfg.element().find(cfg.element_key(i));
    if (it == cfg.element().end() || it->second.value_case() != ColumnSource::kColumn) {
      problems.push_back(absl::StrCat(mapping.path, ".element_key[", i, "]: '", cfg.element_key(i),
                                      "' must be an element field copied from a source column"));
    }
  }
  if (!cfg.sort_by().empty() && !cfg.element().contains(cfg.sort_by())) {
    problems.push_back(absl::StrCat(mapping.path, ".sort_by: '", cfg.sort_by(), "' is not an element field"));
  }
  if (!problems.empty()) return ConfigProblems(problems);
  return std::make_unique<JsonArrayModule>(mapping.path, mapping.common, std::move(cfg));
}

}  // namespace walshift::transforms::json_array
