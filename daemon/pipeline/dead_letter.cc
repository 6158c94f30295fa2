#include "daemon/pipeline/dead_letter.h"

#include <algorithm>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "daemon/apply/documents/json.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"

namespace walshift {
namespace {

using documents::Json;

constexpr char kSep = '\x1f';

std::string SlotText(const TargetOp& op, int slot) {
  if (slot < 0 || slot >= op.shape->num_params) return "?";
  const Datum& d = op.params[slot];
  if (d.is_null()) return "NULL";
  if (d.is_unchanged_toast()) return "(unchanged)";
  return std::string(d.view());
}

// One target value of `op` as text: its parameter, or an SQL expression's inputs.
std::string ValueText(const TargetOp& op, const TargetValue& v) {
  if (v.param >= 0) return SlotText(op, v.param);
  std::vector<std::string> inputs;
  for (int in : v.sql_inputs)
    inputs.push_back(absl::StrCat(op.shape->inputs[in].name, "=", SlotText(op, op.shape->inputs[in].param)));
  return absl::StrCat("(", v.sql, " with ", absl::StrJoin(inputs, ", "), ")");
}

Json ValueJson(const TargetOp& op, const TargetValue& v) {
  if (v.param >= 0) {
    if (v.param >= op.shape->num_params) return Json();
    const Datum& d = op.params[v.param];
    return d.kind == DatumKind::kText ? Json::String(std::string(d.view())) : Json();
  }
  Json inputs = Json::MakeObject();
  for (int in : v.sql_inputs) {
    const ExprInput& e = op.shape->inputs[in];
    const Datum& d = op.params[e.param];
    inputs.Set(e.name, d.kind == DatumKind::kText ? Json::String(std::string(d.view())) : Json());
  }
  Json out = Json::MakeObject();
  out.Set("sql", Json::String(v.sql));
  out.Set("inputs", std::move(inputs));
  return out;
}

bool Unchanged(const TargetOp& op, const TargetValue& v) {
  return v.param >= 0 && v.param < op.shape->num_params && op.params[v.param].is_unchanged_toast();
}

std::string Joined(const TargetOp& op, const std::vector<TargetValue>& values, const std::vector<int>& which) {
  std::vector<std::string> parts;
  for (int i : which) parts.push_back(absl::StrCat(values[i].column, "=", ValueText(op, values[i])));
  return absl::StrJoin(parts, ", ");
}

std::vector<int> All(size_t n) {
  std::vector<int> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<int>(i);
  return v;
}

Datum Text(const std::string& s) { return Datum{DatumKind::kText, static_cast<uint32_t>(s.size()), s.c_str()}; }
Datum Null() { return Datum{DatumKind::kNull, 0, nullptr}; }

std::unique_ptr<OpShape> Shape(OpKind kind, const std::string& target, std::vector<TargetValue> values) {
  auto s = std::make_unique<OpShape>();
  s->kind = kind;
  s->target = target;
  s->table = "walshift.dead_letter";
  s->source_table = "walshift.dead_letter";
  s->key = {0, 1, 2};
  int params = 0;
  for (const TargetValue& v : values) params = std::max(params, v.param + 1);
  s->num_params = params;
  s->values = std::move(values);
  s->id = NextOpShapeId();
  return s;
}

TargetValue Param(const char* column, int param, const char* type) { return {column, param, "", {}, column, type}; }

absl::Status EmitRow(const OpShape* shape, const Datum* params, const ParkedChange& p,
                     const std::function<absl::Status(const TargetOp&)>& emit) {
  TargetOp op;
  op.shape = shape;
  op.params = params;
  op.lsn = p.change_lsn;
  return emit(op);
}

}  // namespace

std::string FormatDeadLetterRequest(const DeadLetterRequest& r) {
  std::vector<std::string> changes;
  for (const auto& [lsn, seq] : r.changes) changes.push_back(absl::StrCat(FormatLsn(lsn), "/", seq));
  auto clean = [](std::string s) {
    std::replace(s.begin(), s.end(), '\t', ' ');
    return s;
  };
  return absl::StrJoin({r.pipeline, r.target, r.action, clean(r.by), clean(r.reason), absl::StrJoin(changes, ",")},
                       "\t");
}

absl::Status ParseDeadLetterRequest(absl::string_view content, DeadLetterRequest* r) {
  std::vector<std::string> parts = absl::StrSplit(content, '\t');
  if (parts.size() != 6) return absl::InvalidArgumentError("a dead-letter request has 6 fields");
  r->pipeline = parts[0];
  r->target = parts[1];
  r->action = parts[2];
  r->by = parts[3];
  r->reason = parts[4];
  r->changes.clear();
  for (absl::string_view item : absl::StrSplit(parts[5], ',', absl::SkipEmpty())) {
    size_t slash = item.rfind('/');
    int seq = 0;
    std::optional<Lsn> lsn = slash == absl::string_view::npos ? std::nullopt : ParseLsn(item.substr(0, slash));
    if (!lsn || !absl::SimpleAtoi(item.substr(slash + 1), &seq)) {
      return absl::InvalidArgumentError(absl::StrCat("unreadable parked change '", item, "'"));
    }
    r->changes.emplace_back(*lsn, seq);
  }
  if (r->action != "retry" && r->action != "discard") {
    return absl::InvalidArgumentError(absl::StrCat("unknown dead-letter action '", r->action, "'"));
  }
  return absl::OkStatus();
}

std::vector<std::string> OpRowKeys(const TargetOp& op) {
  const OpShape& s = *op.shape;
  std::vector<std::string> keys;
  // Columns by name: two mappings may list a composite key in different orders.
  auto key = [&](std::string k, const std::vector<TargetValue>& values, const std::vector<int>& which) {
    std::vector<std::string> parts;
    for (int i : which) parts.push_back(absl::StrCat(values[i].column, "=", ValueText(op, values[i])));
    std::sort(parts.begin(), parts.end());
    for (const std::string& part : parts) absl::StrAppend(&k, std::string(1, kSep), part);
    keys.push_back(std::move(k));
  };
  auto row = [&](const std::vector<TargetValue>& values, const std::vector<int>& which) { key(s.table, values, which); };
  auto element = [&]() { key(absl::StrCat(s.table, ".", s.array.column, "[]"), s.array.element, s.array.element_key); };
  switch (s.kind) {
    case OpKind::kUpsert:
    case OpKind::kDelete:
      row(s.values, s.key);
      break;
    case OpKind::kUpdateOnly:
      row(s.values, s.key);
      if (!s.match.empty()) row(s.match, All(s.match.size()));
      break;
    case OpKind::kArrayUpsert:
      row(s.values, All(s.values.size()));
      element();
      break;
    case OpKind::kArrayRemove:
      element();
      break;
    case OpKind::kTruncate:
    case OpKind::kClearColumns:
      break;
  }
  return keys;
}

std::string OpKeyText(const TargetOp& op) {
  const OpShape& s = *op.shape;
  std::string element = IsArrayOp(s.kind) ? Joined(op, s.array.element, s.array.element_key) : "";
  switch (s.kind) {
    case OpKind::kArrayUpsert:
      return absl::StrCat(Joined(op, s.values, All(s.values.size())), " element ", element);
    case OpKind::kArrayRemove:
      return absl::StrCat("element ", element);
    case OpKind::kUpdateOnly:
      if (!s.match.empty()) {
        return absl::StrCat(Joined(op, s.match, All(s.match.size())), " -> ", Joined(op, s.values, s.key));
      }
      return Joined(op, s.values, s.key);
    default:
      return Joined(op, s.values, s.key);
  }
}

std::string OpValuesJson(const TargetOp& op) {
  const OpShape& s = *op.shape;
  Json out = Json::MakeObject();
  Json unchanged = Json::MakeArray();
  auto add = [&](Json* into, const std::vector<TargetValue>& values) {
    for (const TargetValue& v : values) {
      if (Unchanged(op, v)) {
        unchanged.mutable_array().push_back(Json::String(v.column));
      } else {
        into->Set(v.column, ValueJson(op, v));
      }
    }
  };
  add(&out, s.values);
  if (IsArrayOp(s.kind)) {
    Json element = Json::MakeObject();
    add(&element, s.array.element);
    out.Set(absl::StrCat(s.array.column, "[]"), std::move(element));
  }
  if (!unchanged.array().empty()) out.Set("(unchanged)", std::move(unchanged));
  return out.Serialize();
}

std::string SourceChangeJson(const RowChange& change) {
  Json out = Json::MakeObject();
  Json unchanged = Json::MakeArray();
  auto tuple = [&](const Tuple& t, bool note_unchanged) {
    Json row = Json::MakeObject();
    for (size_t c = 0; c < t.size() && c < change.relation->columns.size(); ++c) {
      const std::string& name = change.relation->columns[c].name;
      switch (t[c].kind) {
        case DatumKind::kText:
          row.Set(name, Json::String(std::string(t[c].view())));
          break;
        case DatumKind::kNull:
          row.Set(name, Json());
          break;
        case DatumKind::kUnchangedToast:
          if (note_unchanged) unchanged.mutable_array().push_back(Json::String(name));
          break;
      }
    }
    return row;
  };
  if (change.old_tuple != nullptr) {
    out.Set("old", tuple(*change.old_tuple, false));
    out.Set("old_kind", Json::String(std::string(1, change.old_tuple_kind ? change.old_tuple_kind : 'K')));
  }
  if (change.new_tuple != nullptr) out.Set("new", tuple(*change.new_tuple, true));
  if (!unchanged.array().empty()) out.Set("unchanged", std::move(unchanged));
  return out.Serialize();
}

absl::Status RebuildChange(const std::string& json, ChangeKind kind, const SourceRelation& relation,
                           RebuiltChange* out) {
  ASSIGN_OR_RETURN(Json parsed, Json::Parse(json));
  if (!parsed.is_object()) return absl::DataLossError("a parked change's source_change is not a JSON object");
  out->storage.clear();
  auto fill = [&](const Json* row, Tuple* t, DatumKind absent) {
    t->assign(relation.columns.size(), Datum{absent, 0, nullptr});
    for (size_t c = 0; row != nullptr && c < relation.columns.size(); ++c) {
      const Json* v = row->Find(relation.columns[c].name);
      if (v == nullptr) continue;
      if (v->type() != Json::Type::kString) {
        (*t)[c] = Datum{DatumKind::kNull, 0, nullptr};
        continue;
      }
      out->storage.push_back(std::make_unique<std::string>(v->string_value()));
      const std::string& s = *out->storage.back();
      (*t)[c] = Datum{DatumKind::kText, static_cast<uint32_t>(s.size()), s.c_str()};
    }
  };
  RowChange& c = out->change;
  c = RowChange();
  c.kind = kind;
  c.relation = &relation;
  const Json* old_row = parsed.Find("old");
  if (old_row != nullptr) {
    fill(old_row, &out->old_tuple, DatumKind::kNull);
    c.old_tuple = &out->old_tuple;
    const Json* k = parsed.Find("old_kind");
    c.old_tuple_kind = k != nullptr && k->type() == Json::Type::kString && k->string_value() == "O" ? 'O' : 'K';
  }
  const Json* new_row = parsed.Find("new");
  if (new_row != nullptr) {
    fill(new_row, &out->new_tuple, DatumKind::kUnchangedToast);
    c.new_tuple = &out->new_tuple;
  }
  if ((kind == ChangeKind::kDelete && c.old_tuple == nullptr) || (kind != ChangeKind::kDelete && c.new_tuple == nullptr)) {
    return absl::DataLossError("a parked change's source_change lacks the row its operation needs");
  }
  return absl::OkStatus();
}

absl::Status DeadLetterBook::Load(PGconn* conn, const std::string& pipeline, absl::string_view what) {
  parked_.clear();
  first_by_key_.clear();
  ASSIGN_OR_RETURN(
      pg::ResultPtr r,
      pg::ExecParams(conn,
                     "SELECT id, commit_lsn::text, seq, COALESCE((extract(epoch FROM commit_time) * 1000000)::bigint "
                     "  - 946684800000000, 0), change_lsn::text, source_table, operation, mapping, target_table, "
                     "  target_operation, target_key, array_to_json(row_keys)::text, source_change::text, "
                     "  COALESCE(mapped_values::text, ''), COALESCE(sqlstate, ''), message, COALESCE(constraint_name, ''), "
                     "  COALESCE(behind_commit_lsn::text, ''), COALESCE(behind_seq, 0), attempts, op_index "
                     "FROM walshift.dead_letter WHERE pipeline = $1 AND state = 'parked' ORDER BY commit_lsn, seq",
                     {pipeline.c_str()}, absl::StrCat(what, ": reading walshift.dead_letter")));
  for (int i = 0; i < PQntuples(r.get()); ++i) {
    auto v = [&](int c) { return std::string(PQgetvalue(r.get(), i, c)); };
    ParkedChange p;
    bool ok = absl::SimpleAtoi(v(0), &p.id) && absl::SimpleAtoi(v(2), &p.seq) &&
              absl::SimpleAtoi(v(3), &p.commit_time) && absl::SimpleAtoi(v(7), &p.mapping) &&
              absl::SimpleAtoi(v(18), &p.behind_seq) && absl::SimpleAtoi(v(19), &p.attempts) &&
              absl::SimpleAtoi(v(20), &p.op_index);
    p.commit_lsn = ParseLsn(v(1)).value_or(kInvalidLsn);
    p.change_lsn = ParseLsn(v(4)).value_or(kInvalidLsn);
    p.source_table = v(5);
    p.operation = v(6);
    p.target_table = v(8);
    p.target_operation = v(9);
    p.target_key = v(10);
    auto keys = Json::Parse(v(11));
    ok &= keys.ok() && keys->is_array();
    for (const Json& k : ok ? keys->array() : Json::Array{}) {
      if (k.type() == Json::Type::kString) p.row_keys.push_back(k.string_value());
    }
    p.source_change = v(12);
    p.mapped_values = v(13);
    p.sqlstate = v(14);
    p.message = v(15);
    p.constraint = v(16);
    p.behind_commit_lsn = ParseLsn(v(17)).value_or(kInvalidLsn);
    if (!ok || p.commit_lsn == kInvalidLsn) {
      return absl::DataLossError(absl::StrCat(what, ": walshift.dead_letter row ", v(0), " is unreadable"));
    }
    Add(std::move(p));
  }
  return absl::OkStatus();
}

const ParkedChange* DeadLetterBook::Blocking(const std::vector<std::string>& keys) const {
  const ParkedChange* first = nullptr;
  for (const std::string& k : keys) {
    auto it = first_by_key_.find(k);
    if (it == first_by_key_.end()) continue;
    const ParkedChange& p = parked_.at(it->second);
    if (first == nullptr || p.position() < first->position()) first = &p;
  }
  return first;
}

void DeadLetterBook::Index(const ParkedChange& change) {
  for (const std::string& k : change.row_keys) {
    auto [it, inserted] = first_by_key_.emplace(k, change.position());
    if (!inserted && change.position() < it->second) it->second = change.position();
  }
}

void DeadLetterBook::Add(ParkedChange change) {
  auto pos = change.position();
  Index(change);
  parked_[pos] = std::move(change);
}

ParkedChange* DeadLetterBook::Find(const std::pair<Lsn, int>& position) {
  auto it = parked_.find(position);
  return it == parked_.end() ? nullptr : &it->second;
}

std::vector<ParkedChange*> DeadLetterBook::All() {
  std::vector<ParkedChange*> out;
  for (auto& [pos, p] : parked_) out.push_back(&p);
  return out;
}

void DeadLetterBook::Remove(const std::pair<Lsn, int>& position) {
  if (parked_.erase(position) == 0) return;
  first_by_key_.clear();
  for (const auto& [pos, p] : parked_) Index(p);
}

std::vector<ParkedChange*> DeadLetterBook::Connected(const std::vector<std::pair<Lsn, int>>& positions) {
  std::set<std::pair<Lsn, int>> found;
  std::set<std::string> keys;
  std::vector<std::pair<Lsn, int>> todo;
  for (const auto& p : positions)
    if (parked_.count(p) && found.insert(p).second) todo.push_back(p);
  while (!todo.empty()) {
    const ParkedChange& c = parked_.at(todo.back());
    todo.pop_back();
    bool added = false;
    for (const std::string& k : c.row_keys) added |= keys.insert(k).second;
    if (!added) continue;
    for (const auto& [pos, p] : parked_) {
      if (found.count(pos)) continue;
      for (const std::string& k : p.row_keys) {
        if (keys.count(k)) {
          found.insert(pos);
          todo.push_back(pos);
          break;
        }
      }
    }
  }
  std::vector<ParkedChange*> out;
  for (const auto& pos : found) out.push_back(&parked_.at(pos));
  return out;  // std::set orders them as the stream did
}

DeadLetterShapes MakeDeadLetterShapes(const std::string& target) {
  DeadLetterShapes s;
  s.park = Shape(OpKind::kUpsert, target,
                 {Param("pipeline", 0, "text"),
                  Param("commit_lsn", 1, "pg_lsn"),
                  Param("seq", 2, "integer"),
                  Param("commit_time", 3, "timestamp with time zone"),
                  Param("change_lsn", 4, "pg_lsn"),
                  Param("source_table", 5, "text"),
                  Param("operation", 6, "text"),
                  Param("mapping", 7, "integer"),
                  Param("target_table", 8, "text"),
                  Param("target_operation", 9, "text"),
                  Param("target_key", 10, "text"),
                  Param("row_keys", 11, "text[]"),
                  Param("source_change", 12, "jsonb"),
                  Param("mapped_values", 13, "jsonb"),
                  Param("sqlstate", 14, "text"),
                  Param("message", 15, "text"),
                  Param("constraint_name", 16, "text"),
                  Param("behind_commit_lsn", 17, "pg_lsn"),
                  Param("behind_seq", 18, "integer"),
                  Param("attempts", 19, "integer"),
                  Param("state", 20, "text"),
                  Param("op_index", 21, "integer"),
                  {"parked_at", -1, "now()", {}, "now", ""}});
  s.resolve = Shape(OpKind::kUpdateOnly, target,
                    {Param("pipeline", 0, "text"),
                     Param("commit_lsn", 1, "pg_lsn"),
                     Param("seq", 2, "integer"),
                     Param("state", 3, "text"),
                     Param("resolved_by", 4, "text"),
                     Param("resolution", 5, "text"),
                     {"resolved_at", -1, "now()", {}, "now", ""}});
  s.refail = Shape(OpKind::kUpdateOnly, target,
                   {Param("pipeline", 0, "text"), Param("commit_lsn", 1, "pg_lsn"), Param("seq", 2, "integer"),
                    Param("attempts", 3, "integer"), Param("sqlstate", 4, "text"), Param("message", 5, "text"),
                    Param("constraint_name", 6, "text"), Param("mapped_values", 7, "jsonb")});
  return s;
}

absl::Status EmitPark(const DeadLetterShapes& shapes, const std::string& pipeline, const ParkedChange& p,
                      const std::function<absl::Status(const TargetOp&)>& emit) {
  std::string commit = FormatLsn(p.commit_lsn), seq = absl::StrCat(p.seq);
  std::string time = p.commit_time ? FormatPgTimestamp(p.commit_time) : "";
  std::string change = FormatLsn(p.change_lsn), mapping = absl::StrCat(p.mapping);
  std::string keys = pg::TextArrayLiteral(p.row_keys);
  std::string behind = p.behind_commit_lsn != kInvalidLsn ? FormatLsn(p.behind_commit_lsn) : "";
  std::string behind_seq = absl::StrCat(p.behind_seq), attempts = absl::StrCat(p.attempts), state = "parked";
  std::string op_index = absl::StrCat(p.op_index);
  auto opt = [](const std::string& s) { return s.empty() ? Null() : Text(s); };
  Datum params[22] = {Text(pipeline),      Text(commit),         Text(seq),
                      opt(time),           Text(change),         Text(p.source_table),
                      Text(p.operation),   Text(mapping),        Text(p.target_table),
                      Text(p.target_operation), Text(p.target_key), Text(keys),
                      Text(p.source_change), opt(p.mapped_values), opt(p.sqlstate),
                      Text(p.message),     opt(p.constraint),    opt(behind),
                      behind.empty() ? Null() : Text(behind_seq), Text(attempts), Text(state),
                      Text(op_index)};
  return EmitRow(shapes.park.get(), params, p, emit);
}

absl::Status EmitResolve(const DeadLetterShapes& shapes, const std::string& pipeline, const ParkedChange& p,
                         const std::string& state, const std::string& by, const std::string& reason,
                         const std::function<absl::Status(const TargetOp&)>& emit) {
  std::string commit = FormatLsn(p.commit_lsn), seq = absl::StrCat(p.seq);
  Datum params[6] = {Text(pipeline), Text(commit), Text(seq), Text(state), by.empty() ? Null() : Text(by),
                     reason.empty() ? Null() : Text(reason)};
  return EmitRow(shapes.resolve.get(), params, p, emit);
}

absl::Status EmitRefail(const DeadLetterShapes& shapes, const std::string& pipeline, const ParkedChange& p,
                        const std::function<absl::Status(const TargetOp&)>& emit) {
  std::string commit = FormatLsn(p.commit_lsn), seq = absl::StrCat(p.seq), attempts = absl::StrCat(p.attempts);
  auto opt = [](const std::string& s) { return s.empty() ? Null() : Text(s); };
  Datum params[8] = {Text(pipeline), Text(commit),    Text(seq),           Text(attempts),
                     opt(p.sqlstate), Text(p.message), opt(p.constraint), opt(p.mapped_values)};
  return EmitRow(shapes.refail.get(), params, p, emit);
}

void DeadLetterLimit::Tick(absl::Time now) {
  if (samples_.empty() || now - samples_.back().first >= absl::Seconds(1)) samples_.emplace_back(now, changes_);
  while (samples_.size() > 1 && now - samples_[1].first >= window_) samples_.pop_front();
  while (!rejections_.empty() && now - rejections_.front() >= window_) rejections_.pop_front();
}

absl::Status DeadLetterLimit::AdmitBehind(size_t parked, const std::string& target) const {
  if (parked + 1 <= max_parked_) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("target ", target, ": ", parked, " changes are parked in walshift.dead_letter already, the most ",
                   "apply.dead_letter.max_parked allows: stopping instead of parking more behind them"));
}

absl::Status DeadLetterLimit::Admit(size_t parked, const std::string& target, absl::Time now) {
  Tick(now);
  if (parked + 1 > max_parked_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("target ", target, ": ", parked, " changes are parked in walshift.dead_letter already, the most ",
                     "apply.dead_letter.max_parked allows: stopping instead of parking more"));
  }
  rejections_.push_back(now);
  const uint64_t received = changes_ - (samples_.empty() ? 0 : samples_.front().second);
  const uint64_t rejected = rejections_.size();
  if (rejected >= 10 && rejected * 100 > static_cast<uint64_t>(max_percent_) * std::max<uint64_t>(received, 1)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "target ", target, ": ", rejected, " of the ", received, " changes received in the last ",
        absl::FormatDuration(window_), " were rejected, more than apply.dead_letter.max_percent (", max_percent_,
        "%): stopping instead of parking a flood"));
  }
  return absl::OkStatus();
}

}  // namespace walshift
