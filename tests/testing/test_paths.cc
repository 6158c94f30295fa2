#include "tests/testing/test_paths.h"

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

#ifndef WALSHIFT_DEFAULT_BIN_DIR
#define WALSHIFT_DEFAULT_BIN_DIR ""
#endif
#ifndef WALSHIFT_DEFAULT_SOURCE_DIR
#define WALSHIFT_DEFAULT_SOURCE_DIR ""
#endif

namespace walshift::testing {
namespace {

std::string EnvOr(const char* name, absl::string_view fallback) {
  const char* v = getenv(name);
  if (v != nullptr && *v != '\0') return v;
  return std::string(fallback);
}

std::string StripSlash(std::string s) {
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

}  // namespace

std::string TempRoot() {
  std::string root = EnvOr("WALSHIFT_TEST_TMP", "");
  if (root.empty()) root = EnvOr("TMPDIR", "/tmp");
  return StripSlash(root);
}

absl::StatusOr<std::string> MakeTempDir(absl::string_view prefix) {
  std::string templ = absl::StrCat(TempRoot(), "/", prefix, "XXXXXX");
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp(", templ, ") failed: ", std::strerror(errno)));
  }
  return std::string(buf.data());
}

void RemoveTree(const std::string& path) {
  if (path.empty() || path == "/") return;
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

absl::StatusOr<TempDir> TempDir::Create(absl::string_view prefix) {
  absl::StatusOr<std::string> path = MakeTempDir(prefix);
  if (!path.ok()) return path.status();
  return TempDir(*std::move(path));
}

TempDir::TempDir(TempDir&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }

TempDir& TempDir::operator=(TempDir&& other) noexcept {
  if (this != &other) {
    RemoveTree(path_);
    path_ = std::move(other.path_);
    other.path_.clear();
  }
  return *this;
}

TempDir::~TempDir() { RemoveTree(path_); }

std::string TempDir::Join(absl::string_view name) const { return absl::StrCat(path_, "/", name); }

std::string BinaryPath(absl::string_view name) {
  return absl::StrCat(StripSlash(EnvOr("WALSHIFT_BIN_DIR", WALSHIFT_DEFAULT_BIN_DIR)), "/", name);
}

std::string SourcePath(absl::string_view relative) {
  return absl::StrCat(StripSlash(EnvOr("WALSHIFT_SOURCE_DIR", WALSHIFT_DEFAULT_SOURCE_DIR)), "/", relative);
}

absl::Status WriteFile(const std::string& path, absl::string_view contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat("cannot open ", path, " for writing"));
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, " does not exist"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InternalError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace walshift::testing
