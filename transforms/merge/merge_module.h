#pragma once
// The `merge` mapping module: several legacy tables merged into one target row by a shared key.
//
//   - source: public.content_metadata
//     module: merge
//     table: public.content_queue
//     key: [decision_id]
//     columns: {decision_id: decision_id, title: title}
//     on_delete: delete_when_last      # null_columns (default), delete_when_last, delete_row
//   - source: public.content_generation
//     module: merge
//     table: public.content_queue
//     key: [decision_id]
//     columns: {decision_id: decision_id, body: generated_text}
//     on_delete: delete_when_last
//
// "delete_when_last" deletes the row when none of the columns that the merge mappings of the
// table own holds a value any more.

#include <memory>
#include <string>
#include <vector>

#include "daemon/core/interfaces.h"
#include "transforms/merge/merge.pb.h"
#include "transforms/module_context.h"

namespace walshift::transforms::merge {

// kInvalidArgument listing every problem of the config, one per line.
absl::StatusOr<std::unique_ptr<MappingModule>> Create(const MergeConfig& config, const MappingContext& context);

}  // namespace walshift::transforms::merge
