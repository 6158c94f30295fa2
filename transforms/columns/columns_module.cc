#include "transforms/columns/columns_module.h"

#include <algorithm>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "daemon/core/status_macros.h"

namespace walshift::transforms::columns {
namespace {

using EmitFn = std::function<absl::Status(const TargetOp&)>;

bool IsIdentStart(char c) { return absl::ascii_isalpha(c) || c == '_' || (c & 0x80); }
bool IsIdentChar(char c) { return absl::ascii_isalnum(c) || c == '_' || c == '$' || (c & 0x80); }

// One target column and where its value comes from, resolved against a relation.
struct ValueSpec {
  enum Kind { kColumn, kConst, kSql } kind = kColumn;
  std::string target_column;
  int source_column = -1;   // kColumn
  std::string text;         // kConst: the literal; kSql: the expression
  std::vector<int> inputs;  // kSql: source columns it names
  std::string origin;
};

// Where a parameter slot's value comes from.
struct Slot {
  int source_column = -1;  // or a constant (neither: NULL):
  const std::string* constant = nullptr;
  bool old = false;  // the column's value in the old tuple (a key change's old key)
};

class BoundColumns : public BoundMapping {
 public:
  absl::Status Map(const RowChange& change, const EmitFn& emit) const override {
    const Tuple* old_tuple = change.old_tuple;
    if (insert_only_ && change.kind != ChangeKind::kInsert) {
      return absl::FailedPreconditionError(absl::StrCat(
          change.kind == ChangeKind::kUpdate ? "update" : "delete", " of ", upsert_.source_table, " at LSN ",
          FormatLsn(change.lsn),
          ": the table has no primary key or replica identity, so walshift can apply only "
          "its inserts (a publication that does not publish updates and deletes sent this one?); add a primary key, "
          "or ALTER TABLE ",
          upsert_.source_table, " REPLICA IDENTITY FULL and give key:"));
    }
    switch (change.kind) {
      case ChangeKind::kInsert:
        RETURN_IF_ERROR(CheckKeyPresent(*change.new_tuple, change));
        return Emit(upsert_, upsert_slots_, *change.new_tuple, change.lsn, emit, /*new_row=*/!has_filter_);
      case ChangeKind::kUpdate: {
        const Tuple* new_tuple = change.new_tuple;
        if (old_tuple != nullptr && change.old_tuple_kind == 'O') {
          // REPLICA IDENTITY FULL: the old row has every value; unchanged TOAST comes from it.
          merged_ = *new_tuple;
          for (size_t i = 0; i < merged_.size() && i < old_tuple->size(); ++i)
            if (merged_[i].is_unchanged_toast()) merged_[i] = (*old_tuple)[i];
          new_tuple = &merged_;
        }
        RETURN_IF_ERROR(CheckKeyPresent(*new_tuple, change));
        if (old_tuple != nullptr && KeyChanged(*old_tuple, *new_tuple)) {
          if (shared_rows_) {
            // Other sources share the row: this source's columns leave the old key's row.
            RETURN_IF_ERROR(Emit(leave_, leave_slots_, *old_tuple, change.lsn, emit));
          } else if (can_move_) {
            // The target row moves to its new key and keeps what the change did not carry (when
            // the new key is free; a key swap inside a transaction finds it taken); whatever is
            // left under the old key goes, and the upsert below writes the new key's row.
            RETURN_IF_ERROR(Emit(move_, move_slots_, *new_tuple, change.lsn, emit, false, old_tuple));
            RETURN_IF_ERROR(Emit(delete_, delete_slots_, *old_tuple, change.lsn, emit));
          } else {
            RETURN_IF_ERROR(Emit(delete_, delete_slots_, *old_tuple, change.lsn, emit));
          }
        }
        if (has_filter_) {
          for (int in : filter_input_columns_) {
            // The pipeline completes such an update from the source first (writes_whole_rows).
            if ((*new_tuple)[in].is_unchanged_toast()) {
              return absl::DataLossError(
                  absl::StrCat("update of ", upsert_.source_table, " at LSN ", FormatLsn(change.lsn),
                               ": the filter reads ", change.relation->columns[in].name,
                               ", which arrived as an unchanged TOAST value; set REPLICA IDENTITY FULL on the "
                               "source table so the old value is sent"));
            }
          }
          // Out of the filter now: delete; in it: the conditional upsert below writes it.
          RETURN_IF_ERROR(Emit(filtered_delete_, filtered_delete_slots_, *new_tuple, change.lsn, emit));
        }
        return Emit(upsert_, upsert_slots_, *new_tuple, change.lsn, emit);
      }
      case ChangeKind::kDelete:
        if (old_tuple == nullptr) {
          return absl::DataLossError(absl::StrCat("delete from ", upsert_.source_table, " at LSN ",
                                                  FormatLsn(change.lsn), " carries no old key"));
        }
        return Emit(delete_, delete_slots_, *old_tuple, change.lsn, emit);
    }
    return absl::OkStatus();
  }

  absl::Status MapTruncate(Lsn lsn, const EmitFn& emit) const override {
    if (!truncate_apply_) return absl::OkStatus();
    TargetOp op;
    op.shape = update_only_ ? &clear_all_ : &truncate_;
    op.lsn = lsn;
    return emit(op);
  }

  bool writes_whole_rows() const override { return whole_rows_; }

  std::vector<std::pair<std::string, int>> RowKey(const std::string& table) const override {
    std::vector<std::pair<std::string, int>> out;
    if (table != upsert_.table) return out;
    for (int k : upsert_.key) {
      if (values_[k].kind != ValueSpec::kColumn) return {};
      out.emplace_back(values_[k].target_column, values_[k].source_column);
    }
    return out;
  }

  std::vector<const OpShape*> shapes() const override {
    if (insert_only_) {
      std::vector<const OpShape*> out = {&upsert_};
      if (truncate_apply_) out.push_back(&truncate_);
      return out;
    }
    std::vector<const OpShape*> out = {&upsert_, &delete_};
    if (can_move_ && !shared_rows_) out.push_back(&move_);
    if (shared_rows_) out.push_back(&leave_);
    if (has_filter_) out.push_back(&filtered_delete_);
    if (truncate_apply_) out.push_back(update_only_ ? &clear_all_ : &truncate_);
    return out;
  }

  // Builds shapes. Returns kFailedPrecondition naming the mapping, table and column.
  absl::Status Init(const std::string& where, const std::string& target, const std::string& table,
                    const SourceRelation& relation, const SourceTableInfo& info, std::vector<ValueSpec> values,
                    std::vector<std::string> key, bool truncate_apply, const std::string& filter,
                    const std::map<std::string, std::string>& target_types, const BindOptions& options) {
    values_ = std::move(values);
    truncate_apply_ = truncate_apply;
    shared_rows_ = options.shared_rows;
    const bool full = relation.replica_identity == 'f';

    // No primary key and no replica identity: the source refuses updates and deletes of such a
    // table while a publication publishes them, so only its inserts (and truncates) arrive. A
    // configured key makes them upserts; without one they are plain inserts.
    insert_only_ = !full && std::none_of(relation.columns.begin(), relation.columns.end(),
                                         [](const SourceColumn& c) { return c.part_of_key; });
    if (insert_only_ && (!filter.empty() || options.rows_reenter || options.shared_rows || options.update_only)) {
      return absl::FailedPreconditionError(absl::StrCat(
          where, ": ", relation.QualifiedName(),
          " has no primary key and no replica identity, so only its "
          "inserts are replicated; this mapping needs its updates and deletes. Add a primary key, or ALTER "
          "TABLE ",
          relation.QualifiedName(), " REPLICA IDENTITY FULL and give key:"));
    }
    // Key: configured, or the columns copied from the source's replica identity columns.
    std::vector<int> key_values;
    if (key.empty()) {
      // pgoutput flags every column under REPLICA IDENTITY FULL: the primary key is the key.
      auto is_source_key = [&](int s) {
        if (!full) return relation.columns[s].part_of_key;
        return std::find(info.primary_key.begin(), info.primary_key.end(), relation.columns[s].name) !=
               info.primary_key.end();
      };
      for (size_t i = 0; i < values_.size(); ++i) {
        const ValueSpec& v = values_[i];
        if (v.kind == ValueSpec::kColumn && is_source_key(v.source_column)) key_values.push_back(static_cast<int>(i));
      }
      size_t source_keys = 0;
      for (size_t s = 0; s < relation.columns.size(); ++s) source_keys += is_source_key(static_cast<int>(s));
      if (insert_only_) {
        // Inserted as they are, without conflict handling.
      } else if (source_keys == 0 || key_values.size() != source_keys) {
        return absl::FailedPreconditionError(absl::StrCat(
            where, ": cannot derive the target key: ",
            source_keys == 0 ? absl::StrCat(relation.QualifiedName(), " has no primary key or replica identity index")
                             : "not every source key column is copied to a target column",
            "; give key: [target columns covered by a unique constraint]"));
      }
    } else {
      for (const std::string& k : key) {
        auto it =
            std::find_if(values_.begin(), values_.end(), [&](const ValueSpec& v) { return v.target_column == k; });
        if (it == values_.end()) {
          return absl::FailedPreconditionError(
              absl::StrCat(where, ".key: '", k, "' is not one of the mapped target columns of ", table));
        }
        key_values.push_back(static_cast<int>(it - values_.begin()));
      }
    }

    // A delete (and a key change) only has the old key: every key value must come from it.
    for (int kv : insert_only_ ? std::vector<int>{} : key_values) {
      const ValueSpec& v = values_[kv];
      std::vector<int> sources = v.kind == ValueSpec::kColumn ? std::vector<int>{v.source_column} : v.inputs;
      for (int s : sources) {
        if (!full && !relation.columns[s].part_of_key) {
          return absl::FailedPreconditionError(
              absl::StrCat(where, ": key column ", v.target_column, " of ", table, " comes from ",
                           relation.QualifiedName(), ".", relation.columns[s].name,
                           ", which is not part of the source's replica identity; deletes would not find the "
                           "row. Key the target by the source's primary key columns, or set REPLICA IDENTITY "
                           "FULL on ",
                           relation.QualifiedName()));
        }
        key_source_columns_.push_back(s);
      }
    }

    // An expression mixing a TOAST-able input with other inputs cannot be evaluated when only
    // some inputs arrive (unchanged TOAST values are not sent) unless the old row is sent too.
    for (const ValueSpec& v : values_) {
      if (v.kind != ValueSpec::kSql || v.inputs.size() < 2 || full) continue;
      for (int s : v.inputs) {
        const SourceColumnInfo* ci = info.Find(relation.columns[s].name);
        if (ci != nullptr && ci->toastable) {
          return absl::FailedPreconditionError(
              absl::StrCat(where, ".columns.", v.target_column, ": the sql expression reads ", relation.columns[s].name,
                           " (", ci->type, ", TOAST-able) together with other columns; an update that leaves a large ",
                           relation.columns[s].name,
                           " unchanged does not carry its value. Set REPLICA "
                           "IDENTITY FULL on ",
                           relation.QualifiedName(), " so the old value is sent, or split the expression"));
        }
      }
    }

    // The filter's inputs. One that an update leaves out (an unchanged out-of-line TOAST
    // value) stops the pipeline with a clear error unless REPLICA IDENTITY FULL supplies it.
    std::vector<int> filter_inputs;
    if (!filter.empty()) {
      std::vector<std::string> names;
      for (const auto& c : relation.columns) names.push_back(c.name);
      for (const std::string& in : ExpressionInputs(filter, names)) {
        filter_inputs.push_back(relation.ColumnIndex(in));
      }
    }
    if (!filter.empty()) {
      // Conditional statements cast each value to its column's type.
      for (const ValueSpec& v : values_) {
        if (!target_types.count(v.target_column)) {
          return absl::FailedPreconditionError(
              absl::StrCat(where, ": target column ", v.target_column, " does not exist in ", table));
        }
      }
    }

    // A row that comes back (filter true again, soft delete undone) is written whole, but the
    // update that brings it back carries no unchanged TOAST value: the pipeline reads those from
    // the source first (writes_whole_rows) unless REPLICA IDENTITY FULL's old row has them.
    whole_rows_ = !filter.empty() || options.rows_reenter;
    auto type_of = [&](int s) {
      const SourceColumnInfo* ci = info.Find(relation.columns[s].name);
      if (ci == nullptr || !ci->in_target) return std::string("text");
      return ci->type;
    };

    auto init_shape = [&](OpShape* shape, OpKind kind) {
      shape->kind = kind;
      shape->target = target;
      shape->table = table;
      shape->source_table = relation.QualifiedName();
      shape->id = NextOpShapeId();
    };
    // The index of source column `s` among the shape's named inputs, added (with its
    // parameter slot) on first use.
    auto input_index = [&](OpShape* shape, std::vector<Slot>* slots, int s) {
      const std::string& name = relation.columns[s].name;
      auto it = std::find_if(shape->inputs.begin(), shape->inputs.end(),
                             [&](const ExprInput& in) { return in.name == name; });
      if (it != shape->inputs.end()) return static_cast<int>(it - shape->inputs.begin());
      shape->inputs.push_back({name, type_of(s), static_cast<int>(slots->size())});
      slots->push_back({s, nullptr});
      return static_cast<int>(shape->inputs.size() - 1);
    };
    auto add_values = [&](OpShape* shape, std::vector<Slot>* slots, const std::vector<int>& which) {
      for (int idx : which) {
        const ValueSpec& v = values_[idx];
        TargetValue tv;
        tv.column = v.target_column;
        tv.origin = v.origin;
        if (v.kind == ValueSpec::kSql) {
          tv.sql = v.text;
          for (int s : v.inputs) tv.sql_inputs.push_back(input_index(shape, slots, s));
        } else {
          tv.param = static_cast<int>(slots->size());
          tv.type = v.kind == ValueSpec::kConst ? std::string("text") : type_of(v.source_column);
          slots->push_back(v.kind == ValueSpec::kConst ? Slot{-1, &v.text} : Slot{v.source_column, nullptr});
        }
        shape->values.push_back(std::move(tv));
      }
      shape->num_params = static_cast<int>(slots->size());
    };

    // A condition's inputs join the shape's named inputs.
    auto add_condition = [&](OpShape* shape, std::vector<Slot>* slots, const std::string& condition,
                             const std::vector<int>& inputs) {
      if (condition.empty()) return;
      shape->condition = condition;
      for (int s : inputs) shape->condition_inputs.push_back(input_index(shape, slots, s));
      for (const TargetValue& v : shape->values) shape->casts.push_back(target_types.at(v.column));
      shape->num_params = static_cast<int>(slots->size());
    };
    init_shape(&upsert_, options.update_only ? OpKind::kUpdateOnly : OpKind::kUpsert);
    std::vector<int> all(values_.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
    add_values(&upsert_, &upsert_slots_, all);
    upsert_.key = key_values;
    add_condition(&upsert_, &upsert_slots_, filter, filter_inputs);

    init_shape(&delete_, OpKind::kDelete);
    add_values(&delete_, &delete_slots_, key_values);
    for (size_t i = 0; i < key_values.size(); ++i) delete_.key.push_back(static_cast<int>(i));

    // A key change: UPDATE ... SET every value WHERE key = the old key. Only for keys copied
    // from source columns (an expression key would need its inputs from two tuples).
    can_move_ = !key_values.empty() && std::all_of(key_values.begin(), key_values.end(),
                                                   [&](int k) { return values_[k].kind == ValueSpec::kColumn; });
    if (can_move_) {
      init_shape(&move_, OpKind::kUpdateOnly);
      add_values(&move_, &move_slots_, all);
      move_.key = key_values;  // the new key (`all` keeps the values' order)
      for (int k : key_values) {
        TargetValue m;
        m.column = values_[k].target_column;
        m.origin = values_[k].origin;
        m.param = static_cast<int>(move_slots_.size());
        move_slots_.push_back({values_[k].source_column, nullptr, /*old=*/true});
        move_.match.push_back(std::move(m));
      }
      move_.num_params = static_cast<int>(move_slots_.size());
    }

    if (!filter.empty()) {
      // Deletes the row an update takes out of the filter.
      init_shape(&filtered_delete_, OpKind::kDelete);
      add_values(&filtered_delete_, &filtered_delete_slots_, key_values);
      for (size_t i = 0; i < key_values.size(); ++i) filtered_delete_.key.push_back(static_cast<int>(i));
      add_condition(&filtered_delete_, &filtered_delete_slots_, filter, filter_inputs);
      has_filter_ = true;
      filter_input_columns_ = filter_inputs;
    }

    init_shape(&truncate_, OpKind::kTruncate);
    update_only_ = options.update_only;
    if (shared_rows_) {
      // A key change of one source of shared rows: its columns leave the old key's row.
      init_shape(&leave_, OpKind::kUpdateOnly);
      add_values(&leave_, &leave_slots_, key_values);
      for (size_t i = 0; i < key_values.size(); ++i) leave_.key.push_back(static_cast<int>(i));
      for (size_t i = 0; i < values_.size(); ++i) {
        if (std::find(key_values.begin(), key_values.end(), static_cast<int>(i)) != key_values.end()) continue;
        leave_.values.push_back({values_[i].target_column, static_cast<int>(leave_slots_.size()), "", {}, "NULL", ""});
        leave_slots_.push_back({-1, nullptr});  // NULL
      }
      leave_.num_params = static_cast<int>(leave_slots_.size());
    }
    if (update_only_) {
      // A TRUNCATE of a source whose rows another mapping owns empties this source's columns.
      init_shape(&clear_all_, OpKind::kClearColumns);
      for (size_t i = 0; i < values_.size(); ++i) {
        if (std::find(key_values.begin(), key_values.end(), static_cast<int>(i)) != key_values.end()) continue;
        TargetValue tv;
        tv.column = values_[i].target_column;
        tv.origin = "NULL";
        clear_all_.values.push_back(std::move(tv));
      }
    }
    params_.resize(std::max(
        {upsert_.num_params, delete_.num_params, filtered_delete_.num_params, move_.num_params, leave_.num_params}));
    return absl::OkStatus();
  }

 private:
  absl::Status Emit(const OpShape& shape, const std::vector<Slot>& slots, const Tuple& tuple, Lsn lsn,
                    const EmitFn& emit, bool new_row = false, const Tuple* old_tuple = nullptr) const {
    for (size_t i = 0; i < slots.size(); ++i) {
      const Slot& s = slots[i];
      if (s.constant != nullptr) {
        params_[i] = Datum{DatumKind::kText, static_cast<uint32_t>(s.constant->size()), s.constant->c_str()};
      } else if (s.source_column < 0) {
        params_[i] = Datum{};  // NULL
      } else {
        params_[i] = s.old ? (*old_tuple)[s.source_column] : tuple[s.source_column];
      }
    }
    TargetOp op;
    op.shape = &shape;
    op.params = params_.data();
    op.lsn = lsn;
    op.new_row = new_row && !shared_rows_;
    return emit(op);
  }

  bool KeyChanged(const Tuple& old_tuple, const Tuple& new_tuple) const {
    for (int s : key_source_columns_) {
      const Datum& o = old_tuple[s];
      const Datum& n = new_tuple[s];
      if (n.is_unchanged_toast()) continue;
      if (o.kind != n.kind || o.view() != n.view()) return true;
    }
    return false;
  }

  absl::Status CheckKeyPresent(const Tuple& tuple, const RowChange& change) const {
    for (int s : key_source_columns_) {
      if (tuple[s].is_unchanged_toast()) {
        return absl::DataLossError(
            absl::StrCat("update of ", upsert_.source_table, " at LSN ", FormatLsn(change.lsn), ": key column ",
                         change.relation->columns[s].name,
                         " arrived as an unchanged TOAST value without its old value; set REPLICA IDENTITY "
                         "FULL on the source table"));
      }
    }
    return absl::OkStatus();
  }

  std::vector<ValueSpec> values_;
  OpShape upsert_, delete_, truncate_, filtered_delete_, move_, leave_, clear_all_;
  std::vector<Slot> upsert_slots_, delete_slots_, filtered_delete_slots_, move_slots_, leave_slots_;
  bool update_only_ = false;
  bool can_move_ = false;
  bool shared_rows_ = false;
  bool whole_rows_ = false;
  bool insert_only_ = false;  // no key: inserts only, without conflict handling
  bool has_filter_ = false;
  std::vector<int> filter_input_columns_;
  std::vector<int> key_source_columns_;
  bool truncate_apply_ = true;
  // Per-row scratch: a bound mapping is used by one pipeline thread only.
  mutable std::vector<Datum> params_;
  mutable Tuple merged_;
};

}  // namespace

std::vector<std::string> ExpressionInputs(absl::string_view sql, const std::vector<std::string>& candidates) {
  std::vector<std::string> out;
  auto add = [&](absl::string_view name, bool quoted) {
    for (const auto& c : candidates) {
      bool match = quoted ? c == name : absl::EqualsIgnoreCase(c, name);
      if (match && std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
    }
  };
  size_t i = 0, n = sql.size();
  auto prev_significant = [&](size_t pos) -> absl::string_view {
    size_t j = pos;
    while (j > 0 && absl::ascii_isspace(sql[j - 1])) --j;
    if (j >= 2 && sql[j - 1] == ':' && sql[j - 2] == ':') return "::";
    if (j >= 1 && sql[j - 1] == '.') return ".";
    return "";
  };
  auto next_is_paren = [&](size_t pos) {
    while (pos < n && absl::ascii_isspace(sql[pos])) ++pos;
    return pos < n && sql[pos] == '(';
  };
  while (i < n) {
    char c = sql[i];
    if (c == '\'') {  // string literal, '' escapes
      ++i;
      while (i < n) {
        if (sql[i] == '\'' && i + 1 < n && sql[i + 1] == '\'')
          i += 2;
        else if (sql[i] == '\'') {
          ++i;
          break;
        } else
          ++i;
      }
    } else if (c == '"') {
      size_t start = ++i;
      std::string name;
      while (i < n) {
        if (sql[i] == '"' && i + 1 < n && sql[i + 1] == '"') {
          name += '"';
          i += 2;
        } else if (sql[i] == '"')
          break;
        else
          name += sql[i++];
      }
      bool skip = !prev_significant(start - 1).empty();
      ++i;
      if (!skip && !next_is_paren(i)) add(name, true);
    } else if (c == '-' && i + 1 < n && sql[i + 1] == '-') {
      while (i < n && sql[i] != '\n') ++i;
    } else if (IsIdentStart(c)) {
      size_t start = i;
      while (i < n && IsIdentChar(sql[i])) ++i;
      if (i < n && sql[i] == '\'' && i - start == 1 && (c == 'E' || c == 'e')) continue;
      if (prev_significant(start).empty() && !next_is_paren(i)) add(sql.substr(start, i - start), false);
    } else if (absl::ascii_isdigit(c)) {
      while (i < n && (IsIdentChar(sql[i]) || sql[i] == '.')) ++i;
    } else {
      ++i;
    }
  }
  return out;
}

ColumnsModule::ColumnsModule(std::string path, v1::Mapping common, ColumnsConfig config)
    : path_(std::move(path)), common_(std::move(common)), config_(std::move(config)) {}

std::string TargetTable(const v1::Mapping& common, const ColumnsConfig& config) {
  std::string table = config.table().empty() ? common.source() : config.table();
  table = QualifiedTableName(table);
  return table;
}

absl::StatusOr<std::unique_ptr<BoundMapping>> ColumnsModule::Bind(const SourceRelation& relation,
                                                                  SchemaInspector& inspector) const {
  return BindColumns(path_, common_, config_, relation, inspector);
}

absl::StatusOr<std::unique_ptr<BoundMapping>> BindColumns(const std::string& path, const v1::Mapping& common,
                                                          const ColumnsConfig& config, const SourceRelation& relation,
                                                          SchemaInspector& inspector, const BindOptions& options) {
  const std::string table = TargetTable(common, config);
  std::string where = absl::StrCat(path, " (", common.source(), " -> ", table, ")");
  ASSIGN_OR_RETURN(SourceTableInfo info, inspector.Describe(relation, common.target()));

  std::vector<std::string> source_names;
  for (const auto& c : relation.columns) source_names.push_back(c.name);

  std::vector<ValueSpec> values;
  if (config.columns().empty()) {
    for (size_t i = 0; i < relation.columns.size(); ++i) {
      values.push_back(
          {ValueSpec::kColumn, relation.columns[i].name, static_cast<int>(i), "", {}, relation.columns[i].name});
    }
  } else {
    std::vector<std::string> targets;
    for (const auto& [name, _] : config.columns()) targets.push_back(name);
    std::sort(targets.begin(), targets.end());
    for (const std::string& name : targets) {
      const ColumnSource& src = config.columns().at(name);
      ValueSpec v;
      v.target_column = name;
      switch (src.value_case()) {
        case ColumnSource::kColumn: {
          int idx = relation.ColumnIndex(src.column());
          if (idx < 0) {
            return absl::FailedPreconditionError(
                absl::StrCat(where, ".columns.", name, ": source column '", src.column(), "' does not exist in ",
                             relation.QualifiedName(), " (it has: ", absl::StrJoin(source_names, ", "), ")"));
          }
          v.kind = ValueSpec::kColumn;
          v.source_column = idx;
          v.origin = src.column();
          break;
        }
        case ColumnSource::kConst:
          v.kind = ValueSpec::kConst;
          v.text = src.const_();
          v.origin = "const";
          break;
        case ColumnSource::kSql: {
          v.kind = ValueSpec::kSql;
          v.text = src.sql();
          v.origin = absl::StrCat("sql: ", src.sql());
          for (const std::string& in : ExpressionInputs(src.sql(), source_names))
            v.inputs.push_back(relation.ColumnIndex(in));
          break;
        }
        case ColumnSource::VALUE_NOT_SET:
          return absl::FailedPreconditionError(
              absl::StrCat(where, ".columns.", name, ": give a source column, const: or sql:"));
      }
      values.push_back(std::move(v));
    }
  }
  std::vector<std::string> key(config.key().begin(), config.key().end());
  std::map<std::string, std::string> target_types;
  if (!common.filter().empty()) {
    auto types = inspector.TargetColumnTypes(common.target(), table);
    if (!types.ok()) {
      return absl::Status(types.status().code(), absl::StrCat(where, ".filter: ", types.status().message()));
    }
    target_types = *std::move(types);
    if (target_types.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(where, ": target table ", table, " does not exist"));
    }
  }
  auto bound = std::make_unique<BoundColumns>();
  RETURN_IF_ERROR(bound->Init(where, common.target(), table, relation, info, std::move(values), std::move(key),
                              common.truncate() == v1::TRUNCATE_APPLY, common.filter(), target_types, options));
  return bound;
}

absl::StatusOr<std::unique_ptr<MappingModule>> Create(const ColumnsConfig& config, const MappingContext& context) {
  const MappingInfo& mapping = context.self;
  std::vector<std::string> problems;
  ColumnsConfig cfg = config;
  for (const auto& [name, src] : cfg.columns()) {
    std::string p = absl::StrCat(mapping.path, ".columns.", name);
    if (src.value_case() == ColumnSource::VALUE_NOT_SET)
      problems.push_back(absl::StrCat(p, ": give a source column, {const: ...} or {sql: ...}"));
    if (src.value_case() == ColumnSource::kSql && absl::StripAsciiWhitespace(src.sql()).empty())
      problems.push_back(absl::StrCat(p, ".sql: empty expression"));
    if (src.value_case() == ColumnSource::kColumn && src.column().empty())
      problems.push_back(absl::StrCat(p, ": empty source column name"));
  }
  for (int i = 0; i < cfg.key_size(); ++i) {
    if (!cfg.columns().empty() && !cfg.columns().contains(cfg.key(i))) {
      problems.push_back(
          absl::StrCat(mapping.path, ".key[", i, "]: '", cfg.key(i), "' is not one of the mapped target columns"));
    }
  }
  if (!problems.empty()) return ConfigProblems(problems);
  return std::make_unique<ColumnsModule>(mapping.path, mapping.common, std::move(cfg));
}

}  // namespace walshift::transforms::columns
