// The proxy server on loopback (port 0, no TPROXY): listeners on both families, the loop guard
// for connections made straight to a capture port, and drain.

#include "proxy/proxy_server.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include <boost/asio/io_context.hpp>

#include "config/k8s_decoder.hpp"
#include "proxy/transparent_socket.hpp"

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
  EXPECT_EQ(rc, 0) << std::strerror(errno);
  char b;
  ssize_t n = ::recv(fd, &b, 1, 0);
  int err = n < 0 ? errno : 0;
  ::close(fd);
  return err;
}

class ProxyServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store.publish(config::ClusterSnapshot::build(config::decode_objects(""), {"n1", "cluster.local"}));
    options.ports = {0, 0};  // hermetic: the kernel picks free ports
    options.transparent = false;
    options.workers = 2;
  }
  config::SnapshotStore store;
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
  auto acceptor = open_listener(io.get_executor(), *net::SocketAddress::parse("127.0.0.1:0", true),
                                {.transparent = false, .reuse_port = false});
  const auto port = acceptor.local_endpoint().port();
  int client = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  tcp::socket accepted = acceptor.accept();
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
