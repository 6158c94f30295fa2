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

  // An example has one target (new.sql, expected.sql, check.sql, WALSHIFT_TARGET_DSN) or, when
  // it has a `targets` file listing names, one database per name (new_<name>.sql, ...,
  // WALSHIFT_TARGET_DSN_<NAME>).
  void RunExample(const std::string& name) {
    std::string dir = SourcePath("deploy/examples/" + name);
    auto read = [&](const std::string& file) {
      auto text = ReadFile(dir + "/" + file);
      EXPECT_TRUE(text.ok()) << text.status();
      return text.ok() ? *text : std::string();
    };
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
    std::vector<std::string> scripts;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      std::string f = e.path().filename().string();
      if (f.rfind("workload", 0) == 0 && f.size() > 4 && f.substr(f.size() - 4) == ".sql")
        scripts.push_back(e.path().string());
    }
    std::sort(scripts.begin(), scripts.end());
    if (!scripts.empty()) RunPgbench(scripts, 4, 500);
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
          absl::StrAppend(&diff, "\n  row ", r, ": expected ", show(want, r), "\n  row ", r, ": actual   ", show(*got, r));
          ++shown;
        }
        EXPECT_TRUE(*got == want) << "target" << t.suffix << " differs from expected for: " << actual[i] << diff;
      }
    }
    EXPECT_TRUE(StopDaemon().success());
  }
};

TEST_F(ExamplesTest, EveryExampleHasATest) {
  std::set<std::string> tested = {"orders", "collections-junction", "social-content", "service-split",
                                  "content-consolidation", "accounts-owner"};
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

}  // namespace
}  // namespace walshift::testing
