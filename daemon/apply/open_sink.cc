#include "daemon/apply/open_sink.h"

#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "daemon/apply/documents/document_sink.h"
#include "daemon/apply/documents/document_store.h"
#include "daemon/apply/pg_sink.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"

namespace walshift {
namespace {

class PgShapeChecker : public ShapeChecker {
 public:
  explicit PgShapeChecker(pg::ConnPtr conn) : conn_(std::move(conn)) {}
  absl::Status Check(const OpShape& shape) override { return PgSink::ValidateShape(conn_.get(), shape); }
  PGconn* connection() override { return conn_.get(); }

 private:
  pg::ConnPtr conn_;
};

class DocumentShapeChecker : public ShapeChecker {
 public:
  explicit DocumentShapeChecker(const std::string& name) : set_(name) {}
  absl::Status Check(const OpShape& shape) override { return set_.ValidateShape(shape); }

 private:
  documents::DocumentSet set_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Sink>> OpenSink(const config::TargetSettings& target, const SinkOptions& options) {
  if (target.documents()) {
    documents::DocumentSinkOptions o;
    o.name = target.name;
    o.directory = target.path;
    o.pipeline = options.pipeline;
    ASSIGN_OR_RETURN(auto sink, documents::DocumentSink::Create(o));
    return std::unique_ptr<Sink>(std::move(sink));
  }
  PgSinkOptions o;
  o.name = target.name;
  o.dsn = target.dsn;
  o.pipeline = options.pipeline;
  if (options.max_pending_statements) o.max_pending_statements = options.max_pending_statements;
  if (options.max_pending_bytes) o.max_pending_bytes = options.max_pending_bytes;
  o.synchronous_commit = options.synchronous_commit;
  o.epoch = options.epoch;
  o.replication_origin = options.replication_origin;
  ASSIGN_OR_RETURN(auto sink, PgSink::Create(o));
  return std::unique_ptr<Sink>(std::move(sink));
}

absl::StatusOr<std::unique_ptr<ShapeChecker>> OpenShapeChecker(const config::TargetSettings& target,
                                                               const std::string& application_name) {
  if (target.documents()) {
    // The store's directory must be one walshiftd can write (it is created when absent).
    std::error_code ec;
    std::filesystem::path dir(target.path);
    while (!dir.empty() && !std::filesystem::exists(dir, ec) && dir.has_parent_path() && dir != dir.parent_path())
      dir = dir.parent_path();
    if (!std::filesystem::is_directory(dir, ec) || access(dir.c_str(), W_OK | X_OK) != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "target ", target.name, ": the document store ", target.path, " cannot be used: ", dir.string(),
          std::filesystem::is_directory(dir, ec) ? " is not writable by walshiftd" : " is not a directory"));
    }
    return std::unique_ptr<ShapeChecker>(new DocumentShapeChecker(target.name));
  }
  ASSIGN_OR_RETURN(pg::ConnPtr conn, pg::Connect(target.dsn, absl::StrCat("target ", target.name),
                                                 absl::StrCat("application_name=", application_name)));
  return std::unique_ptr<ShapeChecker>(new PgShapeChecker(std::move(conn)));
}

}  // namespace walshift
