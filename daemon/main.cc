// walshiftd: streams a legacy PostgreSQL database's changes through the configured mapping
// modules into the new schema.
//
// Exit codes: 0 stopped cleanly (SIGTERM/SIGINT) or --validate passed; 1 runtime error (a
// value the target rejects, a lost slot, ...); 2 configuration error.

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "daemon/config/config.h"
#include "daemon/pipeline/live_check.h"
#include "daemon/pipeline/pipeline.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "transforms/registry.h"

namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop.store(true); }

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: walshiftd --config FILE [--validate | --check] [--log-level LEVEL]\n"
               "  --config FILE     the pipeline configuration (YAML)\n"
               "  --validate        check the configuration file alone, then exit (0 ok, 2 bad)\n"
               "  --check           also check every mapping against the live source and target\n"
               "                    schemas, then exit (0 ok, 2 problems, 1 unreachable)\n"
               "  --log-level L     trace, debug, info, warn, error (overrides log.level)\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path, log_level;
  bool validate_only = false;
  bool check_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "walshiftd: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      *out = argv[++i];
    };
    if (a == "--config" || a == "-c") value(&config_path);
    else if (a.rfind("--config=", 0) == 0) config_path = a.substr(9);
    else if (a == "--validate") validate_only = true;
    else if (a == "--check") check_only = true;
    else if (a == "--log-level") value(&log_level);
    else if (a == "--help" || a == "-h") { Usage(stdout); return 0; }
    else {
      std::fprintf(stderr, "walshiftd: unknown argument '%s'\n", a.c_str());
      Usage(stderr);
      return 2;
    }
  }
  if (config_path.empty()) {
    Usage(stderr);
    return 2;
  }

  auto logger = spdlog::stderr_color_mt("walshiftd");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  auto settings = walshift::config::LoadSettingsFile(config_path);
  if (!settings.ok()) {
    std::fprintf(stderr, "walshiftd: invalid configuration: %s\n",
                 std::string(settings.status().message()).c_str());
    return 2;
  }
  auto modules = walshift::transforms::BuildModules(*settings, config_path);
  if (!modules.ok()) {
    std::fprintf(stderr, "walshiftd: invalid configuration: %s\n",
                 std::string(modules.status().message()).c_str());
    return 2;
  }
  std::string level = !log_level.empty() ? log_level : settings->proto.log().level();
  if (!level.empty()) {
    auto l = spdlog::level::from_str(level);
    if (l == spdlog::level::off && level != "off") {
      std::fprintf(stderr, "walshiftd: invalid configuration: log.level: '%s' is not one of "
                           "trace, debug, info, warn, error\n", level.c_str());
      return 2;
    }
    spdlog::set_level(l);
  }
  if (validate_only) {
    std::printf("%s: ok (%zu mappings, %zu targets)\n", config_path.c_str(), modules->size(),
                settings->targets.size());
    return 0;
  }

  // The same live check as --check; a walshiftd that would fail on its first row refuses to
  // start. An unreachable database is left to the pipeline's reconnect loop.
  absl::Status check = walshift::CheckLiveSchemas(*settings, *modules, config_path);
  if (check_only) {
    if (check.ok()) {
      std::printf("%s: ok: %zu mappings match the live schemas\n", config_path.c_str(), modules->size());
      return 0;
    }
    std::fprintf(stderr, "walshiftd: %s\n", std::string(check.message()).c_str());
    return check.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  if (check.code() == absl::StatusCode::kInvalidArgument) {
    std::fprintf(stderr, "walshiftd: the mappings do not match the live schemas: %s\n",
                 std::string(check.message()).c_str());
    return 2;
  }
  if (!check.ok()) spdlog::warn("{}; connecting with retries", std::string(check.message()));

  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  spdlog::info("walshiftd starting pipeline {} ({} mappings, {} targets)",
               settings->proto.pipeline(), modules->size(), settings->targets.size());
  walshift::Pipeline pipeline(*std::move(settings), *std::move(modules));
  absl::Status st = pipeline.Run(g_stop);
  if (!st.ok()) {
    spdlog::critical("stopped: {}", std::string(st.message()));
    return 1;
  }
  spdlog::info("walshiftd stopped");
  return 0;
}
