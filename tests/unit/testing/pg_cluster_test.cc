#include "tests/testing/pg_cluster.h"

#include <signal.h>
#include <unistd.h>

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_paths.h"
#include <sys/stat.h>
#include <sys/wait.h>

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<PgCluster> MustStart(std::string name) {
  PgClusterOptions options;
  options.name = std::move(name);
  absl::StatusOr<std::unique_ptr<PgCluster>> c = PgCluster::Start(options);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// The postmaster pid from postmaster.pid; 0 when absent.
pid_t PostmasterPid(const PgCluster& c) {
  absl::StatusOr<std::string> f = ReadFile(c.data_dir() + "/postmaster.pid");
  if (!f.ok()) return 0;
  int pid = 0;
  if (!absl::SimpleAtoi(f->substr(0, f->find('\n')), &pid)) return 0;
  return pid;
}

// True while `pid` exists and is not a zombie.
bool ProcessAlive(pid_t pid) {
  absl::StatusOr<std::string> stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  if (!stat.ok()) return false;
  size_t paren = stat->rfind(')');
  return paren == std::string::npos || paren + 2 >= stat->size() ||
         ((*stat)[paren + 2] != 'Z' && (*stat)[paren + 2] != 'X');
}

bool PathExists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

TEST(PgClusterTest, TwoClustersCreateInsertQuery) {
  std::unique_ptr<PgCluster> source = MustStart("source");
  std::unique_ptr<PgCluster> target = MustStart("target");
  ASSERT_NE(source, nullptr);
  ASSERT_NE(target, nullptr);
  EXPECT_NE(source->port(), target->port());
  EXPECT_NE(source->temp_dir(), target->temp_dir());

  for (PgCluster* c : {source.get(), target.get()}) {
    ASSERT_TRUE(c->CreateDatabase("app").ok());
    ASSERT_TRUE(c->Exec("app", "CREATE TABLE t (id int PRIMARY KEY, name text)").ok());
  }
  ASSERT_TRUE(source->Exec("app", "INSERT INTO t VALUES (1, 'one'), (2, NULL)").ok());
  ASSERT_TRUE(target->Exec("app", "INSERT INTO t VALUES (7, 'seven')").ok());

  absl::StatusOr<PgRows> rows = source->Query("app", "SELECT id, name FROM t ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0], (PgRow{"1", "one"}));
  EXPECT_EQ((*rows)[1], (PgRow{"2", std::nullopt}));
  EXPECT_EQ((*rows)[1][1], std::nullopt);  // NULL is not the empty string.

  rows = target->Query("app", "SELECT id, name FROM t ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0], (PgRow{"7", "seven"}));

  absl::StatusOr<std::string> count = source->QueryValue("app", "SELECT count(*) FROM t");
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, "2");
  EXPECT_EQ(source->QueryValue("app", "SELECT NULL").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(source->QueryValue("app", "SELECT 1, 2").status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(PgClusterTest, ServerSettingsForLogicalDecoding) {
  std::unique_ptr<PgCluster> c = MustStart("settings");
  ASSERT_NE(c, nullptr);
  auto show = [&](const char* name) {
    absl::StatusOr<std::string> v = c->QueryValue("postgres", absl::StrCat("SHOW ", name));
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : std::string();
  };
  EXPECT_EQ(show("wal_level"), "logical");
  EXPECT_EQ(show("max_replication_slots"), "20");
  EXPECT_EQ(show("max_wal_senders"), "20");
  EXPECT_EQ(show("fsync"), "on");
  EXPECT_EQ(show("synchronous_commit"), "on");
  EXPECT_EQ(show("shared_buffers"), "128MB");
  EXPECT_EQ(show("max_connections"), "100");
  EXPECT_EQ(show("server_encoding"), "UTF8");
  EXPECT_EQ(show("TimeZone"), "UTC");
  EXPECT_EQ(show("unix_socket_directories"), c->temp_dir());
  absl::StatusOr<std::string> super =
      c->QueryValue("postgres", "SELECT rolsuper FROM pg_roles WHERE rolname = current_user");
  ASSERT_TRUE(super.ok()) << super.status();
  EXPECT_EQ(*super, "t");
  EXPECT_EQ(c->user(), "walshift");
  EXPECT_THAT(c->Dsn("app"), HasSubstr(absl::StrCat("port=", c->port())));
  EXPECT_THAT(c->Dsn("app"), HasSubstr("dbname=app"));
  EXPECT_THAT(c->Dsn("app"), HasSubstr("user=walshift"));
  // A logical slot with pgoutput can be created (wal_level=logical really took effect).
  EXPECT_TRUE(c->Exec("postgres", "SELECT pg_create_logical_replication_slot('s1', 'pgoutput')").ok());
}

TEST(PgClusterTest, ExtraConfigLinesApply) {
  PgClusterOptions options;
  options.name = "extra";
  options.extra_conf = {"work_mem = '7MB'", "application_name = 'from_conf'"};
  absl::StatusOr<std::unique_ptr<PgCluster>> c = PgCluster::Start(options);
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<std::string> v = (*c)->QueryValue("postgres", "SHOW work_mem");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, "7MB");
}

TEST(PgClusterTest, PostmasterDoesNotRunAsRoot) {
  std::unique_ptr<PgCluster> c = MustStart("user");
  ASSERT_NE(c, nullptr);
  pid_t pid = PostmasterPid(*c);
  ASSERT_GT(pid, 0);
  struct stat st;
  ASSERT_EQ(stat(absl::StrCat("/proc/", pid).c_str(), &st), 0);
  EXPECT_NE(st.st_uid, 0u);
  if (geteuid() != 0) {
    EXPECT_EQ(st.st_uid, geteuid());
  }
  // The data dir belongs to the server's user too.
  ASSERT_EQ(stat(c->data_dir().c_str(), &st), 0);
  EXPECT_NE(st.st_uid, 0u);
}

TEST(PgClusterTest, ErrorsCarryTheRetryCode) {
  std::unique_ptr<PgCluster> c = MustStart("errors");
  ASSERT_NE(c, nullptr);
  absl::Status st = c->Exec("postgres", "SELEC 1");
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("42601"));
  st = c->Exec("no_such_db", "SELECT 1");
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  ASSERT_TRUE(c->CreateDatabase("dup").ok());
  EXPECT_FALSE(c->CreateDatabase("dup").ok());
}

TEST(PgClusterTest, StopAndRestartKeepCommittedData) {
  std::unique_ptr<PgCluster> c = MustStart("restart");
  ASSERT_NE(c, nullptr);
  int port = c->port();
  ASSERT_TRUE(c->Exec("postgres", "CREATE TABLE t (v int); INSERT INTO t VALUES (42)").ok());
  ASSERT_TRUE(c->Stop(PgCluster::StopMode::kImmediate).ok());
  EXPECT_FALSE(c->running());
  EXPECT_EQ(c->Exec("postgres", "SELECT 1").code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(c->Stop().ok());  // Already stopped: fine.
  ASSERT_TRUE(c->Restart().ok()) << c->LogTail();
  EXPECT_TRUE(c->running());
  EXPECT_EQ(c->port(), port);
  absl::StatusOr<std::string> v = c->QueryValue("postgres", "SELECT v FROM t");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, "42");
  ASSERT_TRUE(c->Stop(PgCluster::StopMode::kFast).ok());
  ASSERT_TRUE(c->Restart().ok()) << c->LogTail();
  EXPECT_THAT(c->LogTail(), HasSubstr("database system is ready to accept connections"));
}

TEST(PgClusterTest, DestructorStopsServerAndRemovesTempDir) {
  std::unique_ptr<PgCluster> c = MustStart("dtor");
  ASSERT_NE(c, nullptr);
  std::string dir = c->temp_dir();
  pid_t pid = PostmasterPid(*c);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(PathExists(dir));
  ASSERT_TRUE(ProcessAlive(pid));
  c.reset();
  EXPECT_FALSE(PathExists(dir));
  EXPECT_FALSE(ProcessAlive(pid));
}

// A test process that dies without running destructors leaves no server and no temp dir: the
// watchdog cleans up.
TEST(PgClusterTest, WatchdogCleansUpAfterTestProcessIsKilled) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(fds[0]);
    PgClusterOptions options;
    options.name = "orphan";
    absl::StatusOr<std::unique_ptr<PgCluster>> c = PgCluster::Start(options);
    std::string msg = c.ok() ? absl::StrCat((*c)->temp_dir(), " ", PostmasterPid(**c), "\n") : std::string("error\n");
    ssize_t unused = write(fds[1], msg.data(), msg.size());
    (void)unused;
    pause();
    _exit(0);
  }
  close(fds[1]);
  std::string msg;
  char buf[512];
  ssize_t n;
  while (msg.find('\n') == std::string::npos && (n = read(fds[0], buf, sizeof(buf))) > 0) {
    msg.append(buf, n);
  }
  close(fds[0]);
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_NE(msg, "error\n");
  size_t space = msg.find(' ');
  ASSERT_NE(space, std::string::npos) << msg;
  std::string dir = msg.substr(0, space);
  int pid = 0;
  ASSERT_TRUE(absl::SimpleAtoi(msg.substr(space + 1, msg.find('\n') - space - 1), &pid)) << msg;
  ASSERT_GT(pid, 0);

  bool clean = false;
  for (int i = 0; i < 3000 && !clean; ++i) {  // Up to 30 s.
    clean = !PathExists(dir) && !ProcessAlive(pid);
    if (!clean) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_FALSE(ProcessAlive(pid));
  EXPECT_FALSE(PathExists(dir));
}

TEST(PgClusterTest, StartFromSeveralThreadsAtOnce) {
  constexpr int kClusters = 3;
  std::vector<absl::StatusOr<std::unique_ptr<PgCluster>>> clusters(kClusters);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClusters; ++i) {
    threads.emplace_back([&clusters, i] {
      PgClusterOptions options;
      options.name = absl::StrCat("parallel", i);
      clusters[i] = PgCluster::Start(options);
    });
  }
  for (std::thread& t : threads) t.join();
  std::set<int> ports;
  for (auto& c : clusters) {
    ASSERT_TRUE(c.ok()) << c.status();
    ports.insert((*c)->port());
    absl::StatusOr<std::string> v = (*c)->QueryValue("postgres", "SELECT 40 + 2");
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(*v, "42");
  }
  EXPECT_EQ(ports.size(), static_cast<size_t>(kClusters));
}

TEST(PgClusterTest, BinariesAreFound) {
  absl::StatusOr<std::string> bindir = PgCluster::BinDir();
  ASSERT_TRUE(bindir.ok()) << bindir.status();
  absl::StatusOr<std::string> psql = PgCluster::Binary("psql");
  ASSERT_TRUE(psql.ok());
  EXPECT_TRUE(PathExists(*psql));
  EXPECT_FALSE(PgCluster::ServerOsUser().empty());
  if (geteuid() == 0) {
    EXPECT_NE(PgCluster::ServerOsUser(), "root");
  }
}

}  // namespace
}  // namespace walshift::testing
