// dsproxy_test_echo: the "tcp-echo" pod application of the end-to-end experiment.
//
//   dsproxy_test_echo --ports 9000,9001,9002 [--prefix hello] [--peer-log FILE]
//                     [--family v4|v6|both]
//
// Listens on every port on both 0.0.0.0 and [::] (two sockets per port, the IPv6 one with
// IPV6_V6ONLY so IPv4 clients are never seen as v4-mapped addresses), and answers every
// newline-terminated line X with "<prefix> X\n" as soon as it arrives. When the client shuts
// its side down (EOF) the server answers a trailing unterminated line, if any, and closes.
//
// For every accepted connection it appends "<local port> <peer ip>" to the peer log, so a test
// can check which client address the pod saw (the proxy must preserve the original source).
//
// `--family v4` (or v6) listens on that family only, like an app bound to 0.0.0.0 (or [::] with
// V6ONLY) in a dual-stack pod: connections of the other family are refused by the pod's kernel.
// The family-policy e2e test uses it for the "one family broken in a pod" cases.
//
// Prints "listening" on stdout once every socket is bound and listening, so a harness can wait
// for readiness. Plain POSIX sockets, one poll() loop accepting, one detached thread per
// connection: the test load is small and this keeps each connection's code linear.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

namespace {

struct Options {
  std::vector<std::uint16_t> ports;
  std::string prefix = "hello";
  std::string peer_log;  // empty: no peer log
  std::vector<int> families{AF_INET, AF_INET6};
};

[[noreturn]] void usage_and_exit(const char* argv0, const std::string& error) {
  if (!error.empty()) std::fprintf(stderr, "error: %s\n", error.c_str());
  std::fprintf(stderr,
               "usage: %s --ports P1[,P2...] [--prefix WORD] [--peer-log FILE] [--family v4|v6|both]\n",
               argv0);
  std::exit(2);
}

std::optional<std::uint16_t> parse_port(std::string_view text) {
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || value == 0 || value > 65535) {
    return std::nullopt;
  }
  return static_cast<std::uint16_t>(value);
}

Options parse_args(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) usage_and_exit(argv[0], std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--ports") {
      std::string_view list = value();
      while (!list.empty()) {
        std::size_t comma = list.find(',');
        std::string_view item = list.substr(0, comma);
        auto port = parse_port(item);
        if (!port) usage_and_exit(argv[0], "bad port '" + std::string(item) + "'");
        options.ports.push_back(*port);
        list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
      }
    } else if (arg == "--prefix") {
      options.prefix = value();
    } else if (arg == "--peer-log") {
      options.peer_log = value();
    } else if (arg == "--family") {
      std::string_view family = value();
      if (family == "v4") options.families = {AF_INET};
      else if (family == "v6") options.families = {AF_INET6};
      else if (family == "both") options.families = {AF_INET, AF_INET6};
      else usage_and_exit(argv[0], "--family must be v4, v6 or both, not '" + std::string(family) + "'");
    } else if (arg == "-h" || arg == "--help") {
      usage_and_exit(argv[0], "");
    } else {
      usage_and_exit(argv[0], "unknown argument '" + std::string(arg) + "'");
    }
  }
  if (options.ports.empty()) usage_and_exit(argv[0], "--ports is required");
  return options;
}

// Appends one line per accepted connection; shared by the accept loop only, but guarded
// anyway so the writer can move into connection threads without surprises.
class PeerLog {
 public:
  explicit PeerLog(const std::string& path) {
    if (path.empty()) return;
    file_ = std::fopen(path.c_str(), "a");
    if (file_ == nullptr) {
      std::fprintf(stderr, "cannot open peer log %s: %s\n", path.c_str(), std::strerror(errno));
      std::exit(1);
    }
  }
  ~PeerLog() {
    if (file_ != nullptr) std::fclose(file_);
  }
  PeerLog(const PeerLog&) = delete;
  PeerLog& operator=(const PeerLog&) = delete;

  void record(std::uint16_t local_port, const std::string& peer_ip) {
    if (file_ == nullptr) return;
    std::lock_guard lock(mutex_);
    std::fprintf(file_, "%u %s\n", static_cast<unsigned>(local_port), peer_ip.c_str());
    std::fflush(file_);  // the harness reads the file while we keep running
  }

 private:
  std::mutex mutex_;
  std::FILE* file_ = nullptr;
};

// One listening socket: its port and family, for log lines and error messages.
struct Listener {
  int fd = -1;
  std::uint16_t port = 0;
  int family = AF_INET;
};

int open_listener(int family, std::uint16_t port) {
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_storage storage{};
  socklen_t length = 0;
  if (family == AF_INET6) {
    // Without V6ONLY the [::] socket would also take IPv4 and collide with the 0.0.0.0 one.
    if (::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) {
      ::close(fd);
      return -1;
    }
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&storage);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = in6addr_any;
    sin6->sin6_port = htons(port);
    length = sizeof *sin6;
  } else {
    auto* sin = reinterpret_cast<sockaddr_in*>(&storage);
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_ANY);
    sin->sin_port = htons(port);
    length = sizeof *sin;
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&storage), length) != 0 || ::listen(fd, 512) != 0) {
    int saved = errno;
    ::close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

// The peer's address as plain text (no brackets, no port).
std::string peer_ip(const sockaddr_storage& peer) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (peer.ss_family == AF_INET) {
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(peer).sin_addr, text, sizeof text);
  } else if (peer.ss_family == AF_INET6) {
    ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr, text,
                sizeof text);
  }
  return text;
}

// Writes all of `data`; false when the peer is gone. MSG_NOSIGNAL: a reset peer gives EPIPE,
// never SIGPIPE.
bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Serves one connection until EOF or error, then closes it.
void serve(int fd, std::string prefix) {
  std::string pending;  // bytes of the line not yet terminated
  char buffer[4096];
  bool peer_alive = true;
  for (;;) {
    ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {  // reset or other error: nothing more to say
      peer_alive = false;
      break;
    }
    if (n == 0) break;  // EOF: the client shut its side down
    pending.append(buffer, static_cast<std::size_t>(n));
    std::string reply;
    std::size_t start = 0;
    for (std::size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string_view line(pending.data() + start, nl - start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      reply.append(prefix).append(" ").append(line).append("\n");
    }
    pending.erase(0, start);
    if (!reply.empty() && !send_all(fd, reply)) {
      peer_alive = false;
      break;
    }
  }
  if (peer_alive && !pending.empty()) {
    if (pending.back() == '\r') pending.pop_back();
    send_all(fd, prefix + " " + pending + "\n");
  }
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  Options options = parse_args(argc, argv);
  // Belt and braces next to MSG_NOSIGNAL: nothing a client does may kill the server.
  ::signal(SIGPIPE, SIG_IGN);

  PeerLog peer_log(options.peer_log);

  std::vector<Listener> listeners;
  for (std::uint16_t port : options.ports) {
    for (int family : options.families) {
      int fd = open_listener(family, port);
      if (fd < 0) {
        std::fprintf(stderr, "cannot listen on %s:%u: %s\n", family == AF_INET ? "0.0.0.0" : "[::]",
                     static_cast<unsigned>(port), std::strerror(errno));
        return 1;
      }
      listeners.push_back({fd, port, family});
    }
  }
  std::printf("listening\n");
  std::fflush(stdout);

  std::vector<pollfd> polled;
  for (const Listener& l : listeners) polled.push_back({l.fd, POLLIN, 0});

  for (;;) {
    int ready = ::poll(polled.data(), polled.size(), -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      std::perror("poll");
      return 1;
    }
    for (std::size_t i = 0; i < polled.size(); ++i) {
      if ((polled[i].revents & POLLIN) == 0) continue;
      sockaddr_storage peer{};
      socklen_t peer_length = sizeof peer;
      int fd = ::accept4(polled[i].fd, reinterpret_cast<sockaddr*>(&peer), &peer_length,
                         SOCK_CLOEXEC);
      if (fd < 0) {
        // EMFILE and friends: keep serving the connections we have, retry a little later
        // instead of spinning on a socket that stays readable.
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
          std::fprintf(stderr, "accept on port %u: %s\n",
                       static_cast<unsigned>(listeners[i].port), std::strerror(errno));
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        continue;
      }
      peer_log.record(listeners[i].port, peer_ip(peer));
      try {
        std::thread(serve, fd, options.prefix).detach();
      } catch (const std::system_error& e) {  // out of threads: drop this one, keep going
        std::fprintf(stderr, "cannot start connection thread: %s\n", e.what());
        ::close(fd);
      }
    }
  }
}
