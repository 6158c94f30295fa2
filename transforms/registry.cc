#include "transforms/registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "transforms/change_log/change_log_module.h"
#include "transforms/columns/columns_module.h"
#include "transforms/json_array/json_array_module.h"
#include "transforms/merge/merge_module.h"
#include "transforms/soft_delete/soft_delete_module.h"
#include "transforms/split/split_module.h"

namespace walshift::transforms {

const std::vector<ModuleEntry>& Modules() {
  // The one list. Add a module here; nothing registers itself.
  static const std::vector<ModuleEntry> kModules = {
      {"columns", &columns::Create,
       "one source row to one target row: rename, const, SQL expression"},
      {"merge", &merge::Create, "several source tables into one target row by a shared key"},
      {"split", &split::Create, "one source row into several target tables"},
      {"json_array", &json_array::Create, "child rows folded into a JSON array of a parent row"},
      // An example of a custom module (see "Writing your own module" in README.md).
      {"change_log", &change_log::Create, "every source change appended to a log table"},
      {"soft_delete", &soft_delete::Create,
       "like columns; a row flagged deleted (is_active = false, deleted_at set) is deleted"},
  };
  return kModules;
}

absl::StatusOr<std::vector<std::shared_ptr<const MappingModule>>> BuildModules(
    const config::Settings& settings, const std::string& file_name) {
  std::vector<std::string> problems;
  std::vector<std::shared_ptr<const MappingModule>> modules;
  for (const auto& m : settings.mappings) {
    const ModuleEntry* entry = nullptr;
    for (const auto& e : Modules())
      if (m.common.module() == e.name) entry = &e;
    if (entry == nullptr) {
      std::string names;
      for (const auto& e : Modules()) absl::StrAppend(&names, names.empty() ? "" : ", ", e.name);
      problems.push_back(absl::StrCat(m.path, ".module: unknown module '", m.common.module(),
                                      "' (known: ", names, ")"));
      continue;
    }
    std::unique_ptr<MappingModule> module = entry->create(settings, m, &problems);
    if (module != nullptr) modules.push_back(std::move(module));
  }
  if (!problems.empty()) return config::ProblemsStatus(file_name, problems);
  // owner: names the mapping of another source that writes the same rows and deletes them whole.
  for (size_t i = 0; i < modules.size(); ++i) {
    auto own = modules[i]->owned();
    if (!own) continue;
    const std::string& path = settings.mappings[i].path;
    std::vector<std::string> why;
    bool found = false;
    for (size_t j = 0; j < modules.size() && !found; ++j) {
      if (j == i || modules[j]->source_table() != own->owner || modules[j]->target() != modules[i]->target()) continue;
      if (modules[j]->owned()) {
        why.push_back(absl::StrCat(settings.mappings[j].path, " has an owner itself"));
        continue;
      }
      absl::Status st = modules[j]->CanOwn(own->table);
      if (st.ok()) {
        found = true;
      } else {
        why.push_back(absl::StrCat(settings.mappings[j].path, ": ", st.message()));
      }
    }
    if (!found) {
      problems.push_back(absl::StrCat(path, ".owner: no mapping of ", own->owner, " in target ",
                                      modules[i]->target(), " can own the rows of ", own->table,
                                      why.empty() ? "" : absl::StrCat(" (", absl::StrJoin(why, "; "), ")")));
    }
  }
  if (!problems.empty()) return config::ProblemsStatus(file_name, problems);
  return modules;
}

}  // namespace walshift::transforms
