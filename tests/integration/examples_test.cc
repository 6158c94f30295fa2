// Every example under deploy/examples/ is loaded and run: legacy.sql and new.sql create the
// schemas, walshiftd streams with the example's walshift.yaml (DSNs from the environment),
// seed.sql and the workload*.sql pgbench scripts write, and the target must equal what
// expected.sql computes over the legacy tables.

#include <algorithm>
#include <filesystem>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "daemon/apply/documents/document_sink.h"
#include "daemon/config/config.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/test_paths.h"

namespace walshift::testing {
namespace {

class ExamplesTest : public DaemonTest {
 protected:
  // Splits a file of queries separated by ";\n".
  static std::vector<std::string> Queries(const std::string& text) {
    std::vector<std::string> out;
    for (auto q : absl::StrSplit(text, ";\n")) {
      std::string s(absl::StripAsciiWhitespace(q));
      if (!s.empty() && s.find("SELECT") != std::string::npos) out.push_back(s);
    }
    return out;
  }

  static std::string ReadExampleFile(const std::string& dir, const std::string& file) {
    auto text = ReadFile(dir + "/" + file);
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? *text : std::string();
  }

  // The example's workload*.sql scripts, run by pgbench together (4 clients, 500 transactions).
  void RunWorkload(const std::string& dir) {
    std::vector<std::string> scripts;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      std::string f = e.path().filename().string();
      if (f.rfind("workload", 0) == 0 && f.size() > 4 && f.substr(f.size() - 4) == ".sql")
        scripts.push_back(e.path().string());
    }
    std::sort(scripts.begin(), scripts.end());
    if (!scripts.empty()) RunPgbench(scripts, 4, 500);
  }

  // An example has one target (new.sql, expected.sql, check.sql, WALSHIFT_TARGET_DSN) or, when
  // it has a `targets` file listing names, one database per name (new_<name>.sql, ...,
  // WALSHIFT_TARGET_DSN_<NAME>).
  void RunExample(const std::string& name) {
    std::string dir = SourcePath("deploy/examples/" + name);
    auto read = [&](const std::string& file) { return ReadExampleFile(dir, file); };
    struct Target {
      std::string suffix, db;
    };
    std::vector<Target> targets;
    if (std::filesystem::exists(dir + "/targets")) {
      for (auto n : absl::StrSplit(read("targets"), absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
        std::string t(n);
        std::string db = targets.empty() ? target_db_ : target_db_ + "_" + t;
        if (!targets.empty()) {
          ASSERT_TRUE(target_cluster_->CreateDatabase(db).ok());
        }
        std::string env = "WALSHIFT_TARGET_DSN_" + absl::AsciiStrToUpper(t);
        setenv(env.c_str(), target_cluster_->Dsn(db).c_str(), 1);
        targets.push_back({"_" + t, db});
      }
    } else {
      setenv("WALSHIFT_TARGET_DSN", target_cluster_->Dsn(target_db_).c_str(), 1);
      targets.push_back({"", target_db_});
    }
    setenv("WALSHIFT_SOURCE_DSN", source_cluster_->Dsn(source_db_).c_str(), 1);
    auto settings = config::LoadSettingsFile(dir + "/walshift.yaml");
    ASSERT_TRUE(settings.ok()) << settings.status();
    pipeline_ = settings->proto.pipeline();
    slot_ = settings->slot;

    Source(read("legacy.sql"));
    for (const Target& t : targets) {
      absl::Status st = target_cluster_->Exec(t.db, read("new" + t.suffix + ".sql"));
      ASSERT_TRUE(st.ok()) << st;
    }
    ASSERT_TRUE(StartDaemon(dir + "/walshift.yaml").ok());
    ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
    if (std::filesystem::exists(dir + "/seed.sql")) Source(read("seed.sql"));
    RunWorkload(dir);
    ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
    // The fence covers the first target; the others commit the same group right after it.
    std::string cp = "SELECT commit_lsn::text FROM walshift.checkpoint WHERE pipeline = '" + pipeline_ + "'";
    auto first = target_cluster_->QueryValue(targets[0].db, cp);
    ASSERT_TRUE(first.ok());
    for (const Target& t : targets) {
      std::string done = "SELECT coalesce((SELECT commit_lsn >= '" + *first +
                         "'::pg_lsn FROM walshift.checkpoint WHERE pipeline = '" + pipeline_ + "'), false)::text";
      for (int i = 0; i < 200; ++i) {
        auto v = target_cluster_->QueryValue(t.db, done);
        if (v.ok() && *v == "true") break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }

    for (const Target& t : targets) {
      std::vector<std::string> expected = Queries(read("expected" + t.suffix + ".sql"));
      std::vector<std::string> actual = Queries(read("check" + t.suffix + ".sql"));
      ASSERT_EQ(expected.size(), actual.size()) << t.suffix;
      for (size_t i = 0; i < expected.size(); ++i) {
        PgRows want = SourceRows(expected[i]);
        auto got = target_cluster_->Query(t.db, actual[i]);
        ASSERT_TRUE(got.ok()) << got.status() << "\n" << actual[i];
        EXPECT_GT(want.size(), 0u) << expected[i];
        EXPECT_EQ(got->size(), want.size()) << actual[i];
        std::string diff;
        for (size_t r = 0, shown = 0; r < std::max(got->size(), want.size()) && shown < 5; ++r) {
          auto show = [](const PgRows& rows, size_t at) {
            if (at >= rows.size()) return std::string("(none)");
            std::string line;
            for (const auto& v : rows[at]) absl::StrAppend(&line, line.empty() ? "" : " | ", v.value_or("NULL"));
            return line;
          };
          if (r < got->size() && r < want.size() && (*got)[r] == want[r]) continue;
          absl::StrAppend(&diff, "\n  row ", r, ": expected ", show(want, r), "\n  row ", r, ": actual   ",
                          show(*got, r));
          ++shown;
        }
        EXPECT_TRUE(*got == want) << "target" << t.suffix << " differs from expected for: " << actual[i] << diff;
      }
    }
    EXPECT_TRUE(StopDaemon().success());
  }

  // A document store example: walshift.yaml's target is `kind: documents` at
  // $WALSHIFT_DOCUMENTS_DIR; expected.sql computes, from the legacy tables alone, one row per
  // document (its path in the store, its JSON). The store must hold exactly those documents
  // (empty arrays count as absent: whether a parent's array was ever created is history), and
  // `walshiftctl verify` must agree.
  void RunDocumentsExample(const std::string& name) {
    std::string dir = SourcePath("deploy/examples/" + name);
    auto read = [&](const std::string& file) { return ReadExampleFile(dir, file); };
    documents_dir_ = dir_ + "/documents";
    setenv("WALSHIFT_DOCUMENTS_DIR", documents_dir_.c_str(), 1);
    setenv("WALSHIFT_SOURCE_DSN", source_cluster_->Dsn(source_db_).c_str(), 1);
    auto settings = config::LoadSettingsFile(dir + "/walshift.yaml");
    ASSERT_TRUE(settings.ok()) << settings.status();
    pipeline_ = settings->proto.pipeline();
    slot_ = settings->slot;
    Source(read("legacy.sql"));  // with rows: the initial copy exports them
    ASSERT_TRUE(StartDaemon(dir + "/walshift.yaml").ok());
    ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
    RunWorkload(dir);
    ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();

    using documents::Json;
    auto normalized = [](Json doc) {
      if (doc.is_object()) {
        for (auto it = doc.mutable_object().begin(); it != doc.mutable_object().end();) {
          if (it->second.is_array() && it->second.array().empty()) {
            it = doc.mutable_object().erase(it);
          } else {
            ++it;
          }
        }
      }
      return doc;
    };
    std::map<std::string, Json> want, got;
    std::set<std::string> collections;
    for (const std::string& q : Queries(read("expected.sql"))) {
      PgRows rows = SourceRows(q);
      EXPECT_GT(rows.size(), 0u) << q;
      for (const auto& row : rows) {
        ASSERT_EQ(row.size(), 2u) << q;
        auto doc = Json::Parse(row[1].value_or("null"));
        ASSERT_TRUE(doc.ok()) << doc.status();
        want[*row[0]] = normalized(*doc);
        collections.insert(row[0]->substr(0, row[0]->find('/')));
      }
    }
    for (const std::string& c : collections) {
      absl::Status st =
          documents::DocumentSink::ForEachDocument(documents_dir_, c, [&](const std::string& file, const Json& doc) {
            got[c + "/" + file] = normalized(doc);
            return absl::OkStatus();
          });
      ASSERT_TRUE(st.ok()) << st;
    }
    std::string diff;
    int shown = 0;
    for (const auto& [path, doc] : want) {
      auto it = got.find(path);
      if (it != got.end() && it->second == doc) continue;
      if (shown++ < 5)
        absl::StrAppend(&diff, "\n  ", path, ": expected ", doc.Serialize(), "\n  ", path, ": actual   ",
                        it == got.end() ? "(no document)" : it->second.Serialize());
    }
    for (const auto& [path, doc] : got) {
      if (want.count(path) || shown++ >= 5) continue;
      absl::StrAppend(&diff, "\n  ", path, ": extra document ", doc.Serialize());
    }
    EXPECT_TRUE(diff.empty()) << "the document store differs from the legacy tables (" << want.size()
                              << " documents expected, " << got.size() << " found):" << diff;
    EXPECT_EQ(want.size(), got.size());

    SubprocessOptions o;
    o.argv = {BinaryPath("walshiftctl"), "verify", "--config", dir + "/walshift.yaml"};
    auto verify = Subprocess::Run(o, absl::Minutes(5));
    ASSERT_TRUE(verify.ok()) << verify.status();
    EXPECT_EQ(verify->status.exit_code(), 0) << verify->stdout_text << verify->stderr_text;
    EXPECT_THAT(verify->stdout_text, ::testing::HasSubstr(" 0 missing, 0 extra, 0 mismatched"));
    // The store's checkpoint and lag, like any target's.
    o.argv = {BinaryPath("walshiftctl"), "status", "--config", dir + "/walshift.yaml"};
    auto status = Subprocess::Run(o, absl::Minutes(1));
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_EQ(status->status.exit_code(), 0) << status->stdout_text << status->stderr_text;
    EXPECT_THAT(status->stdout_text, ::testing::HasSubstr(settings->targets[0].name));
    EXPECT_THAT(status->stdout_text, ::testing::Not(::testing::HasSubstr("error")));
    EXPECT_TRUE(StopDaemon().success());
  }
};

TEST_F(ExamplesTest, EveryExampleHasATest) {
  std::set<std::string> tested = {"orders",        "collections-junction",  "social-content",
                                  "service-split", "content-consolidation", "accounts-owner",
                                  "chat-documents"};
  for (const auto& e : std::filesystem::directory_iterator(SourcePath("deploy/examples"))) {
    if (e.is_directory()) {
      EXPECT_TRUE(tested.count(e.path().filename().string()))
          << "deploy/examples/" << e.path().filename().string() << " has no test in examples_test.cc";
    }
  }
}

TEST_F(ExamplesTest, Orders) { RunExample("orders"); }
TEST_F(ExamplesTest, CollectionsJunction) { RunExample("collections-junction"); }
TEST_F(ExamplesTest, SocialContent) { RunExample("social-content"); }
TEST_F(ExamplesTest, ServiceSplit) { RunExample("service-split"); }
TEST_F(ExamplesTest, ContentConsolidation) { RunExample("content-consolidation"); }
TEST_F(ExamplesTest, AccountsOwner) { RunExample("accounts-owner"); }
TEST_F(ExamplesTest, ChatDocuments) { RunDocumentsExample("chat-documents"); }

}  // namespace
}  // namespace walshift::testing
