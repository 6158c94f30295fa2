// The soak: a mixed migration (columns with rename, cast and an expression; two tables merged
// into one row; soft delete; child rows into a JSON array) copied and streamed under a pgbench
// load of inserts, updates, moves, soft deletes, undeletes and deletes, while walshiftd is
// killed with SIGKILL over and over: at random instants, and at every kill point (during the
// initial copy, with a group sent but not committed, committed but not confirmed, between
// source transactions inside a group). Afterwards:
//   - every target table equals the mapped source, compared in both directions;
//   - no change was applied twice: every source row change carries a unique stamp and a
//     counting trigger on the target logs the stamps each write set (applied_once.h); no stamp
//     may be logged twice. The json_array mapping's arrays are checked for effect only (exact,
//     no element twice): an array rewritten with an element it already had leaves no trace.
//
// WALSHIFT_SOAK_CYCLES (default 10) sets the number of kills, WALSHIFT_SOAK_SEED the random
// seed (printed, to rerun a failing soak). tools/soak runs it with 100 and prints the figures.

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <thread>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "tests/fault/applied_once.h"
#include "tests/integration/daemon_fixture.h"

namespace walshift::testing {
namespace {

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  int n = 0;
  return v != nullptr && absl::SimpleAtoi(v, &n) && n >= 0 ? n : fallback;
}

// Resident memory of `pid` in KiB (VmRSS), 0 when it cannot be read.
int64_t RssKib(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) != 0) continue;
    std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
    int64_t kib = 0;
    if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kib)) return kib;
  }
  return 0;
}

// Rows of `sql` in both databases must be equal; reports the first differences.
void ExpectSameRows(const PgRows& expected, const PgRows& actual, const std::string& what) {
  EXPECT_EQ(actual.size(), expected.size()) << what;
  std::set<PgRow> want(expected.begin(), expected.end()), got(actual.begin(), actual.end());
  int shown = 0;
  auto show = [](const PgRow& r) {
    std::string s;
    for (const auto& c : r) absl::StrAppend(&s, c ? *c : "NULL", " | ");
    return s;
  };
  for (const PgRow& r : want) {
    if (!got.count(r) && shown++ < 5) ADD_FAILURE() << what << ": missing or different in the target: " << show(r);
  }
  for (const PgRow& r : got) {
    if (!want.count(r) && shown++ < 10) ADD_FAILURE() << what << ": extra or different in the target: " << show(r);
  }
}

class SoakTest : public DaemonTest {};

TEST_F(SoakTest, MixedMigrationKilledOverAndOverEndsExactWithNothingAppliedTwice) {
  const int cycles = EnvInt("WALSHIFT_SOAK_CYCLES", 10);
  const unsigned seed =
      static_cast<unsigned>(EnvInt("WALSHIFT_SOAK_SEED", static_cast<int>(::getpid() ^ ::time(nullptr))));
  std::cout << "soak: " << cycles << " kills, seed " << seed << " (WALSHIFT_SOAK_SEED reruns it)" << std::endl;
  std::mt19937 rng(seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };

  Source(kStampFunctionSql);
  Source(R"sql(
CREATE TABLE events (id int PRIMARY KEY, n int NOT NULL, payload text, at timestamp, stamp bigint);
CREATE TABLE profile_a (id int PRIMARY KEY, name text NOT NULL, stamp bigint);
CREATE TABLE profile_b (id int PRIMARY KEY, score int NOT NULL, stamp bigint);
CREATE TABLE orders (id int PRIMARY KEY, total numeric(12,2) NOT NULL, deleted boolean NOT NULL DEFAULT false,
                     stamp bigint);
CREATE TABLE lines (id int PRIMARY KEY, cart int NOT NULL, sku text NOT NULL, qty int NOT NULL, stamp bigint);
)sql");
  for (const char* t : {"events", "profile_a", "profile_b", "orders", "lines"}) Source(StampTriggerSql(t));
  Source(R"sql(
INSERT INTO events SELECT g, g % 7, md5(g::text), '2026-01-01'::timestamp + g * interval '1 minute' FROM generate_series(1, 6000) g;
INSERT INTO profile_a SELECT g, 'name ' || g FROM generate_series(1, 3000) g;
INSERT INTO profile_b SELECT g, g FROM generate_series(1500, 4500) g;
INSERT INTO orders SELECT g, g * 1.25, g % 10 = 0 FROM generate_series(1, 4000) g;
INSERT INTO lines SELECT g, 1 + g % 800, 'sku-' || g % 97, 1 + g % 5 FROM generate_series(1, 8000) g;
)sql");
  Target(R"sql(
CREATE TABLE events_v2 (event_id int PRIMARY KEY, count bigint NOT NULL, digest text, at_utc timestamptz,
                        doubled bigint, stamp bigint);
CREATE TABLE profiles (id int PRIMARY KEY, name text, a_stamp bigint, score int, b_stamp bigint);
CREATE TABLE orders_v2 (order_id int PRIMARY KEY, total numeric(12,2) NOT NULL, stamp bigint);
CREATE TABLE carts (cart int PRIMARY KEY, lines jsonb NOT NULL DEFAULT '[]');
)sql");
  Target(kCountingFunctionSql);
  Target(CountingTriggerSql("events_v2", "event_id", {"stamp"}) +
         CountingTriggerSql("profiles", "id", {"a_stamp", "b_stamp"}) +
         CountingTriggerSql("orders_v2", "order_id", {"stamp"}));

  std::string config = WriteConfig(R"yaml(
pipeline: {PIPELINE}
source: {dsn: "{SOURCE}", timezone: "Europe/Paris"}
targets: [{name: main, dsn: "{TARGET}"}]
apply: {group_max_changes: 300, group_max_ms: 50}
snapshot: {workers: 2, chunk_rows: 400}
mappings:
  - source: events
    table: events_v2
    key: [event_id]
    columns:
      event_id: id
      count: {sql: "n::bigint"}
      digest: payload
      at_utc: at
      doubled: {sql: "n::bigint * 2"}
      stamp: stamp
  - {source: profile_a, module: merge, table: profiles, key: [id], columns: {id: id, name: name, a_stamp: stamp}}
  - {source: profile_b, module: merge, table: profiles, key: [id], columns: {id: id, score: score, b_stamp: stamp}}
  - {source: orders, module: soft_delete, table: orders_v2, key: [order_id], flag: deleted, deleted_when: true,
     columns: {order_id: id, total: total, stamp: stamp}}
  - {source: lines, module: json_array, table: carts, parent_key: {cart: cart}, column: lines,
     element: {id: id, sku: sku, qty: qty, stamp: stamp}, element_key: [id]}
)yaml");

  auto script = [&](const std::string& name, const std::string& text) {
    std::string path = absl::StrCat(dir_, "/", name, ".sql");
    std::ofstream(path) << text;
    return path;
  };
  std::vector<std::string> pgbench = {
      "-c",
      "4",
      "-j",
      "2",
      "-R",
      "300",
      "-T",
      "86400",
      "--max-tries",
      "20",
      "-f",
      script("events",
             "\\set id random(1, 8000)\n"
             "INSERT INTO events VALUES (:id, 1, md5(:id::text), now()::timestamp) ON CONFLICT (id) DO UPDATE "
             "SET n = events.n + 1, payload = md5(events.payload);\n") +
          "@4",
      "-f",
      script("events_delete", "\\set id random(1, 8000)\nDELETE FROM events WHERE id = :id;\n") + "@1",
      "-f",
      script("profiles",
             "\\set id random(1, 5000)\n"
             "INSERT INTO profile_a VALUES (:id, 'n' || :id) ON CONFLICT (id) DO UPDATE SET name = profile_a.name || "
             "'+';\n"
             "INSERT INTO profile_b VALUES (:id + 7, 1) ON CONFLICT (id) DO UPDATE SET score = profile_b.score + "
             "1;\n") +
          "@3",
      "-f",
      script("profiles_delete",
             "\\set id random(1, 5000)\nDELETE FROM profile_a WHERE id = :id;\nDELETE FROM profile_b WHERE id = :id "
             "+ 3;\n") +
          "@1",
      "-f",
      script("orders",
             "\\set id random(1, 5000)\n"
             "INSERT INTO orders VALUES (:id, :id) ON CONFLICT (id) DO UPDATE SET total = orders.total + 1, "
             "deleted = NOT orders.deleted;\n") +
          "@3",
      "-f",
      script("orders_delete", "\\set id random(1, 5000)\nDELETE FROM orders WHERE id = :id;\n") + "@1",
      "-f",
      script("lines",
             "\\set id random(1, 10000)\n"
             "BEGIN;\n"
             "INSERT INTO lines VALUES (:id, 1 + :id % 800, 'sku', 1) ON CONFLICT (id) DO UPDATE SET qty = lines.qty "
             "+ 1;\n"
             "UPDATE lines SET cart = 1 + (cart + 13) % 800 WHERE id = :id + 1;\n"
             "DELETE FROM lines WHERE id = :id + 2;\n"
             "COMMIT;\n") +
          "@3",
  };

  absl::Time start = absl::Now();
  auto workload = StartPgbench(pgbench);
  ASSERT_NE(workload, nullptr);

  int64_t max_rss = 0;
  std::map<std::string, int> kills;
  const std::vector<std::string> points = {"apply.before_commit", "apply.after_commit", "pipeline.after_source_commit"};
  for (int cycle = 0; cycle < cycles; ++cycle) {
    // The first two kills land inside the initial copy; then random instants alternate with the
    // kill points in turn.
    std::map<std::string, std::string> env;
    std::string kind;
    if (cycle < 2) {
      kind = "copy.after_chunk";
      env["WALSHIFT_CRASH_AT"] = absl::StrCat(kind, ":", uniform(1, 4));
    } else if (cycle % 2 == 0) {
      kind = "random instant";
    } else {
      kind = points[(cycle / 2) % points.size()];
      int n = kind == "pipeline.after_source_commit" ? uniform(1, 1500) : uniform(1, 40);
      env["WALSHIFT_CRASH_AT"] = absl::StrCat(kind, ":", n);
    }
    ASSERT_TRUE(StartDaemon(config, env).ok());
    if (kind == "random instant") {
      absl::Time until = absl::Now() + absl::Milliseconds(uniform(200, 2500));
      while (absl::Now() < until && daemon_->Running()) {
        max_rss = std::max(max_rss, RssKib(daemon_->pid()));
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      ASSERT_TRUE(daemon_->Running()) << "walshiftd exited on its own:\n" << DaemonLog();
      daemon_->Kill();
    } else {
      absl::Time deadline = absl::Now() + absl::Seconds(120);
      while (daemon_->Running() && absl::Now() < deadline) {
        max_rss = std::max(max_rss, RssKib(daemon_->pid()));
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      auto st = daemon_->Wait(absl::Seconds(1));
      ASSERT_TRUE(st.ok()) << "walshiftd never reached " << env["WALSHIFT_CRASH_AT"] << ":\n" << DaemonLog();
      ASSERT_TRUE(st->signaled() && st->term_signal() == SIGKILL)
          << env["WALSHIFT_CRASH_AT"] << ": " << st->ToString() << "\n"
          << DaemonLog();
    }
    ++kills[kind];
  }

  // The last walshiftd runs on while the load goes on a little, then the load stops.
  ASSERT_TRUE(StartDaemon(config).ok());
  std::this_thread::sleep_for(std::chrono::seconds(2));
  ASSERT_TRUE(workload->Signal(SIGINT).ok());
  (void)workload->Wait(absl::Seconds(30));
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(300)).ok()) << DaemonLog();
  max_rss = std::max(max_rss, RssKib(daemon_->pid()));

  ExpectSameRows(SourceRows("SELECT id::text, n::bigint::text, payload, (at AT TIME ZONE 'Europe/Paris')::text, "
                            "(n::bigint * 2)::text, stamp::text FROM events"),
                 TargetRows("SELECT event_id::text, count::text, digest, at_utc::text, doubled::text, stamp::text "
                            "FROM events_v2"),
                 "events → events_v2");
  ExpectSameRows(SourceRows("SELECT coalesce(a.id, b.id)::text, a.name, a.stamp::text, b.score::text, b.stamp::text "
                            "FROM profile_a a FULL JOIN profile_b b ON a.id = b.id"),
                 TargetRows("SELECT id::text, name, a_stamp::text, score::text, b_stamp::text FROM profiles "
                            "WHERE a_stamp IS NOT NULL OR b_stamp IS NOT NULL"),
                 "profile_a + profile_b → profiles");
  ExpectSameRows(SourceRows("SELECT id::text, total::text, stamp::text FROM orders WHERE NOT deleted"),
                 TargetRows("SELECT order_id::text, total::text, stamp::text FROM orders_v2"), "orders → orders_v2");
  // Element by element first (names the line that is wrong), then whole arrays (their order).
  ExpectSameRows(SourceRows("SELECT cart::text, id::text, sku, qty::text, stamp::text FROM lines"),
                 TargetRows("SELECT cart::text, e->>'id', e->>'sku', e->>'qty', e->>'stamp' FROM carts, "
                            "jsonb_array_elements(lines) e"),
                 "lines → carts.lines elements");
  ExpectSameRows(SourceRows("SELECT cart::text, jsonb_agg(jsonb_build_object('id', id, 'sku', sku, 'qty', qty, "
                            "'stamp', stamp) ORDER BY id)::text FROM lines GROUP BY cart"),
                 TargetRows("SELECT cart::text, lines::text FROM carts WHERE lines <> '[]'"), "lines → carts.lines");
  EXPECT_EQ(TargetRows("SELECT count(*) - count(DISTINCT e->'id') FROM carts, jsonb_array_elements(lines) e"),
            (PgRows{{"0"}}))
      << "a line is in two carts or twice in one";

  for (const auto& [table, key, stamp] :
       std::vector<std::tuple<std::string, std::string, std::string>>{{"events_v2", "event_id", "stamp"},
                                                                      {"profiles", "id", "a_stamp"},
                                                                      {"profiles", "id", "b_stamp"},
                                                                      {"orders_v2", "order_id", "stamp"}}) {
    EXPECT_EQ(TargetRows(UnloggedStampsSql(table, key, stamp)), (PgRows{{"0"}}))
        << table << "." << stamp << ": walshiftd's writes were not counted";
  }
  PgRows twice = TargetRows(kAppliedTwiceSql);
  EXPECT_TRUE(twice.empty()) << "changes applied twice, e.g. " << *twice[0][0] << " key " << *twice[0][1] << " "
                             << *twice[0][2] << " " << *twice[0][3] << " written " << *twice[0][4] << " times";
  EXPECT_TRUE(StopDaemon().success());
  // The detector itself: a row rewritten as it was (what a replayed change does) is seen.
  Target("UPDATE events_v2 SET count = count WHERE event_id = (SELECT min(event_id) FROM events_v2)");
  EXPECT_FALSE(TargetRows(kAppliedTwiceSql).empty()) << "the counting trigger missed a rewritten row";

  std::string source_changes =
      *SourceRows("SELECT sum(n_tup_ins + n_tup_upd + n_tup_del)::text FROM pg_stat_user_tables")[0][0];
  std::string writes = *TargetRows("SELECT (count(*) - 1)::text FROM applied_log")[0][0];
  std::string kill_list;
  for (const auto& [k, n] : kills) absl::StrAppend(&kill_list, kill_list.empty() ? "" : ", ", n, " ", k);
  std::cout << "soak: " << cycles << " kills (" << kill_list << "), " << source_changes
            << " source row changes (copy included), " << writes << " counted target writes, 0 applied twice, "
            << absl::ToInt64Seconds(absl::Now() - start) << " s, walshiftd max RSS " << max_rss / 1024 << " MiB"
            << std::endl;
}

}  // namespace
}  // namespace walshift::testing
