#pragma once
// The `soft_delete` mapping module: a `columns` mapping whose rows are deleted from the target
// while a flag or timestamp column of the source row says "deleted".
//
//   - source: public.collections
//     module: soft_delete
//     table: app.project_collections
//     key: [collection_id]
//     columns: {collection_id: id, project_id: project_id, name: title}
//     flag: is_active
//     deleted_when: false          # false (default), true, not_null, null

#include <memory>
#include <string>
#include <vector>

#include "daemon/core/interfaces.h"
#include "transforms/module_context.h"
#include "transforms/soft_delete/soft_delete.pb.h"

namespace walshift::transforms::soft_delete {

// kInvalidArgument listing every problem of the config, one per line.
absl::StatusOr<std::unique_ptr<MappingModule>> Create(const SoftDeleteConfig& config, const MappingContext& context);

}  // namespace walshift::transforms::soft_delete
