// Real schemas, end to end on real PostgreSQL: the shapes that used to leave the target silently
// wrong or stop walshiftd for good (TOASTed values of rows that re-enter or change key, time
// zones, partitions, renames, truncate sets, composite and INCLUDE keys). The expected target
// is computed by SQL over the legacy tables, not by walshift.

#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/test_paths.h"

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class SchemasTest : public DaemonTest {
 protected:
  struct Run {
    int code = -1;
    std::string output;  // stdout and stderr
  };
  // walshiftd with `args` (e.g. --check), to its end.
  Run RunToEnd(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {}) {
    RunResult r = RunWalshiftd(args, env);
    return {r.status.exited() ? r.status.exit_code() : -1, r.stdout_text + r.stderr_text};
  }
};

// A value stored out of line (EXTERNAL: never compressed inline), so pgoutput sends an update
// that leaves it alone as 'unchanged TOAST'.
std::string BigText(int kb, const std::string& seed) {
  return absl::StrCat("(SELECT string_agg(md5('", seed, "' || g), '') FROM generate_series(1, ", kb * 32, ") g)");
}

// notes(id, doc_id, label, body) as a JSON array of elements per doc_notes row.
constexpr char kNotesAsJsonArray[] = R"(  - source: notes
    module: json_array
    table: doc_notes
    parent_key: {doc_id: doc_id}
    column: notes
    element: {id: id, label: label, body: body}
    element_key: [id]
)";

// The same JSON element changes as above, all in one source transaction, so that they reach
// the target in one group: an element's key change next to edits of other elements of the same
// parent row, with TOASTed values the updates do not carry.
TEST_F(SchemasTest, JsonElementKeyChangeInOneGroupWithOtherEditsKeepsEveryElement) {
  Source(
      "CREATE TABLE notes (id int PRIMARY KEY, doc_id int, label text, body text);"
      "ALTER TABLE notes ALTER COLUMN body SET STORAGE EXTERNAL");
  Target("CREATE TABLE doc_notes (doc_id int PRIMARY KEY, notes jsonb NOT NULL DEFAULT '[]')");
  std::string config = WriteConfig(kOneTarget + "mappings:\n" + kNotesAsJsonArray);
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  std::string sql = "BEGIN;";
  for (int id = 1; id <= 6; ++id) {
    absl::StrAppend(&sql, "INSERT INTO notes VALUES (", id, ", ", 1 + id % 2, ", 'n", id, "', ",
                    BigText(8, absl::StrCat("n", id)), ");");
  }
  absl::StrAppend(&sql, "COMMIT;");
  Source(sql);
  Source("BEGIN; UPDATE notes SET label = 'edited' WHERE id IN (1, 2); UPDATE notes SET doc_id = 7 WHERE id = 3;"
         "UPDATE notes SET id = 40, label = 'renumbered' WHERE id = 4; COMMIT");
  // Rows inserted and changed in the same transaction, key change included.
  sql = "BEGIN;";
  for (int id = 11; id <= 14; ++id) {
    absl::StrAppend(&sql, "INSERT INTO notes VALUES (", id, ", ", 1 + id % 2, ", 'n", id, "', ",
                    BigText(8, absl::StrCat("n", id)), ");");
  }
  absl::StrAppend(&sql,
                  "UPDATE notes SET label = 'edited' WHERE id IN (11, 12); UPDATE notes SET doc_id = 7 WHERE id = 13;"
                  "UPDATE notes SET id = 140, label = 'renumbered' WHERE id = 14; COMMIT");
  Source(sql);
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT doc_id::text, e->>'id', e->>'label', md5(e->>'body') FROM doc_notes, "
                       "jsonb_array_elements(notes) e ORDER BY 1, 2"),
            SourceRows("SELECT doc_id::text, id::text, label, md5(body) FROM notes ORDER BY 1, 2"))
      << DaemonLog();
  EXPECT_TRUE(StopDaemon().success());
}

// The walsender sends a commit once its record is flushed; the committing session makes it
// visible afterwards (here: once a synchronous standby confirmed it, which never happens until
// the setting is gone). Source rows read for such a change (TOASTed values its updates leave
// out) are read once it is visible: a key change is not taken for a row that is gone.
TEST_F(SchemasTest, RowsReadForACommitNotYetVisibleOnTheSourceWaitForIt) {
  Source(
      "CREATE TABLE notes (id int PRIMARY KEY, doc_id int, label text, body text);"
      "ALTER TABLE notes ALTER COLUMN body SET STORAGE EXTERNAL");
  Target("CREATE TABLE doc_notes (doc_id int PRIMARY KEY, notes jsonb NOT NULL DEFAULT '[]')");
  for (int id = 1; id <= 4; ++id) {
    Source(absl::StrCat("INSERT INTO notes VALUES (", id, ", ", 1 + id % 2, ", 'n", id, "', ",
                        BigText(8, absl::StrCat("n", id)), ")"));
  }
  // Every other session of this database (walshiftd's, the test's) commits without waiting.
  Source(absl::StrCat("ALTER DATABASE ", source_db_, " SET synchronous_commit = local"));
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + "mappings:\n" + kNotesAsJsonArray)).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("ALTER SYSTEM SET synchronous_standby_names = 'walshift_absent_standby'");
  Source("SELECT pg_reload_conf()");
  // The setting holds commits back once the server processes have reloaded it: a probe
  // commit that writes WAL shows when (its wait is cancelled; it then commits locally).
  for (bool holding = false; !holding;) {
    std::thread probe([&] {
      (void)source_cluster_->Exec(source_db_, "SET synchronous_commit = on; CREATE TEMP TABLE probe ()");
    });
    for (int i = 0; i < 50 && !holding; ++i) {
      holding = SourceRows("SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event = 'SyncRep'") == PgRows{{"t"}};
      if (!holding) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Source("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'");
    probe.join();
  }
  auto release = absl::MakeCleanup([&] {
    EXPECT_TRUE(source_cluster_->Exec("postgres", "ALTER SYSTEM RESET synchronous_standby_names").ok());
    EXPECT_TRUE(source_cluster_->Exec("postgres", "SELECT pg_reload_conf()").ok());
  });
  absl::Status held;
  std::thread writer([&] {
    held = source_cluster_->Exec(source_db_,
                                 "SET synchronous_commit = on;"
                                 "UPDATE notes SET id = 40, label = 'renumbered' WHERE id = 4;"
                                 "UPDATE notes SET label = 'edited' WHERE id = 1");
  });
  bool waiting = false;
  for (int i = 0; i < 600 && !waiting; ++i) {
    waiting = absl::StrContains(DaemonLog(), "is not yet visible on the source");
    if (!waiting) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(waiting) << DaemonLog();
  EXPECT_EQ(SourceRows("SELECT count(*)::text FROM notes WHERE id = 40"), (PgRows{{"0"}}));  // not visible yet
  std::move(release).Invoke();
  writer.join();
  ASSERT_TRUE(held.ok()) << held;
  Source(absl::StrCat("ALTER DATABASE ", source_db_, " RESET synchronous_commit"));
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT doc_id::text, e->>'id', e->>'label', md5(e->>'body') FROM doc_notes, "
                       "jsonb_array_elements(notes) e ORDER BY 1, 2"),
            SourceRows("SELECT doc_id::text, id::text, label, md5(body) FROM notes ORDER BY 1, 2"))
      << DaemonLog();
  EXPECT_TRUE(StopDaemon().success());
}

// Rows that leave the target and come back (soft delete undone, filter true again), JSON
// elements edited elsewhere, and key changes, all with TOASTed values the updates do not
// carry: the target ends with every value.
TEST_F(SchemasTest, RowsReenteringOrChangingKeyKeepTheirToastedValues) {
  Source(
      "CREATE TABLE docs (id int PRIMARY KEY, title text, body text, is_active bool NOT NULL DEFAULT true);"
      "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;"
      "CREATE TABLE notes (id int PRIMARY KEY, doc_id int, label text, body text);"
      "ALTER TABLE notes ALTER COLUMN body SET STORAGE EXTERNAL");
  Target(
      "CREATE TABLE docs_live (id int PRIMARY KEY, title text, body text);"
      "CREATE TABLE docs_public (id int PRIMARY KEY, title text, body text);"
      "CREATE TABLE docs_all (id int PRIMARY KEY, title text, body text, is_active bool);"
      "CREATE TABLE doc_notes (doc_id int PRIMARY KEY, notes jsonb NOT NULL DEFAULT '[]');"
      "CREATE INDEX ON doc_notes USING gin (notes jsonb_path_ops) WITH (fastupdate = off)");
  std::string config = WriteConfig(kOneTarget + R"(mappings:
  - source: docs
    module: soft_delete
    table: docs_live
    columns: {id: id, title: title, body: body}
    flag: is_active
  - source: docs
    table: docs_public
    columns: {id: id, title: title, body: body}
    filter: "title NOT LIKE 'draft%'"
  - source: docs
    table: docs_all
)" + kNotesAsJsonArray);
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  for (int id = 1; id <= 6; ++id) {
    Source(absl::StrCat("INSERT INTO docs VALUES (", id, ", 'doc ", id, "', ", BigText(12, absl::StrCat("d", id)),
                        ", true)"));
    Source(absl::StrCat("INSERT INTO notes VALUES (", id, ", ", 1 + id % 2, ", 'n", id, "', ",
                        BigText(8, absl::StrCat("n", id)), ")"));
  }
  Source("UPDATE docs SET is_active = false WHERE id IN (1, 2)");  // soft deleted
  Source("UPDATE docs SET is_active = true WHERE id = 1");         // back, body not carried
  Source("UPDATE docs SET title = 'draft 3' WHERE id IN (3, 4)");  // out of the filter
  Source("UPDATE docs SET title = 'final 3' WHERE id = 3");        // back in it
  Source("UPDATE docs SET id = 50 WHERE id = 5");                  // key change, body not carried
  Source("UPDATE docs SET is_active = false WHERE id = 6; UPDATE docs SET is_active = true, id = 60 WHERE id = 6");
  // Superseded before walshiftd reads it: re-entered, then gone from the source.
  Source("UPDATE docs SET is_active = false WHERE id = 4");
  Source("BEGIN; UPDATE docs SET is_active = true WHERE id = 4; DELETE FROM docs WHERE id = 4; COMMIT");
  Source("UPDATE notes SET label = 'edited' WHERE id IN (1, 2)");  // element rebuilt, body not carried
  Source("UPDATE notes SET doc_id = 7 WHERE id = 3");              // moves to another parent
  Source("UPDATE notes SET id = 40, label = 'renumbered' WHERE id = 4");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  // Read after the source moved on: a key change whose new key is gone by then still removes
  // the row (and element) under the old key.
  Source(absl::StrCat("INSERT INTO docs VALUES (7, 'doc 7', ", BigText(12, "d7"),
                      ", true);"
                      "INSERT INTO notes VALUES (7, 1, 'n7', ",
                      BigText(8, "n7"), ")"));
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  ASSERT_TRUE(StopDaemon().success());
  Source("UPDATE docs SET id = 70 WHERE id = 7; DELETE FROM docs WHERE id = 70");
  Source("UPDATE notes SET id = 70 WHERE id = 7; DELETE FROM notes WHERE id = 70");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();

  EXPECT_EQ(TargetRows("SELECT id::text, title, md5(body) FROM docs_live ORDER BY id"),
            SourceRows("SELECT id::text, title, md5(body) FROM docs WHERE is_active ORDER BY id"));
  EXPECT_EQ(TargetRows("SELECT id::text, title, md5(body) FROM docs_public ORDER BY id"),
            SourceRows("SELECT id::text, title, md5(body) FROM docs WHERE title NOT LIKE 'draft%' ORDER BY id"));
  EXPECT_EQ(TargetRows("SELECT id::text, title, md5(body), is_active::text FROM docs_all ORDER BY id"),
            SourceRows("SELECT id::text, title, md5(body), is_active::text FROM docs ORDER BY id"));
  EXPECT_EQ(TargetRows("SELECT doc_id::text, e->>'id', e->>'label', md5(e->>'body') FROM doc_notes, "
                       "jsonb_array_elements(notes) e ORDER BY 1, 2"),
            SourceRows("SELECT doc_id::text, id::text, label, md5(body) FROM notes ORDER BY 1, 2"));
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM docs_all WHERE body IS NULL"), (PgRows{{"0"}}));
  EXPECT_TRUE(daemon_->Running());
}

// A key change of a row whose large value the update leaves alone moves the target row.
TEST_F(SchemasTest, KeyChangeOfARowWithALargeValueKeepsIt) {
  Source("CREATE TABLE t (id int PRIMARY KEY, note text, payload text)");
  Target("CREATE TABLE t (id int PRIMARY KEY, note text, payload text)");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + "mappings: [{source: t}]\n")).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source(absl::StrCat("INSERT INTO t VALUES (1, 'a', ", BigText(500, "p"), "), (3, 'c', 'small')"));
  Source("UPDATE t SET id = 2 WHERE id = 1");
  Source("UPDATE t SET id = 4, note = 'moved' WHERE id = 3");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  const char* q = "SELECT id::text, note, md5(payload), length(payload)::text FROM t ORDER BY id";
  EXPECT_EQ(TargetRows(q), SourceRows(q));
  EXPECT_EQ(SourceRows(q).size(), 2u);
}

// timestamp → timestamptz is read in the source database's zone, recorded with the pipeline:
// walshiftd's own environment (PGTZ) changes nothing, before or after a restart.
TEST_F(SchemasTest, NaiveTimestampsUseThePipelinesZoneWhateverTheEnvironment) {
  Source(absl::StrCat("ALTER DATABASE ", source_db_, " SET TimeZone = 'Europe/Berlin'"));
  Source("CREATE TABLE events (id int PRIMARY KEY, at timestamp, day date, span interval)");
  Target("CREATE TABLE events (id int PRIMARY KEY, at timestamptz, day date, span interval)");
  Source("INSERT INTO events VALUES (1, '2026-07-01 12:00:00', '2026-07-01', '1 day 2 hours')");
  std::string config = WriteConfig(kOneTarget + "mappings: [{source: events}]\n");

  auto check = RunToEnd({"--config", config, "--check"}, {{"PGTZ", "Asia/Tokyo"}});
  EXPECT_EQ(check.code, 0) << check.output;
  EXPECT_THAT(check.output, HasSubstr("public.events.at (timestamp without time zone)"));
  EXPECT_THAT(check.output, HasSubstr("Europe/Berlin"));

  ASSERT_TRUE(StartDaemon(config, {{"PGTZ", "Asia/Tokyo"}}).ok());  // copies row 1
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO events VALUES (2, '2026-01-15 08:30:00', '2026-01-15', '-3 minutes')");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  ASSERT_TRUE(StopDaemon().success());
  ASSERT_TRUE(StartDaemon(config, {{"PGTZ", "America/New_York"}}).ok());
  Source("INSERT INTO events VALUES (3, '2026-03-29 02:30:00', '2026-03-29', '0')");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_THAT(DaemonLog(), HasSubstr("time zone Europe/Berlin"));

  // The instants, seen from UTC: each naive value read as Berlin time.
  EXPECT_EQ(TargetRows("SELECT id::text, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), day::text, "
                       "span::text FROM events ORDER BY id"),
            SourceRows("SELECT id::text, to_char((at AT TIME ZONE 'Europe/Berlin') AT TIME ZONE 'UTC', "
                       "'YYYY-MM-DD HH24:MI'), day::text, span::text FROM events ORDER BY id"));
  EXPECT_EQ(TargetRows(absl::StrCat("SELECT value FROM walshift.settings WHERE pipeline = '", pipeline_,
                                    "' AND name = 'timezone'")),
            (PgRows{{"Europe/Berlin"}}));
}

// A partitioned table mapped by its root: rows of every partition (one attached later, rows
// moving between partitions), the initial copy, a truncate of the root and a restart.
TEST_F(SchemasTest, PartitionedTableMappedByItsRoot) {
  Source(
      "CREATE TABLE readings (id int, region text, value int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);"
      "CREATE TABLE readings_eu PARTITION OF readings FOR VALUES IN ('eu');"
      "CREATE TABLE readings_us PARTITION OF readings FOR VALUES IN ('us');"
      "INSERT INTO readings SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 100) g");
  Target("CREATE TABLE readings_v2 (id int, region text, value int, PRIMARY KEY (id, region))");
  std::string config = WriteConfig(kOneTarget + "mappings: [{source: readings, table: readings_v2}]\n");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO readings SELECT g, 'eu', g FROM generate_series(101, 120) g");
  Source("UPDATE readings SET value = -value WHERE id % 3 = 0");
  Source("UPDATE readings SET region = 'eu' WHERE id IN (1, 3, 5)");  // moves between partitions
  Source("DELETE FROM readings WHERE id % 10 = 0");
  Source(
      "CREATE TABLE readings_ap PARTITION OF readings FOR VALUES IN ('ap');"
      "INSERT INTO readings VALUES (500, 'ap', 5), (501, 'ap', 6)");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  const char* src = "SELECT id::text, region, value::text FROM readings ORDER BY id, region";
  const char* tgt = "SELECT id::text, region, value::text FROM readings_v2 ORDER BY id, region";
  EXPECT_EQ(TargetRows(tgt), SourceRows(src));

  ASSERT_TRUE(StopDaemon().success());
  ASSERT_TRUE(StartDaemon(config).ok());
  Source("UPDATE readings SET value = 0 WHERE region = 'ap'");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows(tgt), SourceRows(src));
  // The verifier and a backfill read every partition too.
  Target("DELETE FROM readings_v2 WHERE id = 2");
  SubprocessOptions o;
  o.argv = {BinaryPath("walshiftctl"), "backfill", "--config", config, "--table", "public.readings", "--wait", "60"};
  auto r = Subprocess::Run(o, absl::Minutes(2));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->status.success()) << r->stdout_text << r->stderr_text << DaemonLog();
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows(tgt), SourceRows(src));
  o.argv = {BinaryPath("walshiftctl"), "verify", "--config", config};
  r = Subprocess::Run(o, absl::Minutes(2));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->status.success()) << r->stdout_text << r->stderr_text;
  EXPECT_THAT(r->stdout_text,
              HasSubstr(absl::StrCat(SourceRows("SELECT count(*)::text FROM readings")[0][0].value_or("?"),
                                     " checked, 0 missing, 0 extra,")));

  Source("TRUNCATE readings; INSERT INTO readings VALUES (1, 'us', 1)");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows(tgt), SourceRows(src));
  EXPECT_TRUE(daemon_->Running());
}

// A renamed (or moved) source table keeps its mapping, said in the log; a published table no
// mapping names stops walshiftd naming it and the fix, instead of dropping its changes.
TEST_F(SchemasTest, RenamedTableIsFollowedAndAnUnmappedOneStops) {
  Source(
      "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE other (id int PRIMARY KEY);"
      "CREATE SCHEMA archive");
  Target("CREATE TABLE t (id int PRIMARY KEY, v text)");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + "mappings: [{source: t}]\n")).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO t VALUES (1, 'a')");
  Source("ALTER TABLE t RENAME TO t_old");
  Source("INSERT INTO t_old VALUES (2, 'b')");
  Source("ALTER TABLE t_old SET SCHEMA archive");
  Source("INSERT INTO archive.t_old VALUES (3, 'c'); UPDATE archive.t_old SET v = 'A' WHERE id = 1");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT id::text, v FROM t ORDER BY id"), (PgRows{{"1", "A"}, {"2", "b"}, {"3", "c"}}));
  EXPECT_THAT(DaemonLog(), HasSubstr("is now named public.t_old"));
  EXPECT_THAT(DaemonLog(), HasSubstr("is now named archive.t_old"));

  Source(absl::StrCat("ALTER PUBLICATION walshift_", pipeline_, " ADD TABLE other; INSERT INTO other VALUES (7)"));
  auto st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->exit_code(), 1) << st->ToString();
  EXPECT_THAT(DaemonLog(), HasSubstr("source table public.other"));
  EXPECT_THAT(DaemonLog(), HasSubstr("no mapping names it"));
  EXPECT_THAT(DaemonLog(), HasSubstr("ignore_tables"));
}

// TRUNCATE of tables with a foreign key between them is applied as one statement, and
// RESTART IDENTITY restarts the target's sequences, as native replication does.
TEST_F(SchemasTest, TruncateOfATableSetAndRestartIdentity) {
  const char* ddl =
      "CREATE TABLE parent (id bigserial PRIMARY KEY, name text);"
      "CREATE TABLE child (id bigserial PRIMARY KEY, parent_id bigint REFERENCES parent (id), v text)";
  Source(ddl);
  Target(ddl);
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + "mappings: [{source: parent}, {source: child}]\n")).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source(
      "INSERT INTO parent (name) SELECT 'p' || g FROM generate_series(1, 10) g;"
      "INSERT INTO child (parent_id, v) SELECT 1 + g % 10, 'c' FROM generate_series(1, 30) g");
  Target("SELECT setval('parent_id_seq', 10); SELECT setval('child_id_seq', 30)");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("TRUNCATE parent, child RESTART IDENTITY");
  Source("INSERT INTO parent (name) VALUES ('again')");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT id::text, name FROM parent"), (PgRows{{"1", "again"}}));
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM child"), (PgRows{{"0"}}));
  // The target's own sequences restarted: its next keys are the source's.
  EXPECT_EQ(TargetRows("SELECT nextval('child_id_seq')::text"), (PgRows{{"1"}}));
  Source("TRUNCATE child, parent");  // without RESTART IDENTITY: sequences go on
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM parent"), (PgRows{{"0"}}));
  EXPECT_EQ(TargetRows("SELECT nextval('child_id_seq')::text"), (PgRows{{"2"}}));
  EXPECT_TRUE(daemon_->Running());
}

// A key of a composite type: every parameter compared in a WHERE clause is typed from the
// target column (an untyped one reads as an anonymous record).
TEST_F(SchemasTest, CompositeTypedKey) {
  const char* ddl = "CREATE TYPE point2 AS (x int, y int); CREATE TABLE cells (at point2 PRIMARY KEY, v text)";
  Source(ddl);
  Target(ddl);
  std::string config = WriteConfig(kOneTarget + "mappings: [{source: cells}]\n");
  auto check = RunToEnd({"--config", config, "--check"});
  EXPECT_EQ(check.code, 0) << check.output;
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO cells SELECT ROW(g, -g)::point2, 'v' || g FROM generate_series(1, 20) g");
  Source(
      "UPDATE cells SET v = 'changed' WHERE (at).x % 3 = 0; DELETE FROM cells WHERE (at).x % 5 = 0;"
      "UPDATE cells SET at = ROW(100, 100)::point2 WHERE (at).x = 1");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  const char* cells = "SELECT at::text, v FROM cells ORDER BY (at).x";
  EXPECT_EQ(TargetRows(cells), SourceRows(cells));
  EXPECT_EQ(SourceRows(cells).size(), 16u);
}

// A char(n) key: compared as bpchar, never cut to char(1).
TEST_F(SchemasTest, CharKey) {
  const char* ddl = "CREATE TABLE codes (code char(3) PRIMARY KEY, v text)";
  Source(ddl);
  Target(ddl);
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + "mappings: [{source: codes}]\n")).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO codes VALUES ('A', 'a'), ('ABC', 'abc'), ('ABD', 'abd')");
  Source(
      "UPDATE codes SET v = 'changed' WHERE code = 'ABC'; DELETE FROM codes WHERE code = 'ABD';"
      "UPDATE codes SET code = 'XYZ' WHERE code = 'A'");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  const char* q = "SELECT code::text, v FROM codes ORDER BY 1";
  EXPECT_EQ(TargetRows(q), SourceRows(q));
}

// A primary key with INCLUDE columns: the key is its key columns only.
TEST_F(SchemasTest, PrimaryKeyWithIncludeColumns) {
  const char* ddl = "CREATE TABLE wide (a int, b int, c text, PRIMARY KEY (a) INCLUDE (b))";
  Source(ddl);
  Target(ddl);
  std::string config = WriteConfig(kOneTarget + "mappings: [{source: wide}]\n");
  auto check = RunToEnd({"--config", config, "--check"});
  EXPECT_EQ(check.code, 0) << check.output;
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO wide SELECT g, g * 2, 'w' FROM generate_series(1, 20) g");
  Source(
      "UPDATE wide SET b = -b, c = 'x' WHERE a % 2 = 0; DELETE FROM wide WHERE a % 7 = 0;"
      "UPDATE wide SET a = 100 WHERE a = 1");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  const char* wide = "SELECT a::text, b::text, c FROM wide ORDER BY wide.a";
  EXPECT_EQ(TargetRows(wide), SourceRows(wide));
}

// A table without a primary key (a log): its inserts are replicated, copied rows included, as
// native replication does; a REPLICA IDENTITY FULL table without one replicates everything by
// the key the mapping gives. A mapping that needs updates of a keyless table is refused.
TEST_F(SchemasTest, TablesWithoutAPrimaryKey) {
  Source(
      "CREATE TABLE audit_log (at timestamptz, who text, what text);"
      "INSERT INTO audit_log SELECT now() - g * interval '1 minute', 'u' || g % 3, 'did ' || g "
      "FROM generate_series(1, 50) g;"
      "CREATE TABLE tags (name text NOT NULL, label text); ALTER TABLE tags REPLICA IDENTITY FULL;"
      "INSERT INTO tags VALUES ('a', 'A'), ('b', 'B')");
  Target(
      "CREATE TABLE audit_log (at timestamptz, who text, what text);"
      "CREATE TABLE tags (name text PRIMARY KEY, label text)");
  std::string config = WriteConfig(kOneTarget + "mappings: [{source: audit_log}, {source: tags, key: [name]}]\n");
  auto check = RunToEnd({"--config", config, "--check"});
  EXPECT_EQ(check.code, 0) << check.output;
  EXPECT_THAT(check.output, HasSubstr("public.audit_log has no primary key and no replica identity: walshift "
                                      "replicates its inserts and truncates only"));
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO audit_log SELECT now(), 'late', 'row ' || g FROM generate_series(1, 300) g");
  Source("INSERT INTO audit_log VALUES (NULL, NULL, NULL), (NULL, NULL, NULL)");  // the same row twice
  Source(
      "INSERT INTO tags VALUES ('c', 'C'); UPDATE tags SET label = 'AA' WHERE name = 'a';"
      "UPDATE tags SET name = 'bb' WHERE name = 'b'; DELETE FROM tags WHERE name = 'c'");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  const char* log = "SELECT at::text, who, what FROM audit_log ORDER BY 1, 2, 3";
  EXPECT_EQ(TargetRows(log), SourceRows(log));
  EXPECT_EQ(SourceRows(log).size(), 352u);
  const char* tags = "SELECT name, label FROM tags ORDER BY 1";
  EXPECT_EQ(TargetRows(tags), SourceRows(tags));
  ASSERT_TRUE(StopDaemon().success());

  std::string refused = WriteConfig(kOneTarget + "mappings: [{source: audit_log, filter: \"who <> 'x'\"}]\n");
  check = RunToEnd({"--config", refused, "--check"});
  EXPECT_EQ(check.code, 2) << check.output;
  EXPECT_THAT(check.output, HasSubstr("public.audit_log has no primary key and no replica identity, so only its "
                                      "inserts are replicated; this mapping needs its updates and deletes"));
}

// A rejected row whose replay cannot even start (a mapped table dropped meanwhile) stops naming
// the rejection, not the later problem.
TEST_F(SchemasTest, StopNamesTheFirstError) {
  Source(
      "CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (id int PRIMARY KEY, parent_id int);"
      "CREATE TABLE scratch (id int PRIMARY KEY)");
  Target(
      "CREATE TABLE parent (id int PRIMARY KEY);"
      "CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id));"
      "CREATE TABLE scratch (id int PRIMARY KEY)");
  ASSERT_TRUE(
      StartDaemon(WriteConfig(kOneTarget + "mappings: [{source: parent}, {source: child}, {source: scratch}]\n")).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  auto psql = PgCluster::Binary("psql");
  ASSERT_TRUE(psql.ok());
  SubprocessOptions holder;  // holds the apply back while the source moves on
  holder.argv = {*psql, "-X",
                 "-q",  target_cluster_->Dsn(target_db_),
                 "-c",  "BEGIN; LOCK TABLE child; SELECT pg_sleep(3); COMMIT;"};
  auto held = Subprocess::Start(holder);
  ASSERT_TRUE(held.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  Source("INSERT INTO parent VALUES (1); INSERT INTO child VALUES (10, 1), (11, 99)");  // 99: no such parent
  Source("INSERT INTO scratch VALUES (1)");
  Source("DROP TABLE scratch");
  ASSERT_TRUE((*held)->Wait(absl::Seconds(30)).ok());
  auto st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->exit_code(), 1) << st->ToString();
  std::string log = DaemonLog();
  std::string stop = log.substr(log.rfind("stopped:"));
  EXPECT_THAT(stop, HasSubstr("foreign key")) << log;
  EXPECT_THAT(stop, HasSubstr("public.child"));
}

// Two merge sources inserting the same new target row: upserts from the start, no conflict and
// no replay.
TEST_F(SchemasTest, MergeSourcesInsertingOneRowNeverConflict) {
  Source(
      "CREATE TABLE users (id int PRIMARY KEY, name text); CREATE TABLE user_stats (user_id int PRIMARY KEY, logins "
      "int)");
  Target("CREATE TABLE accounts (id int PRIMARY KEY, name text, logins int)");
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + R"(mappings:
  - {source: users, module: merge, table: accounts, key: [id], columns: {id: id, name: name}}
  - {source: user_stats, module: merge, table: accounts, key: [id], columns: {id: user_id, logins: logins}}
)"))
                  .ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO user_stats SELECT g, g FROM generate_series(1, 500) g");  // stats first
  Source("INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 500) g");
  Source("BEGIN; INSERT INTO users VALUES (501, 'x'); INSERT INTO user_stats VALUES (501, 0); COMMIT");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM accounts WHERE name IS NOT NULL AND logins IS NOT NULL"),
            (PgRows{{"501"}}));
  // The same with two plain `columns` mappings into one table.
  Source("CREATE TABLE prefs (user_id int PRIMARY KEY, theme text)");
  Target("ALTER TABLE accounts ADD COLUMN theme text");
  ASSERT_TRUE(StopDaemon().success());
  ASSERT_TRUE(StartDaemon(WriteConfig(kOneTarget + R"(mappings:
  - {source: users, module: merge, table: accounts, key: [id], columns: {id: id, name: name}}
  - {source: user_stats, module: merge, table: accounts, key: [id], columns: {id: user_id, logins: logins}}
  - {source: prefs, table: accounts, key: [id], columns: {id: user_id, theme: theme}}
)"))
                  .ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();  // prefs joined the publication
  Source("INSERT INTO prefs SELECT g, 'dark' FROM generate_series(1, 600) g");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM accounts WHERE theme = 'dark'"), (PgRows{{"600"}}));
  EXPECT_THAT(DaemonLog(), Not(HasSubstr("replaying")));
  // One source's key change moves its columns only: the other source's stay where they were.
  Source("UPDATE user_stats SET user_id = 9999 WHERE user_id = 1");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT id::text, name, logins::text FROM accounts WHERE id IN (1, 9999) ORDER BY accounts.id"),
            (PgRows{{"1", "u1", std::nullopt}, {"9999", std::nullopt, "1"}}));
  EXPECT_THAT(DaemonLog(), Not(HasSubstr("replaying")));
}

}  // namespace
}  // namespace walshift::testing

namespace walshift::testing {
namespace {

// The initial copy of child rows folded into shared parents: the copy workers meet on the same
// parent rows and may deadlock (the conflict point makes the 3rd and a later range of a worker
// fail as a deadlock does). Only the range is copied again; the pipeline never starts over.
TEST_F(SchemasTest, CopyWorkersMeetingOnOneParentRetryOnlyTheRange) {
  Source(
      "CREATE TABLE posts (id int PRIMARY KEY, thread int, body text);"
      "INSERT INTO posts SELECT g, (g * 7919) % 1500, 'post ' || g FROM generate_series(1, 30000) g;"
      "CREATE TABLE votes (id int PRIMARY KEY, up int);"
      "INSERT INTO votes SELECT g, g % 7 FROM generate_series(1, 30000) g");
  Target(
      "CREATE TABLE threads (thread int PRIMARY KEY, posts jsonb NOT NULL DEFAULT '[]');"
      "CREATE INDEX ON threads USING gin (posts jsonb_path_ops) WITH (fastupdate = off);"
      "CREATE TABLE post_stats (id int PRIMARY KEY, body text, up int)");
  std::string config = WriteConfig(kOneTarget + R"(snapshot: {workers: 2, chunk_rows: 500}
mappings:
  - {source: posts, module: json_array, table: threads, parent_key: {thread: thread}, column: posts,
     element: {id: id, body: body}, element_key: [id]}
  - {source: posts, module: merge, table: post_stats, key: [id], columns: {id: id, body: body}}
  - {source: votes, module: merge, table: post_stats, key: [id], columns: {id: id, up: up}}
)");
  ASSERT_TRUE(StartDaemon(config, {{"WALSHIFT_CONFLICT_AT", "copy.before_chunk_commit:3"}}).ok());
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(300)).ok()) << DaemonLog();
  EXPECT_THAT(DaemonLog(), HasSubstr("copying the range again in"));
  EXPECT_EQ(TargetRows("SELECT thread::text, jsonb_array_length(posts)::text FROM threads ORDER BY threads.thread"),
            SourceRows("SELECT thread::text, count(*)::text FROM posts GROUP BY thread ORDER BY posts.thread"));
  EXPECT_EQ(TargetRows("SELECT count(*)::text FROM post_stats WHERE body IS NOT NULL AND up IS NOT NULL"),
            (PgRows{{"30000"}}));
  EXPECT_THAT(DaemonLog(), Not(HasSubstr("from the last checkpoint")));  // no restart of the pipeline
}

// users owns accounts (soft delete + filter); user_stats (merge) and addresses (json_array)
// only fill accounts users admits: no ghost rows while a user is deleted or hidden, and an
// undeleted user's account comes back with its current statistics and addresses. The drift
// verifier agrees. (deploy/examples/accounts-owner, with its own workload, in examples_test.)
TEST_F(SchemasTest, OwnerDecidesWhichMergedRowsExist) {
  std::string dir = SourcePath("deploy/examples/accounts-owner");
  auto read = [&](const std::string& f) {
    auto text = ReadFile(dir + "/" + f);
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? *text : std::string();
  };
  Source(read("legacy.sql"));
  Target(read("new.sql"));
  std::string yaml = read("walshift.yaml");
  yaml = yaml.substr(yaml.find("mappings:"));
  std::string config = WriteConfig(kOneTarget + yaml);
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  auto account = [&](int id) {
    return TargetRows(absl::StrCat("SELECT email, logins::text, addresses::text FROM accounts WHERE id = ", id));
  };
  Source("UPDATE users SET deleted_at = now() WHERE id = 5");
  Source(
      "UPDATE user_stats SET logins = 1000 WHERE user_id = 5; INSERT INTO addresses VALUES (900, 5, 'Hidden Rd', "
      "'Nowhere', 'home')");
  Source("UPDATE users SET state = 'spam' WHERE id = 6; INSERT INTO addresses VALUES (901, 6, 'Spam Ln', 'X', 'work')");
  Source(
      "INSERT INTO user_stats VALUES (300, 42, now()); INSERT INTO addresses VALUES (902, 300, 'Early St', 'Y', "
      "'home')");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_TRUE(account(5).empty()) << "a ghost account for a deleted user";
  EXPECT_TRUE(account(6).empty()) << "a ghost account for a hidden user";
  EXPECT_TRUE(account(300).empty()) << "an account without its user";

  Source("UPDATE users SET deleted_at = NULL WHERE id = 5");
  Source("UPDATE users SET state = 'active' WHERE id = 6");
  Source("INSERT INTO users (id, email, name) VALUES (300, 'late@example.com', 'late')");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  ASSERT_EQ(account(5).size(), 1u);
  EXPECT_EQ(account(5)[0][1], "1000");
  EXPECT_THAT(*account(5)[0][2], HasSubstr("Hidden Rd"));
  ASSERT_EQ(account(6).size(), 1u);
  EXPECT_THAT(*account(6)[0][2], HasSubstr("Spam Ln"));
  ASSERT_EQ(account(300).size(), 1u);
  EXPECT_EQ(account(300)[0][1], "42");
  EXPECT_THAT(*account(300)[0][2], HasSubstr("Early St"));

  std::string expected = read("expected.sql"), check = read("check.sql");
  EXPECT_EQ(TargetRows(check.substr(0, check.rfind(';'))),
            SourceRows(expected.substr(expected.find("SELECT"), expected.rfind(';') - expected.find("SELECT"))));

  SubprocessOptions o;
  o.argv = {BinaryPath("walshiftctl"), "verify", "--config", config};
  auto r = Subprocess::Run(o, absl::Minutes(2));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->status.success()) << r->stdout_text << r->stderr_text;
  // users accounts for every account row (the others never create one): extra rows are looked for.
  EXPECT_THAT(r->stdout_text, HasSubstr("0 extra,"));
  EXPECT_THAT(r->stdout_text, Not(HasSubstr("also written by")));
  // So a ghost account is found.
  Target("INSERT INTO accounts (id, email, state, logins) VALUES (9999, 'ghost@example.com', 'active', 1)");
  r = Subprocess::Run(o, absl::Minutes(2));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status.exit_code(), 1) << r->stdout_text << r->stderr_text;
  EXPECT_THAT(r->stdout_text, HasSubstr("1 extra"));
}

}  // namespace
}  // namespace walshift::testing
