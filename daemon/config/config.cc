#include "daemon/config/config.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "daemon/config/yaml_proto.h"
#include "daemon/core/change.h"
#include <sys/stat.h>

namespace walshift::config {
namespace {

// Reads a regular file (a symlink to one, as Kubernetes secrets are, included), at most
// `max_bytes` + 1 bytes: a device, a FIFO or a directory is refused rather than read, so that
// nothing named here can hang or exhaust the loader. Empty `*error` on success.
bool ReadFile(const std::string& path, std::string* out, size_t max_bytes, std::string* error) {
  error->clear();
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    *error = std::strerror(errno);
    return false;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    *error = S_ISDIR(st.st_mode) ? "it is a directory" : "not a regular file";
    ::close(fd);
    return false;
  }
  out->clear();
  char buf[1 << 16];
  while (out->size() <= max_bytes) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) *error = std::strerror(errno);
    if (n <= 0) break;
    out->append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return error->empty();
}

constexpr size_t kMaxConfigBytes = 64 << 20;
constexpr size_t kMaxDsnFileBytes = 64 << 10;

}  // namespace

// A secret held in a file (a DSN, a token), trimmed. Under systemd a relative name is a
// credential (LoadCredential=): in $CREDENTIALS_DIRECTORY.
std::string ReadSecretFile(const std::string& file, const std::string& key, std::vector<std::string>* problems) {
  std::string text;
  std::string error;
  std::string name = file;
  const char* credentials = std::getenv("CREDENTIALS_DIRECTORY");
  if (name[0] != '/' && credentials != nullptr && *credentials != '\0') name = absl::StrCat(credentials, "/", file);
  if (!ReadFile(name, &text, kMaxDsnFileBytes, &error)) {
    problems->push_back(absl::StrCat(key, ": cannot read ", name, ": ", error));
    return "";
  }
  if (text.size() > kMaxDsnFileBytes) {
    problems->push_back(absl::StrCat(key, ": ", file, " holds more than 64 KiB: not a secret"));
    return "";
  }
  std::string trimmed(absl::StripAsciiWhitespace(text));
  if (trimmed.empty()) problems->push_back(absl::StrCat(key, ": ", file, " is empty"));
  return trimmed;
}

namespace {

// Resolves exactly one of dsn / dsn_env / dsn_file.
std::string ResolveDsn(const std::string& dsn, const std::string& env, const std::string& file, const std::string& path,
                       std::vector<std::string>* problems) {
  int given = !dsn.empty() + !env.empty() + !file.empty();
  if (given == 0) {
    problems->push_back(absl::StrCat(path, ": one of dsn, dsn_env or dsn_file is required"));
    return "";
  }
  if (given > 1) {
    problems->push_back(absl::StrCat(path, ": give only one of dsn, dsn_env and dsn_file"));
    return "";
  }
  if (!dsn.empty()) return dsn;
  if (!env.empty()) {
    const char* v = std::getenv(env.c_str());
    if (v == nullptr || *v == '\0') {
      problems->push_back(absl::StrCat(path, ".dsn_env: environment variable ", env, " is not set or empty"));
      return "";
    }
    return v;
  }
  return ReadSecretFile(file, absl::StrCat(path, ".dsn_file"), problems);
}

bool ValidName(absl::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  for (char c : s)
    if (!(absl::ascii_isalnum(c) || c == '_' || c == '-' || c == '.')) return false;
  return true;
}

std::string DefaultObjectName(const std::string& pipeline) {
  std::string out = "walshift_";
  for (char c : pipeline) out += absl::ascii_isalnum(c) ? absl::ascii_tolower(c) : '_';
  return out.substr(0, 63);
}

// The libpq parameters of `network:` with their defaults, as a key=value connection string.
std::string ConnectionDefaults(const v1::NetworkConfig& n, std::vector<std::string>* problems) {
  auto checked = [&](const char* key, bool has, uint32_t value, uint32_t fallback, uint32_t lo, uint32_t hi) {
    uint32_t v = has ? value : fallback;
    if (v < lo || v > hi) {
      problems->push_back(absl::StrCat("network.", key, ": ", v, " is out of range (", lo, "..", hi, ")"));
    }
    return v;
  };
  uint32_t connect = checked("connect_timeout_s", n.has_connect_timeout_s(), n.connect_timeout_s(), 10, 0, 3600);
  uint32_t idle = checked("keepalives_idle_s", n.has_keepalives_idle_s(), n.keepalives_idle_s(), 30, 1, 86400);
  uint32_t interval =
      checked("keepalives_interval_s", n.has_keepalives_interval_s(), n.keepalives_interval_s(), 10, 1, 3600);
  uint32_t count = checked("keepalives_count", n.has_keepalives_count(), n.keepalives_count(), 3, 1, 100);
  uint32_t user =
      checked("tcp_user_timeout_ms", n.has_tcp_user_timeout_ms(), n.tcp_user_timeout_ms(), 60000, 0, 3600000);
  if (connect == 1) {
    // libpq rounds a connect_timeout of 1 up to 2 seconds; say so rather than surprise.
    problems->push_back("network.connect_timeout_s: 1 is out of range (0 for no limit, or 2..3600)");
  }
  bool on = n.has_keepalives() ? n.keepalives() : true;
  return absl::StrCat("connect_timeout=", connect, " keepalives=", on ? 1 : 0, " keepalives_idle=", idle,
                      " keepalives_interval=", interval, " keepalives_count=", count, " tcp_user_timeout=", user);
}

}  // namespace

absl::Status ProblemsStatus(const std::string& file_name, const std::vector<std::string>& problems) {
  return absl::InvalidArgumentError(absl::StrCat(problems.size(), problems.size() == 1 ? " problem" : " problems",
                                                 " in ", file_name, ":\n  - ", absl::StrJoin(problems, "\n  - ")));
}

absl::StatusOr<Settings> LoadSettingsFile(const std::string& path) {
  std::string text;
  std::string error;
  if (!ReadFile(path, &text, kMaxConfigBytes, &error)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read config file ", path, ": ", error));
  }
  if (text.size() > kMaxConfigBytes) {
    return absl::InvalidArgumentError(absl::StrCat("config file ", path, " is larger than 64 MiB"));
  }
  return LoadSettingsText(text, path);
}

absl::StatusOr<Settings> LoadSettingsText(const std::string& text, const std::string& file_name) {
  std::vector<std::string> problems;
  YAML::Node root = LoadYaml(text, file_name, &problems);
  if (!problems.empty()) return ProblemsStatus(file_name, problems);
  if (!root.IsMap()) {
    return ProblemsStatus(file_name, {"the file must be a YAML mapping with pipeline, source, "
                                      "targets and mappings"});
  }

  Settings s;
  // The mappings' module keys are parsed by the modules; parse the rest here.
  YAML::Node top = YAML::Clone(root);
  YAML::Node mappings_node = root["mappings"];
  if (mappings_node) top.remove("mappings");
  ParseYamlInto(top, &s.proto, "", &problems);
  // ParseYamlInto reported "mappings: required key missing" only if absent from `top`, which
  // it always is now; drop that line and check below.
  std::erase_if(problems, [](const std::string& p) { return p.rfind("mappings: required", 0) == 0; });

  if (!s.proto.pipeline().empty() && !ValidName(s.proto.pipeline())) {
    problems.push_back(
        absl::StrCat("pipeline: '", s.proto.pipeline(), "' must be 1-63 letters, digits, '_', '-' or '.'"));
  }
  if (s.proto.has_source()) {
    const auto& src = s.proto.source();
    s.source_dsn = ResolveDsn(src.dsn(), src.dsn_env(), src.dsn_file(), "source", &problems);
    s.slot = src.slot().empty() ? DefaultObjectName(s.proto.pipeline()) : src.slot();
    s.publication = src.publication().empty() ? DefaultObjectName(s.proto.pipeline()) : src.publication();
    for (char c : s.slot) {
      if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '_')) {
        problems.push_back(
            absl::StrCat("source.slot: '", s.slot, "' may contain only lower case letters, digits and '_'"));
        break;
      }
    }
    if (src.feedback_interval_s() > 10) {
      problems.push_back("source.feedback_interval_s: at most 10 seconds");
    }
    if (src.has_receive_timeout_s()) {
      s.receive_timeout_s = src.receive_timeout_s();
      if (s.receive_timeout_s == 1 || s.receive_timeout_s > 3600) {
        problems.push_back(absl::StrCat("source.receive_timeout_s: ", s.receive_timeout_s,
                                        " is out of range: 0 (off) or 2..3600 seconds"));
      }
    }
  }
  s.connection_defaults = ConnectionDefaults(s.proto.network(), &problems);
  if (!s.proto.status().token_file().empty()) {
    s.status_token = ReadSecretFile(s.proto.status().token_file(), "status.token_file", &problems);
  }
  if (const std::string& v = s.proto.log().values(); !v.empty() && v != "redact" && v != "show") {
    problems.push_back(absl::StrCat("log.values: '", v, "' is not one of redact (the default), show"));
  }

  std::set<std::string> target_names;
  for (int i = 0; i < s.proto.targets_size(); ++i) {
    const auto& t = s.proto.targets(i);
    std::string path = IndexPath("targets", i);
    if (t.name().empty()) continue;  // reported as required
    if (!ValidName(t.name())) {
      problems.push_back(absl::StrCat(path, ".name: '", t.name(), "' must be letters, digits, '_', '-' or '.'"));
    }
    if (!target_names.insert(t.name()).second) {
      problems.push_back(absl::StrCat(path, ".name: target '", t.name(), "' is defined twice"));
    }
    TargetSettings ts;
    ts.name = t.name();
    ts.kind = t.kind();
    if (t.kind() == v1::TARGET_DOCUMENTS) {
      if (!t.dsn().empty() || !t.dsn_env().empty() || !t.dsn_file().empty())
        problems.push_back(absl::StrCat(path, ": a documents target has a path, not a dsn"));
      if (t.path().empty() == t.path_env().empty()) {
        problems.push_back(
            absl::StrCat(path, ": a documents target needs exactly one of path or path_env (the store's directory)"));
      } else if (!t.path().empty()) {
        ts.path = t.path();
      } else {
        const char* v = std::getenv(t.path_env().c_str());
        if (v == nullptr || *v == '\0') {
          problems.push_back(
              absl::StrCat(path, ".path_env: environment variable ", t.path_env(), " is not set or empty"));
        } else {
          ts.path = v;
        }
      }
    } else {
      if (!t.path().empty() || !t.path_env().empty())
        problems.push_back(absl::StrCat(path, ".path: only for kind documents; a postgres target has a dsn"));
      ts.dsn = ResolveDsn(t.dsn(), t.dsn_env(), t.dsn_file(), path, &problems);
    }
    s.targets.push_back(std::move(ts));
  }

  if (!mappings_node || mappings_node.IsNull() || (mappings_node.IsSequence() && mappings_node.size() == 0)) {
    problems.push_back("mappings: required key missing (at least one mapping)");
  } else if (!mappings_node.IsSequence()) {
    problems.push_back("mappings: expected a list of mappings");
  } else {
    std::set<std::string> seen_sources;
    for (size_t i = 0; i < mappings_node.size(); ++i) {
      MappingSettings m;
      m.path = IndexPath("mappings", i);
      std::vector<std::string> leftover;
      ParseYamlInto(mappings_node[i], &m.common, m.path, &problems, &leftover);
      m.module_node = YAML::Node(YAML::NodeType::Map);
      if (mappings_node[i].IsMap()) {
        for (const auto& key : leftover) m.module_node[key] = mappings_node[i][key];
      }
      std::string src = m.common.source();
      if (!src.empty()) {
        src = QualifiedTableName(src);
        m.common.set_source(src);
      }
      if (m.common.module().empty()) m.common.set_module("columns");
      if (m.common.target().empty()) {
        if (s.proto.targets_size() == 1) {
          m.common.set_target(s.proto.targets(0).name());
        } else if (s.proto.targets_size() > 1) {
          problems.push_back(absl::StrCat(m.path, ".target: required when there is more than one target"));
        }
      } else if (!target_names.empty() && !target_names.count(m.common.target())) {
        problems.push_back(absl::StrCat(m.path, ".target: no target named '", m.common.target(),
                                        "' (targets: ", absl::StrJoin(target_names, ", "), ")"));
      }
      if (m.common.on_error() == v1::ON_ERROR_DEAD_LETTER) {
        for (const auto& t : s.proto.targets()) {
          if (t.name() == m.common.target() && t.kind() == v1::TARGET_DOCUMENTS) {
            problems.push_back(absl::StrCat(m.path, ".on_error: dead_letter parks rejected changes in a PostgreSQL "
                                            "target's walshift.dead_letter table; target ", t.name(),
                                            " is a documents target: remove on_error or set it to stop"));
          }
        }
      }
      s.mappings.push_back(std::move(m));
    }
  }
  {
    const auto& dl = s.proto.apply().dead_letter();
    if (dl.has_max_percent() && (dl.max_percent() == 0 || dl.max_percent() > 100)) {
      problems.push_back(absl::StrCat("apply.dead_letter.max_percent: ", dl.max_percent(), " is out of range (1..100)"));
    }
    if (dl.has_window_s() && (dl.window_s() == 0 || dl.window_s() > 86400)) {
      problems.push_back(absl::StrCat("apply.dead_letter.window_s: ", dl.window_s(), " is out of range (1..86400)"));
    }
  }

  if (const std::string& listen = s.proto.status().listen(); !listen.empty() && listen != "off") {
    size_t colon = listen.rfind(':');
    int port = -1;
    if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 ||
        port > 65535) {
      problems.push_back(absl::StrCat("status.listen: '", listen, "' is not host:port (e.g. 127.0.0.1:9187) or off"));
    }
  }
  if (s.proto.has_kafka()) {
    // A librdkafka property that is a secret comes from the environment or a file, as DSNs do:
    // sasl.password_env: VAR, sasl.password_file: kafka-password (relative: a credential).
    auto* props = s.proto.mutable_kafka()->mutable_properties();
    std::vector<std::string> resolved;
    for (const auto& [key, value] : *props) {
      const bool env = absl::EndsWith(key, "_env"), file = absl::EndsWith(key, "_file");
      if (!env && !file) continue;
      const std::string name = key.substr(0, key.size() - (env ? 4 : 5));
      const std::string path = absl::StrCat("kafka.properties.", key);
      resolved.push_back(key);
      if (name.empty()) {
        problems.push_back(absl::StrCat(path, ": names no property"));
        continue;
      }
      if (props->count(name) || props->count(absl::StrCat(name, env ? "_file" : "_env"))) {
        problems.push_back(absl::StrCat(path, ": give only one of ", name, ", ", name, "_env and ", name, "_file"));
        continue;
      }
      std::string secret;
      if (env) {
        const char* v = std::getenv(value.c_str());
        if (v == nullptr || *v == '\0') {
          problems.push_back(absl::StrCat(path, ": environment variable ", value, " is not set or empty"));
          continue;
        }
        secret = v;
      } else {
        secret = ReadSecretFile(value, path, &problems);
        if (secret.empty()) continue;
      }
      s.kafka_secrets.emplace_back(name, std::move(secret));
    }
    for (const std::string& key : resolved) props->erase(key);
  }
  if (s.proto.has_ha()) {
    v1::HaConfig* ha = s.proto.mutable_ha();
    if (ha->enabled()) {
      for (const auto& t : s.proto.targets()) {
        if (t.kind() == v1::TARGET_DOCUMENTS) {
          problems.push_back(absl::StrCat("ha.enabled: active/standby fences a replaced leader inside each "
                                          "PostgreSQL target's transactions; target ",
                                          t.name(), " is a documents target, which cannot: run one walshiftd for "
                                          "this pipeline (remove ha), or map to PostgreSQL targets only"));
        }
      }
    }
    if (ha->lease_s() != 0 && (ha->lease_s() < 2 || ha->lease_s() > 3600)) {
      problems.push_back(absl::StrCat("ha.lease_s: ", ha->lease_s(), " is out of range (2..3600)"));
    }
    if (ha->poll_ms() != 0 && (ha->poll_ms() < 10 || ha->poll_ms() > 60000)) {
      problems.push_back(absl::StrCat("ha.poll_ms: ", ha->poll_ms(), " is out of range (10..60000)"));
    }
    if (ha->node().empty()) {
      char host[256] = {0};
      if (gethostname(host, sizeof(host) - 1) == 0 && host[0] != '\0') ha->set_node(host);
      else ha->set_node("walshiftd");
    }
    if (ha->node().size() > 200) problems.push_back("ha.node: longer than 200 characters");
  }

  if (!problems.empty()) return ProblemsStatus(file_name, problems);
  return s;
}

}  // namespace walshift::config
