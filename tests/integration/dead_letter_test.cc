// on_error: dead_letter on real PostgreSQL and the embedded Kafka broker: a change the target
// rejects is parked in walshift.dead_letter and the pipeline goes on; later changes of the same
// target row wait behind it (across restarts); the gate fails while anything is parked;
// walshiftctl dead-letter retry after a fix converges to exact, discard records who and why; a
// flood of rejections stops the pipeline at the limit instead of parking it.

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/kafka_broker.h"
#include "walshift/v1/events.pb.h"

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class DeadLetterTest : public DaemonTest {};

// Three modules fill one target row: two merged sources (one filtered) and child rows folded into
// a JSON array. The target is stricter than the source in two places.
const char kCombinedMappings[] = R"(apply: {on_error: dead_letter, group_max_ms: 50}
mappings:
  - {source: customers, module: merge, table: accounts, key: [id], columns: {id: id, name: name, email: email},
     filter: "region <> 'test'"}
  - {source: prefs, module: merge, table: accounts, key: [id], columns: {id: customer_id, plan: plan}}
  - {source: orders, module: json_array, table: accounts, parent_key: {id: customer_id}, column: orders,
     element: {id: id, amount: amount}, element_key: [id]}
)";

// What the target must hold: the merge of both sources (customers only where the filter holds)
// with each customer's orders.
constexpr char kExpected[] =
    "SELECT a.id::text, c.name, c.email, p.plan, "
    "  COALESCE((SELECT jsonb_agg(jsonb_build_object('id', o.id, 'amount', o.amount) ORDER BY o.id) FROM orders o "
    "            WHERE o.customer_id = a.id), '[]')::text "
    "FROM (SELECT id FROM customers WHERE region <> 'test' UNION SELECT customer_id FROM prefs "
    "      UNION SELECT customer_id FROM orders) a "
    "LEFT JOIN customers c ON c.id = a.id AND c.region <> 'test' LEFT JOIN prefs p ON p.customer_id = a.id "
    "ORDER BY a.id";
constexpr char kActual[] =
    "SELECT id::text, name, email, plan, COALESCE(orders, '[]')::text FROM accounts ORDER BY id";

TEST_F(DeadLetterTest, RejectedChangesAreParkedInOrderAndARetryAfterTheFixConvergesToExact) {
  ASSERT_NO_FATAL_FAILURE(StartKafka({"walshift.lag", "walshift.state", "walshift.drift", "walshift.dead_letter"}));
  Source(
      "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, region text);"
      "CREATE TABLE prefs (customer_id int PRIMARY KEY, plan text);"
      "CREATE TABLE orders (id int PRIMARY KEY, customer_id int, amount int)");
  Target(
      "CREATE TABLE accounts (id int PRIMARY KEY, name text, email varchar(16), "
      "  plan text CONSTRAINT known_plan CHECK (plan IN ('free', 'pro')), orders jsonb)");
  std::string config = WriteConfig(absl::StrCat(kOneTarget, "kafka: {brokers: \"", kafka_->bootstrap(), "\"}\n",
                                                kCombinedMappings));
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source(
      "INSERT INTO customers VALUES (1, 'ann', 'ann@x.io', 'eu'), (4, 'dan', 'dan@x.io', 'us'), "
      "  (9, 'tess', 'tess@x.io', 'test');"
      "INSERT INTO prefs VALUES (1, 'free'), (4, 'pro');"
      "INSERT INTO orders VALUES (10, 1, 5), (40, 4, 7)");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  // Customer 2's email does not fit varchar(16); customer 3's plan breaks the check. Each is in
  // a transaction with changes the target takes, before and after it.
  Source(
      "BEGIN; INSERT INTO customers VALUES (5, 'eve', 'eve@x.io', 'eu');"
      "INSERT INTO customers VALUES (2, 'bob', 'bob.with.a.long.name@x.io', 'eu');"
      "INSERT INTO prefs VALUES (5, 'free'); COMMIT");
  Source(
      "BEGIN; INSERT INTO customers VALUES (3, 'cat', 'cat@x.io', 'us');"
      "INSERT INTO prefs VALUES (3, 'gold'); UPDATE customers SET name = 'ann2' WHERE id = 1; COMMIT");
  // Later changes of the parked rows wait behind them, whichever mapping writes them.
  Source("INSERT INTO prefs VALUES (2, 'pro')");                   // merge into row 2
  Source("INSERT INTO orders VALUES (20, 2, 3), (21, 2, 4)");      // json_array into row 2
  Source("UPDATE customers SET name = 'catherine' WHERE id = 3");  // merge into row 3
  Source("UPDATE orders SET amount = 6 WHERE id = 10");            // row 1 goes on
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  ASSERT_TRUE(daemon_->Running()) << "walshiftd stopped: " << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT id::text, name, plan, orders::text FROM accounts WHERE id IN (1, 3, 5) ORDER BY id"),
            (PgRows{{"1", "ann2", "free", "[{\"id\": 10, \"amount\": 6}]"},
                    {"3", "cat", std::nullopt, std::nullopt},
                    {"5", "eve", "free", std::nullopt}}));
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM accounts WHERE id = 2"), (PgRows{{"0"}}));
  EXPECT_EQ(TargetRows("SELECT source_table, operation, target_key, COALESCE(sqlstate, 'behind'), "
                       "  COALESCE(constraint_name, '') FROM walshift.dead_letter ORDER BY commit_lsn, seq"),
            (PgRows{{"public.customers", "insert", "id=2", "22001", ""},
                    {"public.prefs", "insert", "id=3", "23514", "known_plan"},
                    {"public.prefs", "insert", "id=2", "behind", ""},
                    {"public.orders", "insert", "id=2 element id=20", "behind", ""},
                    {"public.orders", "insert", "id=2 element id=21", "behind", ""},
                    {"public.customers", "update", "id=3", "behind", ""},     // the filter's delete
                    {"public.customers", "update", "id=3", "behind", ""}}));  // and its upsert
  // The message names table, key, column and LSN; values stay out of it (log.values: redact).
  PgRows first = TargetRows("SELECT message FROM walshift.dead_letter WHERE sqlstate = '22001'");
  ASSERT_EQ(first.size(), 1u);
  EXPECT_THAT(*first[0][0], HasSubstr("accounts (target main) for source public.customers at LSN"));
  EXPECT_THAT(*first[0][0], HasSubstr("key (id=2)"));
  EXPECT_THAT(*first[0][0], HasSubstr("values redacted"));
  EXPECT_THAT(*first[0][0], Not(HasSubstr("bob.with")));

  // Parked changes are counted, listed, published and fail the gate.
  int port = StatusPort();
  EXPECT_THAT(Get(port, "/status"), HasSubstr("\"dead_letter\":[{\"target\":\"main\",\"parked\":7"));
  EXPECT_THAT(Get(port, "/metrics"), HasSubstr("walshift_dead_letter_parked{pipeline=\""));
  RunResult list = Walshiftctl({"dead-letter", "list", "--config", config});
  EXPECT_EQ(list.status.exit_code(), 0) << list.stderr_text;
  EXPECT_THAT(list.stdout_text, HasSubstr("target main: 7 parked changes"));
  EXPECT_THAT(list.stdout_text, HasSubstr("SQLSTATE 23514"));
  EXPECT_THAT(list.stdout_text, HasSubstr("behind #"));
  EXPECT_THAT(Walshiftctl({"status", "--config", config}).stdout_text, HasSubstr("!! PARKED: 7 changes"));
  RunResult gate = Walshiftctl({"verify", "--config", config, "--gate"});
  EXPECT_EQ(gate.status.exit_code(), 1) << gate.stdout_text;
  EXPECT_THAT(gate.stdout_text, HasSubstr("gate: 7 changes are parked in walshift.dead_letter"));
  int parked_events = 0;
  for (const KafkaRecord& r : ReadTopic(kafka_->bootstrap(), "walshift.dead_letter")) {
    v1::DeadLetterEvent e;
    ASSERT_EQ(r.type, "walshift.v1.DeadLetterEvent");
    ASSERT_TRUE(e.ParseFromString(r.value));
    if (e.action() == v1::DEAD_LETTER_PARKED) ++parked_events;
    EXPECT_THAT(e.message(), Not(HasSubstr("bob.with")));
  }
  EXPECT_EQ(parked_events, 7);

  // A restart reads what is parked: a later change of row 2 still waits behind it.
  ASSERT_TRUE(StopDaemon().success());
  Source("UPDATE customers SET region = 'uk' WHERE id = 2");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM walshift.dead_letter WHERE state = 'parked'"), (PgRows{{"9"}}));

  // A retry before the fix is rejected again, and everything stays parked in order (the changes
  // behind count the attempt too).
  RunResult early = Walshiftctl({"dead-letter", "retry", "--config", config, "--all", "--wait", "60"});
  EXPECT_EQ(early.status.exit_code(), 1) << early.stdout_text << early.stderr_text;
  EXPECT_THAT(early.stdout_text, HasSubstr("not applied, still parked: cannot apply upsert to public.accounts"));
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM walshift.dead_letter WHERE state = 'parked' AND attempts = 2"),
            (PgRows{{"9"}}));

  // The fix: the target takes the values. The retry applies every parked change in stream order.
  Target("ALTER TABLE accounts ALTER COLUMN email TYPE text");
  Target("ALTER TABLE accounts DROP CONSTRAINT known_plan");
  RunResult retry = Walshiftctl({"dead-letter", "retry", "--config", config, "--all", "--reason", "widened email"});
  EXPECT_EQ(retry.status.exit_code(), 0) << retry.stdout_text << retry.stderr_text << DaemonLog();
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows(kActual), SourceRows(kExpected));
  EXPECT_EQ(TargetRows("SELECT state, count(*)::text FROM walshift.dead_letter GROUP BY state"),
            (PgRows{{"retried", "9"}}));
  // Row 2 is free again: its next change is applied at once.
  Source("UPDATE orders SET amount = 9 WHERE id = 21");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows(kActual), SourceRows(kExpected));

  // Discard: a new rejection, left out on purpose; who and why are recorded.
  Target("ALTER TABLE accounts ADD CONSTRAINT short_name CHECK (length(name) < 10)");
  Source("INSERT INTO customers VALUES (6, 'a very long name', 'f@x.io', 'eu')");
  Source("INSERT INTO customers VALUES (7, 'gus', 'g@x.io', 'eu')");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  PgRows id = TargetRows("SELECT id::text FROM walshift.dead_letter WHERE state = 'parked'");
  ASSERT_EQ(id.size(), 1u);
  RunResult show = Walshiftctl({"dead-letter", "show", "--config", config, *id[0][0]});
  EXPECT_EQ(show.status.exit_code(), 0) << show.stderr_text;
  EXPECT_THAT(show.stdout_text, HasSubstr("rejected:       SQLSTATE 23514, constraint short_name"));
  EXPECT_THAT(show.stdout_text, HasSubstr("redacted (log.values: redact)"));
  EXPECT_EQ(Walshiftctl({"dead-letter", "discard", "--config", config, *id[0][0]}).status.exit_code(), 2);  // no reason
  RunResult discard = Walshiftctl(
      {"dead-letter", "discard", "--config", config, *id[0][0], "--reason", "test customer", "--by", "ops@example"});
  EXPECT_EQ(discard.status.exit_code(), 0) << discard.stdout_text << discard.stderr_text << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT state, resolved_by, resolution FROM walshift.dead_letter WHERE id = " + *id[0][0]),
            (PgRows{{"discarded", "ops@example", "test customer"}}));
  EXPECT_EQ(TargetRows("SELECT name FROM accounts WHERE id = 7"), (PgRows{{"gus"}}));
  RunResult gate_after = Walshiftctl({"verify", "--config", config});
  EXPECT_THAT(gate_after.stdout_text, Not(HasSubstr("parked:")));
  EXPECT_TRUE(StopDaemon().success());
}

// A TRUNCATE empties the rows parked changes would write: they are discarded with it, and the
// table's next rows are applied, never held behind changes of rows that are gone.
TEST_F(DeadLetterTest, ATruncateDiscardsTheParkedChangesOfItsTable) {
  Source("CREATE TABLE readings (id int PRIMARY KEY, v int)");
  Target("CREATE TABLE readings (id int PRIMARY KEY, v int CHECK (v >= 0))");
  std::string config = WriteConfig(kOneTarget + R"(apply: {on_error: dead_letter}
mappings: [{source: readings}]
)");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO readings VALUES (1, -1), (2, 2)");
  Source("UPDATE readings SET v = -2 WHERE id = 1");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM walshift.dead_letter WHERE state = 'parked'"), (PgRows{{"2"}}));
  Source("TRUNCATE readings");
  Source("INSERT INTO readings VALUES (1, 5)");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT id::text, v::text FROM readings"), (PgRows{{"1", "5"}}));
  EXPECT_EQ(TargetRows("SELECT state, resolved_by, count(*)::text FROM walshift.dead_letter GROUP BY 1, 2"),
            (PgRows{{"discarded", "walshiftd", "2"}}));
  EXPECT_EQ(Walshiftctl({"verify", "--config", config, "--gate"}).status.exit_code(), 0) << DaemonLog();
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(DeadLetterTest, AFloodOfRejectionsStopsAtTheLimitInsteadOfBeingParked) {
  Source("CREATE TABLE readings (id int PRIMARY KEY, v int)");
  Target("CREATE TABLE readings (id int PRIMARY KEY, v int CHECK (v >= 0))");
  std::string config = WriteConfig(kOneTarget + R"(apply: {dead_letter: {max_parked: 3}}
mappings: [{source: readings, on_error: dead_letter}]
)");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  for (int i = 1; i <= 8; ++i) Source(absl::StrCat("INSERT INTO readings VALUES (", i, ", ", i % 2 ? -i : i, ")"));
  auto st = daemon_->Wait(absl::Seconds(120));
  ASSERT_TRUE(st.ok());
  EXPECT_NE(st->exit_code(), 0) << DaemonLog();
  EXPECT_THAT(DaemonLog(), HasSubstr("3 changes are parked in walshift.dead_letter already, the most "
                                     "apply.dead_letter.max_parked allows: stopping instead of parking more"));
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM walshift.dead_letter WHERE state = 'parked'"), (PgRows{{"3"}}));
  EXPECT_EQ(TargetRows("SELECT id::text FROM readings ORDER BY id"), (PgRows{{"2"}, {"4"}, {"6"}}));

  // A share of the changes: 10 rejected among the last minute's changes is more than 10 %.
  config = WriteConfig(kOneTarget + R"(apply: {dead_letter: {max_parked: 1000}}
mappings: [{source: readings, on_error: dead_letter}]
)");
  for (int i = 9; i <= 30; ++i) Source(absl::StrCat("INSERT INTO readings VALUES (", i, ", -1)"));
  ASSERT_TRUE(StartDaemon(config).ok());
  st = daemon_->Wait(absl::Seconds(180));
  ASSERT_TRUE(st.ok());
  EXPECT_NE(st->exit_code(), 0) << DaemonLog();
  EXPECT_THAT(DaemonLog(), HasSubstr("more than apply.dead_letter.max_percent (10%): stopping instead of parking a "
                                     "flood"));
  PgRows parked = TargetRows("SELECT count(*)::int FROM walshift.dead_letter WHERE state = 'parked'");
  EXPECT_LT(std::stoi(*parked[0][0]), 30);
}

}  // namespace
}  // namespace walshift::testing
