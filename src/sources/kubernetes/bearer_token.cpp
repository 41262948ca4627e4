#include "sources/kubernetes/bearer_token.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sources/kubernetes/api_server_config.hpp"

namespace dsproxy::sources::kubernetes {

namespace {

// A service-account JWT is about 1 KB; anything near this bound is not a token.
constexpr std::size_t kMaxTokenBytes = 64 * 1024;

std::string trim(std::string s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

std::int64_t mtime_ns(const struct stat& st) {
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

}  // namespace

std::shared_ptr<BearerToken> BearerToken::fixed(std::string token) {
  auto t = std::shared_ptr<BearerToken>(new BearerToken());
  t->token_ = trim(std::move(token));
  return t;
}

std::shared_ptr<BearerToken> BearerToken::from_file(std::string path) {
  auto t = std::shared_ptr<BearerToken>(new BearerToken());
  t->path_ = std::move(path);
  std::string error;
  if (!t->reload(&error)) throw KubernetesConfigError(error);
  return t;
}

bool BearerToken::reload(std::string* error) {
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *error = "bearer token file " + path_ + ": " + std::strerror(errno);
    return false;
  }
  // The identity is taken from the opened descriptor, so it describes exactly the file whose
  // bytes are read even if the kubelet swaps the link in between.
  struct stat st {};
  std::string content;
  bool ok = ::fstat(fd, &st) == 0;
  if (ok) {
    char buffer[4096];
    for (;;) {
      const ssize_t n = ::read(fd, buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        *error = "bearer token file " + path_ + ": " + std::strerror(errno);
        ok = false;
        break;
      }
      if (n == 0) break;
      content.append(buffer, static_cast<std::size_t>(n));
      if (content.size() > kMaxTokenBytes) {
        *error = "bearer token file " + path_ + ": larger than 64 KiB, not a token";
        ok = false;
        break;
      }
    }
  } else {
    *error = "bearer token file " + path_ + ": " + std::strerror(errno);
  }
  ::close(fd);
  if (!ok) return false;
  content = trim(std::move(content));
  if (content.empty()) {
    *error = "bearer token file " + path_ + " is empty";
    return false;
  }
  token_ = std::move(content);
  identity_ = {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
               static_cast<std::int64_t>(st.st_size), mtime_ns(st)};
  stale_ = false;
  ++reads_;
  return true;
}

const std::string& BearerToken::current() {
  if (path_.empty()) return token_;
  if (!stale_) {
    struct stat st {};
    if (::stat(path_.c_str(), &st) != 0) return token_;  // mid-swap: keep the last good token
    const FileIdentity now{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
                           static_cast<std::int64_t>(st.st_size), mtime_ns(st)};
    if (now == identity_) return token_;
  }
  std::string error;
  if (reload(&error)) {
    spdlog::info("kubernetes: re-read the bearer token from {}", path_);
  } else {
    spdlog::warn("kubernetes: {}; keeping the previous token", error);
  }
  return token_;
}

void BearerToken::invalidate() {
  if (!path_.empty()) stale_ = true;
}

}  // namespace dsproxy::sources::kubernetes
