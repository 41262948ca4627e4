// Answers sent from a captured query's original destination (issue 14, finding 2): they leave
// from that address and port, and no socket is left behind that takes a node DNS server's
// traffic. Played on loopback with a "node server" on the wildcard address of a free port
// (non-transparent: 127.0.0.1 is local, so no CAP_NET_ADMIN is needed).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <string>

#include "resolver/io/origin_reply.hpp"
#include "resolver/io/socket_address_conversion.hpp"

namespace dsproxy::resolver {
namespace resolver_origin_reply_test {  // named: unity builds put several test files in one translation unit

struct Socket {
  int fd = -1;
  Socket() = default;
  explicit Socket(int f) : fd(f) {}
  Socket(Socket&& o) noexcept : fd(o.fd) { o.fd = -1; }
  ~Socket() {
    if (fd >= 0) ::close(fd);
  }
};

// A UDP socket bound to `at` (port 0: any), with or without SO_REUSEADDR.
Socket bound_udp(const net::SocketAddress& at, bool reuse_address) {
  Socket s(::socket(at.ip.is_v4() ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  EXPECT_GE(s.fd, 0);
  int one = 1;
  if (!at.ip.is_v4()) ::setsockopt(s.fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (reuse_address) ::setsockopt(s.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  const SockAddr sa = to_sockaddr(at);
  EXPECT_EQ(::bind(s.fd, sa.get(), sa.length), 0) << std::strerror(errno);
  return s;
}

net::SocketAddress local_of(const Socket& s) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(s.fd, reinterpret_cast<sockaddr*>(&ss), &len);
  return from_sockaddr(reinterpret_cast<const sockaddr*>(&ss)).value();
}

// One datagram within `ms`, with its source; nullopt on timeout.
std::optional<std::pair<std::string, net::SocketAddress>> receive(const Socket& s, int ms = 500) {
  pollfd p{s.fd, POLLIN, 0};
  if (::poll(&p, 1, ms) != 1) return std::nullopt;
  char buffer[512];
  sockaddr_storage from{};
  socklen_t len = sizeof from;
  const ssize_t n = ::recvfrom(s.fd, buffer, sizeof buffer, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &len);
  if (n < 0) return std::nullopt;
  return std::make_pair(std::string(buffer, n), from_sockaddr(reinterpret_cast<const sockaddr*>(&from)).value());
}

void send_to(const Socket& s, const net::SocketAddress& to, const std::string& text) {
  const SockAddr sa = to_sockaddr(to);
  ASSERT_EQ(::sendto(s.fd, text.data(), text.size(), 0, sa.get(), sa.length), static_cast<ssize_t>(text.size()));
}

ByteView bytes(const std::string& s) { return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()}; }

class ResolverOriginReply : public ::testing::TestWithParam<const char*> {
 protected:
  net::IpAddress loopback() const { return *net::IpAddress::parse(GetParam()); }
  net::IpAddress wildcard() const { return *net::IpAddress::parse(loopback().is_v4() ? "0.0.0.0" : "::"); }
  OriginReplyOptions options{.transparent = false, .mark = 0};
};

// The node's DNS server on the wildcard address (with SO_REUSEADDR, as dnsmasq binds): after an
// answer left from <loopback>:<its port>, another client's datagram to that address still
// reaches the server.
TEST_P(ResolverOriginReply, AnswersFromTheOriginAndLeavesTheNodeServerAlone) {
  Socket server = bound_udp({wildcard(), 0}, true);
  const net::SocketAddress origin{loopback(), local_of(server).port};
  Socket pod = bound_udp({loopback(), 0}, false);
  Socket other = bound_udp({loopback(), 0}, false);

  const OriginReplyResult result = send_from_origin(origin, local_of(pod), bytes("answer"), options);
  ASSERT_TRUE(result.sent()) << result.step << ": " << std::strerror(result.error);
  EXPECT_TRUE(result.late_queries.empty());
  EXPECT_EQ(result.strays, 0u);
  const auto got = receive(pod);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->first, "answer");
  EXPECT_EQ(got->second, origin);  // address AND port, or a stub resolver drops it

  send_to(other, origin, "query for the node server");
  const auto at_server = receive(server);
  ASSERT_TRUE(at_server) << "the node server's traffic went elsewhere";
  EXPECT_EQ(at_server->first, "query for the node server");
  EXPECT_EQ(at_server->second, local_of(other));
}

// Why connect(): while a reply socket exists, a connected one only matches its own peer...
TEST_P(ResolverOriginReply, AConnectedSocketOnTheOriginTakesOnlyItsPeersDatagrams) {
  Socket server = bound_udp({wildcard(), 0}, true);
  const net::SocketAddress origin{loopback(), local_of(server).port};
  Socket pod = bound_udp({loopback(), 0}, false);
  Socket other = bound_udp({loopback(), 0}, false);
  Socket reply = bound_udp(origin, true);
  const SockAddr peer = to_sockaddr(local_of(pod));
  ASSERT_EQ(::connect(reply.fd, peer.get(), peer.length), 0);

  send_to(other, origin, "other");
  EXPECT_TRUE(receive(server)) << "a connected socket took a stranger's datagram";
  send_to(pod, origin, "pod");
  const auto at_reply = receive(reply);
  ASSERT_TRUE(at_reply);  // the pod's own next query: why the socket is drained, then closed
  EXPECT_EQ(at_reply->first, "pod");
}

// ... whereas an unconnected one (what dsproxy used to keep) takes everyone's: the takeover. This
// is the kernel behaviour the first test guards against; if it ever changes, so may the design.
TEST_P(ResolverOriginReply, AnUnconnectedSocketOnTheOriginWouldTakeTheNodeServersTraffic) {
  Socket server = bound_udp({wildcard(), 0}, true);
  const net::SocketAddress origin{loopback(), local_of(server).port};
  Socket other = bound_udp({loopback(), 0}, false);
  Socket kept = bound_udp(origin, true);
  send_to(other, origin, "other");
  EXPECT_TRUE(receive(kept));
  EXPECT_FALSE(receive(server, 100));
}

// A node server that did not set SO_REUSEADDR owns the port: the answer cannot be sent from it;
// the caller is told why (and counts it), nothing is left open.
TEST_P(ResolverOriginReply, APortHeldWithoutReuseAddressFailsTheAnswer) {
  Socket server = bound_udp({wildcard(), 0}, false);
  const net::SocketAddress origin{loopback(), local_of(server).port};
  Socket pod = bound_udp({loopback(), 0}, false);
  const OriginReplyResult result = send_from_origin(origin, local_of(pod), bytes("answer"), options);
  EXPECT_FALSE(result.sent());
  EXPECT_EQ(result.error, EADDRINUSE);
  EXPECT_STREQ(result.step, "bind");
  EXPECT_FALSE(receive(pod, 100));
  Socket other = bound_udp({loopback(), 0}, false);
  send_to(other, origin, "still the server's");
  EXPECT_TRUE(receive(server));
}

INSTANTIATE_TEST_SUITE_P(Families, ResolverOriginReply, ::testing::Values("127.0.0.1", "::1"),
                         [](const auto& info) { return std::string(info.param[0] == ':' ? "v6" : "v4"); });

}  // namespace resolver_origin_reply_test
}  // namespace dsproxy::resolver
