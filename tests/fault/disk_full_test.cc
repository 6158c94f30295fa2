// The target's disk full: the target table lives in a tablespace on a small tmpfs the test
// mounts (as root; skipped where it cannot), filled to the last byte under a pgbench load.
// walshiftd must keep running and retry from its checkpoint with a growing backoff, say in its
// log and /status what failed (SQLSTATE 53100, the table, the LSNs), count it in /metrics, and
// resume once the test frees the space; the target then equals the source exactly.

#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <regex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "tests/integration/daemon_fixture.h"
#include <sys/mount.h>

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;

class DiskFullTest : public DaemonTest {
 protected:
  void TearDown() override {
    if (daemon_ && daemon_->Running()) daemon_->Kill();
    if (!tablespace_.empty()) {
      (void)target_cluster_->Exec(target_db_, "DROP TABLE IF EXISTS items");
      (void)target_cluster_->Exec("postgres", absl::StrCat("DROP TABLESPACE IF EXISTS ", tablespace_));
    }
    if (!mount_.empty()) {
      umount2(mount_.c_str(), MNT_DETACH);
      rmdir(mount_.c_str());
    }
    DaemonTest::TearDown();
  }

  // Mounts a tmpfs of `megabytes` owned by the server's OS user; false (with the reason in
  // *why) where the test cannot.
  bool MountSmallDisk(int megabytes, std::string* why) {
    if (geteuid() != 0) {
      *why = "mounting a small filesystem needs root";
      return false;
    }
    char tmpl[] = "/tmp/walshift-disk-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      *why = absl::StrCat("mkdtemp: ", std::strerror(errno));
      return false;
    }
    std::string options = absl::StrCat("size=", megabytes, "m,mode=0700");
    if (mount("tmpfs", tmpl, "tmpfs", 0, options.c_str()) != 0) {
      *why = absl::StrCat("mount -t tmpfs: ", std::strerror(errno), " (needs CAP_SYS_ADMIN)");
      rmdir(tmpl);
      return false;
    }
    mount_ = tmpl;
    std::string user = PgCluster::ServerOsUser();
    if (passwd* pw = user.empty() ? nullptr : getpwnam(user.c_str()); pw != nullptr) {
      if (chown(tmpl, pw->pw_uid, pw->pw_gid) != 0) {
        *why = absl::StrCat("chown: ", std::strerror(errno));
        return false;
      }
    }
    return true;
  }

  // Writes a file on the small disk until it is full; returns the bytes written.
  size_t FillDisk() {
    std::string path = mount_ + "/filler";
    FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr) return 0;
    std::string block(64 * 1024, 'f');
    size_t written = 0;
    for (;;) {
      size_t n = std::fwrite(block.data(), 1, block.size(), f);
      written += n;
      if (n < block.size() || std::fflush(f) != 0) break;
    }
    std::fclose(f);
    return written;
  }

  std::string mount_, tablespace_;
};

TEST_F(DiskFullTest, TargetDiskFullRetriesWithBackoffAndResumesExactOnceSpaceIsBack) {
  std::string why;
  if (!MountSmallDisk(16, &why)) GTEST_SKIP() << "cannot make a small filesystem for the target: " << why;
  tablespace_ = "small_" + pipeline_;
  ASSERT_TRUE(
      target_cluster_->Exec("postgres", absl::StrCat("CREATE TABLESPACE ", tablespace_, " LOCATION '", mount_, "'"))
          .ok());
  Source("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL, payload text)");
  Target(absl::StrCat("CREATE TABLE items (id int, n int NOT NULL, payload text, PRIMARY KEY (id) USING INDEX ",
                      "TABLESPACE ", tablespace_, ") TABLESPACE ", tablespace_));
  std::string config = WriteConfig(absl::StrCat(
      kOneTarget, "apply: {reconnect_initial_ms: 200, reconnect_max_ms: 3200}\n", "mappings: [{source: items}]\n"));
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  int port = StatusPort();
  ASSERT_GT(port, 0);

  // New rows (the table must grow) and updates of existing ones.
  std::string script = dir_ + "/grow.sql";
  std::ofstream(script) << "\\set id random(1, 1000000)\n"
                           "INSERT INTO items VALUES (:id, 1, repeat(md5(:id::text), 8)) ON CONFLICT (id) DO "
                           "UPDATE SET n = items.n + 1;\n";
  // Throttled, so that the load still runs when the disk fills however fast the machine is; the
  // disk fills once the target has applied part of it (mid-stream, the table growing).
  auto workload = StartPgbench({"-c", "2", "-j", "2", "-t", "6000", "-R", "1000", "-f", script});
  ASSERT_NE(workload, nullptr);
  bool part_applied = false;
  for (int i = 0; i < 1200 && !part_applied; ++i) {
    PgRows applied = TargetRows("SELECT count(*) >= 1000 FROM items");
    part_applied = !applied.empty() && applied[0][0] == "t";
    if (!part_applied) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(part_applied) << "the target never had 1000 rows of the load\n" << DaemonLog();
  size_t filled = FillDisk();
  ASSERT_GT(filled, 0u);

  // The next extension of the table fails: walshiftd says so and retries.
  std::string status;
  for (int i = 0; i < 600 && status.find("53100") == std::string::npos; ++i) {
    ASSERT_TRUE(daemon_->Running()) << DaemonLog();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = Get(port, "/status");
  }
  ASSERT_THAT(status, HasSubstr("53100")) << status << "\n" << DaemonLog();
  EXPECT_THAT(status, HasSubstr("\"state\":\"RECONNECTING\""));
  EXPECT_THAT(status, HasSubstr("No space left on device"));
  EXPECT_THAT(status, HasSubstr("a disk is full"));
  // Retries, each waiting at least as long as the one before (until the ceiling).
  std::regex retry("SQLSTATE 53100\\).*retrying in ([0-9]+) ms from the last checkpoint \\(attempt ([0-9]+)");
  std::vector<int> waits, attempts;
  for (int i = 0; i < 300 && waits.size() < 6; ++i) {
    ASSERT_TRUE(daemon_->Running()) << "walshiftd exited on a full disk:\n" << DaemonLog();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    waits.clear();
    attempts.clear();
    std::string log = DaemonLog();
    for (std::sregex_iterator it(log.begin(), log.end(), retry), end; it != end; ++it) {
      waits.push_back(std::stoi((*it)[1]));
      attempts.push_back(std::stoi((*it)[2]));
    }
  }
  ASSERT_GE(waits.size(), 6u) << DaemonLog();
  // A group that still fits (free space inside the table's pages) commits and resets the
  // backoff, legitimately: only consecutive attempts of one failing run are compared.
  for (size_t i = 1; i < waits.size(); ++i) {
    if (attempts[i] != attempts[i - 1] + 1) continue;
    if (waits[i - 1] >= 1600) continue;  // the ceiling (3200 ms, times a jitter of 0.5..1)
    EXPECT_GE(waits[i], waits[i - 1]) << "attempt " << attempts[i] << " waited less than the one before";
  }
  std::string log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("items (target main) for source public.items at LSN "));
  EXPECT_THAT(log, HasSubstr("No space left on device"));
  status = Get(port, "/status");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(status, m, std::regex("\"retry_attempt\":([0-9]+)"))) << status;
  EXPECT_GE(std::stoi(m[1]), 3) << status;
  std::string metrics = Get(port, "/metrics");
  ASSERT_TRUE(std::regex_search(
      metrics, m, std::regex("walshift_errors_total\\{pipeline=\"[^\"]+\",kind=\"resources\"\\} ([0-9]+)")))
      << metrics;
  EXPECT_GE(std::stoi(m[1]), 3);
  EXPECT_THAT(metrics, ::testing::ContainsRegex("walshift_retry_attempt\\{pipeline=\"[^\"]+\"\\} [1-9]"));
  std::cerr << "disk full: " << filled << " bytes of filler, " << waits.size() << " retries seen, waits";
  for (int w : waits) std::cerr << " " << w;
  std::cerr << " ms\n";

  // Space is back: walshiftd goes on by itself.
  ASSERT_EQ(unlink((mount_ + "/filler").c_str()), 0);
  auto done = workload->Wait(absl::Seconds(240));
  ASSERT_TRUE(done.ok() && done->success()) << "pgbench failed:\n" << PgbenchLog();
  ASSERT_TRUE(WaitCaughtUp(absl::Seconds(180)).ok()) << DaemonLog();
  PgRows expected = SourceRows("SELECT id::text, n::text, payload FROM items ORDER BY id");
  EXPECT_GT(expected.size(), 5000u);
  PgRows actual = TargetRows("SELECT id::text, n::text, payload FROM items ORDER BY id");
  EXPECT_EQ(actual.size(), expected.size());
  EXPECT_TRUE(actual == expected) << "target differs from the source";
  status = Get(port, "/status");
  EXPECT_THAT(status, HasSubstr("\"state\":\"STREAMING\""));
  EXPECT_THAT(status, HasSubstr("\"retry_attempt\":0"));
  EXPECT_TRUE(StopDaemon().success());
}

}  // namespace
}  // namespace walshift::testing
