#include "daemon/verify/document_verifier.h"

#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/apply/documents/document_sink.h"
#include "daemon/apply/documents/document_store.h"
#include "daemon/copy/copy_text.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/pg_schema_inspector.h"
#include "google/protobuf/util/time_util.h"

namespace walshift {
namespace {

using documents::Json;

constexpr size_t kShownValue = 120;

std::string Cut(const std::string& v) {
  return v.size() <= kShownValue ? v : absl::StrCat(v.substr(0, kShownValue), "... (", v.size(), " bytes)");
}

// One difference between the expected and the stored document.
struct Difference {
  v1::DriftKind kind = v1::MISMATCH;
  std::string expected, actual;  // the documents' text ("" when absent)
  bool operator==(const Difference& o) const { return kind == o.kind && expected == o.expected && actual == o.actual; }
};

// What one pass found: differences by (collection, file), and the documents expected.
struct Pass {
  std::map<std::pair<std::string, std::string>, Difference> differences;
  std::map<std::string, uint64_t> expected;  // documents per collection
  Lsn read_at = kInvalidLsn;
  bool settled = true;  // the store passed the read position in time
};

class DocumentVerifier {
 public:
  DocumentVerifier(const VerifyOptions& o, size_t target, std::vector<size_t> modules, const std::atomic<bool>& stop)
      : o_(o), target_(o.settings->targets[target]), modules_(std::move(modules)), stop_(stop) {
    // Mappings that create rows before those that only fill rows others created (owner:).
    std::stable_sort(modules_.begin(), modules_.end(), [&](size_t a, size_t b) {
      return !(*o_.modules)[a]->owned().has_value() && (*o_.modules)[b]->owned().has_value();
    });
  }

  absl::StatusOr<std::vector<VerifyTableReport>> Run() {
    absl::Time started = absl::Now();
    ASSIGN_OR_RETURN(Pass first, RunPass());
    Pass final = first;
    if (!first.differences.empty() && !stop_.load()) {
      // Changes in flight: look again once the store has passed a later position.
      ASSIGN_OR_RETURN(Pass second, RunPass());
      final.differences.clear();
      final.settled = second.settled;
      for (auto& [key, d] : second.differences) {
        auto it = first.differences.find(key);
        if (it != first.differences.end() && it->second == d && second.settled) {
          final.differences.emplace(key, d);
        } else {
          unsettled_[key.first]++;
        }
      }
      final.expected = second.expected;
      final.read_at = second.read_at;
    }
    std::vector<VerifyTableReport> out;
    for (const auto& [collection, tables] : collections_) {
      VerifyTableReport r;
      std::vector<std::string> paths, sources;
      for (size_t m : modules_of_[collection]) {
        paths.push_back(o_.settings->mappings[m].path);
        const std::string& s = (*o_.modules)[m]->source_table();
        if (std::find(sources.begin(), sources.end(), s) == sources.end()) sources.push_back(s);
      }
      r.mapping = absl::StrJoin(paths, ", ");
      r.source_table = absl::StrJoin(sources, ", ");
      r.target = target_.name;
      r.checked = final.expected[collection];
      r.unsettled = unsettled_[collection];
      r.extras_checked = true;
      if (!final.settled)
        r.note = absl::StrCat("target ", target_.name, " did not pass ", FormatLsn(final.read_at), " in time");
      for (const auto& [key, d] : final.differences) {
        if (key.first != collection) continue;
        RETURN_IF_ERROR(Report(&r, *tables.begin(), key.second, d, final.read_at));
      }
      r.seconds = absl::ToDoubleSeconds(absl::Now() - started);
      if (o_.progress) o_.progress(r, true);
      out.push_back(std::move(r));
    }
    return out;
  }

 private:
  absl::StatusOr<Pass> RunPass() {
    Pass pass;
    documents::DocumentSet expected(target_.name);
    ASSIGN_OR_RETURN(pg::ConnPtr src,
                     pg::Connect(o_.settings->source_dsn, "source", "application_name=walshift-verify"));
    PgSchemaInspector inspector(o_.settings->source_dsn, o_.settings->targets);
    // The snapshot is taken by the first statement, so L covers every commit it shows.
    RETURN_IF_ERROR(pg::Exec(src.get(), "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "source: BEGIN").status());
    ASSIGN_OR_RETURN(pg::ResultPtr at,
                     pg::Exec(src.get(), "SELECT pg_current_wal_lsn()::text", "source: reading the WAL position"));
    pass.read_at = ParseLsn(PQgetvalue(at.get(), 0, 0)).value_or(kInvalidLsn);
    for (size_t m : modules_) {
      const MappingModule& module = *(*o_.modules)[m];
      const std::string& where = o_.settings->mappings[m].path;
      std::vector<std::string> problems;
      ASSIGN_OR_RETURN(auto rel, DescribeSourceTable(src.get(), module.source_table(), &problems, where));
      if (!rel) return absl::FailedPreconditionError(absl::StrJoin(problems, "; "));
      auto relation = std::make_shared<SourceRelation>(*std::move(rel));
      ASSIGN_OR_RETURN(auto bound, module.Bind(*relation, inspector));
      for (const OpShape* shape : bound->shapes()) {
        std::string c = documents::CollectionName(shape->table);
        collections_[c].insert(shape->table);
        modules_of_[c].insert(m);
        if (shape->kind == OpKind::kArrayUpsert) array_columns_[c].insert(shape->array.column);
      }
      ASSIGN_OR_RETURN(std::string from, SourceRowsFrom(src.get(), *relation));
      std::vector<std::string> cols;
      for (const auto& c : relation->columns) cols.push_back(pg::QuoteIdent(c.name));
      std::string sql = absl::StrCat("COPY (SELECT ", absl::StrJoin(cols, ", "), " FROM ", from, ") TO STDOUT");
      pg::ResultPtr start(PQexec(src.get(), sql.c_str()));
      if (PQresultStatus(start.get()) != PGRES_COPY_OUT) {
        return pg::ResultStatus(src.get(), start.get(), absl::StrCat(where, ": reading ", module.source_table()));
      }
      Tuple tuple;
      RowChange change;
      change.kind = ChangeKind::kInsert;
      change.relation = relation.get();
      change.new_tuple = &tuple;
      change.lsn = pass.read_at;
      change.snapshot = true;
      absl::Status failed;
      for (;;) {
        char* buf = nullptr;
        int len = PQgetCopyData(src.get(), &buf, 0);
        if (len < 0) break;
        if (failed.ok()) failed = DecodeCopyTextRow(buf, static_cast<size_t>(len), relation->columns.size(), &tuple);
        if (failed.ok()) failed = bound->Map(change, [&](const TargetOp& op) { return expected.Apply(op); });
        PQfreemem(buf);
      }
      pg::ResultPtr end(PQgetResult(src.get()));
      absl::Status copy =
          pg::ResultStatus(src.get(), end.get(), absl::StrCat(where, ": reading ", module.source_table()));
      while (PGresult* extra = PQgetResult(src.get())) PQclear(extra);
      RETURN_IF_ERROR(copy);
      if (!failed.ok()) return absl::Status(failed.code(), absl::StrCat(where, ": ", failed.message()));
      if (stop_.load()) return absl::CancelledError("verify stopped");
    }
    (void)pg::Exec(src.get(), "COMMIT", "source: COMMIT");
    // The store must show at least what the snapshot shows.
    absl::Time deadline = absl::Now() + o_.settle;
    for (;;) {
      ASSIGN_OR_RETURN(Lsn cp, documents::DocumentSink::ReadCheckpoint(target_.path, o_.settings->proto.pipeline()));
      if (cp != kInvalidLsn && cp >= pass.read_at) break;
      if (absl::Now() >= deadline || stop_.load()) {
        pass.settled = false;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    for (const auto& [collection, _] : collections_) {
      static const std::map<std::string, Json> kNone;
      auto it = expected.documents().find(collection);
      const std::map<std::string, Json>& want = it == expected.documents().end() ? kNone : it->second;
      pass.expected[collection] = want.size();
      std::set<std::string> seen;
      RETURN_IF_ERROR(documents::DocumentSink::ForEachDocument(
          target_.path, collection, [&](const std::string& file, const Json& doc) -> absl::Status {
            seen.insert(file);
            auto w = want.find(file);
            if (w == want.end()) {
              pass.differences[{collection, file}] = Difference{v1::EXTRA, "", doc.Serialize()};
            } else if (Normalized(collection, w->second) != Normalized(collection, doc)) {
              pass.differences[{collection, file}] = Difference{v1::MISMATCH, w->second.Serialize(), doc.Serialize()};
            }
            return absl::OkStatus();
          }));
      for (const auto& [file, doc] : want)
        if (!seen.count(file)) pass.differences[{collection, file}] = Difference{v1::MISSING, doc.Serialize(), ""};
    }
    return pass;
  }

  // Content, not history: a field that is null equals one that is absent (a column a merge
  // source cleared, or one never written), and an array whose elements all went away ([])
  // equals one that never had any.
  Json Normalized(const std::string& collection, Json doc) const {
    if (!doc.is_object()) return doc;
    auto arrays = array_columns_.find(collection);
    for (auto it = doc.mutable_object().begin(); it != doc.mutable_object().end();) {
      bool empty_array = it->second.is_array() && it->second.array().empty() && arrays != array_columns_.end() &&
                         arrays->second.count(it->first);
      if (it->second.is_null() || empty_array) {
        it = doc.mutable_object().erase(it);
      } else {
        ++it;
      }
    }
    return doc;
  }

  absl::Status Report(VerifyTableReport* r, const std::string& table, const std::string& file, const Difference& d,
                      Lsn at) {
    v1::DriftEvent e;
    *e.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
    e.set_pipeline(o_.settings->proto.pipeline());
    e.set_source_table(r->source_table);
    e.set_target(target_.name);
    e.set_target_table(table);
    e.set_kind(d.kind);
    e.set_key(absl::StrCat("document ", documents::CollectionName(table), "/", file));
    e.set_checked_at_lsn(FormatLsn(at));
    switch (d.kind) {
      case v1::MISSING:
        ++r->missing;
        break;
      case v1::EXTRA:
        ++r->extra;
        break;
      default:
        ++r->mismatched;
        break;
    }
    if (d.kind == v1::MISMATCH) {
      // The fields that differ.
      auto want = Json::Parse(d.expected), have = Json::Parse(d.actual);
      if (want.ok() && have.ok() && want->is_object() && have->is_object()) {
        std::set<std::string> fields;
        for (const auto& [k, _] : want->object()) fields.insert(k);
        for (const auto& [k, _] : have->object()) fields.insert(k);
        for (const std::string& f : fields) {
          const Json* a = want->Find(f);
          const Json* b = have->Find(f);
          if (a != nullptr && b != nullptr && *a == *b) continue;
          if ((a == nullptr || a->is_null()) && (b == nullptr || b->is_null())) continue;
          v1::ColumnDiff* diff = e.add_columns();
          diff->set_column(f);
          diff->set_expected(a == nullptr ? "(absent)" : Cut(a->Serialize()));
          diff->set_actual(b == nullptr ? "(absent)" : Cut(b->Serialize()));
        }
      }
    }
    std::string identity =
        absl::StrCat(e.target_table(), "|", v1::DriftKind_Name(e.kind()), "|", e.key(), "|", d.actual);
    if (o_.reported_now != nullptr) o_.reported_now->insert(identity);
    bool repeat = o_.already_reported != nullptr && o_.already_reported->count(identity) > 0;
    if (o_.events != nullptr && !repeat) o_.events->Publish(e);
    if (o_.delete_extras && d.kind == v1::EXTRA) {
      std::string path = absl::StrCat(target_.path, "/", documents::CollectionName(table), "/", file);
      if (std::remove(path.c_str()) == 0) ++r->deleted;
    }
    r->Show(std::move(e), o_.max_shown);
    return absl::OkStatus();
  }

  const VerifyOptions& o_;
  const config::TargetSettings& target_;
  std::vector<size_t> modules_;
  const std::atomic<bool>& stop_;
  std::map<std::string, std::set<std::string>> collections_;  // collection → target tables
  std::map<std::string, std::set<size_t>> modules_of_;        // collection → mappings writing it
  std::map<std::string, uint64_t> unsettled_;
  std::map<std::string, std::set<std::string>> array_columns_;  // collection → JSON array columns
};

}  // namespace

absl::StatusOr<std::vector<VerifyTableReport>> VerifyDocumentTarget(const VerifyOptions& options, size_t target,
                                                                    const std::vector<size_t>& modules,
                                                                    const std::atomic<bool>& stop) {
  DocumentVerifier v(options, target, modules, stop);
  return v.Run();
}

}  // namespace walshift
