#include "daemon/pipeline/leadership.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/core/status_macros.h"
#include "daemon/state/pg_state.h"
#include "spdlog/spdlog.h"

namespace walshift {

Leadership::Leadership(LeadershipOptions options) : options_(std::move(options)) {}
Leadership::~Leadership() { Release(); }

void Leadership::Release() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_renewing_ = true;
  }
  wake_.notify_all();
  if (renewer_.joinable()) renewer_.join();
  std::lock_guard<std::mutex> lock(mu_);
  conns_.clear();  // the locks end with their sessions
  epochs_.clear();
  leading_ = false;
}

void Leadership::Unlock() {
  for (size_t i = 0; i < conns_.size(); ++i) {
    if (!conns_[i]) continue;
    // A session that cannot let go cleanly is closed: the lock goes with it.
    if (!state::ReleaseLeaderLock(conns_[i].get(), options_.targets[i].first).ok()) conns_[i].reset();
  }
}

absl::Status Leadership::Lost(const std::string& why) {
  Release();
  spdlog::warn("pipeline {}: walshiftd {} is no longer the leader: {}; standing by", options_.pipeline, options_.node,
               why);
  return absl::AbortedError(absl::StrCat("pipeline ", options_.pipeline, ": this walshiftd (", options_.node,
                                         ") is no longer the leader: ", why));
}

absl::StatusOr<bool> Leadership::TryLead() {
  if (leading_) return true;
  const size_t n = options_.targets.size();
  conns_.resize(n);
  // Any failure below lets go of what is held: a lock on some targets only is no leadership.
  // The connections stay for the next attempt, unless one failed.
  struct LetGo {
    Leadership* self;
    bool keep = false;
    ~LetGo() {
      if (!keep) self->Unlock();
    }
  } let_go{this};
  for (size_t i = 0; i < n; ++i) {
    const std::string what = absl::StrCat("target ", options_.targets[i].first);
    if (!conns_[i] || PQstatus(conns_[i].get()) != CONNECTION_OK) {
      conns_[i].reset();
      ASSIGN_OR_RETURN(pg::ConnPtr c, pg::Connect(options_.targets[i].second, what,
                                                  absl::StrCat("application_name=walshiftd-leader")));
      RETURN_IF_ERROR(state::EnsureSchema(c.get(), what));
      // A target that stops answering must not hold a renewal (or an attempt) for long.
      RETURN_IF_ERROR(pg::Exec(c.get(), "SET statement_timeout = '10s'", what).status());
      conns_[i] = std::move(c);
    }
    PGconn* c = conns_[i].get();
    absl::StatusOr<bool> locked = state::TryLeaderLock(c, options_.pipeline, what);
    if (!locked.ok()) conns_[i].reset();
    RETURN_IF_ERROR(locked.status());
    if (*locked) continue;
    ASSIGN_OR_RETURN(state::LeaderRow row, state::ReadLeader(c, options_.pipeline, what));
    leader_ = row.lease_node.empty() ? row.node : row.lease_node;
    leader_epoch_ = row.epoch;
    if (!row.expired() || row.lock_holders.empty()) return false;
    std::vector<std::string> pids;
    for (int pid : row.lock_holders) pids.push_back(absl::StrCat(pid));
    spdlog::warn(
        "{}: walshiftd {} leads pipeline {} (epoch {}) but has not renewed its lease for {:.1f} s (lease {} s): "
        "taking over; terminating its session(s) holding the leader lock (pid {})",
        what, leader_.empty() ? "(unnamed)" : leader_, options_.pipeline, row.epoch, row.lease_age_s, row.lease_s,
        absl::StrJoin(pids, ", "));
    for (const std::string& pid : pids) {
      auto r = pg::ExecParams(c, "SELECT pg_catalog.pg_terminate_backend($1::int)", {pid.c_str()}, what);
      if (!r.ok() || std::string_view(PQgetvalue(r->get(), 0, 0)) != "t") {
        spdlog::error(
            "{}: cannot terminate pid {} of walshiftd {} ({}): a standby needs the same role as the leader, or "
            "pg_signal_backend, to take over from a leader that stopped renewing its lease",
            what, pid, leader_, r.ok() ? "pg_terminate_backend returned false" : std::string(r.status().message()));
      }
    }
    for (absl::Time until = absl::Now() + absl::Seconds(5); !*locked && absl::Now() < until;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      locked = state::TryLeaderLock(c, options_.pipeline, what);
      if (!locked.ok()) conns_[i].reset();
      RETURN_IF_ERROR(locked.status());
    }
    if (!*locked) return false;
  }
  // Leading on every target: the sessions a replaced leader left end, then the epoch moves on,
  // so that nothing it still sends can commit.
  std::vector<int64_t> epochs(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const std::string what = absl::StrCat("target ", options_.targets[i].first);
    RETURN_IF_ERROR(state::EndOtherWriters(conns_[i].get(), options_.pipeline, what));
    ASSIGN_OR_RETURN(epochs[i], state::TakeEpoch(conns_[i].get(), options_.pipeline, options_.node, options_.lease,
                                                 absl::Seconds(5), what));
  }
  let_go.keep = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    epochs_ = epochs;
    leading_ = true;
    lost_.clear();
    stop_renewing_ = false;
  }
  since_ = absl::Now();
  leader_ = options_.node;
  leader_epoch_ = epochs.empty() ? 0 : epochs[0];
  renewer_ = std::thread([this] { RenewLoop(); });
  std::vector<std::string> where;
  for (size_t i = 0; i < n; ++i) where.push_back(absl::StrCat(options_.targets[i].first, " epoch ", epochs[i]));
  spdlog::info("pipeline {}: walshiftd {} is the leader ({})", options_.pipeline, options_.node,
               absl::StrJoin(where, ", "));
  return true;
}

std::string Leadership::RenewLocked() {
  for (size_t i = 0; i < conns_.size(); ++i) {
    const std::string what = absl::StrCat("target ", options_.targets[i].first);
    PGconn* c = conns_[i].get();
    if (c == nullptr || PQstatus(c) != CONNECTION_OK) {
      return absl::StrCat("the session holding its leader lock on ", what, " ended");
    }
    absl::StatusOr<bool> renewed = state::RenewLease(c, options_.pipeline, options_.node, epochs_[i], what);
    if (!renewed.ok()) return std::string(renewed.status().message());
    if (!*renewed) {
      absl::StatusOr<state::LeaderRow> row = state::ReadLeader(c, options_.pipeline, what);
      return absl::StrCat(what, ": walshiftd ", row.ok() ? row->node : "(unknown)", " took over (epoch ",
                          row.ok() ? absl::StrCat(row->epoch) : "?", ")");
    }
  }
  return "";
}

void Leadership::RenewLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_renewing_ && lost_.empty()) {
    wake_.wait_for(lock, absl::ToChronoMilliseconds(options_.lease / 3), [this] { return stop_renewing_; });
    if (stop_renewing_) break;
    // A pipeline loop wedged for longer than loop_bound lets the lease run out: a standby then
    // takes over from this process, whose writes its new epoch fences.
    if (options_.last_tick && absl::Now() - options_.last_tick() > options_.loop_bound) {
      spdlog::warn("pipeline {}: the pipeline loop has not turned for more than {}; the leader's lease is not renewed",
                   options_.pipeline, absl::FormatDuration(options_.loop_bound));
      continue;
    }
    lost_ = RenewLocked();
  }
}

absl::Status Leadership::Renew(bool force) {
  std::string lost;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!leading_) return absl::AbortedError(absl::StrCat("pipeline ", options_.pipeline, ": not the leader"));
    if (force && lost_.empty()) lost_ = RenewLocked();
    lost = lost_;
  }
  if (lost.empty()) return absl::OkStatus();
  // Who leads now, for status (a best effort: the connection may be the one that broke).
  for (size_t i = 0; i < conns_.size(); ++i) {
    if (!conns_[i] || PQstatus(conns_[i].get()) != CONNECTION_OK) continue;
    absl::StatusOr<state::LeaderRow> row = state::ReadLeader(conns_[i].get(), options_.pipeline, "target");
    if (row.ok() && row->epoch > 0) {
      leader_ = row->node;
      leader_epoch_ = row->epoch;
      break;
    }
  }
  return Lost(lost);
}

}  // namespace walshift
