#pragma once
// Test support: a real EMFILE, injected. Lowers this process's descriptor limit so that at most
// `spare` more descriptors can be opened (the lowest free numbers), and restores it on
// destruction. The limit is the process's, so it holds for the proxy's worker threads too.

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

namespace dsproxy::test {

class FdLimit {
 public:
  explicit FdLimit(int spare) {
    ::getrlimit(RLIMIT_NOFILE, &saved_);
    const int lowest = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  // the lowest free number
    if (lowest < 0) return;
    ::close(lowest);
    rlimit low = saved_;
    low.rlim_cur = static_cast<rlim_t>(lowest + spare);
    ok_ = ::setrlimit(RLIMIT_NOFILE, &low) == 0;
  }
  ~FdLimit() { ::setrlimit(RLIMIT_NOFILE, &saved_); }
  FdLimit(const FdLimit&) = delete;
  FdLimit& operator=(const FdLimit&) = delete;
  bool ok() const { return ok_; }

 private:
  rlimit saved_{};
  bool ok_ = false;
};

}  // namespace dsproxy::test
