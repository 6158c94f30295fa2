#include "daemon/observe/monitor.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/core/slot_loss.h"
#include "daemon/observe/format.h"
#include "spdlog/spdlog.h"

namespace walshift {

Monitor::Monitor(const config::Settings& settings, PipelineStatus* status, EventPublisher* events)
    : source_dsn_(settings.source_dsn),
      slot_(settings.slot),
      pipeline_(settings.proto.pipeline()),
      status_(status),
      events_(events) {
  const auto& m = settings.proto.monitor();
  lag_interval_ = absl::Seconds(m.lag_interval_s() ? m.lag_interval_s() : 5);
  heartbeat_interval_ = absl::Seconds(m.has_heartbeat_interval_s() ? m.heartbeat_interval_s() : 10);  // 0: off
  max_retained_ = m.max_retained_wal_bytes() ? m.max_retained_wal_bytes() : (1ull << 30);
  status_->SetSourceReader([this] {
    SourceView view;
    ReadSource(&view);
    return view;
  });
  thread_ = std::thread([this] { Loop(); });
}

Monitor::~Monitor() {
  status_->SetSourceReader(nullptr);
  Stop();
}

void Monitor::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Monitor::StopWithFinalReport() {
  if (!thread_.joinable()) return;
  Stop();
  Report();
}

void Monitor::ReadSource(SourceView* view) {
  std::lock_guard<std::mutex> lock(conn_mu_);
  view->read_at = absl::Now();
  if (!conn_ || PQstatus(conn_.get()) != CONNECTION_OK) {
    auto c = pg::Connect(source_dsn_, "source", "application_name=walshiftd-monitor");
    if (!c.ok()) {
      view->error = std::string(c.status().message());
      return;
    }
    conn_ = *std::move(c);
  }
  auto r = pg::ExecParams(conn_.get(),
                          "SELECT pg_current_wal_lsn()::text, s.confirmed_flush_lsn::text, s.wal_status, "
                          "s.safe_wal_size::text, pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint::text, "
                          "s.slot_name IS NOT NULL FROM (SELECT 1) one "
                          "LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
                          {slot_.c_str()}, "source: reading the slot");
  if (!r.ok()) {
    view->error = std::string(r.status().message());
    conn_.reset();
    return;
  }
  PGresult* res = r->get();
  view->reachable = true;
  view->current = ParseLsn(PQgetvalue(res, 0, 0)).value_or(kInvalidLsn);
  view->confirmed = ParseLsn(PQgetvalue(res, 0, 1)).value_or(kInvalidLsn);
  view->wal_status = PQgetvalue(res, 0, 2);
  if (!absl::SimpleAtoi(PQgetvalue(res, 0, 3), &view->safe_wal_size)) view->safe_wal_size = -1;
  int64_t retained = 0;
  if (absl::SimpleAtoi(PQgetvalue(res, 0, 4), &retained) && retained > 0) view->retained_bytes = retained;
  view->slot_exists = PQgetvalue(res, 0, 5)[0] == 't';
}

void Monitor::Heartbeat() {
  std::lock_guard<std::mutex> lock(conn_mu_);
  if (!conn_) return;
  auto r = pg::ExecParams(conn_.get(), "SELECT pg_logical_emit_message(true, $1, $2)",
                          {kHeartbeatPrefix, pipeline_.c_str()}, "source: writing a heartbeat");
  if (!r.ok()) {
    spdlog::warn(
        "{} (heartbeats need EXECUTE on pg_logical_emit_message: walshiftd --check names the grant)",
        std::string(r.status().message()));
    conn_.reset();
  }
}

void Monitor::Loop() {
  absl::Time next_lag = absl::Now(), next_heartbeat = absl::Now() + heartbeat_interval_;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      absl::Time wake = heartbeat_interval_ > absl::ZeroDuration() ? std::min(next_lag, next_heartbeat) : next_lag;
      cv_.wait_for(lock, absl::ToChronoMilliseconds(std::max(absl::ZeroDuration(), wake - absl::Now())),
                   [&] { return stopping_; });
      if (stopping_) return;
    }
    absl::Time now = absl::Now();
    if (heartbeat_interval_ > absl::ZeroDuration() && now >= next_heartbeat) {
      if (status_->state() == v1::STREAMING) Heartbeat();
      next_heartbeat = now + heartbeat_interval_;
    }
    if (now < next_lag) continue;
    next_lag = now + lag_interval_;
    Report();
  }
}

void Monitor::Report() {
  SourceView view;
  ReadSource(&view);
  status_->SetSource(view);
  status_->SetKafka(events_->view());
  // ha: only the leader raises slot alarms and reports lag (a standby's would repeat them, with
  // an applied position that no longer moves).
  if (!status_->leading()) return;
  CheckSlot(view);
  events_->Publish(status_->Lag(/*advance_rates=*/true));
}

void Monitor::CheckSlot(const SourceView& view) {
  if (!view.reachable) return;  // nothing known: alarms stay as they are
  const std::string slot = absl::StrCat("replication slot ", slot_);
  if (!view.slot_exists && status_->state() == v1::STREAMING) {
    status_->RaiseAlarm(v1::SLOT_MISSING,
                        absl::StrCat(slot, " no longer exists: the changes after the targets' checkpoints are lost"));
  } else if (view.slot_exists) {
    status_->ClearAlarm(v1::SLOT_MISSING, absl::StrCat(slot, " exists again"));
  }
  if (view.wal_status == "lost") {
    status_->RaiseAlarm(v1::SLOT_LOST,
                        absl::StrCat(slot,
                                     " was invalidated (wal_status lost): the source removed WAL it still needed "
                                     "(max_slot_wal_keep_size), so changes after the targets' checkpoints are gone. ",
                                     SlotRebuildProcedure(slot_, pipeline_)));
  }
  if (view.wal_status == "unreserved") {
    status_->RaiseAlarm(
        v1::SLOT_UNRESERVED,
        absl::StrCat(slot, " retains more WAL than max_slot_wal_keep_size allows; it will be invalidated at the ",
                     "source's next checkpoint unless the pipeline catches up"));
  } else if (view.slot_exists && view.wal_status != "lost") {
    status_->ClearAlarm(v1::SLOT_UNRESERVED, absl::StrCat(slot, " is within max_slot_wal_keep_size again (wal_status ",
                                                          view.wal_status, ")"));
  }
  if (max_retained_ == 0 || !view.slot_exists) return;
  if (view.retained_bytes > max_retained_) {
    status_->RaiseAlarm(
        v1::RETAINED_WAL,
        absl::StrCat(slot, " retains ", HumanBytes(view.retained_bytes), " of WAL on the source (threshold ",
                     HumanBytes(max_retained_), "); the source's disk fills while walshift is behind",
                     view.safe_wal_size >= 0
                         ? absl::StrCat(", ", HumanBytes(view.safe_wal_size), " left before the slot is invalidated")
                         : ""));
  } else if (view.retained_bytes <= max_retained_ / 2) {
    status_->ClearAlarm(v1::RETAINED_WAL,
                        absl::StrCat(slot, " retains ", HumanBytes(view.retained_bytes),
                                     " of WAL, at most half of the threshold ", HumanBytes(max_retained_)));
  }
}

}  // namespace walshift
