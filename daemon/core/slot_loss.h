#pragma once
// A replication slot that lost changes (invalidated by max_slot_wal_keep_size, or dropped while
// the targets hold checkpoints) cannot be resumed: the pipeline must be rebuilt. Such an error
// carries a payload, so walshiftd exits with its own code (kExitSlotLost) whatever wraps it,
// and its message carries the procedure.

#include <string>

#include "absl/status/status.h"

namespace walshift {

// walshiftd's exit code for a lost or missing slot (0 signal, 1 needs a person, 2 bad config).
inline constexpr int kExitSlotLost = 3;

// `status` marked as a lost slot.
absl::Status SlotLost(absl::Status status);
bool IsSlotLost(const absl::Status& status);

// How to rebuild `pipeline` after its slot `slot` lost changes, in walshift's own terms.
std::string SlotRebuildProcedure(const std::string& slot, const std::string& pipeline);

}  // namespace walshift
