#include "transforms/json_array/json_array_module.h"

#include <algorithm>
#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "spdlog/spdlog.h"
#include "daemon/config/yaml_proto.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
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
      : upsert_(std::move(upsert)), moving_(std::move(moving)), upsert_slots_(std::move(upsert_slots)),
        remove_(std::move(remove)), remove_slots_(std::move(remove_slots)) {
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

  absl::Status Emit(const OpShape& shape, const std::vector<Slot>& slots, const RowChange& change,
                    const Tuple& row, const EmitFn& emit) const {
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
        return absl::DataLossError(absl::StrCat(
            "update of ", change.relation->QualifiedName(), " at LSN ", FormatLsn(change.lsn), ": ",
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
  std::string ParentTable() const {
    return config_.table().find('.') == std::string::npos ? "public." + config_.table() : config_.table();
  }

  std::optional<Owned> owned() const override {
    if (config_.owner().empty()) return std::nullopt;
    Owned o;
    o.owner = config_.owner().find('.') == std::string::npos ? "public." + config_.owner() : config_.owner();
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
        return absl::FailedPreconditionError(absl::StrCat(
            path_, ".element_key: ", k, " comes from ", relation.columns[s].name,
            ", which is not part of ", relation.QualifiedName(),
            "'s replica identity; a delete could not find the element. Use the child's primary "
            "key, or set REPLICA IDENTITY FULL"));
      }
    }
    std::string table = ParentTable();
    if (!warned_.exchange(true)) WarnAboutIndex(inspector, table, pg::QuoteIdent(config_.column()));
    ASSIGN_OR_RETURN(Statements one, Render(relation, info, table, /*batch=*/false));
    ASSIGN_OR_RETURN(Statements run, Render(relation, info, table, /*batch=*/true));
    auto init = [&](OpShape* s, std::string statement, std::vector<std::string> batch, const std::vector<Slot>& slots) {
      s->target = common_.target();
      s->table = table;
      s->source_table = relation.QualifiedName();
      s->id = NextOpShapeId();
      s->kind = OpKind::kUpdateOnly;  // module-rendered
      s->statement = std::move(statement);
      s->batch_statements = std::move(batch);
      s->num_params = static_cast<int>(slots.size());
      for (const Slot& slot : slots) {
        s->param_names.push_back(slot.source_column >= 0 ? relation.columns[slot.source_column].name : "(constant)");
        // The child's row is named by the columns its element key comes from.
        for (const std::string& k : config_.element_key()) {
          if (slot.source_column >= 0 && relation.columns[slot.source_column].name == config_.element().at(k).column())
            s->key_params.push_back(static_cast<int>(s->param_names.size()) - 1);
        }
      }
    };
    OpShape upsert, moving, remove;
    init(&upsert, one.upsert, {run.upsert}, one.upsert_slots);
    upsert.verify = one.verify;
    upsert.verify_batch = run.verify;
    // An update may have moved the element to another parent: it leaves every other parent
    // first (a run does that for all its elements before adding them).
    init(&moving, one.moving, {run.leave_others, run.upsert}, one.upsert_slots);
    moving.verify = one.verify;
    moving.verify_batch = run.verify;
    init(&remove, one.remove, {run.remove}, one.remove_slots);
    return std::make_unique<BoundJsonArray>(std::move(upsert), std::move(moving), std::move(one.upsert_slots),
                                            std::move(remove), std::move(one.remove_slots));
  }

 private:
  // The statements of one change ($n parameters) or of a run of changes (`batch`: every
  // parameter a text[], read as the columns p1..pN of the rows `i`).
  struct Statements {
    std::string upsert, moving, leave_others, remove, verify;
    std::vector<Slot> upsert_slots, remove_slots;
  };

  absl::StatusOr<int> SourceColumn(const SourceRelation& relation, const std::string& name,
                                   const std::string& where) const {
    int idx = relation.ColumnIndex(name);
    if (idx < 0) {
      return absl::FailedPreconditionError(absl::StrCat(path_, ".", where, ": source column '", name,
                                                        "' does not exist in ", relation.QualifiedName()));
    }
    return idx;
  }

  absl::StatusOr<Statements> Render(const SourceRelation& relation, const SourceTableInfo& info,
                                    const std::string& table, bool batch) const {
    auto type_of = [&](int s) {
      const SourceColumnInfo* ci = info.Find(relation.columns[s].name);
      return ci == nullptr || !ci->in_target ? std::string("text") : ci->type;
    };
    std::vector<std::string> names;
    for (const auto& c : relation.columns) names.push_back(c.name);
    // Each statement binds its own parameters: a source column (once each) or a constant.
    struct Params {
      std::vector<Slot> slots;
      std::vector<int> slot_of;
    };
    auto param = [&](size_t index, const std::string& type) {
      return batch ? absl::StrCat("i.p", index + 1, "::", type) : absl::StrCat("$", index + 1, "::", type);
    };
    auto ref = [&](Params& p, int s) {
      if (p.slot_of.empty()) p.slot_of.assign(relation.columns.size(), -1);
      if (p.slot_of[s] < 0) {
        p.slot_of[s] = static_cast<int>(p.slots.size());
        p.slots.push_back({s, nullptr});
      }
      return param(p.slot_of[s], type_of(s));
    };
    auto is_key = [&](const std::string& f) {
      return std::find(config_.element_key().begin(), config_.element_key().end(), f) != config_.element_key().end();
    };
    // jsonb_build_object(...) of the element fields (all, or only the element key), sorted.
    auto object = [&](Params& p, bool key_only) -> absl::StatusOr<std::string> {
      std::vector<std::string> fields;
      for (const auto& [f, _] : config_.element()) {
        if (!key_only || is_key(f)) fields.push_back(f);
      }
      std::sort(fields.begin(), fields.end());
      std::vector<std::string> parts;
      for (const std::string& f : fields) {
        const ColumnSource& src = config_.element().at(f);
        std::string value;
        switch (src.value_case()) {
          case ColumnSource::kColumn: {
            ASSIGN_OR_RETURN(int s, SourceColumn(relation, src.column(), absl::StrCat("element.", f)));
            value = ref(p, s);
            break;
          }
          case ColumnSource::kConst:
            p.slots.push_back({-1, &src.const_()});
            value = param(p.slots.size() - 1, "text");
            break;
          case ColumnSource::kSql: {
            std::vector<std::string> inputs;
            for (const std::string& in : columns::ExpressionInputs(src.sql(), names)) {
              inputs.push_back(absl::StrCat(ref(p, relation.ColumnIndex(in)), " AS ", pg::QuoteIdent(in)));
            }
            value = inputs.empty() ? absl::StrCat("(SELECT ", src.sql(), ")")
                                   : absl::StrCat("(SELECT ", src.sql(), " FROM (SELECT ",
                                                  absl::StrJoin(inputs, ", "), ") AS s)");
            break;
          }
          default:
            return absl::FailedPreconditionError(absl::StrCat(path_, ".element.", f, ": no value"));
        }
        parts.push_back(absl::StrCat(pg::QuoteLiteral(f), ", ", value));
      }
      return absl::StrCat("jsonb_build_object(", absl::StrJoin(parts, ", "), ")");
    };
    // The element key of the element `var` (a jsonb value) itself.
    auto key_of = [&](const std::string& var) {
      std::vector<std::string> parts;
      for (const std::string& k : config_.element_key())
        parts.push_back(absl::StrCat(pg::QuoteLiteral(k), ", ", var, " -> ", pg::QuoteLiteral(k)));
      return absl::StrCat("jsonb_build_object(", absl::StrJoin(parts, ", "), ")");
    };
    std::vector<std::string> parent_cols;
    for (const auto& [target_col, _] : config_.parent_key()) parent_cols.push_back(pg::QuoteIdent(target_col));
    // The parent key values, and the condition "t is that parent".
    auto parent = [&](Params& p, std::vector<std::string>* vals, std::vector<std::string>* match) -> absl::Status {
      for (const auto& [target_col, source_col] : config_.parent_key()) {
        ASSIGN_OR_RETURN(int s, SourceColumn(relation, source_col, absl::StrCat("parent_key.", target_col)));
        std::string v = ref(p, s);
        vals->push_back(v);
        match->push_back(absl::StrCat("t.", pg::QuoteIdent(target_col), " = ", v));
      }
      return absl::OkStatus();
    };
    // Equality of the parent key columns of two row variables.
    auto same_parent = [&](const std::string& a, const std::string& b) {
      std::vector<std::string> parts;
      for (const std::string& c : parent_cols) parts.push_back(absl::StrCat(a, ".", c, " = ", b, ".", c));
      return absl::StrJoin(parts, " AND ");
    };
    auto qualified = [&](const std::string& var) {
      std::vector<std::string> parts;
      for (const std::string& c : parent_cols) parts.push_back(absl::StrCat(var, ".", c));
      return absl::StrJoin(parts, ", ");
    };
    const std::string qtable = pg::QuoteQualified(table);
    const std::string col = pg::QuoteIdent(config_.column());
    const std::string pcols = absl::StrJoin(parent_cols, ", ");
    const std::string sort_field = config_.sort_by().empty() ? config_.element_key(0) : config_.sort_by();
    auto order_of = [&](const std::string& var) {
      std::string order = absl::StrCat(var, " -> ", pg::QuoteLiteral(sort_field));
      for (const std::string& k : config_.element_key()) absl::StrAppend(&order, ", ", var, " -> ", pg::QuoteLiteral(k));
      return order;
    };
    // The elements of t's array that `keep` (a condition on e) keeps, plus `add` (rows of e), sorted.
    auto rebuild = [&](const std::string& keep, const std::string& add) {
      return absl::StrCat("(SELECT coalesce(jsonb_agg(e ORDER BY ", order_of("e"), "), '[]'::jsonb) FROM (SELECT e FROM "
                          "jsonb_array_elements(coalesce(t.", col, ", '[]'::jsonb)) AS a(e) WHERE ", keep,
                          add.empty() ? "" : absl::StrCat(" UNION ALL SELECT ", add), ") AS x(e))");
    };

    Statements out;
    Params up, gone;
    std::vector<std::string> parent_vals, parent_match;
    RETURN_IF_ERROR(parent(up, &parent_vals, &parent_match));
    ASSIGN_OR_RETURN(std::string elem, object(up, false));
    ASSIGN_OR_RETURN(std::string up_key, object(up, true));
    ASSIGN_OR_RETURN(std::string gone_key, object(gone, true));
    out.upsert_slots = up.slots;
    out.remove_slots = gone.slots;
    auto rows_of = [&](const Params& p) {
      std::vector<std::string> arrays, columns;
      for (size_t i = 0; i < p.slots.size(); ++i) {
        arrays.push_back(absl::StrCat("$", i + 1, "::text[]"));
        columns.push_back(absl::StrCat("p", i + 1));
      }
      return absl::StrCat("unnest(", absl::StrJoin(arrays, ", "), ") WITH ORDINALITY AS i(",
                          absl::StrJoin(columns, ", "), ", n)");
    };
    // The drift verifier: the parent row holds exactly this element under its key (for a run,
    // one answer per op, numbered).
    std::vector<std::string> parent_join;
    for (size_t i = 0; i < parent_cols.size(); ++i)
      parent_join.push_back(absl::StrCat("p.", parent_cols[i], " = ", parent_vals[i]));
    // With an owner, a parent row that is absent (not admitted by its owner) holds nothing.
    const bool owned = !config_.owner().empty();
    const std::string no_parent = absl::StrCat("p.", parent_cols[0], " IS NULL");
    const std::string present = owned ? absl::StrCat("(", no_parent, " OR x.e IS NOT NULL)") : "x.e IS NOT NULL";
    const std::string equal = owned ? absl::StrCat("(", no_parent, " OR x.e IS NOT DISTINCT FROM ", elem, ")")
                                    : absl::StrCat("x.e IS NOT DISTINCT FROM ", elem);
    out.verify = absl::StrCat(
        "SELECT ", batch ? "i.n, " : "", present, ", ", equal, ", (", elem,
        ")::text, x.e::text, (", up_key, ")::text FROM ", batch ? rows_of(up) : "(SELECT 1) AS one", " LEFT JOIN ",
        qtable, " AS p ON ", absl::StrJoin(parent_join, " AND "), " LEFT JOIN LATERAL (SELECT e FROM "
        "jsonb_array_elements(coalesce(p.", col, ", '[]'::jsonb)) AS a(e) WHERE ", key_of("e"), " = ", up_key,
        " LIMIT 1) AS x ON true", batch ? " ORDER BY i.n" : "");
    if (!batch) {
      // With an owner, a child never creates its parent row: it only joins an existing one.
      out.upsert = owned ? absl::StrCat("UPDATE ", qtable, " AS t SET ", col, " = ",
                                        rebuild(absl::StrCat(key_of("e"), " <> ", up_key), elem), " WHERE ",
                                        absl::StrJoin(parent_match, " AND "))
                         : absl::StrCat("INSERT INTO ", qtable, " AS t (", pcols, ", ", col, ") VALUES (",
                                        absl::StrJoin(parent_vals, ", "), ", jsonb_build_array(", elem,
                                        ")) ON CONFLICT (", pcols, ") DO UPDATE SET ", col, " = ",
                                        rebuild(absl::StrCat(key_of("e"), " <> ", up_key), elem));
      // Other parents than its own are other rows: one statement may change both.
      out.moving = absl::StrCat("WITH leave AS (UPDATE ", qtable, " AS t SET ", col, " = ",
                                rebuild(absl::StrCat(key_of("e"), " <> ", up_key), ""), " WHERE t.", col,
                                " @> jsonb_build_array(", up_key, ") AND NOT (", absl::StrJoin(parent_match, " AND "),
                                ")) ", out.upsert);
      out.remove = absl::StrCat("UPDATE ", qtable, " AS t SET ", col, " = ",
                                rebuild(absl::StrCat(key_of("e"), " <> ", gone_key), ""), " WHERE t.", col,
                                " @> jsonb_build_array(", gone_key, ")");
      return out;
    }
    // The last version of each element in the run, with its parent key under the parent's
    // column names: what the run leaves, whatever came before inside it.
    std::vector<std::string> parent_as;
    for (size_t i = 0; i < parent_cols.size(); ++i) parent_as.push_back(absl::StrCat(parent_vals[i], " AS ", parent_cols[i]));
    const std::string last = absl::StrCat("SELECT DISTINCT ON (ws_key) ", absl::StrJoin(parent_as, ", "), ", ", elem,
                                          " AS ws_element, ", up_key, " AS ws_key FROM ", rows_of(up),
                                          " ORDER BY ws_key, i.n DESC");
    const std::string grouped = absl::StrCat("SELECT ", pcols, ", jsonb_agg(ws_element ORDER BY ", order_of("ws_element"),
                                             ") AS ws_new FROM (", last, ") AS l GROUP BY ", pcols);
    out.upsert = owned
        ? absl::StrCat("UPDATE ", qtable, " AS t SET ", col, " = ",
                       rebuild(absl::StrCat("NOT EXISTS (SELECT 1 FROM jsonb_array_elements(g.ws_new) AS ex(n) WHERE ",
                                            key_of("n"), " = ", key_of("e"), ")"),
                               "jsonb_array_elements(g.ws_new)"),
                       " FROM (", grouped, ") AS g WHERE ", same_parent("t", "g"))
        : absl::StrCat(
              "INSERT INTO ", qtable, " AS t (", pcols, ", ", col, ") SELECT ", pcols, ", ws_new FROM (", grouped,
              ") AS g ON CONFLICT (", pcols, ") DO UPDATE SET ", col, " = ",
              rebuild(absl::StrCat("NOT EXISTS (SELECT 1 FROM jsonb_array_elements(EXCLUDED.", col, ") AS ex(n) WHERE ",
                                   key_of("n"), " = ", key_of("e"), ")"),
                      absl::StrCat("jsonb_array_elements(EXCLUDED.", col, ")")));
    // The parents holding one of the keys in k (other than `extra` excludes), found by the
    // index on the array column, as the CTE `hit`; then the condition "t is one of them", which
    // reaches t by its primary key whatever the planner thinks of the run's size.
    auto hit = [&](const std::string& extra) {
      return absl::StrCat("hit AS (SELECT DISTINCT ", qualified("h"), " FROM k JOIN ", qtable, " AS h ON h.", col,
                          " @> jsonb_build_array(k.ws_key)", extra, ")");
    };
    std::string in_hit = absl::StrCat("t.", parent_cols[0], " = ANY(ARRAY(SELECT ", parent_cols[0], " FROM hit))");
    if (parent_cols.size() > 1) {
      absl::StrAppend(&in_hit, " AND (", qualified("t"), ") IN (SELECT ", pcols, " FROM hit)");
    }
    out.leave_others = absl::StrCat(
        "WITH k AS (", last, "), ", hit(absl::StrCat(" AND NOT (", same_parent("h", "k"), ")")), " UPDATE ", qtable,
        " AS t SET ", col, " = ",
        rebuild(absl::StrCat("NOT EXISTS (SELECT 1 FROM k WHERE k.ws_key = ", key_of("e"), " AND NOT (",
                             same_parent("t", "k"), "))"), ""),
        " WHERE ", in_hit);
    out.remove = absl::StrCat(
        "WITH k AS (SELECT DISTINCT ", gone_key, " AS ws_key FROM ", rows_of(gone), "), ", hit(""), " UPDATE ", qtable,
        " AS t SET ", col, " = ", rebuild(absl::StrCat("NOT EXISTS (SELECT 1 FROM k WHERE k.ws_key = ", key_of("e"), ")"), ""),
        " WHERE ", in_hit);
    return out;
  }

  // Updates and deletes find their element's parent with `column @> [key]`: without a GIN index
  // on the column that is a scan of the whole parent table per change, and with a GIN index
  // whose fastupdate is on, a scan of its pending list (measured: about five times slower under
  // a backlog). Neither is wrong, so it is a warning.
  void WarnAboutIndex(SchemaInspector& inspector, const std::string& table, const std::string& col) const {
    auto defs = inspector.TargetIndexDefinitions(common_.target(), table);
    if (!defs.ok()) return;
    std::string advice = absl::StrCat("CREATE INDEX ON ", pg::QuoteQualified(table), " USING gin (", col,
                                      " jsonb_path_ops) WITH (fastupdate = off)");
    auto on_column = [&](const std::string& def) {
      // pg_get_indexdef quotes the column only where it must.
      for (const std::string& name : {col, config_.column()}) {
        if (absl::StrContains(def, absl::StrCat(" USING gin (", name, " ")) ||
            absl::StrContains(def, absl::StrCat(" USING gin (", name, ")"))) {
          return true;
        }
      }
      return false;
    };
    for (const std::string& def : *defs) {
      if (!on_column(def)) continue;
      if (absl::StrContains(def, "fastupdate=off") || absl::StrContains(def, "fastupdate='off'")) return;
      spdlog::warn("{}: the GIN index on {}.{} in target {} keeps fastupdate on, so every update and "
                   "delete of {} searches its pending list; turn it off ({}) or create the index as: {}",
                   path_, table, config_.column(), common_.target(), common_.source(), def, advice);
      return;
    }
    spdlog::warn("{}: no GIN index on {}.{} in target {}: every update and delete of {} scans the whole "
                 "table for its element; create one: {}",
                 path_, table, config_.column(), common_.target(), common_.source(), advice);
  }

  std::string path_;
  v1::Mapping common_;
  JsonArrayConfig config_;
  mutable std::atomic<bool> warned_{false};  // about the index, once per process
};

}  // namespace

std::unique_ptr<MappingModule> Create(const config::Settings& all,
                                      const config::MappingSettings& mapping,
                                      std::vector<std::string>* problems) {
  JsonArrayConfig cfg;
  size_t before = problems->size();
  config::ParseYamlInto(mapping.module_node, &cfg, mapping.path, problems);
  for (int i = 0; i < cfg.element_key_size(); ++i) {
    auto it = cfg.element().find(cfg.element_key(i));
    if (it == cfg.element().end() || it->second.value_case() != ColumnSource::kColumn) {
      problems->push_back(absl::StrCat(mapping.path, ".element_key[", i, "]: '", cfg.element_key(i),
                                       "' must be an element field copied from a source column"));
    }
  }
  if (!cfg.sort_by().empty() && !cfg.element().contains(cfg.sort_by())) {
    problems->push_back(absl::StrCat(mapping.path, ".sort_by: '", cfg.sort_by(), "' is not an element field"));
  }
  if (problems->size() != before) return nullptr;
  return std::make_unique<JsonArrayModule>(mapping.path, mapping.common, std::move(cfg));
}

}  // namespace walshift::transforms::json_array
