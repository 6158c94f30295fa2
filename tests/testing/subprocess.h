#pragma once
// Child processes for tests: fork/exec with arguments, environment, redirected or captured
// output, an optional unprivileged user, signals, and waiting with a timeout.

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include <sys/types.h>

namespace walshift::testing {

// Where a child's stdout or stderr goes.
struct Output {
  enum class Kind { kInherit, kNull, kFile, kCapture };
  Kind kind = Kind::kCapture;
  std::string path;     // kFile only.
  bool append = false;  // kFile only.

  static Output Inherit() { return {Kind::kInherit, "", false}; }
  static Output Null() { return {Kind::kNull, "", false}; }
  static Output File(std::string path, bool append = false) { return {Kind::kFile, std::move(path), append}; }
  // Into a temp file owned by the Subprocess; read it with ReadOutput()/WaitForOutput().
  // A file (not a pipe) so a chatty child never blocks on a full pipe.
  static Output Capture() { return {Kind::kCapture, "", false}; }
};

struct SubprocessOptions {
  // argv[0] is the program: a path when it contains '/', else searched in the child's PATH.
  std::vector<std::string> argv;
  // Start from the parent's environment (true) or from an empty one (false), then remove
  // `env_unset` and apply `env`.
  bool inherit_env = true;
  std::vector<std::string> env_unset;
  std::map<std::string, std::string> env;
  // Working directory of the child; empty keeps the parent's.
  std::string cwd;
  // Bytes fed to the child's stdin (through a temp file); nullopt gives it /dev/null.
  std::optional<std::string> stdin_data;
  // When >= 0, the child's stdin is a copy of this descriptor instead (it takes precedence over
  // stdin_data). The caller keeps ownership of its own copy.
  int stdin_fd = -1;
  Output stdout_to = Output::Capture();
  Output stderr_to = Output::Capture();
  // Run as this OS user (uid, primary gid and supplementary groups from the passwd/group
  // databases; HOME, USER and LOGNAME set accordingly). Requires root unless it names the
  // current user, in which case nothing changes.
  std::optional<std::string> user;
  // Put the child in its own process group, so Kill() also reaches its descendants and a
  // terminal's Ctrl-C aimed at the test does not hit it first.
  bool new_process_group = true;
  // SIGKILL the child when the thread that started it dies (prctl PR_SET_PDEATHSIG), so a
  // crashed test leaves no daemon behind. Linux ties this to the starting *thread*: start
  // long-lived children from a thread that outlives them (the test's main thread), or turn it
  // off. Not inherited by the child's own children.
  bool kill_on_parent_death = true;
};

// How a child ended (a waitpid status).
struct ExitStatus {
  int raw = 0;

  bool exited() const;
  int exit_code() const;  // Meaningful when exited().
  bool signaled() const;
  int term_signal() const;  // Meaningful when signaled().
  // Exited with code 0.
  bool success() const { return exited() && exit_code() == 0; }
  // "exit code 3" / "killed by signal 9 (Killed)".
  std::string ToString() const;
};

// The result of Subprocess::Run().
struct RunResult {
  ExitStatus status;
  std::string stdout_text;  // Empty unless captured.
  std::string stderr_text;  // Empty unless captured.
};

// One child process. Not thread-safe; use from one thread. The destructor kills the child
// (SIGKILL to its process group when it has one) if it is still running, reaps it and removes
// capture files.
class Subprocess {
 public:
  enum class Stream { kStdout, kStderr };

  // Forks and execs. kInvalidArgument for an empty argv or a user that cannot be used,
  // kNotFound when the program is not found, kInternal when fork/exec or a redirection fails
  // (the exec error is reported here, not as exit code 127).
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(SubprocessOptions options);

  // Starts a child, waits up to `timeout` for it to exit and returns its status and captured
  // output. On timeout the child is killed and kDeadlineExceeded is returned with the output
  // so far in the message. Does not treat a non-zero exit as an error.
  static absl::StatusOr<RunResult> Run(SubprocessOptions options, absl::Duration timeout = absl::Minutes(2));

  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;
  ~Subprocess();

  pid_t pid() const { return pid_; }
  // The command line, for messages.
  const std::string& description() const { return description_; }

  // Sends `sig` to the child process (not its group). OK when already exited (no-op).
  absl::Status Signal(int sig);
  // True while the child has not been reaped; reaps it when it has exited.
  bool Running();
  // Waits for the child to exit. kDeadlineExceeded when it is still running after `timeout`
  // (the child is left alone). Returns the same status again on later calls.
  absl::StatusOr<ExitStatus> Wait(absl::Duration timeout = absl::InfiniteDuration());
  // SIGKILL to the child (and its process group when it has one), then waits for it.
  ExitStatus Kill();

  // Everything captured on `stream` so far. kFailedPrecondition when it is not captured.
  absl::StatusOr<std::string> ReadOutput(Stream stream) const;
  // Waits until captured `stream` contains `needle` and returns all captured text.
  // kDeadlineExceeded after `timeout`; kFailedPrecondition when the child exits first (the
  // message carries its status and the tail of its stderr).
  absl::StatusOr<std::string> WaitForOutput(Stream stream, absl::string_view needle, absl::Duration timeout);
  // The first complete line of captured stdout, without its newline (same errors as
  // WaitForOutput).
  absl::StatusOr<std::string> WaitForStdoutLine(absl::Duration timeout);

 private:
  Subprocess() = default;
  std::string CaptureTail(Stream stream, size_t max_bytes) const;

  pid_t pid_ = -1;
  bool own_group_ = false;
  std::optional<ExitStatus> exit_;
  std::string description_;
  std::string stdout_capture_;  // Path of the capture file, empty when not captured.
  std::string stderr_capture_;
  std::string stdin_file_;
};

// Full path of `program` found in the PATH of the current process (or `program` itself when it
// contains '/' and is executable); nullopt when not found. For GTEST_SKIP on missing tools.
std::optional<std::string> FindProgram(absl::string_view program);

}  // namespace walshift::testing
