// walshiftctl dead-letter list | show | retry | discard: the changes a target rejected under
// on_error: dead_letter (walshift.dead_letter in each PostgreSQL target).
//
// list and show read the targets. retry and discard write a request into the source's WAL (a
// transactional logical message), so that walshiftd acts on it at its place in the stream: in
// the same target transaction as the changes around it, and exactly once however often it
// restarts. They then wait for walshiftd to report the outcome in walshift.dead_letter.

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "daemon/config/config.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/dead_letter.h"
#include "tools/walshiftctl/commands.h"
#include "tools/walshiftctl/load_config.h"

namespace walshift::ctl {
namespace {

int DeadLetterUsage(FILE* out, int code) {
  std::fprintf(
      out,
      "usage: walshiftctl dead-letter list --config FILE [--target NAME] [--state parked|retried|discarded|all]\n"
      "       walshiftctl dead-letter show --config FILE ID [--target NAME]\n"
      "       walshiftctl dead-letter retry --config FILE (ID... | --all | --table SCHEMA.TABLE) [--target NAME]\n"
      "                               [--reason TEXT] [--wait SECONDS]\n"
      "       walshiftctl dead-letter discard --config FILE (ID... | --all | --table SCHEMA.TABLE) --reason TEXT\n"
      "                               [--by NAME] [--target NAME] [--wait SECONDS]\n"
      "  Changes a target rejected under on_error: dead_letter, and the later changes of the same rows\n"
      "  parked behind them. retry re-maps them through the current mappings and applies them in order\n"
      "  (after you fixed the target, the mapping or the source row); discard leaves them out, recording\n"
      "  who and why. Both take every parked change that writes the same rows with them, and act when\n"
      "  walshiftd reaches the request in the stream. Exit 0 done, 1 still parked (rejected again, or\n"
      "  walshiftd did not act within --wait, default 60 s), 2 error.\n");
  return code;
}

struct Options {
  std::string action, config_path, target, state = "parked", table, reason, by;
  std::vector<int64_t> ids;
  bool all = false;
  double wait = 60;
};

std::string DefaultBy() {
  const char* user = std::getenv("USER");
  char host[256] = {0};
  (void)gethostname(host, sizeof(host) - 1);
  return absl::StrCat(user && *user ? user : "unknown", "@", host);
}

// One row of walshift.dead_letter as list and show print it.
constexpr char kColumns[] =
    "id::text, state, to_char(parked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), source_table, operation, "
    "target_table, target_operation, target_key, COALESCE(sqlstate, ''), message, COALESCE(constraint_name, ''), "
    "commit_lsn::text, seq::text, change_lsn::text, COALESCE(to_char(commit_time AT TIME ZONE 'UTC', "
    "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), ''), attempts::text, "
    "COALESCE((SELECT b.id::text FROM walshift.dead_letter b WHERE b.pipeline = d.pipeline AND b.commit_lsn = "
    "d.behind_commit_lsn AND b.seq = d.behind_seq), ''), COALESCE(resolved_by, ''), COALESCE(resolution, ''), "
    "COALESCE(to_char(resolved_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), ''), "
    "jsonb_pretty(source_change), COALESCE(jsonb_pretty(mapped_values), '')";

std::string Short(std::string s, size_t n) {
  if (s.size() > n) s = s.substr(0, n - 3) + "...";
  return s;
}

// The targets the command is about: --target, or every PostgreSQL target.
std::vector<const config::TargetSettings*> Targets(const config::Settings& s, const Options& o, bool need_one) {
  std::vector<const config::TargetSettings*> out;
  for (const auto& t : s.targets) {
    if (t.documents()) continue;
    if (o.target.empty() || t.name == o.target) out.push_back(&t);
  }
  if (need_one && out.size() > 1) {
    std::fprintf(stderr, "walshiftctl dead-letter: ids are per target: name it with --target\n");
    return {};
  }
  if (out.empty()) {
    std::fprintf(stderr, "walshiftctl dead-letter: %s\n",
                 o.target.empty() ? "no PostgreSQL target in the config"
                                  : absl::StrCat("no PostgreSQL target named ", o.target).c_str());
  }
  return out;
}

int List(const config::Settings& s, const Options& o) {
  auto targets = Targets(s, o, false);
  if (targets.empty()) return 2;
  for (const auto* t : targets) {
    std::string what = absl::StrCat("target ", t->name);
    auto conn = pg::Connect(t->dsn, what, "application_name=walshiftctl");
    if (!conn.ok()) {
      std::fprintf(stderr, "walshiftctl dead-letter: %s\n", std::string(conn.status().message()).c_str());
      return 2;
    }
    std::string sql = absl::StrCat("SELECT ", kColumns, " FROM walshift.dead_letter d WHERE pipeline = $1",
                                   o.state == "all" ? "" : " AND state = $2", " ORDER BY commit_lsn, seq");
    std::vector<const char*> params = {s.proto.pipeline().c_str()};
    if (o.state != "all") params.push_back(o.state.c_str());
    auto r = pg::ExecParams(conn->get(), sql, params, absl::StrCat(what, ": reading walshift.dead_letter"));
    if (!r.ok()) {
      std::fprintf(stderr, "walshiftctl dead-letter: %s\n", std::string(r.status().message()).c_str());
      return 2;
    }
    int n = PQntuples(r->get());
    std::printf("target %s: %d %s change%s\n", t->name.c_str(), n, o.state == "all" ? "recorded" : o.state.c_str(),
                n == 1 ? "" : "s");
    for (int i = 0; i < n; ++i) {
      auto v = [&](int c) { return std::string(PQgetvalue(r->get(), i, c)); };
      std::string why = v(8).empty() ? absl::StrCat("behind #", v(16)) : absl::StrCat("SQLSTATE ", v(8));
      std::printf("  #%s %s %s %s %s -> %s %s (%s) %s%s: %s\n", v(0).c_str(), v(1).c_str(), v(2).c_str(),
                  v(4).c_str(), v(3).c_str(), v(6).c_str(), v(5).c_str(), v(7).c_str(), why.c_str(),
                  v(1) == "parked" ? "" : absl::StrCat(" by ", v(17)).c_str(), Short(v(9), 160).c_str());
    }
  }
  return 0;
}

int Show(const config::Settings& s, const Options& o) {
  auto targets = Targets(s, o, true);
  if (targets.empty() || o.ids.size() != 1) {
    if (o.ids.size() != 1) std::fprintf(stderr, "walshiftctl dead-letter show: name one id\n");
    return 2;
  }
  const auto* t = targets[0];
  std::string what = absl::StrCat("target ", t->name);
  auto conn = pg::Connect(t->dsn, what, "application_name=walshiftctl");
  std::string id = absl::StrCat(o.ids[0]);
  auto r = conn.ok() ? pg::ExecParams(conn->get(),
                                      absl::StrCat("SELECT ", kColumns,
                                                   " FROM walshift.dead_letter d WHERE pipeline = $1 AND id = $2"),
                                      {s.proto.pipeline().c_str(), id.c_str()}, what)
                     : absl::StatusOr<pg::ResultPtr>(conn.status());
  if (!r.ok()) {
    std::fprintf(stderr, "walshiftctl dead-letter: %s\n", std::string(r.status().message()).c_str());
    return 2;
  }
  if (PQntuples(r->get()) == 0) {
    std::fprintf(stderr, "walshiftctl dead-letter: target %s has no change #%s of pipeline %s\n", t->name.c_str(),
                 id.c_str(), s.proto.pipeline().c_str());
    return 2;
  }
  auto v = [&](int c) { return std::string(PQgetvalue(r->get(), 0, c)); };
  const bool show = s.proto.log().values() == "show";
  std::printf("#%s on target %s: %s\n", v(0).c_str(), t->name.c_str(), v(1).c_str());
  std::printf("  parked at:      %s (attempts %s)\n", v(2).c_str(), v(15).c_str());
  std::printf("  source:         %s of %s at LSN %s, transaction committed at %s (%s), change %s\n", v(4).c_str(),
              v(3).c_str(), v(13).c_str(), v(11).c_str(), v(14).c_str(), v(12).c_str());
  std::printf("  target:         %s of %s (%s)\n", v(6).c_str(), v(5).c_str(), v(7).c_str());
  if (!v(8).empty()) {
    std::printf("  rejected:       SQLSTATE %s%s\n", v(8).c_str(),
                v(10).empty() ? "" : absl::StrCat(", constraint ", v(10)).c_str());
  } else {
    std::printf("  behind:         #%s (an earlier parked change of the same row)\n", v(16).c_str());
  }
  std::printf("  message:        %s\n", v(9).c_str());
  if (v(1) != "parked") {
    std::printf("  resolved:       %s at %s by %s%s\n", v(1).c_str(), v(19).c_str(), v(17).c_str(),
                v(18).empty() ? "" : absl::StrCat(": ", v(18)).c_str());
  }
  if (show) {
    std::printf("  source change:\n%s\n  mapped values:\n%s\n", v(20).c_str(), v(21).c_str());
  } else {
    std::printf("  source change and mapped values: redacted (log.values: redact); they are in walshift.dead_letter "
                "(columns source_change, mapped_values) for a role that may read them\n");
  }
  return 0;
}

// retry, discard: the parked changes named, as (commit LSN, seq) with their ids and attempts.
struct Named {
  std::string id, commit_lsn, seq, attempts;
};

absl::StatusOr<std::vector<Named>> Select(PGconn* conn, const config::Settings& s, const Options& o,
                                          const std::string& what) {
  std::string ids;
  for (int64_t id : o.ids) absl::StrAppend(&ids, ids.empty() ? "{" : ",", id);
  ids += "}";
  if (ids == "}") ids = "{}";
  ASSIGN_OR_RETURN(pg::ResultPtr r,
                   pg::ExecParams(conn,
                                  "SELECT id::text, commit_lsn::text, seq::text, attempts::text FROM walshift.dead_letter "
                                  "WHERE pipeline = $1 AND state = 'parked' AND ($2 OR id = ANY($3::bigint[]) OR "
                                  "source_table = $4) ORDER BY commit_lsn, seq",
                                  {s.proto.pipeline().c_str(), o.all ? "true" : "false", ids.c_str(), o.table.c_str()},
                                  absl::StrCat(what, ": reading walshift.dead_letter")));
  std::vector<Named> out;
  for (int i = 0; i < PQntuples(r.get()); ++i) {
    out.push_back({PQgetvalue(r.get(), i, 0), PQgetvalue(r.get(), i, 1), PQgetvalue(r.get(), i, 2),
                   PQgetvalue(r.get(), i, 3)});
  }
  return out;
}

int Resolve(const config::Settings& s, const Options& o) {
  if (!o.ids.empty() + o.all + !o.table.empty() != 1) {
    std::fprintf(stderr, "walshiftctl dead-letter %s: name the changes: ids, --all or --table\n", o.action.c_str());
    return 2;
  }
  if (o.action == "discard" && o.reason.empty()) {
    std::fprintf(stderr, "walshiftctl dead-letter discard: --reason TEXT is required (it is recorded with them)\n");
    return 2;
  }
  auto targets = Targets(s, o, !o.ids.empty());
  if (targets.empty()) return 2;
  auto src = pg::Connect(s.source_dsn, "source", "application_name=walshiftctl");
  if (!src.ok()) {
    std::fprintf(stderr, "walshiftctl dead-letter: %s\n", std::string(src.status().message()).c_str());
    return 2;
  }
  struct Pending {
    const config::TargetSettings* target;
    pg::ConnPtr conn;
    std::vector<Named> named;
  };
  std::vector<Pending> pending;
  for (const auto* t : targets) {
    std::string what = absl::StrCat("target ", t->name);
    auto conn = pg::Connect(t->dsn, what, "application_name=walshiftctl");
    auto named = conn.ok() ? Select(conn->get(), s, o, what) : absl::StatusOr<std::vector<Named>>(conn.status());
    if (!named.ok()) {
      std::fprintf(stderr, "walshiftctl dead-letter: %s\n", std::string(named.status().message()).c_str());
      return 2;
    }
    if (named->empty()) {
      std::printf("target %s: no parked change matches\n", t->name.c_str());
      continue;
    }
    DeadLetterRequest req;
    req.pipeline = s.proto.pipeline();
    req.target = t->name;
    req.action = o.action;
    req.by = o.by.empty() ? DefaultBy() : o.by;
    req.reason = o.reason;
    std::vector<std::string> ids;
    for (const Named& n : *named) {
      req.changes.emplace_back(ParseLsn(n.commit_lsn).value_or(kInvalidLsn), std::atoi(n.seq.c_str()));
      ids.push_back("#" + n.id);
    }
    std::string content = FormatDeadLetterRequest(req);
    auto r = pg::ExecParams(src->get(), "SELECT pg_logical_emit_message(true, $1, $2)::text",
                            {kDeadLetterRequest, content.c_str()}, "requesting it on the source");
    if (!r.ok()) {
      std::fprintf(stderr, "walshiftctl dead-letter: %s\n", std::string(r.status().message()).c_str());
      return 2;
    }
    std::printf("target %s: %s of %s requested at LSN %s; walshiftd acts on it when it reaches it in the stream "
                "(parked changes of the same rows go with them)\n",
                t->name.c_str(), o.action.c_str(), absl::StrJoin(ids, " ").c_str(), PQgetvalue(r->get(), 0, 0));
    pending.push_back({t, *std::move(conn), *std::move(named)});
  }
  std::fflush(stdout);
  if (pending.empty()) return 1;
  absl::Time deadline = absl::Now() + absl::Seconds(o.wait);
  for (;;) {
    int open = 0, failed = 0;
    std::vector<std::string> lines;
    for (auto& p : pending) {
      for (const Named& n : p.named) {
        auto r = pg::ExecParams(p.conn.get(),
                                "SELECT state, attempts::text, message FROM walshift.dead_letter WHERE pipeline = $1 "
                                "AND commit_lsn = $2::pg_lsn AND seq = $3::int",
                                {s.proto.pipeline().c_str(), n.commit_lsn.c_str(), n.seq.c_str()}, "reading");
        if (!r.ok() || PQntuples(r->get()) != 1) {
          ++open;
          continue;
        }
        std::string state = PQgetvalue(r->get(), 0, 0), attempts = PQgetvalue(r->get(), 0, 1);
        if (state == "parked" && attempts == n.attempts) {
          ++open;
        } else if (state == "parked") {
          ++failed;
          lines.push_back(absl::StrCat("  ", p.target->name, " #", n.id, ": not applied, still parked: ",
                                       PQgetvalue(r->get(), 0, 2)));
        } else {
          lines.push_back(absl::StrCat("  ", p.target->name, " #", n.id, ": ", state));
        }
      }
    }
    if (open == 0 || absl::Now() > deadline) {
      for (const auto& l : lines) std::printf("%s\n", l.c_str());
      if (open > 0) {
        std::printf("%d not acted on within %.0f s: is walshiftd running? It acts on the request when it reaches it\n",
                    open, o.wait);
      }
      return open + failed == 0 ? 0 : 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

}  // namespace

int DeadLetterCommand(int argc, char** argv) {
  if (argc < 1) return DeadLetterUsage(stderr, 2);
  Options o;
  o.action = argv[0];
  if (o.action == "--help" || o.action == "-h") return DeadLetterUsage(stdout, 0);
  if (o.action != "list" && o.action != "show" && o.action != "retry" && o.action != "discard") {
    std::fprintf(stderr, "walshiftctl dead-letter: unknown action '%s'\n", o.action.c_str());
    return DeadLetterUsage(stderr, 2);
  }
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&](std::string* into) {
      if (i + 1 >= argc) return false;
      *into = argv[++i];
      return true;
    };
    int64_t id = 0;
    std::string wait;
    if ((a == "--config" || a == "-c") && next(&o.config_path)) continue;
    if (a == "--target" && next(&o.target)) continue;
    if (a == "--state" && next(&o.state)) continue;
    if (a == "--table" && next(&o.table)) continue;
    if (a == "--reason" && next(&o.reason)) continue;
    if (a == "--by" && next(&o.by)) continue;
    if (a == "--wait" && next(&wait) && absl::SimpleAtod(wait, &o.wait)) continue;
    if (a == "--all") {
      o.all = true;
      continue;
    }
    if (a == "--help" || a == "-h") return DeadLetterUsage(stdout, 0);
    if (absl::SimpleAtoi(absl::StripPrefix(a, "#"), &id) && id > 0) {
      o.ids.push_back(id);
      continue;
    }
    return DeadLetterUsage(stderr, 2);
  }
  if (o.config_path.empty()) {
    std::fprintf(stderr, "walshiftctl dead-letter: --config FILE is required\n");
    return 2;
  }
  if (o.state != "parked" && o.state != "retried" && o.state != "discarded" && o.state != "all") {
    std::fprintf(stderr, "walshiftctl dead-letter: --state is one of parked, retried, discarded, all\n");
    return 2;
  }
  if (!o.table.empty()) o.table = QualifiedTableName(o.table);
  auto settings = LoadCommandSettings(o.config_path);
  if (!settings) return 2;
  if (o.action == "list") return List(*settings, o);
  if (o.action == "show") return Show(*settings, o);
  return Resolve(*settings, o);
}

}  // namespace walshift::ctl
