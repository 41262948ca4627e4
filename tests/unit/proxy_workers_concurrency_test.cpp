// Several workers relaying at once while reloads swap the snapshot under them: what the
// ThreadSanitizer build (scripts/test.sh, build-tsan) is for. Workers share the SnapshotStore,
// ProxyStats and the outlier state, and the last reference to a replaced snapshot can be dropped
// on any worker; a data race there is invisible in a normal build and a TSan report here.
// In a normal build the test still checks that every byte came back and every counter adds up.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "snapshot/cluster_snapshot.hpp"
#include "config/k8s_decoder.hpp"
#include "snapshot/snapshot_store.hpp"
#include "proxy/proxy_server.hpp"

namespace dsproxy::proxy {
namespace proxy_workers_concurrency_test {  // named: unity builds put several test files in one translation unit

constexpr int kClients = 4;
constexpr int kConnectionsPerClient = 25;

int tcp_socket_with_timeout(int family) {
  const int fd = ::socket(family, SOCK_STREAM, 0);
  timeval tv{10, 0};  // no hang: every blocking call gives up after 10 s
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
}

bool connect_loopback(int fd, std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
}

// An echo server on its own threads: one thread per connection, each echoing until EOF.
class EchoServer {
 public:
  EchoServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 128), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] {
      for (int i = 0; i < kClients * kConnectionsPerClient; ++i) {
        const int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) return;  // shut down by the destructor
        handlers_.emplace_back([c] {
          timeval tv{10, 0};
          ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
          char buf[4096];
          for (ssize_t n; (n = ::recv(c, buf, sizeof buf, 0)) > 0;)
            if (::send(c, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) break;
          ::close(c);
        });
      }
    });
  }
  ~EchoServer() {
    ::shutdown(fd_, SHUT_RDWR);  // wakes accept() if fewer connections came than expected
    acceptor_.join();
    for (auto& t : handlers_) t.join();
    ::close(fd_);
  }
  std::uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  std::uint16_t port_ = 0;
  std::thread acceptor_;
  std::vector<std::thread> handlers_;  // touched only by acceptor_ until it is joined
};

std::shared_ptr<const snapshot::ClusterSnapshot> snapshot_generation(int n) {
  // A different Service per generation, so each publish really replaces the routing table.
  const std::string text = "apiVersion: v1\nkind: Service\nmetadata: {name: s" + std::to_string(n) +
                           ", namespace: ns}\nspec:\n  clusterIP: 10.96.0." + std::to_string(n % 250 + 1) +
                           "\n  ports: [{port: 80}]\n";
  return snapshot::ClusterSnapshot::build(config::decode_objects(text), {"n1", "cluster.local"});
}

TEST(ProxyWorkersConcurrency, WorkersRelayWhileReloadsSwapSnapshots) {
  snapshot::SnapshotStore store;
  store.publish(snapshot_generation(0));
  ProxyStats stats;
  ProxyOptions options;
  options.ports = {0, 0};
  options.transparent = false;
  options.workers = 4;
  options.upstream_mark = 0;  // SO_MARK needs CAP_NET_ADMIN; not what this test is about
  EchoServer echo;
  const auto target = *net::SocketAddress::parse("127.0.0.1:" + std::to_string(echo.port()));
  options.forwards = {{*net::SocketAddress::parse("127.0.0.1:0", true), target}};
  ProxyServer server(options, store, stats);
  server.start();
  ASSERT_EQ(server.forwards().size(), 1u);
  const std::uint16_t port = server.forwards()[0].listen.port;
  const std::uint16_t capture_port = server.bound_ports().outbound;

  // Reloads until the clients are done (bounded: at most 5,000 generations).
  std::atomic<bool> done{false};
  std::atomic<int> generations{0};
  std::thread reloader([&] {
    for (int g = 1; g <= 5000 && !done.load(); ++g) {
      store.publish(snapshot_generation(g));
      generations.store(g);
    }
  });

  std::atomic<int> echoed{0}, loops_reset{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c)
    clients.emplace_back([&, c] {
      for (int i = 0; i < kConnectionsPerClient; ++i) {
        const int fd = tcp_socket_with_timeout(AF_INET);
        if (!connect_loopback(fd, port)) {
          ::close(fd);
          continue;
        }
        const std::string msg = "client " + std::to_string(c) + " connection " + std::to_string(i);
        char buf[64] = {};
        if (::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(msg.size()) &&
            ::recv(fd, buf, msg.size(), MSG_WAITALL) == static_cast<ssize_t>(msg.size()) && msg == buf)
          echoed.fetch_add(1);
        ::close(fd);
        // And one straight to a capture port: the loop guard's reset, on whichever worker.
        if (i % 5 == 0) {
          const int direct = tcp_socket_with_timeout(AF_INET);
          char b;
          // connect() itself may report the reset when it arrives before this thread wakes.
          const bool connected = connect_loopback(direct, capture_port);
          if ((!connected && errno == ECONNRESET) || (connected && ::recv(direct, &b, 1, 0) < 0 && errno == ECONNRESET))
            loops_reset.fetch_add(1);
          ::close(direct);
        }
      }
    });
  for (auto& t : clients) t.join();
  done.store(true);
  reloader.join();
  server.drain(std::chrono::seconds(5));

  EXPECT_EQ(echoed.load(), kClients * kConnectionsPerClient);
  EXPECT_EQ(loops_reset.load(), kClients * kConnectionsPerClient / 5);
  EXPECT_GT(generations.load(), 0);
  EXPECT_EQ(stats.passthrough.load(), static_cast<std::uint64_t>(kClients * kConnectionsPerClient));
  EXPECT_EQ(stats.rejected_loop.load(), static_cast<std::uint64_t>(kClients * kConnectionsPerClient / 5));
  EXPECT_EQ(stats.active_connections.load(), 0u);
}

}  // namespace proxy_workers_concurrency_test
}  // namespace dsproxy::proxy
