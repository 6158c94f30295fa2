#include "daemon/core/target_op.h"

#include <atomic>

namespace walshift {

const char* OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kUpsert:
      return "upsert";
    case OpKind::kDelete:
      return "delete";
    case OpKind::kUpdateOnly:
      return "update";
    case OpKind::kTruncate:
      return "truncate";
    case OpKind::kClearColumns:
      return "clear";
    case OpKind::kArrayUpsert:
      return "array element upsert";
    case OpKind::kArrayRemove:
      return "array element removal";
  }
  return "?";
}

uint32_t NextOpShapeId() {
  static std::atomic<uint32_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace walshift
