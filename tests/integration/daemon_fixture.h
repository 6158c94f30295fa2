#pragma once
// Shared pieces of the integration and fault tests: a source and a target cluster per test
// suite, a fresh database pair per test, walshiftd as a real subprocess, and the fence that
// tells when the target has caught up with everything committed before it.

#include <map>
#include <memory>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/testing/kafka_broker.h"
#include "tests/testing/pg_cluster.h"
#include "tests/testing/subprocess.h"

namespace walshift::testing {

// The part of a config most tests share: this test's pipeline, source and one target named
// `main`; tests append their own keys.
inline const std::string kOneTarget = R"(
pipeline: {PIPELINE}
source: {dsn: "{SOURCE}"}
targets: [{name: main, dsn: "{TARGET}"}]
status: {listen: "127.0.0.1:0"}
)";

// The port of the status endpoint a walshiftd's log announces (it listens on 127.0.0.1:0), read
// from `read_log` for up to 10 s; -1 when it never does.
int StatusPortFromLog(const std::function<std::string()>& read_log);

class DaemonTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  // What SetUpTestSuite does, with the clusters' options (a suite that needs other server
  // settings calls it from its own SetUpTestSuite).
  static void StartClusters(PgClusterOptions source, PgClusterOptions target);
  void SetUp() override;
  void TearDown() override;

  // Writes `yaml` (with {SOURCE} and {TARGET} replaced by the DSNs of this test's databases and
  // {PIPELINE} by its pipeline name) and returns the file path.
  std::string WriteConfig(const std::string& yaml);
  // Starts walshiftd with the config; stderr goes to a log file kept for failure messages.
  // `binary`: another walshiftd (an earlier release) instead of this build's.
  absl::Status StartDaemon(const std::string& config_path, const std::map<std::string, std::string>& env = {},
                           const std::string& binary = "");
  // SIGTERM and wait; returns the exit status.
  ExitStatus StopDaemon(absl::Duration timeout = absl::Seconds(10));
  // Waits until the target checkpoint covers everything committed in the source before this
  // call. Fails (with the daemon's log) when the daemon exits or `timeout` passes.
  absl::Status WaitCaughtUp(absl::Duration timeout = absl::Seconds(120));
  std::string DaemonLog() const;
  absl::Status WaitCaughtUpOnce(absl::Duration timeout);

  // Runs a pgbench workload (script@weight ...) against this test's source database.
  void RunPgbench(const std::vector<std::string>& scripts, int clients, int transactions);
  // Starts pgbench with `args` (options and scripts) against the source database in the
  // background, its output in PgbenchLog(); nullptr (with a test failure) when it cannot start.
  std::unique_ptr<Subprocess> StartPgbench(const std::vector<std::string>& args);
  std::string PgbenchLog() const;
  // The port of walshiftd's status endpoint, from its log (status.listen port 0); -1 when it
  // does not say within 10 s.
  int StatusPort();
  // GET `path` from walshiftd's status endpoint on `port`: the body ("" when nothing answers),
  // and the HTTP status in *code.
  std::string Get(int port, const std::string& path, int* code = nullptr);
  // Starts this test's embedded Kafka broker in `kafka_` with `topics` (default: the lag, state
  // and drift topics).
  void StartKafka(const std::vector<std::string>& topics = {"walshift.lag", "walshift.state", "walshift.drift"});
  // Runs walshiftctl with `args` (up to 5 minutes) and returns what it printed.
  RunResult Walshiftctl(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {});
  // Runs this build's walshiftd with `args` (e.g. --config FILE --check) to its end (up to a
  // minute) and returns what it printed.
  RunResult RunWalshiftd(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {});
  void Source(const std::string& sql);
  void Target(const std::string& sql);
  PgRows SourceRows(const std::string& sql);
  PgRows TargetRows(const std::string& sql);

  static PgCluster* source_cluster_;
  static PgCluster* target_cluster_;
  std::string source_db_, target_db_, pipeline_, dir_;
  // When set, the pipeline's target is the document store in this directory: WaitCaughtUp
  // reads its checkpoint there.
  std::string documents_dir_;
  std::string slot_;  // walshift_<pipeline_> unless the config names another
  std::unique_ptr<Subprocess> daemon_;
  std::unique_ptr<EmbeddedKafka> kafka_;
  // Prepended to walshiftd's command line by StartDaemon (e.g. {"ip", "netns", "exec", NS}).
  std::vector<std::string> daemon_prefix_;
};

}  // namespace walshift::testing
