// `walshiftd --check` against live schemas: every problem of every mapping at once, exit 2;
// exit 0 when all is well; the daemon itself refuses to start on the same problems.

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/test_paths.h"

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;

class CheckTest : public DaemonTest {
 protected:
  RunResult Check(const std::string& config) { return RunWalshiftd({"--config", config, "--check"}); }
};

TEST_F(CheckTest, ReportsEveryProblemAtOnce) {
  Source(
      "CREATE TABLE orders (id int PRIMARY KEY, amount numeric, status text);"
      "CREATE TABLE nokey (a int, b text);"
      "CREATE TABLE orders2 (id int PRIMARY KEY, amount numeric);"
      "CREATE TABLE events (id int PRIMARY KEY, at timestamptz, ok boolean, tags text[], ids uuid[])");
  Target(
      "CREATE SCHEMA app;"
      "CREATE TABLE app.orders_v2 (order_id int PRIMARY KEY, total_cents bigint);"
      "CREATE TABLE app.orders_v3 (order_id int PRIMARY KEY);"
      "CREATE TABLE app.good (order_id int PRIMARY KEY, total numeric);"
      "CREATE TABLE public.wrong_key (id int, v text);"
      "CREATE TABLE app.events (id int PRIMARY KEY, at int, ok date, tags int[], ids inet[])");
  std::string config = WriteConfig(kOneTarget + R"(mappings:
  - {source: public.missing}
  - {source: nokey, module: soft_delete, flag: b, table: app.good, key: [order_id], columns: {order_id: a}}
  - {source: orders, table: app.orders_v2, key: [order_id], columns: {order_id: id, total_cents: {sql: "round(amount * 100"}}}
  - {source: orders, table: app.absent}
  - {source: orders, table: public.wrong_key, key: [id], columns: {id: id, v: status}}
  - {source: orders, table: app.orders_v3, key: [order_id], columns: {order_id: id, nope_col: status}}
  - {source: orders, table: app.orders_v3, key: [order_id], columns: {order_id: id, x: amnt}}
  - {source: orders, table: app.good, key: [order_id], columns: {order_id: id, total: amount}}
  - {source: orders2, table: app.good, key: [order_id], columns: {order_id: id, total: amount}}
  - {source: orders, table: app.orders_v3, key: [order_id], columns: {order_id: id}, filter: "nope > 1"}
  - {source: events, table: app.events}
)");
  RunResult r = Check(config);
  std::string out = r.stdout_text + r.stderr_text;
  EXPECT_EQ(r.status.exit_code(), 2) << out;
  EXPECT_THAT(out, HasSubstr("mappings[0]: source table public.missing does not exist"));
  EXPECT_THAT(out, HasSubstr("mappings[1] (public.nokey -> app.good): public.nokey has no primary key and no "
                             "replica identity, so only its inserts are replicated"));
  EXPECT_THAT(out, HasSubstr("mappings[2] (public.orders): target main: upsert into app.orders_v2: "
                             "ERROR:  syntax error"));
  EXPECT_THAT(out, HasSubstr("mappings[3] (public.orders): target main: upsert into app.absent: "
                             "ERROR:  relation \"app.absent\" does not exist"));
  EXPECT_THAT(out, HasSubstr("mappings[4] (public.orders): target main: upsert into public.wrong_key: "
                             "ERROR:  there is no unique or exclusion constraint matching the ON CONFLICT"));
  EXPECT_THAT(out, HasSubstr("mappings[5] (public.orders): target main: upsert into app.orders_v3: "
                             "ERROR:  column \"nope_col\" of relation \"orders_v3\" does not exist"));
  EXPECT_THAT(out, HasSubstr("mappings[6] (public.orders -> app.orders_v3).columns.x: source column "
                             "'amnt' does not exist in public.orders"));
  EXPECT_THAT(out, HasSubstr("mappings[8]: target column app.good.total (target main) is also "
                             "written by mappings[7]"));

  EXPECT_THAT(out, HasSubstr("mappings[9] (public.orders): target main: upsert into app.orders_v3: "
                             "ERROR:  column \"nope\" does not exist"));
  EXPECT_THAT(out, HasSubstr("mappings[10] (public.events): source column at (timestamp with time zone) "
                             "cannot fill app.events.at (integer) in target main"));
  EXPECT_THAT(out, HasSubstr("source column ok (boolean) cannot fill app.events.ok (date)"));
  EXPECT_THAT(out, HasSubstr("source column ids (uuid[]) cannot fill app.events.ids (inet[])"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("source column tags")));  // text reads as anything

  // The daemon refuses to start on the same problems (exit 2, not a crash loop).
  ASSERT_TRUE(StartDaemon(config).ok());
  auto st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->exit_code(), 2);
  EXPECT_THAT(DaemonLog(), HasSubstr("the live databases cannot run this configuration"));
}

TEST_F(CheckTest, GoodConfigPasses) {
  Source(
      "CREATE TYPE mood AS ENUM ('ok', 'sad');"
      "CREATE TABLE orders (id int PRIMARY KEY, amount numeric, status text);"
      "CREATE TABLE facts (id int PRIMARY KEY, n int, d date, j int, f smallint, m mood, s varchar(20))");
  // Pairings whose text forms read across: int → numeric, date → timestamptz, int → jsonb,
  // 0/1 → boolean, an enum the target lacks → text, varchar(20) → a domain over text.
  Target(
      "CREATE DOMAIN label AS text;"
      "CREATE TABLE orders_v2 (order_id int PRIMARY KEY, total_cents bigint, state text, origin text);"
      "CREATE TABLE facts (id bigint PRIMARY KEY, n numeric, d timestamptz, j jsonb, f boolean, m text, s label)");
  RunResult r = Check(WriteConfig(kOneTarget + R"(mappings:
  - source: orders
    table: orders_v2
    key: [order_id]
    columns: {order_id: id, total_cents: {sql: "round(amount * 100)::bigint"}, state: status, origin: {const: legacy}}
  - {source: facts}
)"));
  EXPECT_EQ(r.status.exit_code(), 0) << r.stdout_text << r.stderr_text;
  EXPECT_THAT(r.stdout_text, HasSubstr("ok: 2 mappings match the live schemas"));
}

// A document store cannot evaluate SQL: an sql: value or a filter: into it is refused before
// anything streams, naming the mapping and the column; the rest of the mapping is fine.
TEST_F(CheckTest, DocumentStoreRefusesWhatNeedsSql) {
  Source(
      "CREATE TABLE users (id int PRIMARY KEY, name text, active boolean);"
      "CREATE TABLE posts (id int PRIMARY KEY, user_id int, body text)");
  const std::string head = absl::StrCat(R"yaml(
pipeline: {PIPELINE}
source: {dsn: "{SOURCE}"}
targets: [{name: docs, kind: documents, path: ")yaml",
                                        dir_, R"yaml(/documents"}]
status: {listen: "off"}
mappings:
)yaml");
  std::string config = WriteConfig(head + R"yaml(
  - {source: users, table: users, columns: {id: id, upper_name: {sql: "upper(name)"}}}
  - {source: users, table: active_users, columns: {id: id, name: name}, filter: "active"}
  - {source: posts, module: json_array, table: users, parent_key: {id: user_id}, column: posts,
     element: {id: id, short: {sql: "left(body, 10)"}}, element_key: [id]}
)yaml");
  RunResult r = Check(config);
  std::string out = r.stdout_text + r.stderr_text;
  EXPECT_EQ(r.status.exit_code(), 2) << out;
  EXPECT_THAT(out, HasSubstr("mappings[0]"));
  EXPECT_THAT(out, HasSubstr("upper_name"));
  EXPECT_THAT(out, HasSubstr("document store"));
  EXPECT_THAT(out, HasSubstr("mappings[1] (public.users -> public.active_users).filter"));
  EXPECT_THAT(out, HasSubstr("mappings[2]"));
  EXPECT_THAT(out, HasSubstr("short"));
  // The same mappings without them pass.
  std::string fine = WriteConfig(head + R"yaml(
  - {source: users, table: users, columns: {id: id, name: name}}
  - {source: posts, module: json_array, table: users, parent_key: {id: user_id}, column: posts,
     element: {id: id, body: body}, element_key: [id]}
)yaml");
  RunResult ok = Check(fine);
  EXPECT_EQ(ok.status.exit_code(), 0) << ok.stdout_text << ok.stderr_text;
}

}  // namespace
}  // namespace walshift::testing
