#pragma once
// The `split` mapping module: one source row into several target tables.
//
//   - source: public.users
//     module: split
//     into:
//       - {table: auth.users, key: [user_id], columns: {user_id: id, email: email}}
//       - {table: profile.profiles, key: [user_id], columns: {user_id: id, bio: bio}}

#include <memory>
#include <string>
#include <vector>

#include "daemon/core/interfaces.h"
#include "transforms/module_context.h"
#include "transforms/split/split.pb.h"

namespace walshift::transforms::split {

// kInvalidArgument listing every problem of the config, one per line.
absl::StatusOr<std::unique_ptr<MappingModule>> Create(const SplitConfig& config, const MappingContext& context);

}  // namespace walshift::transforms::split
