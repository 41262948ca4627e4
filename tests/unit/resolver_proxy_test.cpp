// The DNS proxy on loopback, end to end inside the process: real UDP and TCP listeners (not
// transparent, on port 0), c-ares forwarding to a fake upstream nameserver on 127.0.0.1 that
// answers big names with TC over UDP and in full over TCP, and one that never answers.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <future>
#include <thread>

#include "config/k8s_decoder.hpp"
#include "resolver/dns_proxy.hpp"
#include "resolver/io/ares_upstream.hpp"

namespace dsproxy::resolver {
namespace resolver_proxy_test {  // named: unity builds put several test files in one translation unit

namespace asio = boost::asio;
using asio::ip::tcp;
using asio::ip::udp;

Name name(const char* text) { return Name::from_text(text).value(); }

// Answers on UDP and TCP: www.example A 192.0.2.1 (TTL 60); big.example 40 A records (TC over
// UDP); nx.example NXDOMAIN; silent.example nothing at all. Counts what it received.
class FakeNameserver {
 public:
  explicit FakeNameserver(asio::io_context& io) : udp_(io), tcp_(io) {
    // c-ares retries over TCP on the same port number as UDP. The UDP port the kernel picks may
    // be taken for TCP by some other socket of this process (the tests open many): try again.
    const auto loopback = asio::ip::make_address("127.0.0.1");
    for (int attempt = 0;; ++attempt) {
      udp_ = udp::socket(io, udp::endpoint(loopback, 0));
      boost::system::error_code ec;
      tcp::acceptor tcp(io);
      tcp.open(tcp::v4(), ec);
      tcp.set_option(asio::socket_base::reuse_address(true), ec);
      if (!ec) tcp.bind(tcp::endpoint(loopback, udp_.local_endpoint().port()), ec);
      if (!ec) tcp.listen(asio::socket_base::max_listen_connections, ec);
      if (!ec) {
        tcp_ = std::move(tcp);
        break;
      }
      if (attempt == 50) throw boost::system::system_error(ec, "fake nameserver: no port free for UDP and TCP");
    }
    receive();
    accept();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(udp_.local_endpoint().port()); }
  std::uint16_t tcp_port() const { return tcp_.local_endpoint().port(); }

  std::atomic<int> udp_queries{0};
  std::atomic<int> tcp_queries{0};

 private:
  static std::optional<Bytes> answer(const Bytes& raw, bool over_udp) {
    auto parsed = parse_query(raw);
    if (parsed.status != QueryStatus::ok) return std::nullopt;
    const auto& q = parsed.query;
    const std::string key = q.question.name.key();
    ResponseSpec spec;
    if (key == "silent.example") return std::nullopt;
    if (key == "www.example") spec.answers.push_back({q.question.name, rrtype::A, 60, net::IpAddress::v4({192, 0, 2, 1})});
    if (key == "big.example")
      for (int i = 0; i < 40; ++i)
        spec.answers.push_back({q.question.name, rrtype::A, 60, net::IpAddress::v4({198, 51, 100, static_cast<std::uint8_t>(i)})});
    if (key == "nx.example") spec.rcode = Rcode::NxDomain;
    return build_response(q, raw, spec, over_udp ? 512 : 65535);
  }

  void receive() {
    udp_.async_receive_from(asio::buffer(buffer_), from_, [this](boost::system::error_code ec, std::size_t n) {
      if (ec) return;
      ++udp_queries;
      if (auto a = answer(Bytes(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(n)), true)) {
        boost::system::error_code ignored;
        udp_.send_to(asio::buffer(*a), from_, 0, ignored);
      }
      receive();
    });
  }

  void accept() {
    tcp_.async_accept([this](boost::system::error_code ec, tcp::socket s) {
      if (ec) return;
      auto socket = std::make_shared<tcp::socket>(std::move(s));
      auto len = std::make_shared<std::array<std::uint8_t, 2>>();
      asio::async_read(*socket, asio::buffer(*len), [this, socket, len](boost::system::error_code ec, std::size_t) {
        if (ec) return;
        auto msg = std::make_shared<Bytes>((std::size_t{(*len)[0]} << 8) | (*len)[1]);
        asio::async_read(*socket, asio::buffer(*msg), [this, socket, msg](boost::system::error_code ec, std::size_t) {
          if (ec) return;
          ++tcp_queries;
          auto a = answer(*msg, false);
          if (!a) return;
          auto out = std::make_shared<Bytes>(*a);
          out->insert(out->begin(), {static_cast<std::uint8_t>(a->size() >> 8), static_cast<std::uint8_t>(a->size())});
          asio::async_write(*socket, asio::buffer(*out), [socket, out](boost::system::error_code, std::size_t) {});
        });
      });
      accept();
    });
  }

  udp::socket udp_;
  tcp::acceptor tcp_;
  udp::endpoint from_;
  std::array<std::uint8_t, 65535> buffer_{};
};

// Blocking client helpers with a receive timeout.
std::optional<MessageInfo> ask_udp(const std::string& server, std::uint16_t port, const Bytes& query) {
  const bool v6 = server.find(':') != std::string::npos;
  const int fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
  timeval tv{3, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_storage ss{};
  socklen_t len;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    ::inet_pton(AF_INET6, server.c_str(), &a->sin6_addr);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    ::inet_pton(AF_INET, server.c_str(), &a->sin_addr);
    len = sizeof *a;
  }
  ::sendto(fd, query.data(), query.size(), 0, reinterpret_cast<sockaddr*>(&ss), len);
  Bytes buf(65535);
  const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
  ::close(fd);
  if (n <= 0) return std::nullopt;
  buf.resize(static_cast<std::size_t>(n));
  return parse_message(buf).info;
}

// A TCP connection to 127.0.0.1:port from `source` (any loopback address), receive timeout 3 s;
// -1 when it cannot connect.
int connect_tcp(std::uint16_t port, const char* source = "127.0.0.1") {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{3, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in from{};
  from.sin_family = AF_INET;
  ::inet_pton(AF_INET, source, &from.sin_addr);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::optional<MessageInfo> ask_tcp(std::uint16_t port, const Bytes& query, const char* source = "127.0.0.1") {
  const int fd = connect_tcp(port, source);
  if (fd < 0) return std::nullopt;
  Bytes framed{static_cast<std::uint8_t>(query.size() >> 8), static_cast<std::uint8_t>(query.size())};
  framed.insert(framed.end(), query.begin(), query.end());
  ::send(fd, framed.data(), framed.size(), 0);
  std::array<std::uint8_t, 2> len{};
  if (::recv(fd, len.data(), 2, MSG_WAITALL) != 2) {
    ::close(fd);
    return std::nullopt;
  }
  Bytes buf((std::size_t{len[0]} << 8) | len[1]);
  const ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_WAITALL);
  ::close(fd);
  if (n != static_cast<ssize_t>(buf.size())) return std::nullopt;
  return parse_message(buf).info;
}

class ResolverProxy : public ::testing::Test {
 protected:
  void SetUp() override {
    store.publish(snapshot::ClusterSnapshot::build(
        config::load_objects_file(std::string(DSPROXY_SOURCE_DIR) + "/config/tcp-echo-experiment.yaml"), {"kind-worker"}));
    nameserver = std::make_unique<FakeNameserver>(io);
  }
  void TearDown() override {
    if (thread.joinable()) {
      asio::post(io, [this] {
        if (proxy) proxy->stop();
        io.stop();
      });
      thread.join();
    }
  }
  void start(DnsProxyOptions options) {
    options.port = 0;
    options.bind = {"127.0.0.1", "::1"};
    options.transparent = false;
    options.mark = 0;
    proxy = std::make_unique<DnsProxy>(io, options, store);
    proxy->start();
    port = proxy->bound_port();
    thread = std::thread([this] { io.run(); });
  }
  DnsProxyOptions upstream_options() {
    DnsProxyOptions o;
    o.upstreams = {nameserver->address()};
    o.upstream_timeout = std::chrono::milliseconds(300);
    o.upstream_tries = 1;
    return o;
  }

  asio::io_context io;
  snapshot::SnapshotStore store;
  std::unique_ptr<FakeNameserver> nameserver;
  std::unique_ptr<DnsProxy> proxy;
  std::thread thread;
  std::uint16_t port = 0;
};

TEST_F(ResolverProxy, ClusterNamesOverUdpBothFamiliesAndTcp) {
  start(upstream_options());
  ASSERT_NE(port, 0);
  auto a = ask_udp("127.0.0.1", port, build_query(1, name("tcp-echo.dual-stack.svc.cluster.local"), rrtype::A));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->addresses, std::vector<net::IpAddress>{net::IpAddress::parse("10.96.106.11").value()});
  auto aaaa = ask_udp("::1", port, build_query(2, name("tcp-echo.ipv4.svc.cluster.local"), rrtype::AAAA));
  ASSERT_TRUE(aaaa);
  EXPECT_EQ(aaaa->header.rcode(), 0);
  EXPECT_TRUE(aaaa->addresses.empty());
  auto tcp = ask_tcp(port, build_query(3, name("tcp-echo.ipv6.svc.cluster.local"), rrtype::AAAA));
  ASSERT_TRUE(tcp);
  EXPECT_EQ(tcp->header.id, 3);
  EXPECT_EQ(tcp->addresses, std::vector<net::IpAddress>{net::IpAddress::parse("fd00:10:96::9c3a").value()});
  EXPECT_EQ(nameserver->udp_queries.load(), 0);
}

TEST_F(ResolverProxy, OutsideNamesAreForwardedAndCached) {
  start(upstream_options());
  auto a = ask_udp("127.0.0.1", port, build_query(7, name("www.example"), rrtype::A));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->header.id, 7);
  EXPECT_EQ(a->addresses, std::vector<net::IpAddress>{net::IpAddress::parse("192.0.2.1").value()});
  auto again = ask_udp("::1", port, build_query(8, name("WWW.example"), rrtype::A));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->question.name.to_text(), "WWW.example");
  EXPECT_EQ(nameserver->udp_queries.load(), 1);  // the second came from the cache
  auto nx = ask_udp("127.0.0.1", port, build_query(9, name("nx.example"), rrtype::A));
  ASSERT_TRUE(nx);
  EXPECT_EQ(nx->header.rcode(), 3);
}

TEST_F(ResolverProxy, TruncatedUdpAnswersAreRetriedOverTcpByCares) {
  start(upstream_options());
  // The client asks over TCP, so it can take the whole answer; upstream, c-ares asks over UDP,
  // gets TC, and asks again over TCP.
  auto big = ask_tcp(port, build_query(5, name("big.example"), rrtype::A));
  ASSERT_TRUE(big);
  EXPECT_FALSE(big->header.tc());
  EXPECT_EQ(big->addresses.size(), 40u);
  EXPECT_EQ(nameserver->udp_queries.load(), 1);
  EXPECT_EQ(nameserver->tcp_queries.load(), 1);
  // A UDP client without EDNS gets TC from us (from the cache) and would retry over TCP.
  auto udp = ask_udp("127.0.0.1", port, build_query(6, name("big.example"), rrtype::A));
  ASSERT_TRUE(udp);
  EXPECT_TRUE(udp->header.tc());
}

TEST_F(ResolverProxy, UpstreamSilenceIsServfail) {
  start(upstream_options());
  auto a = ask_udp("127.0.0.1", port, build_query(11, name("silent.example"), rrtype::A));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->header.rcode(), 2);
  EXPECT_EQ(a->header.id, 11);
}

TEST_F(ResolverProxy, MalformedQueriesGetFormerrAndTheServerCarriesOn) {
  start(upstream_options());
  Bytes bad = build_query(12, name("a.example"), rrtype::A);
  bad[5] = 3;  // three questions, one present
  auto err = ask_udp("127.0.0.1", port, bad);
  ASSERT_TRUE(err);
  EXPECT_EQ(err->header.rcode(), 1);
  EXPECT_EQ(err->header.id, 12);
  auto ok = ask_udp("127.0.0.1", port, build_query(13, name("tcp-echo.ipv4.svc.cluster.local"), rrtype::A));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->addresses.size(), 1u);
}

// Issue 14, finding 7: one client holding connections with half-sent messages locks only itself
// out; over its cap it is reset at once, and a half-sent message is cut off at the deadline.
TEST_F(ResolverProxy, TcpPerClientCapRefusesThatClientOnly) {
  auto o = upstream_options();
  o.max_tcp_connections_per_client = 2;
  start(o);
  const std::uint8_t prefix[2] = {0, 32};  // 32 octets announced, none sent
  int held[2];
  for (int& fd : held) {
    fd = connect_tcp(port, "127.0.0.3");
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::send(fd, prefix, 2, 0), 2);
  }
  // The third from the same address: accepted by the kernel, then reset by dsproxy at once.
  const int third = connect_tcp(port, "127.0.0.3");
  ASSERT_GE(third, 0);
  char byte;
  const auto before = std::chrono::steady_clock::now();
  EXPECT_LE(::recv(third, &byte, 1, 0), 0);
  // Reset at once, not the 3 s receive timeout.
  EXPECT_LT(std::chrono::steady_clock::now() - before, std::chrono::seconds(2));
  ::close(third);
  // Another client address is served meanwhile.
  auto ok = ask_tcp(port, build_query(21, name("tcp-echo.ipv4.svc.cluster.local"), rrtype::A), "127.0.0.4");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->addresses.size(), 1u);
  EXPECT_EQ(proxy->stats().tcp_client_limit.load(), 1u);
  EXPECT_EQ(proxy->stats().tcp_limit.load(), 0u);
  for (int fd : held) ::close(fd);
}

TEST_F(ResolverProxy, HalfSentTcpMessageIsCutOffAtTheMessageDeadline) {
  auto o = upstream_options();
  o.tcp_message_timeout = std::chrono::milliseconds(200);
  o.tcp_idle_timeout = std::chrono::seconds(10);
  start(o);
  const int idle = connect_tcp(port);  // sends nothing: the idle timeout (10 s) applies
  const int slow = connect_tcp(port);
  ASSERT_GE(idle, 0);
  ASSERT_GE(slow, 0);
  const std::uint8_t prefix[2] = {0, 32};
  ASSERT_EQ(::send(slow, prefix, 2, 0), 2);
  char byte;
  const auto before = std::chrono::steady_clock::now();
  EXPECT_EQ(::recv(slow, &byte, 1, 0), 0);  // closed by dsproxy (EOF), not the 3 s receive timeout
  EXPECT_LT(std::chrono::steady_clock::now() - before, std::chrono::seconds(2));
  EXPECT_EQ(proxy->stats().tcp_message_timeouts.load(), 1u);
  // The idle connection is still open, and still answers a query sent whole.
  const Bytes query = build_query(22, name("tcp-echo.ipv4.svc.cluster.local"), rrtype::A);
  Bytes framed{0, static_cast<std::uint8_t>(query.size())};
  framed.insert(framed.end(), query.begin(), query.end());
  ASSERT_EQ(::send(idle, framed.data(), framed.size(), 0), static_cast<ssize_t>(framed.size()));
  std::uint8_t length[2];
  EXPECT_EQ(::recv(idle, length, 2, MSG_WAITALL), 2);
  ::close(idle);
  ::close(slow);
}

TEST_F(ResolverProxy, NoNameserverIsAStartError) {
  DnsProxyOptions o;
  o.upstreams = {"not-an-address"};
  o.port = 0;
  o.bind = {"127.0.0.1"};
  o.transparent = false;
  DnsProxy p(io, o, store);
  EXPECT_THROW(p.start(), std::exception);
}

TEST(ResolverAresUpstream, ReadsNameserversFromResolvConf) {
  asio::io_context io;
  char path[] = "/tmp/dsproxy-resolv-XXXXXX";
  const int fd = ::mkstemp(path);
  const std::string text = "search example\nnameserver 192.0.2.53\nnameserver fd00::53\n";
  ASSERT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  ::close(fd);
  AresOptions o;
  o.resolv_conf = path;
  AresUpstream upstream(io, o);
  EXPECT_EQ(upstream.servers(), (std::vector<std::string>{"192.0.2.53:53", "[fd00::53]:53"}));
  ::unlink(path);
}

}  // namespace resolver_proxy_test
}  // namespace dsproxy::resolver
