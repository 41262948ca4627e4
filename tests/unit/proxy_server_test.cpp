// The proxy server on loopback (port 0, no TPROXY): listeners on both families, the loop guard
// for connections made straight to a capture port, and drain.

#include "proxy/proxy_server.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "config/k8s_decoder.hpp"

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
}  // namespace dsproxy::proxy
