#include "tests/integration/daemon_fixture.h"

#include <httplib.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "daemon/apply/documents/document_sink.h"
#include "tests/testing/test_paths.h"

namespace walshift::testing {

PgCluster* DaemonTest::source_cluster_ = nullptr;
PgCluster* DaemonTest::target_cluster_ = nullptr;

void DaemonTest::SetUpTestSuite() { StartClusters({}, {}); }

void DaemonTest::StartClusters(PgClusterOptions source, PgClusterOptions target) {
  source.name = "source";
  target.name = "target";
  auto s = PgCluster::Start(std::move(source));
  ASSERT_TRUE(s.ok()) << s.status();
  auto t = PgCluster::Start(std::move(target));
  ASSERT_TRUE(t.ok()) << t.status();
  source_cluster_ = s->release();
  target_cluster_ = t->release();
}

void DaemonTest::TearDownTestSuite() {
  delete source_cluster_;
  delete target_cluster_;
  source_cluster_ = target_cluster_ = nullptr;
}

void DaemonTest::SetUp() {
  ASSERT_NE(source_cluster_, nullptr);
  std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  std::string lower;
  for (char c : name) lower += std::isalnum(static_cast<unsigned char>(c)) ? std::tolower(c) : '_';
  pipeline_ = lower.substr(0, 40);
  source_db_ = "legacy_" + pipeline_;
  target_db_ = "new_" + pipeline_;
  ASSERT_TRUE(source_cluster_->CreateDatabase(source_db_).ok());
  ASSERT_TRUE(target_cluster_->CreateDatabase(target_db_).ok());
  slot_ = "walshift_" + pipeline_;
  dir_ = absl::StrCat(source_cluster_->temp_dir(), "/", pipeline_);
  std::filesystem::create_directories(dir_);
}

void DaemonTest::TearDown() {
  if (daemon_ && daemon_->Running()) daemon_->Kill();
  if (HasFailure()) std::cerr << "---- walshiftd log ----\n" << DaemonLog() << "\n";
  daemon_.reset();
  // Free the slot so the cluster does not keep WAL for a finished test.
  (void)source_cluster_->Exec("postgres",
                              absl::StrCat("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                           "WHERE slot_name = '",
                                           slot_, "' AND NOT active"));
}

void DaemonTest::StartKafka(const std::vector<std::string>& topics) {
  auto k = EmbeddedKafka::Start(1);
  ASSERT_TRUE(k.ok()) << k.status();
  kafka_ = *std::move(k);
  for (const std::string& t : topics) ASSERT_TRUE(kafka_->CreateTopic(t).ok()) << t;
}

std::string DaemonTest::WriteConfig(const std::string& yaml) {
  std::string text = absl::StrReplaceAll(yaml, {{"{SOURCE}", source_cluster_->Dsn(source_db_)},
                                                {"{TARGET}", target_cluster_->Dsn(target_db_)},
                                                {"{PIPELINE}", pipeline_}});
  std::string path = absl::StrCat(dir_, "/walshift.yaml");
  std::ofstream(path) << text;
  return path;
}

absl::Status DaemonTest::StartDaemon(const std::string& config_path, const std::map<std::string, std::string>& env,
                                     const std::string& binary) {
  SubprocessOptions o;
  o.env = env;
  o.argv = daemon_prefix_;
  for (const std::string& a : {binary.empty() ? BinaryPath("walshiftd") : binary, std::string("--config"), config_path})
    o.argv.push_back(a);
  o.stdout_to = Output::File(absl::StrCat(dir_, "/walshiftd.log"), /*append=*/true);
  o.stderr_to = Output::File(absl::StrCat(dir_, "/walshiftd.log"), /*append=*/true);
  auto p = Subprocess::Start(o);
  if (!p.ok()) return p.status();
  daemon_ = std::move(*p);
  return absl::OkStatus();
}

ExitStatus DaemonTest::StopDaemon(absl::Duration timeout) {
  EXPECT_TRUE(daemon_->Signal(SIGTERM).ok());
  auto st = daemon_->Wait(timeout);
  if (!st.ok()) {
    ADD_FAILURE() << "walshiftd did not stop within " << timeout;
    return daemon_->Kill();
  }
  return *st;
}

std::string DaemonTest::DaemonLog() const {
  std::ifstream in(absl::StrCat(dir_, "/walshiftd.log"));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string all = ss.str();
  return all.size() > 20000 ? all.substr(all.size() - 20000) : all;
}

absl::Status DaemonTest::WaitCaughtUp(absl::Duration timeout) {
  absl::Status st = WaitCaughtUpOnce(timeout);
  if (!st.ok()) std::cerr << "WaitCaughtUp: " << st << "\n";
  return st;
}

absl::Status DaemonTest::WaitCaughtUpOnce(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  // Transactions committed before the slot exists are never streamed: wait for the daemon's
  // replication connection first.
  std::string active =
      absl::StrCat("SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = '", slot_, "' AND active");
  for (;;) {
    auto v = source_cluster_->QueryValue(source_db_, active);
    if (v.ok() && *v == "1") break;
    if (daemon_ && !daemon_->Running()) {
      return absl::InternalError(absl::StrCat("walshiftd exited before streaming:\n", DaemonLog()));
    }
    if (absl::Now() > deadline) return absl::DeadlineExceededError("walshiftd never started streaming");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // Everything committed so far ends at or below `fence_lsn`; the fence transaction after it
  // moves the checkpoint past it.
  auto fence_lsn = source_cluster_->QueryValue(source_db_, "SELECT pg_current_wal_insert_lsn()::text");
  if (!fence_lsn.ok()) return fence_lsn.status();
  absl::Status st = source_cluster_->Exec(source_db_, "SELECT pg_logical_emit_message(true, 'walshift.fence', '')");
  if (!st.ok()) return st;
  std::string query =
      absl::StrCat("SELECT coalesce((SELECT commit_lsn >= '", *fence_lsn,
                   "'::pg_lsn FROM walshift.checkpoint WHERE pipeline = '", pipeline_, "'), false)::text");
  std::optional<Lsn> fence = ParseLsn(*fence_lsn);
  while (absl::Now() < deadline) {
    if (!documents_dir_.empty()) {
      auto at = documents::DocumentSink::ReadCheckpoint(documents_dir_, pipeline_);
      if (at.ok() && fence && *at != kInvalidLsn && *at >= *fence) return absl::OkStatus();
    } else {
      auto v = target_cluster_->QueryValue(target_db_, query);
      if (v.ok() && *v == "true") return absl::OkStatus();
    }
    if (daemon_ && !daemon_->Running()) {
      return absl::InternalError(absl::StrCat("walshiftd exited while waiting to catch up:\n", DaemonLog()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat("target did not catch up to ", *fence_lsn));
}

std::unique_ptr<Subprocess> DaemonTest::StartPgbench(const std::vector<std::string>& args) {
  auto bin = PgCluster::Binary("pgbench");
  EXPECT_TRUE(bin.ok()) << bin.status();
  if (!bin.ok()) return nullptr;
  SubprocessOptions o;
  o.argv = {*bin, "-n"};
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  o.argv.push_back(source_cluster_->Dsn(source_db_));
  o.stdout_to = Output::File(dir_ + "/pgbench.log");
  o.stderr_to = Output::File(dir_ + "/pgbench.log", true);
  auto p = Subprocess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : nullptr;
}

std::string DaemonTest::PgbenchLog() const { return ReadFile(dir_ + "/pgbench.log").value_or(""); }

void DaemonTest::RunPgbench(const std::vector<std::string>& scripts, int clients, int transactions) {
  auto bin = PgCluster::Binary("pgbench");
  ASSERT_TRUE(bin.ok()) << bin.status();
  SubprocessOptions o;
  o.argv = {*bin, "-n", "-c", std::to_string(clients), "-t", std::to_string(transactions)};
  for (const auto& s : scripts) {
    o.argv.push_back("-f");
    o.argv.push_back(s);
  }
  o.argv.push_back(source_cluster_->Dsn(source_db_));
  auto r = Subprocess::Run(o, absl::Minutes(10));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->status.success()) << r->stdout_text << r->stderr_text;
}

void DaemonTest::Source(const std::string& sql) {
  absl::Status st = source_cluster_->Exec(source_db_, sql);
  ASSERT_TRUE(st.ok()) << st << "\n" << sql;
}
void DaemonTest::Target(const std::string& sql) {
  absl::Status st = target_cluster_->Exec(target_db_, sql);
  ASSERT_TRUE(st.ok()) << st << "\n" << sql;
}
PgRows DaemonTest::SourceRows(const std::string& sql) {
  auto r = source_cluster_->Query(source_db_, sql);
  EXPECT_TRUE(r.ok()) << r.status() << "\n" << sql;
  return r.ok() ? *r : PgRows{};
}
PgRows DaemonTest::TargetRows(const std::string& sql) {
  auto r = target_cluster_->Query(target_db_, sql);
  EXPECT_TRUE(r.ok()) << r.status() << "\n" << sql;
  return r.ok() ? *r : PgRows{};
}

int StatusPortFromLog(const std::function<std::string()>& read_log) {
  for (int i = 0; i < 100; ++i) {
    std::smatch m;
    std::string log = read_log();
    if (std::regex_search(log, m, std::regex("status: http://127\\.0\\.0\\.1:([0-9]+)/status"))) {
      return std::stoi(m[1]);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return -1;
}

int DaemonTest::StatusPort() {
  return StatusPortFromLog([this] { return DaemonLog(); });
}

std::string DaemonTest::Get(int port, const std::string& path, int* code) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(2);
  auto r = c.Get(path.c_str());
  if (!r) return "";
  if (code != nullptr) *code = r->status;
  return r->body;
}

namespace {
// One of this build's binaries with `args`, to its end.
RunResult RunBinary(const std::string& name, const std::vector<std::string>& args,
                    const std::map<std::string, std::string>& env, absl::Duration timeout) {
  SubprocessOptions o;
  o.argv = {BinaryPath(name)};
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  o.env = env;
  auto r = Subprocess::Run(o, timeout);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : RunResult{};
}
}  // namespace

RunResult DaemonTest::RunWalshiftd(const std::vector<std::string>& args,
                                   const std::map<std::string, std::string>& env) {
  return RunBinary("walshiftd", args, env, absl::Minutes(1));
}

RunResult DaemonTest::Walshiftctl(const std::vector<std::string>& args,
                                  const std::map<std::string, std::string>& env) {
  return RunBinary("walshiftctl", args, env, absl::Minutes(5));
}

}  // namespace walshift::testing
