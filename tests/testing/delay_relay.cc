#include "tests/testing/delay_relay.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <vector>

#include "absl/strings/str_cat.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

namespace walshift::testing {
namespace {

constexpr size_t kReadSize = 64 << 10;

absl::Status Errno(absl::string_view what) { return absl::InternalError(absl::StrCat(what, ": ", strerror(errno))); }

absl::StatusOr<sockaddr_in> Address(const std::string& host, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("not a numeric IPv4 address: ", host));
  }
  return a;
}

void SetNonBlockingNoDelay(int fd) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Closes `fd` with a reset instead of a FIN, so that the peer sees a failure, not an end.
void Abort(int fd) {
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(fd);
}

}  // namespace

// One relayed connection and the thread that runs it; the thread ends (done()) when both sides
// are closed, on an error, or when the relay stops.
class DelayRelay::Connection {
 public:
  Connection(DelayRelay* relay, int client_fd) : relay_(relay), client_fd_(client_fd), thread_([this] { Run(); }) {}
  ~Connection() { thread_.join(); }

  bool done() const { return done_; }

 private:
  struct Chunk {
    Clock::time_point read_at, release_at;
    bool delayed = false;
    std::string bytes;
    size_t written = 0;
  };
  // One direction: bytes read from `from`, held, then written to `to`.
  struct Flow {
    Direction direction = kToTarget;
    int from = -1, to = -1;
    std::deque<Chunk> queue;
    size_t queued = 0;
    bool eof = false;       // `from` said EOF
    bool shut_to = false;   // the EOF was passed on
    bool hup_from = false;  // poll said POLLHUP for `from`
  };

  void Run() {
    int server_fd = ConnectTarget();
    if (server_fd < 0) {
      Abort(client_fd_);
    } else {
      SetNonBlockingNoDelay(client_fd_);
      SetNonBlockingNoDelay(server_fd);
      bool failed = Relay(client_fd_, server_fd) == End::kFailed;
      for (int fd : {client_fd_, server_fd}) {
        if (failed) {
          Abort(fd);
        } else {
          close(fd);
        }
      }
    }
    {
      std::lock_guard<std::mutex> l(relay_->mu_);
      --relay_->stats_.open;
    }
    done_ = true;
  }

  // -1 when the target does not accept.
  int ConnectTarget() {
    auto addr = Address(relay_->target_host_, relay_->target_port_);
    if (!addr.ok()) return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
      close(fd);
      return -1;
    }
    return fd;
  }

  enum class End { kClosed, kFailed, kStopped };

  // Until both sides are closed, one fails, or the relay stops.
  End Relay(int client_fd, int server_fd) {
    Flow flows[2];
    flows[kToTarget].direction = kToTarget;
    flows[kToTarget].from = flows[kToClient].to = client_fd;
    flows[kToClient].direction = kToClient;
    flows[kToClient].from = flows[kToTarget].to = server_fd;
    std::string buffer(kReadSize, '\0');
    while (true) {
      Clock::time_point now = Clock::now();
      // Writes whatever is due; passes an EOF on once its flow is drained.
      for (Flow& f : flows) {
        while (!f.queue.empty() && f.queue.front().release_at <= now) {
          Chunk& c = f.queue.front();
          ssize_t n = send(f.to, c.bytes.data() + c.written, c.bytes.size() - c.written, MSG_NOSIGNAL);
          if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            return End::kFailed;
          }
          if (c.written == 0) relay_->CountChunk(f.direction, c.bytes.size(), now - c.read_at, c.delayed);
          c.written += static_cast<size_t>(n);
          if (c.written == c.bytes.size()) {
            f.queued -= c.bytes.size();
            f.queue.pop_front();
          }
        }
        if (f.eof && f.queue.empty() && !f.shut_to) {
          shutdown(f.to, SHUT_WR);
          f.shut_to = true;
        }
      }
      if (flows[0].shut_to && flows[1].shut_to) return End::kClosed;

      // What to wait for: readable sources with room in their queue, destinations with a due
      // chunk that did not fit, the next release time, and the stop pipe.
      pollfd fds[3] = {{relay_->stop_pipe_[0], POLLIN, 0}, {client_fd, 0, 0}, {server_fd, 0, 0}};
      auto slot = [&](int fd) -> pollfd& { return fd == client_fd ? fds[1] : fds[2]; };
      bool reading[2] = {false, false};
      Clock::duration wait = Clock::duration::max();
      for (Flow& f : flows) {
        if (!f.eof && f.queued < kMaxQueuedBytes) {
          slot(f.from).events |= POLLIN;
          reading[f.direction] = true;
        }
        if (!f.queue.empty()) {
          if (f.queue.front().release_at <= now) {
            slot(f.to).events |= POLLOUT;
          } else {
            wait = std::min(wait, f.queue.front().release_at - now);
          }
        }
      }
      // A hung-up socket polls as ready whatever is asked; leave it out while nothing is asked.
      for (Flow& f : flows) {
        if (f.hup_from && slot(f.from).events == 0) slot(f.from).fd = -1;
      }
      timespec ts{};
      timespec* timeout = nullptr;
      if (wait != Clock::duration::max()) {
        int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
        ts.tv_sec = ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        timeout = &ts;
      }
      if (ppoll(fds, 3, timeout, nullptr) < 0) {
        if (errno == EINTR) continue;
        return End::kFailed;
      }
      if (fds[0].revents != 0) return End::kStopped;
      for (Flow& f : flows) {
        short revents = slot(f.from).revents;
        if (revents & POLLHUP) f.hup_from = true;
        if (!reading[f.direction] || (revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        ssize_t n = recv(f.from, buffer.data(), buffer.size(), 0);
        if (n < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
          return End::kFailed;
        }
        if (n == 0) {
          f.eof = true;
          continue;
        }
        Chunk c;
        c.read_at = Clock::now();
        int64_t delay_ns = relay_->delay_ns_.load();
        c.release_at = c.read_at + std::chrono::nanoseconds(delay_ns);
        c.delayed = delay_ns > 0;
        c.bytes.assign(buffer.data(), static_cast<size_t>(n));
        f.queued += c.bytes.size();
        f.queue.push_back(std::move(c));
      }
      for (int i : {1, 2}) {
        if ((fds[i].revents & POLLERR) != 0) return End::kFailed;
      }
    }
  }

  DelayRelay* const relay_;
  const int client_fd_;
  std::atomic<bool> done_{false};
  std::thread thread_;  // last: starts running in the constructor
};

absl::StatusOr<std::unique_ptr<DelayRelay>> DelayRelay::Start(const std::string& listen_host,
                                                              const std::string& target_host, int target_port,
                                                              absl::Duration delay) {
  auto listen_addr = Address(listen_host, 0);
  if (!listen_addr.ok()) return listen_addr.status();
  if (auto target = Address(target_host, target_port); !target.ok()) return target.status();
  std::unique_ptr<DelayRelay> r(new DelayRelay());
  r->host_ = listen_host;
  r->target_host_ = target_host;
  r->target_port_ = target_port;
  r->SetDelay(delay);
  if (pipe2(r->stop_pipe_, O_CLOEXEC) != 0) return Errno("pipe2");
  r->listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (r->listen_fd_ < 0) return Errno("socket");
  int one = 1;
  setsockopt(r->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(r->listen_fd_, reinterpret_cast<const sockaddr*>(&*listen_addr), sizeof(*listen_addr)) != 0) {
    return Errno(absl::StrCat("bind ", listen_host));
  }
  if (listen(r->listen_fd_, 128) != 0) return Errno("listen");
  sockaddr_in bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(r->listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len) != 0) return Errno("getsockname");
  r->port_ = ntohs(bound.sin_port);
  r->acceptor_ = std::thread([p = r.get()] { p->AcceptLoop(); });
  return r;
}

DelayRelay::~DelayRelay() {
  if (stop_pipe_[1] >= 0) close(stop_pipe_[1]);
  if (acceptor_.joinable()) acceptor_.join();
  std::list<std::unique_ptr<Connection>> connections;
  {
    std::lock_guard<std::mutex> l(mu_);
    connections.swap(connections_);
  }
  connections.clear();  // joins their threads, which close their sockets
  if (listen_fd_ >= 0) close(listen_fd_);
  if (stop_pipe_[0] >= 0) close(stop_pipe_[0]);
}

DelayRelay::Stats DelayRelay::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  return stats_;
}

void DelayRelay::CountChunk(Direction d, size_t bytes, Clock::duration held, bool delayed) {
  absl::Duration h = absl::FromChrono(held);
  std::lock_guard<std::mutex> l(mu_);
  ++stats_.chunks[d];
  stats_.bytes[d] += static_cast<int64_t>(bytes);
  if (delayed && (stats_.min_held[d] == absl::ZeroDuration() || h < stats_.min_held[d])) stats_.min_held[d] = h;
}

void DelayRelay::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{stop_pipe_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[0].revents != 0) return;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      continue;
    }
    std::list<std::unique_ptr<Connection>> finished;
    std::lock_guard<std::mutex> l(mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto next = std::next(it);
      if ((*it)->done()) finished.splice(finished.end(), connections_, it);
      it = next;
    }
    ++stats_.connections;
    ++stats_.open;
    connections_.push_back(std::make_unique<Connection>(this, fd));
  }
}

}  // namespace walshift::testing
