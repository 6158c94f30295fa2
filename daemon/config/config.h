#pragma once
// Loading and validating the walshiftd configuration file. All problems are reported at once.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "walshift/v1/config.pb.h"
#include "yaml-cpp/yaml.h"

namespace walshift::config {

struct TargetSettings {
  std::string name;
  std::string dsn;  // resolved; contains secrets: never log it, use pg::RedactDsn
  v1::TargetKind kind = v1::TARGET_POSTGRES;
  std::string path;  // documents: the store's directory
  bool documents() const { return kind == v1::TARGET_DOCUMENTS; }
};

// One mapping: the common keys, and the module's own keys as a YAML node for its factory.
struct MappingSettings {
  v1::Mapping common;      // source normalized to schema.table; target and module defaulted
  YAML::Node module_node;  // a mapping holding only the module-specific keys
  std::string path;        // "mappings[3]" for messages
};

struct Settings {
  v1::Config proto;
  std::string source_dsn;  // resolved; a secret
  std::string slot;
  std::string publication;
  std::vector<TargetSettings> targets;
  std::vector<MappingSettings> mappings;
  // libpq parameters for every connection ("connect_timeout=10 keepalives=1 ..."): `network:`
  // with its defaults filled in. Passed to pg::SetConnectionDefaults(); a DSN's own values win.
  std::string connection_defaults;
  // source.receive_timeout_s with its default (60); 0: off.
  uint32_t receive_timeout_s = 60;
  // status.token_file's token (a secret), empty when none.
  std::string status_token;
  // kafka.properties given as NAME_env / NAME_file (SASL passwords, key passwords): NAME and the
  // secret it resolved to. They are removed from proto, which holds no secret.
  std::vector<std::pair<std::string, std::string>> kafka_secrets;
};

// Reads, parses and validates the file. On any problem returns kInvalidArgument whose message
// lists every problem, one per line, each naming its key path. Never includes DSN contents.
absl::StatusOr<Settings> LoadSettingsFile(const std::string& path);
absl::StatusOr<Settings> LoadSettingsText(const std::string& text, const std::string& file_name);

// A secret held in file `file` (trimmed); a relative name is read from $CREDENTIALS_DIRECTORY
// when set. Adds a problem naming `key` when it cannot be read or is empty.
std::string ReadSecretFile(const std::string& file, const std::string& key, std::vector<std::string>* problems);

// Joins problems into one kInvalidArgument status ("N problems in FILE:\n  - ...").
absl::Status ProblemsStatus(const std::string& file_name, const std::vector<std::string>& problems);

}  // namespace walshift::config
