#pragma once
// Throwaway PostgreSQL 15 clusters for tests: initdb in a temp dir, wal_level=logical, a free
// TCP port on 127.0.0.1 and a unix socket in the temp dir, run as an unprivileged OS user when
// the test runs as root. Several clusters per process work (source and targets).
//
// Settings (the same as tools/lib/pgcluster.sh): trust authentication for local and
// 127.0.0.1 connections (including replication), superuser "walshift", UTF8 with locale C,
// listen_addresses='127.0.0.1', unix_socket_directories=<temp dir>, wal_level=logical,
// max_replication_slots=20, max_wal_senders=20, shared_buffers=128MB, max_connections=100,
// timezone/log_timezone UTC, fsync and synchronous_commit left at their defaults (on), server
// log in <temp dir>/postgresql.log. Options add postgresql.conf lines after these.
//
// Cleanup: the destructor stops the server (immediate mode) and removes the temp dir, also when
// the test failed. Each cluster also has a watchdog process (/bin/sh, in its own process group)
// that waits on a pipe from the test process: if the test process dies without running the
// destructor (crash, abort, SIGKILL), the watchdog sends SIGQUIT to the postmaster (immediate
// shutdown), SIGKILL after 10 s, and removes the temp dir. Limits: killing the watchdog itself
// (e.g. kill -9 of the whole process group tree) or a machine crash leaves the cluster behind.
// Set WALSHIFT_KEEP_TEST_TMP=1 to keep the temp dir (with the server log) for debugging; the
// server is still stopped.

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "tests/testing/subprocess.h"

namespace walshift::testing {

struct PgClusterOptions {
  // Extra postgresql.conf lines, appended after the standard settings (later lines win).
  std::vector<std::string> extra_conf;
  // Addresses the server listens on besides 127.0.0.1 (e.g. the host side of a veth pair in a
  // network test). Each must exist when the server starts.
  std::vector<std::string> extra_listen_addresses;
  // Lines appended to pg_hba.conf (e.g. "host all all 10.0.0.0/8 trust" and the same for
  // "replication").
  std::vector<std::string> extra_hba;
  // Files written into the data directory before the server starts, owned by the server's OS
  // user with mode 0600 (a TLS key: ssl_key_file = 'server.key'): name, contents.
  std::vector<std::pair<std::string, std::string>> data_files;
  // Used in the temp dir name ("walshift-<name>-XXXXXX") and in messages.
  std::string name = "pg";
  // How long pg_ctl waits for startup / shutdown.
  absl::Duration timeout = absl::Seconds(60);
};

// One query result: rows of cells; a SQL NULL is std::nullopt, every other value is its text
// form (as libpq returns it: DateStyle ISO, extra_float_digits 3, UTF8).
using PgRow = std::vector<std::optional<std::string>>;
using PgRows = std::vector<PgRow>;

// A running test cluster. Thread-compatible; Dsn/Exec/Query may be called from several threads
// at once (each call opens its own connection).
class PgCluster {
 public:
  // The superuser initdb creates; stable whatever OS user runs the server.
  static constexpr const char* kSuperuser = "walshift";

  enum class StopMode { kSmart, kFast, kImmediate };

  // initdb + start. kFailedPrecondition when PostgreSQL 15 binaries are missing; kInternal or
  // kUnavailable (with the tail of the server log) when initdb or startup fails. Retries with a
  // new port when the chosen port was taken meanwhile.
  static absl::StatusOr<std::unique_ptr<PgCluster>> Start(PgClusterOptions options = {});

  // The PostgreSQL 15 bin directory: $WALSHIFT_PG_BINDIR, else /usr/lib/postgresql/15/bin,
  // else `pg_config --bindir` when pg_config reports version 15. kFailedPrecondition if none.
  static absl::StatusOr<std::string> BinDir();
  // BinDir() + "/" + name (psql, pgbench, pg_recvlogical...).
  static absl::StatusOr<std::string> Binary(absl::string_view name);
  // The OS user that runs initdb/postgres: when root, $WALSHIFT_TEST_PG_USER, else "postgres"
  // if that user exists, else "nobody"; otherwise the current user. Empty when unknown.
  static std::string ServerOsUser();

  PgCluster(const PgCluster&) = delete;
  PgCluster& operator=(const PgCluster&) = delete;
  // Stops the server (immediate) and removes the temp dir; never fails.
  ~PgCluster();

  int port() const { return port_; }
  // TCP host of the server, "127.0.0.1".
  const std::string& host() const { return host_; }
  // Directory holding the unix socket (the temp dir).
  const std::string& socket_dir() const { return temp_dir_; }
  const std::string& temp_dir() const { return temp_dir_; }
  const std::string& data_dir() const { return data_dir_; }
  const std::string& log_path() const { return log_path_; }
  std::string user() const { return kSuperuser; }
  bool running() const { return running_; }

  // "host=127.0.0.1 port=<port> dbname=<dbname> user=walshift" (libpq key/value form; dbname
  // is quoted when needed).
  std::string Dsn(absl::string_view dbname = "postgres") const;

  // CREATE DATABASE <name> (connecting to "postgres"). kFailedPrecondition if it exists.
  absl::Status CreateDatabase(absl::string_view name) const;
  // Runs `sql` (one or more statements, simple protocol, autocommit) in `dbname`. Errors use
  // pg::ResultStatus codes; a down server is kUnavailable.
  absl::Status Exec(absl::string_view dbname, const std::string& sql) const;
  // Runs `sql` and returns the rows of its last statement.
  absl::StatusOr<PgRows> Query(absl::string_view dbname, const std::string& sql) const;
  // The single value of a 1x1 result. kFailedPrecondition for another shape or NULL.
  absl::StatusOr<std::string> QueryValue(absl::string_view dbname, const std::string& sql) const;

  // pg_ctl stop -w in `mode`. OK when already stopped.
  absl::Status Stop(StopMode mode = StopMode::kFast);
  // Starts a stopped cluster again with the same data dir and port (kUnavailable if the port is
  // taken meanwhile). OK when already running.
  absl::Status Restart();

  // The server log (the last `max_bytes` bytes), for failure messages.
  std::string LogTail(size_t max_bytes = 4000) const;

 private:
  PgCluster() = default;
  absl::Status Init();
  // The data directory of an initdb made once for these binaries and OS user (see Init).
  absl::StatusOr<std::string> InitializedTemplate();
  absl::Status WriteConfig();
  absl::Status StartServer();
  // Runs a PostgreSQL program as the server OS user with a clean PG* environment.
  absl::StatusOr<RunResult> RunPg(std::vector<std::string> argv) const;
  void KillPostmasterFromPidFile();

  PgClusterOptions options_;
  std::string bindir_;
  std::string os_user_;  // Empty: the current user, no switch.
  std::string temp_dir_;
  std::string data_dir_;
  std::string log_path_;
  std::string host_ = "127.0.0.1";
  std::string base_conf_;  // postgresql.conf as initdb wrote it.
  std::string base_hba_;   // pg_hba.conf as initdb wrote it.
  int port_ = 0;
  bool running_ = false;
  int watchdog_fd_ = -1;  // Write end of the watchdog's pipe.
  std::unique_ptr<Subprocess> watchdog_;
};

}  // namespace walshift::testing
