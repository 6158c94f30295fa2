#pragma once
// The monitor thread: every monitor.lag_interval_s it reads the source's view (current WAL
// position, the slot's confirmed position, retained WAL, wal_status, safe_wal_size) and
// publishes a LagEvent; every monitor.heartbeat_interval_s, while streaming, it writes a
// heartbeat into the source's WAL (a transactional logical message the pipeline consumes like
// any transaction), so an idle source still advances the slot and the checkpoints. It raises
// and clears the slot's alarms (v1::AlarmKind) in the status: retained WAL past
// monitor.max_retained_wal_bytes (cleared at half of it), wal_status unreserved or lost, a
// slot gone while streaming. /status and /metrics read the source through it too when its
// view is older than a second (PipelineStatus::RefreshSource).

#include <condition_variable>
#include <mutex>
#include <thread>

#include "daemon/config/config.h"
#include "daemon/observe/events.h"
#include "daemon/observe/status.h"
#include "daemon/pg/pg_util.h"

namespace walshift {

inline constexpr char kHeartbeatPrefix[] = "walshift.heartbeat";

class Monitor {
 public:
  Monitor(const config::Settings& settings, PipelineStatus* status, EventPublisher* events);
  ~Monitor();  // stops the thread

  // Stops the thread, then reads the source once more and publishes a last LagEvent (so a
  // stop on a lost slot reports the slot as the source sees it). Idempotent.
  void StopWithFinalReport();

 private:
  void Loop();
  void Stop();
  // One round: reads the source, updates the status and its alarms, publishes a LagEvent.
  void Report();
  void CheckSlot(const SourceView& view);
  void ReadSource(SourceView* view);
  void Heartbeat();

  std::string source_dsn_, slot_, pipeline_;
  absl::Duration lag_interval_, heartbeat_interval_;
  uint64_t max_retained_;
  PipelineStatus* status_;
  EventPublisher* events_;
  pg::ConnPtr conn_;
  std::mutex conn_mu_;  // conn_: the monitor thread and readers of /status (RefreshSource)
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace walshift
