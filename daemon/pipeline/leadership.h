#pragma once
// Active/standby (ha:): which of several walshiftd running the same pipeline leads.
//
// The leader holds a session-level advisory lock (state::TryLeaderLock) on every target, on
// connections of its own that live as long as it leads, and an epoch in each target's
// walshift.leader that it took when it took over. Its writer sessions carry that epoch, and
// every transaction that commits data checks it (walshift.fence), so a leader that was replaced
// while paused or cut off commits nothing afterwards: the lock decides who should write, the
// epoch makes sure no one else can. The leader renews a lease (walshift.lease) from its pipeline
// loop; a standby takes over when the lock is free (the leader's process or its connections are
// gone) or when the lease ran out by the target's clock (a paused or wedged leader, whose
// sessions it then terminates).
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/pg/pg_util.h"

namespace walshift {

struct LeadershipOptions {
  std::string pipeline;
  std::string node;  // this walshiftd's name (ha.node)
  // The PostgreSQL targets: name and DSN.
  std::vector<std::pair<std::string, std::string>> targets;
  absl::Duration lease = absl::Seconds(15);
};

class Leadership {
 public:
  explicit Leadership(LeadershipOptions options);
  ~Leadership();

  // One attempt to lead. Takes the leader lock on every target, in order; where another holds it
  // and its lease ran out, terminates that holder's sessions first. Holding all of them, it ends
  // the transactions a replaced leader left open and takes a new epoch in every target. true:
  // leading now (epochs() are set). false: another walshiftd leads (leader() names it); nothing
  // is held. kUnavailable when a target cannot be reached (nothing is held).
  absl::StatusOr<bool> TryLead();
  // While leading, renews the lease once a third of it passed since the last renewal (or now
  // when `force`). kAborted when leadership was lost: another took over, or a lock's connection
  // broke (the lock went with it). Cheap when nothing is due.
  absl::Status Renew(bool force);
  // Lets go of every lock (closes the connections).
  void Release();

  bool leading() const { return leading_; }
  const std::vector<int64_t>& epochs() const { return epochs_; }
  const std::string& node() const { return options_.node; }
  // The leader the targets named at the last attempt (node and epoch), for status.
  const std::string& leader() const { return leader_; }
  int64_t leader_epoch() const { return leader_epoch_; }
  absl::Time since() const { return since_; }

 private:
  absl::Status Lost(const std::string& why);

  LeadershipOptions options_;
  std::vector<pg::ConnPtr> conns_;  // one per target, holding the lock while leading
  std::vector<int64_t> epochs_;
  bool leading_ = false;
  absl::Time last_renewal_ = absl::InfinitePast();
  absl::Time since_ = absl::InfinitePast();
  std::string leader_;
  int64_t leader_epoch_ = 0;
};

}  // namespace walshift
