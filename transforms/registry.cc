#include "transforms/registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "daemon/config/yaml_proto.h"
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
      Module("columns", &columns::Create, "one source row to one target row: rename, const, SQL expression"),
      Module("merge", &merge::Create, "several source tables into one target row by a shared key"),
      Module("split", &split::Create, "one source row into several target tables"),
      Module("json_array", &json_array::Create, "child rows folded into a JSON array of a parent row"),
      // An example of a custom module (see "Writing your own module" in README.md).
      Module("change_log", &change_log::Create, "every source change appended to a log table"),
      Module("soft_delete", &soft_delete::Create,
             "like columns; a row flagged deleted (is_active = false, deleted_at set) is deleted"),
  };
  return kModules;
}

absl::StatusOr<std::vector<std::shared_ptr<const MappingModule>>> BuildModules(const config::Settings& settings,
                                                                               const std::string& file_name) {
  std::vector<std::string> problems;
  std::vector<std::shared_ptr<const MappingModule>> modules;
  // Every mapping's config first, so that factories see their siblings typed.
  std::vector<MappingInfo> infos;
  std::vector<const ModuleEntry*> entries;
  for (const auto& m : settings.mappings) {
    MappingInfo info;
    info.path = m.path;
    info.common = m.common;
    const ModuleEntry* entry = nullptr;
    for (const auto& e : Modules())
      if (m.common.module() == e.name) entry = &e;
    if (entry == nullptr) {
      std::string names;
      for (const auto& e : Modules()) absl::StrAppend(&names, names.empty() ? "" : ", ", e.name);
      problems.push_back(
          absl::StrCat(m.path, ".module: unknown module '", m.common.module(), "' (known: ", names, ")"));
    } else {
      std::unique_ptr<google::protobuf::Message> cfg = entry->new_config();
      size_t before = problems.size();
      config::ParseYamlInto(m.module_node, cfg.get(), m.path, &problems);  // strict: unknown keys fail
      if (problems.size() == before) info.config = std::move(cfg);
    }
    infos.push_back(std::move(info));
    entries.push_back(entry);
  }
  for (size_t i = 0; i < infos.size(); ++i) {
    if (entries[i] == nullptr || infos[i].config == nullptr) continue;
    auto module = entries[i]->create(*infos[i].config, MappingContext{infos[i], infos});
    if (!module.ok()) {
      for (absl::string_view line : absl::StrSplit(module.status().message(), '\n')) problems.emplace_back(line);
      continue;
    }
    modules.push_back(*std::move(module));
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
      problems.push_back(absl::StrCat(path, ".owner: no mapping of ", own->owner, " in target ", modules[i]->target(),
                                      " can own the rows of ", own->table,
                                      why.empty() ? "" : absl::StrCat(" (", absl::StrJoin(why, "; "), ")")));
    }
  }
  if (!problems.empty()) return config::ProblemsStatus(file_name, problems);
  return modules;
}

}  // namespace walshift::transforms
