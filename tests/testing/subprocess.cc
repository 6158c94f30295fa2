#include "tests/testing/subprocess.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tests/testing/test_paths.h"
#include <linux/close_range.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

extern char** environ;

namespace walshift::testing {
namespace {

// What the child reports through the exec-error pipe before _exit(127).
struct ChildError {
  int stage;
  int err;
};
enum Stage { kStageDup = 1, kStageChdir, kStageGroups, kStageGid, kStageUid, kStageExec };

const char* StageName(int stage) {
  switch (stage) {
    case kStageDup:
      return "redirecting stdio";
    case kStageChdir:
      return "chdir";
    case kStageGroups:
      return "setgroups";
    case kStageGid:
      return "setgid";
    case kStageUid:
      return "setuid";
    case kStageExec:
      return "execve";
    default:
      return "child setup";
  }
}

bool IsExecutableFile(const std::string& path) {
  return access(path.c_str(), X_OK) == 0 && access(path.c_str(), F_OK) == 0;
}

std::optional<std::string> SearchPath(absl::string_view program, absl::string_view path_var) {
  if (program.find('/') != absl::string_view::npos) {
    std::string p(program);
    if (IsExecutableFile(p)) return p;
    return std::nullopt;
  }
  for (absl::string_view dir : absl::StrSplit(path_var, ':')) {
    if (dir.empty()) dir = ".";
    std::string candidate = absl::StrCat(dir, "/", program);
    if (IsExecutableFile(candidate)) return candidate;
  }
  return std::nullopt;
}

std::string Describe(const std::vector<std::string>& argv) {
  std::vector<std::string> parts;
  for (const std::string& a : argv) {
    if (a.empty() || a.find_first_of(" \t'\"") != std::string::npos) {
      parts.push_back(absl::StrCat("'", a, "'"));
    } else {
      parts.push_back(a);
    }
  }
  return absl::StrJoin(parts, " ");
}

// A capture file: created with mkostemp under TempRoot(), returns (fd, path).
absl::StatusOr<std::pair<int, std::string>> MakeTempFile(absl::string_view suffix) {
  std::string templ = absl::StrCat(TempRoot(), "/walshift-proc-XXXXXX", suffix);
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  int fd = mkostemps(buf.data(), static_cast<int>(suffix.size()), O_CLOEXEC);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("mkostemps(", templ, "): ", strerror(errno)));
  }
  return std::make_pair(fd, std::string(buf.data()));
}

// Moves `fd` above the stdio range (a parent started with a closed stdin/stdout would otherwise
// hand out 0..2, and dup2 onto the same number would keep FD_CLOEXEC). Keeps -1 as -1.
int AboveStdio(int fd) {
  if (fd < 0 || fd > 2) return fd;
  int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  close(fd);
  return moved;
}

// Closes fds on scope exit.
struct FdList {
  std::vector<int> fds;
  ~FdList() {
    for (int fd : fds) {
      if (fd >= 0) close(fd);
    }
  }
};

absl::Status OpenOutput(const Output& out, absl::string_view suffix, int* fd, std::string* capture, FdList* owned) {
  *fd = -1;
  switch (out.kind) {
    case Output::Kind::kInherit:
      return absl::OkStatus();
    case Output::Kind::kNull:
      *fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
      break;
    case Output::Kind::kFile:
      *fd = open(out.path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (out.append ? O_APPEND : O_TRUNC), 0644);
      break;
    case Output::Kind::kCapture: {
      absl::StatusOr<std::pair<int, std::string>> f = MakeTempFile(suffix);
      if (!f.ok()) return f.status();
      *fd = f->first;
      *capture = f->second;
      break;
    }
  }
  *fd = AboveStdio(*fd);
  if (*fd < 0) {
    return absl::InternalError(absl::StrCat("cannot open output ", out.path, ": ", strerror(errno)));
  }
  owned->fds.push_back(*fd);
  return absl::OkStatus();
}

// Reads a file, empty on any error (capture files that are gone read as empty).
std::string ReadOrEmpty(const std::string& path) {
  absl::StatusOr<std::string> s = ReadFile(path);
  return s.ok() ? *std::move(s) : std::string();
}

}  // namespace

bool ExitStatus::exited() const { return WIFEXITED(raw); }
int ExitStatus::exit_code() const { return WEXITSTATUS(raw); }
bool ExitStatus::signaled() const { return WIFSIGNALED(raw); }
int ExitStatus::term_signal() const { return WTERMSIG(raw); }

std::string ExitStatus::ToString() const {
  if (exited()) return absl::StrCat("exit code ", exit_code());
  if (signaled()) {
    return absl::StrCat("killed by signal ", term_signal(), " (", strsignal(term_signal()), ")");
  }
  return absl::StrCat("wait status ", raw);
}

std::optional<std::string> FindProgram(absl::string_view program) {
  const char* path = getenv("PATH");
  return SearchPath(program, path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
}

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(SubprocessOptions options) {
  if (options.argv.empty()) return absl::InvalidArgumentError("Subprocess: empty argv");
  std::unique_ptr<Subprocess> proc(new Subprocess());
  proc->description_ = Describe(options.argv);

  // Environment.
  std::map<std::string, std::string> env;
  if (options.inherit_env) {
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
      absl::string_view kv(*e);
      size_t eq = kv.find('=');
      if (eq == absl::string_view::npos) continue;
      env[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
    }
  }
  for (const std::string& name : options.env_unset) env.erase(name);

  // User.
  bool switch_user = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
  if (options.user.has_value()) {
    std::vector<char> buf(16384);
    struct passwd pw;
    struct passwd* found = nullptr;
    int rc = getpwnam_r(options.user->c_str(), &pw, buf.data(), buf.size(), &found);
    if (rc != 0 || found == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("Subprocess: no such user ", *options.user));
    }
    uid = pw.pw_uid;
    gid = pw.pw_gid;
    if (uid != geteuid()) {
      if (geteuid() != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("Subprocess: cannot run as ", *options.user, " without root privileges"));
      }
      switch_user = true;
      int ngroups = 64;
      groups.resize(ngroups);
      if (getgrouplist(pw.pw_name, gid, groups.data(), &ngroups) < 0) {
        groups.resize(ngroups);
        getgrouplist(pw.pw_name, gid, groups.data(), &ngroups);
      }
      groups.resize(std::max(ngroups, 0));
    }
    env.try_emplace("HOME", pw.pw_dir);
    env["USER"] = pw.pw_name;
    env["LOGNAME"] = pw.pw_name;
  }
  for (const auto& [k, v] : options.env) env[k] = v;

  // Program.
  std::string program = options.argv[0];
  if (program.find('/') != std::string::npos && program[0] != '/') {
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) != nullptr) program = absl::StrCat(cwd, "/", program);
  }
  auto path_it = env.find("PATH");
  std::optional<std::string> resolved =
      SearchPath(program, path_it != env.end() ? path_it->second : "/usr/local/bin:/usr/bin:/bin");
  if (!resolved.has_value()) {
    return absl::NotFoundError(absl::StrCat("Subprocess: program not found: ", options.argv[0]));
  }

  // Everything the child needs, prepared before fork (the child only makes async-signal-safe
  // calls).
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env) env_strings.push_back(absl::StrCat(k, "=", v));
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<char*> argv;
  for (std::string& s : options.argv) argv.push_back(s.data());
  argv.push_back(nullptr);

  FdList owned;
  int in_fd = -1;
  if (options.stdin_fd >= 0) {
    in_fd = fcntl(options.stdin_fd, F_DUPFD_CLOEXEC, 3);
  } else if (options.stdin_data.has_value()) {
    absl::StatusOr<std::pair<int, std::string>> f = MakeTempFile(".in");
    if (!f.ok()) return f.status();
    owned.fds.push_back(f->first);
    proc->stdin_file_ = f->second;
    absl::Status st = WriteFile(f->second, *options.stdin_data);
    if (!st.ok()) return st;
    in_fd = open(f->second.c_str(), O_RDONLY | O_CLOEXEC);
  } else {
    in_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  }
  in_fd = AboveStdio(in_fd);
  if (in_fd < 0) return absl::InternalError(absl::StrCat("cannot open stdin: ", strerror(errno)));
  owned.fds.push_back(in_fd);
  int out_fd = -1;
  int err_fd = -1;
  absl::Status st = OpenOutput(options.stdout_to, ".out", &out_fd, &proc->stdout_capture_, &owned);
  if (!st.ok()) return st;
  st = OpenOutput(options.stderr_to, ".err", &err_fd, &proc->stderr_capture_, &owned);
  if (!st.ok()) return st;

  int err_pipe[2];
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", strerror(errno)));
  }
  err_pipe[0] = AboveStdio(err_pipe[0]);
  err_pipe[1] = AboveStdio(err_pipe[1]);
  if (err_pipe[0] < 0 || err_pipe[1] < 0) {
    if (err_pipe[0] >= 0) close(err_pipe[0]);
    if (err_pipe[1] >= 0) close(err_pipe[1]);
    return absl::InternalError("Subprocess: cannot move the exec-error pipe above stdio");
  }
  struct rlimit rl;
  int max_fd = 65536;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    max_fd = static_cast<int>(std::min<rlim_t>(rl.rlim_cur, 1 << 20));
  }
  const char* cwd = options.cwd.empty() ? nullptr : options.cwd.c_str();
  const bool new_group = options.new_process_group;
  const bool pdeathsig = options.kill_on_parent_death;
  const pid_t parent = getpid();
  const char* exe = resolved->c_str();

  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(err_pipe[0]);
    close(err_pipe[1]);
    return absl::InternalError(absl::StrCat("fork: ", strerror(e)));
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only.
    auto fail = [&](int stage) {
      ChildError ce{stage, errno};
      ssize_t unused = write(err_pipe[1], &ce, sizeof(ce));
      (void)unused;
      _exit(127);
    };
    if (new_group) setpgid(0, 0);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, nullptr);
    if (dup2(in_fd, 0) < 0) fail(kStageDup);
    if (out_fd >= 0 && dup2(out_fd, 1) < 0) fail(kStageDup);
    if (err_fd >= 0 && dup2(err_fd, 2) < 0) fail(kStageDup);
    // Nothing else leaks into the child (the PgCluster watchdog relies on it).
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
      for (int fd = 3; fd < max_fd; ++fd) {
        if (fd != err_pipe[1]) fcntl(fd, F_SETFD, FD_CLOEXEC);
      }
    }
    if (cwd != nullptr && chdir(cwd) != 0) fail(kStageChdir);
    if (switch_user) {
      if (setgroups(groups.size(), groups.data()) != 0) fail(kStageGroups);
      if (setgid(gid) != 0) fail(kStageGid);
      if (setuid(uid) != 0) fail(kStageUid);
    }
    // After setuid, which clears the setting. The parent may already be gone.
    if (pdeathsig) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
    }
    execve(exe, argv.data(), envp.data());
    fail(kStageExec);
  }

  // Parent.
  if (new_group) setpgid(pid, pid);  // Also done by the child; whichever runs first wins.
  close(err_pipe[1]);
  proc->pid_ = pid;
  proc->own_group_ = new_group;
  ChildError ce{0, 0};
  ssize_t n;
  do {
    n = read(err_pipe[0], &ce, sizeof(ce));
  } while (n < 0 && errno == EINTR);
  close(err_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof(ce))) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    proc->exit_ = ExitStatus{status};
    return absl::InternalError(
        absl::StrCat("Subprocess ", proc->description_, ": ", StageName(ce.stage), " failed: ", strerror(ce.err)));
  }
  return proc;
}

absl::StatusOr<RunResult> Subprocess::Run(SubprocessOptions options, absl::Duration timeout) {
  absl::StatusOr<std::unique_ptr<Subprocess>> proc = Start(std::move(options));
  if (!proc.ok()) return proc.status();
  absl::StatusOr<ExitStatus> status = (*proc)->Wait(timeout);
  if (!status.ok()) {
    (*proc)->Kill();
    return absl::DeadlineExceededError(absl::StrCat((*proc)->description(), " did not finish within ",
                                                    absl::FormatDuration(timeout),
                                                    "; stdout: ", (*proc)->CaptureTail(Stream::kStdout, 2000),
                                                    "; stderr: ", (*proc)->CaptureTail(Stream::kStderr, 2000)));
  }
  RunResult result;
  result.status = *status;
  if (!(*proc)->stdout_capture_.empty()) result.stdout_text = ReadOrEmpty((*proc)->stdout_capture_);
  if (!(*proc)->stderr_capture_.empty()) result.stderr_text = ReadOrEmpty((*proc)->stderr_capture_);
  return result;
}

Subprocess::~Subprocess() {
  if (pid_ > 0 && !exit_.has_value()) Kill();
  for (const std::string* path : {&stdout_capture_, &stderr_capture_, &stdin_file_}) {
    if (!path->empty()) unlink(path->c_str());
  }
}

absl::Status Subprocess::Signal(int sig) {
  if (pid_ <= 0 || exit_.has_value()) return absl::OkStatus();
  if (kill(pid_, sig) != 0 && errno != ESRCH) {
    return absl::InternalError(absl::StrCat("kill(", pid_, ", ", sig, "): ", strerror(errno)));
  }
  return absl::OkStatus();
}

bool Subprocess::Running() {
  if (pid_ <= 0 || exit_.has_value()) return false;
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_ = ExitStatus{status};
    return false;
  }
  return true;
}

absl::StatusOr<ExitStatus> Subprocess::Wait(absl::Duration timeout) {
  if (exit_.has_value()) return *exit_;
  if (pid_ <= 0) return absl::FailedPreconditionError("Subprocess was not started");
  if (timeout == absl::InfiniteDuration()) {
    int status = 0;
    pid_t r;
    do {
      r = waitpid(pid_, &status, 0);
    } while (r < 0 && errno == EINTR);
    if (r != pid_) return absl::InternalError(absl::StrCat("waitpid: ", strerror(errno)));
    exit_ = ExitStatus{status};
    return *exit_;
  }
  absl::Time deadline = absl::Now() + timeout;
  absl::Duration pause = absl::Milliseconds(1);
  while (true) {
    if (!Running()) return *exit_;
    absl::Time now = absl::Now();
    if (now >= deadline) break;
    absl::SleepFor(std::min(pause, deadline - now));
    pause = std::min(pause * 2, absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(
      absl::StrCat(description_, " (pid ", pid_, ") still running after ", absl::FormatDuration(timeout)));
}

ExitStatus Subprocess::Kill() {
  if (exit_.has_value()) return *exit_;
  if (pid_ <= 0) return ExitStatus{};
  // The unreaped child keeps its pid (and so its group id) from being reused.
  if (own_group_) kill(-pid_, SIGKILL);
  kill(pid_, SIGKILL);
  absl::StatusOr<ExitStatus> st = Wait();
  return st.ok() ? *st : ExitStatus{};
}

absl::StatusOr<std::string> Subprocess::ReadOutput(Stream stream) const {
  const std::string& path = stream == Stream::kStdout ? stdout_capture_ : stderr_capture_;
  if (path.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(description_, ": ", stream == Stream::kStdout ? "stdout" : "stderr", " is not captured"));
  }
  return ReadFile(path);
}

std::string Subprocess::CaptureTail(Stream stream, size_t max_bytes) const {
  absl::StatusOr<std::string> text = ReadOutput(stream);
  if (!text.ok()) return "(not captured)";
  if (text->size() <= max_bytes) return *text;
  return absl::StrCat("...", text->substr(text->size() - max_bytes));
}

absl::StatusOr<std::string> Subprocess::WaitForOutput(Stream stream, absl::string_view needle, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  absl::Duration pause = absl::Milliseconds(1);
  while (true) {
    bool running = Running();
    absl::StatusOr<std::string> text = ReadOutput(stream);
    if (!text.ok()) return text.status();
    if (absl::StrContains(*text, needle)) return text;
    if (!running) {
      return absl::FailedPreconditionError(absl::StrCat(description_, " exited (", exit_->ToString(),
                                                        ") before printing \"", needle,
                                                        "\"; stderr: ", CaptureTail(Stream::kStderr, 2000)));
    }
    absl::Time now = absl::Now();
    if (now >= deadline) break;
    absl::SleepFor(std::min(pause, deadline - now));
    pause = std::min(pause * 2, absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat(description_, " did not print \"", needle, "\" within ",
                                                  absl::FormatDuration(timeout),
                                                  "; stderr: ", CaptureTail(Stream::kStderr, 2000)));
}

absl::StatusOr<std::string> Subprocess::WaitForStdoutLine(absl::Duration timeout) {
  absl::StatusOr<std::string> text = WaitForOutput(Stream::kStdout, "\n", timeout);
  if (!text.ok()) return text.status();
  return text->substr(0, text->find('\n'));
}

}  // namespace walshift::testing
