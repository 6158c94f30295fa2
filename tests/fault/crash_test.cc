// Crash safety: while pgbench commits 20,000 small transactions on the legacy database,
// walshiftd is killed with SIGKILL at explicit kill points (group sent but not committed;
// committed but not confirmed to the source; between source transactions inside a group) and
// once from outside at an arbitrary instant, restarting each time. Afterwards the target must
// equal the mapped source exactly, compared in both directions.

#include <signal.h>

#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "daemon/apply/documents/document_sink.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"

namespace walshift::testing {
namespace {

class CrashTest : public DaemonTest {
 protected:
  // Runs pgbench with `pgbench_args` while walshiftd (on `config`, running and caught up) is
  // killed once from outside at an arbitrary instant and then at each kill point, restarting
  // each time; returns once the workload is done and the last walshiftd has caught up.
  void KillAtEveryDangerousInstant(const std::string& config, const std::vector<std::string>& pgbench_args) {
    auto workload = StartPgbench(pgbench_args);
    ASSERT_NE(workload, nullptr);
    std::this_thread::sleep_for(std::chrono::milliseconds(700));  // an arbitrary instant, on purpose
    daemon_->Kill();
    for (const char* point : {"apply.before_commit:5", "apply.after_commit:5", "pipeline.after_source_commit:300"}) {
      ASSERT_TRUE(StartDaemon(config, {{"WALSHIFT_CRASH_AT", point}}).ok());
      auto st = daemon_->Wait(absl::Seconds(60));
      ASSERT_TRUE(st.ok()) << "walshiftd never reached " << point;
      EXPECT_TRUE(st->signaled() && st->term_signal() == SIGKILL) << point << ": " << st->ToString() << "\n"
                                                                  << DaemonLog();
    }
    ASSERT_TRUE(StartDaemon(config).ok());
    auto done = workload->Wait(absl::Seconds(300));
    ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
    ASSERT_TRUE(WaitCaughtUp(absl::Seconds(180)).ok()) << DaemonLog();
  }
};

TEST_F(CrashTest, KilledAtEveryDangerousInstantTargetStillExact) {
  Source("CREATE TABLE events (id int PRIMARY KEY, n int NOT NULL, payload text)");
  Target(
      "CREATE TABLE events_v2 (event_id int PRIMARY KEY, count int NOT NULL, digest text, "
      "doubled bigint)");
  std::string config = WriteConfig(R"(
pipeline: {PIPELINE}
source: {dsn: "{SOURCE}"}
targets: [{name: main, dsn: "{TARGET}"}]
apply: {group_max_changes: 500, group_max_ms: 100}
mappings:
  - source: public.events
    table: public.events_v2
    key: [event_id]
    columns:
      event_id: id
      count: n
      digest: payload
      doubled: {sql: "n::bigint * 2"}
)");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();

  std::string upsert = dir_ + "/upsert.sql";
  std::string remove = dir_ + "/delete.sql";
  std::ofstream(upsert) << "\\set id random(1, 3000)\n"
                           "INSERT INTO events VALUES (:id, 1, md5(:id::text)) ON CONFLICT (id) DO "
                           "UPDATE SET n = events.n + 1, payload = md5(events.payload);\n";
  std::ofstream(remove) << "\\set id random(1, 3000)\nDELETE FROM events WHERE id = :id;\n";
  ASSERT_NO_FATAL_FAILURE(KillAtEveryDangerousInstant(
      config, {"-c", "4", "-j", "2", "-t", "5000", "-f", upsert + "@9", "-f", remove + "@1"}));

  PgRows expected = SourceRows("SELECT id::text, n::text, payload, (n::bigint * 2)::text FROM events ORDER BY id");
  PgRows actual =
      TargetRows("SELECT event_id::text, count::text, digest, doubled::text FROM events_v2 ORDER BY event_id");
  EXPECT_GT(expected.size(), 1000u);
  EXPECT_EQ(actual.size(), expected.size());
  EXPECT_TRUE(actual == expected) << "target differs from the mapped source";
  // And in the other direction: no target row without its source row.
  std::set<std::string> source_ids;
  for (const auto& r : expected) source_ids.insert(*r[0]);
  for (const auto& r : actual) EXPECT_TRUE(source_ids.count(*r[0])) << "extra target row " << *r[0];
  EXPECT_TRUE(StopDaemon().success());
}

// The same for json_array, whose runs of changes go out as one statement over arrays: children
// inserted, edited, moved between parents and deleted by four clients while walshiftd is killed
// at the same points. Every parent's array must equal the source's children afterwards.
TEST_F(CrashTest, JsonArrayKilledAtEveryDangerousInstantArraysStillExact) {
  Source("CREATE TABLE posts (id int PRIMARY KEY, article int NOT NULL, platform text NOT NULL, body text)");
  Target(
      "CREATE TABLE articles (article int PRIMARY KEY, posts jsonb NOT NULL DEFAULT '[]');"
      "CREATE INDEX ON articles USING gin (posts jsonb_path_ops) WITH (fastupdate = off)");
  std::string config = WriteConfig(R"(
pipeline: {PIPELINE}
source: {dsn: "{SOURCE}"}
targets: [{name: main, dsn: "{TARGET}"}]
apply: {group_max_changes: 500, group_max_ms: 100}
mappings:
  - {source: posts, module: json_array, table: articles, parent_key: {article: article}, column: posts,
     element: {id: id, platform: platform, body: body}, element_key: [id], sort_by: platform}
)");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();

  std::string write = dir_ + "/write.sql";
  std::string move = dir_ + "/move.sql";
  std::string remove = dir_ + "/delete.sql";
  std::ofstream(write) << "\\set id random(1, 3000)\n"
                          "INSERT INTO posts VALUES (:id, :id % 200, (ARRAY['x','bluesky','threads'])[1 + :id % 3], "
                          "md5(:id::text)) ON CONFLICT (id) DO UPDATE SET body = md5(posts.body);\n";
  std::ofstream(move) << "\\set id random(1, 3000)\n"
                         "UPDATE posts SET article = (article + 7) % 200 WHERE id = :id;\n";
  std::ofstream(remove) << "\\set id random(1, 3000)\nDELETE FROM posts WHERE id = :id;\n";
  ASSERT_NO_FATAL_FAILURE(KillAtEveryDangerousInstant(
      config, {"-c", "4", "-j", "2", "-t", "3000", "-f", write + "@6", "-f", move + "@3", "-f", remove + "@1"}));

  PgRows expected = SourceRows(
      "SELECT article::text, jsonb_agg(jsonb_build_object('id', id, 'platform', platform, 'body', body) "
      "ORDER BY platform, id)::text FROM posts GROUP BY article ORDER BY article");
  PgRows actual = TargetRows("SELECT article::text, posts::text FROM articles WHERE posts <> '[]' ORDER BY article");
  EXPECT_GT(expected.size(), 150u);
  EXPECT_EQ(actual.size(), expected.size());
  std::string diff;
  for (size_t r = 0, shown = 0; r < std::max(actual.size(), expected.size()) && shown < 3; ++r) {
    if (r < actual.size() && r < expected.size() && actual[r] == expected[r]) continue;
    ++shown;
    absl::StrAppend(&diff, "\n  expected ", r < expected.size() ? *expected[r][0] + " " + *expected[r][1] : "(none)",
                    "\n  actual   ", r < actual.size() ? *actual[r][0] + " " + *actual[r][1] : "(none)");
  }
  EXPECT_TRUE(actual == expected) << "the arrays differ from the source's children:" << diff;
  // No element twice, in one parent or in two.
  EXPECT_EQ(TargetRows("SELECT count(*) - count(DISTINCT e->'id') FROM articles, jsonb_array_elements(posts) e"),
            (PgRows{{"0"}}));
  EXPECT_TRUE(StopDaemon().success());
}

// The document store: rows merged from two tables into one document per key, with an array of
// child rows, written by four clients while walshiftd is killed at the same points (including
// between writing a group's documents and its commit record). Afterwards every document must
// equal what the legacy rows say, and no document may exist without its rows.
TEST_F(CrashTest, DocumentStoreKilledAtEveryDangerousInstantDocumentsStillExact) {
  Source(
      "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL, n int NOT NULL);"
      "CREATE TABLE notes (id int PRIMARY KEY, account int NOT NULL, body text)");
  documents_dir_ = dir_ + "/documents";
  std::string config = WriteConfig(absl::StrCat(R"(
pipeline: {PIPELINE}
source: {dsn: "{SOURCE}"}
targets: [{name: docs, kind: documents, path: ")",
                                                documents_dir_, R"("}]
apply: {group_max_changes: 500, group_max_ms: 100}
mappings:
  - {source: accounts, table: accounts, columns: {id: id, name: name, n: n}}
  - {source: notes, module: json_array, table: accounts, parent_key: {id: account}, column: notes,
     element: {id: id, body: body}, element_key: [id], owner: public.accounts}
)"));
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();

  std::string write = dir_ + "/write.sql";
  std::string note = dir_ + "/note.sql";
  std::string remove = dir_ + "/delete.sql";
  std::ofstream(write) << "\\set id random(1, 1500)\n"
                          "INSERT INTO accounts VALUES (:id, md5(:id::text), 1) ON CONFLICT (id) DO "
                          "UPDATE SET n = accounts.n + 1, name = md5(accounts.name);\n";
  std::ofstream(note) << "\\set id random(1, 3000)\n"
                         "INSERT INTO notes VALUES (:id, 1 + :id % 1500, md5(:id::text)) ON CONFLICT (id) DO "
                         "UPDATE SET account = 1 + (notes.account + 7) % 1500, body = md5(notes.body);\n";
  std::ofstream(remove) << "\\set id random(1, 1500)\nDELETE FROM accounts WHERE id = :id;\n"
                           "DELETE FROM notes WHERE id = :id * 2;\n";
  ASSERT_NO_FATAL_FAILURE(KillAtEveryDangerousInstant(
      config, {"-c", "4", "-j", "2", "-t", "3000", "-f", write + "@6", "-f", note + "@3", "-f", remove + "@1"}));

  PgRows expected = SourceRows(
      "SELECT 'accounts/' || a.id || '.json', (jsonb_build_object('id', a.id, 'name', a.name, 'n', a.n) || "
      "coalesce((SELECT jsonb_build_object('notes', jsonb_agg(jsonb_build_object('id', n.id, 'body', n.body) "
      "ORDER BY n.id)) FROM notes n WHERE n.account = a.id HAVING count(*) > 0), '{}'))::text FROM accounts a "
      "ORDER BY 1");
  std::map<std::string, documents::Json> got;
  ASSERT_TRUE(documents::DocumentSink::ForEachDocument(documents_dir_, "accounts",
                                                       [&](const std::string& file, const documents::Json& doc) {
                                                         got["accounts/" + file] = doc;
                                                         return absl::OkStatus();
                                                       })
                  .ok());
  EXPECT_GT(expected.size(), 500u);
  EXPECT_EQ(got.size(), expected.size());
  int shown = 0;
  for (const auto& row : expected) {
    auto want = documents::Json::Parse(*row[1]);
    ASSERT_TRUE(want.ok());
    documents::Json w = *want;
    auto it = got.find(*row[0]);
    ASSERT_TRUE(it != got.end()) << "no document " << *row[0];
    documents::Json g = it->second;
    for (documents::Json* d : {&w, &g}) {  // an array emptied by deletes counts as absent
      const documents::Json* notes = d->Find("notes");
      if (notes != nullptr && notes->is_array() && notes->array().empty()) d->mutable_object().erase("notes");
    }
    EXPECT_TRUE(w == g) << (shown++ < 5
                                ? absl::StrCat(*row[0], ": expected ", w.Serialize(), ", actual ", g.Serialize())
                                : std::string());
  }
  EXPECT_TRUE(StopDaemon().success());
}

}  // namespace
}  // namespace walshift::testing
