// The initial copy's plan: units (source table, target), their key ranges still missing, and
// the order between units (foreign keys, owners).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/core/status_macros.h"
#include "daemon/pipeline/initial_copy.h"
#include "daemon/pipeline/initial_copy_internal.h"
#include "daemon/state/target_state.h"
#include "spdlog/spdlog.h"

namespace walshift {
using pg::OptionalInt;
}  // namespace walshift

namespace walshift {

absl::Status InitialCopy::Plan() {
  const config::Settings& settings = *options_.settings;
  ASSIGN_OR_RETURN(planner_, pg::Connect(settings.source_dsn, "source", "application_name=walshiftd-copy"));
  PGconn* src = planner_.get();
  if (options_.snapshot.name.empty()) {
    // No slot (dry run): this connection's transaction exports the snapshot and lives as long
    // as the copy.
    RETURN_IF_ERROR(pg::Exec(src, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "source: BEGIN").status());
    ASSIGN_OR_RETURN(pg::ResultPtr r, pg::Exec(src, "SELECT pg_export_snapshot()", "source: exporting a snapshot"));
    snapshot_name_ = PQgetvalue(r.get(), 0, 0);
  } else {
    snapshot_name_ = options_.snapshot.name;
    RETURN_IF_ERROR(ImportSnapshot(src, snapshot_name_));
  }
  std::map<size_t, pg::ConnPtr> targets;  // PostgreSQL targets, for their catalogs
  for (size_t t : options_.targets) {
    const auto& tc = settings.targets[t];
    if (tc.documents()) continue;
    ASSIGN_OR_RETURN(targets[t],
                     pg::Connect(tc.dsn, absl::StrCat("target ", tc.name), "application_name=walshiftd-copy"));
  }
  PgSchemaInspector inspector(settings.source_dsn, settings.targets);

  // Units, in mapping order.
  std::map<std::pair<std::string, size_t>, Unit*> by_key;
  std::vector<std::string> problems;
  for (size_t m = 0; m < options_.modules->size(); ++m) {
    size_t t = options_.module_target[m];
    if (std::find(options_.targets.begin(), options_.targets.end(), t) == options_.targets.end()) continue;
    const std::string& table = (*options_.modules)[m]->source_table();
    Unit*& u = by_key[{table, t}];
    if (u == nullptr) {
      units_.push_back(std::make_unique<Unit>());
      u = units_.back().get();
      u->source_table = table;
      u->target = t;
      u->report.source_table = table;
      u->report.target = settings.targets[t].name;
    }
    u->modules.push_back(m);
  }
  for (auto& u : units_) {
    ASSIGN_OR_RETURN(auto rel, DescribeSourceTable(src, u->source_table, &problems, "initial copy"));
    if (!rel) continue;
    u->relation = std::make_shared<SourceRelation>(*std::move(rel));
    const std::string oid = std::to_string(u->relation->oid);
    // Chunked by the primary key when it is one integer column that deletes carry.
    ASSIGN_OR_RETURN(
        pg::ResultPtr pk,
        pg::ExecParams(src,
                       "SELECT a.attname, a.atttypid IN (20, 21, 23) FROM pg_index i JOIN pg_attribute a "
                       "ON a.attrelid = i.indrelid AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1]) "
                       "WHERE i.indrelid = $1::oid AND i.indisprimary",
                       {oid.c_str()}, absl::StrCat("reading the primary key of ", u->source_table)));
    if (PQntuples(pk.get()) == 1 && PQgetvalue(pk.get(), 0, 1)[0] == 't' &&
        (u->relation->replica_identity == 'd' || u->relation->replica_identity == 'f')) {
      u->key_column = PQgetvalue(pk.get(), 0, 0);
    }
    ASSIGN_OR_RETURN(pg::ResultPtr est,
                     pg::ExecParams(src, "SELECT reltuples::bigint FROM pg_class WHERE oid = $1::oid", {oid.c_str()},
                                    "reading the row estimate"));
    int64_t estimate = OptionalInt(est.get(), 0, 0).value_or(-1);
    ASSIGN_OR_RETURN(u->from, SourceRowsFrom(src, *u->relation));
    const std::string& from = u->from;
    if (estimate < 0) {  // never analyzed: count under the snapshot
      ASSIGN_OR_RETURN(pg::ResultPtr c, pg::Exec(src, absl::StrCat("SELECT count(*) FROM ", from),
                                                 absl::StrCat("counting ", u->source_table)));
      estimate = OptionalInt(c.get(), 0, 0).value_or(0);
    }
    u->report.estimated_rows = static_cast<uint64_t>(estimate);

    // Ranges earlier runs finished.
    std::vector<CopyRange> done;
    if (!options_.dry_run) {
      auto chunks =
          targets.count(u->target)
              ? state::ReadCopyChunks(targets[u->target].get(), settings.proto.pipeline(), u->source_table, kInvalidLsn,
                                      absl::StrCat("target ", u->report.target))
              : state::ReadCopyChunks(settings.targets[u->target], settings.proto.pipeline(), u->source_table);
      if (!chunks.ok()) return chunks.status();
      for (const CopyChunk& c : *chunks) {
        if (c.key_column != u->key_column) continue;
        done.push_back({c.lo, c.hi});
        u->report.rows_before += c.rows;
        ++u->report.chunks_done;
      }
    }
    // The gaps between finished ranges, each cut into pieces of about chunk_rows rows.
    std::vector<std::pair<std::optional<int64_t>, std::optional<int64_t>>> gaps;
    if (u->key_column.empty()) {
      if (done.empty()) gaps.push_back({std::nullopt, std::nullopt});
    } else {
      std::optional<int64_t> cursor;  // -inf
      bool open = true;
      for (const CopyRange& r : done) {
        if (!cursor.has_value() && !open) break;
        bool starts_after = r.lo.has_value() && (!cursor.has_value() || *r.lo > *cursor);
        if (starts_after) gaps.push_back({cursor, r.lo});
        if (!r.hi.has_value()) {
          open = false;
          break;
        }
        if (!cursor.has_value() || *r.hi > *cursor) cursor = r.hi;
      }
      if (open) gaps.push_back({cursor, std::nullopt});
    }
    std::optional<int64_t> min_key, max_key;
    if (!u->key_column.empty() && !gaps.empty()) {
      std::string k = pg::QuoteIdent(u->key_column);
      ASSIGN_OR_RETURN(pg::ResultPtr mm, pg::Exec(src, absl::StrCat("SELECT min(", k, "), max(", k, ") FROM ", from),
                                                  absl::StrCat("reading the key range of ", u->source_table)));
      min_key = OptionalInt(mm.get(), 0, 0);
      max_key = OptionalInt(mm.get(), 0, 1);
    }
    for (const auto& [lo, hi] : gaps) {
      // The part of the gap that holds rows: [max(lo, min), min(hi, max + 1)).
      if (!min_key || !max_key) {
        tasks_.push_back(std::make_unique<Task>(Task{u.get(), lo, hi}));
        continue;
      }
      long double a = lo ? std::max<long double>(*lo, *min_key) : *min_key;
      long double b = hi ? std::min<long double>(*hi, static_cast<long double>(*max_key) + 1)
                         : static_cast<long double>(*max_key) + 1;
      long double span = static_cast<long double>(*max_key) - *min_key + 1;
      int pieces = 1;
      if (b > a && options_.chunk_rows > 0) {
        long double rows = static_cast<long double>(estimate) * (b - a) / span;
        pieces = static_cast<int>(
            std::min<long double>(10000, std::max<long double>(1, rows / options_.chunk_rows + 0.999)));
      }
      long double step = pieces > 0 && b > a ? (b - a) / pieces : 0;
      std::optional<int64_t> start = lo;
      for (int p = 0; p < pieces; ++p) {
        std::optional<int64_t> end = hi;
        if (p + 1 < pieces) end = static_cast<int64_t>(a + step * (p + 1));
        if (start && end && *end <= *start) continue;
        tasks_.push_back(std::make_unique<Task>(Task{u.get(), start, end}));
        start = end;
      }
    }
    for (const auto& t : tasks_)
      if (t->unit == u.get()) ++u->remaining;
    u->report.chunks_total = u->report.chunks_done + u->remaining;
    // Target tables, for the order between units.
    std::vector<std::unique_ptr<BoundMapping>> bound;
    for (size_t m : u->modules) {
      auto b = (*options_.modules)[m]->Bind(*u->relation, inspector);
      if (!b.ok()) {
        problems.push_back(std::string(b.status().message()));
        continue;
      }
      for (const OpShape* shape : (*b)->shapes()) u->target_tables.insert(shape->table);
    }
  }
  if (!problems.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("initial copy: ", absl::StrJoin(problems, "; ")));
  }
  // Foreign keys between the target tables of different units of one target.
  for (auto& [t, conn] : targets) {
    ASSIGN_OR_RETURN(pg::ResultPtr fk,
                     pg::Exec(conn.get(),
                              "SELECT cn.nspname || '.' || c.relname, fn.nspname || '.' || f.relname "
                              "FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
                              "JOIN pg_namespace cn ON cn.oid = c.relnamespace "
                              "JOIN pg_class f ON f.oid = k.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace "
                              "WHERE k.contype = 'f' AND k.conrelid <> k.confrelid",
                              "reading the target's foreign keys"));
    for (int i = 0; i < PQntuples(fk.get()); ++i) {
      std::string child = PQgetvalue(fk.get(), i, 0), parent = PQgetvalue(fk.get(), i, 1);
      for (auto& cu : units_) {
        if (cu->target != t || !cu->target_tables.count(child)) continue;
        for (auto& pu : units_) {
          if (pu.get() == cu.get() || pu->target != t || !pu->target_tables.count(parent)) continue;
          if (std::find(cu->parents.begin(), cu->parents.end(), pu.get()) == cu->parents.end())
            cu->parents.push_back(pu.get());
        }
      }
    }
  }
  // Rows that exist only once their owner's mapping wrote them (owner:) are copied after the
  // owner's table: every unit reads the same snapshot, so nothing is missed by waiting.
  for (auto& cu : units_) {
    for (size_t m : cu->modules) {
      auto own = (*options_.modules)[m]->owned();
      if (!own) continue;
      for (auto& pu : units_) {
        if (pu.get() == cu.get() || pu->target != cu->target || pu->source_table != own->owner) continue;
        if (std::find(cu->parents.begin(), cu->parents.end(), pu.get()) == cu->parents.end())
          cu->parents.push_back(pu.get());
      }
    }
  }
  for (const auto& u : units_) {
    spdlog::info("initial copy: {} into target {}: about {} rows, {} chunk{} to copy{}{}", u->source_table,
                 u->report.target, u->report.estimated_rows, u->remaining, u->remaining == 1 ? "" : "s",
                 u->report.chunks_done ? absl::StrCat(" (", u->report.chunks_done, " done by an earlier run)") : "",
                 u->parents.empty() ? "" : absl::StrCat(", after ", u->parents.size(), " referenced table(s)"));
  }
  return absl::OkStatus();
}

InitialCopy::Task* InitialCopy::NextTaskLocked() {
  Task* fallback = nullptr;
  bool any_running = false;
  for (const auto& t : tasks_) {
    if (t->taken) {
      if (t->unit->remaining > 0) any_running = true;
      continue;
    }
    if (fallback == nullptr) fallback = t.get();
    bool ready = true;
    for (const Unit* p : t->unit->parents) ready &= p->remaining == 0;
    if (ready) return t.get();
  }
  // Every waiting unit waits for another: a cycle of foreign keys. Copy in mapping order.
  if (fallback != nullptr && !any_running) {
    if (!cycle_warned_) {
      spdlog::warn(
          "initial copy: the target tables' foreign keys form a cycle; copying in mapping order, "
          "which fails unless the constraints are DEFERRABLE INITIALLY DEFERRED");
      cycle_warned_ = true;
    }
    return fallback;
  }
  return nullptr;
}

}  // namespace walshift
