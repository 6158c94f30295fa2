#include "daemon/source/stream_spool.h"

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/core/status_macros.h"

namespace walshift {
namespace {

// A record: Int64 LSN, Int32 length, then the message bytes.
constexpr size_t kHeader = 12;

void Put(char* p, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) {
    p[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
}

uint64_t Get(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

absl::Status Errno(const std::string& what) {
  return absl::InternalError(absl::StrCat("stream spool: ", what, ": ", std::strerror(errno)));
}

constexpr char kDirPrefix[] = "walshift-stream-";

// Removes the spool directories under `parent` of walshiftd processes that no longer run (killed
// before they could remove them): walshift-stream-<pid>-XXXXXX whose pid does not exist.
void RemoveDeadSpools(const std::string& parent) {
  DIR* d = opendir(parent.c_str());
  if (d == nullptr) return;
  const size_t prefix = std::strlen(kDirPrefix);
  while (dirent* e = readdir(d)) {
    if (std::strncmp(e->d_name, kDirPrefix, prefix) != 0) continue;
    char* end = nullptr;
    long pid = std::strtol(e->d_name + prefix, &end, 10);
    if (pid <= 0 || end == nullptr || *end != '-' || pid == getpid()) continue;
    if (kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to judge
    std::string dir = absl::StrCat(parent, "/", e->d_name);
    if (DIR* files = opendir(dir.c_str())) {
      while (dirent* f = readdir(files)) {
        if (f->d_name[0] != '.') unlink(absl::StrCat(dir, "/", f->d_name).c_str());
      }
      closedir(files);
    }
    rmdir(dir.c_str());
  }
  closedir(d);
}

}  // namespace

StreamSpool::~StreamSpool() {
  std::vector<uint32_t> xids;
  for (const auto& [xid, _] : files_) xids.push_back(xid);
  for (uint32_t xid : xids) Close(xid);
  if (!dir_.empty()) rmdir(dir_.c_str());
}

absl::Status StreamSpool::EnsureDir() {
  if (!dir_.empty()) return absl::OkStatus();
  const char* tmp = getenv("TMPDIR");
  std::string parent = tmp != nullptr && *tmp ? tmp : "/tmp";
  RemoveDeadSpools(parent);
  std::string pattern = absl::StrCat(parent, "/", kDirPrefix, getpid(), "-XXXXXX");
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    return Errno(absl::StrCat("creating a directory for streamed transactions (", pattern,
                              "; TMPDIR names where they are kept)"));
  }
  dir_ = buf.data();
  return absl::OkStatus();
}

void StreamSpool::Close(uint32_t xid) {
  auto it = files_.find(xid);
  if (it == files_.end()) return;
  if (it->second.f != nullptr) std::fclose(it->second.f);
  unlink(it->second.path.c_str());
  files_.erase(it);
}

absl::Status StreamSpool::Start(uint32_t xid, bool first_segment) {
  auto it = files_.find(xid);
  if (!first_segment) {
    if (it == files_.end()) {
      return absl::DataLossError(absl::StrCat("pgoutput: Stream Start of transaction ", xid,
                                              " continues a stream whose first segment was not received"));
    }
    return absl::OkStatus();
  }
  if (it != files_.end()) {
    return absl::DataLossError(
        absl::StrCat("pgoutput: Stream Start of transaction ", xid, " as a first segment, but it is already streaming"));
  }
  RETURN_IF_ERROR(EnsureDir());
  File file;
  file.path = absl::StrCat(dir_, "/", xid);
  file.f = std::fopen(file.path.c_str(), "w+b");
  if (file.f == nullptr) return Errno(absl::StrCat("creating ", file.path));
  files_.emplace(xid, std::move(file));
  return absl::OkStatus();
}

absl::Status StreamSpool::Append(uint32_t xid, uint32_t subxid, Lsn lsn, const char* data, size_t len) {
  auto it = files_.find(xid);
  if (it == files_.end()) {
    return absl::DataLossError(absl::StrCat("pgoutput: message of streamed transaction ", xid, " outside its stream"));
  }
  File& file = it->second;
  if (subxid != xid) file.subxact_start.try_emplace(subxid, file.size);
  char header[kHeader];
  Put(header, lsn, 8);
  Put(header + 8, len, 4);
  if (std::fwrite(header, 1, kHeader, file.f) != kHeader || std::fwrite(data, 1, len, file.f) != len) {
    return Errno(absl::StrCat("writing ", file.path, " (streamed transaction ", xid, ")"));
  }
  file.size += kHeader + len;
  return absl::OkStatus();
}

absl::Status StreamSpool::Abort(uint32_t xid, uint32_t subxid) {
  auto it = files_.find(xid);
  if (it == files_.end()) return absl::OkStatus();  // nothing of it was streamed to us
  if (subxid == xid) {
    Close(xid);
    return absl::OkStatus();
  }
  File& file = it->second;
  auto sub = file.subxact_start.find(subxid);
  if (sub == file.subxact_start.end()) return absl::OkStatus();  // it had no change for us
  uint64_t cut = sub->second;
  // Subtransactions that began after it are nested in it (or later): they go too.
  for (auto s = file.subxact_start.begin(); s != file.subxact_start.end();) {
    s = s->second >= cut ? file.subxact_start.erase(s) : std::next(s);
  }
  if (std::fflush(file.f) != 0 || ftruncate(fileno(file.f), static_cast<off_t>(cut)) != 0 ||
      std::fseek(file.f, static_cast<long>(cut), SEEK_SET) != 0) {
    return Errno(absl::StrCat("cutting ", file.path, " back for the abort of subtransaction ", subxid));
  }
  file.size = cut;
  return absl::OkStatus();
}

absl::Status StreamSpool::Replay(uint32_t xid,
                                 const std::function<absl::Status(Lsn lsn, char* data, size_t len)>& message) {
  auto it = files_.find(xid);
  if (it == files_.end()) return absl::OkStatus();  // a transaction with no change for us
  File& file = it->second;
  if (std::fflush(file.f) != 0 || std::fseek(file.f, 0, SEEK_SET) != 0) {
    return Errno(absl::StrCat("reading ", file.path));
  }
  std::string buf;
  uint64_t at = 0;
  absl::Status st;
  while (st.ok() && at < file.size) {
    char header[kHeader];
    if (std::fread(header, 1, kHeader, file.f) != kHeader) {
      st = Errno(absl::StrCat("reading ", file.path, " at ", at));
      break;
    }
    Lsn lsn = Get(header, 8);
    size_t len = Get(header + 8, 4);
    buf.resize(len + 1);
    if (std::fread(buf.data(), 1, len, file.f) != len) {
      st = Errno(absl::StrCat("reading ", file.path, " at ", at));
      break;
    }
    buf[len] = '\0';
    at += kHeader + len;
    st = message(lsn, buf.data(), len);
  }
  Close(xid);
  return st;
}

uint64_t StreamSpool::bytes() const {
  uint64_t n = 0;
  for (const auto& [_, f] : files_) n += f.size;
  return n;
}

}  // namespace walshift
