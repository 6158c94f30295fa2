// TableVerifier: differences re-checked after the target passed their read position, the
// rows/s budget, and the reverse walk for extra rows.
#include "daemon/verify/table_verifier_internal.h"

namespace walshift::verify_internal {

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
  std::string lacking =
      absl::StrCat("SELECT k.n FROM unnest(", absl::StrJoin(unnest_args, ", "), ") WITH ORDINALITY AS k(",
                   absl::StrJoin(cols_alias, ", "), ", n) WHERE NOT EXISTS (SELECT 1 FROM ", source_from_,
                   " AS s WHERE ", absl::StrJoin(match, " AND "), ")");
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
    ASSIGN_OR_RETURN(pg::ResultPtr r, pg::ExecParams(tgt_.get(),
                                                     absl::StrCat("SELECT ", absl::StrJoin(text_keys, ", "), " FROM ",
                                                                  pg::QuoteQualified(shape.table), " AS t", where,
                                                                  " ORDER BY ", keys, " LIMIT ", o_.chunk_rows),
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
    ASSIGN_OR_RETURN(pg::ResultPtr missing,
                     pg::ExecParams(src_.get(), lacking, array_values, "source: looking up keys"));
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
    for (size_t i = 0; i < key.size(); ++i)
      shown.push_back(absl::StrCat(shape.values[shape.key[i]].column, "=", key[i]));
    d.set_key(absl::StrJoin(shown, ", "));
    d.set_checked_at_lsn(FormatLsn(l2));
    RETURN_IF_ERROR(Report(std::move(d)));
    if (o_.delete_extras) {
      ASSIGN_OR_RETURN(pg::ResultPtr del, pg::ExecParams(tgt_.get(),
                                                         absl::StrCat("DELETE FROM ", pg::QuoteQualified(shape.table),
                                                                      " WHERE ", absl::StrJoin(conds, " AND ")),
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

}  // namespace walshift::verify_internal
