#pragma once
// systemd's notification protocol (sd_notify(3)), for Type=notify services: datagrams of
// "KEY=value" lines sent to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an abstract
// name starting with '@'). The protocol is a stable, documented interface that systemd invites
// services to speak directly; without $NOTIFY_SOCKET everything here does nothing.
//
// walshiftd sends READY=1 once its configuration is checked and its connections are up (the
// pipeline is copying or streaming; not after the initial copy, which may take hours),
// STATUS= lines with the state and lag when they change, WATCHDOG=1 every half $WATCHDOG_USEC
// only while the pipeline's loop is alive (PipelineStatus::last_tick is recent: a wedged apply
// stops the pings and systemd restarts walshiftd), RELOADING=1 ... READY=1 around a SIGHUP
// reload, and STOPPING=1 on SIGTERM.

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "absl/time/time.h"
#include "daemon/observe/status.h"

namespace walshift {

// Sends one notification ("READY=1\nSTATUS=..."). False when $NOTIFY_SOCKET is unset or the send
// failed (systemd is not listening: nothing to do about it).
bool NotifyServiceManager(const std::string& state);

class ServiceNotifier {
 public:
  // Watches `status` (outliving the notifier) and `stop` from a thread of its own, notifying
  // when $NOTIFY_SOCKET is set. When `reload` becomes true (SIGHUP) the thread clears it and
  // calls `on_reload`, between RELOADING=1 and READY=1.
  ServiceNotifier(PipelineStatus* status, const std::atomic<bool>* stop, std::atomic<bool>* reload,
                  std::function<void()> on_reload);
  ~ServiceNotifier();  // sends STOPPING=1 if not sent yet

  bool enabled() const { return enabled_; }
  // The watchdog interval systemd asked for ($WATCHDOG_USEC for this process), zero when none.
  absl::Duration watchdog() const { return watchdog_; }
 private:
  void Reloading();
  void Reloaded();
  void Loop();

  PipelineStatus* status_;
  const std::atomic<bool>* stop_;
  std::atomic<bool>* reload_;
  std::function<void()> on_reload_;
  bool enabled_ = false;
  absl::Duration watchdog_ = absl::ZeroDuration();
  bool ready_ = false, stopping_ = false;
  std::string last_status_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool quit_ = false;
  std::thread thread_;
};

}  // namespace walshift
