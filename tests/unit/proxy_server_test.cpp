// The proxy server on loopback (port 0, no TPROXY): listeners on both families, the loop guard
// for connections made straight to a capture port, and drain.

#include "proxy/proxy_server.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include <boost/asio/io_context.hpp>

#include "config/k8s_decoder.hpp"
#include "net/io/transparent_socket.hpp"
#include "fd_limit.hpp"

namespace dsproxy::proxy {
namespace {

// Connects, then reads until the proxy ends the connection; returns the errno that ended the read
// (ECONNRESET for a reset, 0 for a clean close).
int connect_and_wait_for_close(int family, std::uint16_t port) {
  int fd = ::socket(family, SOCK_STREAM, 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  int rc;
  if (family == AF_INET) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  } else {
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    a.sin6_addr = in6addr_loopback;
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  // A reset the proxy sends at once can be processed before this thread wakes from connect(),
  // which then reports it itself: the same outcome.
  if (rc != 0) {
    const int err = errno;
    ::close(fd);
    return err;
  }
  char b;
  ssize_t n = ::recv(fd, &b, 1, 0);
  int err = n < 0 ? errno : 0;
  ::close(fd);
  return err;
}

using test::FdLimit;  // tests/unit/fd_limit.hpp

// A client socket with a receive timeout, made before descriptors run out.
int timed_client(int family, int timeout_s) {
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{timeout_s, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}
int connect_loopback_v4(int fd, std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
}
// What ended the connection: ECONNRESET for a reset, 0 for a close, EAGAIN when nothing came.
int wait_for_close(int fd) {
  char b;
  const ssize_t n = ::recv(fd, &b, 1, 0);
  return n < 0 ? errno : 0;
}

class ProxyServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store.publish(snapshot::ClusterSnapshot::build(config::decode_objects(""), {"n1", "cluster.local"}));
    options.ports = {0, 0};  // hermetic: the kernel picks free ports
    options.transparent = false;
    options.workers = 2;
  }
  snapshot::SnapshotStore store;
  ProxyStats stats;
  ProxyOptions options;
};

TEST_F(ProxyServerTest, DirectConnectionToCapturePortIsResetNotLooped) {
  ProxyServer server(options, store, stats);
  server.start();
  const auto ports = server.bound_ports();
  ASSERT_NE(ports.outbound, 0);
  ASSERT_NE(ports.inbound, 0);
  EXPECT_EQ(connect_and_wait_for_close(AF_INET, ports.outbound), ECONNRESET);
  EXPECT_EQ(connect_and_wait_for_close(AF_INET6, ports.outbound), ECONNRESET);
  EXPECT_EQ(connect_and_wait_for_close(AF_INET, ports.inbound), ECONNRESET);
  EXPECT_EQ(connect_and_wait_for_close(AF_INET6, ports.inbound), ECONNRESET);
  EXPECT_EQ(stats.rejected_loop.load(), 4u);
  EXPECT_EQ(stats.outbound_accepted.load(), 2u);
  EXPECT_EQ(stats.inbound_accepted.load(), 2u);
  server.drain(std::chrono::seconds(1));
  EXPECT_EQ(stats.active_connections.load(), 0u);
}

// One IPv4 Service whose only endpoint is a documentation address: the tests below never get as
// far as sending it a SYN (socket() fails first), and it must still not be held responsible.
constexpr const char* kWebService = R"(
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ipFamilies: [IPv4]
  clusterIPs: [10.96.0.20]
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: n1}
status:
  podIPs: [{ip: 192.0.2.10}]
  conditions: [{type: Ready, status: "True"}]
)";

TEST_F(ProxyServerTest, UpstreamDescriptorExhaustionNeverEjectsTheEndpoint) {
  store.publish(snapshot::ClusterSnapshot::build(config::decode_objects(kWebService), {"n1", "cluster.local"}));
  const auto vip = *net::SocketAddress::parse("10.96.0.20:80");
  options.workers = 1;
  options.upstream_mark = 0;
  options.forwards = {{*net::SocketAddress::parse("127.0.0.1:0", true), vip}};
  ProxyServer server(options, store, stats);
  server.start();
  const auto port = server.forwards().at(0).listen.port;
  // More than the consecutive failures that eject (5).
  constexpr int kConnections = 8;
  std::vector<int> clients;
  for (int i = 0; i < kConnections; ++i) clients.push_back(timed_client(AF_INET, 5));
  std::vector<int> ends;
  {
    FdLimit limit(1);  // room for the accepted socket, none for its upstream socket
    ASSERT_TRUE(limit.ok());
    for (int fd : clients) {
      EXPECT_EQ(connect_loopback_v4(fd, port), 0) << std::strerror(errno);
      ends.push_back(wait_for_close(fd));
    }
  }
  for (int fd : clients) ::close(fd);
  for (int e : ends) EXPECT_EQ(e, ECONNRESET) << "the client must be reset at once, not left waiting";
  EXPECT_EQ(stats.outlier_ejections.load(), 0u) << "EMFILE on our own socket ejected a healthy endpoint";
  EXPECT_GE(stats.local_errors.load(), static_cast<std::uint64_t>(kConnections));
  EXPECT_EQ(stats.upstream_connect_failed.load(), 0u);
  const auto snapshot = store.current();
  const auto* cluster = snapshot->find_cluster(vip);
  ASSERT_NE(cluster, nullptr);
  ASSERT_EQ(cluster->endpoints.size(), 1u);
  // The workers synced the state index themselves (nobody called sync()): the lazy path works.
  const auto* states = server.endpoint_states().current()->find(*cluster);
  ASSERT_NE(states, nullptr);
  EXPECT_EQ((*states)[0].consecutive_failures.load(), 0u);
  EXPECT_EQ((*states)[0].ejections.load(), 0u);
  EXPECT_GE((*states)[0].picks.load(), static_cast<std::uint64_t>(kConnections));
  server.drain(std::chrono::seconds(1));
}

TEST_F(ProxyServerTest, AcceptDescriptorExhaustionResetsTheClientWithoutSpinning) {
  options.workers = 1;
  ProxyServer server(options, store, stats);
  server.start();
  const auto port = server.bound_ports().outbound;
  // Warm up: let the worker open whatever it opens on first use (its reserve, the loop guard's
  // netlink socket) before the limit, so the limit takes away exactly the accepted socket.
  EXPECT_EQ(connect_and_wait_for_close(AF_INET, port), ECONNRESET);
  const std::uint64_t loops_before = stats.rejected_loop.load();
  const std::uint64_t errors_before = stats.local_errors.load();
  const int client = timed_client(AF_INET, 2);
  int end = -1;
  std::uint64_t errors = 0, loops = 0;
  {
    FdLimit limit(0);  // not even the accepted socket fits
    ASSERT_TRUE(limit.ok());
    // The kernel completes the handshake from the listen queue whether or not we accept. The
    // shed reset can be processed before this thread wakes from connect(), which then reports
    // the reset itself: the same outcome, seen earlier.
    if (connect_loopback_v4(client, port) == 0) end = wait_for_close(client);
    else end = errno;
    // Still exhausted, with nothing queued: a loop that kept retrying accept() without waiting
    // for a connection or a pause would count thousands of errors in this time.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    errors = stats.local_errors.load() - errors_before;
    loops = stats.rejected_loop.load() - loops_before;
  }
  ::close(client);
  EXPECT_EQ(end, ECONNRESET) << "the client sat in the accept queue instead of being refused";
  EXPECT_GE(stats.accept_shed.load(), 1u);
  EXPECT_EQ(loops, 0u) << "reset by shedding at accept, never routed";
  EXPECT_GE(errors, 1u);
  EXPECT_LT(errors, 100u) << "the accept loop spun on EMFILE";
  // With descriptors back, the same listener accepts and routes again (a direct connection to a
  // capture port: reset as a loop).
  EXPECT_EQ(connect_and_wait_for_close(AF_INET, port), ECONNRESET);
  EXPECT_EQ(stats.rejected_loop.load(), loops_before + 1);
  server.drain(std::chrono::seconds(1));
}

TEST_F(ProxyServerTest, DrainStopsAcceptingAndReturnsWhenIdle) {
  ProxyServer server(options, store, stats);
  server.start();
  const auto port = server.bound_ports().outbound;
  const auto started = std::chrono::steady_clock::now();
  server.drain(std::chrono::seconds(5));
  // Nothing was open, so drain must not sit out its grace period.
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(4));
  EXPECT_FALSE(server.running());
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_NE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << "listener still open after drain";
  ::close(fd);
}

TEST_F(ProxyServerTest, BindFailureIsReportedWithTheAddress) {
  ProxyOptions clash = options;
  clash.workers = 1;
  // A port held by a plain listener without SO_REUSEPORT cannot be joined.
  int holder = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  ASSERT_EQ(::bind(holder, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(holder, 1), 0);
  socklen_t len = sizeof a;
  ::getsockname(holder, reinterpret_cast<sockaddr*>(&a), &len);
  clash.ports.outbound = ntohs(a.sin_port);
  ProxyServer second(clash, store, stats);
  try {
    second.start();
    ADD_FAILURE() << "expected a bind error";
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("0.0.0.0:" + std::to_string(clash.ports.outbound)), std::string::npos)
        << e.what();
  }
  ::close(holder);
}

}  // namespace
TEST_F(ProxyServerTest, ForwardListenersRelayToTheirTargetInEitherFamily) {
  // --forward: an explicitly addressed listener; the client connects to the proxy itself and
  // its connection goes to the configured target (here an IPv4 echo server, from both an IPv4
  // and an IPv6 listener), from the node's own address.
  int echo = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(echo, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(echo, 8), 0);
  socklen_t len = sizeof a;
  ::getsockname(echo, reinterpret_cast<sockaddr*>(&a), &len);
  const auto target = *net::SocketAddress::parse("127.0.0.1:" + std::to_string(ntohs(a.sin_port)));
  std::thread server_thread([echo] {
    for (int i = 0; i < 2; ++i) {
      int c = ::accept(echo, nullptr, nullptr);
      char buf[64];
      ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n > 0) ::send(c, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL);
      ::close(c);
    }
  });

  options.upstream_mark = 0;  // SO_MARK needs CAP_NET_ADMIN; not what this test is about
  options.forwards = {{*net::SocketAddress::parse("127.0.0.1:0", true), target},
                      {*net::SocketAddress::parse("[::1]:0", true), target}};
  ProxyServer server(options, store, stats);
  server.start();
  ASSERT_EQ(server.forwards().size(), 2u);
  for (const auto& f : server.forwards()) {
    ASSERT_NE(f.listen.port, 0);
    const int family = f.listen.ip.is_v4() ? AF_INET : AF_INET6;
    int fd = ::socket(family, SOCK_STREAM, 0);
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_storage ss{};
    socklen_t sl;
    if (family == AF_INET) {
      auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
      s4->sin_family = AF_INET;
      s4->sin_port = htons(f.listen.port);
      s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      sl = sizeof *s4;
    } else {
      auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
      s6->sin6_family = AF_INET6;
      s6->sin6_port = htons(f.listen.port);
      s6->sin6_addr = in6addr_loopback;
      sl = sizeof *s6;
    }
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&ss), sl), 0) << f.listen.to_string();
    ASSERT_EQ(::send(fd, "ping", 4, MSG_NOSIGNAL), 4);
    char buf[8] = {};
    EXPECT_EQ(::recv(fd, buf, sizeof buf, MSG_WAITALL), 4) << f.listen.to_string();
    EXPECT_EQ(std::string(buf, 4), "ping");
    ::close(fd);
  }
  server.drain(std::chrono::seconds(2));
  server_thread.join();
  ::close(echo);
  EXPECT_EQ(stats.passthrough.load(), 2u);
  EXPECT_EQ(stats.active_connections.load(), 0u);
}

TEST_F(ProxyServerTest, ForwardMistakesAreRefusedAtStartWithTheReason) {
  const auto addr = [](const char* text) { return net::SocketAddress::parse(text, true).value(); };
  const auto target = addr("192.0.2.1:80");  // TEST-NET-1: never dialled, start() refuses first
  struct Case {
    std::vector<Forward> forwards;
    std::string reason;
  };
  options.ports = {15001, 15006};
  const std::vector<Case> cases = {
      {{{addr("127.0.0.1:15001"), target}}, "capture port"},
      {{{addr("0.0.0.0:18080"), target}, {addr("127.0.0.1:18080"), target}}, "overlaps"},
      {{{addr("[::1]:18081"), target}, {addr("[::1]:18081"), target}}, "overlaps"},
      {{{addr("127.0.0.1:18082"), addr("127.0.0.1:18082")}}, "dial itself"},
      {{{addr("0.0.0.0:18083"), addr("127.0.0.1:18084")}, {addr("127.0.0.1:18084"), addr("127.0.0.1:18083")}},
       "dial itself"},
  };
  for (const auto& c : cases) {
    ProxyOptions bad = options;
    bad.forwards = c.forwards;
    ProxyServer server(bad, store, stats);
    try {
      server.start();
      ADD_FAILURE() << "started with " << c.forwards.front().listen.to_string();
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(c.reason), std::string::npos) << e.what();
    }
  }
  // The same port on both families, or a remote target on the listener's port, is fine.
  options.ports = {0, 0};
  options.forwards = {{addr("127.0.0.1:0"), addr("192.0.2.1:18085")}, {addr("[::1]:0"), target}};
  ProxyServer fine(options, store, stats);
  EXPECT_NO_THROW(fine.start());
  fine.drain(std::chrono::milliseconds(100));
}

TEST(ListenerSocket, AcceptedSocketsInheritTcpNoDelayAndOobInline) {
  // The proxy no longer sets TCP_NODELAY per accepted connection: the listener's flag is
  // inherited (the accepted socket is a clone of the listener). Pin that kernel behaviour.
  boost::asio::io_context io;
  auto acceptor = net::open_listener(io.get_executor(), *net::SocketAddress::parse("127.0.0.1:0", true),
                                {.transparent = false, .reuse_port = false});
  const auto port = acceptor.local_endpoint().port();
  int client = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  net::tcp::socket accepted = acceptor.accept();
  int nodelay = 0;
  socklen_t len = sizeof nodelay;
  ASSERT_EQ(::getsockopt(accepted.native_handle(), IPPROTO_TCP, TCP_NODELAY, &nodelay, &len), 0);
  EXPECT_EQ(nodelay, 1);
  int oob_inline = 0;
  ASSERT_EQ(::getsockopt(accepted.native_handle(), SOL_SOCKET, SO_OOBINLINE, &oob_inline, &len), 0);
  EXPECT_EQ(oob_inline, 1) << "urgent bytes would be skipped by the relay's reads";
  ::close(client);
}

}  // namespace dsproxy::proxy
