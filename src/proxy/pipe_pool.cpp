#include "proxy/pipe_pool.hpp"

#include <fcntl.h>
#include <unistd.h>

namespace dsproxy::proxy {

PipePool::PipePool(std::size_t pipe_size, std::size_t max_idle, std::size_t max_in_use)
    : pipe_size_(pipe_size), max_idle_(max_idle), max_in_use_(max_in_use) {}

PipePool::~PipePool() {
  for (auto& p : idle_) close_pipe(p);
}

void PipePool::close_pipe(Pipe& p) {
  if (p.read_fd >= 0) ::close(p.read_fd);
  if (p.write_fd >= 0) ::close(p.write_fd);
  p = Pipe{};
}

Pipe PipePool::acquire() {
  if (in_use_ >= max_in_use_) return {};
  if (!idle_.empty()) {
    Pipe p = idle_.back();
    idle_.pop_back();
    ++in_use_;
    return p;
  }
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return {};
  ++in_use_;
  // A bigger pipe moves more per splice call (fewer syscalls per byte). Refused (limits), the
  // pipe keeps what it has, and each pipe says what that is: a pool-wide size would make every
  // splice into a smaller pipe look like a drained socket.
  int got = ::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(pipe_size_));
  if (got <= 0) got = ::fcntl(fds[1], F_GETPIPE_SZ);
  return {fds[0], fds[1], got > 0 ? static_cast<std::size_t>(got) : 4096};
}

void PipePool::release(Pipe pipe, bool drained) {
  if (!pipe.valid()) return;
  --in_use_;
  if (drained && idle_.size() < max_idle_) {
    idle_.push_back(pipe);
    return;
  }
  close_pipe(pipe);
}

PipePool& PipePool::for_this_thread() {
  thread_local PipePool pool;
  return pool;
}

}  // namespace dsproxy::proxy
