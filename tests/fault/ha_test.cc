// Active/standby (ha:): two walshiftd run the same pipeline under a pgbench load. One leads, the
// other stands by, and each says so in /status and /metrics. The leader killed with SIGKILL: the
// standby leads within 30 s and the target ends exact. The leader paused with SIGSTOP: the
// standby takes over once the lease ran out; the paused one, resumed, commits nothing (a
// counting trigger on the target records the epoch of every write's session, and the target's
// commit timestamps show none of the replaced epoch after the takeover) and stands by.

#include <signal.h>

#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "tests/fault/fault_fixture.h"
#include "tests/testing/test_paths.h"

namespace walshift::testing {
namespace {

constexpr char kHa[] = R"(
apply: {group_max_changes: 500, group_max_ms: 100, reconnect_initial_ms: 100, reconnect_max_ms: 1000}
monitor: {heartbeat_interval_s: 1}
ha: {enabled: true, node: NODE, lease_s: 4, poll_ms: 200}
)";

// One walshiftd of the pair, with its own log.
struct Node {
  std::string name;
  std::string config;
  std::string log_path;
  std::unique_ptr<Subprocess> process;
  std::string Log() const {
    std::ifstream in(log_path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  int Port() const {
    return StatusPortFromLog([this] { return Log(); });
  }
  bool WaitForLog(const std::string& needle, size_t from, absl::Duration timeout) const {
    for (absl::Time until = absl::Now() + timeout; absl::Now() < until;) {
      std::string log = Log();
      if (log.size() > from && log.find(needle, from) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
};

class HaTest : public FaultTest {
 protected:
  void TearDown() override {
    for (Node* n : {&a_, &b_}) {
      if (n->process && n->process->Running()) {
        (void)n->process->Signal(SIGCONT);
        n->process->Kill();
      }
      if (HasFailure()) std::cerr << "---- walshiftd " << n->name << " log ----\n" << n->Log() << "\n";
    }
    FaultTest::TearDown();
  }

  void Start(Node* n, const std::string& name) {
    n->name = name;
    n->log_path = absl::StrCat(dir_, "/walshiftd-", name, ".log");
    std::string config = EventsConfig(absl::StrReplaceAll(kHa, {{"NODE", name}}));
    n->config = config;
    SubprocessOptions o;
    o.argv = daemon_prefix_;
    for (const std::string& a : {BinaryPath("walshiftd"), std::string("--config"), config}) o.argv.push_back(a);
    o.stdout_to = Output::File(n->log_path, /*append=*/true);
    o.stderr_to = Output::File(n->log_path, /*append=*/true);
    auto p = Subprocess::Start(o);
    ASSERT_TRUE(p.ok()) << p.status();
    n->process = std::move(*p);
  }

  // The node's role and state in /status ("leader STREAMING", "standby STANDBY").
  std::string Role(const Node& n) {
    std::string body = Get(n.Port(), "/status");
    std::smatch role, state;
    std::regex_search(body, role, std::regex("\"role\":\"([a-z]+)\""));
    std::regex_search(body, state, std::regex("\"state\":\"([A-Z_]+)\""));
    return absl::StrCat(role.size() > 1 ? role[1].str() : "?", " ", state.size() > 1 ? state[1].str() : "?");
  }
  std::string LeaderMetric(const Node& n) {
    std::smatch m;
    std::string body = Get(n.Port(), "/metrics");
    return std::regex_search(body, m, std::regex("\nwalshift_leader\\{[^}]*\\} ([0-9]+)")) ? m[1].str() : "?";
  }
  bool WaitForRole(const Node& n, const std::string& role, absl::Duration timeout) {
    for (absl::Time until = absl::Now() + timeout; absl::Now() < until;) {
      if (Role(n) == role) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  // Both started, `a` leading and streaming, `b` standing by.
  void StartPair() {
    CreateTables();
    Start(&a_, "a");
    ASSERT_TRUE(a_.WaitForLog("walshiftd a is the leader", 0, absl::Seconds(60))) << a_.Log();
    ASSERT_TRUE(WaitForRole(a_, "leader STREAMING", absl::Seconds(60))) << a_.Log();
    Start(&b_, "b");
    ASSERT_TRUE(b_.WaitForLog("walshiftd b stands by", 0, absl::Seconds(60))) << b_.Log();
    EXPECT_TRUE(WaitForRole(b_, "standby STANDBY", absl::Seconds(10))) << Role(b_);
    EXPECT_EQ(LeaderMetric(a_), "1");
    EXPECT_EQ(LeaderMetric(b_), "0");
    int ready = 0;
    EXPECT_EQ(Get(b_.Port(), "/readyz", &ready), "STANDBY\n");
    EXPECT_EQ(ready, 200);  // a standby is ready: it takes over on its own
    std::string status = Get(b_.Port(), "/status");
    EXPECT_NE(status.find("\"leader\":\"a\""), std::string::npos) << status;
    // walshiftctl status, from each endpoint and from the databases.
    RunResult standby = Walshiftctl({"status", "--url", absl::StrCat("http://127.0.0.1:", b_.Port(), "/status")});
    EXPECT_NE(standby.stdout_text.find("walshiftd b stands by (epoch 1); the leader is a"), std::string::npos)
        << standby.stdout_text;
    RunResult leader = Walshiftctl({"status", "--url", absl::StrCat("http://127.0.0.1:", a_.Port(), "/status")});
    EXPECT_NE(leader.stdout_text.find("walshiftd a LEADS (epoch 1 since "), std::string::npos) << leader.stdout_text;
    RunResult databases = Walshiftctl({"status", "--config", b_.config});
    EXPECT_NE(databases.stdout_text.find("leader   walshiftd a in main (epoch 1 since "), std::string::npos)
        << databases.stdout_text;
  }
  // The leader applied at least `rows` writes of the load (the target's table counts them).
  bool WaitForApplied(int rows) {
    for (absl::Time until = absl::Now() + absl::Seconds(30); absl::Now() < until;) {
      auto v = target_cluster_->QueryValue(target_db_, "SELECT count(*)::text FROM events_v2");
      int n = 0;
      if (v.ok() && absl::SimpleAtoi(*v, &n) && n >= rows) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  // Hands the fixture's daemon slot to `n` (WaitCaughtUp, StopDaemon, the log on failure).
  void Adopt(Node* n) { daemon_ = std::move(n->process); }

  Node a_, b_;
};

TEST_F(HaTest, KilledLeaderUnderLoadTheStandbyLeadsWithin30sAndTheTargetEndsExact) {
  StartPair();
  auto workload = StartPgbench(Workload(4, absl::Seconds(14)));
  ASSERT_NE(workload, nullptr);
  ASSERT_TRUE(WaitForApplied(500)) << a_.Log();
  ASSERT_TRUE(WaitForRole(a_, "leader STREAMING", absl::Seconds(5)));
  size_t from = b_.Log().size();
  absl::Time killed = absl::Now();
  a_.process->Kill();  // SIGKILL
  ASSERT_TRUE(b_.WaitForLog("walshiftd b is the leader", from, absl::Seconds(30))) << b_.Log();
  ASSERT_TRUE(WaitForRole(b_, "leader STREAMING", absl::Seconds(30) - (absl::Now() - killed))) << b_.Log();
  absl::Duration took = absl::Now() - killed;
  EXPECT_LT(took, absl::Seconds(30));
  EXPECT_EQ(LeaderMetric(b_), "1");
  auto done = workload->Wait(absl::Seconds(120));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  Adopt(&b_);
  ASSERT_TRUE(WaitCaughtUp().ok()) << b_.Log();
  ExpectExact();
  EXPECT_EQ(TargetRows("SELECT epoch::text, node FROM walshift.leader WHERE pipeline = '" + pipeline_ + "'"),
            (PgRows{{"2", "b"}}));
  std::cout << "leader killed under load: standby streaming as leader after " << absl::ToDoubleSeconds(took)
            << " s\n";
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(HaTest, PausedLeaderResumedAfterATakeoverCommitsNothingAndStandsBy) {
  // Commit timestamps on the target tell when each write committed.
  Target("ALTER SYSTEM SET track_commit_timestamp = on");
  ASSERT_TRUE(target_cluster_->Stop(PgCluster::StopMode::kFast).ok());
  ASSERT_TRUE(target_cluster_->Restart().ok()) << target_cluster_->LogTail();
  ASSERT_EQ(TargetRows("SHOW track_commit_timestamp"), (PgRows{{"on"}}));
  // Every write to the target table records its transaction and its session's epoch.
  Target(R"sql(
CREATE TABLE writes (xid xid8 NOT NULL, epoch text, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO writes (xid, epoch) VALUES (pg_current_xact_id(), current_setting('walshift.epoch', true));
  RETURN NULL;
END $$;
)sql");
  StartPair();
  Target(
      "CREATE TRIGGER log_write AFTER INSERT OR UPDATE OR DELETE ON events_v2 FOR EACH ROW EXECUTE FUNCTION "
      "log_write()");
  auto workload = StartPgbench(Workload(4, absl::Seconds(20), 400));
  ASSERT_NE(workload, nullptr);
  ASSERT_TRUE(WaitForApplied(300)) << a_.Log();
  // Paused, if it can be caught so, while a group is open on the target.
  const std::string open_group = absl::StrCat(
      "SELECT count(*)::text FROM pg_stat_activity WHERE datname = '", target_db_,
      "' AND application_name = 'walshiftd' AND xact_start IS NOT NULL AND state <> 'idle'");
  bool mid_group = false;
  for (absl::Time until = absl::Now() + absl::Seconds(5); !mid_group && absl::Now() < until;) {
    auto v = target_cluster_->QueryValue(target_db_, open_group);
    mid_group = v.ok() && *v != "0";
    if (!mid_group) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(a_.process->Signal(SIGSTOP).ok());
  absl::Time paused = absl::Now();
  size_t from_b = b_.Log().size();
  ASSERT_TRUE(b_.WaitForLog("walshiftd b is the leader", from_b, absl::Seconds(30))) << b_.Log();
  absl::Duration took = absl::Now() - paused;
  EXPECT_TRUE(b_.Log().find("has not renewed its lease", from_b) != std::string::npos) << b_.Log();
  ASSERT_TRUE(WaitForRole(b_, "leader STREAMING", absl::Seconds(30))) << b_.Log();
  auto takeover = target_cluster_->QueryValue(target_db_, "SELECT clock_timestamp()::text");
  ASSERT_TRUE(takeover.ok());
  // Resumed after the takeover: it finds itself replaced and stands by.
  size_t from_a = a_.Log().size();
  ASSERT_TRUE(a_.process->Signal(SIGCONT).ok());
  ASSERT_TRUE(a_.WaitForLog("is no longer the leader", from_a, absl::Seconds(30))) << a_.Log();
  ASSERT_TRUE(WaitForRole(a_, "standby STANDBY", absl::Seconds(30))) << a_.Log();
  EXPECT_EQ(LeaderMetric(a_), "0");
  EXPECT_TRUE(a_.process->Running());
  auto done = workload->Wait(absl::Seconds(120));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  // Both roles hold to the end.
  EXPECT_EQ(Role(a_), "standby STANDBY");
  EXPECT_EQ(Role(b_), "leader STREAMING");
  // No write of epoch 1 (a) committed after the takeover; a wrote before the pause, b after.
  EXPECT_EQ(TargetRows(absl::StrCat("SELECT count(*)::text FROM writes WHERE epoch = '1' AND "
                                    "pg_xact_commit_timestamp(xid::text::xid) > '",
                                    *takeover, "'")),
            (PgRows{{"0"}}));
  EXPECT_NE(TargetRows("SELECT count(*)::text FROM writes WHERE epoch = '1'"), (PgRows{{"0"}}));
  EXPECT_NE(TargetRows("SELECT count(*)::text FROM writes WHERE epoch = '2'"), (PgRows{{"0"}}));
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM writes WHERE epoch IS DISTINCT FROM '1' AND "
                       "epoch IS DISTINCT FROM '2'"),
            (PgRows{{"0"}}));
  Node standby = std::move(a_);
  Adopt(&b_);
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  ExpectExact();
  std::cout << "leader paused" << (mid_group ? " with a group open" : "") << ": standby took over after "
            << absl::ToDoubleSeconds(took) << " s (lease 4 s); the resumed one committed nothing and stands by\n";
  EXPECT_TRUE(StopDaemon().success());
  a_ = std::move(standby);
  (void)a_.process->Signal(SIGTERM);
  auto st = a_.process->Wait(absl::Seconds(10));
  EXPECT_TRUE(st.ok() && st->success()) << a_.Log();
}

}  // namespace
}  // namespace walshift::testing
