// Network faults between walshiftd and each database, separately: a blackhole (every packet
// dropped silently, in both directions) lasting longer than the keepalive settings, 5% packet
// loss, and 50 ms of latency each way. walshiftd runs in a network namespace this test makes
// (`ip netns`), joined to the host by one veth pair per database; the clusters listen also on
// the host side of their pair. Faults are `tc netem` on both ends of a pair; where the kernel
// has no sch_netem, the blackhole and the loss are nftables rules in the namespace (a silent
// drop too), and the latency is a DelayRelay (tests/testing/delay_relay.h) that listens on the
// host side of the pair and that walshiftd connects through (nftables cannot delay packets).
// The whole suite skips, saying why, where namespaces cannot be made (not root, no
// CAP_NET_ADMIN). Each case ends with the target equal to the mapped source, both directions.

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <iostream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "daemon/core/status_macros.h"
#include "tests/fault/fault_fixture.h"
#include "tests/testing/delay_relay.h"

namespace walshift::testing {
namespace {

enum class Peer { kSource = 0, kTarget = 1 };
const char* PeerName(Peer p) { return p == Peer::kSource ? "source" : "target"; }
void PrintTo(Peer p, std::ostream* os) { *os << PeerName(p); }

// A network namespace with one veth pair per database, removed by the destructor (also when
// the test failed). Namespaces left by a test process that was killed are removed by the next
// one (their names carry the pid).
class NetNamespace {
 public:
  // kFailedPrecondition (the reason to skip) when this machine cannot make one.
  static absl::StatusOr<std::unique_ptr<NetNamespace>> Create() {
    if (geteuid() != 0) return absl::FailedPreconditionError("not root: network namespaces need CAP_NET_ADMIN");
    std::unique_ptr<NetNamespace> ns(new NetNamespace());
    for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
      if (access(p, X_OK) == 0) {
        ns->ip_ = p;
        break;
      }
    }
    if (ns->ip_.empty()) return absl::FailedPreconditionError("iproute2's ip is not installed");
    RemoveStale(ns->ip_);
    pid_t pid = getpid();
    ns->name_ = absl::StrCat("wsnet", pid);
    // 198.18.0.0/15, the range set aside for benchmarking networks (RFC 2544): never a real
    // route of the machine the tests run on.
    int b = 18 + pid % 2, c = (pid / 2) % 256;
    for (int i = 0; i < 2; ++i) {
      ns->host_if_[i] = absl::StrCat("wsv", pid, "h", i);
      ns->ns_if_[i] = absl::StrCat("wsv", pid, "n", i);
      ns->host_addr_[i] = absl::StrCat("198.", b, ".", c, ".", 4 * i + 1);
      ns->ns_addr_[i] = absl::StrCat("198.", b, ".", c, ".", 4 * i + 2);
    }
    ns->subnet_ = absl::StrCat("198.", b, ".", c, ".0/29");
    if (absl::Status st = ns->Host({"netns", "add", ns->name_}); !st.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("cannot create a network namespace: ", st.message()));
    }
    ns->created_ = true;
    for (int i = 0; i < 2; ++i) {
      for (auto st : {ns->Host({"link", "add", ns->host_if_[i], "type", "veth", "peer", "name", ns->ns_if_[i]}),
                      ns->Host({"link", "set", ns->ns_if_[i], "netns", ns->name_}),
                      ns->Host({"addr", "add", ns->host_addr_[i] + "/30", "dev", ns->host_if_[i]}),
                      ns->Host({"link", "set", ns->host_if_[i], "up"}),
                      ns->Inside({ns->ip_, "addr", "add", ns->ns_addr_[i] + "/30", "dev", ns->ns_if_[i]}),
                      ns->Inside({ns->ip_, "link", "set", ns->ns_if_[i], "up"})}) {
        if (!st.ok()) return absl::FailedPreconditionError(absl::StrCat("cannot set up a veth pair: ", st.message()));
      }
    }
    if (absl::Status st = ns->Inside({ns->ip_, "link", "set", "lo", "up"}); !st.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("cannot set up lo in the namespace: ", st.message()));
    }
    // Which tool makes the faults.
    ns->netem_ = ns->Inside({"tc", "qdisc", "add", "dev", ns->ns_if_[0], "root", "netem", "delay", "0ms"}).ok();
    if (ns->netem_) {
      (void)ns->Inside({"tc", "qdisc", "del", "dev", ns->ns_if_[0], "root"});
    } else {
      absl::Status st = ns->Inside({"nft", "add", "table", "inet", "walshift_fault"});
      for (int i = 0; st.ok() && i < 2; ++i) {
        for (const char* hook : {"input", "output"}) {
          st = ns->Inside({"nft", "add", "chain", "inet", "walshift_fault", absl::StrCat(hook, i), "{", "type",
                           "filter", "hook", hook, "priority", "0", ";", "policy", "accept", ";", "}"});
          if (!st.ok()) break;
        }
      }
      if (!st.ok()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "neither tc netem (no sch_netem in this kernel) nor nftables can drop packets: ", st.message()));
      }
    }
    return ns;
  }

  ~NetNamespace() {
    if (created_) (void)Host({"netns", "del", name_});  // takes the veth pairs with it
  }

  const std::string& name() const { return name_; }
  const std::string& ip() const { return ip_; }
  const std::string& host_address(Peer p) const { return host_addr_[static_cast<int>(p)]; }
  const std::string& subnet() const { return subnet_; }
  bool netem() const { return netem_; }

  // Every packet between walshiftd and `p` dropped, in both directions, without a word.
  absl::Status Blackhole(Peer p) { return netem_ ? Netem(p, {"loss", "100%"}) : Drop(p, {}); }
  absl::Status Loss(Peer p, int percent) {
    return netem_ ? Netem(p, {"loss", absl::StrCat(percent, "%")})
                  : Drop(p, {"numgen", "random", "mod", "100", "<", absl::StrCat(percent)});
  }
  // Each way; kFailedPrecondition without netem (the test then relays, see DelayRelay).
  absl::Status Delay(Peer p, absl::Duration d) {
    if (!netem_) return absl::FailedPreconditionError("tc netem is not available (no sch_netem in this kernel)");
    return Netem(p, {"delay", absl::StrCat(absl::ToInt64Milliseconds(d), "ms")});
  }
  // Packets the fault dropped so far (both directions), from tc's or nftables' counters; -1
  // when they cannot be read.
  int64_t Dropped(Peer p) const {
    int i = static_cast<int>(p);
    int64_t total = 0;
    auto add = [&](const std::string& text, const std::string& word) {
      for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) {
        int64_t n = 0;
        absl::string_view rest = absl::string_view(text).substr(at + word.size());
        if (absl::SimpleAtoi(rest.substr(0, rest.find_first_of(" ,)\n")), &n)) total += n;
      }
    };
    std::string out;
    if (netem_) {
      if (!Run({"tc", "-s", "qdisc", "show", "dev", host_if_[i]}, &out).ok()) return -1;
      add(out, "dropped ");
      if (!Inside({"tc", "-s", "qdisc", "show", "dev", ns_if_[i]}, &out).ok()) return -1;
      add(out, "dropped ");
      return total;
    }
    for (const char* hook : {"input", "output"}) {
      if (!Inside({"nft", "list", "chain", "inet", "walshift_fault", absl::StrCat(hook, i)}, &out).ok()) return -1;
      add(out, "packets ");
    }
    return total;
  }

  absl::Status Clear(Peer p) {
    int i = static_cast<int>(p);
    if (netem_) {
      (void)Run({"tc", "qdisc", "del", "dev", host_if_[i], "root"});
      (void)Inside({"tc", "qdisc", "del", "dev", ns_if_[i], "root"});
      return absl::OkStatus();
    }
    for (const char* hook : {"input", "output"}) {
      RETURN_IF_ERROR(Inside({"nft", "flush", "chain", "inet", "walshift_fault", absl::StrCat(hook, i)}));
    }
    return absl::OkStatus();
  }

 private:
  NetNamespace() = default;

  // Runs a command; its stdout into `out` when given.
  static absl::Status Run(std::vector<std::string> argv, std::string* out = nullptr) {
    SubprocessOptions o;
    o.argv = std::move(argv);
    std::string what = absl::StrJoin(o.argv, " ");
    auto r = Subprocess::Run(std::move(o), absl::Seconds(30));
    if (!r.ok()) return r.status();
    if (!r->status.success()) {
      return absl::InternalError(absl::StrCat(what, ": ", r->status.ToString(), ": ", r->stderr_text));
    }
    if (out != nullptr) *out = r->stdout_text;
    return absl::OkStatus();
  }
  absl::Status Host(std::vector<std::string> args) const {
    args.insert(args.begin(), ip_);
    return Run(std::move(args));
  }
  absl::Status Inside(std::vector<std::string> argv, std::string* out = nullptr) const {
    argv.insert(argv.begin(), {ip_, "netns", "exec", name_});
    return Run(std::move(argv), out);
  }

  // Namespaces of test processes that no longer exist.
  static void RemoveStale(const std::string& ip) {
    SubprocessOptions o;
    o.argv = {ip, "netns", "list"};
    auto r = Subprocess::Run(std::move(o), absl::Seconds(30));
    if (!r.ok()) return;
    for (absl::string_view line : absl::StrSplit(r->stdout_text, '\n')) {
      absl::string_view name = line.substr(0, line.find(' '));
      int pid = 0;
      if (!absl::ConsumePrefix(&name, "wsnet") || !absl::SimpleAtoi(name, &pid)) continue;
      if (pid <= 0 || kill(pid, 0) == 0 || errno != ESRCH) continue;
      (void)Run({ip, "netns", "del", absl::StrCat("wsnet", pid)});
    }
  }

  absl::Status Netem(Peer p, const std::vector<std::string>& spec) {
    int i = static_cast<int>(p);
    std::vector<std::string> host = {"tc", "qdisc", "replace", "dev", host_if_[i], "root", "netem"};
    std::vector<std::string> inside = {"tc", "qdisc", "replace", "dev", ns_if_[i], "root", "netem"};
    host.insert(host.end(), spec.begin(), spec.end());
    inside.insert(inside.end(), spec.begin(), spec.end());
    RETURN_IF_ERROR(Run(host));
    return Inside(inside);
  }

  absl::Status Drop(Peer p, const std::vector<std::string>& match) {
    int i = static_cast<int>(p);
    for (const char* hook : {"input", "output"}) {
      std::vector<std::string> rule = {"nft",
                                       "add",
                                       "rule",
                                       "inet",
                                       "walshift_fault",
                                       absl::StrCat(hook, i),
                                       absl::string_view(hook) == "input" ? "iifname" : "oifname",
                                       ns_if_[i]};
      rule.insert(rule.end(), match.begin(), match.end());
      rule.push_back("counter");
      rule.push_back("drop");
      RETURN_IF_ERROR(Inside(rule));
    }
    return absl::OkStatus();
  }

  std::string ip_, name_, subnet_;
  std::string host_if_[2], ns_if_[2], host_addr_[2], ns_addr_[2];
  bool created_ = false;
  bool netem_ = false;
};

// Short timeouts so that a blackhole is noticed within seconds: keepalives after 2 s of
// silence, every second, 3 of them; 5 s for unacknowledged data; 6 s without a message from
// the walsender.
constexpr char kQuickDetection[] = R"(
apply: {group_max_changes: 500, group_max_ms: 100, reconnect_initial_ms: 200, reconnect_max_ms: 2000}
monitor: {heartbeat_interval_s: 1}
network: {connect_timeout_s: 3, keepalives_idle_s: 2, keepalives_interval_s: 1, keepalives_count: 3,
          tcp_user_timeout_ms: 5000}
)";

class NetworkFaultTest : public FaultTest, public ::testing::WithParamInterface<Peer> {
 public:
  static void SetUpTestSuite() {
    auto ns = NetNamespace::Create();
    if (!ns.ok()) {
      skip_ = new std::string(std::string(ns.status().message()));
      return;
    }
    net_ = ns->release();
    PgClusterOptions so, to;
    so.name = "source";
    to.name = "target";
    so.extra_listen_addresses = {net_->host_address(Peer::kSource)};
    to.extra_listen_addresses = {net_->host_address(Peer::kTarget)};
    for (PgClusterOptions* o : {&so, &to}) {
      o->extra_hba = {absl::StrCat("host all all ", net_->subnet(), " trust"),
                      absl::StrCat("host replication all ", net_->subnet(), " trust")};
    }
    StartClusters(so, to);
  }
  static void TearDownTestSuite() {
    DaemonTest::TearDownTestSuite();
    delete net_;
    net_ = nullptr;
  }

 protected:
  void SetUp() override {
    if (skip_ != nullptr) GTEST_SKIP() << "network fault tests skipped: " << *skip_;
    FaultTest::SetUp();
    daemon_prefix_ = {net_->ip(), "netns", "exec", net_->name()};
  }
  void TearDown() override {
    if (skip_ != nullptr) return;
    for (Peer p : {Peer::kSource, Peer::kTarget}) (void)net_->Clear(p);
    FaultTest::TearDown();
    for (auto& r : relay_) r.reset();
  }

  // How walshiftd inside the namespace reaches `p`: through its relay when there is one, else
  // the database's own port on the host side of the veth pair. A libpq DSN.
  std::string Dsn(Peer p) const {
    const std::unique_ptr<DelayRelay>& relay = relay_[static_cast<int>(p)];
    PgCluster* c = p == Peer::kSource ? source_cluster_ : target_cluster_;
    return absl::StrCat("host=", net_->host_address(p), " port=", relay ? relay->port() : c->port(),
                        " dbname=", p == Peer::kSource ? source_db_ : target_db_, " user=walshift");
  }

  // The events mapping with both DSNs through the namespace's veth pairs (and relays).
  std::string Config(const std::string& extra, const std::string& source_keys = "") {
    return EventsConfig(extra, Dsn(Peer::kSource), Dsn(Peer::kTarget), source_keys);
  }

  // The shortest of 5 `SELECT 1` round trips (psql's \timing) from inside the namespace to `p`,
  // along walshiftd's path.
  absl::StatusOr<absl::Duration> RoundTripFromNamespace(Peer p) {
    ASSIGN_OR_RETURN(std::string psql, PgCluster::Binary("psql"));
    SubprocessOptions o;
    o.argv = {net_->ip(), "netns", "exec", net_->name(), psql, "-X", "-q", "-d", Dsn(p), "-v", "ON_ERROR_STOP=1"};
    o.env_unset = {"PGHOST", "PGPORT", "PGSERVICE", "PGOPTIONS"};
    o.stdin_data = "\\timing on\n";
    for (int i = 0; i < 5; ++i) *o.stdin_data += "SELECT 1;\n";
    ASSIGN_OR_RETURN(RunResult r, Subprocess::Run(std::move(o), absl::Seconds(60)));
    if (!r.status.success()) {
      return absl::InternalError(absl::StrCat("psql: ", r.status.ToString(), ": ", r.stderr_text));
    }
    std::optional<absl::Duration> best;
    for (absl::string_view line : absl::StrSplit(r.stdout_text, '\n')) {
      double ms = 0;
      if (!absl::ConsumePrefix(&line, "Time: ") || !absl::SimpleAtod(line.substr(0, line.find(' ')), &ms)) continue;
      absl::Duration d = absl::Microseconds(static_cast<int64_t>(ms * 1000));
      if (!best || d < *best) best = d;
    }
    if (!best) return absl::InternalError(absl::StrCat("no timings in psql's output: ", r.stdout_text));
    return *best;
  }

  // The first log line after `from` that holds `needle`.
  std::string LogLine(const std::string& needle, size_t from) const {
    std::string log = FullLog();
    size_t at = log.find(needle, from);
    if (at == std::string::npos) return "";
    size_t start = log.rfind('\n', at);
    start = start == std::string::npos ? 0 : start + 1;
    return log.substr(start, log.find('\n', at) - start);
  }

  static std::string* skip_;
  static NetNamespace* net_;
  // The latency's relay per database (index: Peer), where the kernel has no netem.
  std::unique_ptr<DelayRelay> relay_[2];
};

std::string* NetworkFaultTest::skip_ = nullptr;
NetNamespace* NetworkFaultTest::net_ = nullptr;

// A blackhole for 15 s, longer than keepalives (2 + 3 x 1 s), the user timeout (5 s) and the
// receive timeout (6 s): walshiftd notices the silent peer, says so, keeps retrying (each
// attempt bounded by connect_timeout_s), and goes on once the path is back.
TEST_P(NetworkFaultTest, BlackholeIsNoticedAndSurvivedEndsExact) {
  Peer peer = GetParam();
  CreateTables();
  std::string config = Config(kQuickDetection, "receive_timeout_s: 6");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  auto workload = StartPgbench(Workload(2, absl::Seconds(25), /*rate=*/100));
  ASSERT_NE(workload, nullptr);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  size_t from = LogSize();
  ASSERT_TRUE(net_->Blackhole(peer).ok());
  absl::Time start = absl::Now();
  bool noticed = WaitForLog("retrying in", from, absl::Seconds(60));
  absl::Duration detection = absl::Now() - start;
  EXPECT_TRUE(noticed) << "walshiftd never noticed the blackhole to the " << PeerName(peer) << ":\n" << DaemonLog();
  std::string line = LogLine("retrying in", from);
  EXPECT_TRUE(absl::StrContains(line, PeerName(peer))) << line;
  while (absl::Now() - start < absl::Seconds(15)) {
    ASSERT_TRUE(daemon_->Running()) << DaemonLog();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  int attempts = CountInLog("retrying in", from);
  int64_t dropped = net_->Dropped(peer);
  EXPECT_NE(dropped, 0) << "the blackhole dropped nothing";
  ASSERT_TRUE(net_->Clear(peer).ok());
  auto done = workload->Wait(absl::Seconds(120));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(180)).ok()) << DaemonLog();
  ExpectExact();
  std::cout << PeerName(peer) << " blackholed 15 s: noticed after " << absl::ToDoubleSeconds(detection) << " s ("
            << line << "); " << attempts << " attempts during the blackhole\n";
  EXPECT_TRUE(StopDaemon().success());
}

// 5% of the packets lost each way, with the default keepalive and timeout settings: slower,
// never wrong, and no connection given up for a healthy (if lossy) peer is required.
TEST_P(NetworkFaultTest, FivePercentLossEndsExact) {
  Peer peer = GetParam();
  CreateTables();
  std::string config =
      Config("apply: {group_max_changes: 500, group_max_ms: 100}\nmonitor: {heartbeat_interval_s: 1}\n");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  size_t from = LogSize();
  ASSERT_TRUE(net_->Loss(peer, 5).ok());
  auto workload = StartPgbench(Workload(4, absl::Seconds(10)));
  ASSERT_NE(workload, nullptr);
  auto done = workload->Wait(absl::Seconds(120));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  absl::Time start = absl::Now();
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(240)).ok()) << DaemonLog();
  absl::Duration catch_up = absl::Now() - start;
  int64_t dropped = net_->Dropped(peer);
  EXPECT_NE(dropped, 0) << "the loss dropped nothing";
  ASSERT_TRUE(net_->Clear(peer).ok());
  ExpectExact();
  std::cout << PeerName(peer) << " with 5% loss: " << dropped << " packets dropped, caught up "
            << absl::ToDoubleSeconds(catch_up) << " s after the load, reconnects: " << CountInLog("retrying in", from)
            << "\n";
  EXPECT_TRUE(StopDaemon().success());
}

// 50 ms each way (100 ms round trips) under load: tc netem on both ends of the veth pair, or,
// without sch_netem, a DelayRelay on the host side of the pair that walshiftd connects through
// from the start (no delay until the load begins). The round trip walshiftd's path has is
// measured from inside the namespace; a relay also counts what it held back, and for how long.
TEST_P(NetworkFaultTest, FiftyMillisecondLatencyEndsExact) {
  Peer peer = GetParam();
  constexpr absl::Duration kDelay = absl::Milliseconds(50);
  DelayRelay* relay = nullptr;
  if (!net_->netem()) {
    PgCluster* c = peer == Peer::kSource ? source_cluster_ : target_cluster_;
    auto r = DelayRelay::Start(net_->host_address(peer), c->host(), c->port(), absl::ZeroDuration());
    ASSERT_TRUE(r.ok()) << r.status();
    relay_[static_cast<int>(peer)] = *std::move(r);
    relay = relay_[static_cast<int>(peer)].get();
  }
  std::string mechanism = relay == nullptr ? "tc netem on both ends of the veth pair"
                                           : "a delaying TCP relay on the host side of the veth pair (this "
                                             "kernel has no sch_netem)";
  std::cout << "50 ms latency to the " << PeerName(peer) << " by " << mechanism << "\n";
  CreateTables();
  std::string config =
      Config("apply: {group_max_changes: 500, group_max_ms: 100}\nmonitor: {heartbeat_interval_s: 1}\n");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  size_t from = LogSize();
  DelayRelay::Stats before;
  if (relay != nullptr) {
    before = relay->stats();
    relay->SetDelay(kDelay);
  } else {
    ASSERT_TRUE(net_->Delay(peer, kDelay).ok());
  }
  absl::StatusOr<absl::Duration> round_trip = RoundTripFromNamespace(peer);
  ASSERT_TRUE(round_trip.ok()) << round_trip.status();
  EXPECT_GE(*round_trip, 2 * kDelay) << "the latency is not on walshiftd's path";
  auto workload = StartPgbench(Workload(4, absl::Seconds(10)));
  ASSERT_NE(workload, nullptr);
  auto done = workload->Wait(absl::Seconds(120));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  absl::Time start = absl::Now();
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(240)).ok()) << DaemonLog();
  absl::Duration catch_up = absl::Now() - start;
  std::string held;
  if (relay != nullptr) {
    relay->SetDelay(absl::ZeroDuration());
    DelayRelay::Stats after = relay->stats();
    for (auto d : {DelayRelay::kToTarget, DelayRelay::kToClient}) {
      // walshiftd's own traffic went through the relay, each chunk held at least the delay.
      EXPECT_GT(after.chunks[d], before.chunks[d]) << "direction " << d;
      EXPECT_GE(after.min_held[d], kDelay) << "direction " << d;
    }
    held = absl::StrCat("; the relay held ", after.chunks[DelayRelay::kToTarget] - before.chunks[DelayRelay::kToTarget],
                        " chunks (", after.bytes[DelayRelay::kToTarget] - before.bytes[DelayRelay::kToTarget],
                        " bytes) towards the ", PeerName(peer), " for at least ",
                        absl::FormatDuration(after.min_held[DelayRelay::kToTarget]), " and ",
                        after.chunks[DelayRelay::kToClient] - before.chunks[DelayRelay::kToClient], " chunks (",
                        after.bytes[DelayRelay::kToClient] - before.bytes[DelayRelay::kToClient],
                        " bytes) back for at least ", absl::FormatDuration(after.min_held[DelayRelay::kToClient]),
                        ", over ", after.connections, " connections (1 of them psql's)");
  } else {
    ASSERT_TRUE(net_->Clear(peer).ok());
  }
  ExpectExact();
  std::cout << PeerName(peer) << " with 50 ms latency (" << (relay == nullptr ? "netem" : "relay")
            << "): SELECT 1 from the namespace takes " << absl::FormatDuration(*round_trip) << "; caught up "
            << absl::ToDoubleSeconds(catch_up) << " s after the load, reconnects: " << CountInLog("retrying in", from)
            << held << "\n";
  EXPECT_TRUE(StopDaemon().success());
}

INSTANTIATE_TEST_SUITE_P(EachDatabase, NetworkFaultTest, ::testing::Values(Peer::kSource, Peer::kTarget),
                         [](const ::testing::TestParamInfo<Peer>& info) {
                           return info.param == Peer::kSource ? std::string("Source") : std::string("Target");
                         });

}  // namespace
}  // namespace walshift::testing
