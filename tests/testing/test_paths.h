#pragma once
// Where tests put scratch files and find the programs the build produced.

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace walshift::testing {

// The directory under which tests create their temp dirs: $WALSHIFT_TEST_TMP when set and
// non-empty, else $TMPDIR, else /tmp. Never ends with '/'.
std::string TempRoot();

// A fresh directory "<TempRoot()>/<prefix>XXXXXX" (mkdtemp), mode 0700, owned by the caller.
// kInternal when it cannot be created.
absl::StatusOr<std::string> MakeTempDir(absl::string_view prefix);

// Removes `path` recursively; ignores errors (for cleanup paths).
void RemoveTree(const std::string& path);

// An owned temp dir, removed recursively when destroyed. Movable, not copyable.
class TempDir {
 public:
  static absl::StatusOr<TempDir> Create(absl::string_view prefix = "walshift-test-");
  TempDir(TempDir&& other) noexcept;
  TempDir& operator=(TempDir&& other) noexcept;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();

  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string Join(absl::string_view name) const;

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// Path of a program built into the build tree's bin/ directory (walshiftd, walshift-devkafka):
// $WALSHIFT_BIN_DIR/<name> (ctest sets it, see tests/CMakeLists.txt), else the directory
// given at compile time. The file is not checked for existence.
std::string BinaryPath(absl::string_view name);

// Path of a file in the source tree: $WALSHIFT_SOURCE_DIR/<relative>, else the compile-time
// source dir.
std::string SourcePath(absl::string_view relative);

// Writes `contents` to `path` (truncating). kInternal on I/O errors.
absl::Status WriteFile(const std::string& path, absl::string_view contents);
// Reads the whole file. kNotFound when it does not exist, kInternal on other errors.
absl::StatusOr<std::string> ReadFile(const std::string& path);

}  // namespace walshift::testing
