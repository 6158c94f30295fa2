#include "daemon/apply/documents/document_sink.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/core/crash_point.h"
#include "daemon/core/lsn.h"
#include "daemon/core/status_macros.h"
#include "spdlog/spdlog.h"
#include <sys/file.h>
#include <sys/stat.h>

namespace walshift::documents {
namespace {

constexpr const char* kMetaDir = "_walshift";

absl::Status FsError(absl::string_view what, const std::string& path, int err) {
  return absl::FailedPreconditionError(absl::StrCat("document store: ", what, " ", path, ": ", std::strerror(err)));
}

std::string Join(const std::string& a, const std::string& b) { return absl::StrCat(a, "/", b); }

// The whole file; kNotFound when it does not exist.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(path);
    return FsError("cannot open", path, errno);
  }
  std::string out;
  char buf[65536];
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return FsError("cannot read", path, err);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

// Writes `content` to `path` (created or truncated) and fsyncs it.
absl::Status WriteSynced(const std::string& path, absl::string_view content) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return FsError("cannot create", path, errno);
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = write(fd, content.data() + done, content.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return FsError("cannot write", path, err);
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) {
    int err = errno;
    close(fd);
    return FsError("cannot fsync", path, err);
  }
  if (close(fd) != 0) return FsError("cannot close", path, errno);
  return absl::OkStatus();
}

absl::Status FsyncDir(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return FsError("cannot open directory", path, errno);
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0) return FsError("cannot fsync directory", path, err);
  return absl::OkStatus();
}

absl::Status Rename(const std::string& from, const std::string& to) {
  if (rename(from.c_str(), to.c_str()) != 0) return FsError(absl::StrCat("cannot rename to ", to, ":"), from, errno);
  return absl::OkStatus();
}

// Writes `dir`/`name` atomically (temporary file, fsync, rename, fsync of `dir`).
absl::Status WriteAtomic(const std::string& dir, const std::string& name, absl::string_view content,
                         const std::string& instance) {
  std::string tmp = Join(dir, absl::StrCat(".", name, ".", instance, ".tmp"));
  RETURN_IF_ERROR(WriteSynced(tmp, content));
  RETURN_IF_ERROR(Rename(tmp, Join(dir, name)));
  return FsyncDir(dir);
}

// mkdir -p; `*created` is set when the last component was made.
absl::Status MakeDirs(const std::string& path, bool* created) {
  *created = false;
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i != path.size() && path[i] != '/') continue;
    std::string prefix = path.substr(0, i);
    if (mkdir(prefix.c_str(), 0755) == 0) {
      if (i == path.size()) *created = true;
    } else if (errno != EEXIST) {
      return FsError("cannot create directory", prefix, errno);
    }
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return FsError("cannot stat", path, errno);
  if (!S_ISDIR(st.st_mode)) return FsError("not a directory:", path, ENOTDIR);
  return absl::OkStatus();
}

// Removes the temporary files (".<name>.<instance>.tmp") a crash left in the store's
// directories. Only with the store's lock held, after the interrupted commits are finished:
// no temporary file is in use then.
void RemoveTemporaryFiles(const std::string& root, const std::string& target) {
  std::error_code ec;
  size_t removed = 0;
  for (const auto& dir : std::filesystem::directory_iterator(root, ec)) {
    if (!dir.is_directory(ec)) continue;
    for (const auto& f : std::filesystem::directory_iterator(dir.path(), ec)) {
      const std::string name = f.path().filename().string();
      if (name.size() > 5 && name[0] == '.' && absl::EndsWith(name, ".tmp") && std::filesystem::remove(f.path(), ec))
        ++removed;
    }
  }
  if (removed > 0) spdlog::info("target {}: removed {} temporary files a crash left behind", target, removed);
}

// Names in `dir` ending in `suffix` and not starting with '.', sorted; none when `dir` does
// not exist.
absl::StatusOr<std::vector<std::string>> ListFiles(const std::string& dir, absl::string_view prefix,
                                                   absl::string_view suffix) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return out;
    return FsError("cannot list", dir, errno);
  }
  while (true) {
    errno = 0;
    struct dirent* e = readdir(d);
    if (e == nullptr) break;
    absl::string_view name = e->d_name;
    if (name.empty() || name[0] == '.' || !absl::StartsWith(name, prefix) || !absl::EndsWith(name, suffix)) continue;
    out.emplace_back(name);
  }
  int err = errno;
  closedir(d);
  if (err != 0) return FsError("cannot list", dir, err);
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::optional<Json>> LoadDocument(const std::string& path) {
  auto content = ReadWholeFile(path);
  if (absl::IsNotFound(content.status())) return std::optional<Json>();
  if (!content.ok()) return content.status();
  auto doc = Json::Parse(*content);
  if (!doc.ok()) return absl::DataLossError(absl::StrCat("malformed document ", path, ": ", doc.status().message()));
  if (!doc->is_object()) return absl::DataLossError(absl::StrCat("malformed document ", path, ": not a JSON object"));
  return std::optional<Json>(*std::move(doc));
}

const Json* Field(const Json& object, absl::string_view name, Json::Type type, bool nullable) {
  const Json* v = object.Find(name);
  if (v == nullptr) return nullptr;
  if (v->type() == type || (nullable && v->is_null())) return v;
  return nullptr;
}

absl::StatusOr<int64_t> Int64Of(const Json& v) {
  int64_t n;
  if (v.type() != Json::Type::kNumber || !absl::SimpleAtoi(v.number_text(), &n)) {
    return absl::InvalidArgumentError(absl::StrCat("not an integer: ", v.Serialize()));
  }
  return n;
}

Json ChunkToJson(const CopyChunk& c) {
  Json j = Json::MakeObject();
  j.Set("source_table", Json::String(c.source_table));
  j.Set("key_column", c.key_column.empty() ? Json() : Json::String(c.key_column));
  j.Set("lo", c.lo ? Json::Number(*c.lo) : Json());
  j.Set("hi", c.hi ? Json::Number(*c.hi) : Json());
  j.Set("snapshot_lsn", Json::String(FormatLsn(c.snapshot_lsn)));
  j.Set("rows", Json::Number(absl::StrCat(c.rows)));
  return j;
}

absl::StatusOr<CopyChunk> ChunkFromJson(const Json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("a chunk is not an object");
  CopyChunk c;
  const Json* table = Field(j, "source_table", Json::Type::kString, false);
  const Json* key = Field(j, "key_column", Json::Type::kString, true);
  const Json* lo = Field(j, "lo", Json::Type::kNumber, true);
  const Json* hi = Field(j, "hi", Json::Type::kNumber, true);
  const Json* lsn = Field(j, "snapshot_lsn", Json::Type::kString, false);
  const Json* rows = Field(j, "rows", Json::Type::kNumber, false);
  if (!table || !key || !lo || !hi || !lsn || !rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk ", j.Serialize(), " lacks a field or has one of the wrong type"));
  }
  c.source_table = table->string_value();
  if (!key->is_null()) c.key_column = key->string_value();
  if (!lo->is_null()) {
    ASSIGN_OR_RETURN(c.lo, Int64Of(*lo));
  }
  if (!hi->is_null()) {
    ASSIGN_OR_RETURN(c.hi, Int64Of(*hi));
  }
  std::optional<Lsn> l = ParseLsn(lsn->string_value());
  if (!l) return absl::InvalidArgumentError(absl::StrCat("bad snapshot_lsn in ", j.Serialize()));
  c.snapshot_lsn = *l;
  ASSIGN_OR_RETURN(int64_t r, Int64Of(*rows));
  if (r < 0) return absl::InvalidArgumentError(absl::StrCat("negative rows in ", j.Serialize()));
  c.rows = static_cast<uint64_t>(r);
  return c;
}

// The chunk file's array (empty when it does not exist).
absl::StatusOr<Json> ReadChunkArray(const std::string& path) {
  auto content = ReadWholeFile(path);
  if (absl::IsNotFound(content.status())) return Json::MakeArray();
  if (!content.ok()) return content.status();
  auto parsed = Json::Parse(*content);
  if (!parsed.ok() || !parsed->is_array()) {
    return absl::DataLossError(absl::StrCat("malformed copy-chunk file ", path, ": ",
                                            parsed.ok() ? "not a JSON array" : parsed.status().message()));
  }
  return parsed;
}

// Finishes the commit that the record at `path` describes: renames the documents' temporary
// files into place, removes deleted documents, writes the record's files into _walshift, then
// removes the record. Idempotent (a rename whose temporary file is gone was done).
absl::Status Redo(const std::string& root, const std::string& path, const std::string& instance) {
  ASSIGN_OR_RETURN(std::string content, ReadWholeFile(path));
  auto record = Json::Parse(content);
  auto malformed = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("malformed commit record ", path, ": ", why));
  };
  if (!record.ok()) return malformed(record.status().message());
  const Json* renames = Field(*record, "renames", Json::Type::kArray, false);
  const Json* unlinks = Field(*record, "unlinks", Json::Type::kArray, false);
  const Json* files = Field(*record, "files", Json::Type::kArray, false);
  if (!renames || !unlinks || !files) return malformed("missing renames, unlinks or files");
  std::set<std::string> dirs;
  auto strings = [](const Json& e, size_t n) {
    if (!e.is_array() || e.array().size() != n) return false;
    for (const Json& s : e.array())
      if (s.type() != Json::Type::kString) return false;
    return true;
  };
  for (const Json& r : renames->array()) {
    if (!strings(r, 3)) return malformed("bad rename");
    std::string dir = Join(root, r.array()[0].string_value());
    std::string from = Join(dir, r.array()[2].string_value());
    if (rename(from.c_str(), Join(dir, r.array()[1].string_value()).c_str()) != 0 && errno != ENOENT) {
      return FsError("cannot rename", from, errno);
    }
    dirs.insert(dir);
  }
  for (const Json& u : unlinks->array()) {
    if (!strings(u, 2)) return malformed("bad unlink");
    std::string dir = Join(root, u.array()[0].string_value());
    std::string file = Join(dir, u.array()[1].string_value());
    if (unlink(file.c_str()) != 0 && errno != ENOENT) return FsError("cannot remove", file, errno);
    dirs.insert(dir);
  }
  for (const std::string& dir : dirs) RETURN_IF_ERROR(FsyncDir(dir));
  const std::string meta = Join(root, kMetaDir);
  for (const Json& f : files->array()) {
    if (!strings(f, 2)) return malformed("bad file");
    RETURN_IF_ERROR(WriteAtomic(meta, f.array()[0].string_value(), f.array()[1].string_value(), instance));
  }
  if (unlink(path.c_str()) != 0) return FsError("cannot remove", path, errno);
  return FsyncDir(meta);
}

std::string NextInstance() {
  static std::atomic<uint64_t> next{0};
  return absl::StrCat(getpid(), "-", next.fetch_add(1));
}

}  // namespace

// The process's hold on one store's lock file; shared by the sinks of that store.
struct DocumentSink::StoreLock {
  std::string root;
  int fd = -1;
  int refs = 0;
  std::mutex chunks_mu;  // serializes copy-chunk file updates of this process
};

namespace {

std::mutex& RegistryMutex() {
  static auto* mu = new std::mutex;
  return *mu;
}

std::map<std::string, DocumentSink::StoreLock*>& Registry() {
  static auto* registry = new std::map<std::string, DocumentSink::StoreLock*>;
  return *registry;
}

}  // namespace

DocumentSink::DocumentSink(DocumentSinkOptions options)
    : options_(std::move(options)), instance_(NextInstance()), overlay_(this), applier_(options_.name, &overlay_) {}

DocumentSink::~DocumentSink() {
  if (lock_ == nullptr) return;
  std::lock_guard<std::mutex> guard(RegistryMutex());
  if (--lock_->refs == 0) {
    Registry().erase(lock_->root);
    close(lock_->fd);  // releases the flock
    delete lock_;
  }
}

absl::StatusOr<std::unique_ptr<DocumentSink>> DocumentSink::Create(const DocumentSinkOptions& options) {
  const std::string what = absl::StrCat("target ", options.name, ": ");
  auto prefix = [&](const absl::Status& st) { return absl::Status(st.code(), absl::StrCat(what, st.message())); };
  if (options.directory.empty()) return absl::InvalidArgumentError(absl::StrCat(what, "no document store directory"));
  if (options.pipeline.empty()) return absl::InvalidArgumentError(absl::StrCat(what, "no pipeline name"));
  bool created;
  absl::Status st = MakeDirs(options.directory, &created);
  if (st.ok()) st = MakeDirs(Join(options.directory, kMetaDir), &created);
  if (!st.ok()) return prefix(st);
  char resolved[PATH_MAX];
  if (realpath(options.directory.c_str(), resolved) == nullptr) {
    return prefix(FsError("cannot resolve", options.directory, errno));
  }
  std::unique_ptr<DocumentSink> sink(new DocumentSink(options));
  sink->root_ = resolved;
  const std::string meta = Join(sink->root_, kMetaDir);
  {
    std::lock_guard<std::mutex> guard(RegistryMutex());
    auto found = Registry().find(sink->root_);
    if (found != Registry().end()) {
      sink->lock_ = found->second;
      ++sink->lock_->refs;
    } else {
      const std::string lock_path = Join(meta, "lock");
      int fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0) return prefix(FsError("cannot open", lock_path, errno));
      if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        close(fd);
        if (err == EWOULDBLOCK) {
          return absl::FailedPreconditionError(absl::StrCat(
              what, "document store ", sink->root_, " is in use by another walshiftd (lock ", kMetaDir, "/lock)"));
        }
        return prefix(FsError("cannot lock", lock_path, err));
      }
      // First user in this process: finish the commits a crash interrupted.
      auto records = ListFiles(meta, "commit.", ".json");
      st = records.status();
      if (st.ok()) {
        for (const std::string& r : *records) {
          spdlog::warn("target {}: finishing the interrupted commit {}", options.name, Join(meta, r));
          st = Redo(sink->root_, Join(meta, r), sink->instance_);
          if (!st.ok()) break;
        }
      }
      if (!st.ok()) {
        close(fd);
        return prefix(st);
      }
      RemoveTemporaryFiles(sink->root_, options.name);
      sink->lock_ = new StoreLock;
      sink->lock_->root = sink->root_;
      sink->lock_->fd = fd;
      sink->lock_->refs = 1;
      Registry()[sink->root_] = sink->lock_;
    }
  }
  auto lsn = ReadCheckpoint(sink->root_, options.pipeline);
  if (!lsn.ok()) return prefix(lsn.status());
  sink->durable_lsn_ = *lsn;
  spdlog::info("target {}: document store {}, checkpoint {}", options.name, sink->root_,
               sink->durable_lsn_ == kInvalidLsn ? "none" : FormatLsn(sink->durable_lsn_));
  return sink;
}

absl::Status DocumentSink::ForEachDocument(
    const std::string& dir, const std::string& collection,
    const std::function<absl::Status(const std::string& file, const Json& doc)>& fn) {
  const std::string cdir = Join(dir, collection);
  ASSIGN_OR_RETURN(std::vector<std::string> files, ListFiles(cdir, "", ".json"));
  for (const std::string& file : files) {
    ASSIGN_OR_RETURN(std::optional<Json> doc, LoadDocument(Join(cdir, file)));
    if (!doc) continue;  // removed since the listing
    RETURN_IF_ERROR(fn(file, *doc));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Json>> DocumentSink::ReadDocument(const std::string& dir, const std::string& collection,
                                                               const std::string& file) {
  return LoadDocument(Join(Join(dir, collection), file));
}

absl::StatusOr<Lsn> DocumentSink::ReadCheckpoint(const std::string& dir, const std::string& pipeline) {
  const std::string path = Join(Join(dir, kMetaDir), absl::StrCat("checkpoint.", pipeline, ".json"));
  auto content = ReadWholeFile(path);
  if (absl::IsNotFound(content.status())) return kInvalidLsn;
  if (!content.ok()) return content.status();
  auto parsed = Json::Parse(*content);
  if (!parsed.ok())
    return absl::DataLossError(absl::StrCat("malformed checkpoint ", path, ": ", parsed.status().message()));
  const Json* lsn = Field(*parsed, "lsn", Json::Type::kString, false);
  std::optional<Lsn> value = lsn ? ParseLsn(lsn->string_value()) : std::nullopt;
  if (!value) return absl::DataLossError(absl::StrCat("malformed checkpoint ", path, ": no \"lsn\" of the form X/X"));
  return *value;
}

absl::StatusOr<std::vector<CopyChunk>> DocumentSink::ReadCopyChunks(const std::string& dir, const std::string& pipeline,
                                                                    const std::string& source_table) {
  const std::string path = Join(Join(dir, kMetaDir), absl::StrCat("copy_chunks.", pipeline, ".json"));
  ASSIGN_OR_RETURN(Json array, ReadChunkArray(path));
  std::vector<CopyChunk> out;
  for (const Json& j : array.array()) {
    auto c = ChunkFromJson(j);
    if (!c.ok())
      return absl::DataLossError(absl::StrCat("malformed copy-chunk file ", path, ": ", c.status().message()));
    if (source_table.empty() || c->source_table == source_table) out.push_back(*std::move(c));
  }
  return out;
}

absl::Status DocumentSink::Apply(const TargetOp& op) {
  ++group_changes_;
  absl::Status st = applier_.Apply(op);
  // A value the store cannot hold is a rejected value, as a database's constraint would be:
  // the pipeline isolates the transaction and stops naming it.
  if (st.code() == absl::StatusCode::kInvalidArgument) st = absl::FailedPreconditionError(st.message());
  if (!st.ok() && first_error_.ok()) first_error_ = st;
  return st;
}

void DocumentSink::EndTransaction(const TransactionCommit& commit) {
  have_commit_ = true;
  last_commit_ = commit;
}

absl::StatusOr<Lsn> DocumentSink::Flush() {
  if (!first_error_.ok()) return first_error_;
  if (group_changes_ == 0 && !have_commit_ && overlay_.collections.empty()) return durable_lsn_;
  std::vector<std::pair<std::string, std::string>> meta;
  const bool checkpoint = have_commit_;
  const Lsn lsn = last_commit_.end_lsn;
  if (checkpoint) {
    Json c = Json::MakeObject();
    c.Set("pipeline", Json::String(options_.pipeline));
    c.Set("lsn", Json::String(FormatLsn(lsn)));
    c.Set("commit_time", Json::Number(last_commit_.commit_time));
    c.Set("written_at", Json::Number(absl::ToUnixSeconds(absl::Now())));
    meta.emplace_back(CheckpointName(), c.Serialize() + "\n");
  }
  RETURN_IF_ERROR(Commit(meta, true));
  if (checkpoint) durable_lsn_ = std::max(durable_lsn_, lsn);
  return durable_lsn_;
}

absl::Status DocumentSink::CommitChunk(const CopyChunk& chunk) {
  if (!first_error_.ok()) return first_error_;
  std::lock_guard<std::mutex> guard(lock_->chunks_mu);
  const std::string path = Join(Join(root_, kMetaDir), ChunksName());
  auto array = ReadChunkArray(path);
  if (!array.ok())
    return absl::Status(array.status().code(), absl::StrCat("target ", options_.name, ": ", array.status().message()));
  array->mutable_array().push_back(ChunkToJson(chunk));
  return Commit({{ChunksName(), array->Serialize() + "\n"}}, false);
}

absl::StatusOr<std::vector<CopyChunk>> DocumentSink::CopyChunks(const std::string& source_table) {
  auto chunks = ReadCopyChunks(root_, options_.pipeline, source_table);
  if (!chunks.ok()) {
    return absl::Status(chunks.status().code(),
                        absl::StrCat("target ", options_.name, ": ", chunks.status().message()));
  }
  return chunks;
}

void DocumentSink::ResetGroup() {
  applied_changes_ += group_changes_;
  group_changes_ = 0;
  have_commit_ = false;
  overlay_.collections.clear();
}

absl::Status DocumentSink::Commit(const std::vector<std::pair<std::string, std::string>>& meta, bool crash_points) {
  auto fail = [&](const absl::Status& st) {
    first_error_ =
        absl::Status(st.code(), absl::StrCat("target ", options_.name, ": committing the group: ", st.message()));
    return first_error_;
  };
  Json renames = Json::MakeArray(), unlinks = Json::MakeArray();
  std::vector<std::string> dirs;
  bool root_changed = false;
  std::string content;
  for (auto& [collection, col] : overlay_.collections) {
    bool changed = col.truncated;
    for (const auto& [file, entry] : col.docs) changed = changed || entry.dirty;
    if (!changed) continue;
    const std::string dir = Join(root_, collection);
    bool created;
    absl::Status st = MakeDirs(dir, &created);
    if (!st.ok()) return fail(st);
    root_changed = root_changed || created;
    auto pair = [&](const std::string& a, const std::string& b) {
      return Json::MakeArray({Json::String(a), Json::String(b)});
    };
    if (col.truncated) {
      auto on_disk = ListFiles(dir, "", ".json");
      if (!on_disk.ok()) return fail(on_disk.status());
      for (const std::string& file : *on_disk) {
        auto it = col.docs.find(file);
        if (it == col.docs.end() || !it->second.doc) unlinks.mutable_array().push_back(pair(collection, file));
      }
    }
    for (const auto& [file, entry] : col.docs) {
      if (!entry.dirty) continue;
      if (!entry.doc) {
        unlinks.mutable_array().push_back(pair(collection, file));
        continue;
      }
      std::string tmp = absl::StrCat(".", file, ".", instance_, ".tmp");
      content.clear();
      entry.doc->AppendTo(&content);
      content.push_back('\n');
      st = WriteSynced(Join(dir, tmp), content);
      if (!st.ok()) return fail(st);
      renames.mutable_array().push_back(
          Json::MakeArray({Json::String(collection), Json::String(file), Json::String(tmp)}));
    }
    dirs.push_back(dir);
  }
  for (const std::string& dir : dirs) {
    absl::Status st = FsyncDir(dir);
    if (!st.ok()) return fail(st);
  }
  if (root_changed) {
    absl::Status st = FsyncDir(root_);
    if (!st.ok()) return fail(st);
  }
  if (crash_points) CrashPoint("apply.before_commit");
  Json files = Json::MakeArray();
  for (const auto& [name, text] : meta)
    files.mutable_array().push_back(Json::MakeArray({Json::String(name), Json::String(text)}));
  const std::string meta_dir = Join(root_, kMetaDir);
  absl::Status st;
  if (renames.array().empty() && unlinks.array().empty()) {
    // Nothing but _walshift files: each is written atomically on its own.
    for (const auto& [name, text] : meta) {
      st = WriteAtomic(meta_dir, name, text, instance_);
      if (!st.ok()) return fail(st);
    }
  } else {
    // The commit point: once the record is durable, the group is.
    Json record = Json::MakeObject();
    record.Set("renames", std::move(renames));
    record.Set("unlinks", std::move(unlinks));
    record.Set("files", std::move(files));
    const std::string name = absl::StrCat("commit.", instance_, ".json");
    st = WriteAtomic(meta_dir, name, record.Serialize(), instance_);
    if (st.ok()) st = Redo(root_, Join(meta_dir, name), instance_);
    if (!st.ok()) return fail(st);
  }
  if (crash_points) CrashPoint("apply.after_commit");
  ResetGroup();
  return absl::OkStatus();
}

// Overlay.

absl::StatusOr<DocumentSink::Overlay::Entry*> DocumentSink::Overlay::Load(const std::string& collection,
                                                                          const std::string& file) {
  Collection& col = CollectionOf(collection);
  auto it = col.docs.find(file);
  if (it != col.docs.end()) return &it->second;
  Entry entry;
  if (!col.truncated) {
    ASSIGN_OR_RETURN(entry.doc, LoadDocument(Join(Join(sink_->root_, collection), file)));
  }
  return &col.docs.emplace(file, std::move(entry)).first->second;
}

absl::StatusOr<const Json*> DocumentSink::Overlay::Read(const std::string& collection, const std::string& file) {
  ASSIGN_OR_RETURN(Entry * e, Load(collection, file));
  return e->doc ? &*e->doc : nullptr;
}

absl::StatusOr<Json*> DocumentSink::Overlay::Modify(const std::string& collection, const std::string& file) {
  ASSIGN_OR_RETURN(Entry * e, Load(collection, file));
  if (!e->doc) return nullptr;
  e->dirty = true;
  return &*e->doc;
}

absl::Status DocumentSink::Overlay::Put(const std::string& collection, const std::string& file, Json doc) {
  Entry& e = CollectionOf(collection).docs[file];
  e.doc = std::move(doc);
  e.dirty = true;
  return absl::OkStatus();
}

absl::Status DocumentSink::Overlay::Erase(const std::string& collection, const std::string& file) {
  Entry& e = CollectionOf(collection).docs[file];
  e.doc.reset();
  e.dirty = true;
  return absl::OkStatus();
}

absl::Status DocumentSink::Overlay::EraseAll(const std::string& collection) {
  Collection& col = CollectionOf(collection);
  col.docs.clear();
  col.truncated = true;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> DocumentSink::Overlay::Files(const std::string& collection) {
  Collection& col = CollectionOf(collection);
  std::set<std::string> names;
  if (!col.truncated) {
    ASSIGN_OR_RETURN(std::vector<std::string> on_disk, ListFiles(Join(sink_->root_, collection), "", ".json"));
    names.insert(on_disk.begin(), on_disk.end());
  }
  for (const auto& [file, entry] : col.docs) {
    if (entry.doc) {
      names.insert(file);
    } else {
      names.erase(file);
    }
  }
  return std::vector<std::string>(names.begin(), names.end());
}

}  // namespace walshift::documents
