// The drift verifier through `walshiftctl verify`: drift written straight into the target is
// found with its exact key and column (as a DriftEvent on the embedded broker and a row in
// walshift.drift); equal values in another form are not drift; a heavy concurrent workload
// gives no false alarm over several passes; --repair heals; the cutover gate.

#include <httplib.h>

#include <fstream>
#include <regex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/kafka_broker.h"
#include "tests/testing/test_paths.h"
#include "walshift/v1/events.pb.h"
#include <librdkafka/rdkafka.h>

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;

class VerifyTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    ASSERT_NO_FATAL_FAILURE(StartKafka({"walshift.drift"}));
    Source(
        "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2), note text, doc json, at timestamptz);"
        "INSERT INTO orders SELECT g, g / 4.0, 'note ' || g, json_build_object('a', g, 'b', 'x'), "
        "'2026-01-01 00:00:00+00'::timestamptz + g * interval '1 minute' FROM generate_series(1, 2000) g");
    Target(
        "CREATE TABLE orders_v2 (order_id int PRIMARY KEY, cents bigint, amount numeric(12,3), note text, doc json, "
        "at timestamptz)");
    config_ = WriteConfig(absl::StrCat(kOneTarget, "kafka: {brokers: \"", kafka_->bootstrap(), "\"}\n", R"(mappings:
  - source: orders
    table: orders_v2
    key: [order_id]
    columns: {order_id: id, cents: {sql: "(amount * 100)::bigint"}, amount: amount, note: note, doc: doc, at: at}
)"));
  }

  RunResult Ctl(const std::vector<std::string>& args) { return Walshiftctl(args); }

  std::vector<v1::DriftEvent> DriftEvents() {
    std::vector<v1::DriftEvent> out;
    for (const KafkaRecord& r : ReadTopic(kafka_->bootstrap(), "walshift.drift")) {
      v1::DriftEvent e;
      if (r.type == "walshift.v1.DriftEvent" && e.ParseFromString(r.value)) out.push_back(e);
    }
    return out;
  }

  std::string config_;
};

TEST_F(VerifyTest, FindsInjectedDriftWithItsKeyAndColumnAndRepairsIt) {
  ASSERT_TRUE(StartDaemon(config_).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  RunResult clean = Ctl({"verify", "--config", config_});
  EXPECT_EQ(clean.status.exit_code(), 0) << clean.stdout_text << clean.stderr_text;
  EXPECT_THAT(clean.stdout_text, HasSubstr("2000 checked, 0 missing, 0 extra, 0 mismatched"));

  // Equal values in another form are not drift: json spacing and key order, numeric scale, a
  // timestamp in another zone.
  Target(
      "UPDATE orders_v2 SET doc = '{ \"b\" : \"x\", \"a\" : 10 }', amount = 2.500, "
      "at = '2026-01-01 02:10:00+02' WHERE order_id = 10");
  // Drift: a changed column, a lost row, a row with no source.
  Target(
      "UPDATE orders_v2 SET note = 'tampered' WHERE order_id = 7;"
      "DELETE FROM orders_v2 WHERE order_id = 8;"
      "INSERT INTO orders_v2 VALUES (99999, 1, 0.01, 'ghost', '{}', now()), (0, 1, 0.01, 'ghost', '{}', now()), "
      "(2500, 1, 0.01, 'ghost', '{}', now())");  // keys a text-ordered walk would skip, too
  RunResult r = Ctl({"verify", "--config", config_});
  EXPECT_EQ(r.status.exit_code(), 1) << r.stdout_text << r.stderr_text;
  EXPECT_THAT(r.stdout_text, HasSubstr("2000 checked, 1 missing, 3 extra, 1 mismatched"));
  EXPECT_THAT(r.stdout_text, HasSubstr("0 still changing"));
  EXPECT_THAT(r.stdout_text, HasSubstr("    MISMATCH: 1 (1 shown)\n"
                                       "      public.orders_v2 (order_id=7)  note: expected note 7, actual tampered\n"));
  EXPECT_THAT(r.stdout_text, HasSubstr("    MISSING: 1 (1 shown)\n      public.orders_v2 (order_id=8)\n"));
  EXPECT_THAT(r.stdout_text, HasSubstr("    EXTRA: 3 (3 shown)\n"));
  EXPECT_THAT(r.stdout_text, HasSubstr("      public.orders_v2 (order_id=99999)\n"));
  EXPECT_THAT(r.stdout_text, ::testing::Not(HasSubstr("order_id=10)")));
  // The report is the output: no warning per row besides it.
  EXPECT_THAT(r.stderr_text, ::testing::Not(HasSubstr(": drift ")));

  EXPECT_EQ(TargetRows("SELECT kind, key, coalesce(columns->0->>'column', '') FROM walshift.drift ORDER BY kind, id"),
            (PgRows{{"EXTRA", "order_id=0", ""},
                    {"EXTRA", "order_id=2500", ""},
                    {"EXTRA", "order_id=99999", ""},
                    {"MISMATCH", "order_id=7", "note"},
                    {"MISSING", "order_id=8", ""}}));
  std::vector<v1::DriftEvent> events = DriftEvents();
  ASSERT_EQ(events.size(), 5u);
  for (const auto& e : events) {
    EXPECT_EQ(e.pipeline(), pipeline_);
    EXPECT_EQ(e.source_table(), "public.orders");
    EXPECT_EQ(e.target_table(), "public.orders_v2");
    // Values stay out of Kafka by default (log.values: redact): the column is named.
    for (const auto& c : e.columns()) {
      EXPECT_EQ(c.column(), "note");
      EXPECT_EQ(c.expected(), "(redacted)");
      EXPECT_EQ(c.actual(), "(redacted)");
    }
  }
  // --samples N: N per kind shown, every one counted.
  RunResult few = Ctl({"verify", "--config", config_, "--samples", "1"});
  EXPECT_EQ(few.status.exit_code(), 1);
  EXPECT_THAT(few.stdout_text, HasSubstr("2000 checked, 1 missing, 3 extra, 1 mismatched"));
  EXPECT_THAT(few.stdout_text, HasSubstr("    EXTRA: 3 (1 shown)\n"));

  // --repair heals through walshiftd (a backfill) and deletes the extra row; then no drift.
  RunResult repaired = Ctl({"verify", "--config", config_, "--repair"});
  EXPECT_EQ(repaired.status.exit_code(), 0) << repaired.stdout_text << repaired.stderr_text << DaemonLog();
  EXPECT_THAT(repaired.stdout_text, HasSubstr("repaired: 3 extra rows deleted"));
  RunResult after = Ctl({"verify", "--config", config_});
  EXPECT_EQ(after.status.exit_code(), 0) << after.stdout_text;
  EXPECT_EQ(TargetRows("SELECT note FROM orders_v2 WHERE order_id IN (7, 8) ORDER BY 1"),
            (PgRows{{"note 7"}, {"note 8"}}));
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(VerifyTest, NoFalseAlarmsUnderAHeavyConcurrentWorkload) {
  ASSERT_TRUE(StartDaemon(config_).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  std::string script = dir_ + "/hot.sql";
  std::ofstream(script)
      << "\\set id random(1, 2200)\n"
         "INSERT INTO orders VALUES (:id, :id / 3.0, 'w', '{\"w\": 1}', now()) ON CONFLICT (id) DO UPDATE "
         "SET amount = orders.amount + 1, note = orders.note || '.';\n"
         "DELETE FROM orders WHERE id = :id + 5 AND :id % 7 = 0;\n";
  auto workload = StartPgbench({"-c", "4", "-j", "2", "-T", "25", "-f", script});
  ASSERT_NE(workload, nullptr);
  for (int pass = 0; pass < 3; ++pass) {
    RunResult r = Ctl({"verify", "--config", config_});
    EXPECT_EQ(r.status.exit_code(), 0) << "pass " << pass << ":\n" << r.stdout_text << r.stderr_text;
  }
  auto done = workload->Wait(absl::Seconds(120));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_TRUE(TargetRows("SELECT 1 FROM walshift.drift").empty());
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(VerifyTest, ContinuousVerifierInTheDaemonReportsDriftInStatusAndMetrics) {
  Target("CREATE TABLE orders_copy (id int PRIMARY KEY, amount numeric, note text, doc json, at timestamptz)");
  std::string config = WriteConfig(absl::StrCat(kOneTarget, "kafka: {brokers: \"", kafka_->bootstrap(), "\"}\n",
                                                R"(verify: {enabled: true, rows_per_second: 20000, interval_s: 1}
mappings:
  - source: orders
    table: orders_v2
    key: [order_id]
    columns: {order_id: id, cents: {sql: "(amount * 100)::bigint"}, amount: amount, note: note, doc: doc, at: at}
  - {source: orders, table: orders_copy, verify: false}
)"));
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Target(
      "UPDATE orders_v2 SET note = 'tampered' WHERE order_id = 42; UPDATE orders_copy SET note = 'ignored' WHERE id = "
      "1");
  std::smatch m;
  int port = -1;
  for (int i = 0; i < 50 && port < 0; ++i) {
    std::string log = DaemonLog();
    if (std::regex_search(log, m, std::regex("status: http://127\\.0\\.0\\.1:([0-9]+)/status")))
      port = std::stoi(m[1]);
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GT(port, 0);
  httplib::Client c("127.0.0.1", port);
  std::string metrics;
  for (int i = 0; i < 120; ++i) {
    auto r = c.Get("/metrics");
    if (r) metrics = r->body;
    if (metrics.find("kind=\"MISMATCH\"} 1") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_THAT(metrics, HasSubstr("walshift_drift_total{pipeline=\"" + pipeline_ +
                                 "\",mapping=\"mappings[0]\",table=\"public.orders\",kind=\"MISMATCH\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("walshift_verify_last_full_pass_timestamp_seconds"));
  EXPECT_THAT(metrics, ::testing::Not(HasSubstr("mapping=\"mappings[1]\"")));  // verify: false
  auto status = c.Get("/status");
  ASSERT_TRUE(status);
  EXPECT_THAT(status->body, HasSubstr("\"verify\":[{\"mapping\":\"mappings[0]\""));
  // Later passes see the same drift again: counted, but recorded and published once.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_EQ(TargetRows("SELECT kind, key FROM walshift.drift"), (PgRows{{"MISMATCH", "order_id=42"}}));
  EXPECT_EQ(DriftEvents().size(), 1u);
  ExitStatus stopped = StopDaemon();
  EXPECT_TRUE(stopped.success()) << stopped.ToString()
                                 << DaemonLog().substr(DaemonLog().size() > 600 ? DaemonLog().size() - 600 : 0);
}

TEST_F(VerifyTest, JsonArrayElementsAreComparedByElementKey) {
  Source(
      "CREATE TABLE posts (id int PRIMARY KEY, article int, platform text, body text);"
      "INSERT INTO posts SELECT g, g % 10, (ARRAY['x','bluesky','threads'])[1 + g % 3], 'post ' || g "
      "FROM generate_series(1, 300) g");
  Target(
      "CREATE TABLE articles (article int PRIMARY KEY, posts jsonb NOT NULL DEFAULT '[]');"
      "CREATE INDEX ON articles USING gin (posts jsonb_path_ops) WITH (fastupdate = off)");
  std::string config = WriteConfig(kOneTarget + R"(mappings:
  - {source: posts, module: json_array, table: articles, parent_key: {article: article}, column: posts,
     element: {legacy_id: id, platform: platform, text: body}, element_key: [legacy_id], sort_by: platform}
)");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  RunResult clean = Ctl({"verify", "--config", config});
  EXPECT_EQ(clean.status.exit_code(), 0) << clean.stdout_text << clean.stderr_text;
  // One element edited, one removed, in the target only.
  Target(
      "UPDATE articles SET posts = (SELECT jsonb_agg(CASE WHEN e->>'legacy_id' = '7' "
      "THEN jsonb_set(e, '{text}', '\"edited\"') ELSE e END) FROM jsonb_array_elements(posts) e) WHERE article = 7;"
      "UPDATE articles SET posts = (SELECT jsonb_agg(e) FROM jsonb_array_elements(posts) e "
      "WHERE e->>'legacy_id' <> '13') WHERE article = 3");
  RunResult r = Ctl({"verify", "--config", config});
  EXPECT_EQ(r.status.exit_code(), 1) << r.stdout_text << r.stderr_text;
  EXPECT_THAT(r.stdout_text, HasSubstr("300 checked, 1 missing, extra rows not looked for, 1 mismatched"));
  EXPECT_THAT(r.stdout_text, HasSubstr("    MISMATCH: 1 (1 shown)\n      public.articles ({\"legacy_id\": 7})  element: expected"));
  EXPECT_THAT(r.stdout_text, HasSubstr("\"text\": \"edited\""));
  EXPECT_THAT(r.stdout_text, HasSubstr("    MISSING: 1 (1 shown)\n      public.articles ({\"legacy_id\": 13})"));
  EXPECT_TRUE(StopDaemon().success());
}

// merge (each source's own columns), split (every part) and soft_delete (a flagged row must be
// absent) are verified through their own mappings.
TEST_F(VerifyTest, MergeSplitAndSoftDeleteAreVerifiedThroughTheirModules) {
  Source(
      "CREATE TABLE meta (id int PRIMARY KEY, title text);"
      "CREATE TABLE gen (id int PRIMARY KEY, body text);"
      "CREATE TABLE users (id int PRIMARY KEY, email text, bio text);"
      "CREATE TABLE items (id int PRIMARY KEY, name text, is_active boolean NOT NULL);"
      "INSERT INTO meta SELECT g, 't' || g FROM generate_series(1, 100) g;"
      "INSERT INTO gen SELECT g, 'b' || g FROM generate_series(50, 150) g;"
      "INSERT INTO users SELECT g, 'u' || g || '@x', 'bio ' || g FROM generate_series(1, 100) g;"
      "INSERT INTO items SELECT g, 'i' || g, g % 4 <> 0 FROM generate_series(1, 100) g");
  Target(
      "CREATE TABLE queue (id int PRIMARY KEY, title text, body text);"
      "CREATE TABLE accounts (id int PRIMARY KEY, email text);"
      "CREATE TABLE profiles (id int PRIMARY KEY, bio text);"
      "CREATE TABLE live_items (id int PRIMARY KEY, name text)");
  std::string config = WriteConfig(kOneTarget + R"(mappings:
  - {source: meta, module: merge, table: queue, key: [id], columns: {id: id, title: title}}
  - {source: gen, module: merge, table: queue, key: [id], columns: {id: id, body: body}}
  - source: users
    module: split
    into:
      - {table: accounts, key: [id], columns: {id: id, email: email}}
      - {table: profiles, key: [id], columns: {id: id, bio: bio}}
  - {source: items, module: soft_delete, flag: is_active, table: live_items, key: [id], columns: {id: id, name: name}}
)");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  RunResult clean = Ctl({"verify", "--config", config});
  EXPECT_EQ(clean.status.exit_code(), 0) << clean.stdout_text << clean.stderr_text;
  // A merged column owned by gen, a split part, a soft-deleted row brought back.
  Target(
      "UPDATE queue SET body = 'wrong' WHERE id = 60; DELETE FROM profiles WHERE id = 5;"
      "INSERT INTO live_items VALUES (4, 'i4')");
  RunResult r = Ctl({"verify", "--config", config});
  EXPECT_EQ(r.status.exit_code(), 1) << r.stdout_text << r.stderr_text;
  EXPECT_THAT(
      r.stdout_text,
      HasSubstr("mappings[0] public.meta -> main: 100 checked, 0 missing, extra rows not looked for, 0 mismatched"));
  EXPECT_THAT(r.stdout_text, HasSubstr("      public.queue (id=60)  body: expected b60, actual wrong"));
  EXPECT_THAT(r.stdout_text, HasSubstr("      public.profiles (id=5)"));
  EXPECT_THAT(r.stdout_text, HasSubstr("      public.live_items (id=4)"));
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(VerifyTest, GateNeedsTheTargetsCaughtUp) {
  ASSERT_TRUE(StartDaemon(config_).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  RunResult ok = Ctl({"verify", "--config", config_, "--gate", "--settle", "30"});
  EXPECT_EQ(ok.status.exit_code(), 0) << ok.stdout_text << ok.stderr_text;
  EXPECT_THAT(ok.stdout_text, HasSubstr("gate: every target has applied"));
  EXPECT_TRUE(StopDaemon().success());
  Source("UPDATE orders SET note = 'later' WHERE id < 10");  // nobody applies it
  RunResult behind = Ctl({"verify", "--config", config_, "--gate", "--settle", "3"});
  EXPECT_EQ(behind.status.exit_code(), 1) << behind.stdout_text << behind.stderr_text;
  EXPECT_THAT(behind.stdout_text, HasSubstr("not caught up"));
}

}  // namespace
}  // namespace walshift::testing
