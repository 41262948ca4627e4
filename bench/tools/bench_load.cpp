// bench_load: the benchmark's client. Three modes, each bounded in time and in count, each
// printing one JSON object on stdout.
//
//   bench_load conn --addr IP --port P [--seconds 5] [--max-ops 1000000] [--threads 1] [--size 64]
//       Each thread loops: socket, connect, write SIZE bytes, read them back, close. Rate and
//       latency (socket() to close() done) p50/p90/p99/max in microseconds. The client closes
//       first (so the TIME_WAIT is the client's).
//   bench_load rtt --addr IP --port P [--seconds 5] [--max-ops 1000000] [--size 64] [--warmup 200]
//       One persistent connection: write SIZE bytes, read them back, repeat. Round-trip p50/p99.
//   bench_load hold --addr IP --port P --count N [--hold-seconds 120] [--ready-file F] [--size 64]
//       Opens N connections (at most 256 connecting at once), does one SIZE-byte echo on each,
//       writes {"established":..} to the ready file (and stdout), then holds them open until
//       SIGTERM/SIGINT or --hold-seconds, and closes them all.
//
// Every socket has 2 s send/receive timeouts in the blocking modes, so a stalled proxy costs an
// error, never a hang. Errors are counted, and after one the thread pauses 1 ms so a refusing
// proxy cannot turn the loop into a spin.

#include <signal.h>
#include <sys/epoll.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "net_util.hpp"

namespace {

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

struct Options {
  std::string mode;
  std::string addr;
  int port = 0;
  double seconds = 5;
  long max_ops = 1000000;
  int threads = 1;
  int size = 64;
  int warmup = 200;
  long count = 1000;
  double hold_seconds = 120;
  std::string ready_file;
};

struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0, max = 0;
};

Percentiles percentiles(std::vector<std::uint32_t>& ns) {
  Percentiles p;
  if (ns.empty()) return p;
  std::sort(ns.begin(), ns.end());
  auto at = [&](double q) {
    std::size_t i = static_cast<std::size_t>(q * static_cast<double>(ns.size() - 1) + 0.5);
    return static_cast<double>(ns[std::min(i, ns.size() - 1)]) / 1000.0;
  };
  p.p50 = at(0.50);
  p.p90 = at(0.90);
  p.p99 = at(0.99);
  p.max = static_cast<double>(ns.back()) / 1000.0;
  return p;
}

bool write_all(int fd, const char* data, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return false;
    }
    data += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool read_exact(int fd, char* data, std::size_t n) {
  while (n > 0) {
    ssize_t r = ::recv(fd, data, n, 0);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    data += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

int connect_blocking(const bench::SockAddr& addr) {
  int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  bench::set_timeouts(fd, 2000);
  bench::set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  if (::connect(fd, addr.get(), addr.len) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

int run_conn(const Options& o, const bench::SockAddr& addr) {
  const std::uint64_t start = bench::now_ns();
  const std::uint64_t deadline = start + static_cast<std::uint64_t>(o.seconds * 1e9);
  std::atomic<long> ops_left{o.max_ops};
  struct Result {
    std::vector<std::uint32_t> lat;
    long errors = 0;
  };
  std::vector<Result> results(static_cast<std::size_t>(o.threads));
  std::vector<std::thread> threads;
  for (int t = 0; t < o.threads; ++t) {
    threads.emplace_back([&, t] {
      Result& r = results[static_cast<std::size_t>(t)];
      r.lat.reserve(static_cast<std::size_t>(std::min<long>(o.max_ops / o.threads + 1, 4000000)));
      std::vector<char> out(static_cast<std::size_t>(o.size), 'x');
      std::vector<char> in(static_cast<std::size_t>(o.size));
      while (!g_stop && bench::now_ns() < deadline && ops_left.fetch_sub(1) > 0) {
        const std::uint64_t t0 = bench::now_ns();
        int fd = connect_blocking(addr);
        bool ok = fd >= 0 && write_all(fd, out.data(), out.size()) && read_exact(fd, in.data(), in.size());
        if (fd >= 0) ::close(fd);
        const std::uint64_t t1 = bench::now_ns();
        if (ok) {
          r.lat.push_back(static_cast<std::uint32_t>(std::min<std::uint64_t>(t1 - t0, 0xffffffffu)));
        } else {
          ++r.errors;
          ::usleep(1000);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  const double elapsed = static_cast<double>(bench::now_ns() - start) / 1e9;
  std::vector<std::uint32_t> all;
  long errors = 0;
  for (auto& r : results) {
    all.insert(all.end(), r.lat.begin(), r.lat.end());
    errors += r.errors;
  }
  const std::size_t ops = all.size();
  Percentiles p = percentiles(all);
  std::printf(
      "{\"mode\":\"conn\",\"threads\":%d,\"ops\":%zu,\"errors\":%ld,\"seconds\":%.3f,\"rate\":%.1f,"
      "\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f}\n",
      o.threads, ops, errors, elapsed, static_cast<double>(ops) / elapsed, p.p50, p.p90, p.p99, p.max);
  return ops > 0 ? 0 : 1;
}

int run_rtt(const Options& o, const bench::SockAddr& addr) {
  int fd = connect_blocking(addr);
  if (fd < 0) {
    std::printf("{\"mode\":\"rtt\",\"ops\":0,\"errors\":1,\"error\":\"connect: %s\"}\n", std::strerror(errno));
    return 1;
  }
  std::vector<char> out(static_cast<std::size_t>(o.size), 'x');
  std::vector<char> in(static_cast<std::size_t>(o.size));
  for (int i = 0; i < o.warmup; ++i)
    if (!write_all(fd, out.data(), out.size()) || !read_exact(fd, in.data(), in.size())) break;
  std::vector<std::uint32_t> lat;
  lat.reserve(static_cast<std::size_t>(std::min<long>(o.max_ops, 4000000)));
  long errors = 0;
  const std::uint64_t start = bench::now_ns();
  const std::uint64_t deadline = start + static_cast<std::uint64_t>(o.seconds * 1e9);
  for (long i = 0; i < o.max_ops && !g_stop && bench::now_ns() < deadline; ++i) {
    const std::uint64_t t0 = bench::now_ns();
    if (!write_all(fd, out.data(), out.size()) || !read_exact(fd, in.data(), in.size())) {
      ++errors;
      break;
    }
    lat.push_back(static_cast<std::uint32_t>(std::min<std::uint64_t>(bench::now_ns() - t0, 0xffffffffu)));
  }
  const double elapsed = static_cast<double>(bench::now_ns() - start) / 1e9;
  ::close(fd);
  const std::size_t ops = lat.size();
  Percentiles p = percentiles(lat);
  std::printf(
      "{\"mode\":\"rtt\",\"ops\":%zu,\"errors\":%ld,\"seconds\":%.3f,\"rate\":%.1f,"
      "\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f}\n",
      ops, errors, elapsed, static_cast<double>(ops) / elapsed, p.p50, p.p90, p.p99, p.max);
  return ops > 0 ? 0 : 1;
}

// Non-blocking: N connections, a bounded number connecting at once, one echo each, then hold.
int run_hold(const Options& o, const bench::SockAddr& addr) {
  enum State { connecting, reading, done, failed };
  struct C {
    int fd = -1;
    State state = connecting;
    int got = 0;
  };
  std::vector<C> conns(static_cast<std::size_t>(o.count));
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) bench::die("epoll_create1");
  std::vector<char> out(static_cast<std::size_t>(o.size), 'x');
  std::vector<char> in(static_cast<std::size_t>(o.size));
  long next = 0, in_flight = 0, established = 0, failures = 0;
  const long max_in_flight = 256;
  const std::uint64_t start = bench::now_ns();
  const std::uint64_t setup_deadline = start + 60ull * 1000000000ull;
  auto start_one = [&]() {
    C& c = conns[static_cast<std::size_t>(next)];
    c.fd = ::socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
      c.state = failed;
      ++failures;
      ++next;
      return;
    }
    bench::set_int(c.fd, IPPROTO_TCP, TCP_NODELAY, 1);
    int rc = ::connect(c.fd, addr.get(), addr.len);
    if (rc != 0 && errno != EINPROGRESS) {
      ::close(c.fd);
      c.fd = -1;
      c.state = failed;
      ++failures;
      ++next;
      return;
    }
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.u64 = static_cast<std::uint64_t>(next);
    epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
    ++in_flight;
    ++next;
  };
  auto fail = [&](C& c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
    ::close(c.fd);
    c.fd = -1;
    c.state = failed;
    ++failures;
    --in_flight;
  };
  std::vector<epoll_event> events(512);
  while (!g_stop && (next < o.count || in_flight > 0) && bench::now_ns() < setup_deadline) {
    while (next < o.count && in_flight < max_in_flight) start_one();
    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 100);
    for (int i = 0; i < n; ++i) {
      C& c = conns[events[static_cast<std::size_t>(i)].data.u64];
      if (c.state == connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || !write_all(c.fd, out.data(), out.size())) {
          fail(c);
          continue;
        }
        c.state = reading;
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = events[static_cast<std::size_t>(i)].data.u64;
        epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
      } else if (c.state == reading) {
        ssize_t r = ::recv(c.fd, in.data(), in.size(), 0);
        if (r <= 0) {
          if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
          fail(c);
          continue;
        }
        c.got += static_cast<int>(r);
        if (c.got >= o.size) {
          c.state = done;
          epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
          --in_flight;
          ++established;
        }
      }
    }
  }
  const double setup_s = static_cast<double>(bench::now_ns() - start) / 1e9;
  char line[256];
  std::snprintf(line, sizeof line, "{\"mode\":\"hold\",\"requested\":%ld,\"established\":%ld,\"failed\":%ld,\"setup_s\":%.3f}\n",
                o.count, established, failures + (o.count - next) + in_flight, setup_s);
  std::fputs(line, stdout);
  std::fflush(stdout);
  if (!o.ready_file.empty()) {
    std::string tmp = o.ready_file + ".tmp";
    if (FILE* f = std::fopen(tmp.c_str(), "w")) {
      std::fputs(line, f);
      std::fclose(f);
      std::rename(tmp.c_str(), o.ready_file.c_str());
    }
  }
  const std::uint64_t hold_deadline = bench::now_ns() + static_cast<std::uint64_t>(o.hold_seconds * 1e9);
  while (!g_stop && bench::now_ns() < hold_deadline) ::usleep(20000);
  for (auto& c : conns)
    if (c.fd >= 0) ::close(c.fd);
  return established == o.count ? 0 : 1;
}

void usage() {
  std::fprintf(stderr,
               "usage: bench_load conn|rtt|hold --addr IP --port P [--seconds S] [--max-ops N] [--threads T]\n"
               "                  [--size B] [--warmup N] [--count N] [--hold-seconds S] [--ready-file F]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage();
  Options o;
  o.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> const char* {
      if (i + 1 >= argc) usage();
      return argv[++i];
    };
    if (a == "--addr") o.addr = val();
    else if (a == "--port") o.port = std::atoi(val());
    else if (a == "--seconds") o.seconds = std::atof(val());
    else if (a == "--max-ops") o.max_ops = std::atol(val());
    else if (a == "--threads") o.threads = std::max(1, std::atoi(val()));
    else if (a == "--size") o.size = std::max(1, std::atoi(val()));
    else if (a == "--warmup") o.warmup = std::max(0, std::atoi(val()));
    else if (a == "--count") o.count = std::max(1L, std::atol(val()));
    else if (a == "--hold-seconds") o.hold_seconds = std::atof(val());
    else if (a == "--ready-file") o.ready_file = val();
    else usage();
  }
  // Hard bounds whatever the caller asks.
  o.seconds = std::clamp(o.seconds, 0.1, 600.0);
  o.hold_seconds = std::clamp(o.hold_seconds, 0.1, 1800.0);
  o.max_ops = std::clamp(o.max_ops, 1L, 50000000L);
  o.threads = std::min(o.threads, 64);
  bench::SockAddr addr;
  if (!bench::parse_addr(o.addr, o.port, addr) || o.port <= 0 || o.port > 65535) usage();
  const long limit = bench::raise_fd_limit();
  signal(SIGPIPE, SIG_IGN);
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  if (o.mode == "conn") return run_conn(o, addr);
  if (o.mode == "rtt") return run_rtt(o, addr);
  if (o.mode == "hold") {
    if (o.count + 16 > limit) {
      std::fprintf(stderr, "bench_load: --count %ld needs more descriptors than the limit %ld\n", o.count, limit);
      return 2;
    }
    return run_hold(o, addr);
  }
  usage();
}
