// The connection record: exactly one result per connection, with the reason of the path that
// ended it, through a real ProxyServer on loopback (port 0, no TPROXY, --forward listeners).

#include "proxy/connection_result.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <thread>

#include "config/k8s_decoder.hpp"
#include "proxy/proxy_server.hpp"
#include "proxy/workload_index.hpp"
#include "snapshot/snapshot_builder.hpp"

namespace dsproxy::proxy {
namespace connection_result_test {  // named: unity builds put several test files in one translation unit

using namespace std::chrono_literals;

// The workers call it on their own threads; the test thread reads it.
class RecordingSink : public ConnectionSink {
 public:
  void opened(ConnectionRecord&) override {
    std::lock_guard lock(mu_);
    ++opened_;
  }
  void closed(const ConnectionRecord& r) override {
    std::lock_guard lock(mu_);
    records_.push_back(r);
  }
  std::vector<ConnectionRecord> wait_for(std::size_t n, std::chrono::milliseconds limit = 5s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      {
        std::lock_guard lock(mu_);
        if (records_.size() >= n || std::chrono::steady_clock::now() > deadline) return records_;
      }
      std::this_thread::sleep_for(5ms);
    }
  }
  int opened() {
    std::lock_guard lock(mu_);
    return opened_;
  }

 private:
  std::mutex mu_;
  int opened_ = 0;
  std::vector<ConnectionRecord> records_;
};

class CountingSink : public ConnectionSink {
 public:
  void opened(ConnectionRecord&) override { ++opens; }
  void closed(const ConnectionRecord& r) override {
    ++closes;
    last = r.reason;
  }
  int opens = 0;
  int closes = 0;
  EndReason last = EndReason::completed;
};

TEST(ConnectionResultTest, EmitsOnceOnDestructionAndMovedFromEmitsNothing) {
  CountingSink sink;
  {
    ConnectionResult a(&sink, Direction::outbound, *net::SocketAddress::parse("10.0.0.1:1"),
                       *net::SocketAddress::parse("10.0.0.2:2"));
    ConnectionResult b(std::move(a));
    ConnectionResult c(std::move(b));
    c.finish(EndReason::connect_failed);
    c.finish(EndReason::completed);  // the first reason given wins
    EXPECT_EQ(sink.closes, 0);
  }
  EXPECT_EQ(sink.opens, 1);  // a failed connection still counts as opened, once
  EXPECT_EQ(sink.closes, 1);
  EXPECT_EQ(sink.last, EndReason::connect_failed);
}

TEST(ConnectionResultTest, NoReasonMeansShutdownAndNoSinkIsInert) {
  CountingSink sink;
  { ConnectionResult r(&sink, Direction::inbound, {}, {}); }
  EXPECT_EQ(sink.closes, 1);
  EXPECT_EQ(sink.last, EndReason::shutdown);
  { ConnectionResult r(nullptr, Direction::inbound, {}, {}); r.finish(EndReason::completed); r.mark_opened(); }
  EXPECT_EQ(sink.closes, 1);
}

TEST(ConnectionResultTest, ResponseFlagsFollowZtunnel) {
  EXPECT_EQ(response_flags(EndReason::completed), "-");
  EXPECT_EQ(response_flags(EndReason::upstream_reset), "-");
  EXPECT_EQ(response_flags(EndReason::connect_failed), "CONNECT");
  EXPECT_EQ(response_flags(EndReason::rejected_no_endpoint_for_family), "CONNECT");
  EXPECT_EQ(response_flags(EndReason::rejected_loop), "DENY");
  for (std::size_t i = 0; i < kEndReasonCount; ++i) EXPECT_NE(to_string(static_cast<EndReason>(i)), "unknown");
}

TEST(WorkloadIndexTest, WorkloadIsTheOwnerNeverThePod) {
  config::Pod p;
  p.name = "tcp-echo-7d9c8b6f5d-x2x9q";
  p.ns = "ipv4";
  p.labels = {{"pod-template-hash", "7d9c8b6f5d"}, {"app", "tcp-echo"}, {"version", "v1"}};
  auto w = describe_pod(p);
  EXPECT_EQ(w.workload, "tcp-echo");
  EXPECT_EQ(w.app, "tcp-echo");
  EXPECT_EQ(w.version, "v1");
  p.name = "db-2";
  p.labels = {{"statefulset.kubernetes.io/pod-name", "db-2"}};
  EXPECT_EQ(describe_pod(p).workload, "db");
  EXPECT_EQ(describe_pod(p).version, "latest");
  p.name = "bare-pod";
  p.labels = {};
  EXPECT_EQ(describe_pod(p).workload, "unknown");  // a bare pod: no series of its own
  p.labels = {{"app", "sleep"}};
  EXPECT_EQ(describe_pod(p).workload, "sleep");
  // No labels (the snapshot keeps none): a Deployment's pod is known by its name's shape.
  p.labels = {};
  p.name = "sleep-7656cf8794-8tqd6";
  EXPECT_EQ(describe_pod(p).workload, "sleep");
  p.name = "my-api-server-1";  // not generated suffixes
  EXPECT_EQ(describe_pod(p).workload, "unknown");
}

std::string echo_objects(const std::string& endpoints_v4) {
  return R"(apiVersion: v1
kind: Service
metadata: {name: echo, namespace: web}
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  ipFamilies: [IPv4]
  ports: [{name: tcp, port: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-v4, namespace: web, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
endpoints:
)" + endpoints_v4 + R"(ports: [{name: tcp, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: web}
spec:
  clusterIP: 10.96.0.21
  clusterIPs: [10.96.0.21]
  ipFamilies: [IPv4]
  ports: [{name: tcp, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other-v4, namespace: web, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.9], targetRef: {kind: Pod, name: other-6b8f9c7d4d-qwzxp, namespace: web}}
ports: [{name: tcp, port: 80}]
)";
}

// The index follows the snapshots by what changed: an endpoint gone is forgotten, one added is
// known, a Service left alone keeps its names (the same objects: the metrics' series cache
// keeps hitting).
TEST(WorkloadIndexTest, FollowsSnapshotsByWhatChanged) {
  snapshot::SnapshotBuilder builder({"n1", "cluster.local"});
  builder.replace_all(config::decode_objects(echo_objects(
      "- {addresses: [10.244.1.5], targetRef: {kind: Pod, name: echo-7d9c8b6f5d-x2x9q, namespace: web}}\n")));
  auto first = builder.build();
  WorkloadIndex index;
  index.refresh(first);
  const auto ip = [](const char* s) { return *net::IpAddress::parse(s); };
  auto echo = index.pod(ip("10.244.1.5"));
  ASSERT_TRUE(echo);
  EXPECT_EQ(echo->workload, "echo");
  EXPECT_EQ(echo->pod, "echo-7d9c8b6f5d-x2x9q");
  EXPECT_EQ(echo->ns, "web");
  const auto other = index.pod(ip("10.244.1.9"));
  ASSERT_TRUE(other);
  const auto* other_cluster = first->find_cluster(*net::SocketAddress::parse("10.96.0.21:80"));
  ASSERT_TRUE(other_cluster);
  const auto other_service = index.service(*other_cluster);
  EXPECT_EQ(other_service->hostname, "other.web.svc.cluster.local");
  EXPECT_EQ(index.pod(ip("10.244.1.6")), nullptr);

  builder.replace_all(config::decode_objects(echo_objects(
      "- {addresses: [10.244.1.6], targetRef: {kind: Pod, name: echo-7d9c8b6f5d-bbbbb, namespace: web}}\n")));
  auto second = builder.build();
  index.refresh(second);
  EXPECT_EQ(index.pod(ip("10.244.1.5")), nullptr);  // gone with its endpoint
  ASSERT_TRUE(index.pod(ip("10.244.1.6")));
  EXPECT_EQ(index.pod(ip("10.244.1.6"))->pod, "echo-7d9c8b6f5d-bbbbb");
  EXPECT_EQ(index.pod(ip("10.244.1.9")), other);  // untouched Service: the same names
  const auto* again = second->find_cluster(*net::SocketAddress::parse("10.96.0.21:80"));
  EXPECT_EQ(again, other_cluster);  // the builder shared it
  EXPECT_EQ(index.service(*again), other_service);
  EXPECT_EQ(index.endpoint_addresses(), 2u);
  index.refresh(first);  // an older snapshot (a connection that loaded it before the reload)
  EXPECT_EQ(index.pod(ip("10.244.1.5")), nullptr);  // keeps describing the newer one
}

// A loopback server: accepts, then does `behaviour` with each connection.
class Upstream {
 public:
  enum class Behaviour { echo_once_then_close, reset, hold };
  explicit Upstream(Behaviour b) : behaviour_(b) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 8), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      char buf[64];
      switch (behaviour_) {
        case Behaviour::echo_once_then_close: {
          ssize_t n = ::recv(c, buf, sizeof buf, 0);
          if (n > 0) ::send(c, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL);
          ::close(c);
          break;
        }
        case Behaviour::reset: {
          ::recv(c, buf, sizeof buf, 0);
          linger l{1, 0};
          ::setsockopt(c, SOL_SOCKET, SO_LINGER, &l, sizeof l);
          ::close(c);
          break;
        }
        case Behaviour::hold: {
          timeval tv{3, 0};
          ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
          while (::recv(c, buf, sizeof buf, 0) > 0) {
          }
          ::close(c);
          break;
        }
      }
    });
  }
  ~Upstream() {
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  net::SocketAddress address() const { return *net::SocketAddress::parse("127.0.0.1:" + std::to_string(port_)); }

 private:
  Behaviour behaviour_;
  int fd_ = -1;
  std::uint16_t port_ = 0;
  std::thread thread_;
};

int client_to(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  return fd;
}

class ConnectionResultPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store.publish(snapshot::ClusterSnapshot::build(config::decode_objects(""), {"n1", "cluster.local"}));
    options.ports = {0, 0};
    options.transparent = false;
    options.workers = 1;
    options.upstream_mark = 0;  // SO_MARK needs CAP_NET_ADMIN; not what these tests are about
    options.connect_timeout = 2s;
  }
  // Starts a server forwarding 127.0.0.1:0 to `target`; returns its port.
  std::uint16_t start(const net::SocketAddress& target) {
    options.forwards = {{*net::SocketAddress::parse("127.0.0.1:0", true), target}};
    server = std::make_unique<ProxyServer>(options, store, stats);
    server->set_connection_sinks([this](int) { return &sink; });
    server->start();
    return server->forwards().at(0).listen.port;
  }
  RecordingSink sink;  // outlives the server
  snapshot::SnapshotStore store;
  ProxyStats stats;
  ProxyOptions options;
  std::unique_ptr<ProxyServer> server;
};

TEST_F(ConnectionResultPathTest, CompletedWithBytesEachWay) {
  Upstream up(Upstream::Behaviour::echo_once_then_close);
  const auto port = start(up.address());
  int fd = client_to(port);
  ASSERT_EQ(::send(fd, "hello", 5, 0), 5);
  char buf[16];
  EXPECT_EQ(::recv(fd, buf, sizeof buf, 0), 5);
  EXPECT_EQ(::recv(fd, buf, sizeof buf, 0), 0);  // the upstream's FIN
  ::close(fd);
  auto records = sink.wait_for(1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].reason, EndReason::completed);
  EXPECT_TRUE(records[0].connected);
  EXPECT_EQ(records[0].bytes_to_upstream, 5u);
  EXPECT_EQ(records[0].bytes_to_downstream, 5u);
  ASSERT_TRUE(records[0].endpoint.has_value());
  EXPECT_EQ(*records[0].endpoint, up.address());
  EXPECT_FALSE(records[0].fell_back);
  EXPECT_EQ(sink.opened(), 1);
}

TEST_F(ConnectionResultPathTest, UpstreamReset) {
  Upstream up(Upstream::Behaviour::reset);
  const auto port = start(up.address());
  int fd = client_to(port);
  ASSERT_EQ(::send(fd, "x", 1, 0), 1);
  char buf[4];
  EXPECT_LT(::recv(fd, buf, sizeof buf, 0), 0);
  ::close(fd);
  auto records = sink.wait_for(1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].reason, EndReason::upstream_reset);
}

TEST_F(ConnectionResultPathTest, ClientReset) {
  Upstream up(Upstream::Behaviour::hold);
  const auto port = start(up.address());
  int fd = client_to(port);
  ASSERT_EQ(::send(fd, "x", 1, 0), 1);
  // Wait until the proxy has connected the upstream, then reset from the client side.
  for (int i = 0; i < 200 && sink.opened() == 0; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(sink.opened(), 1);
  linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(fd);
  auto records = sink.wait_for(1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].reason, EndReason::client_reset);
}

TEST_F(ConnectionResultPathTest, ConnectFailed) {
  // A port nothing listens on: bound, then closed, so loopback answers the SYN with a reset.
  int probe = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(probe, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ::getsockname(probe, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(probe);
  const auto port = start(*net::SocketAddress::parse("127.0.0.1:" + std::to_string(ntohs(a.sin_port))));
  int fd = client_to(port);
  char buf[4];
  EXPECT_LT(::recv(fd, buf, sizeof buf, 0), 0);  // reset
  ::close(fd);
  auto records = sink.wait_for(1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].reason, EndReason::connect_failed);
  EXPECT_FALSE(records[0].connected);
  EXPECT_EQ(sink.opened(), 1);
}

TEST_F(ConnectionResultPathTest, RejectedLoop) {
  const auto port = start(*net::SocketAddress::parse("127.0.0.1:9"));
  int fd = client_to(server->bound_ports().outbound);  // straight to the capture port: a loop
  char buf[4];
  EXPECT_LT(::recv(fd, buf, sizeof buf, 0), 0);
  ::close(fd);
  (void)port;
  auto records = sink.wait_for(1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].reason, EndReason::rejected_loop);
  EXPECT_EQ(response_flags(records[0].reason), "DENY");
}

TEST_F(ConnectionResultPathTest, StillOpenAtShutdownIsRecordedOnce) {
  Upstream up(Upstream::Behaviour::hold);
  const auto port = start(up.address());
  int fd = client_to(port);
  ASSERT_EQ(::send(fd, "x", 1, 0), 1);
  for (int i = 0; i < 200 && sink.opened() == 0; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(sink.opened(), 1);
  server->drain(50ms);  // the grace runs out with the connection open: its relay is destroyed
  auto records = sink.wait_for(1, 100ms);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].reason, EndReason::shutdown);
  EXPECT_EQ(records[0].bytes_to_upstream, 0u);  // the relay never reported: bytes unknown
  ::close(fd);
  server.reset();
  EXPECT_EQ(sink.wait_for(2, 50ms).size(), 1u);
}

}  // namespace connection_result_test
}  // namespace dsproxy::proxy
