#pragma once
// The drift verifier of a document store target: every mapping into the target at once, since
// one document may be written by several of them (merged rows, arrays of child rows).
//
// One pass reads every mapped source table under one snapshot (with the source's WAL position
// L), maps each row as an insert into an in-memory document set through the same operations
// the sink applies (documents::DocumentSet), waits until the store's checkpoint has passed L
// and compares, collection by collection, both ways: a document the set has and the store
// lacks is MISSING, one the store has and the set lacks EXTRA, one that differs MISMATCH (with
// the fields that differ). When a pass finds differences, a second pass (a later snapshot,
// after the store passed its position) decides: a difference found again unchanged is drift;
// one that changed or went away was a change in flight (unsettled, or nothing).
//
// The expected documents are held in memory: about the size of the mapped rows as JSON.

#include <atomic>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/verify/verifier.h"

namespace walshift {

// Verifies the mappings `modules` (indices into options.modules) of documents target
// `target`. One report per collection.
absl::StatusOr<std::vector<VerifyTableReport>> VerifyDocumentTarget(const VerifyOptions& options, size_t target,
                                                                    const std::vector<size_t>& modules,
                                                                    const std::atomic<bool>& stop);

}  // namespace walshift
