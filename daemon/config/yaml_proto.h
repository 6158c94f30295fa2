#pragma once
// Strict YAML → protobuf: fills a message from a YAML node by field name, reporting every
// problem with its key path ("mappings[0].columns.total: unknown key 'sq'"). yaml-cpp throws;
// this is the one place that catches.

#include <string>
#include <vector>

#include "google/protobuf/message.h"
#include "yaml-cpp/yaml.h"

namespace walshift::config {

// Appends one error per problem to `errors`; never stops at the first. When `leftover_keys` is
// non-null, keys the message does not know are collected there instead of being errors (a
// mapping's module-specific keys). Checks `(walshift.v1.required)` fields after filling.
void ParseYamlInto(const YAML::Node& node, google::protobuf::Message* message, const std::string& path,
                   std::vector<std::string>* errors, std::vector<std::string>* leftover_keys = nullptr);

// Loads a YAML document from text; on a syntax error returns a null node and appends
// "FILE:LINE:COL: message" to errors.
YAML::Node LoadYaml(const std::string& text, const std::string& file_name, std::vector<std::string>* errors);

// "a.b" / "a[3]" path helpers.
std::string JoinPath(const std::string& path, const std::string& key);
std::string IndexPath(const std::string& path, size_t index);

}  // namespace walshift::config
