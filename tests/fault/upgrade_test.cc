// Upgrades: a pipeline that the previous release's walshiftd (tools/previous-release, built by
// tools/build-previous into $WALSHIFT_PREVIOUS_BIN_DIR) copied and streamed, and that was
// killed mid-stream, is continued by this build's walshiftd under the same load: the state
// schema is migrated, nothing is lost and nothing applied twice (applied_once.h). And a state
// schema that a newer release migrated is refused, never written by an older walshiftd.

#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "daemon/state/pg_state.h"
#include "gmock/gmock.h"
#include "tests/fault/applied_once.h"
#include "tests/integration/daemon_fixture.h"

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;

class UpgradeTest : public DaemonTest {
 protected:
  void CreateTables() {
    Source(kStampFunctionSql);
    Source(
        "CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL, label text, stamp bigint);"
        "CREATE TABLE item_notes (id int PRIMARY KEY, item int NOT NULL, body text, stamp bigint);" +
        StampTriggerSql("items") + StampTriggerSql("item_notes") +
        "INSERT INTO items SELECT g, 0, 'item ' || g FROM generate_series(1, 3000) g;"
        "INSERT INTO item_notes SELECT g, 1 + g % 3000, md5(g::text) FROM generate_series(1, 3000) g;");
    Target(
        "CREATE TABLE items_v2 (item_id int PRIMARY KEY, count bigint NOT NULL, label text, stamp bigint);"
        "CREATE TABLE item_notes_v2 (item_id int PRIMARY KEY, notes jsonb NOT NULL DEFAULT '[]');");
    Target(kCountingFunctionSql);
    Target(CountingTriggerSql("items_v2", "item_id", {"stamp"}));
  }

  std::string Config() {
    return WriteConfig(R"yaml(
pipeline: {PIPELINE}
source: {dsn: "{SOURCE}"}
targets: [{name: main, dsn: "{TARGET}"}]
apply: {group_max_changes: 300, group_max_ms: 50}
mappings:
  - {source: items, table: items_v2, key: [item_id],
     columns: {item_id: id, count: {sql: "n::bigint"}, label: label, stamp: stamp}}
  - {source: item_notes, module: json_array, table: item_notes_v2, parent_key: {item_id: item}, column: notes,
     element: {id: id, body: body, stamp: stamp}, element_key: [id]}
)yaml");
  }

  std::unique_ptr<Subprocess> StartLoad() {
    std::string items = dir_ + "/items.sql";
    std::string notes = dir_ + "/notes.sql";
    std::ofstream(items)
        << "\\set id random(1, 3500)\n"
           "INSERT INTO items VALUES (:id, 1, 'new') ON CONFLICT (id) DO UPDATE SET n = items.n + 1;\n";
    std::ofstream(notes) << "\\set id random(1, 4000)\n"
                            "INSERT INTO item_notes VALUES (:id, 1 + :id % 3000, 'n') ON CONFLICT (id) DO UPDATE "
                            "SET body = md5(item_notes.body), item = 1 + (item_notes.item + 11) % 3000;\n"
                            "DELETE FROM item_notes WHERE id = :id + 5;\n";
    return StartPgbench({"-c", "3", "-j", "2", "-R", "300", "-T", "86400", "--max-tries", "20", "-f", items + "@2",
                         "-f", notes + "@1"});
  }

  void ExpectExact() {
    PgRows expected = SourceRows("SELECT id::text, n::bigint::text, label, stamp::text FROM items ORDER BY 1");
    PgRows actual = TargetRows("SELECT item_id::text, count::text, label, stamp::text FROM items_v2 ORDER BY 1");
    EXPECT_GT(expected.size(), 2999u);
    EXPECT_EQ(actual.size(), expected.size());
    EXPECT_TRUE(actual == expected) << "items_v2 differs from the mapped source";
    expected = SourceRows(
        "SELECT item::text, jsonb_agg(jsonb_build_object('id', id, 'body', body, 'stamp', stamp) ORDER BY id)::text "
        "FROM item_notes GROUP BY item ORDER BY 1");
    actual = TargetRows("SELECT item_id::text, notes::text FROM item_notes_v2 WHERE notes <> '[]' ORDER BY 1");
    EXPECT_GT(expected.size(), 1000u);
    EXPECT_EQ(actual.size(), expected.size());
    EXPECT_TRUE(actual == expected) << "item_notes_v2 differs from the mapped source";
    EXPECT_EQ(TargetRows(UnloggedStampsSql("items_v2", "item_id", "stamp")), (PgRows{{"0"}}))
        << "walshiftd's writes were not counted";
    PgRows twice = TargetRows(kAppliedTwiceSql);
    EXPECT_TRUE(twice.empty()) << "applied twice: " << *twice[0][0] << " key " << *twice[0][1] << " stamp "
                               << *twice[0][3] << ", " << *twice[0][4] << " times";
  }
};

TEST_F(UpgradeTest, PipelineOfThePreviousReleaseContinuesWithNothingLostOrAppliedTwice) {
  const char* dir = std::getenv("WALSHIFT_PREVIOUS_BIN_DIR");
  if (dir == nullptr || *dir == '\0') {
    GTEST_SKIP() << "no previous release to upgrade from: WALSHIFT_PREVIOUS_BIN_DIR is not set (tools/test sets it "
                    "from tools/build-previous, which needs the commit in tools/previous-release in this clone)";
  }
  std::string previous = absl::StrCat(dir, "/walshiftd");
  CreateTables();
  std::string config = Config();
  auto load = StartLoad();
  ASSERT_NE(load, nullptr);

  // The previous release copies the existing rows and streams, and is killed mid-group.
  ASSERT_TRUE(StartDaemon(config, {}, previous).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  // Stopped before it is started again: the previous release does not wait for the sessions of
  // a run killed with a commit in flight (this build does, state::SettleEarlierWriters), so a
  // second run started beside the first could read the checkpoint before that commit landed.
  ASSERT_TRUE(StopDaemon().success()) << DaemonLog();
  ASSERT_TRUE(StartDaemon(config, {{"WALSHIFT_CRASH_AT", "apply.before_commit:20"}}, previous).ok());
  auto st = daemon_->Wait(absl::Seconds(120));
  ASSERT_TRUE(st.ok() && st->signaled()) << "the previous release never reached its kill point:\n" << DaemonLog();

  // This build takes over while the load goes on.
  ASSERT_TRUE(StartDaemon(config).ok());
  std::this_thread::sleep_for(std::chrono::seconds(3));
  ASSERT_TRUE(load->Signal(SIGINT).ok());
  (void)load->Wait(absl::Seconds(30));
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT max(version)::text FROM walshift.schema_version"),
            (PgRows{{absl::StrCat(state::StateSchemaVersion())}}));
  ExpectExact();
  EXPECT_TRUE(StopDaemon().success());
}

TEST_F(UpgradeTest, StateMigratedByANewerReleaseIsRefusedNotWritten) {
  CreateTables();
  std::string config = Config();
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_TRUE(StopDaemon().success());
  std::string newer = absl::StrCat(state::StateSchemaVersion() + 1);
  Target(absl::StrCat("INSERT INTO walshift.schema_version (version, description) VALUES (", newer,
                      ", 'a later release')"));
  Source("UPDATE items SET n = n + 1 WHERE id = 1");
  ASSERT_TRUE(StartDaemon(config).ok());
  auto st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok()) << "walshiftd ran on a state schema it does not know:\n" << DaemonLog();
  EXPECT_FALSE(st->success());
  EXPECT_THAT(DaemonLog(), HasSubstr(absl::StrCat("is at version ", newer, ", newer than this walshiftd knows")));
  EXPECT_EQ(TargetRows("SELECT count::text FROM items_v2 WHERE item_id = 1"), (PgRows{{"0"}}));
}

}  // namespace
}  // namespace walshift::testing
