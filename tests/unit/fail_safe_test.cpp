// Issue 13, "fail safe and bounded", on loopback (port 0, no TPROXY): a fault injected on a
// worker costs one connection and nothing else; each limit resets the connection past it at once
// and counts it; the liveness check notices a loop that stops running handlers.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cstring>
#include <algorithm>
#include <sstream>
#include <filesystem>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "admin/admin_server.hpp"
#include "config/k8s_decoder.hpp"
#include "daemon/liveness.hpp"
#include "hbone/authority.hpp"
#include "hbone/connection_pool.hpp"
#include "identity/identity_manager.hpp"
#include "proxy/log_throttle.hpp"
#include "proxy/proxy_server.hpp"
#include "proxy/worker_load.hpp"
#include "support/test_pki.hpp"

namespace dsproxy {
namespace fail_safe_test {  // named: unity builds put several test files in one translation unit

using namespace std::chrono_literals;

int listen_v4(std::uint16_t& port, int backlog, in_addr_t address = htonl(INADDR_LOOPBACK)) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = address;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(::listen(fd, backlog), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

// A connected client with a 5 s receive timeout (no test may hang), or -1.
int client_v4(std::uint16_t port, in_addr_t address = htonl(INADDR_LOOPBACK)) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = address;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// What the peer did next: ECONNRESET for a reset, 0 for a clean close, EAGAIN when nothing came
// within `wait`, or 1 when bytes came (put into *got).
int next_event(int fd, std::chrono::milliseconds wait, std::string* got = nullptr) {
  timeval tv{static_cast<time_t>(wait.count() / 1000), static_cast<suseconds_t>(wait.count() % 1000 * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[256];
  const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  if (n > 0) {
    if (got) got->assign(buf, static_cast<std::size_t>(n));
    return 1;
  }
  return n == 0 ? 0 : errno;
}

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds within = 3s) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return condition();
}

// An upstream that echoes every connection's bytes back, each connection on a thread of its own,
// until the test ends.
class EchoServer {
 public:
  explicit EchoServer(in_addr_t address = htonl(INADDR_LOOPBACK)) : fd_(listen_v4(port_, 64, address)) {
    thread_ = std::thread([this] {
      for (;;) {
        const int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) return;  // shut down by the destructor
        if (stopping_) {
          ::close(c);
          return;
        }
        connections_.emplace_back([c] {
          char buf[512];
          for (;;) {
            const ssize_t n = ::recv(c, buf, sizeof buf, 0);
            if (n <= 0 || ::send(c, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) break;
          }
          ::close(c);
        });
      }
    });
  }
  ~EchoServer() {
    stopping_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
    for (auto& t : connections_) t.join();
  }
  std::uint16_t port() const { return port_; }

 private:
  std::uint16_t port_ = 0;
  int fd_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  std::vector<std::thread> connections_;
};

class FailSafeProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store.publish(snapshot::ClusterSnapshot::build(config::decode_objects(""), {"n1", "cluster.local"}));
    options.ports = {0, 0};
    options.transparent = false;
    options.upstream_mark = 0;  // SO_MARK needs CAP_NET_ADMIN; not what these tests are about
    options.workers = 1;        // the limits are per worker: one makes the counts exact
    options.connect_timeout = 3s;
  }
  // One --forward listener on 127.0.0.1 towards `target_port`; returns its port.
  std::uint16_t start(std::uint16_t target_port) {
    options.forwards = {{*net::SocketAddress::parse("127.0.0.1:0", true),
                         *net::SocketAddress::parse("127.0.0.1:" + std::to_string(target_port))}};
    server.emplace(options, store, stats);
    server->start();
    return server->forwards().front().listen.port;
  }
  void TearDown() override {
    if (server) server->drain(2s);
  }

  snapshot::SnapshotStore store;
  proxy::ProxyStats stats;
  proxy::ProxyOptions options;
  std::optional<proxy::ProxyServer> server;
};

TEST_F(FailSafeProxyTest, AFaultInARelayCallbackResetsThatConnectionOnlyAndLeaksNothing) {
  EchoServer echo;
  options.test_faults.relay_every = 2;  // the 2nd and 4th connections' relays throw bad_alloc
  const auto port = start(echo.port());
  for (int i = 1; i <= 4; ++i) {
    const int fd = client_v4(port);
    ASSERT_GE(fd, 0);
    std::string got;
    // The relay of a faulted connection throws as it starts, so its reset may beat our send.
    const int event = ::send(fd, "ping", 4, MSG_NOSIGNAL) == 4 ? next_event(fd, 3s, &got) : errno;
    if (i % 2 == 0) {
      EXPECT_TRUE(event == ECONNRESET || event == EPIPE)
          << "connection " << i << ": event " << event << ", got '" << got << "': a fault must reset, never FIN";
    } else {
      EXPECT_EQ(event, 1) << "connection " << i;
      EXPECT_EQ(got, "ping") << "connection " << i;
    }
    ::close(fd);
  }
  EXPECT_TRUE(eventually([&] { return stats.worker_faults.load() == 2; })) << stats.worker_faults.load();
  // The faulted relays ended like any other: nothing stays counted as open, so a drain would not
  // wait for them.
  EXPECT_TRUE(eventually([&] { return stats.active_connections.load() == 0; })) << stats.active_connections.load();
  EXPECT_EQ(server->worker_loads().at(0).connections, 0u);
  // The worker goes on.
  const int fd = client_v4(port);
  ASSERT_EQ(::send(fd, "after", 5, MSG_NOSIGNAL), 5);
  std::string got;
  EXPECT_EQ(next_event(fd, 3s, &got), 1);
  EXPECT_EQ(got, "after");
  ::close(fd);
}

TEST_F(FailSafeProxyTest, AFaultWhileRoutingResetsTheClientAndTheWorkerGoesOn) {
  EchoServer echo;
  options.test_faults.connection_every = 2;
  const auto port = start(echo.port());
  for (int i = 1; i <= 4; ++i) {
    const int fd = client_v4(port);
    ASSERT_GE(fd, 0);
    std::string got;
    const int event = ::send(fd, "ping", 4, MSG_NOSIGNAL) == 4 ? next_event(fd, 3s, &got) : errno;
    if (i % 2 == 0)
      EXPECT_TRUE(event == ECONNRESET || event == EPIPE) << "connection " << i << ": event " << event;
    else
      EXPECT_EQ(got, "ping") << "connection " << i;
    ::close(fd);
  }
  EXPECT_EQ(stats.worker_faults.load(), 2u);
  EXPECT_TRUE(eventually([&] { return stats.active_connections.load() == 0; }));
  EXPECT_TRUE(eventually([&] { return server->worker_loads().at(0).connecting == 0; }));
}

TEST_F(FailSafeProxyTest, PastTheConnectionsPerWorkerLimitANewConnectionIsResetAtOnce) {
  EchoServer echo;
  options.limits.connections_per_worker = 2;
  const auto port = start(echo.port());
  const int a = client_v4(port), b = client_v4(port);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  ASSERT_TRUE(eventually([&] { return server->worker_loads().at(0).connections == 2; }));
  const auto started = std::chrono::steady_clock::now();
  const int c = client_v4(port);
  if (c >= 0) {
    EXPECT_EQ(next_event(c, 3s), ECONNRESET) << "the third connection must be reset";
    ::close(c);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - started, 1s) << "refused quickly, not queued";
  EXPECT_EQ(stats.rejected_worker_connection_limit.load(), 1u);
  // The two held connections are untouched, and a place that frees up is usable again.
  ASSERT_EQ(::send(a, "still", 5, MSG_NOSIGNAL), 5);
  std::string got;
  EXPECT_EQ(next_event(a, 3s, &got), 1);
  EXPECT_EQ(got, "still");
  ::close(b);
  ASSERT_TRUE(eventually([&] { return server->worker_loads().at(0).connections == 1; }));
  const int d = client_v4(port);
  ASSERT_EQ(::send(d, "again", 5, MSG_NOSIGNAL), 5);
  EXPECT_EQ(next_event(d, 3s, &got), 1);
  EXPECT_EQ(got, "again");
  EXPECT_EQ(stats.rejected_worker_connection_limit.load(), 1u);
  ::close(a);
  ::close(d);
}

TEST_F(FailSafeProxyTest, PastThePendingConnectLimitANewConnectionIsResetAtOnce) {
  // An upstream whose accept queue is full: the kernel drops further SYNs, so a connect to it
  // stays pending (SYN retransmits at 1 s, 3 s, ...) until the proxy's connect timeout.
  std::uint16_t stuck_port = 0;
  const int stuck = listen_v4(stuck_port, 0);
  std::vector<int> fillers;
  for (int i = 0; i < 4; ++i) {
    const int f = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(stuck_port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::connect(f, reinterpret_cast<sockaddr*>(&a), sizeof a);
    fillers.push_back(f);
  }
  std::this_thread::sleep_for(50ms);
  options.limits.pending_connects_per_worker = 1;
  const auto port = start(stuck_port);
  const int a = client_v4(port);
  ASSERT_GE(a, 0);
  ASSERT_TRUE(eventually([&] { return server->worker_loads().at(0).connecting == 1; }))
      << "the first connection should be waiting for its upstream";
  const auto started = std::chrono::steady_clock::now();
  const int b = client_v4(port);
  if (b >= 0) {
    EXPECT_EQ(next_event(b, 2s), ECONNRESET);
    ::close(b);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - started, 1s) << "refused quickly, not queued behind the first";
  EXPECT_EQ(stats.rejected_pending_connect_limit.load(), 1u);
  ::close(a);
  for (int f : fillers) ::close(f);
  ::close(stuck);
}

// ---- the worker limits themselves ------------------------------------------------------------

TEST(WorkerLoadLimits, TheFirstLimitReachedInTheOrderAskedIsTheOneReported) {
  proxy::ProxyLimits limits;
  limits.connections_per_worker = 3;
  limits.pending_connects_per_worker = 2;
  limits.pending_handshakes_per_worker = 1;
  proxy::WorkerLoad load;
  using L = proxy::WorkerLimit;
  EXPECT_EQ(load.full(limits, {L::connections, L::pending_connects, L::pending_handshakes}), std::nullopt);
  load.connections = 2, load.connecting = 1;  // one below each bound: room for one more
  EXPECT_EQ(load.full(limits, {L::connections, L::pending_connects}), std::nullopt);
  load.connecting = 2;  // at the bound: full (the bound is how many it may hold)
  EXPECT_EQ(load.full(limits, {L::connections, L::pending_connects}), L::pending_connects);
  load.connections = 3;
  EXPECT_EQ(load.full(limits, {L::connections, L::pending_connects}), L::connections);
  EXPECT_EQ(load.full(limits, {L::pending_connects, L::connections}), L::pending_connects);
  EXPECT_EQ(load.full(limits, {L::pending_handshakes}), std::nullopt);  // only what is asked is checked
  load.handshaking = 1;
  EXPECT_EQ(load.full(limits, {L::pending_handshakes}), L::pending_handshakes);
  EXPECT_EQ(load.full(limits, {}), std::nullopt);
}

TEST(WorkerLoadLimits, ARefusalIsCountedInItsLimitsCounterAndAFloodIsOneLogLine) {
  std::ostringstream log;
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(
      std::make_shared<spdlog::logger>("capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(log)));
  proxy::ProxyLimits limits;
  limits.connections_per_worker = 7;
  proxy::ProxyStats stats;
  proxy::LogThrottle throttle(std::chrono::hours(1));  // one line, then quiet for the whole test
  using L = proxy::WorkerLimit;
  const auto from = boost::asio::ip::make_address("fd00::5");
  proxy::count_refusal(L::connections, limits, stats, &throttle, "new connections are reset", from);
  proxy::count_refusal(L::connections, limits, stats, &throttle, "new connections are reset");
  proxy::count_refusal(L::pending_connects, limits, stats, &throttle, "new connections are reset");
  proxy::count_refusal(L::pending_handshakes, limits, stats, nullptr, "not logged at all");
  spdlog::set_default_logger(previous);
  EXPECT_EQ(stats.rejected_worker_connection_limit.load(), 2u);
  EXPECT_EQ(stats.rejected_pending_connect_limit.load(), 1u);
  EXPECT_EQ(stats.rejected_pending_handshake_limit.load(), 1u);
  const std::string text = log.str();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
  EXPECT_NE(text.find("a worker holds 7 connections (--max-connections-per-worker): new connections are reset, "
                      "this one from fd00::5 (0 similar event(s) not logged; see rejected_worker_connection_limit)"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("not logged at all"), std::string::npos);
}

// ---- admin/readiness sessions ----------------------------------------------------------------

TEST(AdminSessionLimit, PastTheLimitANewSessionIsResetAtOnceAndCounted) {
  boost::asio::io_context io;
  admin::AdminServer server(io.get_executor());
  auto limit = std::make_shared<admin::SessionLimit>(2);
  const auto port = server.listen(
      *net::SocketAddress::parse("127.0.0.1:0", true),
      [](std::string_view) { return admin::AdminResponse{200, "text/plain", "ok\n"}; }, limit);
  std::thread thread([&] { io.run_for(10s); });
  // Two clients that connect and say nothing hold both places (for up to 10 s each).
  const int a = client_v4(port), b = client_v4(port);
  ASSERT_TRUE(eventually([&] { return limit->active.load() == 2; }));
  const int c = client_v4(port);
  if (c >= 0) {
    EXPECT_EQ(next_event(c, 2s), ECONNRESET);
    ::close(c);
  }
  EXPECT_EQ(limit->refused.load(), 1u);
  ::close(a);
  ASSERT_TRUE(eventually([&] { return limit->active.load() == 1; }));
  const int d = client_v4(port);
  const std::string request = "GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(::send(d, request.data(), request.size(), MSG_NOSIGNAL), static_cast<ssize_t>(request.size()));
  std::string got;
  EXPECT_EQ(next_event(d, 3s, &got), 1);
  EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  EXPECT_EQ(limit->refused.load(), 1u);
  ::close(b);
  ::close(d);
  io.stop();
  thread.join();
}

// ---- liveness --------------------------------------------------------------------------------

TEST(LivenessMonitor, ALoopThatStopsRunningHandlersFailsTheCheckAndOneThatRunsPasses) {
  boost::asio::io_context front, healthy, stuck;
  daemon::LivenessMonitor monitor(front.get_executor(), 20ms);
  monitor.watch("worker 0", healthy.get_executor(), 200ms);
  monitor.watch("worker 1", stuck.get_executor(), 200ms);
  auto work = boost::asio::make_work_guard(healthy);
  std::thread healthy_thread([&] { healthy.run(); });
  // `stuck` never runs: its heartbeats wait in its queue, as behind a handler that never returns.
  monitor.start();
  front.run_for(100ms);
  EXPECT_TRUE(monitor.check().live) << "within the bound nothing is stuck yet: " << monitor.check().detail;
  front.run_for(300ms);
  const auto verdict = monitor.check();
  EXPECT_FALSE(verdict.live);
  EXPECT_NE(verdict.detail.find("worker 1 has not run a heartbeat"), std::string::npos) << verdict.detail;
  EXPECT_EQ(verdict.detail.find("worker 0"), std::string::npos) << verdict.detail;
  // Only one heartbeat waits on the stuck loop, however long it stays stuck.
  EXPECT_EQ(stuck.poll(), 1u);
  // Once it runs again, it is live again at the next heartbeat.
  front.run_for(100ms);
  stuck.restart();  // poll() stopped it when it ran out of work
  stuck.poll();
  EXPECT_TRUE(monitor.check().live) << monitor.check().detail;
  monitor.stop();
  work.reset();
  healthy.stop();
  healthy_thread.join();
}

TEST_F(FailSafeProxyTest, AStalledWorkerIsSeenByTheLivenessCheck) {
  EchoServer echo;
  options.test_faults.stall_worker_after = 100ms;
  start(echo.port());
  boost::asio::io_context front;
  daemon::LivenessMonitor monitor(front.get_executor(), 20ms);
  for (auto& executor : server->worker_executors()) monitor.watch("worker 0", executor, 300ms);
  monitor.start();
  front.run_for(50ms);
  EXPECT_TRUE(monitor.check().live) << monitor.check().detail;
  front.run_for(800ms);
  EXPECT_FALSE(monitor.check().live) << "worker 0 stalled 100 ms after start";
  monitor.stop();
  server->stop();  // the stalled handler gives way to stop()
}

// ---- HBONE (port 15008) under the same limits ----------------------------------------------------
// A pod of this node in the mesh at 10.244.0.5, its certificate from a local-issuer
// IdentityManager, its app an echo server; the test's HBONE client is the transport's own pool
// with a certificate of the same identity (the `forwarded` client address names the pod
// itself). A pod address must be a global one (the snapshot ignores loopback pod addresses), so
// the test thread moves to a network namespace of its own, with 10.244.0.5 on its loopback
// device; every thread the test starts (workers, client, echo) is born there, and the namespace
// goes with them. Needs root (CAP_SYS_ADMIN) and iproute2; without them the test fails.
constexpr const char* kPodIp = "10.244.0.5";
in_addr_t pod_address() { return ::inet_addr(kPodIp); }

class MeshFailSafeTest : public FailSafeProxyTest {
 protected:
  void SetUp() override {
    original_netns_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(original_netns_, 0);
    ASSERT_EQ(::unshare(CLONE_NEWNET), 0) << "needs root: " << std::strerror(errno);
    moved_ = true;
    ASSERT_EQ(std::system((std::string("ip link set lo up && ip addr add ") + kPodIp + "/32 dev lo").c_str()), 0);
    FailSafeProxyTest::SetUp();
    store.publish(snapshot::ClusterSnapshot::build(config::decode_objects(R"(
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default}
spec: {nodeName: n1, serviceAccountName: sleep}
status: {podIPs: [{ip: 10.244.0.5}]}
)", "test"), {"n1", "cluster.local"}));
    options.bind_v4 = "0.0.0.0";
    options.bind_v6 = "";
    std::filesystem::create_directories(dir_);
    const auto [cert, key] = pki_.write_ca(dir_);
    identity::IdentityOptions o;
    o.ca_cert = cert;
    o.ca_key = key;
    identities_.emplace(o, [] { return std::set<identity::SpiffeId>{*identity::SpiffeId::make("cluster.local", "default", "sleep")}; });
    identities_->refresh_now();
    client_ctx_ = pki_.contexts(pki_.leaf(pki_.id("default", "sleep")))->client();
    hbone::ConnectionPool::Hooks hooks;
    hooks.context_for = [this](const hbone::PoolKey&) { return client_ctx_; };
    hooks.verify = [](const hbone::PoolKey&, SSL*) { return true; };
    pool_ = hbone::ConnectionPool::create(io_.get_executor(), {}, std::move(hooks));
    io_thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    if (io_thread_.joinable()) {
      on_io([this] {
        streams_.clear();
        pool_->close();
      });
      work_.reset();
      io_thread_.join();
    }
    FailSafeProxyTest::TearDown();
    server.reset();  // before the identities it uses
    std::filesystem::remove_all(dir_);
    // Back to the namespace the other tests run in (this thread's namespace only ever changed).
    if (moved_) EXPECT_EQ(::setns(original_netns_, CLONE_NEWNET), 0);
    if (original_netns_ >= 0) ::close(original_netns_);
  }
  std::uint16_t start_mesh(std::chrono::milliseconds pool_idle = std::chrono::minutes(5)) {
    proxy::MeshOptions mesh;
    mesh.identities = &*identities_;
    mesh.hbone_port = 0;
    mesh.pool.idle_timeout = pool_idle;
    server.emplace(options, store, stats, mesh);
    server->start();
    return server->hbone_port();
  }
  template <typename F>
  auto on_io(F f) -> decltype(f()) {
    std::packaged_task<decltype(f())()> task(std::move(f));
    auto future = task.get_future();
    boost::asio::post(io_, [&task] { task(); });
    if (future.wait_for(10s) != std::future_status::ready) throw std::runtime_error("io thread stuck");
    return future.get();
  }
  // A CONNECT to the pod's echo port through the pool; the HTTP status (0: none). A stream
  // answered 200 is kept open (held on the io thread) until the test drops it.
  int open_tunnel(std::uint16_t hbone_port, std::uint16_t echo_port) {
    auto promise = std::make_shared<std::promise<int>>();
    auto future = promise->get_future();
    const hbone::PoolKey key{"spiffe://cluster.local/ns/default/sa/sleep", "spiffe://cluster.local/ns/default/sa/sleep",
                             {boost::asio::ip::make_address(kPodIp), hbone_port}};
    const std::string authority = std::string(kPodIp) + ":" + std::to_string(echo_port);
    hbone::Headers headers{{"forwarded", hbone::format_forwarded({boost::asio::ip::make_address(kPodIp), 40000})}};
    boost::asio::post(io_, [this, key, authority, headers, promise] {
      pool_->open_stream(key, authority, headers,
                         [this, promise](boost::system::error_code, int status, std::shared_ptr<hbone::Stream> s) {
                           if (s) streams_.push_back(std::move(s));
                           promise->set_value(status);
                         });
    });
    if (future.wait_for(10s) != std::future_status::ready) return -1;
    return future.get();
  }
  std::uint64_t worker_connections() { return server->worker_loads().at(0).connections; }

  int original_netns_ = -1;
  bool moved_ = false;
  std::filesystem::path dir_ = std::filesystem::temp_directory_path() /
                               ("dsproxy-failsafe-mesh-" + std::to_string(::getpid()));
  dsproxy::testing::TestPki pki_;
  std::optional<identity::IdentityManager> identities_;
  std::shared_ptr<SSL_CTX> client_ctx_;
  boost::asio::io_context io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_{io_.get_executor()};
  std::thread io_thread_;
  std::shared_ptr<hbone::ConnectionPool> pool_;
  std::vector<std::shared_ptr<hbone::Stream>> streams_;  // io thread only
};

TEST_F(MeshFailSafeTest, HboneConnectionsHandshakesAndTunnelsCountAgainstTheWorkerLimits) {
  EchoServer echo(pod_address());
  options.limits.connections_per_worker = 4;
  options.limits.pending_handshakes_per_worker = 2;
  const auto port = start_mesh();
  // Two connections that never send a ClientHello hold the two handshake slots...
  const int silent1 = client_v4(port, pod_address()), silent2 = client_v4(port, pod_address());
  ASSERT_GE(silent1, 0);
  ASSERT_GE(silent2, 0);
  ASSERT_TRUE(eventually([&] { return stats.hbone_accepted.load() == 2; })) << stats.hbone_accepted.load();
  EXPECT_EQ(worker_connections(), 2u);  // ... and count as connections
  // ... so a third is reset at once, and counted.
  const int third = client_v4(port, pod_address());
  EXPECT_EQ(third < 0 ? ECONNRESET : next_event(third, 3s), ECONNRESET);
  if (third >= 0) ::close(third);
  EXPECT_EQ(stats.rejected_pending_handshake_limit.load(), 1u);
  EXPECT_EQ(stats.rejected_worker_connection_limit.load(), 0u);
  ::close(silent1);
  ::close(silent2);
  ASSERT_TRUE(eventually([&] { return worker_connections() == 0; })) << worker_connections();

  // One HBONE connection (1) carrying three tunnels (each holds an upstream socket: 2, 3, 4).
  for (int i = 0; i < 3; ++i) ASSERT_EQ(open_tunnel(port, echo.port()), 200) << "tunnel " << i;
  EXPECT_EQ(worker_connections(), 4u);
  // The worker is full: a fourth tunnel on the same connection is answered 503 and counted...
  EXPECT_EQ(open_tunnel(port, echo.port()), 503);
  EXPECT_EQ(stats.rejected_worker_connection_limit.load(), 1u);
  // ... and so is a new HBONE connection, reset at accept.
  const int more = client_v4(port, pod_address());
  EXPECT_EQ(more < 0 ? ECONNRESET : next_event(more, 3s), ECONNRESET);
  if (more >= 0) ::close(more);
  EXPECT_EQ(stats.rejected_worker_connection_limit.load(), 2u);
  // Tunnels and connections give their share back when they end.
  on_io([this] {
    for (auto& s : streams_) s->reset();
    streams_.clear();
  });
  EXPECT_TRUE(eventually([&] { return worker_connections() == 1; })) << worker_connections();
  EXPECT_EQ(open_tunnel(port, echo.port()), 200);
  on_io([this] { pool_->close(); });
  EXPECT_TRUE(eventually([&] { return worker_connections() == 0; })) << worker_connections();
}

// The idle timeouts as the proxy wires them: a tunnel that moves no byte for --idle-timeout-s is
// reset (and counted as an idle timeout), then the HBONE connection, left without a stream, is
// sent GOAWAY and closed after the same time (our client's pool would wait 5 minutes).
TEST_F(MeshFailSafeTest, SilentTunnelAndThenItsIdleConnectionAreClosed) {
  EchoServer echo(pod_address());
  options.idle_timeout = 300ms;
  const auto port = start_mesh(100ms);  // the server waits max(idle timeout, pool idle) = 300 ms
  ASSERT_EQ(open_tunnel(port, echo.port()), 200);
  auto ended = std::make_shared<std::promise<boost::system::error_code>>();
  auto result = ended->get_future();
  on_io([this, ended] {
    auto buffer = std::make_shared<std::array<char, 16>>();
    streams_.front()->async_read_some(boost::asio::buffer(*buffer),
                                      [ended, buffer](boost::system::error_code ec, std::size_t) { ended->set_value(ec); });
  });
  ASSERT_EQ(result.wait_for(10s), std::future_status::ready) << "the silent tunnel was never reset";
  EXPECT_EQ(result.get(), boost::asio::error::connection_reset);
  EXPECT_TRUE(eventually([&] { return stats.idle_timeouts.load() == 1; })) << stats.idle_timeouts.load();
  on_io([this] { streams_.clear(); });
  EXPECT_TRUE(eventually([&] { return on_io([this] { return pool_->connection_count(); }) == 0; }, 10s))
      << "the server never closed the idle connection";
  EXPECT_TRUE(eventually([&] { return worker_connections() == 0; })) << worker_connections();
}

}  // namespace fail_safe_test
}  // namespace dsproxy
