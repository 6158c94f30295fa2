#include "daemon/verify/table_verifier.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/apply/pg_statements.h"
#include "daemon/core/status_macros.h"
#include "daemon/observe/format.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/pg_schema_inspector.h"
#include "daemon/state/pg_state.h"
#include "daemon/state/target_state.h"
#include "daemon/verify/document_verifier.h"
#include "google/protobuf/util/time_util.h"
#include "spdlog/spdlog.h"

namespace walshift::verify_internal {
namespace {

constexpr size_t kShownValue = 120;
constexpr int kRounds = 4;

using Row = std::vector<std::optional<std::string>>;

std::string Cut(const std::string& v) {
  return v.size() <= kShownValue ? v : absl::StrCat(v.substr(0, kShownValue), "... (", v.size(), " bytes)");
}


// Waits until the target's checkpoint reaches `lsn`; false when `settle` passes first.
absl::StatusOr<bool> WaitCheckpoint(PGconn* target, const std::string& pipeline, Lsn lsn, absl::Duration settle,
                                    const std::atomic<bool>& stop) {
  absl::Time deadline = absl::Now() + settle;
  for (;;) {
    ASSIGN_OR_RETURN(Lsn cp, state::ReadCheckpoint(target, pipeline, "target"));
    if (cp != kInvalidLsn && cp >= lsn) return true;
    if (absl::Now() >= deadline || stop.load()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// An expected target state: an op's shape and a copy of its parameters.
struct Expectation {
  const OpShape* shape = nullptr;
  Row params;
};

// One compiled comparison per shape, for any number of rows: the rows go into a VALUES list
// (`row` is one row's list with {{k}} for its k-th parameter), joined to the target table.
struct ShapeCheck {
  std::string head, row, tail;
  std::vector<int> slots;  // op parameter slot of each parameter of a row
  int compared = 0;        // columns compared (after present, wanted)
  std::vector<std::string> columns;
  std::vector<int> key_values;  // indices into columns of the key
  bool expect_absent = false;   // a delete
  bool only_if_present = false; // an update-only (owned) row: absent is fine
};

class TableVerifier {
 public:
  TableVerifier(const VerifyOptions& o, const MappingModule& module, size_t target_index, std::string mapping_path,
                const std::atomic<bool>& stop)
      : o_(o), module_(module), target_index_(target_index), stop_(stop) {
    report_.mapping = std::move(mapping_path);
    report_.source_table = module.source_table();
    report_.target = o.settings->targets[target_index].name;
  }

  absl::StatusOr<VerifyTableReport> Run();

 private:
  absl::Status Prepare();
  absl::StatusOr<std::vector<Expectation>> Expect(const Row& row);
  absl::StatusOr<const ShapeCheck*> CheckFor(const OpShape& shape);
  // The differences of one source row now (empty: as expected).
  absl::StatusOr<std::vector<v1::DriftEvent>> Compare(const Row& row);
  // The differences of each row (batched per target table).
  absl::StatusOr<std::vector<std::vector<v1::DriftEvent>>> CompareRows(const std::vector<const Row*>& rows);
  absl::StatusOr<std::optional<Row>> ReadRow(const std::vector<std::string>& key);
  std::vector<std::string> KeyOf(const Row& row) const;
  absl::Status Confirm(std::vector<std::pair<std::vector<std::string>, Lsn>> suspects);
  absl::Status ReverseWalk();
  absl::Status Report(v1::DriftEvent event);
  // The rows/s budget: `rows` read since `started` take at least rows / rows_per_second.
  void Pace(absl::Time started, int rows);

  const VerifyOptions& o_;
  const MappingModule& module_;
  size_t target_index_;
  const std::atomic<bool>& stop_;
  VerifyTableReport report_;
  pg::ConnPtr src_, tgt_;
  std::unique_ptr<PgSchemaInspector> inspector_;
  std::shared_ptr<SourceRelation> relation_;
  std::unique_ptr<BoundMapping> bound_;
  std::vector<int> key_columns_;
  std::vector<std::string> key_types_, column_list_;
  // The source table as read: ONLY an inheritance parent's own rows, every partition of a
  // partitioned table.
  std::string source_from_;
  bool no_key_ = false;  // the source table has no primary key to walk
  std::map<uint32_t, ShapeCheck> checks_;
  // The check of a JSON array element shape (RenderArrayCheck over a run), by shape id.
  const std::string& ArrayCheck(const OpShape& shape) {
    auto it = array_checks_.find(shape.id);
    if (it == array_checks_.end()) it = array_checks_.emplace(shape.id, RenderArrayCheck(shape, true)).first;
    return it->second;
  }
  std::map<uint32_t, std::string> array_checks_;
  std::map<std::string, bool> has_equality_;
};

absl::Status TableVerifier::Prepare() {
  const config::Settings& s = *o_.settings;
  ASSIGN_OR_RETURN(src_, pg::Connect(s.source_dsn, "source", "application_name=walshift-verify"));
  const auto& t = s.targets[target_index_];
  ASSIGN_OR_RETURN(tgt_, pg::Connect(t.dsn, absl::StrCat("target ", t.name), "application_name=walshift-verify"));
  RETURN_IF_ERROR(state::EnsureSchema(tgt_.get(), absl::StrCat("target ", t.name)));
  inspector_ = std::make_unique<PgSchemaInspector>(s.source_dsn, s.targets);
  std::vector<std::string> problems;
  ASSIGN_OR_RETURN(auto rel, DescribeSourceTable(src_.get(), module_.source_table(), &problems, report_.mapping));
  if (!rel) return absl::FailedPreconditionError(absl::StrJoin(problems, "; "));
  relation_ = std::make_shared<SourceRelation>(*std::move(rel));
  ASSIGN_OR_RETURN(bound_, module_.Bind(*relation_, *inspector_));
  ASSIGN_OR_RETURN(auto pk, ReadPrimaryKey(src_.get(), *relation_));
  if (pk.empty()) {
    // Nothing identifies a row to compare (an insert-only table without a key): said, not walked.
    no_key_ = true;
    report_.note = absl::StrCat(module_.source_table(), " has no primary key: its rows are not compared");
    return absl::OkStatus();
  }
  for (const auto& [name, type] : pk) {
    key_columns_.push_back(relation_->ColumnIndex(name));
    key_types_.push_back(type);
  }
  for (const auto& c : relation_->columns) column_list_.push_back(pg::QuoteIdent(c.name));
  ASSIGN_OR_RETURN(source_from_, SourceRowsFrom(src_.get(), *relation_));
  return absl::OkStatus();
}

std::vector<std::string> TableVerifier::KeyOf(const Row& row) const {
  std::vector<std::string> key;
  for (int k : key_columns_) key.push_back(row[k].value_or(""));
  return key;
}

absl::StatusOr<std::vector<Expectation>> TableVerifier::Expect(const Row& row) {
  Tuple tuple(row.size());
  for (size_t c = 0; c < row.size(); ++c) {
    tuple[c] = row[c] ? Datum{DatumKind::kText, static_cast<uint32_t>(row[c]->size()), row[c]->c_str()}
                      : Datum{DatumKind::kNull, 0, nullptr};
  }
  RowChange change;
  change.kind = ChangeKind::kInsert;
  change.relation = relation_.get();
  change.new_tuple = &tuple;
  change.snapshot = true;
  std::vector<Expectation> out;
  RETURN_IF_ERROR(bound_->Map(change, [&](const TargetOp& op) {
    Expectation e;
    e.shape = op.shape;
    for (int i = 0; i < op.shape->num_params; ++i) {
      const Datum& d = op.params[i];
      e.params.push_back(d.is_null() ? std::nullopt : std::optional<std::string>(std::string(d.view())));
    }
    out.push_back(std::move(e));
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<const ShapeCheck*> TableVerifier::CheckFor(const OpShape& shape) {
  auto it = checks_.find(shape.id);
  if (it != checks_.end()) return &it->second;
  ShapeCheck check;
  check.expect_absent = shape.kind == OpKind::kDelete;
  // An update of a row that another mapping decides the existence of: compared when present.
  check.only_if_present = shape.kind == OpKind::kUpdateOnly;
  ASSIGN_OR_RETURN(auto types, inspector_->TargetColumnTypes(shape.target, shape.table));
  std::map<int, int> position;  // slot → $n
  auto ref = [&](int slot) {
    auto [p, inserted] = position.emplace(slot, static_cast<int>(check.slots.size()) + 1);
    if (inserted) check.slots.push_back(slot);
    return absl::StrCat("{{", p->second, "}}");
  };
  auto expression = [&](const std::string& sql, const std::vector<int>& inputs) {
    return ExpressionSql(shape, sql, inputs, ref);
  };
  std::vector<std::string> exprs, join, eq, expected_text, actual_text;
  for (size_t i = 0; i < shape.values.size(); ++i) {
    const TargetValue& v = shape.values[i];
    std::string type = types.count(v.column) ? types[v.column] : "text";
    std::string value = v.param >= 0 ? absl::StrCat(ref(v.param), "::", type)
                                     : absl::StrCat(expression(v.sql, v.sql_inputs), "::", type);
    exprs.push_back(value);
    std::string col = absl::StrCat("t.", pg::QuoteIdent(v.column));
    bool is_key = std::find(shape.key.begin(), shape.key.end(), static_cast<int>(i)) != shape.key.end();
    if (is_key) {
      join.push_back(absl::StrCat(col, " = e.v", i));
      check.key_values.push_back(static_cast<int>(check.columns.size()));
    }
    check.columns.push_back(v.column);
    if (!has_equality_.count(type)) {
      auto r = pg::ExecParams(tgt_.get(),
                              "SELECT EXISTS (SELECT 1 FROM pg_operator WHERE oprname = '=' AND "
                              "oprleft = $1::regtype AND oprright = $1::regtype)",
                              {type.c_str()}, "reading operators");
      has_equality_[type] = r.ok() && PQgetvalue(r->get(), 0, 0)[0] == 't';
    }
    if (type == "json") {
      eq.push_back(absl::StrCat("(e.v", i, ")::jsonb IS NOT DISTINCT FROM (", col, ")::jsonb"));
    } else if (has_equality_[type]) {
      eq.push_back(absl::StrCat("e.v", i, " IS NOT DISTINCT FROM ", col));
    } else {
      eq.push_back(absl::StrCat("(e.v", i, ")::text IS NOT DISTINCT FROM (", col, ")::text"));
    }
    expected_text.push_back(absl::StrCat("(e.v", i, ")::text"));
    actual_text.push_back(absl::StrCat("(", col, ")::text"));
  }
  std::string wanted = check.expect_absent ? "false"
                       : shape.condition.empty()
                           ? "true"
                           : absl::StrCat("coalesce(", expression(shape.condition, shape.condition_inputs), ", false)");
  if (check.expect_absent) eq.clear();
  check.compared = static_cast<int>(eq.size());
  std::vector<std::string> names = {"i"};
  for (size_t i = 0; i < exprs.size(); ++i) names.push_back(absl::StrCat("v", i));
  names.push_back("w");
  check.head = absl::StrCat("SELECT e.i, t.ctid IS NOT NULL, e.w", eq.empty() ? "" : ", ", absl::StrJoin(eq, ", "), ", ",
                            absl::StrJoin(expected_text, ", "), ", ", absl::StrJoin(actual_text, ", "),
                            " FROM (VALUES ");
  check.row = absl::StrCat(absl::StrJoin(exprs, ", "), ", ", wanted, ")");
  check.tail = absl::StrCat(") AS e(", absl::StrJoin(names, ", "), ") LEFT JOIN ", pg::QuoteQualified(shape.table),
                            " AS t ON ", absl::StrJoin(join, " AND "), " ORDER BY e.i");
  return &checks_.emplace(shape.id, std::move(check)).first->second;
}

absl::StatusOr<std::vector<v1::DriftEvent>> TableVerifier::Compare(const Row& row) {
  ASSIGN_OR_RETURN(auto all, CompareRows({&row}));
  return std::move(all[0]);
}

absl::StatusOr<std::vector<std::vector<v1::DriftEvent>>> TableVerifier::CompareRows(const std::vector<const Row*>& rows) {
  std::vector<std::vector<v1::DriftEvent>> out(rows.size());
  auto event = [&](const OpShape& shape) {
    v1::DriftEvent d;
    d.set_pipeline(o_.settings->proto.pipeline());
    d.set_source_table(report_.source_table);
    d.set_target(report_.target);
    d.set_target_table(shape.table);
    return d;
  };
  // Expectations by shape, in row order: (row index, expectation).
  std::map<const OpShape*, std::vector<std::pair<size_t, Expectation>>> by_shape, by_module;
  std::vector<const OpShape*> order;
  // The module's answer for one op: present, equal, expected, actual, key from column `at`.
  auto module_answer = [&](const OpShape& shape, PGresult* res, int row, int at, size_t r) {
    bool present = PQgetvalue(res, row, at)[0] == 't', equal = PQgetvalue(res, row, at + 1)[0] == 't';
    if (present && equal) return;
    v1::DriftEvent d = event(shape);
    d.set_key(PQgetvalue(res, row, at + 4));
    d.set_kind(present ? v1::MISMATCH : v1::MISSING);
    if (present) {
      v1::ColumnDiff* diff = d.add_columns();
      diff->set_column("element");
      diff->set_expected(Cut(PQgetvalue(res, row, at + 2)));
      diff->set_actual(Cut(PQgetvalue(res, row, at + 3)));
    }
    out[r].push_back(std::move(d));
  };
  for (size_t r = 0; r < rows.size(); ++r) {
    ASSIGN_OR_RETURN(std::vector<Expectation> expected, Expect(*rows[r]));
    for (Expectation& e : expected) {
      const OpShape& shape = *e.shape;
      if (shape.kind == OpKind::kArrayUpsert) {
        by_module[&shape].emplace_back(r, std::move(e));  // one element of a JSON array
        continue;
      }
      if ((shape.kind == OpKind::kUpdateOnly && !shape.match.empty()) || shape.kind != OpKind::kUpsert &&
          shape.kind != OpKind::kUpdateOnly && shape.kind != OpKind::kDelete || shape.key.empty()) {
        ++report_.skipped;
        if (report_.note.empty()) {
          report_.note = absl::StrCat(OpKindName(shape.kind), " of ", shape.table, " is not compared");
        }
        continue;
      }
      if (!by_shape.count(&shape)) order.push_back(&shape);
      by_shape[&shape].emplace_back(r, std::move(e));
    }
  }
  // Module checks, 256 ops per query, every parameter an array of the ops' values.
  for (const auto& [shape_ptr, list] : by_module) {
    const OpShape& shape = *shape_ptr;
    for (size_t start = 0; start < list.size(); start += 256) {
      size_t n = std::min<size_t>(256, list.size() - start);
      std::vector<std::string> arrays(shape.num_params);
      std::vector<const char*> column(n);
      for (int slot = 0; slot < shape.num_params; ++slot) {
        for (size_t k = 0; k < n; ++k) {
          const auto& p = list[start + k].second.params[slot];
          column[k] = p ? p->c_str() : nullptr;
        }
        arrays[slot] = pg::TextArrayLiteral(column);
      }
      std::vector<const char*> values;
      for (const std::string& a : arrays) values.push_back(a.c_str());
      ASSIGN_OR_RETURN(pg::ResultPtr res, pg::ExecParams(tgt_.get(), ArrayCheck(shape), values,
                                                         absl::StrCat("target ", report_.target, ": checking ", shape.table)));
      for (int row = 0; row < PQntuples(res.get()); ++row) {
        size_t k = std::stoul(PQgetvalue(res.get(), row, 0)) - 1;
        if (k < n) module_answer(shape, res.get(), row, 1, list[start + k].first);
      }
    }
  }
  for (const OpShape* shape_ptr : order) {
    const OpShape& shape = *shape_ptr;
    ASSIGN_OR_RETURN(const ShapeCheck* check, CheckFor(shape));
    const auto& list = by_shape[shape_ptr];
    const size_t per_row = check->slots.size();
    const size_t batch = std::max<size_t>(1, std::min<size_t>(256, 60000 / std::max<size_t>(1, per_row)));
    for (size_t start = 0; start < list.size(); start += batch) {
      size_t n = std::min(batch, list.size() - start);
      std::string sql = check->head;
      std::vector<const char*> values;
      for (size_t k = 0; k < n; ++k) {
        // One VALUES row: its index, then the template with this row's parameter numbers.
        absl::StrAppend(&sql, k ? ", (" : "(", k, ", ");
        const std::string& t = check->row;
        for (size_t pos = 0; pos < t.size();) {
          size_t open = t.find("{{", pos);
          if (open == std::string::npos) {
            sql.append(t, pos, std::string::npos);
            break;
          }
          size_t close = t.find("}}", open);
          sql.append(t, pos, open - pos);
          absl::StrAppend(&sql, "$", k * per_row + std::stoul(t.substr(open + 2, close - open - 2)));
          pos = close + 2;
        }
        const Expectation& e = list[start + k].second;
        for (int slot : check->slots) values.push_back(e.params[slot] ? e.params[slot]->c_str() : nullptr);
      }
      sql += check->tail;
      ASSIGN_OR_RETURN(pg::ResultPtr r, pg::ExecParams(tgt_.get(), sql, values,
                                                       absl::StrCat("target ", report_.target, ": comparing ", shape.table)));
      PGresult* res = r.get();
      const int cols = static_cast<int>(check->columns.size());
      for (int row = 0; row < PQntuples(res); ++row) {
        size_t k = std::stoul(PQgetvalue(res, row, 0));
        bool present = PQgetvalue(res, row, 1)[0] == 't';
        bool wanted = PQgetvalue(res, row, 2)[0] == 't';
        auto text = [&](int col) -> std::string { return PQgetisnull(res, row, col) ? "NULL" : PQgetvalue(res, row, col); };
        int expected_at = 3 + check->compared, actual_at = expected_at + cols;
        v1::DriftEvent d = event(shape);
        std::vector<std::string> key;
        for (int kv : check->key_values) key.push_back(absl::StrCat(check->columns[kv], "=", text(expected_at + kv)));
        d.set_key(absl::StrJoin(key, ", "));
        if (wanted && !present && check->only_if_present) {
          continue;
        } else if (wanted && !present) {
          d.set_kind(v1::MISSING);
        } else if (!wanted && present) {
          d.set_kind(v1::EXTRA);
        } else if (wanted && present) {
          for (int c = 0; c < check->compared; ++c) {
            if (PQgetvalue(res, row, 3 + c)[0] == 't') continue;
            v1::ColumnDiff* diff = d.add_columns();
            diff->set_column(check->columns[c]);
            diff->set_expected(Cut(text(expected_at + c)));
            diff->set_actual(Cut(text(actual_at + c)));
          }
          if (d.columns_size() == 0) continue;
          d.set_kind(v1::MISMATCH);
        } else {
          continue;
        }
        out[list[start + k].first].push_back(std::move(d));
      }
    }
  }
  return out;
}

absl::StatusOr<std::optional<Row>> TableVerifier::ReadRow(const std::vector<std::string>& key) {
  std::vector<std::string> conds;
  std::vector<const char*> values;
  for (size_t i = 0; i < key_columns_.size(); ++i) {
    conds.push_back(absl::StrCat(pg::QuoteIdent(relation_->columns[key_columns_[i]].name), " = $", i + 1, "::",
                                 key_types_[i]));
    values.push_back(key[i].c_str());
  }
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::ExecParams(src_.get(),
                                  absl::StrCat("SELECT ", absl::StrJoin(column_list_, ", "), " FROM ", source_from_,
                                               " WHERE ",
                                               absl::StrJoin(conds, " AND ")),
                                  values, "source: reading a row"));
  if (PQntuples(r.get()) == 0) return std::nullopt;
  Row row;
  for (int c = 0; c < PQnfields(r.get()); ++c) {
    row.push_back(PQgetisnull(r.get(), 0, c) ? std::nullopt : std::optional<std::string>(PQgetvalue(r.get(), 0, c)));
  }
  return row;
}

absl::Status TableVerifier::Report(v1::DriftEvent event) {
  *event.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
  switch (event.kind()) {
    case v1::MISSING: ++report_.missing; break;
    case v1::EXTRA: ++report_.extra; break;
    default: ++report_.mismatched; break;
  }
  std::string identity = event.source_table() + "|" + event.target_table() + "|" + v1::DriftKind_Name(event.kind()) +
                         "|" + event.key();
  for (const auto& c : event.columns()) absl::StrAppend(&identity, "|", c.column(), "=", c.actual());
  if (o_.reported_now != nullptr) o_.reported_now->insert(identity);
  bool repeat = o_.already_reported != nullptr && o_.already_reported->count(identity) > 0;
  if (o_.events != nullptr && !repeat) o_.events->Publish(event);
  if (o_.record && !repeat) {
    std::string columns = "[";
    for (int i = 0; i < event.columns_size(); ++i) {
      const auto& c = event.columns(i);
      absl::StrAppend(&columns, i ? "," : "", "{\"column\":", JsonString(c.column()), ",\"expected\":",
                      JsonString(c.expected()), ",\"actual\":", JsonString(c.actual()), "}");
    }
    columns += "]";
    RETURN_IF_ERROR(state::RecordDrift(tgt_.get(), event.pipeline(), event.source_table(), event.target_table(),
                                       v1::DriftKind_Name(event.kind()), event.key(), columns,
                                       event.checked_at_lsn()));
  }
  if (report_.shown.size() < o_.max_shown) report_.shown.push_back(std::move(event));
  return absl::OkStatus();
}

// Re-checks rows that differed: after the target passed the position they were read at, read
// the source row again (L2), wait for the target to pass L2, compare, and read the source row a
// third time: unchanged since L2 means the difference is real.
absl::Status TableVerifier::Confirm(std::vector<std::pair<std::vector<std::string>, Lsn>> found) {
  const std::string& pipeline = o_.settings->proto.pipeline();
  struct Suspect {
    std::vector<std::string> key;
    Lsn lsn;
    int confirmed = 0;  // rounds in a row that showed the difference with the source row unchanged
  };
  std::vector<Suspect> suspects;
  for (auto& [key, lsn] : found) suspects.push_back({std::move(key), lsn, 0});
  for (int round = 0; round < kRounds && !suspects.empty(); ++round) {
    Lsn first = kInvalidLsn;
    for (const auto& s : suspects) first = std::max(first, s.lsn);
    ASSIGN_OR_RETURN(bool passed, WaitCheckpoint(tgt_.get(), pipeline, first, o_.settle, stop_));
    if (!passed) break;
    std::vector<Suspect> again;
    for (Suspect& s : suspects) {
      ASSIGN_OR_RETURN(Lsn l2, CurrentLsn(src_.get()));
      ASSIGN_OR_RETURN(auto before, ReadRow(s.key));
      ASSIGN_OR_RETURN(bool settled, WaitCheckpoint(tgt_.get(), pipeline, l2, o_.settle, stop_));
      if (!settled) {
        again.push_back({s.key, l2, 0});
        continue;
      }
      std::vector<v1::DriftEvent> diffs;
      if (before) {
        ASSIGN_OR_RETURN(diffs, Compare(*before));
      }
      if (diffs.empty()) continue;  // in flight, now applied
      ASSIGN_OR_RETURN(auto after, ReadRow(s.key));
      if (after != before) {
        again.push_back({s.key, l2, 0});  // the row changed meanwhile: look again
        continue;
      }
      if (++s.confirmed < 2) {
        // Once more: a row changed and changed back between the reads would fool one round.
        again.push_back({s.key, l2, s.confirmed});
        continue;
      }
      for (auto& d : diffs) {
        d.set_checked_at_lsn(FormatLsn(l2));
        RETURN_IF_ERROR(Report(std::move(d)));
      }
    }
    suspects = std::move(again);
  }
  report_.unsettled += suspects.size();
  return absl::OkStatus();
}

void TableVerifier::Pace(absl::Time started, int rows) {
  if (o_.rows_per_second <= 0) return;
  absl::Time until = started + absl::Seconds(rows / o_.rows_per_second);
  while (absl::Now() < until && !stop_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

absl::Status TableVerifier::ReverseWalk() {
  // Only for a table this mapping alone fills, keyed by plain source columns.
  std::vector<const OpShape*> upserts;
  for (const OpShape* s : bound_->shapes()) {
    if (s->kind == OpKind::kArrayUpsert) {
      report_.note = absl::StrCat(s->table, " holds JSON array elements: extra elements are not looked for");
      return absl::OkStatus();
    }
    if (s->kind == OpKind::kUpsert) upserts.push_back(s);
  }
  if (upserts.size() != 1) return absl::OkStatus();
  const OpShape& shape = *upserts[0];
  for (size_t m = 0; m < o_.modules->size(); ++m) {
    if ((*o_.modules)[m].get() == &module_) continue;
    if (o_.settings->targets[o_.module_target[m]].name != report_.target) continue;
    // A mapping whose rows this one owns never creates a row: every row is this source's.
    auto own = (*o_.modules)[m]->owned();
    if (own && own->owner == module_.source_table() && own->table == shape.table) continue;
    // Another mapping to the same target table: its rows are not this source's to account for.
    std::vector<std::string> problems;
    auto rel = DescribeSourceTable(src_.get(), (*o_.modules)[m]->source_table(), &problems, "");
    if (!rel.ok() || !*rel) continue;
    auto other = (*o_.modules)[m]->Bind(**rel, *inspector_);
    if (!other.ok()) continue;
    for (const OpShape* s : (*other)->shapes()) {
      if (s->table == shape.table) {
        report_.note = absl::StrCat(shape.table, " is also written by ", (*o_.modules)[m]->source_table(),
                                    ": extra rows are not looked for");
        return absl::OkStatus();
      }
    }
  }
  std::vector<std::string> target_keys, source_cols, source_types;  // source_cols: raw names
  for (int k : shape.key) {
    const TargetValue& v = shape.values[k];
    int src = v.param >= 0 ? relation_->ColumnIndex(v.origin) : -1;
    if (src < 0) {
      report_.note = absl::StrCat("the key of ", shape.table, " is computed: extra rows are not looked for");
      return absl::OkStatus();
    }
    target_keys.push_back(pg::QuoteIdent(v.column));
    source_cols.push_back(relation_->columns[src].name);
  }
  {
    std::string oid = std::to_string(relation_->oid);
    for (const std::string& c : source_cols) {
      ASSIGN_OR_RETURN(pg::ResultPtr t, pg::ExecParams(src_.get(),
                                                       "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                                                       "WHERE attrelid = $1::oid AND attname = $2",
                                                       {oid.c_str(), c.c_str()}, "reading a key type"));
      source_types.push_back(PQgetvalue(t.get(), 0, 0));
    }
  }
  report_.extras_checked = true;
  // Qualified by the table alias: an unqualified name in ORDER BY would pick the ::text output
  // column of the same name and walk the keys in text order (slow, and skipping keys).
  std::vector<std::string> qualified, text_keys;
  for (size_t i = 0; i < target_keys.size(); ++i) {
    qualified.push_back(absl::StrCat("t.", target_keys[i]));
    text_keys.push_back(absl::StrCat("t.", target_keys[i], "::text AS k", i));
  }
  std::string keys = absl::StrJoin(qualified, ", ");
  // Which keys of a chunk the source lacks, in one statement: the keys as text arrays.
  std::vector<std::string> unnest_args, cols_alias, match;
  for (size_t i = 0; i < source_cols.size(); ++i) {
    unnest_args.push_back(absl::StrCat("$", i + 1, "::text[]"));
    cols_alias.push_back(absl::StrCat("a", i));
    match.push_back(absl::StrCat("s.", pg::QuoteIdent(source_cols[i]), " = k.a", i, "::", source_types[i]));
  }
  std::string lacking = absl::StrCat("SELECT k.n FROM unnest(", absl::StrJoin(unnest_args, ", "), ") WITH ORDINALITY AS k(",
                                     absl::StrJoin(cols_alias, ", "), ", n) WHERE NOT EXISTS (SELECT 1 FROM ", source_from_, " AS s WHERE ",
                                     absl::StrJoin(match, " AND "), ")");
  std::vector<std::string> last;
  std::vector<std::pair<std::vector<std::string>, Lsn>> suspects;
  for (;;) {
    if (stop_.load()) return absl::CancelledError("stopped");
    absl::Time chunk_started = absl::Now();
    std::vector<std::string> conds, placeholders;
    std::vector<const char*> values;
    for (size_t i = 0; i < last.size(); ++i) {
      placeholders.push_back(absl::StrCat("$", i + 1));
      values.push_back(last[i].c_str());
    }
    // Keyset pagination in the target's own key order; the text parameters take the key's types.
    std::string where;
    if (!last.empty()) {
      std::vector<std::string> typed;
      for (size_t i = 0; i < last.size(); ++i) typed.push_back(absl::StrCat("$", i + 1, "::", source_types[i]));
      where = absl::StrCat(" WHERE (", keys, ") > (", absl::StrJoin(typed, ", "), ")");
    }
    ASSIGN_OR_RETURN(pg::ResultPtr r,
                     pg::ExecParams(tgt_.get(),
                                    absl::StrCat("SELECT ", absl::StrJoin(text_keys, ", "), " FROM ",
                                                 pg::QuoteQualified(shape.table), " AS t", where, " ORDER BY ", keys,
                                                 " LIMIT ", o_.chunk_rows),
                                    values, "target: walking keys"));
    int n = PQntuples(r.get());
    if (n == 0) break;
    std::vector<std::vector<std::string>> chunk(n);
    std::vector<std::vector<std::string>> columns(target_keys.size());
    for (int i = 0; i < n; ++i) {
      for (size_t c = 0; c < target_keys.size(); ++c) {
        chunk[i].push_back(PQgetvalue(r.get(), i, c));
        columns[c].push_back(chunk[i].back());
      }
    }
    last = chunk.back();
    ASSIGN_OR_RETURN(Lsn lsn, CurrentLsn(src_.get()));
    std::vector<std::string> arrays;
    for (const auto& col : columns) arrays.push_back(pg::TextArrayLiteral(col));
    std::vector<const char*> array_values;
    for (const auto& a : arrays) array_values.push_back(a.c_str());
    ASSIGN_OR_RETURN(pg::ResultPtr missing, pg::ExecParams(src_.get(), lacking, array_values, "source: looking up keys"));
    for (int i = 0; i < PQntuples(missing.get()); ++i) {
      suspects.emplace_back(chunk[std::stoul(PQgetvalue(missing.get(), i, 0)) - 1], lsn);
    }
    Pace(chunk_started, n);
    if (n < o_.chunk_rows) break;
  }
  // Confirm: the target passed the position, the target still has the row, the source does not.
  const std::string& pipeline = o_.settings->proto.pipeline();
  bool stalled = false;  // the checkpoint did not move within the settle time: do not wait per row
  for (const auto& [key, lsn] : suspects) {
    bool passed = false;
    if (!stalled) {
      ASSIGN_OR_RETURN(passed, WaitCheckpoint(tgt_.get(), pipeline, lsn, o_.settle, stop_));
      stalled = !passed;
    }
    if (!passed) {
      ++report_.unsettled;
      continue;
    }
    std::vector<std::string> conds;
    std::vector<const char*> values;
    for (size_t i = 0; i < key.size(); ++i) {
      conds.push_back(absl::StrCat(target_keys[i], "::text = $", i + 1));
      values.push_back(key[i].c_str());
    }
    // Absent from the source at L, and still in the target once it has passed L, twice: a row
    // deleted and inserted again meanwhile shows up in one of the reads and is no drift.
    Lsn l2 = kInvalidLsn;
    enum { kExtra, kFine, kUnsettled } verdict = kExtra;
    for (int round = 0; round < 2 && verdict == kExtra; ++round) {
      ASSIGN_OR_RETURN(l2, CurrentLsn(src_.get()));
      ASSIGN_OR_RETURN(auto row, ReadRow(key));
      if (row) {
        verdict = kFine;
        break;
      }
      ASSIGN_OR_RETURN(bool settled, WaitCheckpoint(tgt_.get(), pipeline, l2, o_.settle, stop_));
      if (!settled) {
        verdict = kUnsettled;
        break;
      }
      ASSIGN_OR_RETURN(pg::ResultPtr still,
                       pg::ExecParams(tgt_.get(),
                                      absl::StrCat("SELECT 1 FROM ", pg::QuoteQualified(shape.table), " WHERE ",
                                                   absl::StrJoin(conds, " AND ")),
                                      values, "target: re-reading a row"));
      if (PQntuples(still.get()) == 0) verdict = kFine;
    }
    if (verdict == kUnsettled) ++report_.unsettled;
    if (verdict != kExtra) continue;
    v1::DriftEvent d;
    d.set_pipeline(pipeline);
    d.set_source_table(report_.source_table);
    d.set_target(report_.target);
    d.set_target_table(shape.table);
    d.set_kind(v1::EXTRA);
    std::vector<std::string> shown;
    for (size_t i = 0; i < key.size(); ++i) shown.push_back(absl::StrCat(shape.values[shape.key[i]].column, "=", key[i]));
    d.set_key(absl::StrJoin(shown, ", "));
    d.set_checked_at_lsn(FormatLsn(l2));
    RETURN_IF_ERROR(Report(std::move(d)));
    if (o_.delete_extras) {
      ASSIGN_OR_RETURN(pg::ResultPtr del,
                       pg::ExecParams(tgt_.get(),
                                      absl::StrCat("DELETE FROM ", pg::QuoteQualified(shape.table), " WHERE ",
                                                   absl::StrJoin(conds, " AND ")),
                                      values, "target: deleting an extra row"));
      report_.deleted += std::strtoull(PQcmdTuples(del.get()), nullptr, 10);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<VerifyTableReport> TableVerifier::Run() {
  absl::Time started = absl::Now();
  RETURN_IF_ERROR(Prepare());
  if (no_key_) return report_;
  std::vector<std::string> key_names;
  for (int k : key_columns_) key_names.push_back(pg::QuoteIdent(relation_->columns[k].name));
  std::string keys = absl::StrJoin(key_names, ", ");
  std::vector<std::string> placeholders;
  for (size_t i = 0; i < key_types_.size(); ++i) placeholders.push_back(absl::StrCat("$", i + 1, "::", key_types_[i]));
  std::string select = absl::StrCat("SELECT ", absl::StrJoin(column_list_, ", "), " FROM ", source_from_);
  std::vector<std::string> after;
  std::vector<std::pair<std::vector<std::string>, Lsn>> suspects;
  for (;;) {
    if (stop_.load()) return absl::CancelledError("stopped");
    absl::Time chunk_started = absl::Now();
    RETURN_IF_ERROR(pg::Exec(src_.get(), "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "source: BEGIN").status());
    ASSIGN_OR_RETURN(Lsn lsn, CurrentLsn(src_.get()));
    std::vector<const char*> values;
    for (const auto& k : after) values.push_back(k.c_str());
    std::string sql = after.empty() ? absl::StrCat(select, " ORDER BY ", keys, " LIMIT ", o_.chunk_rows)
                                    : absl::StrCat(select, " WHERE (", keys, ") > (", absl::StrJoin(placeholders, ", "),
                                                   ") ORDER BY ", keys, " LIMIT ", o_.chunk_rows);
    ASSIGN_OR_RETURN(pg::ResultPtr rows, pg::ExecParams(src_.get(), sql, values, "source: reading a chunk"));
    RETURN_IF_ERROR(pg::Exec(src_.get(), "COMMIT", "source: COMMIT").status());
    int n = PQntuples(rows.get());
    std::vector<Row> chunk(n);
    std::vector<const Row*> pointers;
    for (int i = 0; i < n; ++i) {
      for (int c = 0; c < PQnfields(rows.get()); ++c) {
        chunk[i].push_back(PQgetisnull(rows.get(), i, c) ? std::nullopt
                                                         : std::optional<std::string>(PQgetvalue(rows.get(), i, c)));
      }
      pointers.push_back(&chunk[i]);
    }
    ASSIGN_OR_RETURN(auto diffs, CompareRows(pointers));
    for (int i = 0; i < n; ++i) {
      ++report_.checked;
      if (!diffs[i].empty()) suspects.emplace_back(KeyOf(chunk[i]), lsn);
    }
    if (n > 0) after = KeyOf(chunk.back());
    if (o_.progress) o_.progress(report_, false);
    Pace(chunk_started, n);
    if (n < o_.chunk_rows) break;
  }
  RETURN_IF_ERROR(Confirm(std::move(suspects)));
  RETURN_IF_ERROR(ReverseWalk());
  report_.seconds = absl::ToDoubleSeconds(absl::Now() - started);
  if (o_.progress) o_.progress(report_, true);
  return report_;
}

}  // namespace

absl::StatusOr<Lsn> CurrentLsn(PGconn* conn) {
  ASSIGN_OR_RETURN(pg::ResultPtr r, pg::Exec(conn, "SELECT pg_current_wal_lsn()::text", "source: reading the WAL position"));
  return ParseLsn(PQgetvalue(r.get(), 0, 0)).value_or(kInvalidLsn);
}

absl::StatusOr<VerifyTableReport> VerifyTable(const VerifyOptions& options, const MappingModule& module, size_t target,
                                              const std::string& path, const std::atomic<bool>& stop) {
  TableVerifier v(options, module, target, path, stop);
  return v.Run();
}

}  // namespace walshift::verify_internal
