#pragma once
// Active/standby (ha:): which of several walshiftd running the same pipeline leads.
//
// The leader holds a session-level advisory lock (state::TryLeaderLock) on every target, on
// connections of its own that live as long as it leads, and an epoch in each target's
// walshift.leader that it took when it took over. Its writer sessions carry that epoch, and
// every transaction that commits data checks it (walshift.fence), so a leader that was replaced
// while paused or cut off commits nothing afterwards: the lock decides who should write, the
// epoch makes sure no one else can. The leader renews a lease (walshift.lease) from a thread of
// its own, as long as its pipeline loop turned within `loop_bound` (a loop wedged for longer
// loses the lease; a long but live step, such as a large streamed transaction, does not). A
// standby takes over when the lock is free (the leader's process or its connections are gone),
// or when the lease ran out by the target's clock and the holder's session has been silent as
// long (a paused or wedged leader, whose sessions it then terminates).
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
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
  // When the pipeline loop last turned (PipelineStatus::last_tick), and how long ago that may
  // be for the lease to be renewed.
  std::function<absl::Time()> last_tick;
  absl::Duration loop_bound = absl::Seconds(60);
};

class Leadership {
 public:
  explicit Leadership(LeadershipOptions options);
  ~Leadership();

  // One attempt to lead. Takes the leader lock on every target, in order; where another holds it
  // and its lease ran out, terminates that holder's sessions first. Holding all of them, it ends
  // the sessions a replaced leader left (its writers) and takes a new epoch in every target.
  // true: leading now (epochs() are set, the lease is renewed from now on). false: another
  // walshiftd leads (leader() names it); nothing is held. kUnavailable when a target cannot be
  // reached (nothing is held).
  absl::StatusOr<bool> TryLead();
  // While leading: OK while the lease holds; kAborted once leadership was lost (another took
  // over, or a lock's connection broke: the lock went with it). `force` renews now, from this
  // thread, instead of reading what the renewing thread found.
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
  // One renewal on every target; mu_ held. Empty when it holds, else why it was lost.
  std::string RenewLocked();
  void RenewLoop();
  absl::Status Lost(const std::string& why);
  // Lets go of the locks but keeps the connections (a standby's next attempt reuses them).
  void Unlock();

  LeadershipOptions options_;
  std::mutex mu_;                   // conns_ while leading (the renewing thread uses them)
  std::vector<pg::ConnPtr> conns_;  // one per target, holding the lock while leading
  std::vector<int64_t> epochs_;
  bool leading_ = false;
  absl::Time since_ = absl::InfinitePast();
  std::string leader_;
  int64_t leader_epoch_ = 0;
  // The renewing thread, and what it found.
  std::thread renewer_;
  std::condition_variable wake_;
  bool stop_renewing_ = false;  // mu_
  std::string lost_;            // mu_: why leadership was lost (empty: it holds)
};

}  // namespace walshift
