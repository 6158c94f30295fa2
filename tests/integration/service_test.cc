// walshiftd as a systemd Type=notify service: the datagrams it sends to $NOTIFY_SOCKET (a socket
// the test made, read as systemd would), watchdog pings only while its pipeline loop is alive,
// SIGHUP reloads instead of killing it, and the unit file passes systemd-analyze verify.

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/test_paths.h"

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class ServiceTest : public DaemonTest {
 protected:
  void TearDown() override {
    if (fd_ >= 0) close(fd_);
    DaemonTest::TearDown();
  }
  // Binds the notification socket systemd would hold.
  std::string Listen() {
    std::string path = absl::StrCat(dir_, "/notify.sock");
    unlink(path.c_str());
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr;
    std::memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
    chmod(path.c_str(), 0777);  // walshiftd may run as another user than the test
    return path;
  }
  // The datagrams received within `timeout`, or until one contains `until`.
  std::vector<std::string> Read(absl::Duration timeout, const std::string& until = "") {
    std::vector<std::string> got;
    absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(end - absl::Now())) + 1) <= 0) continue;
      char buf[4096];
      ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) continue;
      got.emplace_back(buf, n);
      if (!until.empty() && absl::StrContains(got.back(), until)) break;
    }
    return got;
  }
  static bool Any(const std::vector<std::string>& got, const std::string& text) {
    for (const auto& g : got)
      if (absl::StrContains(g, text)) return true;
    return false;
  }
  int fd_ = -1;
};

TEST_F(ServiceTest, NotifiesReadyStatusAndWatchdogReloadsOnHangupAndStopsPingingWhenTheLoopIsStuck) {
  Source("CREATE TABLE items (id int PRIMARY KEY, v text)");
  Target("CREATE TABLE items (id int PRIMARY KEY, v text)");
  std::string config = WriteConfig(kOneTarget + "log: {level: info}\nmappings: [{source: items}]\n");
  std::string socket = Listen();
  std::map<std::string, std::string> env = {{"NOTIFY_SOCKET", socket}, {"WATCHDOG_USEC", "3000000"}};
  ASSERT_TRUE(StartDaemon(config, env).ok());
  std::vector<std::string> got = Read(absl::Seconds(60), "READY=1");
  ASSERT_TRUE(Any(got, "READY=1")) << DaemonLog();
  EXPECT_TRUE(Any(got, "STATUS=STREAMING; main lag ")) << DaemonLog();  // with READY=1, then when it changes
  EXPECT_TRUE(Any(Read(absl::Seconds(4)), "WATCHDOG=1"));

  // SIGHUP reloads the log level; walshiftd goes on.
  config = WriteConfig(kOneTarget + "log: {level: debug}\nmappings: [{source: items}]\n");
  ASSERT_TRUE(daemon_->Signal(SIGHUP).ok());
  got = Read(absl::Seconds(10), "READY=1");
  EXPECT_TRUE(Any(got, "RELOADING=1\nMONOTONIC_USEC=")) << DaemonLog();
  Source("INSERT INTO items VALUES (1, 'a')");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_TRUE(daemon_->Running());
  std::string log = DaemonLog();
  size_t reloaded = log.find("SIGHUP: log level debug");
  ASSERT_NE(reloaded, std::string::npos) << log;
  // Debug lines appear from then on (none before: the level was info).
  EXPECT_EQ(log.substr(0, reloaded).find(" debug "), std::string::npos);
  EXPECT_NE(log.find(" debug ", reloaded), std::string::npos) << log.substr(reloaded);

  // SIGTERM: STOPPING=1, and a clean exit.
  ASSERT_TRUE(daemon_->Signal(SIGTERM).ok());
  got = Read(absl::Seconds(10), "STOPPING=1");
  EXPECT_TRUE(Any(got, "STOPPING=1"));
  auto st = daemon_->Wait(absl::Seconds(20));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->exit_code(), 0) << DaemonLog();

  // A wedged pipeline loop: the pings stop (systemd would restart it), while /healthz says why.
  ASSERT_TRUE(StartDaemon(config, {{"NOTIFY_SOCKET", socket},
                                   {"WATCHDOG_USEC", "3000000"},
                                   {"WALSHIFT_STALL_AT", "pipeline.after_source_commit:1"}})
                  .ok());
  ASSERT_TRUE(Any(Read(absl::Seconds(60), "READY=1"), "READY=1")) << DaemonLog();
  Source("INSERT INTO items VALUES (2, 'b')");
  for (absl::Time end = absl::Now() + absl::Seconds(30);
       absl::Now() < end && !absl::StrContains(DaemonLog(), "stall point reached");)
    absl::SleepFor(absl::Milliseconds(50));
  ASSERT_THAT(DaemonLog(), HasSubstr("stall point reached"));
  Read(absl::Milliseconds(3500));  // pings sent before the loop's last tick aged
  EXPECT_FALSE(Any(Read(absl::Seconds(3)), "WATCHDOG=1"));
  ASSERT_TRUE(daemon_->Signal(SIGKILL).ok());
  (void)daemon_->Wait(absl::Seconds(10));
}

// status.token_file: /status and /metrics want the bearer token, the probes do not; walshiftctl
// sends it; the token appears nowhere in the log.
TEST_F(ServiceTest, AStatusTokenGuardsStatusAndMetricsButNotTheProbes) {
  Source("CREATE TABLE items (id int PRIMARY KEY, v text)");
  Target("CREATE TABLE items (id int PRIMARY KEY, v text)");
  const std::string secret = "s3cr3t-token-value";
  std::string token = absl::StrCat(dir_, "/status.token");
  std::ofstream(token) << secret << "\n";
  chmod(token.c_str(), 0644);  // walshiftd may run as another user than the test
  std::string config = WriteConfig(absl::StrReplaceAll(kOneTarget, {{"status: {listen: \"127.0.0.1:0\"}",
                                                                       absl::StrCat("status: {listen: \"127.0.0.1:0\", "
                                                                                    "token_file: \"", token, "\"}")}}) +
                                   "mappings: [{source: items}]\n");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  int port = StatusPort();
  int code = 0;
  Get(port, "/status", &code);
  EXPECT_EQ(code, 401);
  Get(port, "/metrics", &code);
  EXPECT_EQ(code, 401);
  Get(port, "/healthz", &code);
  EXPECT_EQ(code, 200);
  Get(port, "/readyz", &code);
  EXPECT_EQ(code, 200);
  std::string url = absl::StrCat("127.0.0.1:", port);
  RunResult refused = Walshiftctl({"status", "--url", url});
  EXPECT_EQ(refused.status.exit_code(), 2);
  EXPECT_THAT(refused.stderr_text, HasSubstr("answered HTTP 401 (it wants a bearer token"));
  RunResult ok = Walshiftctl({"status", "--url", url, "--token-file", token, "--json"});
  EXPECT_EQ(ok.status.exit_code(), 0) << ok.stdout_text << ok.stderr_text;
  EXPECT_THAT(ok.stdout_text, HasSubstr("\"state\":\"STREAMING\""));
  EXPECT_TRUE(StopDaemon().success());
  EXPECT_THAT(DaemonLog(), Not(HasSubstr(secret)));
}

TEST_F(ServiceTest, TheUnitFilePassesSystemdAnalyzeVerify) {
  if (access("/usr/bin/systemd-analyze", X_OK) != 0) GTEST_SKIP() << "systemd-analyze is not installed";
  std::string unit = SourcePath("deploy/systemd/walshiftd.service");
  // The binary the unit names must exist for verify: point it at the build's.
  std::string text;
  {
    std::ifstream in(unit);
    ASSERT_TRUE(in.good()) << unit;
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::string copy = absl::StrCat(dir_, "/walshiftd.service");
  std::ofstream(copy) << absl::StrReplaceAll(text, {{"/usr/local/bin/walshiftd", BinaryPath("walshiftd")}});
  SubprocessOptions o;
  o.argv = {"/usr/bin/systemd-analyze", "verify", "--man=no", copy};
  auto r = Subprocess::Run(o, absl::Seconds(60));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 0) << r->stdout_text << r->stderr_text;
  EXPECT_EQ(r->stderr_text, "") << "systemd-analyze verify warns";
}

}  // namespace
}  // namespace walshift::testing
