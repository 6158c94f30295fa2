#pragma once
// The `json_array` mapping module: child rows folded into a JSON array of a parent row.
//
//   - source: public.generated_posts
//     module: json_array
//     table: public.generated_content
//     parent_key: {article_id: article_id, category: category}
//     column: content_data
//     element: {legacy_id: id, platform: platform, text: body, hashtags: hashtags}
//     element_key: [legacy_id]
//     sort_by: platform
//
// An element is found by JSON containment of its key (`column @> '[{"legacy_id": 7}]'`), so a
// delete needs only the child's key; a GIN index on the column keeps that fast.

#include <memory>
#include <string>
#include <vector>

#include "daemon/core/interfaces.h"
#include "transforms/json_array/json_array.pb.h"
#include "transforms/module_context.h"

namespace walshift::transforms::json_array {

// kInvalidArgument listing every problem of the config, one per line.
absl::StatusOr<std::unique_ptr<MappingModule>> Create(const JsonArrayConfig& config, const MappingContext& context);

}  // namespace walshift::transforms::json_array
