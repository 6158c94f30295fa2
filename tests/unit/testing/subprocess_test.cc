#include "tests/testing/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_cluster.h"
#include "tests/testing/test_paths.h"
#include <sys/wait.h>

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;

SubprocessOptions Sh(const std::string& script) {
  SubprocessOptions o;
  o.argv = {"/bin/sh", "-c", script};
  return o;
}

TEST(SubprocessTest, RunCapturesOutputAndExitCode) {
  absl::StatusOr<RunResult> r = Subprocess::Run(Sh("echo out; echo err >&2; exit 3"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->status.exited());
  EXPECT_EQ(r->status.exit_code(), 3);
  EXPECT_FALSE(r->status.success());
  EXPECT_EQ(r->stdout_text, "out\n");
  EXPECT_EQ(r->stderr_text, "err\n");
}

TEST(SubprocessTest, StdinDataReachesChild) {
  SubprocessOptions o;
  o.argv = {"cat"};
  o.stdin_data = "line one\nline two\n";
  absl::StatusOr<RunResult> r = Subprocess::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->status.success());
  EXPECT_EQ(r->stdout_text, "line one\nline two\n");
}

TEST(SubprocessTest, DefaultStdinIsEmpty) {
  SubprocessOptions o;
  o.argv = {"cat"};
  absl::StatusOr<RunResult> r = Subprocess::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->status.success());
  EXPECT_EQ(r->stdout_text, "");
}

TEST(SubprocessTest, EnvironmentSetAndUnset) {
  setenv("WALSHIFT_SUBPROCESS_TEST_INHERITED", "inherited", 1);
  setenv("WALSHIFT_SUBPROCESS_TEST_REMOVED", "removed", 1);
  SubprocessOptions o =
      Sh("echo \"$WALSHIFT_SUBPROCESS_TEST_INHERITED/${WALSHIFT_SUBPROCESS_TEST_REMOVED:-unset}/"
         "$WALSHIFT_SUBPROCESS_TEST_SET\"");
  o.env_unset = {"WALSHIFT_SUBPROCESS_TEST_REMOVED"};
  o.env["WALSHIFT_SUBPROCESS_TEST_SET"] = "set value";
  absl::StatusOr<RunResult> r = Subprocess::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_text, "inherited/unset/set value\n");

  o.inherit_env = false;
  o.argv = {"/usr/bin/env"};
  r = Subprocess::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_text, "WALSHIFT_SUBPROCESS_TEST_SET=set value\n");
}

TEST(SubprocessTest, WorkingDirectory) {
  absl::StatusOr<TempDir> dir = TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  SubprocessOptions o;
  o.argv = {"pwd"};
  o.cwd = dir->path();
  absl::StatusOr<RunResult> r = Subprocess::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_text, dir->path() + "\n");
}

TEST(SubprocessTest, OutputToFile) {
  absl::StatusOr<TempDir> dir = TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  SubprocessOptions o = Sh("echo one; echo two >&2");
  o.stdout_to = Output::File(dir->Join("out.txt"));
  o.stderr_to = Output::File(dir->Join("out.txt"), /*append=*/true);
  absl::StatusOr<RunResult> r = Subprocess::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_text, "");
  absl::StatusOr<std::string> text = ReadFile(dir->Join("out.txt"));
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "one\ntwo\n");
}

TEST(SubprocessTest, MissingProgramIsNotFound) {
  SubprocessOptions o;
  o.argv = {"walshift-no-such-program-xyz"};
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(o);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound) << p.status();
  o.argv = {};
  EXPECT_EQ(Subprocess::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SubprocessTest, ExecFailureIsReportedNotExitCode127) {
  absl::StatusOr<TempDir> dir = TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  SubprocessOptions o;
  o.argv = {"/bin/true"};
  o.cwd = dir->Join("does-not-exist");
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(o);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInternal) << p.status();
  EXPECT_THAT(std::string(p.status().message()), HasSubstr("chdir"));
}

TEST(SubprocessTest, WaitTimesOutThenKill) {
  SubprocessOptions o;
  o.argv = {"sleep", "60"};
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE((*p)->Running());
  absl::StatusOr<ExitStatus> w = (*p)->Wait(absl::Milliseconds(50));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kDeadlineExceeded) << w.status();
  ExitStatus killed = (*p)->Kill();
  EXPECT_TRUE(killed.signaled());
  EXPECT_EQ(killed.term_signal(), SIGKILL);
  EXPECT_FALSE((*p)->Running());
  // Waiting again returns the same status; signalling a reaped child is a no-op.
  w = (*p)->Wait(absl::Milliseconds(1));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->term_signal(), SIGKILL);
  EXPECT_TRUE((*p)->Signal(SIGTERM).ok());
}

TEST(SubprocessTest, SignalTerminates) {
  SubprocessOptions o;
  o.argv = {"sleep", "60"};
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(o);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE((*p)->Signal(SIGTERM).ok());
  absl::StatusOr<ExitStatus> w = (*p)->Wait(absl::Seconds(30));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(w->signaled());
  EXPECT_EQ(w->term_signal(), SIGTERM);
  EXPECT_THAT(w->ToString(), HasSubstr("signal 15"));
}

TEST(SubprocessTest, RunTimeoutKillsChild) {
  SubprocessOptions o = Sh("echo started; exec sleep 60");
  absl::StatusOr<RunResult> r = Subprocess::Run(o, absl::Milliseconds(200));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
}

TEST(SubprocessTest, WaitForStdoutLine) {
  absl::StatusOr<std::unique_ptr<Subprocess>> p =
      Subprocess::Start(Sh("printf 'first line\\nsecond\\n'; exec sleep 60"));
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<std::string> line = (*p)->WaitForStdoutLine(absl::Seconds(30));
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(*line, "first line");
  absl::StatusOr<std::string> all = (*p)->WaitForOutput(Subprocess::Stream::kStdout, "second", absl::Seconds(30));
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(*all, "first line\nsecond\n");
}

TEST(SubprocessTest, WaitForOutputFailsWhenChildExitsFirst) {
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(Sh("echo boom >&2; exit 4"));
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<std::string> line = (*p)->WaitForStdoutLine(absl::Seconds(30));
  EXPECT_EQ(line.status().code(), absl::StatusCode::kFailedPrecondition) << line.status();
  EXPECT_THAT(std::string(line.status().message()), HasSubstr("exit code 4"));
  EXPECT_THAT(std::string(line.status().message()), HasSubstr("boom"));
}

TEST(SubprocessTest, DescriptorsDoNotLeakIntoChild) {
  int opened = open("/dev/null", O_RDONLY);
  ASSERT_GE(opened, 0);
  int fd = fcntl(opened, F_DUPFD, 10);  // Deliberately without FD_CLOEXEC.
  close(opened);
  ASSERT_GE(fd, 10);
  absl::StatusOr<RunResult> r =
      Subprocess::Run(Sh(absl::StrCat("[ -e /proc/self/fd/", fd, " ] && echo leaked || echo ok")));
  close(fd);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_text, "ok\n");
}

TEST(SubprocessTest, KillReachesProcessGroup) {
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(Sh("sleep 60 & echo $!; wait"));
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<std::string> line = (*p)->WaitForStdoutLine(absl::Seconds(30));
  ASSERT_TRUE(line.ok()) << line.status();
  pid_t grandchild = std::stoi(*line);
  (*p)->Kill();
  // The grandchild was in the group; once killed it is reaped by init (or is a zombie).
  bool gone = false;
  for (int i = 0; i < 3000 && !gone; ++i) {
    absl::StatusOr<std::string> stat = ReadFile(absl::StrCat("/proc/", grandchild, "/stat"));
    gone = !stat.ok() || stat->find(") Z") != std::string::npos;
    if (!gone) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(gone);
}

// A process that dies without destroying its Subprocess takes the child with it.
TEST(SubprocessTest, ChildDiesWithParentProcess) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t middle = fork();
  ASSERT_GE(middle, 0);
  if (middle == 0) {
    close(fds[0]);
    SubprocessOptions o;
    o.argv = {"sleep", "60"};
    o.stdout_to = Output::Null();  // No capture files: nothing would remove them.
    o.stderr_to = Output::Null();
    absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(o);
    std::string msg = p.ok() ? absl::StrCat((*p)->pid(), "\n") : std::string("error\n");
    ssize_t unused = write(fds[1], msg.data(), msg.size());
    (void)unused;
    _exit(0);  // No destructors: the Subprocess is leaked.
  }
  close(fds[1]);
  char buf[64];
  ssize_t n = read(fds[0], buf, sizeof(buf) - 1);
  close(fds[0]);
  ASSERT_GT(n, 0);
  int status = 0;
  waitpid(middle, &status, 0);
  int child = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(std::string(buf, n)), &child)) << std::string(buf, n);
  bool gone = false;
  for (int i = 0; i < 3000 && !gone; ++i) {
    absl::StatusOr<std::string> stat = ReadFile(absl::StrCat("/proc/", child, "/stat"));
    gone = !stat.ok() || stat->find(") Z") != std::string::npos;
    if (!gone) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(gone);
}

TEST(SubprocessTest, RunsAsUnprivilegedUserWhenRoot) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  std::string user = PgCluster::ServerOsUser();
  SubprocessOptions o;
  o.argv = {"id", "-un"};
  o.user = user;
  o.cwd = "/";
  absl::StatusOr<RunResult> r = Subprocess::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_text, user + "\n");
  o.argv = {"id", "-u"};
  r = Subprocess::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(r->stdout_text, "0\n");
}

TEST(SubprocessTest, FindProgram) {
  EXPECT_TRUE(FindProgram("sh").has_value());
  EXPECT_FALSE(FindProgram("walshift-no-such-program-xyz").has_value());
}

}  // namespace
}  // namespace walshift::testing
