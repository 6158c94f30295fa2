#pragma once
// `change_log`: an example of a custom mapping module, written against the same interfaces as
// the built-in ones (daemon/core/interfaces.h). See "Writing your own module" in README.md.
//
//   - source: public.orders
//     module: change_log
//     table: audit.order_changes      # (lsn pg_lsn primary key, operation text, id int)
//     copy: [id]

#include <memory>
#include <string>
#include <vector>

#include "daemon/core/interfaces.h"
#include "transforms/change_log/change_log.pb.h"
#include "transforms/module_context.h"

namespace walshift::transforms::change_log {

// kInvalidArgument listing every problem of the config, one per line.
absl::StatusOr<std::unique_ptr<MappingModule>> Create(const ChangeLogConfig& config, const MappingContext& context);

}  // namespace walshift::transforms::change_log
