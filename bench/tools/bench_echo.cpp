// bench_echo: the benchmark's server-side application. Echoes every byte it receives back on
// the same connection, for any number of connections, on one thread (epoll, edge-free
// level-triggered, non-blocking sockets).
//
//   bench_echo --listen 0.0.0.0:7000 --listen [::]:7000 [--max-seconds 7200]
//
// An IPv6 listener is IPV6_V6ONLY, so each family has its own socket. When a client shuts its
// side down (EOF), whatever is still pending is written and the connection is closed: the
// client closes first, as in the load tool's "connect, echo, close" loop. Prints "listening"
// once every socket listens. Exits by itself after --max-seconds (a bound for a forgotten
// process), or on SIGTERM/SIGINT.

#include <signal.h>
#include <sys/epoll.h>

#include <string>
#include <vector>

#include "net_util.hpp"

namespace {

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

struct Conn {
  std::string pending;  // bytes read but not yet written back (only when the socket was full)
  bool eof = false;
};

bool parse_listen(const std::string& spec, bench::SockAddr& out) {
  // "ip:port" or "[ip6]:port"
  std::string ip;
  std::string port;
  if (!spec.empty() && spec[0] == '[') {
    auto close = spec.find(']');
    if (close == std::string::npos || close + 2 > spec.size() || spec[close + 1] != ':') return false;
    ip = spec.substr(1, close - 1);
    port = spec.substr(close + 2);
  } else {
    auto colon = spec.rfind(':');
    if (colon == std::string::npos) return false;
    ip = spec.substr(0, colon);
    port = spec.substr(colon + 1);
  }
  return bench::parse_addr(ip, std::atoi(port.c_str()), out);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<bench::SockAddr> listens;
  long max_seconds = 7200;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--listen" && i + 1 < argc) {
      bench::SockAddr addr;
      if (!parse_listen(argv[++i], addr)) {
        std::fprintf(stderr, "bad --listen %s\n", argv[i]);
        return 2;
      }
      listens.push_back(addr);
    } else if (a == "--max-seconds" && i + 1 < argc) {
      max_seconds = std::atol(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: bench_echo --listen IP:PORT|[IP6]:PORT ... [--max-seconds N]\n");
      return 2;
    }
  }
  if (listens.empty()) {
    std::fprintf(stderr, "bench_echo: at least one --listen\n");
    return 2;
  }
  bench::raise_fd_limit();
  signal(SIGPIPE, SIG_IGN);
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);

  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) bench::die("epoll_create1");
  std::vector<int> listeners;
  for (const auto& addr : listens) {
    int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) bench::die("socket");
    bench::set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    if (addr.family() == AF_INET6) bench::set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    if (::bind(fd, addr.get(), addr.len) != 0) bench::die("bind");
    if (::listen(fd, 4096) != 0) bench::die("listen");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) bench::die("epoll_ctl");
    listeners.push_back(fd);
  }
  std::printf("listening\n");
  std::fflush(stdout);

  std::vector<Conn*> conns;  // indexed by fd
  auto conn_of = [&](int fd) -> Conn*& {
    if (static_cast<std::size_t>(fd) >= conns.size()) conns.resize(static_cast<std::size_t>(fd) + 1024, nullptr);
    return conns[static_cast<std::size_t>(fd)];
  };
  auto close_conn = [&](int fd) {
    delete conn_of(fd);
    conn_of(fd) = nullptr;
    ::close(fd);
  };
  auto is_listener = [&](int fd) {
    for (int l : listeners)
      if (l == fd) return true;
    return false;
  };

  const std::uint64_t deadline = bench::now_ns() + static_cast<std::uint64_t>(max_seconds) * 1000000000ull;
  std::vector<epoll_event> events(1024);
  static char buf[64 * 1024];
  while (!g_stop && bench::now_ns() < deadline) {
    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 1000);
    if (n < 0) {
      if (errno == EINTR) continue;
      bench::die("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      const int fd = events[static_cast<std::size_t>(i)].data.fd;
      if (is_listener(fd)) {
        for (int k = 0; k < 256; ++k) {  // bounded batch per wakeup
          int c = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          bench::set_int(c, IPPROTO_TCP, TCP_NODELAY, 1);
          conn_of(c) = new Conn();
          epoll_event ev{};
          ev.events = EPOLLIN | EPOLLRDHUP;
          ev.data.fd = c;
          if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) != 0) close_conn(c);
        }
        continue;
      }
      Conn* conn = conn_of(fd);
      if (!conn) continue;
      bool dead = false;
      // Flush what the socket could not take last time.
      while (!conn->pending.empty()) {
        ssize_t w = ::send(fd, conn->pending.data(), conn->pending.size(), MSG_NOSIGNAL);
        if (w > 0) {
          conn->pending.erase(0, static_cast<std::size_t>(w));
        } else {
          if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
          dead = true;
          break;
        }
      }
      // Read and echo while nothing is pending (so a slow reader is never buffered without bound).
      while (!dead && conn->pending.empty() && !conn->eof) {
        ssize_t r = ::recv(fd, buf, sizeof buf, 0);
        if (r == 0) {
          conn->eof = true;
          break;
        }
        if (r < 0) {
          if (errno != EAGAIN && errno != EWOULDBLOCK) dead = true;
          break;
        }
        std::size_t off = 0;
        while (off < static_cast<std::size_t>(r)) {
          ssize_t w = ::send(fd, buf + off, static_cast<std::size_t>(r) - off, MSG_NOSIGNAL);
          if (w > 0) {
            off += static_cast<std::size_t>(w);
            continue;
          }
          if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn->pending.assign(buf + off, static_cast<std::size_t>(r) - off);
          } else {
            dead = true;
          }
          break;
        }
      }
      if (dead || (conn->eof && conn->pending.empty())) {
        close_conn(fd);
        continue;
      }
      epoll_event ev{};
      ev.events = conn->pending.empty() ? (EPOLLIN | EPOLLRDHUP) : EPOLLOUT;
      ev.data.fd = fd;
      epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    }
  }
  return 0;
}
