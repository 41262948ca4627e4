#pragma once
// The bearer token dsproxy presents to the API server, fixed (a kubeconfig `token:`) or read
// from a file (the in-cluster service-account token, a kubeconfig `tokenFile:`).
//
// Why a file is watched: bound service-account tokens expire after about an hour and the kubelet
// replaces the projected file before that. It does so atomically through symlinks
// (`token -> ..data/token`, `..data -> ..2026_12_07_14_00_00.123`), so the path never changes but
// the file it resolves to does. current() stat()s the path (which follows the links) on every
// call, a few microseconds per request, and re-reads the file when the resolved file's identity
// (device, inode, size, modification time) changed; invalidate() (after a 401) forces a re-read
// even if the identity looks the same (an in-place rewrite within one timestamp tick).
//
// The token is a secret: it is never logged, and no error message or status contains it; errors
// name the file only. Not thread-safe: one BearerToken per control thread (share it between the
// reflectors of that thread).

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace dsproxy::sources::kubernetes {

class BearerToken {
 public:
  // A token that never changes. Surrounding whitespace is removed.
  static std::shared_ptr<BearerToken> fixed(std::string token);
  // A token read from `path` now and re-read when the file changes. Throws
  // KubernetesConfigError (api_server_config.hpp) if the file cannot be read or is empty: a
  // misconfigured path should fail at start, not as 401s later.
  static std::shared_ptr<BearerToken> from_file(std::string path);

  // The token to send with the next request. When a changed file cannot be read (mid-rotation,
  // permissions), the last good token is kept and the failure is logged (the path, never the
  // content); the next call tries again.
  const std::string& current();
  // The server answered 401: the next current() re-reads the file whatever its identity. No-op
  // for a fixed token.
  void invalidate();

  bool file_backed() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  // How many times the file was read successfully (1 after from_file); for tests and status.
  std::uint64_t reads() const { return reads_.load(std::memory_order_relaxed); }

 private:
  struct FileIdentity {
    std::uint64_t device = 0, inode = 0;
    std::int64_t size = -1, mtime_ns = 0;
    bool operator==(const FileIdentity&) const = default;
  };
  // Reads the file into token_; false (token_ untouched) if unreadable or empty.
  bool reload(std::string* error);

  std::string path_;
  std::string token_;
  FileIdentity identity_;
  bool stale_ = false;
  std::atomic<std::uint64_t> reads_{0};  // read by tests and status from other threads
};

}  // namespace dsproxy::sources::kubernetes
