#include "daemon/pipeline/leadership.h"

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/core/status_macros.h"
#include "daemon/state/pg_state.h"
#include "spdlog/spdlog.h"

namespace walshift {

Leadership::Leadership(LeadershipOptions options) : options_(std::move(options)) {}
Leadership::~Leadership() = default;

void Leadership::Release() {
  conns_.clear();  // the locks end with their sessions
  epochs_.clear();
  leading_ = false;
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
  struct LetGo {
    Leadership* self;
    bool keep = false;
    ~LetGo() {
      if (!keep) self->Release();
    }
  } let_go{this};
  for (size_t i = 0; i < n; ++i) {
    const std::string what = absl::StrCat("target ", options_.targets[i].first);
    if (!conns_[i] || PQstatus(conns_[i].get()) != CONNECTION_OK) {
      ASSIGN_OR_RETURN(conns_[i], pg::Connect(options_.targets[i].second, what,
                                              absl::StrCat("application_name=walshiftd-leader")));
      RETURN_IF_ERROR(state::EnsureSchema(conns_[i].get(), what));
      // A target that stops answering must not hold the pipeline loop (lease renewals) for long.
      RETURN_IF_ERROR(pg::Exec(conns_[i].get(), "SET statement_timeout = '10s'", what).status());
    }
    PGconn* c = conns_[i].get();
    ASSIGN_OR_RETURN(bool locked, state::TryLeaderLock(c, options_.pipeline, what));
    if (locked) continue;
    ASSIGN_OR_RETURN(state::LeaderRow row, state::ReadLeader(c, options_.pipeline, what));
    leader_ = row.lease_node.empty() ? row.node : row.lease_node;
    leader_epoch_ = row.epoch;
    const double lease_s = absl::ToDoubleSeconds(options_.lease);
    const bool expired = row.lease_age_s < 0 || row.lease_age_s > lease_s;
    if (!expired || row.lock_holders.empty()) return false;
    std::vector<std::string> pids;
    for (int pid : row.lock_holders) pids.push_back(absl::StrCat(pid));
    spdlog::warn(
        "{}: walshiftd {} leads pipeline {} (epoch {}) but has not renewed its lease for {:.1f} s (lease {:.0f} s): "
        "taking over; terminating its session(s) holding the leader lock (pid {})",
        what, leader_.empty() ? "(unnamed)" : leader_, options_.pipeline, row.epoch, row.lease_age_s, lease_s,
        absl::StrJoin(pids, ", "));
    for (const std::string& pid : pids) {
      (void)pg::ExecParams(c, "SELECT pg_catalog.pg_terminate_backend($1::int)", {pid.c_str()}, what);
    }
    for (absl::Time until = absl::Now() + absl::Seconds(5); !locked && absl::Now() < until;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      ASSIGN_OR_RETURN(locked, state::TryLeaderLock(c, options_.pipeline, what));
    }
    if (!locked) return false;
  }
  // Leading on every target: what a replaced leader left open ends, then the epoch moves on, so
  // its later transactions fail the fence.
  epochs_.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const std::string what = absl::StrCat("target ", options_.targets[i].first);
    RETURN_IF_ERROR(state::SettleEarlierWriters(conns_[i].get(), options_.pipeline, what, absl::ZeroDuration()));
    ASSIGN_OR_RETURN(epochs_[i],
                     state::TakeEpoch(conns_[i].get(), options_.pipeline, options_.node, absl::Seconds(5), what));
  }
  let_go.keep = true;
  leading_ = true;
  last_renewal_ = since_ = absl::Now();
  leader_ = options_.node;
  leader_epoch_ = epochs_.empty() ? 0 : epochs_[0];
  std::vector<std::string> where;
  for (size_t i = 0; i < n; ++i) where.push_back(absl::StrCat(options_.targets[i].first, " epoch ", epochs_[i]));
  spdlog::info("pipeline {}: walshiftd {} is the leader ({})", options_.pipeline, options_.node,
               absl::StrJoin(where, ", "));
  return true;
}

absl::Status Leadership::Renew(bool force) {
  if (!leading_) return absl::AbortedError(absl::StrCat("pipeline ", options_.pipeline, ": not the leader"));
  const absl::Time now = absl::Now();
  if (!force && now - last_renewal_ < options_.lease / 3) return absl::OkStatus();
  for (size_t i = 0; i < conns_.size(); ++i) {
    const std::string what = absl::StrCat("target ", options_.targets[i].first);
    PGconn* c = conns_[i].get();
    if (c == nullptr || PQstatus(c) != CONNECTION_OK) {
      return Lost(absl::StrCat("the session holding its leader lock on ", what, " ended"));
    }
    absl::StatusOr<bool> renewed = state::RenewLease(c, options_.pipeline, options_.node, epochs_[i], what);
    if (!renewed.ok()) return Lost(std::string(renewed.status().message()));
    if (!*renewed) {
      absl::StatusOr<state::LeaderRow> row = state::ReadLeader(c, options_.pipeline, what);
      if (row.ok()) {
        leader_ = row->node;
        leader_epoch_ = row->epoch;
      }
      return Lost(absl::StrCat(what, ": walshiftd ", row.ok() ? row->node : "(unknown)", " took over (epoch ",
                               row.ok() ? absl::StrCat(row->epoch) : "?", ")"));
    }
  }
  last_renewal_ = now;
  return absl::OkStatus();
}

}  // namespace walshift
