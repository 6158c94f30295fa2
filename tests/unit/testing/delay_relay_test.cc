#include "tests/testing/delay_relay.h"

#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "daemon/pg/pg_util.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_cluster.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/test_paths.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace walshift::testing {
namespace {

using Clock = std::chrono::steady_clock;
constexpr absl::Duration kDelay = absl::Milliseconds(50);

absl::Duration Since(Clock::time_point t) { return absl::FromChrono(Clock::now() - t); }

// A connected TCP socket to 127.0.0.1:`port`; -1 on failure.
int ConnectTo(const std::string& host, int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads exactly `n` bytes; fewer when the stream ends or fails first.
std::string ReadN(int fd, size_t n) {
  std::string out;
  char buf[4096];
  while (out.size() < n) {
    ssize_t r = recv(fd, buf, std::min(sizeof(buf), n - out.size()), 0);
    if (r <= 0) break;
    out.append(buf, static_cast<size_t>(r));
  }
  return out;
}

// Everything until EOF.
std::string ReadAll(int fd) {
  std::string out;
  char buf[65536];
  ssize_t r;
  while ((r = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(r));
  return out;
}

// Echoes every connection on 127.0.0.1 until its client's EOF, then closes it. Each connection
// first gets `greeting`. Records when the first byte of each connection arrived and how many
// connections ended with an EOF.
class EchoServer {
 public:
  explicit EchoServer(std::string greeting = "") : greeting_(std::move(greeting)) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    EXPECT_EQ(bind(listen_fd_, reinterpret_cast<const sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(listen(listen_fd_, 64), 0);
    socklen_t len = sizeof(a);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] {
      int fd;
      while ((fd = accept(listen_fd_, nullptr, nullptr)) >= 0) {
        std::lock_guard<std::mutex> l(mu_);
        workers_.emplace_back([this, fd] { Echo(fd); });
      }
    });
  }
  ~EchoServer() {
    shutdown(listen_fd_, SHUT_RDWR);
    acceptor_.join();
    close(listen_fd_);
    for (std::thread& t : workers_) t.join();
  }

  int port() const { return port_; }
  int ended_with_eof() const { return eofs_; }
  Clock::time_point first_byte_at() {
    std::lock_guard<std::mutex> l(mu_);
    return first_byte_at_;
  }

 private:
  void Echo(int fd) {
    if (!greeting_.empty()) SendAll(fd, greeting_);
    char buf[65536];
    while (true) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n == 0) ++eofs_;
      if (n <= 0) break;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (first_byte_at_ == Clock::time_point()) first_byte_at_ = Clock::now();
      }
      if (!SendAll(fd, absl::string_view(buf, static_cast<size_t>(n)))) break;
    }
    close(fd);
  }

  std::string greeting_;
  int listen_fd_ = -1, port_ = 0;
  std::atomic<int> eofs_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> workers_;   // guarded by mu_
  Clock::time_point first_byte_at_{};  // guarded by mu_; of the first connection only
};

std::unique_ptr<DelayRelay> MustStart(int target_port, absl::Duration delay = kDelay) {
  auto r = DelayRelay::Start("127.0.0.1", "127.0.0.1", target_port, delay);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : nullptr;
}

// Waits for `done` (a failure after 30 s, which no passing run comes near).
template <typename F>
bool Eventually(F done) {
  for (absl::Time end = absl::Now() + absl::Seconds(30); absl::Now() < end;) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

TEST(DelayRelayTest, EachWayTakesAtLeastTheDelayAndARoundTripTwice) {
  EchoServer server("hello");
  std::unique_ptr<DelayRelay> relay = MustStart(server.port());
  ASSERT_NE(relay, nullptr);
  Clock::time_point connected = Clock::now();
  int fd = ConnectTo(relay->host(), relay->port());
  ASSERT_GE(fd, 0);
  // The server greets as soon as the relay reached it: one way, server to client.
  EXPECT_EQ(ReadN(fd, 5), "hello");
  absl::Duration greeting = Since(connected);
  EXPECT_GE(greeting, kDelay);
  for (int i = 0; i < 3; ++i) {
    std::string ping = absl::StrCat("ping ", i);
    Clock::time_point sent = Clock::now();
    ASSERT_TRUE(SendAll(fd, ping));
    EXPECT_EQ(ReadN(fd, ping.size()), ping);
    absl::Duration round_trip = Since(sent);
    EXPECT_GE(round_trip, 2 * kDelay) << "round trip " << i;
    if (i == 0) {
      // Client to server, one way.
      EXPECT_GE(absl::FromChrono(server.first_byte_at() - sent), kDelay);
    }
    std::cout << "round trip " << i << " through the relay: " << absl::FormatDuration(round_trip) << "\n";
  }
  close(fd);
  // The relay counts a chunk after its write returned, which can be after the client read it.
  DelayRelay::Stats s;
  EXPECT_TRUE(Eventually([&] {
    s = relay->stats();
    return s.chunks[DelayRelay::kToTarget] == 3 && s.bytes[DelayRelay::kToClient] == 5 + 3 * 6;
  }));
  EXPECT_EQ(s.connections, 1);
  EXPECT_EQ(s.chunks[DelayRelay::kToTarget], 3);
  EXPECT_EQ(s.bytes[DelayRelay::kToClient], 5 + 3 * 6);
  EXPECT_GE(s.min_held[DelayRelay::kToTarget], kDelay);
  EXPECT_GE(s.min_held[DelayRelay::kToClient], kDelay);
}

TEST(DelayRelayTest, SetDelayAppliesToLaterChunks) {
  EchoServer server;
  std::unique_ptr<DelayRelay> relay = MustStart(server.port(), absl::ZeroDuration());
  ASSERT_NE(relay, nullptr);
  int fd = ConnectTo(relay->host(), relay->port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "a"));
  EXPECT_EQ(ReadN(fd, 1), "a");
  EXPECT_EQ(relay->stats().min_held[DelayRelay::kToTarget], absl::ZeroDuration());  // nothing delayed yet
  relay->SetDelay(kDelay);
  Clock::time_point sent = Clock::now();
  ASSERT_TRUE(SendAll(fd, "b"));
  EXPECT_EQ(ReadN(fd, 1), "b");
  EXPECT_GE(Since(sent), 2 * kDelay);
  close(fd);
}

// 8 MiB of random bytes out while they come back (the echo), then a half close: both
// directions carry every byte in order, more than the relay may hold at once, and the EOF is
// passed on each way after the last byte.
TEST(DelayRelayTest, BytesArriveIntactAndInOrderBothWaysAndEofFollowsTheLastByte) {
  EchoServer server;
  std::unique_ptr<DelayRelay> relay = MustStart(server.port());
  ASSERT_NE(relay, nullptr);
  std::string data(8 << 20, '\0');
  std::mt19937_64 rng(42);
  for (char& c : data) c = static_cast<char>(rng());
  int fd = ConnectTo(relay->host(), relay->port());
  ASSERT_GE(fd, 0);
  std::thread writer([&] {
    EXPECT_TRUE(SendAll(fd, data));
    shutdown(fd, SHUT_WR);
  });
  std::string back = ReadAll(fd);  // until the EOF the server's close sent back
  writer.join();
  close(fd);
  ASSERT_EQ(back.size(), data.size());
  EXPECT_TRUE(back == data) << "the bytes came back changed or reordered";
  EXPECT_TRUE(Eventually([&] { return server.ended_with_eof() == 1; })) << "the server never saw the EOF";
  EXPECT_TRUE(Eventually([&] { return relay->stats().open == 0; }));
  DelayRelay::Stats s = relay->stats();
  EXPECT_EQ(s.bytes[DelayRelay::kToTarget], static_cast<int64_t>(data.size()));
  EXPECT_EQ(s.bytes[DelayRelay::kToClient], static_cast<int64_t>(data.size()));
  EXPECT_GE(s.min_held[DelayRelay::kToTarget], kDelay);
  EXPECT_GE(s.min_held[DelayRelay::kToClient], kDelay);
}

TEST(DelayRelayTest, ClosesCleanly) {
  EchoServer server;
  {
    std::unique_ptr<DelayRelay> relay = MustStart(server.port());
    ASSERT_NE(relay, nullptr);
    // A client that closes: the server sees an EOF, the relay forgets the connection.
    int fd = ConnectTo(relay->host(), relay->port());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(SendAll(fd, "x"));
    EXPECT_EQ(ReadN(fd, 1), "x");
    close(fd);
    EXPECT_TRUE(Eventually([&] { return server.ended_with_eof() == 1; }));
    EXPECT_TRUE(Eventually([&] { return relay->stats().open == 0; }));
    // A connection still open when the relay goes away: both ends see an EOF.
    fd = ConnectTo(relay->host(), relay->port());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(SendAll(fd, "y"));
    EXPECT_EQ(ReadN(fd, 1), "y");
    relay.reset();
    char c;
    EXPECT_EQ(recv(fd, &c, 1, 0), 0);
    close(fd);
    EXPECT_TRUE(Eventually([&] { return server.ended_with_eof() == 2; }));
  }
  // Nothing listens at the target: the client is let go (reset), not left waiting.
  int unused = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  bind(unused, reinterpret_cast<const sockaddr*>(&a), sizeof(a));  // a port taken, never listened on
  socklen_t len = sizeof(a);
  getsockname(unused, reinterpret_cast<sockaddr*>(&a), &len);
  std::unique_ptr<DelayRelay> relay = MustStart(ntohs(a.sin_port));
  ASSERT_NE(relay, nullptr);
  int fd = ConnectTo(relay->host(), relay->port());
  ASSERT_GE(fd, 0);
  char c;
  EXPECT_LE(recv(fd, &c, 1, 0), 0);
  close(fd);
  close(unused);
  EXPECT_EQ(DelayRelay::Start("localhost", "127.0.0.1", 1, kDelay).status().code(), absl::StatusCode::kInvalidArgument);
}

// Real PostgreSQL behind the relay: query round trips, a large value, many concurrent short
// connections, and a logical replication stream (pg_recvlogical) that stays up.
TEST(DelayRelayTest, PostgresThroughTheRelay) {
  PgClusterOptions options;
  options.name = "relay";
  auto cluster = PgCluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  PgCluster& pg = **cluster;
  std::unique_ptr<DelayRelay> relay = MustStart(pg.port());
  ASSERT_NE(relay, nullptr);
  std::string dsn = absl::StrCat("host=", relay->host(), " port=", relay->port(), " dbname=postgres user=walshift");

  auto conn = pg::Connect(dsn, "relayed");
  ASSERT_TRUE(conn.ok()) << conn.status();
  Clock::time_point sent = Clock::now();
  ASSERT_TRUE(pg::Exec(conn->get(), "SELECT 1", "select").ok());
  absl::Duration round_trip = Since(sent);
  EXPECT_GE(round_trip, 2 * kDelay);
  auto big = pg::Exec(conn->get(), "SELECT repeat('walshift', 1000000), md5(repeat('walshift', 1000000))", "big");
  ASSERT_TRUE(big.ok()) << big.status();
  std::string value = PQgetvalue(big->get(), 0, 0);
  EXPECT_EQ(value.size(), 8000000u);
  EXPECT_EQ(value.find_first_not_of("walshift"), std::string::npos);
  EXPECT_TRUE(absl::StartsWith(value, "walshiftwalshift"));
  std::cout << "SELECT 1 through the relay: " << absl::FormatDuration(round_trip) << "\n";

  // 16 clients, 4 connections each, all at once.
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 16; ++i) {
    clients.emplace_back([&, i] {
      for (int j = 0; j < 4; ++j) {
        auto c = pg::Connect(dsn, "short");
        if (!c.ok()) continue;
        auto r = pg::Exec(c->get(), absl::StrCat("SELECT ", i * 4 + j), "short");
        if (r.ok() && std::string(PQgetvalue(r->get(), 0, 0)) == absl::StrCat(i * 4 + j)) ++ok;
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(ok, 64);

  // A logical replication stream through the relay.
  ASSERT_TRUE(pg.Exec("postgres", "CREATE TABLE t (id int PRIMARY KEY)").ok());
  auto recvlogical = PgCluster::Binary("pg_recvlogical");
  ASSERT_TRUE(recvlogical.ok()) << recvlogical.status();
  auto dir = TempDir::Create("walshift-relay-");
  ASSERT_TRUE(dir.ok()) << dir.status();
  std::string out_path = dir->Join("out");
  SubprocessOptions o;
  o.argv = {*recvlogical,    "-d", dsn, "--slot", "relay_slot", "--create-slot", "--start", "--plugin",
            "test_decoding", "-F", "0", "-f",     out_path};
  auto stream = Subprocess::Start(o);
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE(Eventually([&] {
    auto r = pg.QueryValue("postgres", "SELECT count(*) FROM pg_replication_slots WHERE active");
    return r.ok() && *r == "1";
  })) << (*stream)->ReadOutput(Subprocess::Stream::kStderr).value_or("");
  for (int i = 1; i <= 5; ++i) {
    ASSERT_TRUE(pg.Exec("postgres", absl::StrCat("INSERT INTO t VALUES (", i, ")")).ok());
  }
  EXPECT_TRUE(Eventually([&] {
    auto out = ReadFile(out_path);
    return out.ok() && absl::StrContains(*out, "table public.t: INSERT: id[integer]:5");
  })) << ReadFile(out_path).value_or("(no output)");
  EXPECT_TRUE((*stream)->Running()) << (*stream)->ReadOutput(Subprocess::Stream::kStderr).value_or("");
  (*stream)->Kill();
  stream->reset();
  conn->reset();
  EXPECT_TRUE(Eventually([&] { return relay->stats().open == 0; }));
  DelayRelay::Stats s = relay->stats();
  EXPECT_EQ(s.connections, 1 + 64 + 1);
  EXPECT_GE(s.min_held[DelayRelay::kToTarget], kDelay);
  EXPECT_GE(s.min_held[DelayRelay::kToClient], kDelay);
}

}  // namespace
}  // namespace walshift::testing
