#include "daemon/state/target_state.h"

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "daemon/apply/documents/document_sink.h"
#include "daemon/apply/documents/json.h"
#include "daemon/core/status_macros.h"

namespace walshift::state {
namespace {

using documents::Json;

// A JSON file of the store (std::nullopt when absent); kDataLoss when it does not parse.
absl::StatusOr<std::optional<Json>> ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::optional<Json>();
  std::stringstream text;
  text << in.rdbuf();
  auto json = Json::Parse(text.str());
  if (!json.ok()) return absl::DataLossError(absl::StrCat(path, ": ", json.status().message()));
  return std::optional<Json>(*std::move(json));
}

std::string StateFile(const config::TargetSettings& t, const std::string& kind, const std::string& pipeline) {
  return absl::StrCat(t.path, "/_walshift/", kind, ".", pipeline, ".json");
}

const std::string* StringField(const Json& doc, const char* name) {
  const Json* f = doc.Find(name);
  return f != nullptr && f->type() == Json::Type::kString ? &f->string_value() : nullptr;
}

std::optional<int64_t> IntField(const Json& doc, const char* name) {
  const Json* f = doc.Find(name);
  int64_t v = 0;
  if (f == nullptr || f->type() != Json::Type::kNumber || !absl::SimpleAtoi(f->number_text(), &v)) return std::nullopt;
  return v;
}

template <typename T>
absl::StatusOr<T> Postgres(const config::TargetSettings& t,
                           const std::function<absl::StatusOr<T>(PGconn*, const std::string&)>& read) {
  std::string what = absl::StrCat("target ", t.name);
  ASSIGN_OR_RETURN(pg::ConnPtr conn, pg::Connect(t.dsn, what, "application_name=walshift"));
  return read(conn.get(), what);
}

}  // namespace

TargetStateReader::TargetStateReader(const config::TargetSettings& target, std::string pipeline)
    : target_(target), pipeline_(std::move(pipeline)) {}
TargetStateReader::~TargetStateReader() = default;

absl::StatusOr<PGconn*> TargetStateReader::Conn() {
  if (!conn_) {
    ASSIGN_OR_RETURN(conn_, pg::Connect(target_.dsn, absl::StrCat("target ", target_.name),
                                        "application_name=walshift"));
  }
  return conn_.get();
}

template <typename T>
absl::StatusOr<T> TargetStateReader::Keep(absl::StatusOr<T> result) {
  if (!result.ok()) conn_.reset();  // a lost connection is opened again by the next read
  return result;
}

absl::StatusOr<std::optional<CheckpointRow>> TargetStateReader::Checkpoint() {
  if (target_.documents()) return ReadCheckpointRow(target_, pipeline_);
  ASSIGN_OR_RETURN(PGconn * c, Conn());
  return Keep(ReadCheckpointRow(c, pipeline_, absl::StrCat("target ", target_.name)));
}

absl::StatusOr<std::vector<BackfillRow>> TargetStateReader::Backfills() {
  if (target_.documents()) return ReadBackfills(target_, pipeline_);
  ASSIGN_OR_RETURN(PGconn * c, Conn());
  return Keep(ReadBackfills(c, pipeline_, absl::StrCat("target ", target_.name)));
}

absl::StatusOr<double> TargetStateReader::Clock() {
  if (target_.documents()) return ReadClock(target_);
  ASSIGN_OR_RETURN(PGconn * c, Conn());
  return Keep(ReadClock(c, absl::StrCat("target ", target_.name)));
}

absl::StatusOr<std::optional<CheckpointRow>> ReadCheckpointRow(const config::TargetSettings& target,
                                                               const std::string& pipeline) {
  if (!target.documents()) {
    return Postgres<std::optional<CheckpointRow>>(
        target, [&](PGconn* c, const std::string& what) { return ReadCheckpointRow(c, pipeline, what); });
  }
  std::string path = StateFile(target, "checkpoint", pipeline);
  ASSIGN_OR_RETURN(std::optional<Json> doc, ReadJsonFile(path));
  if (!doc) return std::optional<CheckpointRow>();
  const std::string* lsn_text = StringField(*doc, "lsn");
  std::optional<Lsn> lsn = lsn_text ? ParseLsn(*lsn_text) : std::nullopt;
  if (!lsn) return absl::DataLossError(absl::StrCat(path, ": no readable \"lsn\""));
  CheckpointRow row;
  row.lsn = *lsn;
  double now = absl::ToUnixMicros(absl::Now()) / 1e6;
  if (auto t = IntField(*doc, "commit_time")) {
    row.commit_time = FormatPgTimestamp(*t);
    row.seconds_since_commit = now - (static_cast<double>(*t) / 1e6 + 946684800.0);
  }
  if (auto w = IntField(*doc, "written_at")) row.seconds_since_update = now - static_cast<double>(*w);
  return std::optional<CheckpointRow>(std::move(row));
}

absl::StatusOr<std::vector<CopyChunk>> ReadCopyChunks(const config::TargetSettings& target, const std::string& pipeline,
                                                      const std::string& source_table) {
  if (!target.documents()) {
    return Postgres<std::vector<CopyChunk>>(target, [&](PGconn* c, const std::string& what) {
      return ReadCopyChunks(c, pipeline, source_table, kInvalidLsn, what);
    });
  }
  return documents::DocumentSink::ReadCopyChunks(target.path, pipeline, source_table);
}

absl::StatusOr<std::vector<BackfillRow>> ReadBackfills(const config::TargetSettings& target,
                                                       const std::string& pipeline) {
  if (!target.documents()) {
    return Postgres<std::vector<BackfillRow>>(
        target, [&](PGconn* c, const std::string& what) { return ReadBackfills(c, pipeline, what); });
  }
  // The progress rows are documents of the collection walshift.backfill (written through the
  // same operations as any row).
  std::vector<BackfillRow> out;
  std::string dir = absl::StrCat(target.path, "/", documents::CollectionName("walshift.backfill"));
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name[0] == '.' || entry.path().extension() != ".json") continue;
    ASSIGN_OR_RETURN(std::optional<Json> doc, ReadJsonFile(entry.path().string()));
    if (!doc || !doc->is_object()) continue;
    const std::string* p = StringField(*doc, "pipeline");
    const std::string* table = StringField(*doc, "source_table");
    const std::string* st = StringField(*doc, "state");
    if (p == nullptr || *p != pipeline || table == nullptr || st == nullptr) continue;
    BackfillRow row;
    row.source_table = *table;
    row.state = *st;
    if (const Json* k = doc->Find("last_key"); k != nullptr && k->is_array()) {
      row.last_key.emplace();
      for (const Json& v : k->array())
        row.last_key->push_back(v.type() == Json::Type::kString ? v.string_value() : v.Serialize());
    }
    row.rows = static_cast<uint64_t>(IntField(*doc, "rows").value_or(0));
    if (const std::string* at = StringField(*doc, "updated_at")) {
      absl::Time t;
      std::string err;
      if (absl::ParseTime("%Y-%m-%dT%H:%M:%E*S%Ez", *at, &t, &err)) row.updated_at = absl::ToUnixMicros(t) / 1e6;
    }
    out.push_back(std::move(row));
  }
  return out;
}

absl::StatusOr<std::optional<BackfillRow>> BackfillSince(TargetStateReader& reader, const std::string& source_table,
                                                         double since) {
  ASSIGN_OR_RETURN(std::vector<BackfillRow> rows, reader.Backfills());
  for (BackfillRow& row : rows)
    if (row.source_table == source_table && row.updated_at >= since) return std::optional<BackfillRow>(std::move(row));
  return std::optional<BackfillRow>();
}

absl::StatusOr<double> ReadClock(const config::TargetSettings& target) {
  if (target.documents()) return absl::ToUnixMicros(absl::Now()) / 1e6;
  return Postgres<double>(target, [](PGconn* c, const std::string& what) { return ReadClock(c, what); });
}

absl::Status RecordStopError(const config::TargetSettings& target, const std::string& pipeline, int exit_code,
                             const std::string& message, Lsn lsn) {
  if (target.documents()) return absl::OkStatus();
  return Postgres<bool>(target, [&](PGconn* c, const std::string& what) -> absl::StatusOr<bool> {
           RETURN_IF_ERROR(RecordStopError(c, pipeline, exit_code, message, lsn, what));
           return true;
         })
      .status();
}

absl::StatusOr<std::optional<StopError>> ReadStopError(const config::TargetSettings& target,
                                                       const std::string& pipeline) {
  if (target.documents()) return std::optional<StopError>();
  return Postgres<std::optional<StopError>>(
      target, [&](PGconn* c, const std::string& what) { return ReadStopError(c, pipeline, what); });
}

absl::StatusOr<uint64_t> CountParked(const config::TargetSettings& target, const std::string& pipeline) {
  if (target.documents()) return uint64_t{0};
  return Postgres<uint64_t>(target, [&](PGconn* c, const std::string& what) -> absl::StatusOr<uint64_t> {
    ASSIGN_OR_RETURN(auto parked, ReadParked(c, pipeline, what));
    uint64_t n = 0;
    for (const auto& [table, count] : parked) n += count;
    return n;
  });
}

absl::StatusOr<LeaderRow> ReadLeader(const config::TargetSettings& target, const std::string& pipeline) {
  if (target.documents()) return LeaderRow();
  return Postgres<LeaderRow>(target, [&](PGconn* c, const std::string& what) -> absl::StatusOr<LeaderRow> {
    return ReadLeader(c, pipeline, what);
  });
}

}  // namespace walshift::state
