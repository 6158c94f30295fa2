// walshiftctl: the operator's view of a walshift pipeline.
//
//   walshiftctl status (--url URL [--token-file F] | --config FILE) [--json] [--watch [SECONDS]] [--max-lag-bytes N]
//                      [--max-lag-seconds S]
//   walshiftctl backfill --config FILE --table SCHEMA.TABLE [--wait [SECONDS]]
//   walshiftctl events --brokers B --topic T [--from-beginning] [--follow] [--json]
//   walshiftctl skip --config FILE --lsn LSN
//   walshiftctl dead-letter list|show|retry|discard --config FILE ...
//   walshiftctl reverse --config FILE [--target NAME] [--output FILE] [--check]
//   walshiftctl cutover|rollback --config FILE --reverse-config FILE [...]
//
// status asks walshiftd's HTTP endpoint (--url, or the config's status.listen); with only
// --config and no walshiftd answering, it reads the slot on the legacy database and the
// checkpoint in every target straight from the databases. Exit codes: 0 healthy, 1 ERROR state,
// an alarm, lagging past --max-lag-bytes / --max-lag-seconds, slot missing before the first
// checkpoint, or no checkpoint yet; 2 walshiftd or a database is unreachable or the config is
// invalid; 3 the slot lost changes (invalidated, or dropped while the targets hold checkpoints):
// the pipeline must be rebuilt, as printed.

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "daemon/config/config.h"
#include "daemon/core/change.h"
#include "daemon/core/lsn.h"
#include "daemon/core/slot_loss.h"
#include "daemon/pg/pg_util.h"
#include "daemon/state/target_state.h"
#include "tools/walshiftctl/commands.h"
#include "tools/walshiftctl/load_config.h"
#include "tools/walshiftctl/reverse.h"

namespace walshift {
namespace {

using ctl::HumanBytes;
using ctl::JsonString;

struct TargetStatus {
  std::string name;
  bool reachable = false;
  std::string error;
  Lsn applied = kInvalidLsn;
  std::string commit_time;
  double seconds_since_commit = -1;
  double seconds_since_update = -1;
  // The error walshiftd last stopped on, while the checkpoint has not moved since.
  std::optional<state::StopError> stopped;
  uint64_t parked = 0;  // changes in walshift.dead_letter (on_error: dead_letter)
  state::LeaderRow leader;  // ha: the leader the target names (epoch 0: none)
};

struct Status {
  bool source_reachable = false;
  std::string source_error;
  Lsn current = kInvalidLsn;
  bool slot_exists = false;
  bool slot_active = false;
  std::string wal_status;
  Lsn confirmed = kInvalidLsn;
  double retained_bytes = 0;
  std::vector<TargetStatus> targets;
};

Status Collect(const config::Settings& s) {
  Status st;
  auto src = pg::Connect(s.source_dsn, "source", "application_name=walshiftctl");
  if (!src.ok()) {
    st.source_error = std::string(src.status().message());
  } else {
    st.source_reachable = true;
    auto r = pg::ExecParams(src->get(),
                            "SELECT pg_current_wal_lsn()::text, s.confirmed_flush_lsn::text, s.active, "
                            "s.wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::text "
                            "FROM (SELECT 1) one LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
                            {s.slot.c_str()}, "reading the slot");
    if (!r.ok()) {
      st.source_error = std::string(r.status().message());
    } else {
      PGresult* res = r->get();
      st.current = ParseLsn(PQgetvalue(res, 0, 0)).value_or(kInvalidLsn);
      st.slot_exists = !PQgetisnull(res, 0, 1) || !PQgetisnull(res, 0, 2);
      st.confirmed = ParseLsn(PQgetvalue(res, 0, 1)).value_or(kInvalidLsn);
      st.slot_active = PQgetvalue(res, 0, 2)[0] == 't';
      st.wal_status = PQgetvalue(res, 0, 3);
      absl::SimpleAtod(PQgetvalue(res, 0, 4), &st.retained_bytes);
    }
  }
  for (const auto& t : s.targets) {
    TargetStatus ts;
    ts.name = t.name;
    auto row = state::ReadCheckpointRow(t, s.proto.pipeline());
    if (!row.ok()) {
      ts.reachable = row.status().code() != absl::StatusCode::kUnavailable;
      ts.error = std::string(row.status().message());
    } else {
      ts.reachable = true;
      if (*row) {
        ts.applied = (*row)->lsn;
        ts.commit_time = (*row)->commit_time;
        ts.seconds_since_commit = (*row)->seconds_since_commit;
        ts.seconds_since_update = (*row)->seconds_since_update;
      }
    }
    if (ts.reachable) {
      auto stop = state::ReadStopError(t, s.proto.pipeline());
      // (A walshiftd holding the slot runs again, whatever the checkpoint says yet.)
      if (stop.ok() && *stop && (*stop)->current && !st.slot_active) ts.stopped = **stop;
      auto parked = state::CountParked(t, s.proto.pipeline());
      if (parked.ok()) ts.parked = *parked;
      auto leader = state::ReadLeader(t, s.proto.pipeline());
      if (leader.ok()) ts.leader = *leader;
    }
    st.targets.push_back(ts);
  }
  return st;
}

// WAL bytes the source wrote after what target `t` has applied. Everything up to the slot's
// confirmed position is applied on every target too (walshiftd confirms only what every target
// made durable, or an idle stream's position once all of it is applied), so an idle pipeline
// whose checkpoint stays at its last commit is not counted behind for WAL of other databases.
double Behind(const Status& st, const TargetStatus& t) {
  if (t.applied == kInvalidLsn) return 0;
  Lsn done = std::max(t.applied, st.confirmed);
  return st.current > done ? static_cast<double>(st.current - done) : 0;
}

int ExitCode(const Status& st, double max_lag) {
  if (!st.source_reachable) return 2;
  for (const auto& t : st.targets)
    if (!t.reachable) return 2;
  bool checkpoints = false;
  for (const auto& t : st.targets) checkpoints |= t.applied != kInvalidLsn;
  if (st.wal_status == "lost" || (!st.slot_exists && checkpoints)) return kExitSlotLost;
  if (!st.slot_exists) return 1;
  for (const auto& t : st.targets)
    if (t.stopped) return 1;
  for (const auto& t : st.targets) {
    if (t.applied == kInvalidLsn) return 1;
    if (Behind(st, t) > max_lag) return 1;
  }
  return 0;
}

void PrintText(const config::Settings& s, const Status& st, double max_lag) {
  std::printf("pipeline %s\n", s.proto.pipeline().c_str());
  if (!st.source_reachable) {
    std::printf("  source   UNREACHABLE: %s\n", st.source_error.c_str());
  } else if (!st.slot_exists) {
    bool checkpoints = false;
    for (const auto& t : st.targets) checkpoints |= t.applied != kInvalidLsn;
    if (checkpoints) {
      std::printf(
          "  source   current WAL %s; slot %s does not exist, but the targets hold checkpoints\n"
          "  !! SLOT_MISSING: the slot was dropped and the changes since the checkpoints are lost.\n"
          "     %s\n",
          FormatLsn(st.current).c_str(), s.slot.c_str(), SlotRebuildProcedure(s.slot, s.proto.pipeline()).c_str());
    } else {
      std::printf("  source   current WAL %s; slot %s does not exist (walshiftd creates it on start)\n",
                  FormatLsn(st.current).c_str(), s.slot.c_str());
    }
  } else {
    std::printf("  source   current WAL %s; slot %s %s, wal_status %s, retains %s of WAL\n",
                FormatLsn(st.current).c_str(), s.slot.c_str(), st.slot_active ? "active" : "INACTIVE",
                st.wal_status.c_str(), HumanBytes(st.retained_bytes).c_str());
    if (st.wal_status == "lost") {
      std::printf(
          "  !! SLOT_LOST: the slot was invalidated (max_slot_wal_keep_size): the source removed WAL\n"
          "     it still needed, so changes after the checkpoints are lost.\n     %s\n",
          SlotRebuildProcedure(s.slot, s.proto.pipeline()).c_str());
    }
  }
  // ha: the leader each target names (the same one, unless a takeover is under way).
  for (const auto& t : st.targets) {
    if (t.leader.epoch == 0) continue;
    const bool held = !t.leader.lock_holders.empty();
    std::string renewed = t.leader.lease_age_s < 0
                              ? "no lease yet"
                              : absl::StrFormat("lease of %d s renewed %.1f s ago", t.leader.lease_s,
                                                t.leader.lease_age_s);
    std::printf("  leader   walshiftd %s in %s (epoch %lld since %s), %s%s\n", t.leader.node.c_str(), t.name.c_str(),
                static_cast<long long>(t.leader.epoch), t.leader.since.c_str(), renewed.c_str(),
                !held                 ? "; NO LEADER holds the lock now (a standby takes it within ha.poll_ms)"
                : t.leader.expired() ? "; LEASE EXPIRED: a standby takes over"
                                      : "");
  }
  // Once per error: every target holds the same record.
  std::set<std::string> shown;
  for (const auto& t : st.targets) {
    if (!t.stopped || !shown.insert(t.stopped->occurred_at + t.stopped->message).second) continue;
    std::printf("  !! STOPPED: walshiftd stopped on an error at %s (exit %d)%s%s, and the pipeline has not moved since:\n"
                "     %s\n",
                t.stopped->occurred_at.c_str(), t.stopped->exit_code, t.stopped->lsn.empty() ? "" : " at LSN ",
                t.stopped->lsn.c_str(), t.stopped->message.c_str());
  }
  for (const auto& t : st.targets) {
    if (t.parked == 0) continue;
    std::printf("  !! PARKED: %llu change%s parked in %s's walshift.dead_letter (walshiftctl dead-letter list); the gate "
                "fails until they are retried or discarded\n",
                static_cast<unsigned long long>(t.parked), t.parked == 1 ? " is" : "s are", t.name.c_str());
  }
  std::printf("\n  %-12s %-10s %-14s %-12s %s\n", "TARGET", "STATE", "APPLIED LSN", "BEHIND", "LAST APPLIED COMMIT");
  for (const auto& t : st.targets) {
    if (!t.reachable) {
      std::printf("  %-12s %-10s %s\n", t.name.c_str(), "UNREACHABLE", t.error.c_str());
      continue;
    }
    if (t.applied == kInvalidLsn) {
      std::printf("  %-12s %-10s %-14s %-12s %s\n", t.name.c_str(), "waiting", "-", "-",
                  t.error.empty() ? "nothing applied yet" : t.error.c_str());
      continue;
    }
    double behind = Behind(st, t);
    const char* state = t.stopped ? "STOPPED" : behind > max_lag ? "LAGGING" : "ok";
    std::printf("  %-12s %-10s %-14s %-12s %s (%.1f s ago)\n", t.name.c_str(), state, FormatLsn(t.applied).c_str(),
                HumanBytes(behind).c_str(), t.commit_time.c_str(), t.seconds_since_commit);
  }
  std::printf(
      "\n  BEHIND counts WAL bytes written on the source (any database of the cluster) after the\n"
      "  later of the last applied commit and the slot's confirmed position.\n");
}

void PrintJson(const config::Settings& s, const Status& st) {
  std::string out = absl::StrCat("{\"pipeline\":", JsonString(s.proto.pipeline()), ",\"source\":{",
                                 "\"reachable\":", st.source_reachable ? "true" : "false");
  if (!st.source_reachable) absl::StrAppend(&out, ",\"error\":", JsonString(st.source_error));
  absl::StrAppend(&out, ",\"current_lsn\":", JsonString(FormatLsn(st.current)),
                  ",\"slot\":{\"name\":", JsonString(s.slot), ",\"exists\":", st.slot_exists ? "true" : "false",
                  ",\"active\":", st.slot_active ? "true" : "false", ",\"wal_status\":", JsonString(st.wal_status),
                  ",\"confirmed_flush_lsn\":", JsonString(FormatLsn(st.confirmed)),
                  ",\"retained_bytes\":", absl::StrFormat("%.0f", st.retained_bytes), "}},\"targets\":[");
  for (size_t i = 0; i < st.targets.size(); ++i) {
    const auto& t = st.targets[i];
    double behind = Behind(st, t);
    absl::StrAppend(&out, i ? "," : "", "{\"name\":", JsonString(t.name),
                    ",\"reachable\":", t.reachable ? "true" : "false",
                    ",\"applied_lsn\":", t.applied ? JsonString(FormatLsn(t.applied)) : "null",
                    ",\"lag_bytes\":", absl::StrFormat("%.0f", behind),
                    ",\"last_commit_time\":", t.commit_time.empty() ? "null" : JsonString(t.commit_time),
                    t.error.empty() ? "" : absl::StrCat(",\"error\":", JsonString(t.error)),
                    ",\"dead_letter_parked\":", t.parked,
                    t.leader.epoch == 0
                        ? ""
                        : absl::StrCat(",\"leader\":{\"node\":", JsonString(t.leader.node), ",\"epoch\":", t.leader.epoch,
                                       ",\"since\":", JsonString(t.leader.since),
                                       ",\"lease_age_s\":", absl::StrFormat("%.1f", t.leader.lease_age_s),
                                       ",\"lock_held\":", t.leader.lock_holders.empty() ? "false" : "true", "}"),
                    !t.stopped ? ""
                               : absl::StrCat(",\"stopped_on_error\":{\"at\":", JsonString(t.stopped->occurred_at),
                                              ",\"exit_code\":", t.stopped->exit_code,
                                              ",\"lsn\":", t.stopped->lsn.empty() ? "null" : JsonString(t.stopped->lsn),
                                              ",\"message\":", JsonString(t.stopped->message), "}"),
                    "}");
  }
  absl::StrAppend(&out, "]}");
  std::printf("%s\n", out.c_str());
}

int Usage(FILE* f, int code) {
  std::fprintf(f,
               "usage: walshiftctl status (--url URL | --config FILE) [--json] [--watch [SECONDS]]\n"
               "                          [--max-lag-bytes N] [--max-lag-seconds S]\n"
               "  Shows where replication stands. With --url (http://HOST:PORT or HOST:PORT), asks\n"
               "  walshiftd's status endpoint; with --config, asks the endpoint at its status.listen and,\n"
               "  when walshiftd does not answer, reads the slot on the legacy database and the\n"
               "  checkpoint of every target directly. Exit 0 healthy, 1 ERROR state, an alarm, lagging\n"
               "  (default 64 MiB / 300 s), 2 unreachable, 3 the slot lost changes: rebuild the pipeline.\n"
               "usage: walshiftctl verify --config FILE [--table SCHEMA.TABLE] [--repair] [--gate] [--settle S]\n"
               "  One full pass of the drift verifier now: per mapping rows checked, missing, extra and\n"
               "  mismatched, and the first differences. --repair re-applies drifted tables through\n"
               "  walshiftd and deletes extra rows, then verifies again; --gate also requires every\n"
               "  target to have applied the source's position at the start. Exit 0 no drift, 1 drift, 2 error.\n"
               "usage: walshiftctl backfill --config FILE --table SCHEMA.TABLE [--wait [SECONDS]]\n"
               "  Asks the running walshiftd to copy one table again through its mappings while it\n"
               "  keeps streaming (a mapping was added, or the table drifted). With --wait, follows\n"
               "  its progress until done (exit 0) or SECONDS pass (default 3600; exit 1).\n"
               "usage: walshiftctl skip --config FILE --lsn LSN [--target NAME]\n"
               "  With walshiftd stopped on a value a target rejects: leave out exactly the one source\n"
               "  transaction committed at LSN on the target that rejected it (--target, needed when\n"
               "  there are several; the stop message names both). walshiftd records its changes\n"
               "  in walshift.skipped when it meets it; a backfill of their tables heals them. Exit 0, 1\n"
               "  nothing to skip (applied already), 2 error.\n"
               "usage: walshiftctl dead-letter list|show|retry|discard --config FILE ...\n"
               "  The changes a target rejected under on_error: dead_letter: list them, show one, retry\n"
               "  them after a fix, or discard them with a reason (walshiftctl dead-letter --help).\n"
               "usage: walshiftctl reverse --config FORWARD.yaml [--target NAME] [--output FILE] [--check]\n"
               "  Derives the reverse pipeline (new schema -> legacy, for a rollback after the cutover) from\n"
               "  the forward config and both live schemas, and says what cannot go back and how to fix it.\n"
               "  Exit 0 valid, 1 something cannot go back, 2 error.\n"
               "usage: walshiftctl cutover --config FORWARD.yaml --reverse-config REVERSE.yaml\n"
               "                           [--stop-writes revoke|application] [--margin N] [--settle S] [--abort]\n"
               "  Ends the migration: stops legacy writes, drains and gates the forward pipeline, sets the\n"
               "  new schema's sequences past the legacy ones and starts the reverse pipeline; each step is\n"
               "  recorded, so an interrupted cutover continues when run again (or --abort undoes it).\n"
               "usage: walshiftctl rollback --config FORWARD.yaml --reverse-config REVERSE.yaml [...]\n"
               "  The mirror after a cutover: stops new-schema writes, drains and gates the reverse pipeline,\n"
               "  sets the legacy sequences back past the new ones and grants the legacy writes back.\n"
               "  Both: --status shows the recorded state. Exit 0 done, 1 refused or stopped, 2 error.\n"
               "usage: walshiftctl events --brokers HOST:PORT[,...] --topic TOPIC [--from-beginning] [--follow]\n"
               "                          [--json]\n"
               "  Prints walshiftd's events (lag, state changes, drift) from a Kafka topic, one per line.\n"
               "  Without --follow, stops at the end of every partition. Exit 0, 2 unreachable/no topic.\n");
  return code;
}

int StatusCommand(int argc, char** argv) {
  std::string config_path, url;
  bool json = false;
  double watch = 0;
  double max_lag = 64.0 * 1024 * 1024;
  double max_lag_seconds = 300;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--config" || a == "-c") && i + 1 < argc)
      config_path = argv[++i];
    else if (a == "--url" && i + 1 < argc)
      url = argv[++i];
    else if (a == "--token-file" && i + 1 < argc) {
      std::vector<std::string> problems;
      std::string token = config::ReadSecretFile(argv[++i], "--token-file", &problems);
      if (!problems.empty()) {
        std::fprintf(stderr, "walshiftctl: %s\n", problems[0].c_str());
        return 2;
      }
      ctl::SetStatusToken(token);
    }
    else if (a == "--json")
      json = true;
    else if (a == "--watch") {
      watch = 2;
      if (i + 1 < argc && absl::SimpleAtod(argv[i + 1], &watch)) ++i;
    } else if (a == "--max-lag-bytes" && i + 1 < argc) {
      if (!absl::SimpleAtod(argv[++i], &max_lag)) return Usage(stderr, 2);
    } else if (a == "--max-lag-seconds" && i + 1 < argc) {
      if (!absl::SimpleAtod(argv[++i], &max_lag_seconds)) return Usage(stderr, 2);
    } else if (a == "--help" || a == "-h")
      return Usage(stdout, 0);
    else
      return Usage(stderr, 2);
  }
  ctl::HttpStatusOptions http{json, watch, {max_lag, max_lag_seconds}};
  if (!url.empty()) return ctl::HttpStatusCommand(url, http);
  if (config_path.empty()) return Usage(stderr, 2);
  auto settings = ctl::LoadCommandSettings(config_path);
  if (!settings) return 2;
  if (!settings->status_token.empty()) ctl::SetStatusToken(settings->status_token);
  // walshiftd's own view when it runs; the databases' otherwise.
  std::string listen = settings->proto.status().listen().empty() ? "127.0.0.1:9187" : settings->proto.status().listen();
  if (listen != "off" && !absl::EndsWith(listen, ":0")) {  // an ephemeral port cannot be found
    absl::StatusOr<std::string> body = ctl::FetchStatus(listen);
    // Only this pipeline's walshiftd: another one on the host may hold the address.
    if (body.ok()) {
      auto parsed = ctl::ParseStatus(*body);
      if (parsed.ok()) {
        auto field = parsed->fields().find("pipeline");
        if (field != parsed->fields().end() && field->second.string_value() != settings->proto.pipeline()) {
          body = absl::FailedPreconditionError(absl::StrCat("the status endpoint at ", listen, " serves pipeline ",
                                                            field->second.string_value(), ", not ",
                                                            settings->proto.pipeline()));
        }
      }
    }
    if (body.ok()) return ctl::HttpStatusCommand(listen, http, *std::move(body));
    if (!json) {
      std::printf("(%s; reading the databases directly)\n", std::string(body.status().message()).c_str());
    }
  }
  for (;;) {
    struct Status st = Collect(*settings);
    if (watch > 0 && !json && isatty(1)) std::printf("\033[H\033[2J");
    json ? PrintJson(*settings, st) : PrintText(*settings, st, max_lag);
    std::fflush(stdout);
    if (watch <= 0) return ExitCode(st, max_lag);
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(watch * 1000)));
  }
}

int BackfillCommand(int argc, char** argv) {
  std::string config_path, table;
  double wait = -1;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--config" || a == "-c") && i + 1 < argc)
      config_path = argv[++i];
    else if (a == "--table" && i + 1 < argc)
      table = argv[++i];
    else if (a == "--wait") {
      wait = 3600;
      if (i + 1 < argc && absl::SimpleAtod(argv[i + 1], &wait)) ++i;
    } else if (a == "--help" || a == "-h")
      return Usage(stdout, 0);
    else
      return Usage(stderr, 2);
  }
  if (config_path.empty() || table.empty()) return Usage(stderr, 2);
  table = QualifiedTableName(table);
  auto settings = ctl::LoadCommandSettings(config_path);
  if (!settings) return 2;
  std::vector<std::string> targets;
  for (const auto& m : settings->mappings) {
    if (m.common.source() != table) continue;
    std::string t = m.common.target().empty() ? settings->targets.front().name : m.common.target();
    if (std::find(targets.begin(), targets.end(), t) == targets.end()) targets.push_back(t);
  }
  if (targets.empty()) {
    std::fprintf(stderr, "walshiftctl: no mapping of pipeline %s reads %s\n", settings->proto.pipeline().c_str(),
                 table.c_str());
    return 2;
  }
  // The targets' clocks mark the request, so progress rows written after it can be told apart.
  std::vector<std::pair<std::unique_ptr<state::TargetStateReader>, double>> since;
  for (const auto& t : settings->targets) {
    if (std::find(targets.begin(), targets.end(), t.name) == targets.end()) continue;
    auto reader = std::make_unique<state::TargetStateReader>(t, settings->proto.pipeline());
    auto now = reader->Clock();
    if (!now.ok()) {
      std::fprintf(stderr, "walshiftctl: %s\n", std::string(now.status().message()).c_str());
      return 2;
    }
    since.emplace_back(std::move(reader), *now);
  }
  auto src = pg::Connect(settings->source_dsn, "source", "application_name=walshiftctl");
  if (!src.ok()) {
    std::fprintf(stderr, "walshiftctl: %s\n", std::string(src.status().message()).c_str());
    return 2;
  }
  std::string content = absl::StrCat(settings->proto.pipeline(), "\t", table);
  auto r = pg::ExecParams(src->get(), "SELECT pg_logical_emit_message(true, 'walshift.backfill', $1)::text",
                          {content.c_str()}, "requesting the backfill");
  if (!r.ok()) {
    std::fprintf(stderr, "walshiftctl: %s\n", std::string(r.status().message()).c_str());
    return 2;
  }
  std::printf("backfill of %s requested at LSN %s; walshiftd copies it while it streams\n", table.c_str(),
              PQgetvalue(r->get(), 0, 0));
  std::fflush(stdout);
  if (wait < 0) return 0;
  absl::Time deadline = absl::Now() + absl::Seconds(wait);
  std::string last;
  for (;;) {
    bool all_done = true;
    std::string line;
    for (auto& [reader, at] : since) {
      const config::TargetSettings* target = &reader->target();
      auto progress = state::BackfillSince(*reader, table, at);
      std::string state = "requested";
      uint64_t rows = 0;
      if (progress.ok() && *progress) {
        state = (*progress)->state;
        rows = (*progress)->rows;
      }
      all_done &= state == "done";
      absl::StrAppend(&line, line.empty() ? "" : "; ", target->name, ": ", state, ", ", rows, " rows");
    }
    if (line != last) {
      std::printf("  %s\n", line.c_str());
      std::fflush(stdout);
      last = line;
    }
    if (all_done) return 0;
    if (absl::Now() > deadline) {
      std::fprintf(stderr, "walshiftctl: the backfill of %s did not finish within %.0f s (is walshiftd running?)\n",
                   table.c_str(), wait);
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// Records a skip request (the commit LSN of one source transaction) in every PostgreSQL target
// that has not applied it; walshiftd reads it when it connects.
int SkipCommand(int argc, char** argv) {
  std::string config_path, lsn_text, target_name;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--config" || a == "-c") && i + 1 < argc)
      config_path = argv[++i];
    else if (a == "--lsn" && i + 1 < argc)
      lsn_text = argv[++i];
    else if (a == "--target" && i + 1 < argc)
      target_name = argv[++i];
    else if (a == "--help" || a == "-h")
      return Usage(stdout, 0);
    else
      return Usage(stderr, 2);
  }
  std::optional<Lsn> lsn = ParseLsn(lsn_text);
  if (config_path.empty() || !lsn || *lsn == kInvalidLsn) {
    std::fprintf(stderr, "walshiftctl skip: --config FILE and --lsn LSN (e.g. 0/1A2B3C8, the commit LSN the stop "
                         "message names) are required\n");
    return 2;
  }
  auto settings = ctl::LoadCommandSettings(config_path);
  if (!settings) return 2;
  const std::string& pipeline = settings->proto.pipeline();
  std::vector<std::string> requested;
  // Only on the target that rejected it: another target may take the transaction (the stop
  // message names the target when there are several).
  if (target_name.empty() && settings->targets.size() == 1) target_name = settings->targets[0].name;
  const config::TargetSettings* chosen = nullptr;
  std::vector<std::string> names;
  for (const auto& t : settings->targets) {
    names.push_back(t.name);
    if (t.name == target_name) chosen = &t;
  }
  if (chosen == nullptr) {
    std::fprintf(stderr, "walshiftctl skip: --target names the target that rejected the transaction (one of %s)\n",
                 absl::StrJoin(names, ", ").c_str());
    return 2;
  }
  if (chosen->documents()) {
    std::fprintf(stderr, "walshiftctl skip: target %s is a document store, where walshift cannot skip a transaction\n",
                 chosen->name.c_str());
    return 2;
  }
  for (const config::TargetSettings* target : {chosen}) {
    const config::TargetSettings& t = *target;
    std::string what = absl::StrCat("target ", t.name);
    auto conn = pg::Connect(t.dsn, what, "application_name=walshiftctl");
    absl::Status st = conn.status();
    if (st.ok()) st = state::EnsureSchema(conn->get(), what);
    absl::StatusOr<Lsn> checkpoint = st.ok() ? state::ReadCheckpoint(conn->get(), pipeline, what) : st;
    if (!checkpoint.ok()) {
      std::fprintf(stderr, "walshiftctl skip: %s\n", std::string(checkpoint.status().message()).c_str());
      return 2;
    }
    // The checkpoint is the end of the last applied commit record: past it, applied already.
    if (*checkpoint != kInvalidLsn && *lsn < *checkpoint) {
      std::printf("%s: applied past %s already (checkpoint %s): nothing to skip there\n", t.name.c_str(),
                  FormatLsn(*lsn).c_str(), FormatLsn(*checkpoint).c_str());
      continue;
    }
    st = state::WriteSetting(conn->get(), pipeline, state::kSkipTransactionSetting, FormatLsn(*lsn), what);
    if (!st.ok()) {
      std::fprintf(stderr, "walshiftctl skip: %s\n", std::string(st.message()).c_str());
      return 2;
    }
    requested.push_back(t.name);
  }
  if (requested.empty()) return 1;
  std::printf(
      "the source transaction committed at %s is skipped on %s when walshiftd next meets it; start (or restart) "
      "walshiftd. Its changes are then listed in walshift.skipped; a backfill of their tables heals them once the "
      "target takes them (walshiftctl backfill --config %s --table ...)\n",
      FormatLsn(*lsn).c_str(), absl::StrJoin(requested, ", ").c_str(), config_path.c_str());
  return 0;
}

}  // namespace
}  // namespace walshift

int main(int argc, char** argv) {
  if (argc < 2) return walshift::Usage(stderr, 2);
  std::string cmd = argv[1];
  if (cmd == "status") return walshift::StatusCommand(argc - 2, argv + 2);
  if (cmd == "backfill") return walshift::BackfillCommand(argc - 2, argv + 2);
  if (cmd == "events") return walshift::ctl::EventsCommand(argc - 2, argv + 2);
  if (cmd == "verify") return walshift::ctl::VerifyCommand(argc - 2, argv + 2);
  if (cmd == "skip") return walshift::SkipCommand(argc - 2, argv + 2);
  if (cmd == "dead-letter") return walshift::ctl::DeadLetterCommand(argc - 2, argv + 2);
  if (cmd == "reverse") return walshift::ctl::ReverseCommand(argc - 2, argv + 2);
  if (cmd == "cutover") return walshift::ctl::CutoverCommand(argc - 2, argv + 2);
  if (cmd == "rollback") return walshift::ctl::RollbackCommand(argc - 2, argv + 2);
  if (cmd == "--help" || cmd == "-h" || cmd == "help") return walshift::Usage(stdout, 0);
  if (cmd == "--version") {
    std::printf("walshiftctl %s\n", WALSHIFT_VERSION);
    return 0;
  }
  std::fprintf(stderr, "walshiftctl: unknown command '%s'\n", cmd.c_str());
  return walshift::Usage(stderr, 2);
}
