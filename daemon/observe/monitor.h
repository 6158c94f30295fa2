#pragma once
// The monitor thread: every monitor.lag_interval_s it reads the source's view (current WAL
// position, the slot's confirmed position, retained WAL, wal_status, safe_wal_size) and
// publishes a LagEvent; every monitor.heartbeat_interval_s, while streaming, it writes a
// heartbeat into the source's WAL (a transactional logical message the pipeline consumes like
// any transaction), so an idle source still advances the slot and the checkpoints; it warns
// when the slot retains more WAL than monitor.max_retained_wal_bytes or is lost.

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

 private:
  void Loop();
  void ReadSource(SourceView* view);
  void Heartbeat();

  std::string source_dsn_, slot_, pipeline_;
  absl::Duration lag_interval_, heartbeat_interval_;
  uint64_t max_retained_;
  PipelineStatus* status_;
  EventPublisher* events_;
  pg::ConnPtr conn_;
  bool retained_warned_ = false;
  std::string slot_problem_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace walshift
