#include "redirect/command_runner.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>

extern char** environ;

namespace dsproxy::redirect {

namespace {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

std::string errno_text(int err) { return std::strerror(err); }

// A pipe whose both ends are close-on-exec and above the standard descriptors: if the proxy runs
// with stdin closed, pipe2 could hand out fd 0, and dup2(0, 0) in the child would keep its
// close-on-exec flag, leaving the program without stdin.
bool make_pipe(Fd& read_end, Fd& write_end, std::string& error) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    error = "pipe2: " + errno_text(errno);
    return false;
  }
  for (int& fd : fds) {
    if (fd > STDERR_FILENO) continue;
    int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
    int err = errno;
    ::close(fd);
    fd = moved;
    if (moved < 0) {
      error = "fcntl(F_DUPFD_CLOEXEC): " + errno_text(err);
      for (int f : fds)
        if (f >= 0) ::close(f);
      return false;
    }
  }
  read_end.reset(fds[0]);
  write_end.reset(fds[1]);
  return true;
}

bool executable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

// PATH first, then the sbin directories that iptables and ip live in on every distribution.
std::optional<std::string> resolve_program(const std::string& name) {
  if (name.find('/') != std::string::npos) {
    if (executable(name)) return name;
    return std::nullopt;
  }
  std::string dirs;
  if (const char* path = std::getenv("PATH"); path != nullptr && *path != '\0') dirs = path;
  else dirs = "/usr/local/bin:/usr/bin:/bin";
  dirs += ":/usr/local/sbin:/usr/sbin:/sbin";
  std::string_view rest = dirs;
  while (true) {
    auto colon = rest.find(':');
    std::string_view dir = rest.substr(0, colon);
    if (!dir.empty()) {
      std::string candidate = std::string(dir) + "/" + name;
      if (executable(candidate)) return candidate;
    }
    if (colon == std::string_view::npos) break;
    rest.remove_prefix(colon + 1);
  }
  return std::nullopt;
}

CommandResult cannot_start(const std::string& program, const std::string& why) {
  return CommandResult{127, "", program + ": " + why};
}

// Keeps SIGPIPE blocked in this thread while we write to the child's stdin, so a program that
// exits without reading its input gives us EPIPE instead of killing the proxy. A SIGPIPE raised
// by our own write is consumed afterwards; one that was already pending is left alone.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigemptyset(&pipe_set_);
    sigaddset(&pipe_set_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_set_, &old_mask_);
  }
  ~SigpipeGuard() {
    if (raised_ && !was_pending_) {
      timespec zero{0, 0};
      while (sigtimedwait(&pipe_set_, nullptr, &zero) < 0 && errno == EINTR) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
  }
  void note_raised() { raised_ = true; }

 private:
  sigset_t pipe_set_;
  sigset_t old_mask_;
  bool was_pending_ = false;
  bool raised_ = false;
};

}  // namespace

ProcessRunner::ProcessRunner(std::chrono::milliseconds timeout) : timeout_(timeout) {}

CommandResult ProcessRunner::run(const Command& command) {
  if (command.argv.empty()) return cannot_start("<empty>", "no program given");
  const std::string& program = command.argv.front();
  auto path = resolve_program(program);
  if (!path) return cannot_start(program, "command not found (searched PATH and the sbin directories)");

  Fd in_read, in_write, out_read, out_write, err_read, err_write;
  std::string error;
  if (!make_pipe(in_read, in_write, error) || !make_pipe(out_read, out_write, error) ||
      !make_pipe(err_read, err_write, error))
    return cannot_start(program, error);

  std::vector<char*> argv;
  argv.reserve(command.argv.size() + 1);
  for (const auto& arg : command.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_read.get(), STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out_write.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_write.get(), STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty, defaults;
  sigemptyset(&empty);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  pid_t pid = -1;
  int spawn_rc = ::posix_spawn(&pid, path->c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (spawn_rc != 0) return cannot_start(program, "cannot start " + *path + ": " + errno_text(spawn_rc));

  // The child holds its own copies now; closing ours lets us see EOF when it exits.
  in_read.reset();
  out_write.reset();
  err_write.reset();
  for (const Fd* fd : {&in_write, &out_read, &err_read})
    ::fcntl(fd->get(), F_SETFL, ::fcntl(fd->get(), F_GETFL) | O_NONBLOCK);

  CommandResult result;
  std::string_view pending_input = command.input;
  if (pending_input.empty()) in_write.reset();
  bool timed_out = false;
  {
    SigpipeGuard sigpipe_guard;
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    std::array<char, 65536> buffer;
    while (in_write || out_read || err_read) {
      std::array<pollfd, 3> fds{};
      nfds_t count = 0;
      auto add = [&](const Fd& fd, short events) {
        if (fd) fds[count++] = pollfd{fd.get(), events, 0};
      };
      add(in_write, POLLOUT);
      add(out_read, POLLIN);
      add(err_read, POLLIN);
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        timed_out = true;
        break;
      }
      int n = ::poll(fds.data(), count, static_cast<int>(left.count()) + 1);
      if (n < 0) {
        if (errno == EINTR) continue;
        result.err += "poll: " + errno_text(errno) + "\n";
        break;
      }
      for (nfds_t i = 0; i < count; ++i) {
        if (fds[i].revents == 0) continue;
        int fd = fds[i].fd;
        if (in_write && fd == in_write.get()) {
          ssize_t w = ::write(fd, pending_input.data(), pending_input.size());
          if (w > 0) {
            pending_input.remove_prefix(static_cast<std::size_t>(w));
            if (pending_input.empty()) in_write.reset();
          } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
            // EPIPE: the program exited or closed stdin early; its exit code tells the rest.
            if (errno == EPIPE) sigpipe_guard.note_raised();
            in_write.reset();
          }
          continue;
        }
        Fd& source = (out_read && fd == out_read.get()) ? out_read : err_read;
        std::string& sink = (&source == &out_read) ? result.out : result.err;
        ssize_t r = ::read(fd, buffer.data(), buffer.size());
        if (r > 0) sink.append(buffer.data(), static_cast<std::size_t>(r));
        else if (r == 0 || (errno != EAGAIN && errno != EINTR)) source.reset();
      }
    }
  }
  if (timed_out) ::kill(pid, SIGKILL);

  int status = 0;
  pid_t waited;
  do {
    waited = ::waitpid(pid, &status, 0);
  } while (waited < 0 && errno == EINTR);
  if (waited < 0) {
    result.exit_code = -1;
    result.err += program + ": cannot collect exit status: " + errno_text(errno);
  } else if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.exit_code = 128 + WTERMSIG(status);
  }
  if (timed_out) {
    if (!result.err.empty() && result.err.back() != '\n') result.err += '\n';
    result.err += program + ": killed after running longer than " + std::to_string(timeout_.count()) + " ms";
  }
  return result;
}

std::string format_argv(const std::vector<std::string>& argv) {
  std::string text;
  for (const auto& word : argv) {
    if (!text.empty()) text += ' ';
    bool plain = !word.empty();
    for (char c : word) {
      bool safe = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  std::string_view("_./:=+,%@-").find(c) != std::string_view::npos;
      plain = plain && safe;
    }
    if (plain) {
      text += word;
      continue;
    }
    text += '\'';
    for (char c : word) {
      if (c == '\'') text += "'\\''";
      else text += c;
    }
    text += '\'';
  }
  return text;
}

}  // namespace dsproxy::redirect
