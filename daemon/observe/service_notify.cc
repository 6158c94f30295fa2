#include "daemon/observe/service_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "spdlog/spdlog.h"

namespace walshift {

bool NotifyServiceManager(const std::string& state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || (path[0] != '/' && path[0] != '@')) return false;
  sockaddr_un addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  size_t len = std::strlen(path);
  if (len >= sizeof(addr.sun_path)) return false;
  std::memcpy(addr.sun_path, path, len);
  if (path[0] == '@') addr.sun_path[0] = '\0';  // an abstract socket name
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  ssize_t sent = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr),
                        static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len));
  close(fd);
  return sent == static_cast<ssize_t>(state.size());
}

ServiceNotifier::ServiceNotifier(PipelineStatus* status, const std::atomic<bool>* stop, std::atomic<bool>* reload,
                                 std::function<void()> on_reload)
    : status_(status), stop_(stop), reload_(reload), on_reload_(std::move(on_reload)) {
  enabled_ = std::getenv("NOTIFY_SOCKET") != nullptr;
  if (!enabled_) {
    thread_ = std::thread([this] { Loop(); });  // for reloads
    return;
  }
  // The watchdog is meant for this process when WATCHDOG_PID is unset or names it.
  const char* usec = std::getenv("WATCHDOG_USEC");
  const char* pid = std::getenv("WATCHDOG_PID");
  int64_t us = 0, for_pid = 0;
  if (usec != nullptr && absl::SimpleAtoi(usec, &us) && us > 0 &&
      (pid == nullptr || (absl::SimpleAtoi(pid, &for_pid) && for_pid == getpid()))) {
    watchdog_ = absl::Microseconds(us);
  }
  spdlog::info("systemd: notifying {}{}", std::getenv("NOTIFY_SOCKET"),
               watchdog_ > absl::ZeroDuration()
                   ? absl::StrCat(", watchdog every ", absl::FormatDuration(watchdog_ / 2),
                                  " while the pipeline loop is alive")
                   : "");
  thread_ = std::thread([this] { Loop(); });
}

ServiceNotifier::~ServiceNotifier() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    quit_ = true;
  }
  cv_.notify_all();
  thread_.join();
  if (enabled_ && !stopping_) NotifyServiceManager("STOPPING=1");
}

void ServiceNotifier::Reloading() {
  if (!enabled_) return;
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  NotifyServiceManager(absl::StrCat("RELOADING=1\nMONOTONIC_USEC=",
                                    static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000));
}

void ServiceNotifier::Reloaded() {
  if (enabled_ && ready_) NotifyServiceManager("READY=1");
}

void ServiceNotifier::Loop() {
  // Often enough for the watchdog (half its interval) and for STATUS= to follow the state.
  absl::Duration every = enabled_ ? absl::Seconds(1) : absl::Milliseconds(200);
  if (watchdog_ > absl::ZeroDuration()) every = std::min(every, watchdog_ / 2);
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, absl::ToChronoMicroseconds(every), [this] { return quit_; })) return;
    }
    if (reload_ != nullptr && reload_->exchange(false)) {
      Reloading();
      if (on_reload_) on_reload_();
      Reloaded();
    }
    if (!enabled_) continue;
    if (stop_->load() && !stopping_) {
      stopping_ = true;
      NotifyServiceManager("STOPPING=1\nSTATUS=stopping: committing what is complete");
      continue;
    }
    v1::PipelineState state = status_->state();
    std::string line;
    if (!ready_ && (state == v1::STREAMING || state == v1::SNAPSHOTTING)) {
      ready_ = true;
      line = "READY=1\n";
    }
    v1::LagEvent lag = status_->Lag(/*advance_rates=*/false);
    std::string text = absl::StrCat("STATUS=", v1::PipelineState_Name(state));
    for (const auto& t : lag.targets()) {
      absl::StrAppend(&text, "; ", t.target(), " lag ", t.lag_bytes(), " B / ", absl::StrFormat("%.1f", t.lag_seconds()),
                      " s");
    }
    if (text != last_status_) {
      last_status_ = text;
      absl::StrAppend(&line, text, "\n");
    }
    // Only while the pipeline's loop moves: a wedged apply thread stops the pings.
    if (watchdog_ > absl::ZeroDuration() && absl::Now() - status_->last_tick() < watchdog_) {
      absl::StrAppend(&line, "WATCHDOG=1\n");
    }
    if (!line.empty()) NotifyServiceManager(line);
  }
}

}  // namespace walshift
