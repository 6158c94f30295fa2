// Every example under deploy/examples/ is loaded and run: legacy.sql and new.sql create the
// schemas, walshiftd streams with the example's walshift.yaml (DSNs from the environment),
// seed.sql and the workload*.sql pgbench scripts write, and the target must equal what
// expected.sql computes over the legacy tables.

#include <algorithm>
#include <filesystem>
#include <set>

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
  void RunExample(const std::string& name) {
    std::string dir = SourcePath("deploy/examples/" + name);
    auto read = [&](const std::string& file) {
      auto text = ReadFile(dir + "/" + file);
      EXPECT_TRUE(text.ok()) << text.status();
      return text.ok() ? *text : std::string();
    };
    setenv("WALSHIFT_SOURCE_DSN", source_cluster_->Dsn(source_db_).c_str(), 1);
    setenv("WALSHIFT_TARGET_DSN", target_cluster_->Dsn(target_db_).c_str(), 1);
    auto settings = config::LoadSettingsFile(dir + "/walshift.yaml");
    ASSERT_TRUE(settings.ok()) << settings.status();
    pipeline_ = settings->proto.pipeline();
    slot_ = settings->slot;

    Source(read("legacy.sql"));
    Target(read("new.sql"));
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

    std::vector<std::string> expected, actual;
    for (auto q : absl::StrSplit(read("expected.sql"), ";\n")) {
      std::string s(absl::StripAsciiWhitespace(q));
      if (!s.empty() && s.find("SELECT") != std::string::npos) expected.push_back(s);
    }
    for (auto q : absl::StrSplit(read("check.sql"), ";\n")) {
      std::string s(absl::StripAsciiWhitespace(q));
      if (!s.empty() && s.find("SELECT") != std::string::npos) actual.push_back(s);
    }
    ASSERT_EQ(expected.size(), actual.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      PgRows want = SourceRows(expected[i]);
      PgRows got = TargetRows(actual[i]);
      EXPECT_GT(want.size(), 0u) << expected[i];
      EXPECT_EQ(got.size(), want.size()) << actual[i];
      EXPECT_TRUE(got == want) << "target differs from expected for: " << actual[i];
    }
    EXPECT_TRUE(StopDaemon().success());
  }
};

TEST_F(ExamplesTest, EveryExampleHasATest) {
  std::set<std::string> tested = {"orders", "collections-junction", "social-content"};
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

}  // namespace
}  // namespace walshift::testing
