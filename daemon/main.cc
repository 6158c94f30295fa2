// walshiftd: streams a legacy PostgreSQL database's changes through the configured mapping
// modules into the new schema.
//
// Exit codes: 0 stopped cleanly (SIGTERM/SIGINT) or --validate passed; 1 runtime error that
// needs a person (a value the target rejects, a mapping that does not fit the schema); 2
// configuration error; 3 the replication slot lost changes (invalidated, or dropped while the
// targets hold checkpoints): the pipeline must be rebuilt (see the message and the README).

#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "daemon/config/config.h"
#include "daemon/core/slot_loss.h"
#include "daemon/observe/events.h"
#include "daemon/observe/http.h"
#include "daemon/observe/log_format.h"
#include "daemon/observe/monitor.h"
#include "daemon/observe/service_notify.h"
#include "daemon/observe/status.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/initial_copy.h"
#include "daemon/pipeline/live_check.h"
#include "daemon/state/pg_state.h"
#include "daemon/pipeline/pipeline.h"
#include "daemon/pipeline/session_zone.h"
#include "daemon/state/target_state.h"
#include "daemon/verify/verifier.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "transforms/registry.h"
#include "yaml-cpp/yaml.h"

namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop.store(true); }
// SIGHUP: reload what can change safely (see Reload).
std::atomic<bool> g_reload{false};
void OnHangup(int) { g_reload.store(true); }

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: walshiftd --config FILE [--validate | --check | --dry-run] [--log-level LEVEL]\n"
               "       walshiftd --version\n"
               "  --config FILE     the pipeline configuration (YAML)\n"
               "  --validate        check the configuration file alone, then exit (0 ok, 2 bad)\n"
               "  --check           also check every mapping against the live source and target\n"
               "                    schemas, then exit (0 ok, 2 problems, 1 unreachable)\n"
               "  --dry-run         read every mapped table under one snapshot through its mappings\n"
               "                    and report per table what would be written and the first\n"
               "                    mapping failures; writes nothing (0 clean, 1 failures)\n"
               "  --log-level L     trace, debug, info, warn, error (overrides log.level)\n"
               "exit codes: 0 stopped by a signal, 1 an error that needs a person (a rejected value, a\n"
               "  mapping that does not fit the schema), 2 bad configuration, 3 the replication slot lost\n"
               "  changes (invalidated or dropped): the pipeline must be rebuilt, as the message says\n");
}

// --dry-run: the initial copy with counting instead of writing.
int DryRun(const walshift::config::Settings& settings,
           const std::vector<std::shared_ptr<const walshift::MappingModule>>& modules) {
  walshift::InitialCopyOptions o;
  o.settings = &settings;
  o.modules = &modules;
  for (const auto& m : modules) {
    size_t idx = 0;
    for (size_t t = 0; t < settings.targets.size(); ++t)
      if (settings.targets[t].name == m->target()) idx = t;
    o.module_target.push_back(idx);
  }
  for (size_t t = 0; t < settings.targets.size(); ++t) o.targets.push_back(t);
  o.workers = settings.proto.snapshot().workers() ? static_cast<int>(settings.proto.snapshot().workers()) : 2;
  o.chunk_rows = settings.proto.snapshot().chunk_rows() ? settings.proto.snapshot().chunk_rows() : 100000;
  o.dry_run = true;
  walshift::InitialCopy copy(o);
  absl::Status st = copy.Run(g_stop);
  if (!st.ok()) {
    std::fprintf(stderr, "walshiftd: dry run: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  uint64_t failures = 0;
  std::printf("dry run of pipeline %s (nothing written)\n", settings.proto.pipeline().c_str());
  for (const auto& r : copy.Report()) {
    std::printf("%s -> target %s: %llu rows read, %llu mapping failures\n", r.source_table.c_str(), r.target.c_str(),
                static_cast<unsigned long long>(r.rows), static_cast<unsigned long long>(r.failure_count));
    for (const auto& [what, n] : r.writes) {
      std::printf("  %-50s %llu\n", what.c_str(), static_cast<unsigned long long>(n));
    }
    for (const auto& f : r.failures) std::printf("  failure: %s\n", f.c_str());
    failures += r.failure_count;
  }
  return failures == 0 ? 0 : 1;
}

// Records the error walshiftd stops on in every PostgreSQL target, where `walshiftctl status`
// finds it; a target that cannot be reached (often the error itself) is said in the log.
// `lsn`: the source transaction a rejected value stopped at (Pipeline::stopped_at), else the
// first LSN the message names.
void RecordStop(const walshift::config::Settings& settings, int code, const std::string& message,
                walshift::Lsn lsn = walshift::kInvalidLsn) {
  if (size_t at = message.find("LSN "); lsn == walshift::kInvalidLsn && at != std::string::npos) {
    size_t end = message.find_first_not_of("0123456789ABCDEFabcdef/", at + 4);
    lsn = walshift::ParseLsn(message.substr(at + 4, end == std::string::npos ? end : end - at - 4))
              .value_or(walshift::kInvalidLsn);
  }
  for (const auto& t : settings.targets) {
    absl::Status st = walshift::state::RecordStopError(t, settings.proto.pipeline(), code, message, lsn);
    if (!st.ok()) spdlog::warn("could not record this stop in target {}: {}", t.name, std::string(st.message()));
  }
}

}  // namespace

namespace {
// What a SIGHUP reloads: log.level (unless --log-level set it) from the configuration file as
// it is now. Everything else (databases, mappings, log.values, ...) is read at start only: a
// change of it is said to take effect at the next start.
std::string Fingerprint(const walshift::config::Settings& s) {
  walshift::v1::Config c = s.proto;
  c.mutable_log()->clear_level();
  std::string out = c.SerializeAsString();
  for (const auto& m : s.mappings) absl::StrAppend(&out, m.common.SerializeAsString(), YAML::Dump(m.module_node));
  // Kafka secrets (kept out of the proto) count too, hashed: a rotated one takes a restart.
  for (const auto& [name, value] : s.kafka_secrets)
    absl::StrAppend(&out, name, "=", std::hash<std::string>()(value), ";");
  return out;
}

void Reload(const std::string& config_path, const std::string& cli_level, const std::string& running) {
  auto fresh = walshift::config::LoadSettingsFile(config_path);
  if (!fresh.ok()) {
    spdlog::error("SIGHUP: {} is not valid now, nothing reloaded: {}", config_path, std::string(fresh.status().message()));
    return;
  }
  std::string level = !cli_level.empty() ? cli_level : fresh->proto.log().level();
  if (level.empty()) level = "info";
  auto l = spdlog::level::from_str(level);
  if (l == spdlog::level::off && level != "off") {
    spdlog::error("SIGHUP: log.level '{}' is not one of trace, debug, info, warn, error: the level stays", level);
  } else {
    spdlog::set_level(l);
    spdlog::info("SIGHUP: log level {}{}", level, cli_level.empty() ? "" : " (from --log-level)");
  }
  if (Fingerprint(*fresh) != running) {
    spdlog::warn("SIGHUP: {} changed in more than log.level; those changes take effect when walshiftd restarts",
                 config_path);
  }
}
}  // namespace

int main(int argc, char** argv) {
  std::string config_path, log_level;
  bool validate_only = false;
  bool check_only = false;
  bool dry_run = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "walshiftd: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      *out = argv[++i];
    };
    if (a == "--config" || a == "-c")
      value(&config_path);
    else if (a.rfind("--config=", 0) == 0)
      config_path = a.substr(9);
    else if (a == "--validate")
      validate_only = true;
    else if (a == "--check")
      check_only = true;
    else if (a == "--dry-run")
      dry_run = true;
    else if (a == "--log-level")
      value(&log_level);
    else if (a == "--help" || a == "-h") {
      Usage(stdout);
      return 0;
    } else if (a == "--version") {
      std::printf("walshiftd %s (state schema version %d)\n", WALSHIFT_VERSION, walshift::state::StateSchemaVersion());
      return 0;
    } else {
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
  walshift::UseOneLineLogFormat();

  auto settings = walshift::config::LoadSettingsFile(config_path);
  if (!settings.ok()) {
    std::fprintf(stderr, "walshiftd: invalid configuration: %s\n", std::string(settings.status().message()).c_str());
    return 2;
  }
  // Keepalives and timeouts for every connection opened from here on (network:).
  if (absl::Status st = walshift::pg::SetConnectionDefaults(settings->connection_defaults); !st.ok()) {
    std::fprintf(stderr, "walshiftd: invalid configuration: network: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  auto modules = walshift::transforms::BuildModules(*settings, config_path);
  if (!modules.ok()) {
    std::fprintf(stderr, "walshiftd: invalid configuration: %s\n", std::string(modules.status().message()).c_str());
    return 2;
  }
  std::string level = !log_level.empty() ? log_level : settings->proto.log().level();
  if (!level.empty()) {
    auto l = spdlog::level::from_str(level);
    if (l == spdlog::level::off && level != "off") {
      std::fprintf(stderr,
                   "walshiftd: invalid configuration: log.level: '%s' is not one of "
                   "trace, debug, info, warn, error\n",
                   level.c_str());
      return 2;
    }
    spdlog::set_level(l);
  }
  walshift::pg::SetShowValues(settings->proto.log().values() == "show");
  if (validate_only) {
    std::printf("%s: ok (%zu mappings, %zu targets)\n", config_path.c_str(), modules->size(), settings->targets.size());
    return 0;
  }

  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  struct sigaction hup;
  std::memset(&hup, 0, sizeof(hup));
  hup.sa_handler = OnHangup;
  hup.sa_flags = SA_RESTART;
  sigaction(SIGHUP, &hup, nullptr);

  // One time zone for every session, decided before any value is read or written. A database
  // that cannot be reached yet is waited for below, with the status endpoint up.
  absl::StatusOr<walshift::SessionZone> zone =
      walshift::PinSessionTimeZone(*settings, /*record=*/!check_only && !dry_run);
  if (!zone.ok() && (zone.status().code() != absl::StatusCode::kUnavailable || check_only || dry_run)) {
    std::fprintf(stderr, "walshiftd: %s\n", std::string(zone.status().message()).c_str());
    return zone.status().code() == absl::StatusCode::kFailedPrecondition ? 2 : 1;
  }
  if (zone.ok()) spdlog::info("sessions use time zone {} ({})", zone->zone, zone->origin);

  // The same live check as --check; a walshiftd that would fail on its first row refuses to
  // start. An unreachable database is left to the pipeline's reconnect loop.
  std::vector<std::string> notes;
  absl::Status check = walshift::CheckLiveSchemas(*settings, *modules, config_path, &notes);
  for (const std::string& n : notes) {
    if (check_only)
      std::printf("note: %s\n", n.c_str());
    else
      spdlog::info("{}", n);
  }
  if (check_only) {
    if (check.ok()) {
      std::printf("%s: ok: %zu mappings match the live schemas\n", config_path.c_str(), modules->size());
      return 0;
    }
    std::fprintf(stderr, "walshiftd: %s\n", std::string(check.message()).c_str());
    return check.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  if (dry_run) {
    if (!check.ok()) {
      std::fprintf(stderr, "walshiftd: %s\n", std::string(check.message()).c_str());
      return check.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
    }
    return DryRun(*settings, *modules);
  }
  if (check.code() == absl::StatusCode::kInvalidArgument) {
    // (Schemas that do not fit the mappings, or privileges the roles lack.)
    std::string message = absl::StrCat("the live databases cannot run this configuration: ", check.message());
    std::fprintf(stderr, "walshiftd: %s\n", message.c_str());
    RecordStop(*settings, 2, message);
    return 2;
  }
  if (!check.ok()) spdlog::warn("{}; connecting with retries", std::string(check.message()));

  spdlog::info("walshiftd starting pipeline {} ({} mappings, {} targets)", settings->proto.pipeline(), modules->size(),
               settings->targets.size());
  // Observability: events (Kafka and the log), the status endpoint, the monitor thread.
  auto events = walshift::EventPublisher::Create(settings->proto, settings->kafka_secrets);
  if (!events.ok()) {
    std::fprintf(stderr, "walshiftd: invalid configuration: %s\n", std::string(events.status().message()).c_str());
    return 2;
  }
  std::vector<std::string> target_names;
  for (const auto& t : settings->targets) target_names.push_back(t.name);
  walshift::PipelineStatus status(settings->proto.pipeline(), target_names);
  walshift::EventPublisher* publisher = events->get();
  status.SetStateListener([&status, publisher](const walshift::v1::StateEvent& e) {
    publisher->Publish(e);
    publisher->Publish(status.Lag(/*advance_rates=*/false));
  });
  status.SetDeadLetterListener([publisher](const walshift::v1::DeadLetterEvent& e) { publisher->Publish(e); });
  // systemd (Type=notify): readiness, status, watchdog, stopping; and SIGHUP reloads.
  const std::string running = Fingerprint(*settings);
  walshift::ServiceNotifier notifier(&status, &g_stop, &g_reload,
                                     [&] { Reload(config_path, log_level, running); });
  std::unique_ptr<walshift::StatusServer> server;
  std::string listen = settings->proto.status().listen().empty() ? "127.0.0.1:9187" : settings->proto.status().listen();
  if (listen != "off") {
    auto s = walshift::StatusServer::Start(listen, &status, settings->status_token);
    if (s.ok()) {
      server = *std::move(s);
    } else if (s.status().code() == absl::StatusCode::kInvalidArgument) {
      std::fprintf(stderr, "walshiftd: invalid configuration: %s\n", std::string(s.status().message()).c_str());
      return 2;
    } else {
      // Replication matters more than the status page: say so loudly and go on.
      spdlog::error("{}; running without /status, /metrics, /healthz and /readyz", std::string(s.status().message()));
    }
  }
  for (int attempt = 0; !zone.ok(); ++attempt) {
    if (zone.status().code() != absl::StatusCode::kUnavailable) {
      status.SetState(walshift::v1::ERROR, std::string(zone.status().message()));
      spdlog::critical("stopped: {}", std::string(zone.status().message()));
      return 2;
    }
    status.SetState(walshift::v1::RECONNECTING, std::string(zone.status().message()));
    spdlog::warn("{}; retrying before anything is read or written (the sessions' time zone is not known yet)",
                 std::string(zone.status().message()));
    for (int i = 0; i < std::min(1 << std::min(attempt, 5), 30) * 10 && !g_stop.load(); ++i) {
      status.Tick();
      usleep(100000);
    }
    if (g_stop.load()) return 0;
    zone = walshift::PinSessionTimeZone(*settings, /*record=*/true);
    if (zone.ok()) spdlog::info("sessions use time zone {} ({})", zone->zone, zone->origin);
  }
  int code = 0;
  {
    walshift::Monitor monitor(*settings, &status, publisher);
    // The continuous drift verifier, when enabled (its own connections, a rows/s budget).
    std::unique_ptr<walshift::ContinuousVerifier> verifier;
    auto verify_settings = std::make_unique<walshift::config::Settings>(*settings);
    auto verify_modules = *modules;
    if (settings->proto.verify().enabled()) {
      walshift::VerifyOptions vo;
      vo.settings = verify_settings.get();
      vo.modules = &verify_modules;
      for (const auto& m : verify_modules) {
        size_t idx = 0;
        for (size_t t = 0; t < settings->targets.size(); ++t)
          if (settings->targets[t].name == m->target()) idx = t;
        vo.module_target.push_back(idx);
      }
      vo.events = publisher;
      vo.rows_per_second =
          settings->proto.verify().rows_per_second() ? settings->proto.verify().rows_per_second() : 500;
      verifier = std::make_unique<walshift::ContinuousVerifier>(
          std::move(vo), &status,
          absl::Seconds(settings->proto.verify().interval_s() ? settings->proto.verify().interval_s() : 3600));
    }
    walshift::Pipeline pipeline(*std::move(settings), *std::move(modules), &status);
    absl::Status st = pipeline.Run(g_stop);
    verifier.reset();  // before the pipeline's connections go: a pass may wait on its checkpoint
    if (!st.ok()) {
      if (walshift::IsSlotLost(st)) {
        // The slot as the source sees it, in a last lag event, with the alarm raised.
        status.RaiseAlarm(
            absl::StrContains(st.message(), "does not exist") ? walshift::v1::SLOT_MISSING : walshift::v1::SLOT_LOST,
            std::string(st.message()));
        monitor.StopWithFinalReport();
      }
      status.SetState(walshift::v1::ERROR, std::string(st.message()));
      spdlog::critical("stopped: {}", std::string(st.message()));
      code = walshift::IsSlotLost(st) ? walshift::kExitSlotLost : 1;
      RecordStop(*verify_settings, code, std::string(st.message()), pipeline.stopped_at());
    } else {
      status.SetState(walshift::v1::STOPPING);
      spdlog::info("walshiftd stopped");
    }
  }
  server.reset();
  events->reset();  // delivers what is queued (up to 5 s)
  return code;
}
