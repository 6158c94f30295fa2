#include "daemon/core/slot_loss.h"

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace walshift {
namespace {
constexpr char kPayload[] = "walshift/slot-lost";
}  // namespace

absl::Status SlotLost(absl::Status status) {
  status.SetPayload(kPayload, absl::Cord("1"));
  return status;
}

bool IsSlotLost(const absl::Status& status) { return status.GetPayload(kPayload).has_value(); }

std::string SlotRebuildProcedure(const std::string& slot, const std::string& pipeline) {
  return absl::StrCat(
      "To rebuild the pipeline: (1) keep walshiftd stopped; (2) on the source: SELECT pg_drop_replication_slot('", slot,
      "') (if it still exists); (3) in every PostgreSQL target: DELETE FROM walshift.checkpoint WHERE pipeline = '",
      pipeline, "'; DELETE FROM walshift.copy_chunk WHERE pipeline = '", pipeline,
      "'; DELETE FROM walshift.backfill WHERE pipeline = '", pipeline,
      "'; (in a document store target: remove its _walshift directory); (4) start walshiftd: it creates the slot and "
      "copies every mapped table again, overwriting the rows the targets have; (5) once it streams, run walshiftctl "
      "verify --config FILE --repair, which deletes the target rows whose source rows were deleted meanwhile, and "
      "repeat until it exits 0. Raise max_slot_wal_keep_size (or set monitor.max_retained_wal_bytes well below it "
      "and act on its alarm) so that it does not happen again.");
}

}  // namespace walshift
