// The document store target on the cases a migration meets beyond the example: key changes of
// rows with large values, merged rows a source leaves, values at PostgreSQL's limits, owned
// children without a parent, a rejected value among good ones, and what is refused.

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "daemon/apply/documents/document_sink.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/test_paths.h"

namespace walshift::testing {
namespace {

using documents::Json;
using ::testing::HasSubstr;

class DocumentsTest : public DaemonTest {
 protected:
  std::string Config(const std::string& mappings) {
    documents_dir_ = dir_ + "/documents";
    return WriteConfig(absl::StrCat(R"yaml(
pipeline: {PIPELINE}
source: {dsn: "{SOURCE}"}
targets: [{name: docs, kind: documents, path: ")yaml",
                                    documents_dir_, R"yaml("}]
status: {listen: "off"}
mappings:
)yaml",
                                    mappings));
  }
  // Every file of a collection (hidden ones included), by name.
  std::map<std::string, Json> Collection(const std::string& c) {
    std::map<std::string, Json> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(documents_dir_ + "/" + c, ec)) {
      auto text = ReadFile(e.path().string());
      EXPECT_TRUE(text.ok());
      auto doc = Json::Parse(text.ok() ? *text : "null");
      EXPECT_TRUE(doc.ok()) << e.path() << ": " << doc.status();
      out[e.path().filename().string()] = doc.ok() ? *doc : Json();
    }
    return out;
  }
};

// A key change moves the document; a value the update did not carry (unchanged TOAST) stays.
TEST_F(DocumentsTest, KeyChangeMovesTheDocumentAndKeepsItsLargeValue) {
  Source(
      "CREATE TABLE b (id int PRIMARY KEY, name text, bio text);"
      "INSERT INTO b SELECT g, 'n' || g, repeat(md5(g::text), 400) FROM generate_series(1, 3) g");
  std::string config = Config("  - {source: b, table: b}\n");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("UPDATE b SET id = 10, name = 'moved' WHERE id = 1");
  Source("UPDATE b SET id = 11 WHERE id = 2; UPDATE b SET id = 2 WHERE id = 3");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  auto docs = Collection("b");
  std::vector<std::string> files;
  for (const auto& [f, _] : docs) files.push_back(f);
  EXPECT_THAT(files, ::testing::ElementsAre("10.json", "11.json", "2.json"));
  PgRows want = SourceRows("SELECT id::text, name, bio FROM b ORDER BY id");
  for (const auto& row : want) {
    const Json& d = docs[*row[0] + ".json"];
    ASSERT_TRUE(d.is_object()) << *row[0];
    EXPECT_EQ(d.Find("name")->string_value(), *row[1]);
    ASSERT_NE(d.Find("bio"), nullptr) << *row[0] << ": " << d.Serialize();
    EXPECT_EQ(d.Find("bio")->string_value(), *row[2]) << *row[0];
  }
  EXPECT_EQ(Walshiftctl({"verify", "--config", config}).status.exit_code(), 0);
}

// A merged document a source leaves keeps its key typed; the verifier agrees with the apply.
TEST_F(DocumentsTest, MergedDocumentASourceLeavesStaysExact) {
  Source("CREATE TABLE m1 (id int PRIMARY KEY, x int); CREATE TABLE m2 (id int PRIMARY KEY, y int, note text)");
  std::string config = Config(R"yaml(
  - {source: m1, module: merge, table: m, key: [id], columns: {id: id, x: x}}
  - {source: m2, module: merge, table: m, key: [id], columns: {id: id, y: y, note: note}, on_delete: delete_when_last}
)yaml");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO m1 VALUES (1, 10), (2, 20); INSERT INTO m2 VALUES (2, 200, 'a'), (3, 300, 'b')");
  Source("DELETE FROM m2 WHERE id IN (2, 3)");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  auto docs = Collection("m");
  ASSERT_EQ(docs.size(), 2u);  // 3 went with its last source
  const Json* id = docs["2.json"].Find("id");
  ASSERT_NE(id, nullptr);
  EXPECT_EQ(id->type(), Json::Type::kNumber) << docs["2.json"].Serialize();
  EXPECT_EQ(docs["2.json"].Find("x")->number_text(), "20");
  RunResult v = Walshiftctl({"verify", "--config", config});
  EXPECT_EQ(v.status.exit_code(), 0) << v.stdout_text << v.stderr_text;
}

// Values PostgreSQL accepts never stop the pipeline: a json number beyond numeric's range, an
// owned child whose parent key is NULL (it has no parent to join).
TEST_F(DocumentsTest, ValuesAtTheLimitsAndOrphanChildrenDoNotStopIt) {
  Source(
      "CREATE TABLE j (id int PRIMARY KEY, v json);"
      "CREATE TABLE posts (id int PRIMARY KEY, title text);"
      "CREATE TABLE comments (id int PRIMARY KEY, post_id int, body text)");
  std::string config = Config(R"yaml(
  - {source: j, table: j}
  - {source: posts, table: posts}
  - {source: comments, module: json_array, table: posts, parent_key: {id: post_id}, column: comments,
     element: {id: id, body: body}, element_key: [id], owner: public.posts}
)yaml");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source(
      "INSERT INTO j VALUES (1, '{\"x\": 1e1001}'), (2, '{\"y\": 1.50}');"
      "INSERT INTO posts VALUES (1, 'p');"
      "INSERT INTO comments VALUES (1, 1, 'c1'), (2, NULL, 'orphan')");
  Source("UPDATE comments SET post_id = NULL WHERE id = 1");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_TRUE(daemon_->Running());
  auto j = Collection("j");
  EXPECT_EQ(j.size(), 2u);
  auto posts = Collection("posts");
  ASSERT_EQ(posts.size(), 1u);
  const Json* comments = posts["1.json"].Find("comments");
  ASSERT_NE(comments, nullptr) << posts["1.json"].Serialize();
  EXPECT_TRUE(comments->array().empty()) << posts["1.json"].Serialize();
}

// A value the store cannot take stops walshiftd naming table, key and LSN, after committing the
// transactions before it; restarting fails the same way, nothing is skipped.
TEST_F(DocumentsTest, ARejectedValueStopsAfterEverythingBeforeIt) {
  Source("CREATE TABLE parents (id int PRIMARY KEY); CREATE TABLE kids (id int PRIMARY KEY, parent int)");
  std::string config = Config(R"yaml(
  - {source: parents, table: parents}
  - {source: kids, module: json_array, table: parents, parent_key: {id: parent}, column: kids,
     element: {id: id}, element_key: [id]}
)yaml");
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("INSERT INTO parents VALUES (1)");
  Source("INSERT INTO kids VALUES (1, NULL)");  // a parent document needs a key
  auto st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->exit_code(), 1) << DaemonLog();
  std::string log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("parents"));
  EXPECT_THAT(log, HasSubstr("NULL"));
  EXPECT_THAT(log, HasSubstr("at LSN"));
  EXPECT_EQ(Collection("parents").size(), 1u) << log;  // the transaction before it is in
}

// What the store cannot do is refused before streaming: an element key that leaves out part of
// the child's key would remove other parents' elements.
TEST_F(DocumentsTest, PartialElementKeyIsRefused) {
  Source(
      "CREATE TABLE products (sku text PRIMARY KEY);"
      "CREATE TABLE product_categories (sku text, category_id int, PRIMARY KEY (sku, category_id))");
  std::string config = Config(R"yaml(
  - {source: products, table: products}
  - {source: product_categories, module: json_array, table: products, parent_key: {sku: sku}, column: categories,
     element: {category_id: category_id}, element_key: [category_id]}
)yaml");
  SubprocessOptions o;
  o.argv = {BinaryPath("walshiftd"), "--config", config, "--check"};
  auto r = Subprocess::Run(o, absl::Minutes(1));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status.exit_code(), 2) << r->stdout_text << r->stderr_text;
  EXPECT_THAT(r->stdout_text + r->stderr_text, HasSubstr("element_key"));
  EXPECT_THAT(r->stdout_text + r->stderr_text, HasSubstr("sku"));
  RunResult v = Walshiftctl({"verify", "--config", config, "--table", "public.nosuch"});
  EXPECT_EQ(v.status.exit_code(), 2);
  EXPECT_THAT(v.stderr_text, HasSubstr("no mapping"));
}

}  // namespace
}  // namespace walshift::testing
