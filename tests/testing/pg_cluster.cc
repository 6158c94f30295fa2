#include "tests/testing/pg_cluster.h"

#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "tests/testing/test_paths.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

namespace walshift::testing {
namespace {

constexpr char kPgVersionBinDir[] = "/usr/lib/postgresql/15/bin";
constexpr int kPortAttempts = 8;

// The cleanup the watchdog runs when the test process dies first ($1 = temp dir, $2 = keep).
constexpr char kWatchdogScript[] = R"sh(
IFS= read -r line
[ "$line" = done ] && exit 0
pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ]; then
  kill -QUIT "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$pid" 2>/dev/null
fi
[ "$2" = 1 ] || rm -rf "$1"
)sh";

bool KeepTempDirs() {
  const char* v = getenv("WALSHIFT_KEEP_TEST_TMP");
  return v != nullptr && *v != '\0' && absl::string_view(v) != "0";
}

bool FileExists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// Thread-safe passwd lookups: by name (uid/gid) or by uid (name). False when unknown.
bool LookupUser(const std::string& name, uid_t* uid, gid_t* gid) {
  std::vector<char> buf(16384);
  struct passwd pw;
  struct passwd* found = nullptr;
  if (getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return false;
  }
  *uid = pw.pw_uid;
  *gid = pw.pw_gid;
  return true;
}

std::string UserName(uid_t uid) {
  std::vector<char> buf(16384);
  struct passwd pw;
  struct passwd* found = nullptr;
  if (getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) return "";
  return pw.pw_name;
}

// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0).
absl::StatusOr<int> PickFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int e = errno;
    close(fd);
    return absl::InternalError(absl::StrCat("bind 127.0.0.1:0: ", strerror(e)));
  }
  close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

std::string Tail(const std::string& s, size_t max_bytes) {
  if (s.size() <= max_bytes) return s;
  return absl::StrCat("...", s.substr(s.size() - max_bytes));
}

std::string QuoteConf(absl::string_view v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\'') out += '\'';
    out += c;
  }
  out += "'";
  return out;
}

}  // namespace

absl::StatusOr<std::string> PgCluster::BinDir() {
  static const absl::StatusOr<std::string>* const kBinDir = [] {
    const char* env = getenv("WALSHIFT_PG_BINDIR");
    if (env != nullptr && *env != '\0') {
      return new absl::StatusOr<std::string>(std::string(env));
    }
    if (FileExists(absl::StrCat(kPgVersionBinDir, "/postgres"))) {
      return new absl::StatusOr<std::string>(std::string(kPgVersionBinDir));
    }
    std::optional<std::string> pg_config = FindProgram("pg_config");
    if (pg_config.has_value()) {
      SubprocessOptions opts;
      opts.argv = {*pg_config, "--version"};
      absl::StatusOr<RunResult> version = Subprocess::Run(opts, absl::Seconds(30));
      if (version.ok() && absl::StartsWith(version->stdout_text, "PostgreSQL 15")) {
        opts.argv = {*pg_config, "--bindir"};
        absl::StatusOr<RunResult> bindir = Subprocess::Run(opts, absl::Seconds(30));
        if (bindir.ok() && bindir->status.success()) {
          return new absl::StatusOr<std::string>(std::string(absl::StripAsciiWhitespace(bindir->stdout_text)));
        }
      }
    }
    return new absl::StatusOr<std::string>(absl::FailedPreconditionError(
        "PostgreSQL 15 binaries not found (install postgresql-15 with tools/setup, or set "
        "WALSHIFT_PG_BINDIR)"));
  }();
  return *kBinDir;
}

absl::StatusOr<std::string> PgCluster::Binary(absl::string_view name) {
  ASSIGN_OR_RETURN(std::string dir, BinDir());
  return absl::StrCat(dir, "/", name);
}

std::string PgCluster::ServerOsUser() {
  if (geteuid() == 0) {
    const char* env = getenv("WALSHIFT_TEST_PG_USER");
    if (env != nullptr && *env != '\0') return env;
    uid_t uid;
    gid_t gid;
    return LookupUser("postgres", &uid, &gid) ? "postgres" : "nobody";
  }
  return UserName(geteuid());
}

absl::StatusOr<std::unique_ptr<PgCluster>> PgCluster::Start(PgClusterOptions options) {
  std::unique_ptr<PgCluster> cluster(new PgCluster());
  cluster->options_ = std::move(options);
  // On any error below, the destructor stops what was started and removes the temp dir.
  RETURN_IF_ERROR(cluster->Init());
  RETURN_IF_ERROR(cluster->StartServer());
  return cluster;
}

absl::Status PgCluster::Init() {
  ASSIGN_OR_RETURN(bindir_, BinDir());
  if (geteuid() == 0) os_user_ = ServerOsUser();
  ASSIGN_OR_RETURN(temp_dir_, MakeTempDir(absl::StrCat("walshift-", options_.name, "-")));
  data_dir_ = absl::StrCat(temp_dir_, "/data");
  log_path_ = absl::StrCat(temp_dir_, "/postgresql.log");
  if (chmod(temp_dir_.c_str(), 0755) != 0) {
    return absl::InternalError(absl::StrCat("chmod ", temp_dir_, ": ", strerror(errno)));
  }
  if (!os_user_.empty()) {
    uid_t uid;
    gid_t gid;
    if (!LookupUser(os_user_, &uid, &gid)) {
      return absl::FailedPreconditionError(absl::StrCat("no OS user ", os_user_, " to run PostgreSQL as"));
    }
    if (chown(temp_dir_.c_str(), uid, gid) != 0) {
      return absl::InternalError(absl::StrCat("chown ", temp_dir_, ": ", strerror(errno)));
    }
  }

  // The watchdog: cleans up if this process dies without running the destructor.
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  SubprocessOptions wd;
  wd.argv = {"/bin/sh", "-c", kWatchdogScript, "walshift-pg-watchdog", temp_dir_, KeepTempDirs() ? "1" : "0"};
  wd.stdin_fd = fds[0];
  wd.stdout_to = Output::Null();
  wd.stderr_to = Output::Null();
  wd.kill_on_parent_death = false;  // It must outlive this process to clean up.
  absl::StatusOr<std::unique_ptr<Subprocess>> watchdog = Subprocess::Start(std::move(wd));
  close(fds[0]);
  if (!watchdog.ok()) {
    close(fds[1]);
    return watchdog.status();
  }
  watchdog_ = *std::move(watchdog);
  watchdog_fd_ = fds[1];

  // A copy of one initdb result, made once for every cluster of every test process.
  ASSIGN_OR_RETURN(std::string initialized, InitializedTemplate());
  ASSIGN_OR_RETURN(RunResult copy, RunPg({"cp", "-a", initialized, data_dir_}));
  if (!copy.status.success()) {
    return absl::InternalError(absl::StrCat("copying ", initialized, " to ", data_dir_, " for cluster ", options_.name,
                                            " failed (", copy.status.ToString(), "): ", Tail(copy.stderr_text, 2000)));
  }
  ASSIGN_OR_RETURN(base_conf_, ReadFile(absl::StrCat(data_dir_, "/postgresql.conf")));
  ASSIGN_OR_RETURN(base_hba_, ReadFile(absl::StrCat(data_dir_, "/pg_hba.conf")));
  return absl::OkStatus();
}

absl::StatusOr<std::string> PgCluster::InitializedTemplate() {
  // Keyed by the binaries (their path and the server's modification time) and the OS user
  // that owns the files; beside this cluster's temp dir. Never removed: the next run uses it.
  struct stat server;
  if (stat(absl::StrCat(bindir_, "/postgres").c_str(), &server) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("no postgres in ", bindir_));
  }
  std::string parent = temp_dir_.substr(0, temp_dir_.rfind('/'));
  // (v1: the initdb arguments below; another set takes another number.)
  std::string key = absl::StrCat("v1-", bindir_, "-", os_user_.empty() ? UserName(geteuid()) : os_user_, "-",
                                 static_cast<long long>(server.st_mtime));
  for (char& c : key)
    if (!absl::ascii_isalnum(c) && c != '-') c = '_';
  std::string dir = absl::StrCat(parent, "/walshift-initdb-", key);
  std::string data = absl::StrCat(dir, "/data");
  struct stat done;
  if (stat(absl::StrCat(data, "/PG_VERSION").c_str(), &done) == 0) return data;
  // initdb into a directory of this process, then renamed into place: concurrent test
  // processes each make one, the first rename wins, and a half-made one is never used.
  std::string mine = absl::StrCat(dir, ".tmp", getpid());
  (void)RunPg({"rm", "-rf", mine});  // left by a killed run whose pid this one has
  if (mkdir(mine.c_str(), 0755) != 0) {
    return absl::InternalError(absl::StrCat("mkdir ", mine, ": ", strerror(errno)));
  }
  if (!os_user_.empty()) {
    uid_t uid;
    gid_t gid;
    if (!LookupUser(os_user_, &uid, &gid) || chown(mine.c_str(), uid, gid) != 0) {
      return absl::InternalError(absl::StrCat("chown ", mine, " to ", os_user_, ": ", strerror(errno)));
    }
  }
  ASSIGN_OR_RETURN(RunResult initdb,
                   RunPg({absl::StrCat(bindir_, "/initdb"), "-D", absl::StrCat(mine, "/data"), "-U", kSuperuser,
                          "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"}));
  if (!initdb.status.success()) {
    (void)RunPg({"rm", "-rf", mine});
    return absl::InternalError(absl::StrCat("initdb for cluster ", options_.name, " in ", mine, " failed (",
                                            initdb.status.ToString(), "; running as ", ServerOsUser(),
                                            "; the temp dir and its parents must be accessible "
                                            "to that user, see WALSHIFT_TEST_TMP): ",
                                            Tail(initdb.stderr_text, 3000)));
  }
  if (stat(dir.c_str(), &done) == 0 && stat(absl::StrCat(data, "/PG_VERSION").c_str(), &done) != 0) {
    (void)RunPg({"rm", "-rf", dir});  // half removed (a temp cleaner): replaced
  }
  if (rename(mine.c_str(), dir.c_str()) != 0) {
    if (errno != EEXIST && errno != ENOTEMPTY) {
      return absl::InternalError(absl::StrCat("rename ", mine, " to ", dir, ": ", strerror(errno)));
    }
    (void)RunPg({"rm", "-rf", mine});  // another process was first
    if (stat(absl::StrCat(data, "/PG_VERSION").c_str(), &done) != 0) {
      return absl::InternalError(absl::StrCat(dir, " exists without a whole data directory: remove it"));
    }
  }
  return data;
}

absl::Status PgCluster::WriteConfig() {
  std::vector<std::string> listen = {"127.0.0.1"};
  listen.insert(listen.end(), options_.extra_listen_addresses.begin(), options_.extra_listen_addresses.end());
  if (!options_.extra_hba.empty()) {
    RETURN_IF_ERROR(WriteFile(
        absl::StrCat(data_dir_, "/pg_hba.conf"),
        absl::StrCat(base_hba_, "\n# PgClusterOptions.extra_hba\n", absl::StrJoin(options_.extra_hba, "\n"), "\n")));
  }
  std::vector<std::string> lines = {
      "",
      "# walshift test cluster (tests/testing/pg_cluster.cc)",
      absl::StrCat("listen_addresses = '", absl::StrJoin(listen, ","), "'"),
      absl::StrCat("port = ", port_),
      absl::StrCat("unix_socket_directories = ", QuoteConf(temp_dir_)),
      "wal_level = logical",
      "max_replication_slots = 20",
      "max_wal_senders = 20",
      "shared_buffers = 128MB",
      "max_connections = 100",
      "timezone = 'UTC'",
      "log_timezone = 'UTC'",
      "log_line_prefix = '%m [%p] %q%u@%d '",
  };
  for (const auto& [name, contents] : options_.data_files) {
    const std::string path = absl::StrCat(data_dir_, "/", name);
    RETURN_IF_ERROR(WriteFile(path, contents));
    if (chmod(path.c_str(), 0600) != 0) return absl::InternalError(absl::StrCat("chmod ", path, ": ", strerror(errno)));
    uid_t uid;
    gid_t gid;
    if (!os_user_.empty() && (!LookupUser(os_user_, &uid, &gid) || chown(path.c_str(), uid, gid) != 0)) {
      return absl::InternalError(absl::StrCat("chown ", path, " to ", os_user_, ": ", strerror(errno)));
    }
  }
  if (!options_.extra_conf.empty()) lines.push_back("# PgClusterOptions.extra_conf");
  for (const std::string& l : options_.extra_conf) lines.push_back(l);
  // Truncating the existing file keeps its owner and mode.
  return WriteFile(absl::StrCat(data_dir_, "/postgresql.conf"),
                   absl::StrCat(base_conf_, absl::StrJoin(lines, "\n"), "\n"));
}

absl::Status PgCluster::StartServer() {
  std::string last_error;
  for (int attempt = 0; attempt < kPortAttempts; ++attempt) {
    ASSIGN_OR_RETURN(port_, PickFreePort());
    RETURN_IF_ERROR(WriteConfig());
    unlink(log_path_.c_str());
    ASSIGN_OR_RETURN(RunResult r, RunPg({absl::StrCat(bindir_, "/pg_ctl"), "-D", data_dir_, "-l", log_path_, "-w", "-t",
                                         absl::StrCat(absl::ToInt64Seconds(options_.timeout)), "start"}));
    if (r.status.success()) {
      running_ = true;
      return absl::OkStatus();
    }
    std::string log = LogTail(8000);
    last_error =
        absl::StrCat("pg_ctl start for cluster ", options_.name, " (port ", port_, ") failed: ", r.status.ToString(),
                     ": ", Tail(r.stderr_text, 1000), "; server log: ", log);
    bool port_taken = absl::StrContains(log, "could not bind") || absl::StrContains(log, "Address already in use") ||
                      absl::StrContains(log, "could not create any TCP/IP sockets");
    KillPostmasterFromPidFile();
    if (!port_taken) return absl::UnavailableError(last_error);
  }
  return absl::UnavailableError(last_error);
}

absl::StatusOr<RunResult> PgCluster::RunPg(std::vector<std::string> argv) const {
  SubprocessOptions opts;
  opts.argv = std::move(argv);
  opts.env_unset = {"PGDATA",     "PGHOST",    "PGHOSTADDR",       "PGPORT",     "PGUSER",
                    "PGDATABASE", "PGOPTIONS", "PGSERVICE",        "PGPASSWORD", "PGPASSFILE",
                    "PGSSLMODE",  "PGTZ",      "PGCLIENTENCODING", "LC_ALL",     "LANGUAGE"};
  opts.env["LANG"] = "C";
  opts.env["LC_ALL"] = "C";
  opts.cwd = temp_dir_;
  if (!os_user_.empty()) opts.user = os_user_;
  return Subprocess::Run(std::move(opts), options_.timeout + absl::Seconds(30));
}

void PgCluster::KillPostmasterFromPidFile() {
  absl::StatusOr<std::string> pidfile = ReadFile(absl::StrCat(data_dir_, "/postmaster.pid"));
  if (!pidfile.ok()) return;
  int pid = 0;
  if (!absl::SimpleAtoi(pidfile->substr(0, pidfile->find('\n')), &pid) || pid <= 1) return;
  // Only a postgres process: the pid file may be stale and the pid reused.
  char exe[4096];
  ssize_t n = readlink(absl::StrCat("/proc/", pid, "/exe").c_str(), exe, sizeof(exe) - 1);
  if (n <= 0 || !absl::StrContains(absl::string_view(exe, n), "postgres")) return;
  kill(pid, SIGKILL);
  for (int i = 0; i < 500 && kill(pid, 0) == 0; ++i) absl::SleepFor(absl::Milliseconds(10));
}

PgCluster::~PgCluster() {
  if (running_) {
    absl::Status st = Stop(StopMode::kImmediate);
    if (!st.ok()) KillPostmasterFromPidFile();
  }
  if (!temp_dir_.empty()) {
    if (KeepTempDirs()) {
      fprintf(stderr, "PgCluster %s: keeping %s (WALSHIFT_KEEP_TEST_TMP)\n", options_.name.c_str(), temp_dir_.c_str());
    } else {
      RemoveTree(temp_dir_);
    }
  }
  if (watchdog_fd_ >= 0) {
    ssize_t unused = write(watchdog_fd_, "done\n", 5);
    (void)unused;
    close(watchdog_fd_);
  }
  if (watchdog_ != nullptr) {
    if (!watchdog_->Wait(absl::Seconds(5)).ok()) watchdog_->Kill();
  }
}

std::string PgCluster::Dsn(absl::string_view dbname) const {
  return absl::StrCat("host=", host_, " port=", port_, " dbname=", pg::ConninfoValue(dbname), " user=", kSuperuser);
}

absl::Status PgCluster::CreateDatabase(absl::string_view name) const {
  return Exec("postgres", absl::StrCat("CREATE DATABASE ", pg::QuoteIdent(name)));
}

absl::Status PgCluster::Exec(absl::string_view dbname, const std::string& sql) const {
  return Query(dbname, sql).status();
}

absl::StatusOr<PgRows> PgCluster::Query(absl::string_view dbname, const std::string& sql) const {
  ASSIGN_OR_RETURN(pg::ConnPtr conn, pg::Connect(Dsn(dbname), absl::StrCat("test cluster ", options_.name)));
  std::string context = absl::StrCat("cluster ", options_.name, " db ", dbname, ": ", Tail(sql, 300));
  ASSIGN_OR_RETURN(pg::ResultPtr res, pg::Exec(conn.get(), sql, context));
  PgRows rows;
  int n = PQntuples(res.get());
  int cols = PQnfields(res.get());
  rows.reserve(n);
  for (int i = 0; i < n; ++i) {
    PgRow row;
    row.reserve(cols);
    for (int j = 0; j < cols; ++j) {
      if (PQgetisnull(res.get(), i, j)) {
        row.push_back(std::nullopt);
      } else {
        row.emplace_back(std::string(PQgetvalue(res.get(), i, j), PQgetlength(res.get(), i, j)));
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

absl::StatusOr<std::string> PgCluster::QueryValue(absl::string_view dbname, const std::string& sql) const {
  ASSIGN_OR_RETURN(PgRows rows, Query(dbname, sql));
  if (rows.size() != 1 || rows[0].size() != 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("expected one value from \"", sql, "\", got ", rows.size(), " rows"));
  }
  if (!rows[0][0].has_value()) {
    return absl::FailedPreconditionError(absl::StrCat("\"", sql, "\" returned NULL"));
  }
  return *rows[0][0];
}

absl::Status PgCluster::Stop(StopMode mode) {
  if (!running_) return absl::OkStatus();
  const char* m = mode == StopMode::kSmart ? "smart" : mode == StopMode::kFast ? "fast" : "immediate";
  ASSIGN_OR_RETURN(RunResult r, RunPg({absl::StrCat(bindir_, "/pg_ctl"), "-D", data_dir_, "-m", m, "-w", "-t",
                                       absl::StrCat(absl::ToInt64Seconds(options_.timeout)), "stop"}));
  if (!r.status.success()) {
    // pg_ctl says "PID file ... does not exist" when the server is already gone.
    if (!FileExists(absl::StrCat(data_dir_, "/postmaster.pid"))) {
      running_ = false;
      return absl::OkStatus();
    }
    return absl::InternalError(absl::StrCat("pg_ctl stop (", m, ") for cluster ", options_.name,
                                            " failed: ", r.status.ToString(), ": ", Tail(r.stderr_text, 1000)));
  }
  running_ = false;
  return absl::OkStatus();
}

absl::Status PgCluster::Restart() {
  if (running_) return absl::OkStatus();
  ASSIGN_OR_RETURN(RunResult r, RunPg({absl::StrCat(bindir_, "/pg_ctl"), "-D", data_dir_, "-l", log_path_, "-w", "-t",
                                       absl::StrCat(absl::ToInt64Seconds(options_.timeout)), "start"}));
  if (!r.status.success()) {
    std::string err =
        absl::StrCat("pg_ctl start (restart) for cluster ", options_.name, " failed: ", r.status.ToString(), ": ",
                     Tail(r.stderr_text, 1000), "; server log: ", LogTail(4000));
    KillPostmasterFromPidFile();
    return absl::UnavailableError(err);
  }
  running_ = true;
  return absl::OkStatus();
}

std::string PgCluster::LogTail(size_t max_bytes) const {
  absl::StatusOr<std::string> log = ReadFile(log_path_);
  if (!log.ok()) return "(no server log)";
  return Tail(*log, max_bytes);
}

}  // namespace walshift::testing
