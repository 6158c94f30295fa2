#include "daemon/verify/table_verifier.h"

#include "daemon/verify/table_verifier_internal.h"

namespace walshift::verify_internal {

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
  check.head =
      absl::StrCat("SELECT e.i, t.ctid IS NOT NULL, e.w", eq.empty() ? "" : ", ", absl::StrJoin(eq, ", "), ", ",
                   absl::StrJoin(expected_text, ", "), ", ", absl::StrJoin(actual_text, ", "), " FROM (VALUES ");
  check.row = absl::StrCat(absl::StrJoin(exprs, ", "), ", ", wanted, ")");
  check.tail = absl::StrCat(") AS e(", absl::StrJoin(names, ", "), ") LEFT JOIN ", pg::QuoteQualified(shape.table),
                            " AS t ON ", absl::StrJoin(join, " AND "), " ORDER BY e.i");
  return &checks_.emplace(shape.id, std::move(check)).first->second;
}

absl::StatusOr<std::vector<v1::DriftEvent>> TableVerifier::Compare(const Row& row) {
  ASSIGN_OR_RETURN(auto all, CompareRows({&row}));
  return std::move(all[0]);
}

absl::StatusOr<std::vector<std::vector<v1::DriftEvent>>> TableVerifier::CompareRows(
    const std::vector<const Row*>& rows) {
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
      if ((shape.kind == OpKind::kUpdateOnly && !shape.match.empty()) ||
          (shape.kind != OpKind::kUpsert && shape.kind != OpKind::kUpdateOnly && shape.kind != OpKind::kDelete) ||
          shape.key.empty()) {
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
      ASSIGN_OR_RETURN(pg::ResultPtr res,
                       pg::ExecParams(tgt_.get(), ArrayCheck(shape), values,
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
      ASSIGN_OR_RETURN(pg::ResultPtr r,
                       pg::ExecParams(tgt_.get(), sql, values,
                                      absl::StrCat("target ", report_.target, ": comparing ", shape.table)));
      PGresult* res = r.get();
      const int cols = static_cast<int>(check->columns.size());
      for (int row = 0; row < PQntuples(res); ++row) {
        size_t k = std::stoul(PQgetvalue(res, row, 0));
        bool present = PQgetvalue(res, row, 1)[0] == 't';
        bool wanted = PQgetvalue(res, row, 2)[0] == 't';
        auto text = [&](int col) -> std::string {
          return PQgetisnull(res, row, col) ? "NULL" : PQgetvalue(res, row, col);
        };
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
            if (PQgetvalue(res, row, 3 + c)[0] == 't' || unverified_.count(check->columns[c])) continue;
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
    conds.push_back(
        absl::StrCat(pg::QuoteIdent(relation_->columns[key_columns_[i]].name), " = $", i + 1, "::", key_types_[i]));
    values.push_back(key[i].c_str());
  }
  ASSIGN_OR_RETURN(pg::ResultPtr r, pg::ExecParams(src_.get(),
                                                   absl::StrCat("SELECT ", absl::StrJoin(column_list_, ", "), " FROM ",
                                                                source_from_, " WHERE ", absl::StrJoin(conds, " AND ")),
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
    case v1::MISSING:
      ++report_.missing;
      break;
    case v1::EXTRA:
      ++report_.extra;
      break;
    default:
      ++report_.mismatched;
      break;
  }
  std::string identity =
      event.source_table() + "|" + event.target_table() + "|" + v1::DriftKind_Name(event.kind()) + "|" + event.key();
  for (const auto& c : event.columns()) absl::StrAppend(&identity, "|", c.column(), "=", c.actual());
  if (o_.reported_now != nullptr) o_.reported_now->insert(identity);
  bool repeat = o_.already_reported != nullptr && o_.already_reported->count(identity) > 0;
  if (o_.events != nullptr && !repeat) o_.events->Publish(event);
  if (o_.record && !repeat) {
    std::string columns = "[";
    for (int i = 0; i < event.columns_size(); ++i) {
      const auto& c = event.columns(i);
      absl::StrAppend(&columns, i ? "," : "", "{\"column\":", JsonString(c.column()),
                      ",\"expected\":", JsonString(c.expected()), ",\"actual\":", JsonString(c.actual()), "}");
    }
    columns += "]";
    RETURN_IF_ERROR(state::RecordDrift(tgt_.get(), event.pipeline(), event.source_table(), event.target_table(),
                                       v1::DriftKind_Name(event.kind()), event.key(), columns, event.checked_at_lsn()));
  }
  report_.Show(std::move(event), o_.max_shown);
  return absl::OkStatus();
}

// Re-checks rows that differed: after the target passed the position they were read at, read
// the source row again (L2), wait for the target to pass L2, compare, and read the source row a
// third time: unchanged since L2 means the difference is real.

absl::StatusOr<Lsn> CurrentLsn(PGconn* conn) {
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::Exec(conn, "SELECT pg_current_wal_lsn()::text", "source: reading the WAL position"));
  return ParseLsn(PQgetvalue(r.get(), 0, 0)).value_or(kInvalidLsn);
}

absl::StatusOr<VerifyTableReport> VerifyTable(const VerifyOptions& options, const MappingModule& module, size_t target,
                                              const std::string& path, const std::atomic<bool>& stop) {
  TableVerifier v(options, module, target, path, stop);
  return v.Run();
}

}  // namespace walshift::verify_internal
