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

#include "daemon/config/config.h"
#include "daemon/core/interfaces.h"

namespace walshift::transforms::split {

std::unique_ptr<MappingModule> Create(const config::Settings& all,
                                      const config::MappingSettings& mapping,
                                      std::vector<std::string>* problems);

}  // namespace walshift::transforms::split
