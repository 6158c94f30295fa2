#include "daemon/apply/pg_statements.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/pg/pg_util.h"

namespace walshift {
namespace {

// The SQL of one array operation, of one op ($n parameters) or of a run (every parameter a
// text[], read as the columns p1..pN of the rows `i` of RowsOf()).
class ArraySql {
 public:
  ArraySql(const OpShape& shape, bool run) : s_(shape), run_(run) {
    for (const std::string& c : s_.array.parent_columns) parent_cols_.push_back(pg::QuoteIdent(c));
    for (const TargetValue& v : s_.values) {
      parent_vals_.push_back(Value(v));
      parent_match_.push_back(absl::StrCat("t.", pg::QuoteIdent(v.column), " = ", parent_vals_.back()));
    }
    table_ = pg::QuoteQualified(s_.table);
    col_ = pg::QuoteIdent(s_.array.column);
    pcols_ = absl::StrJoin(parent_cols_, ", ");
    const auto& a = s_.array;
    sort_field_ = !a.sort_by.empty() ? a.sort_by : a.element[a.element_key[0]].column;
    for (int k : a.element_key) key_fields_.push_back(a.element[k].column);
    elem_ = Object(false);
    key_ = Object(true);
  }

  // The statements of this shape, sent in order.
  std::vector<std::string> Statements() const {
    if (s_.kind == OpKind::kArrayRemove) return {run_ ? RemoveRun() : Remove()};
    if (!run_) return {s_.array.leave_others ? Moving() : Upsert()};
    if (s_.array.leave_others) return {LeaveOthersRun(), UpsertRun()};
    return {UpsertRun()};
  }

  // The drift check (see RenderArrayCheck).
  std::string Check() const {
    // With an owner, a parent row that is absent (not admitted by its owner) holds nothing.
    std::vector<std::string> parent_join;
    for (size_t i = 0; i < parent_cols_.size(); ++i)
      parent_join.push_back(absl::StrCat("p.", parent_cols_[i], " = ", parent_vals_[i]));
    const bool owned = s_.array.owned;
    const std::string no_parent = absl::StrCat("p.", parent_cols_[0], " IS NULL");
    const std::string present = owned ? absl::StrCat("(", no_parent, " OR x.e IS NOT NULL)") : "x.e IS NOT NULL";
    const std::string equal = owned ? absl::StrCat("(", no_parent, " OR x.e IS NOT DISTINCT FROM ", elem_, ")")
                                    : absl::StrCat("x.e IS NOT DISTINCT FROM ", elem_);
    return absl::StrCat("SELECT ", run_ ? "i.n, " : "", present, ", ", equal, ", (", elem_, ")::text, x.e::text, (",
                        key_, ")::text FROM ", run_ ? RowsOf() : "(SELECT 1) AS one", " LEFT JOIN ", table_,
                        " AS p ON ", absl::StrJoin(parent_join, " AND "),
                        " LEFT JOIN LATERAL (SELECT e FROM jsonb_array_elements(coalesce(p.", col_,
                        ", '[]'::jsonb)) AS a(e) WHERE ", KeyOf("e"), " = ", key_, " LIMIT 1) AS x ON true",
                        run_ ? " ORDER BY i.n" : "");
  }

 private:
  std::string Param(int slot, const std::string& type) const {
    const std::string& t = type.empty() ? std::string("text") : type;
    return run_ ? absl::StrCat("i.p", slot + 1, "::", t) : absl::StrCat("$", slot + 1, "::", t);
  }
  std::string Value(const TargetValue& v) const {
    if (v.param >= 0) return Param(v.param, v.type);
    // Param() casts; the expression adds its inputs' own casts (the same types).
    return ExpressionSql(s_, v.sql, v.sql_inputs,
                         [&](int slot) { return run_ ? absl::StrCat("i.p", slot + 1) : absl::StrCat("$", slot + 1); });
  }
  // jsonb_build_object(...) of the element fields (all, or only the element key).
  std::string Object(bool key_only) const {
    const auto& a = s_.array;
    std::vector<std::string> parts;
    for (size_t i = 0; i < a.element.size(); ++i) {
      if (key_only && std::find(a.element_key.begin(), a.element_key.end(), static_cast<int>(i)) == a.element_key.end())
        continue;
      parts.push_back(absl::StrCat(pg::QuoteLiteral(a.element[i].column), ", ", Value(a.element[i])));
    }
    return absl::StrCat("jsonb_build_object(", absl::StrJoin(parts, ", "), ")");
  }
  // The element key of the element `var` (a jsonb value) itself.
  std::string KeyOf(const std::string& var) const {
    std::vector<std::string> parts;
    for (const std::string& k : key_fields_)
      parts.push_back(absl::StrCat(pg::QuoteLiteral(k), ", ", var, " -> ", pg::QuoteLiteral(k)));
    return absl::StrCat("jsonb_build_object(", absl::StrJoin(parts, ", "), ")");
  }
  std::string OrderOf(const std::string& var) const {
    std::string order = absl::StrCat(var, " -> ", pg::QuoteLiteral(sort_field_));
    for (const std::string& k : key_fields_) absl::StrAppend(&order, ", ", var, " -> ", pg::QuoteLiteral(k));
    return order;
  }
  // The elements of t's array that `keep` (a condition on e) keeps, plus `add` (rows of e), sorted.
  std::string Rebuild(const std::string& keep, const std::string& add) const {
    return absl::StrCat("(SELECT coalesce(jsonb_agg(e ORDER BY ", OrderOf("e"),
                        "), '[]'::jsonb) FROM (SELECT e FROM "
                        "jsonb_array_elements(coalesce(t.",
                        col_, ", '[]'::jsonb)) AS a(e) WHERE ", keep,
                        add.empty() ? "" : absl::StrCat(" UNION ALL SELECT ", add), ") AS x(e))");
  }
  std::string SameParent(const std::string& a, const std::string& b) const {
    std::vector<std::string> parts;
    for (const std::string& c : parent_cols_) parts.push_back(absl::StrCat(a, ".", c, " = ", b, ".", c));
    return absl::StrJoin(parts, " AND ");
  }
  std::string Qualified(const std::string& var) const {
    std::vector<std::string> parts;
    for (const std::string& c : parent_cols_) parts.push_back(absl::StrCat(var, ".", c));
    return absl::StrJoin(parts, ", ");
  }
  std::string RowsOf() const {
    std::vector<std::string> arrays, columns;
    for (int i = 0; i < s_.num_params; ++i) {
      arrays.push_back(absl::StrCat("$", i + 1, "::text[]"));
      columns.push_back(absl::StrCat("p", i + 1));
    }
    return absl::StrCat("unnest(", absl::StrJoin(arrays, ", "), ") WITH ORDINALITY AS i(", absl::StrJoin(columns, ", "),
                        ", n)");
  }

  std::string Upsert() const {
    // With an owner, a child never creates its parent row: it only joins an existing one.
    std::string set = Rebuild(absl::StrCat(KeyOf("e"), " <> ", key_), elem_);
    if (s_.array.owned) {
      return absl::StrCat("UPDATE ", table_, " AS t SET ", col_, " = ", set, " WHERE ",
                          absl::StrJoin(parent_match_, " AND "));
    }
    return absl::StrCat("INSERT INTO ", table_, " AS t (", pcols_, ", ", col_, ") VALUES (",
                        absl::StrJoin(parent_vals_, ", "), ", jsonb_build_array(", elem_, ")) ON CONFLICT (", pcols_,
                        ") DO UPDATE SET ", col_, " = ", set);
  }
  // Other parents than its own are other rows: one statement may change both.
  std::string Moving() const {
    return absl::StrCat("WITH leave AS (UPDATE ", table_, " AS t SET ", col_, " = ",
                        Rebuild(absl::StrCat(KeyOf("e"), " <> ", key_), ""), " WHERE t.", col_,
                        " @> jsonb_build_array(", key_, ") AND NOT (", absl::StrJoin(parent_match_, " AND "), ")) ",
                        Upsert());
  }
  std::string Remove() const {
    return absl::StrCat("UPDATE ", table_, " AS t SET ", col_, " = ",
                        Rebuild(absl::StrCat(KeyOf("e"), " <> ", key_), ""), " WHERE t.", col_,
                        " @> jsonb_build_array(", key_, ")");
  }
  // The last version of each element in the run, with its parent key under the parent's
  // column names: what the run leaves, whatever came before inside it.
  std::string Last() const {
    std::vector<std::string> parent_as;
    for (size_t i = 0; i < parent_cols_.size(); ++i)
      parent_as.push_back(absl::StrCat(parent_vals_[i], " AS ", parent_cols_[i]));
    return absl::StrCat("SELECT DISTINCT ON (ws_key) ", absl::StrJoin(parent_as, ", "), ", ", elem_, " AS ws_element, ",
                        key_, " AS ws_key FROM ", RowsOf(), " ORDER BY ws_key, i.n DESC");
  }
  std::string UpsertRun() const {
    const std::string grouped =
        absl::StrCat("SELECT ", pcols_, ", jsonb_agg(ws_element ORDER BY ", OrderOf("ws_element"), ") AS ws_new FROM (",
                     Last(), ") AS l GROUP BY ", pcols_);
    if (s_.array.owned) {
      return absl::StrCat(
          "UPDATE ", table_, " AS t SET ", col_, " = ",
          Rebuild(absl::StrCat("NOT EXISTS (SELECT 1 FROM jsonb_array_elements(g.ws_new) AS ex(n) WHERE ", KeyOf("n"),
                               " = ", KeyOf("e"), ")"),
                  "jsonb_array_elements(g.ws_new)"),
          " FROM (", grouped, ") AS g WHERE ", SameParent("t", "g"));
    }
    return absl::StrCat("INSERT INTO ", table_, " AS t (", pcols_, ", ", col_, ") SELECT ", pcols_, ", ws_new FROM (",
                        grouped, ") AS g ON CONFLICT (", pcols_, ") DO UPDATE SET ", col_, " = ",
                        Rebuild(absl::StrCat("NOT EXISTS (SELECT 1 FROM jsonb_array_elements(EXCLUDED.", col_,
                                             ") AS ex(n) WHERE ", KeyOf("n"), " = ", KeyOf("e"), ")"),
                                absl::StrCat("jsonb_array_elements(EXCLUDED.", col_, ")")));
  }
  // The parents holding one of the keys in k (other than `extra` excludes), found by the
  // index on the array column, as the CTE `hit`; then the condition "t is one of them", which
  // reaches t by its primary key whatever the planner thinks of the run's size.
  std::string Hit(const std::string& extra) const {
    return absl::StrCat("hit AS (SELECT DISTINCT ", Qualified("h"), " FROM k JOIN ", table_, " AS h ON h.", col_,
                        " @> jsonb_build_array(k.ws_key)", extra, ")");
  }
  std::string InHit() const {
    std::string in_hit = absl::StrCat("t.", parent_cols_[0], " = ANY(ARRAY(SELECT ", parent_cols_[0], " FROM hit))");
    if (parent_cols_.size() > 1)
      absl::StrAppend(&in_hit, " AND (", Qualified("t"), ") IN (SELECT ", pcols_, " FROM hit)");
    return in_hit;
  }
  std::string LeaveOthersRun() const {
    return absl::StrCat("WITH k AS (", Last(), "), ", Hit(absl::StrCat(" AND NOT (", SameParent("h", "k"), ")")),
                        " UPDATE ", table_, " AS t SET ", col_, " = ",
                        Rebuild(absl::StrCat("NOT EXISTS (SELECT 1 FROM k WHERE k.ws_key = ", KeyOf("e"), " AND NOT (",
                                             SameParent("t", "k"), "))"),
                                ""),
                        " WHERE ", InHit());
  }
  std::string RemoveRun() const {
    return absl::StrCat("WITH k AS (SELECT DISTINCT ", key_, " AS ws_key FROM ", RowsOf(), "), ", Hit(""), " UPDATE ",
                        table_, " AS t SET ", col_, " = ",
                        Rebuild(absl::StrCat("NOT EXISTS (SELECT 1 FROM k WHERE k.ws_key = ", KeyOf("e"), ")"), ""),
                        " WHERE ", InHit());
  }

  const OpShape& s_;
  bool run_;
  std::vector<std::string> parent_cols_, parent_vals_, parent_match_, key_fields_;
  std::string table_, col_, pcols_, sort_field_, elem_, key_;
};

}  // namespace

void PlanStatement(const OpShape& shape, const std::string& omit, PgStatementPlan* plan) {
  plan->shape = &shape;
  if (shape.kind == OpKind::kArrayUpsert || shape.kind == OpKind::kArrayRemove) {
    for (int i = 0; i < shape.num_params; ++i) plan->params.push_back(i);
    return;
  }
  if (shape.kind == OpKind::kClearColumns || shape.kind == OpKind::kTruncate) return;
  auto is_key = [&](int idx) { return std::find(shape.key.begin(), shape.key.end(), idx) != shape.key.end(); };
  for (size_t i = 0; i < shape.values.size(); ++i) {
    if (omit[i] == '1') continue;
    if (shape.kind == OpKind::kDelete && !is_key(i)) continue;
    plan->written.push_back(static_cast<int>(i));
  }
  // The statement's parameters: every slot a written value reads, once.
  std::vector<int> position(shape.num_params, -1);
  auto use = [&](int slot, bool key) {
    if (position[slot] < 0) {
      position[slot] = static_cast<int>(plan->params.size());
      plan->params.push_back(slot);
    }
    if (key) plan->key_positions.push_back(position[slot]);
  };
  for (int w : plan->written) {
    const TargetValue& tv = shape.values[w];
    if (tv.param >= 0) use(tv.param, is_key(w));
    for (int in : tv.sql_inputs) use(shape.inputs[in].param, is_key(w));
  }
  for (const TargetValue& m : shape.match) use(m.param, false);
  for (int in : shape.condition_inputs) use(shape.inputs[in].param, false);
}

std::string ExpressionSql(const OpShape& shape, const std::string& sql, const std::vector<int>& inputs,
                          const std::function<std::string(int slot)>& ref) {
  std::vector<std::string> named;
  for (int in : inputs) {
    const ExprInput& e = shape.inputs[in];
    named.push_back(absl::StrCat(ref(e.param), "::", e.type.empty() ? std::string("text") : e.type, " AS ",
                                 pg::QuoteIdent(e.name)));
  }
  if (named.empty()) return absl::StrCat("(SELECT ", sql, ")");
  return absl::StrCat("(SELECT ", sql, " FROM (SELECT ", absl::StrJoin(named, ", "), ") AS s)");
}

std::vector<std::string> RenderArrayRun(const OpShape& shape) { return ArraySql(shape, true).Statements(); }

std::string RenderArrayCheck(const OpShape& shape, bool run) { return ArraySql(shape, run).Check(); }

std::string RenderStatement(const PgStatementPlan& plan, int rows, bool plain_insert) {
  const OpShape& shape = *plan.shape;
  if (shape.kind == OpKind::kArrayUpsert || shape.kind == OpKind::kArrayRemove) {
    return ArraySql(shape, false).Statements()[0];
  }
  std::string table = pg::QuoteQualified(shape.table);
  if (shape.kind == OpKind::kClearColumns) {
    std::vector<std::string> sets;
    for (const TargetValue& v : shape.values) sets.push_back(absl::StrCat(pg::QuoteIdent(v.column), " = NULL"));
    if (sets.empty()) return absl::StrCat("SELECT 1 FROM ", table, " LIMIT 0");
    return absl::StrCat("UPDATE ", table, " SET ", absl::StrJoin(sets, ", "));
  }
  const int n = static_cast<int>(plan.params.size());
  std::vector<int> position(shape.num_params, -1);
  for (int i = 0; i < n; ++i) position[plan.params[i]] = i;
  auto ref = [&](int slot, int row) { return absl::StrCat("$", row * n + position[slot] + 1); };
  // An expression over named source values of row `row`.
  auto expression = [&](const std::string& sql, const std::vector<int>& input_indices, int row) {
    return ExpressionSql(shape, sql, input_indices, [&](int slot) { return ref(slot, row); });
  };
  // A value of row `row`: its parameter (cast when the statement selects instead of listing
  // VALUES), or its expression.
  auto value = [&](const TargetValue& tv, int row) {
    if (tv.param < 0) return expression(tv.sql, tv.sql_inputs, row);
    if (shape.casts.empty()) return ref(tv.param, row);
    size_t idx = &tv - shape.values.data();
    return absl::StrCat(ref(tv.param, row), "::", shape.casts[idx]);
  };
  std::string condition =
      shape.condition.empty()
          ? ""
          : absl::StrCat("coalesce(", expression(shape.condition, shape.condition_inputs, 0), ", false)");
  const bool move = shape.kind == OpKind::kUpdateOnly && !shape.match.empty();
  auto is_key = [&](int idx) { return !move && std::find(shape.key.begin(), shape.key.end(), idx) != shape.key.end(); };
  // A compared parameter is cast to its column's type: an untyped one is read as whatever the
  // operator suggests, which fails for composite types.
  auto compared = [&](const TargetValue& tv) {
    if (tv.param < 0 || plan.column_types == nullptr) return value(tv, 0);
    auto type = plan.column_types->find(tv.column);
    if (type == plan.column_types->end()) return value(tv, 0);
    return absl::StrCat(ref(tv.param, 0), "::", type->second);
  };
  std::vector<std::string> where;
  if (move) {
    for (const TargetValue& m : shape.match)
      where.push_back(absl::StrCat(pg::QuoteIdent(m.column), " = ", compared(m)));
    // Only into a free key: a key swap inside a source transaction finds the new key taken.
    std::vector<std::string> taken;
    for (const TargetValue& m : shape.match) {
      auto nv = std::find_if(shape.values.begin(), shape.values.end(),
                             [&](const TargetValue& tv) { return tv.column == m.column; });
      if (nv != shape.values.end()) taken.push_back(absl::StrCat("x.", pg::QuoteIdent(m.column), " = ", compared(*nv)));
    }
    if (!taken.empty()) {
      where.push_back(
          absl::StrCat("NOT EXISTS (SELECT 1 FROM ", table, " AS x WHERE ", absl::StrJoin(taken, " AND "), ")"));
    }
  } else {
    for (int k : shape.key)
      where.push_back(absl::StrCat(pg::QuoteIdent(shape.values[k].column), " = ", compared(shape.values[k])));
  }
  switch (shape.kind) {
    case OpKind::kUpsert: {
      std::vector<std::string> cols, keys, sets, tuples;
      for (int w : plan.written) {
        cols.push_back(pg::QuoteIdent(shape.values[w].column));
        if (!is_key(w)) sets.push_back(absl::StrCat(cols.back(), " = EXCLUDED.", cols.back()));
      }
      for (int r = 0; r < rows; ++r) {
        std::vector<std::string> vals;
        for (int w : plan.written) vals.push_back(value(shape.values[w], r));
        tuples.push_back(absl::StrCat("(", absl::StrJoin(vals, ", "), ")"));
      }
      for (int k : shape.key) keys.push_back(pg::QuoteIdent(shape.values[k].column));
      if (plain_insert || shape.key.empty()) {  // (no key: rows of a keyless, insert-only table)
        return absl::StrCat("INSERT INTO ", table, " (", absl::StrJoin(cols, ", "), ") VALUES ",
                            absl::StrJoin(tuples, ", "));
      }
      std::string conflict =
          absl::StrCat(" ON CONFLICT (", absl::StrJoin(keys, ", "), ") ",
                       sets.empty() ? "DO NOTHING" : absl::StrCat("DO UPDATE SET ", absl::StrJoin(sets, ", ")));
      if (!condition.empty()) {
        // One row, written only when the filter holds.
        std::vector<std::string> vals;
        for (int w : plan.written) vals.push_back(value(shape.values[w], 0));
        return absl::StrCat("INSERT INTO ", table, " (", absl::StrJoin(cols, ", "), ") SELECT ",
                            absl::StrJoin(vals, ", "), " WHERE ", condition, conflict);
      }
      return absl::StrCat("INSERT INTO ", table, " (", absl::StrJoin(cols, ", "), ") VALUES ",
                          absl::StrJoin(tuples, ", "), conflict);
    }
    case OpKind::kUpdateOnly: {
      std::vector<std::string> sets;
      for (int w : plan.written)
        if (!is_key(w))
          sets.push_back(absl::StrCat(pg::QuoteIdent(shape.values[w].column), " = ", value(shape.values[w], 0)));
      if (sets.empty()) {
        // Nothing to write: a no-op statement keeps the result bookkeeping uniform.
        return absl::StrCat("SELECT 1 FROM ", table, " WHERE ", absl::StrJoin(where, " AND "), " LIMIT 0");
      }
      return absl::StrCat("UPDATE ", table, " SET ", absl::StrJoin(sets, ", "), " WHERE ",
                          absl::StrJoin(where, " AND "));
    }
    case OpKind::kDelete: {
      if (!condition.empty()) where.push_back(absl::StrCat("NOT ", condition));
      if (!shape.keep_if_any.empty()) {
        // The row stays while another source still fills one of these columns.
        std::vector<std::string> quoted;
        for (const std::string& c : shape.keep_if_any) quoted.push_back(pg::QuoteIdent(c));
        where.push_back(absl::StrCat("num_nonnulls(", absl::StrJoin(quoted, ", "), ") = 0"));
      }
      return absl::StrCat("DELETE FROM ", table, " WHERE ", absl::StrJoin(where, " AND "));
    }
    case OpKind::kTruncate:
      return absl::StrCat("TRUNCATE ", table);  // --check only: the sink sends truncate sets
    default:
      return "";
  }
}

}  // namespace walshift
