#include "daemon/apply/pg_copy_writer.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/core/status_macros.h"
#include "daemon/state/pg_state.h"

namespace walshift {
namespace {

constexpr size_t kSendBytes = 256 << 10;

void AppendCopyText(const Datum& d, std::string* out) {
  if (d.is_null()) {
    out->append("\\N");
    return;
  }
  for (char c : d.view()) {
    switch (c) {
      case '\\':
        out->append("\\\\");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      default:
        out->push_back(c);
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<PgCopyWriter>> PgCopyWriter::Connect(const std::string& target_name,
                                                                    const std::string& dsn,
                                                                    const std::string& pipeline,
                                                                    int64_t epoch,
                                                                    const std::string& origin) {
  std::unique_ptr<PgCopyWriter> w(new PgCopyWriter());
  w->name_ = absl::StrCat("target ", target_name);
  ASSIGN_OR_RETURN(w->conn_, pg::Connect(dsn, w->name_, "application_name=walshiftd-copy"));
  RETURN_IF_ERROR(state::HoldWriterLock(w->conn_.get(), pipeline, epoch, w->name_));
  if (!origin.empty()) RETURN_IF_ERROR(state::UseReplicationOrigin(w->conn_.get(), pipeline, origin, w->name_));
  RETURN_IF_ERROR(pg::Exec(w->conn_.get(), "SET synchronous_commit = off", w->name_).status());
  return w;
}

bool PgCopyWriter::Copyable(const OpShape& shape) {
  if (shape.kind != OpKind::kUpsert || !shape.condition.empty()) return false;
  for (const TargetValue& v : shape.values)
    if (v.param < 0) return false;
  return true;
}

absl::Status PgCopyWriter::Fail(PGresult* result, absl::string_view what) {
  const char* state = result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  absl::Status st = pg::ResultStatus(conn_.get(), result, absl::StrCat(name_, ": ", what));
  if (state != nullptr && absl::string_view(state) == "23505") return absl::AlreadyExistsError(st.message());
  return st.ok() ? absl::InternalError(absl::StrCat(name_, ": ", what, " failed")) : st;
}

absl::Status PgCopyWriter::Begin(const OpShape& shape) {
  shape_ = &shape;
  buffer_.clear();
  std::vector<std::string> cols;
  for (const TargetValue& v : shape.values) cols.push_back(pg::QuoteIdent(v.column));
  RETURN_IF_ERROR(pg::Exec(conn_.get(), "BEGIN", name_).status());
  std::string sql =
      absl::StrCat("COPY ", pg::QuoteQualified(shape.table), " (", absl::StrJoin(cols, ", "), ") FROM STDIN");
  pg::ResultPtr r(PQexec(conn_.get(), sql.c_str()));
  if (PQresultStatus(r.get()) != PGRES_COPY_IN) return Fail(r.get(), "COPY FROM STDIN");
  return absl::OkStatus();
}

absl::Status PgCopyWriter::Send(bool all) {
  if (buffer_.empty() || (!all && buffer_.size() < kSendBytes)) return absl::OkStatus();
  if (PQputCopyData(conn_.get(), buffer_.data(), static_cast<int>(buffer_.size())) != 1) {
    return absl::UnavailableError(absl::StrCat(name_, ": sending COPY data: ", PQerrorMessage(conn_.get())));
  }
  buffer_.clear();
  return absl::OkStatus();
}

absl::Status PgCopyWriter::Add(const TargetOp& op) {
  const OpShape& shape = *shape_;
  for (size_t i = 0; i < shape.values.size(); ++i) {
    if (i > 0) buffer_.push_back('\t');
    AppendCopyText(op.params[shape.values[i].param], &buffer_);
  }
  buffer_.push_back('\n');
  return Send(false);
}

absl::Status PgCopyWriter::Commit(const std::string& pipeline, const CopyChunk& chunk) {
  RETURN_IF_ERROR(Send(true));
  if (PQputCopyEnd(conn_.get(), nullptr) != 1) {
    return absl::UnavailableError(absl::StrCat(name_, ": ending COPY: ", PQerrorMessage(conn_.get())));
  }
  pg::ResultPtr r(PQgetResult(conn_.get()));
  if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) return Fail(r.get(), absl::StrCat("COPY into ", shape_->table));
  while (PGresult* extra = PQgetResult(conn_.get())) PQclear(extra);
  state::Statement marker = state::CopyChunkInsert(pipeline, chunk);
  RETURN_IF_ERROR(
      pg::ExecParams(conn_.get(), marker.sql, marker.params, absl::StrCat(name_, ": recording the chunk")).status());
  return pg::Exec(conn_.get(), "COMMIT", name_).status();
}

}  // namespace walshift
