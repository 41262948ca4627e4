// The connector on loopback: real sockets racing per the scheduler's plan. A port with nothing
// listening refuses; a listener whose accept queue is full silently drops SYNs (a black hole).

#include "proxy/upstream_connector.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <cstring>
#include <optional>

#include "fd_limit.hpp"

namespace dsproxy::proxy {
namespace upstream_connector_test {  // named: unity builds put several test files in one translation unit

using namespace std::chrono_literals;

int open_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;
}

using test::FdLimit;  // tests/unit/fd_limit.hpp

// A loopback listener; with `black_hole`, its accept queue is filled so further SYNs are dropped.
struct Listener {
  int fd = -1;
  int filler = -1;
  std::uint16_t port = 0;
  Listener(int family, bool black_hole) {
    fd = ::socket(family, SOCK_STREAM, 0);
    sockaddr_storage ss{};
    socklen_t len;
    if (family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      a->sin_family = AF_INET;
      a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      len = sizeof *a;
    } else {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      a->sin6_family = AF_INET6;
      a->sin6_addr = in6addr_loopback;
      len = sizeof *a;
    }
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&ss), len), 0);
    EXPECT_EQ(::listen(fd, 0), 0);  // backlog 0: one queued connection fills it
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    port = ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                   : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    if (black_hole) {
      filler = ::socket(family, SOCK_STREAM, 0);
      EXPECT_EQ(::connect(filler, reinterpret_cast<sockaddr*>(&ss), len), 0);
    }
  }
  ~Listener() {
    if (filler >= 0) ::close(filler);
    ::close(fd);
  }
};

// A port nothing listens on: bind to get one, then close.
std::uint16_t closed_port(int family) {
  Listener l(family, false);
  return l.port;
}

net::SocketAddress v4(std::uint16_t port) { return {*net::IpAddress::parse("127.0.0.1"), port}; }
net::SocketAddress v6(std::uint16_t port) { return {*net::IpAddress::parse("::1"), port}; }

struct Run {
  ConnectOutcome outcome;
  std::vector<std::pair<net::SocketAddress, AttemptResult>> reported;
  std::chrono::milliseconds elapsed{};
  bool connected = false;
};

// `spare_fds` >= 0 runs the race with the descriptor limit at that many free descriptors (the
// io_context and the listeners are set up before).
Run race(std::vector<BackendTargets> backends, ConnectSchedulerOptions options, int spare_fds = -1) {
  boost::asio::io_context io;
  Run run;
  std::size_t next = 0;
  ConnectScheduler scheduler(options, [&]() -> std::optional<BackendTargets> {
    if (next >= backends.size()) return std::nullopt;
    return backends[next++];
  });
  tcp::socket upstream(io);
  // Named, not temporaries: connect_upstream is a coroutine that keeps its arguments by
  // reference and first runs inside io.run_for, after temporaries would have died (ASan:
  // stack-use-after-scope).
  const net::UpstreamSocketOptions socket_options{};
  const AttemptObserver observer = [&](const ConnectScheduler::Attempt& a, AttemptResult r) {
    run.reported.emplace_back(a.address, r);
  };
  const auto started = std::chrono::steady_clock::now();
  auto future = boost::asio::co_spawn(io, connect_upstream(upstream, scheduler, socket_options, observer),
                                      boost::asio::use_future);
  {
    std::optional<FdLimit> limit;
    if (spare_fds >= 0) {
      limit.emplace(spare_fds);
      EXPECT_TRUE(limit->ok());
    }
    io.run_for(10s);
  }
  run.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
  EXPECT_EQ(future.wait_for(0s), std::future_status::ready);
  run.outcome = future.get();
  run.connected = upstream.is_open();
  return run;
}

TEST(UpstreamConnector, RefusedPreferredFamilyStartsTheOtherAtOnce) {
  Listener good(AF_INET, false);
  const auto fds = open_fds();
  // A 2 s attempt delay that must not be waited out: the refusal starts IPv4 immediately.
  auto r = race({{{v6(closed_port(AF_INET6)), v4(good.port)}, 0}}, {2000ms, 10s, 3});
  EXPECT_TRUE(r.connected);
  EXPECT_EQ(r.outcome.winner, 1);
  EXPECT_LT(r.elapsed, 1500ms);
  ASSERT_EQ(r.reported.size(), 2u);
  EXPECT_EQ(r.reported[0].second, AttemptResult::failed);
  EXPECT_EQ(r.reported[1].second, AttemptResult::connected);
  EXPECT_EQ(open_fds(), fds) << "attempt sockets leaked";
}

TEST(UpstreamConnector, BlackHoledPreferredFamilyLosesAfterTheAttemptDelay) {
  Listener hole(AF_INET6, true);
  Listener good(AF_INET, false);
  const auto fds = open_fds();
  auto r = race({{{v6(hole.port), v4(good.port)}, 0}}, {100ms, 10s, 3});
  EXPECT_TRUE(r.connected);
  EXPECT_EQ(r.outcome.winner, 1);
  EXPECT_GE(r.elapsed, 100ms);
  // The black-holed loser was cancelled, not reported as the endpoint's failure.
  ASSERT_EQ(r.reported.size(), 1u);
  EXPECT_EQ(r.reported[0].first, v4(good.port));
  EXPECT_EQ(open_fds(), fds) << "the cancelled attempt's socket leaked";
}

TEST(UpstreamConnector, RetriesNextBackendAndReportsFailures) {
  Listener good(AF_INET, false);
  auto r = race({{{v4(closed_port(AF_INET))}, 0}, {{v4(good.port)}, 1}}, {250ms, 10s, 3});
  EXPECT_TRUE(r.connected);
  EXPECT_EQ(r.outcome.winner, 1);
  ASSERT_EQ(r.reported.size(), 2u);
  EXPECT_EQ(r.reported[0].second, AttemptResult::failed);
  EXPECT_EQ(r.reported[1].second, AttemptResult::connected);
}

TEST(UpstreamConnector, AllRefusedFailsWithTheLastError) {
  const auto fds = open_fds();
  auto r = race({{{v6(closed_port(AF_INET6)), v4(closed_port(AF_INET))}, 0}}, {250ms, 10s, 1});
  EXPECT_FALSE(r.connected);
  EXPECT_EQ(r.outcome.winner, -1);
  EXPECT_EQ(r.outcome.error, std::errc::connection_refused);
  EXPECT_EQ(open_fds(), fds);
}

TEST(UpstreamConnector, BlackHoleTimesOutWithinTheBudget) {
  Listener hole(AF_INET, true);
  auto r = race({{{v4(hole.port)}, 0}}, {250ms, 300ms, 1});
  EXPECT_FALSE(r.connected);
  EXPECT_EQ(r.outcome.error, std::errc::timed_out);
  ASSERT_EQ(r.reported.size(), 1u) << "an abandoned attempt counts against its endpoint";
  EXPECT_EQ(r.reported[0].second, AttemptResult::failed);
}

TEST(UpstreamConnector, IsLocalErrorSortsTheNodesTroubleFromTheEndpoints) {
  for (int e : {EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL, EADDRINUSE})
    EXPECT_TRUE(is_local_error({e, std::generic_category()})) << std::strerror(e);
  for (int e : {EMFILE, ENFILE, ENOBUFS, ENOMEM}) EXPECT_TRUE(is_exhaustion_error({e, std::generic_category()}));
  for (int e : {EADDRNOTAVAIL, EADDRINUSE, ECONNREFUSED}) EXPECT_FALSE(is_exhaustion_error({e, std::generic_category()}));
  for (int e : {ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH, ECONNRESET, EPERM})
    EXPECT_FALSE(is_local_error({e, std::generic_category()})) << std::strerror(e);
  EXPECT_FALSE(is_local_error({}));
}

TEST(UpstreamConnector, DescriptorExhaustionIsTheNodesErrorNotTheEndpoints) {
  // Both families of a healthy backend, and a second healthy backend: with no descriptor left
  // the first attempt fails at socket(). It is reported as a local error, never as a failure of
  // its endpoint, and the connect gives up there: every other attempt would fail the same way.
  Listener good4(AF_INET, false);
  Listener good6(AF_INET6, false);
  auto r = race({{{v6(good6.port), v4(good4.port)}, 0}, {{v4(good4.port)}, 1}}, {250ms, 10s, 3}, 0);
  EXPECT_FALSE(r.connected);
  EXPECT_EQ(r.outcome.error, std::errc::too_many_files_open);
  EXPECT_TRUE(r.outcome.local_error);
  ASSERT_EQ(r.reported.size(), 1u);
  EXPECT_EQ(r.reported[0].first, v6(good6.port));
  EXPECT_EQ(r.reported[0].second, AttemptResult::local_error);
  EXPECT_LT(r.elapsed, 1s) << "a local failure must not wait out the attempt delay or the timeout";
  // With descriptors back, the same backend connects and is reported healthy.
  auto ok = race({{{v4(good4.port)}, 0}}, {250ms, 10s, 3});
  EXPECT_TRUE(ok.connected);
  ASSERT_EQ(ok.reported.size(), 1u);
  EXPECT_EQ(ok.reported[0].second, AttemptResult::connected);
}

}  // namespace upstream_connector_test
}  // namespace dsproxy::proxy
