#pragma once
// Pipes for splice(2), kept per worker thread and reused.
//
// The relay moves bytes socket -> pipe -> socket inside the kernel, so no user-space buffer is
// needed, and an idle connection holds no pipe: one is borrowed when data arrives and returned
// once it has been drained. A pipe that still holds bytes when its connection dies is closed,
// never returned, so no connection's data can leak into another's.

#include <cstddef>
#include <vector>

namespace dsproxy::proxy {

struct Pipe {
  int read_fd = -1;
  int write_fd = -1;
  // What this pipe holds: pipe_size when F_SETPIPE_SZ was granted, less when it was not (a user
  // past fs/pipe-user-pages-soft without CAP_SYS_RESOURCE gets 64 KiB, or even 8 KiB). The relay
  // asks splice for this much and reads a shorter result as "socket drained".
  std::size_t capacity = 0;
  bool valid() const { return read_fd >= 0; }
};

class PipePool {
 public:
  // `pipe_size` is requested with F_SETPIPE_SZ (the kernel rounds it up to pages and caps it at
  // /proc/sys/fs/pipe-max-size); `max_idle` pipes are kept for reuse, more are closed on release.
  // At most `max_in_use` pipes are lent at once: a pipe can hold `pipe_size` bytes for as long as
  // its receiver does not read, so slow readers could otherwise pin pipe_size each; past the cap
  // the relay copies through a 16 KiB buffer instead.
  explicit PipePool(std::size_t pipe_size = 256 * 1024, std::size_t max_idle = 64, std::size_t max_in_use = 256);
  ~PipePool();
  PipePool(const PipePool&) = delete;
  PipePool& operator=(const PipePool&) = delete;

  // An empty pipe, or an invalid one when the cap is reached or the process is out of descriptors
  // (the caller then copies through a buffer).
  Pipe acquire();
  // Only empty pipes may be released; pass `drained = false` to close a pipe that may hold data.
  void release(Pipe pipe, bool drained = true);

  std::size_t pipe_size() const { return pipe_size_; }  // the size asked for
  std::size_t idle() const { return idle_.size(); }
  std::size_t in_use() const { return in_use_; }

  // The calling worker thread's pool (one io_context per thread, so no locking).
  static PipePool& for_this_thread();

 private:
  static void close_pipe(Pipe& p);
  std::size_t pipe_size_;
  std::size_t max_idle_;
  std::size_t max_in_use_;
  std::size_t in_use_ = 0;
  std::vector<Pipe> idle_;
};

}  // namespace dsproxy::proxy
