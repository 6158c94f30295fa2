#pragma once
// A TCP relay that delays what it forwards, for latency tests where the kernel cannot (no
// sch_netem for `tc netem delay`). It listens on an address, connects each accepted client to
// a fixed target, and forwards bytes both ways; each chunk read from one side is written to the
// other no earlier than the delay after it was read, in order. A delay each way turns into at
// least twice the delay per round trip, as with netem on both ends of a link.
//
// One thread accepts; one thread per connection runs a poll loop over both sockets, so a
// long-lived stream (a replication connection) and many short connections are relayed alike.
// What is queued per direction is bounded (kMaxQueuedBytes): a full queue stops reading from
// its source, and TCP flow control carries the backpressure to the sender. A side's EOF is
// passed on (shutdown(SHUT_WR)) once everything read before it was written; a reset or error
// on either side closes both. Unlike netem, only the bytes are delayed: the TCP handshake and
// keepalives are answered by the relay's own kernel at once.

#include <atomic>
#include <chrono>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace walshift::testing {

class DelayRelay {
 public:
  // The most bytes held per direction of one connection before reading from its source stops.
  static constexpr size_t kMaxQueuedBytes = 4 << 20;

  enum Direction { kToTarget = 0, kToClient = 1 };

  // What the relay forwarded so far, all connections together.
  struct Stats {
    int64_t connections = 0;  // accepted
    int64_t open = 0;         // accepted and not yet closed on both sides
    int64_t chunks[2] = {0, 0};
    int64_t bytes[2] = {0, 0};
    // The shortest time a chunk was held (read to its first byte written), over the chunks read
    // while the delay was positive; zero when there were none.
    absl::Duration min_held[2] = {absl::ZeroDuration(), absl::ZeroDuration()};
  };

  // Listens on `listen_host` (a numeric IPv4 address; a free port) and relays every connection
  // to `target_host`:`target_port` with `delay` each way. kInvalidArgument for an address that
  // is not numeric IPv4, kInternal when the socket cannot be made or bound.
  static absl::StatusOr<std::unique_ptr<DelayRelay>> Start(const std::string& listen_host,
                                                           const std::string& target_host, int target_port,
                                                           absl::Duration delay);

  DelayRelay(const DelayRelay&) = delete;
  DelayRelay& operator=(const DelayRelay&) = delete;
  // Stops accepting, closes every connection (both sides; clients see EOF) and joins all threads.
  ~DelayRelay();

  const std::string& host() const { return host_; }
  int port() const { return port_; }
  // Applies to chunks read from now on; chunks already held keep their release time (and
  // order). Thread-safe.
  void SetDelay(absl::Duration delay) { delay_ns_ = absl::ToInt64Nanoseconds(delay); }
  absl::Duration delay() const { return absl::Nanoseconds(delay_ns_.load()); }
  // Thread-safe.
  Stats stats() const;

 private:
  class Connection;
  using Clock = std::chrono::steady_clock;

  DelayRelay() = default;
  void AcceptLoop();
  // Called by a connection's thread for each chunk it starts writing.
  void CountChunk(Direction d, size_t bytes, Clock::duration held, bool delayed);

  std::string host_, target_host_;
  int port_ = 0, target_port_ = 0;
  int listen_fd_ = -1;
  // Closing the write end wakes every poll loop (the read end turns readable for good).
  int stop_pipe_[2] = {-1, -1};
  std::atomic<int64_t> delay_ns_{0};
  std::thread acceptor_;

  mutable std::mutex mu_;
  std::list<std::unique_ptr<Connection>> connections_;  // guarded by mu_
  Stats stats_;                                         // guarded by mu_
};

}  // namespace walshift::testing
