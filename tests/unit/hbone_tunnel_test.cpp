// The HBONE transport over real TLS on loopback: our client pool and our server session, with
// the relay on both ends (tests/unit/hbone_harness.hpp).

#include <gtest/gtest.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>

#include "hbone_harness.hpp"

#include <fcntl.h>
#include <openssl/bio.h>
#include <poll.h>
#include <sched.h>

#include <cstdlib>
#include <mutex>
#include <set>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include "config/k8s_decoder.hpp"
#include "proxy/authz_connections.hpp"
#include "proxy/connection.hpp"
#include "proxy/connection_result.hpp"
#include "proxy/mesh.hpp"
#include "proxy/proxy_options.hpp"
#include "proxy/proxy_stats.hpp"
#include "proxy/workload_index.hpp"
#include "snapshot/snapshot_builder.hpp"

namespace dsproxy::hbone::test {
namespace hbone_tunnel_test {  // named: unity builds put several test files in one translation unit

std::string authority_of(const asio::ip::tcp::endpoint& ep) { return format_authority(ep); }

TEST(HboneTunnel, EchoesBytesBothWaysWithHalfClose) {
  Harness h;
  auto r = h.open(authority_of(h.echo_endpoint()));
  ASSERT_EQ(r.status, 200) << r.ec.message();
  auto data = random_bytes(8 << 20);
  // The app half-closes after sending; the echo pod sees EOF (END_STREAM became FIN) only then,
  // and its FIN after the echo comes back as our EOF (its END_STREAM) with every byte before it.
  std::thread writer([&] {
    EXPECT_TRUE(write_all(r.fd, data.data(), data.size()));
    ::shutdown(r.fd, SHUT_WR);
  });
  std::vector<char> back;
  EXPECT_TRUE(read_to_eof(r.fd, back));
  writer.join();
  ::close(r.fd);
  EXPECT_EQ(back.size(), data.size());
  EXPECT_EQ(sha256(back.data(), back.size()), sha256(data.data(), data.size()));
  EXPECT_EQ(h.echo_eofs.load(), 1);
  EXPECT_EQ(h.pool_connections(), 1u);
}

TEST(HboneTunnel, DirectionAfterHalfCloseKeepsFlowing) {
  Harness h;
  auto r = h.open(authority_of(h.echo_endpoint()));
  ASSERT_EQ(r.status, 200);
  ASSERT_TRUE(write_all(r.fd, "hello", 5));
  ::shutdown(r.fd, SHUT_WR);
  // Wait for the echo pod to see our FIN before anything comes back: its echo then travels the
  // direction that is still open.
  for (int i = 0; i < 500 && h.echo_eofs.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(h.echo_eofs.load(), 1);
  std::vector<char> back;
  EXPECT_TRUE(read_to_eof(r.fd, back));
  EXPECT_EQ(std::string(back.begin(), back.end()), "hello");
  ::close(r.fd);
}

TEST(HboneTunnel, AppResetResetsThePod) {
  Harness h;
  auto r = h.open(authority_of(h.echo_endpoint()));
  ASSERT_EQ(r.status, 200);
  char buf[4];
  ASSERT_TRUE(write_all(r.fd, "ping", 4));
  ASSERT_TRUE(read_exact(r.fd, buf, 4));
  linger l{1, 0};
  setsockopt(r.fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(r.fd);  // RST -> RST_STREAM -> RST to the pod
  for (int i = 0; i < 500 && h.echo_resets.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(h.echo_resets.load(), 1);
  EXPECT_EQ(h.echo_eofs.load(), 0);
  // The connection outlives the stream.
  EXPECT_EQ(h.pool_connections(), 1u);
}

TEST(HboneTunnel, PodResetResetsTheApp) {
  Harness h;
  auto r = h.open(authority_of(h.resetter_endpoint()));
  ASSERT_EQ(r.status, 200);
  ASSERT_TRUE(write_all(r.fd, "ping", 4));
  char buf[16];
  errno = 0;
  auto n = ::recv(r.fd, buf, sizeof buf, 0);
  EXPECT_EQ(n, -1);
  EXPECT_EQ(errno, ECONNRESET);
  ::close(r.fd);
  // A new stream on the same connection still works.
  auto again = h.open(authority_of(h.echo_endpoint()));
  ASSERT_EQ(again.status, 200);
  ASSERT_TRUE(write_all(again.fd, "x", 1));
  ASSERT_TRUE(read_exact(again.fd, buf, 1));
  ::close(again.fd);
  EXPECT_EQ(h.server_connections.load(), 1);
}

TEST(HboneTunnel, HundredAndFirstStreamOpensASecondConnection) {
  Harness h;
  std::vector<int> fds;
  for (int i = 0; i < 101; ++i) {
    auto r = h.open(authority_of(h.echo_endpoint()));
    ASSERT_EQ(r.status, 200) << i << " " << r.ec.message();
    fds.push_back(r.fd);
  }
  EXPECT_EQ(h.pool_connections(), 2u);
  EXPECT_EQ(h.server_connections.load(), 2);
  // Every tunnel is live.
  for (int fd : fds) {
    char c = 0;
    ASSERT_TRUE(write_all(fd, "z", 1));
    ASSERT_TRUE(read_exact(fd, &c, 1));
    EXPECT_EQ(c, 'z');
    ::close(fd);
  }
}

TEST(HboneTunnel, IdleConnectionIsClosed) {
  PoolOptions options;
  options.idle_timeout = 200ms;
  Harness h(options);
  auto r = h.open(authority_of(h.echo_endpoint()));
  ASSERT_EQ(r.status, 200);
  ::shutdown(r.fd, SHUT_WR);
  std::vector<char> back;
  EXPECT_TRUE(read_to_eof(r.fd, back));
  ::close(r.fd);
  EXPECT_EQ(h.pool_connections(), 1u);
  std::size_t pooled = 1, serving = 1;
  for (int i = 0; i < 300 && (pooled || serving); ++i) {
    std::this_thread::sleep_for(10ms);
    pooled = h.pool_connections();
    serving = h.open_server_sessions();
  }
  EXPECT_EQ(pooled, 0u);
  EXPECT_EQ(serving, 0u);  // the GOAWAY closed the server's end too
  EXPECT_EQ(h.post_and_wait([&] { return h.pool->stats().idle_closed; }), 1u);
  // The next tunnel gets a new connection.
  auto again = h.open(authority_of(h.echo_endpoint()));
  EXPECT_EQ(again.status, 200);
  ::close(again.fd);
  EXPECT_EQ(h.server_connections.load(), 2);
}

TEST(HboneTunnel, SlowStreamDoesNotStallAFastOneOnTheSameConnection) {
  Harness h;
  auto slow = h.open(authority_of(h.sink_endpoint()));
  ASSERT_EQ(slow.status, 200);
  // Fill the slow tunnel until it pushes back: the sink pod never reads.
  set_timeouts(slow.fd, 300ms);
  auto chunk = random_bytes(1 << 20, 7);
  std::size_t pushed = 0;
  const std::size_t cap = 256u << 20;
  while (pushed < cap) {
    auto w = ::send(slow.fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (w <= 0) break;
    pushed += static_cast<std::size_t>(w);
  }
  EXPECT_LT(pushed, cap) << "the slow stream never pushed back";
  // Its stream window is used up now; a second stream on the same connection still flows.
  auto fast = h.open(authority_of(h.echo_endpoint()));
  ASSERT_EQ(fast.status, 200);
  EXPECT_EQ(h.pool_connections(), 1u);
  EXPECT_EQ(h.server_connections.load(), 1);
  auto data = random_bytes(8 << 20, 9);
  std::thread writer([&] {
    EXPECT_TRUE(write_all(fast.fd, data.data(), data.size()));
    ::shutdown(fast.fd, SHUT_WR);
  });
  std::vector<char> back;
  EXPECT_TRUE(read_to_eof(fast.fd, back));
  writer.join();
  EXPECT_EQ(sha256(back.data(), back.size()), sha256(data.data(), data.size()));
  ::close(fast.fd);
  ::close(slow.fd);
}

TEST(HboneTunnel, ServerAnswersItsHandlersStatuses) {
  Harness h;
  auto unreachable = h.sink_endpoint();
  unreachable.port(1);
  h.post_and_wait([&h] {
    h.handler = [&h](std::shared_ptr<IncomingRequest> r) {
      if (r->target().port() == 2) return r->reject(401);
      h.connect_and_relay(std::move(r));  // port 1: connection refused -> 503
    };
  });
  auto refused = h.open(authority_of(unreachable));
  EXPECT_EQ(refused.status, 503);
  EXPECT_EQ(refused.ec, asio::error::connection_refused);
  auto denied = h.open("127.0.0.1:2");
  EXPECT_EQ(denied.status, 401);
  // Not an IP:port authority: 400 from the session itself, before any handler.
  EXPECT_EQ(h.open("example.com:80").status, 400);
  EXPECT_EQ(h.open("[fd00::1]").status, 400);
  EXPECT_EQ(h.open("10.0.0.1:0").status, 400);
  // All on one connection, which still serves.
  auto ok = h.open(authority_of(h.echo_endpoint()));
  EXPECT_EQ(ok.status, 200);
  ::close(ok.fd);
  EXPECT_EQ(h.server_connections.load(), 1);
  // The session's own 400s reach its owner's counter (the handler's 401/503 are the handler's).
  EXPECT_EQ(h.bad_requests.load(), 3);
  EXPECT_EQ(h.protocol_violations.load(), 0);
}

TEST(HboneTunnel, HeadersAndPeerIdentityReachTheServer) {
  Harness h;
  asio::ip::tcp::endpoint client(asio::ip::make_address("fd00::7"), 40000);
  Baggage baggage{.cluster = "Kubernetes", .ns = "default", .workload_type = "deployment",
                  .workload_name = "sleep", .service_name = "sleep", .service_version = "v1"};
  auto r = h.open(authority_of(h.echo_endpoint()),
                  {{"forwarded", format_forwarded(client)}, {"baggage", format_baggage(baggage)}});
  ASSERT_EQ(r.status, 200);
  ::close(r.fd);
  auto [headers, identity] = h.post_and_wait([&] { return std::make_pair(h.seen_headers.at(0), h.seen_identities.at(0)); });
  EXPECT_EQ(identity, TestPki::spiffe("client"));
  auto* forwarded = find_header(headers, "forwarded");
  ASSERT_NE(forwarded, nullptr);
  EXPECT_EQ(*forwarded, "for=\"[fd00::7]:40000\"");
  EXPECT_EQ(parse_forwarded_for(*forwarded), client);
  auto* b = find_header(headers, "baggage");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(parse_baggage(*b), baggage);
}

TEST(HboneTunnel, WrongServerIdentityIsRefusedBeforeUse) {
  Harness h;
  auto r = h.open(authority_of(h.echo_endpoint()), {}, h.key(TestPki::spiffe("other")));
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.ec, asio::error::access_denied);
  EXPECT_EQ(h.post_and_wait([&] { return h.pool->stats().identity_mismatches; }), 1u);
  EXPECT_EQ(h.pool_connections(), 0u);
  EXPECT_EQ(h.echo_eofs.load() + h.echo_resets.load(), 0);
}

// The client's last handshake flight (its Finished) and `bytes`, encrypted, in one write: the
// server reads them in one recv, so its handshake ends with application data already read.
// Writes go to a memory BIO (sent by hand when the handshake waits for the server), reads come
// from the socket.
bool handshake_and_write_in_one_segment(SSL* ssl, int fd, const std::string& bytes) {
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, BIO_new_socket(fd, BIO_NOCLOSE), out);
  auto flush = [&] {
    char* data = nullptr;
    const long n = BIO_get_mem_data(out, &data);
    const bool ok = n <= 0 || write_all(fd, data, static_cast<std::size_t>(n));
    (void)BIO_reset(out);
    return ok;
  };
  const int flags = ::fcntl(fd, F_GETFL);
  ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  bool done = false;
  for (int i = 0; i < 100 && !done; ++i) {
    const int rv = SSL_connect(ssl);
    if (rv == 1) {
      done = true;
      break;
    }
    if (SSL_get_error(ssl, rv) != SSL_ERROR_WANT_READ || !flush()) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) break;
  }
  ::fcntl(fd, F_SETFL, flags);
  return done && SSL_write(ssl, bytes.data(), static_cast<int>(bytes.size())) > 0 && flush();
}

// A TLS client that completes the handshake (ALPN h2, a good certificate) and then writes
// `bytes` instead of the HTTP/2 preface (`one_segment`: in the same write as its Finished):
// the server must close that connection.
bool server_closes_after(Harness& h, const std::string& bytes, bool one_segment = false) {
  int fd = connect_to(h.hbone_endpoint());
  if (fd < 0) return false;
  set_timeouts(fd, 5s);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(h.client_ctx.get()), SSL_free);
  bool closed = false;
  bool sent = false;
  if (one_segment) {
    sent = handshake_and_write_in_one_segment(ssl.get(), fd, bytes);
  } else {
    SSL_set_fd(ssl.get(), fd);
    sent = SSL_connect(ssl.get()) == 1 && SSL_write(ssl.get(), bytes.data(), static_cast<int>(bytes.size())) > 0;
  }
  if (sent) {
    // The server may answer with its SETTINGS and a GOAWAY first; then the connection ends.
    char buf[4096];
    for (int i = 0; i < 64; ++i) {
      int n = SSL_read(ssl.get(), buf, sizeof buf);
      if (n <= 0) {
        int err = SSL_get_error(ssl.get(), n);
        closed = err == SSL_ERROR_ZERO_RETURN || err == SSL_ERROR_SYSCALL || err == SSL_ERROR_SSL;
        break;
      }
    }
  }
  ERR_clear_error();
  ::close(fd);
  return closed;
}

TEST(HboneTunnel, GarbageAfterTlsClosesThatConnectionOnly) {
  Harness h;
  auto before = h.open(authority_of(h.echo_endpoint()));
  ASSERT_EQ(before.status, 200);
  EXPECT_TRUE(server_closes_after(h, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  // A valid preface followed by a frame that breaks the protocol (DATA on stream 0).
  std::string preface = NGHTTP2_CLIENT_MAGIC;
  preface += std::string("\x00\x00\x00\x04\x00\x00\x00\x00\x00", 9);  // empty SETTINGS
  preface += std::string("\x00\x00\x04\x00\x00\x00\x00\x00\x00" "abcd", 13);  // DATA on stream 0
  EXPECT_TRUE(server_closes_after(h, preface));
  // The same bytes in the TCP segment that ends the handshake: the server has them (read
  // ahead with the Finished) before it waits for the socket, and must still answer them.
  EXPECT_TRUE(server_closes_after(h, preface, true));
  // Each of those connections was counted once as a protocol violation (GOAWAY with an error
  // code), the good one not at all.
  EXPECT_EQ(h.protocol_violations.load(), 3);
  // The existing tunnel is untouched, and new ones are served.
  char c;
  ASSERT_TRUE(write_all(before.fd, "k", 1));
  ASSERT_TRUE(read_exact(before.fd, &c, 1));
  ::close(before.fd);
  auto after = h.open(authority_of(h.echo_endpoint()));
  EXPECT_EQ(after.status, 200);
  ::close(after.fd);
}

// A client that ignores SETTINGS_MAX_CONCURRENT_STREAMS and opens 150 streams at once on one
// connection (frames built by hand here, the only way past a conforming HTTP/2 library): the
// server refuses the streams beyond 100 (RST_STREAM REFUSED_STREAM) or ends that connection
// (GOAWAY); either way the process and other connections go on.
TEST(HboneTunnel, StreamFloodIsRefusedPerTheProtocol) {
  Harness h;
  auto before = h.open(authority_of(h.echo_endpoint()));
  ASSERT_EQ(before.status, 200);
  int fd = connect_to(h.hbone_endpoint());
  ASSERT_GE(fd, 0);
  set_timeouts(fd, 5s);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(h.client_ctx.get()), SSL_free);
  SSL_set_fd(ssl.get(), fd);
  ASSERT_EQ(SSL_connect(ssl.get()), 1);
  nghttp2_hd_deflater* deflater = nullptr;
  ASSERT_EQ(nghttp2_hd_deflate_new(&deflater, 4096), 0);
  std::string method = ":method", connect = "CONNECT", auth = ":authority", target = authority_of(h.echo_endpoint());
  auto nv = [](std::string& n, std::string& v) {
    return nghttp2_nv{reinterpret_cast<uint8_t*>(n.data()), reinterpret_cast<uint8_t*>(v.data()), n.size(), v.size(),
                      NGHTTP2_NV_FLAG_NONE};
  };
  std::string out = NGHTTP2_CLIENT_MAGIC;
  out += std::string("\x00\x00\x00\x04\x00\x00\x00\x00\x00", 9);  // our (empty) SETTINGS, never ACKing theirs
  for (std::uint32_t i = 0; i < 150; ++i) {
    nghttp2_nv nva[] = {nv(method, connect), nv(auth, target)};
    std::uint8_t block[256];
    auto len = nghttp2_hd_deflate_hd(deflater, block, sizeof block, nva, 2);
    ASSERT_GT(len, 0);
    std::uint32_t id = 2 * i + 1;
    char hd[9] = {0, 0, static_cast<char>(len), NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS,
                  static_cast<char>(id >> 24), static_cast<char>(id >> 16), static_cast<char>(id >> 8),
                  static_cast<char>(id)};
    out.append(hd, 9);
    out.append(reinterpret_cast<char*>(block), static_cast<std::size_t>(len));
  }
  nghttp2_hd_deflate_del(deflater);
  ASSERT_GT(SSL_write(ssl.get(), out.data(), static_cast<int>(out.size())), 0);
  // Read the server's frames: count refused streams, stop at GOAWAY or the connection's end.
  int refused = 0, answered = 0;
  bool goaway = false;
  std::string in;
  char buf[16384];
  for (int reads = 0; reads < 1000 && refused < 50 && !goaway; ++reads) {
    int n = SSL_read(ssl.get(), buf, sizeof buf);
    if (n <= 0) break;
    in.append(buf, static_cast<std::size_t>(n));
    while (in.size() >= 9) {
      std::size_t len = (std::uint8_t(in[0]) << 16) | (std::uint8_t(in[1]) << 8) | std::uint8_t(in[2]);
      if (in.size() < 9 + len) break;
      auto type = std::uint8_t(in[3]);
      if (type == NGHTTP2_RST_STREAM && len == 4 && std::uint8_t(in[12]) == NGHTTP2_REFUSED_STREAM) ++refused;
      if (type == NGHTTP2_HEADERS) ++answered;
      if (type == NGHTTP2_GOAWAY) goaway = true;
      in.erase(0, 9 + len);
    }
  }
  ERR_clear_error();
  ::close(fd);
  EXPECT_TRUE(refused >= 50 || goaway) << "refused " << refused << " answered " << answered;
  EXPECT_LE(answered, 100);
  char c;
  ASSERT_TRUE(write_all(before.fd, "k", 1));
  ASSERT_TRUE(read_exact(before.fd, &c, 1));
  ::close(before.fd);
}

TEST(HboneTunnel, PlaintextClientIsRefused) {
  Harness h;
  int fd = connect_to(h.hbone_endpoint());
  ASSERT_GE(fd, 0);
  set_timeouts(fd, 5s);
  std::string preface = NGHTTP2_CLIENT_MAGIC;
  write_all(fd, preface.data(), preface.size());
  std::vector<char> out;
  read_to_eof(fd, out, 1 << 16);  // EOF or reset, bounded by the timeout
  ::close(fd);
  for (int i = 0; i < 300 && h.tls_failures.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(h.tls_failures.load(), 1);
}

TEST(HboneTunnel, ForeignCaClientIsRefused) {
  Harness h;
  h.post_and_wait([&h] { h.client_ctx = h.pki.client_context("foreign-client"); });
  auto r = h.open(authority_of(h.echo_endpoint()));
  EXPECT_NE(r.status, 200);
  EXPECT_TRUE(r.ec);
  for (int i = 0; i < 300 && h.tls_failures.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(h.tls_failures.load(), 1);
}


// MeshWorker's inbound side (handle_request) behind our HBONE server: every stream is a
// connection with exactly one record, and a policy change resets an established stream.
// The pods: "server" at 10.250.0.1 (this node's, the harness's echo/resetter listen there),
// "client" at 10.250.0.2 (the identity the harness's client certificate proves), "other" at
// 10.250.0.3 (another identity).
class RecordingSink : public proxy::ConnectionSink {
 public:
  void opened(proxy::ConnectionRecord&) override {}
  void closed(const proxy::ConnectionRecord& r) override {
    std::lock_guard lock(mu_);
    records_.push_back(r);
  }
  std::vector<proxy::ConnectionRecord> wait_for(std::size_t n, std::chrono::milliseconds limit = 5s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      {
        std::lock_guard lock(mu_);
        if (records_.size() >= n || std::chrono::steady_clock::now() > deadline) return records_;
      }
      std::this_thread::sleep_for(5ms);
    }
  }

 private:
  std::mutex mu_;
  std::vector<proxy::ConnectionRecord> records_;
};

std::string mesh_pod(const std::string& name, const std::string& ip, const std::string& node) {
  return "---\napiVersion: v1\nkind: Pod\nmetadata: {name: " + name + "-7d4f8b9c6d-x2x9z, namespace: default, labels: {app: " +
         name + ", istio.io/dataplane-mode: ambient}}\nspec: {nodeName: " + node + ", serviceAccountName: " + name +
         "}\nstatus: {podIPs: [{ip: " + ip + "}]}\n";
}

const std::string kDenyClient = R"(---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: default}
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/client]
)";

// Pod addresses must be global ones (the snapshot never takes a loopback address as a pod's), so
// the test runs in a network namespace of its own whose loopback carries them: the test thread
// enters it before anything opens a socket, the harness's thread inherits it, and the test
// thread returns to its own namespace at the end (the new one goes with its last socket).
class MeshInbound : public ::testing::Test {
 protected:
  void SetUp() override {
    own_ns_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(own_ns_, 0);
    ASSERT_EQ(::unshare(CLONE_NEWNET), 0) << "needs CAP_SYS_ADMIN (run the unit tests as root)";
    ASSERT_EQ(std::system("ip link set lo up && ip addr add 10.250.0.1/32 dev lo && ip addr add 10.250.0.2/32 dev lo "
                          "&& ip addr add 10.250.0.3/32 dev lo"),
              0);
    h = std::make_unique<Harness>(PoolOptions{}, SessionOptions{}, StreamRelayOptions{}, asio::ip::make_address("10.250.0.1"));
    options.upstream_mark = 0;  // SO_MARK needs CAP_NET_ADMIN; not what these tests are about
    options.connect_timeout = 2s;
    publish("");
    const auto* server = store.current()->workload(*net::IpAddress::parse("10.250.0.1"));
    ASSERT_NE(server, nullptr);
    ASSERT_TRUE(server->local);
    ASSERT_EQ(server->identity("cluster.local"), TestPki::spiffe("server"));
    mesh = std::make_unique<proxy::MeshWorker>(h->io.get_executor(), proxy::MeshOptions{}, options, store, stats, load);
    mesh->attach(&sink, &names, &live);
    h->handler = [this](std::shared_ptr<IncomingRequest> r) {
      asio::co_spawn(h->io, mesh->handle_request(std::move(r), *net::SocketAddress::parse("10.250.0.1:15008")),
                     asio::detached);
    };
  }
  void TearDown() override {
    if (h) {
      h->post_and_wait([this] { mesh.reset(); });
      h.reset();
    }
    if (own_ns_ >= 0) {
      EXPECT_EQ(::setns(own_ns_, CLONE_NEWNET), 0);
      ::close(own_ns_);
    }
  }
  void publish(const std::string& policies) {
    builder.replace_all(config::decode_objects(mesh_pod("server", "10.250.0.1", "n1") +
                                               mesh_pod("client", "10.250.0.2", "n2") +
                                               mesh_pod("other", "10.250.0.3", "n2") + policies));
    store.publish(builder.build());
  }
  Headers from(const std::string& client, std::string baggage = {}) {
    Headers headers{{"forwarded", format_forwarded(net::to_endpoint(*net::SocketAddress::parse(client)))}};
    if (!baggage.empty()) headers.push_back({"baggage", std::move(baggage)});
    return headers;
  }
  std::string echo() const { return authority_of(h->echo_endpoint()); }

  int own_ns_ = -1;
  RecordingSink sink;  // outlives the harness (records are emitted on its thread)
  proxy::WorkloadIndex names;
  proxy::AuthzConnections live;
  snapshot::SnapshotBuilder builder{{"n1"}};
  snapshot::SnapshotStore store;
  proxy::ProxyStats stats;
  proxy::WorkerLoad load;
  proxy::ProxyOptions options;
  std::unique_ptr<Harness> h;
  std::unique_ptr<proxy::MeshWorker> mesh;
};

TEST_F(MeshInbound, CompletedStreamEmitsOneRecordWithTheDestinationView) {
  auto r = h->open(echo(), from("10.250.0.2:40000"));
  ASSERT_EQ(r.status, 200) << r.ec.message();
  ASSERT_TRUE(write_all(r.fd, "hello", 5));
  ::shutdown(r.fd, SHUT_WR);
  std::vector<char> back;
  EXPECT_TRUE(read_to_eof(r.fd, back));
  ::close(r.fd);
  EXPECT_EQ(std::string(back.begin(), back.end()), "hello");
  auto records = sink.wait_for(1);
  ASSERT_EQ(records.size(), 1u);
  const auto& rec = records[0];
  EXPECT_EQ(rec.reason, proxy::EndReason::completed);
  EXPECT_EQ(rec.direction, proxy::Direction::inbound);
  EXPECT_TRUE(rec.connected);
  EXPECT_EQ(rec.bytes_to_upstream, 5u);
  EXPECT_EQ(rec.bytes_to_downstream, 5u);
  EXPECT_EQ(rec.source.to_string(), "10.250.0.2:40000");
  EXPECT_EQ(rec.destination.to_string(), "10.250.0.1:" + std::to_string(h->echo_endpoint().port()));
  EXPECT_EQ(rec.protocol, proxy::RequestProtocol::hbone);
  EXPECT_EQ(rec.security, proxy::SecurityPolicy::mutual_tls);
  ASSERT_TRUE(rec.source_principal);
  EXPECT_EQ(*rec.source_principal, TestPki::spiffe("client"));
  ASSERT_TRUE(rec.destination_principal);
  EXPECT_EQ(*rec.destination_principal, TestPki::spiffe("server"));
  ASSERT_TRUE(rec.source_workload);
  EXPECT_EQ(rec.source_workload->workload, "client");
  ASSERT_TRUE(rec.destination_workload);
  EXPECT_EQ(rec.destination_workload->workload, "server");
  EXPECT_EQ(sink.wait_for(2, 100ms).size(), 1u);  // exactly one
  EXPECT_EQ(h->post_and_wait([this] { return live.size(); }), 0u);  // nothing decided it: not listed
}

TEST_F(MeshInbound, RefusalsAreRecordedWithTheirReasons) {
  // 401: the forwarded client is a workload of another identity than the certificate's.
  EXPECT_EQ(h->open(echo(), from("10.250.0.3:1")).status, 401);
  // 401: an unknown client; its baggage names it in the record, nothing more.
  EXPECT_EQ(h->open(echo(),
                   from("10.9.9.9:1", "k8s.namespace.name=far,k8s.deployment.name=web,service.version=v2"))
                .status,
            401);
  // 400: not the pod the outer connection was addressed to.
  EXPECT_EQ(h->open("10.250.0.3:80", from("10.250.0.2:1")).status, 400);
  // 401 by policy.
  publish(kDenyClient);
  EXPECT_EQ(h->open(echo(), from("10.250.0.2:1")).status, 401);
  auto records = sink.wait_for(4);
  ASSERT_EQ(records.size(), 4u);
  EXPECT_EQ(records[0].reason, proxy::EndReason::rejected_source_identity);
  EXPECT_EQ(proxy::response_flags(records[0].reason), "DENY");
  EXPECT_EQ(*records[0].source_principal, TestPki::spiffe("client"));  // the proven one, never the claimed
  EXPECT_EQ(records[1].reason, proxy::EndReason::rejected_source_identity);
  ASSERT_TRUE(records[1].source_workload);
  EXPECT_EQ(records[1].source_workload->ns, "far");
  EXPECT_EQ(records[1].source_workload->workload, "web");
  EXPECT_EQ(records[1].source_workload->version, "v2");
  EXPECT_EQ(records[2].reason, proxy::EndReason::rejected_forbidden_destination);
  EXPECT_EQ(records[3].reason, proxy::EndReason::denied_by_policy);
  EXPECT_EQ(records[3].policy, "default/deny-client");
  for (const auto& r : records) EXPECT_FALSE(r.connected);
  EXPECT_EQ(sink.wait_for(5, 100ms).size(), 4u);
}

TEST_F(MeshInbound, OutboundBaggageIsZtunnels) {
  // What open_tunnel sends for the client pod; the inbound side reads it back with ztunnel's keys.
  const std::string b = h->post_and_wait([this] { return mesh->baggage_for(*net::IpAddress::parse("10.250.0.2")); });
  EXPECT_EQ(b, "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=client,service.name=client,"
               "service.version=latest");
  EXPECT_EQ(h->post_and_wait([this] { return mesh->baggage_for(*net::IpAddress::parse("10.9.9.9")); }), "");
}

TEST_F(MeshInbound, PodResetIsRecordedAsUpstreamReset) {
  auto r = h->open(authority_of(h->resetter_endpoint()), from("10.250.0.2:1"));
  ASSERT_EQ(r.status, 200);
  ASSERT_TRUE(write_all(r.fd, "x", 1));
  char buf[4];
  EXPECT_LT(::recv(r.fd, buf, sizeof buf, 0), 0);
  ::close(r.fd);
  auto records = sink.wait_for(1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].reason, proxy::EndReason::upstream_reset);
}

TEST_F(MeshInbound, PolicyChangeResetsAnEstablishedStream) {
  publish(R"(---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: default}
spec:
  rules:
  - {}
)");
  auto r = h->open(echo(), from("10.250.0.2:1"));
  ASSERT_EQ(r.status, 200);
  char buf[4];
  ASSERT_TRUE(write_all(r.fd, "ping", 4));
  ASSERT_TRUE(read_exact(r.fd, buf, 4));
  EXPECT_EQ(h->post_and_wait([this] { return live.size(); }), 1u);
  // Nothing denies it yet: a walk leaves it alone.
  EXPECT_EQ(h->post_and_wait([this] { return live.reevaluate(store.current()->authz()); }), 0u);
  publish(kDenyClient);
  EXPECT_EQ(h->post_and_wait([this] { return live.reevaluate(store.current()->authz()); }), 1u);
  // RST_STREAM to the peer (the app's socket is reset in turn), RST to the pod.
  EXPECT_LT(::recv(r.fd, buf, sizeof buf, 0), 0);
  ::close(r.fd);
  for (int i = 0; i < 500 && h->echo_resets.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(h->echo_resets.load(), 1);
  EXPECT_EQ(h->echo_eofs.load(), 0);
  auto records = sink.wait_for(1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].reason, proxy::EndReason::denied_by_policy);
  EXPECT_EQ(records[0].policy, "default/deny-client");
  EXPECT_EQ(records[0].bytes_to_upstream, 4u);
  EXPECT_EQ(h->post_and_wait([this] { return live.size(); }), 0u);  // deregistered with its relay
}

// A peer that completes TLS and the HTTP/2 preface, then opens no stream and says nothing: its
// connection is sent GOAWAY and closed after the server's idle timeout, while a tunnel of another
// client on another connection goes on.
TEST(HboneTunnel, SilentSessionIsSentGoawayAndClosed) {
  SessionOptions server;
  server.idle_timeout = 200ms;
  Harness h({}, server);
  auto other = h.open(authority_of(h.echo_endpoint()));
  ASSERT_EQ(other.status, 200);
  int fd = connect_to(h.hbone_endpoint());
  ASSERT_GE(fd, 0);
  set_timeouts(fd, 5s);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(h.client_ctx.get()), SSL_free);
  SSL_set_fd(ssl.get(), fd);
  ASSERT_EQ(SSL_connect(ssl.get()), 1);
  std::string out = NGHTTP2_CLIENT_MAGIC;
  out += std::string("\x00\x00\x00\x04\x00\x00\x00\x00\x00", 9);  // empty SETTINGS, then silence
  ASSERT_GT(SSL_write(ssl.get(), out.data(), static_cast<int>(out.size())), 0);
  bool goaway = false, ended = false;
  std::uint32_t goaway_code = ~0u;
  std::string in;
  char buf[16384];
  for (int reads = 0; reads < 100 && !ended; ++reads) {
    errno = 0;
    int n = SSL_read(ssl.get(), buf, sizeof buf);
    if (n <= 0) {
      // The connection ended (EOF, with or without close_notify, or a reset); a timeout (nothing
      // in 5 s) is no end.
      const int e = SSL_get_error(ssl.get(), n);
      ended = !(e == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK));
      break;
    }
    in.append(buf, static_cast<std::size_t>(n));
    while (in.size() >= 9) {
      std::size_t len = (std::uint8_t(in[0]) << 16) | (std::uint8_t(in[1]) << 8) | std::uint8_t(in[2]);
      if (in.size() < 9 + len) break;
      if (std::uint8_t(in[3]) == NGHTTP2_GOAWAY && len >= 8) {
        goaway = true;
        goaway_code = (std::uint32_t(std::uint8_t(in[13])) << 24) | (std::uint32_t(std::uint8_t(in[14])) << 16) |
                      (std::uint32_t(std::uint8_t(in[15])) << 8) | std::uint8_t(in[16]);
      }
      in.erase(0, 9 + len);
    }
  }
  ERR_clear_error();
  ::close(fd);
  EXPECT_TRUE(goaway);
  EXPECT_EQ(goaway_code, static_cast<std::uint32_t>(NGHTTP2_NO_ERROR));
  EXPECT_TRUE(ended);
  // The silent connection is gone on the server; the busy one serves on.
  std::size_t serving = 2;
  for (int i = 0; i < 300 && serving != 1; ++i) {
    std::this_thread::sleep_for(10ms);
    serving = h.open_server_sessions();
  }
  EXPECT_EQ(serving, 1u);
  char c = 0;
  ASSERT_TRUE(write_all(other.fd, "q", 1));
  ASSERT_TRUE(read_exact(other.fd, &c, 1));
  EXPECT_EQ(c, 'q');
  ::close(other.fd);
}

// A tunnel through which no byte moves for the relay's idle timeout is reset both ways: the
// peer sees RST_STREAM (the app here a TCP reset), the pod a TCP reset. A tunnel on the same
// connection that keeps talking is untouched.
// The peer's GOAWAY must not switch our idle timeout off. A peer opens a tunnel and a refused
// stream it never ends (it keeps nghttp2 wanting to read), says GOAWAY while the tunnel is open,
// then cancels the tunnel: the connection is idle and must still be closed (before the fix the
// received GOAWAY disarmed the timer for good, so the connection and its worker slot were held
// for ever).
TEST(HboneTunnel, APeersGoawayDoesNotKeepAnIdleConnectionOpen) {
  SessionOptions server;
  server.idle_timeout = 200ms;
  server.handshake_timeout = 500ms;
  Harness h({}, server);
  int fd = connect_to(h.hbone_endpoint());
  ASSERT_GE(fd, 0);
  set_timeouts(fd, 5s);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(h.client_ctx.get()), SSL_free);
  SSL_set_fd(ssl.get(), fd);
  ASSERT_EQ(SSL_connect(ssl.get()), 1);
  nghttp2_hd_deflater* deflater = nullptr;
  ASSERT_EQ(nghttp2_hd_deflate_new(&deflater, 4096), 0);
  auto frame = [](std::uint8_t type, std::uint8_t flags, std::uint32_t stream, const std::string& payload) {
    std::string f;
    f += static_cast<char>((payload.size() >> 16) & 0xff);
    f += static_cast<char>((payload.size() >> 8) & 0xff);
    f += static_cast<char>(payload.size() & 0xff);
    f += static_cast<char>(type);
    f += static_cast<char>(flags);
    for (int shift : {24, 16, 8, 0}) f += static_cast<char>((stream >> shift) & 0xff);
    return f + payload;
  };
  auto headers = [&](std::vector<std::pair<std::string, std::string>> fields) {
    std::vector<nghttp2_nv> nva;
    for (auto& [n, v] : fields)
      nva.push_back({reinterpret_cast<std::uint8_t*>(n.data()), reinterpret_cast<std::uint8_t*>(v.data()), n.size(),
                     v.size(), NGHTTP2_NV_FLAG_NONE});
    std::string block(nghttp2_hd_deflate_bound(deflater, nva.data(), nva.size()), '\0');
    const auto n = nghttp2_hd_deflate_hd(deflater, reinterpret_cast<std::uint8_t*>(block.data()), block.size(),
                                         nva.data(), nva.size());
    block.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    return block;
  };
  std::string out = NGHTTP2_CLIENT_MAGIC;
  out += frame(NGHTTP2_SETTINGS, 0, 0, "");
  out += frame(NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 1,
               headers({{":method", "CONNECT"}, {":authority", authority_of(h.echo_endpoint())}}));
  // Refused (400) and never ended by us: nghttp2 keeps it open, waiting for our END_STREAM.
  out += frame(NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 3,
               headers({{":method", "GET"}, {":scheme", "https"}, {":path", "/"}, {":authority", "x"}}));
  nghttp2_hd_deflate_del(deflater);
  ASSERT_GT(SSL_write(ssl.get(), out.data(), static_cast<int>(out.size())), 0);
  // Reads frames until `done` says so or the connection ends; true when it ended.
  std::string in;
  std::set<std::uint32_t> answered;
  auto read_until = [&](auto done) {
    char buf[16384];
    for (int reads = 0; reads < 100 && !done(); ++reads) {
      errno = 0;
      int n = SSL_read(ssl.get(), buf, sizeof buf);
      if (n <= 0) {
        // A receive timeout (nothing for 5 s) is no end: OpenSSL reports it as WANT_READ or SYSCALL.
        const int e = SSL_get_error(ssl.get(), n);
        return !((e == SSL_ERROR_SYSCALL || e == SSL_ERROR_WANT_READ) && (errno == EAGAIN || errno == EWOULDBLOCK));
      }
      in.append(buf, static_cast<std::size_t>(n));
      while (in.size() >= 9) {
        std::size_t len = (std::uint8_t(in[0]) << 16) | (std::uint8_t(in[1]) << 8) | std::uint8_t(in[2]);
        if (in.size() < 9 + len) break;
        const std::uint32_t stream = ((std::uint8_t(in[5]) & 0x7f) << 24) | (std::uint8_t(in[6]) << 16) |
                                     (std::uint8_t(in[7]) << 8) | std::uint8_t(in[8]);
        if (std::uint8_t(in[3]) == NGHTTP2_HEADERS) answered.insert(stream);
        in.erase(0, 9 + len);
      }
    }
    return false;
  };
  ASSERT_FALSE(read_until([&] { return answered.count(1) && answered.count(3); }));
  // GOAWAY from the peer while the tunnel is open, then the tunnel cancelled.
  std::string goaway(8, '\0');
  std::string cancel("\x00\x00\x00\x08", 4);
  std::string tail = frame(NGHTTP2_GOAWAY, 0, 0, goaway) + frame(NGHTTP2_RST_STREAM, 0, 1, cancel);
  ASSERT_GT(SSL_write(ssl.get(), tail.data(), static_cast<int>(tail.size())), 0);
  const bool ended = read_until([] { return false; });
  ERR_clear_error();
  ::close(fd);
  EXPECT_TRUE(ended) << "the idle connection was not closed";
  std::size_t serving = 1;
  for (int i = 0; i < 300 && serving != 0; ++i) {
    std::this_thread::sleep_for(10ms);
    serving = h.open_server_sessions();
  }
  EXPECT_EQ(serving, 0u);
}

TEST(HboneTunnel, SilentStreamIsResetAfterTheIdleTimeout) {
  StreamRelayOptions relay;
  relay.idle_timeout = 300ms;
  Harness h({}, {}, relay);
  auto silent = h.open(authority_of(h.echo_endpoint()));
  ASSERT_EQ(silent.status, 200);
  auto busy = h.open(authority_of(h.echo_endpoint()));
  ASSERT_EQ(busy.status, 200);
  set_timeouts(silent.fd, 5s);
  std::atomic<bool> busy_ok{true}, stop{false};
  std::thread talker([&] {
    // Bounded: at most 200 exchanges (10 s).
    for (int i = 0; i < 200 && !stop.load(); ++i) {
      char c = static_cast<char>('a' + i % 26), back = 0;
      if (!write_all(busy.fd, &c, 1) || !read_exact(busy.fd, &back, 1) || back != c) {
        busy_ok = false;
        return;
      }
      std::this_thread::sleep_for(50ms);
    }
  });
  char b = 0;
  errno = 0;
  const auto r = ::recv(silent.fd, &b, 1, 0);
  const int err = errno;
  stop = true;
  talker.join();
  EXPECT_EQ(r, -1);
  EXPECT_EQ(err, ECONNRESET);  // not EAGAIN: nothing within 5 s
  EXPECT_TRUE(busy_ok.load());
  for (int i = 0; i < 300 && h.echo_resets.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_GE(h.echo_resets.load(), 1);  // the pod's side was reset too, not closed cleanly
  EXPECT_EQ(h.server_relay_idle_timeouts.load(), 1);
  char c = 0;
  ASSERT_TRUE(write_all(busy.fd, "z", 1));
  ASSERT_TRUE(read_exact(busy.fd, &c, 1));
  ::close(silent.fd);
  ::close(busy.fd);
}

// Bytes a peer sent on a stream that then closed cleanly (END_STREAM both ways) while nobody read
// them must leave the session's buffer accounting once the stream is given up (dropped, or reset
// by a relay whose socket failed); otherwise a peer could fill the connection's budget stream by
// stream and leave its connection credit held back for ever.
TEST(HboneTunnel, UnreadBytesOfACleanlyClosedStreamLeaveTheSessionBudget) {
  Harness h;
  std::vector<std::shared_ptr<Stream>> held;  // io thread only
  struct Release {  // streams go on the io thread, before the harness, whatever path the test takes
    Harness& h;
    std::vector<std::shared_ptr<Stream>>& held;
    ~Release() {
      h.post_and_wait([this] { held.clear(); });
    }
  } release{h, held};
  h.post_and_wait([&] {
    h.handler = [&held](std::shared_ptr<IncomingRequest> r) {
      auto stream = r->accept();
      if (!stream) return;
      stream->shutdown_send();  // END_STREAM our way at once; never read
      held.push_back(std::move(stream));
    };
  });
  constexpr std::size_t kBytes = 100 * 1024;
  const auto data = random_bytes(kBytes);
  for (int round = 0; round < 2; ++round) {
    auto r = h.open(authority_of(h.echo_endpoint()));
    ASSERT_EQ(r.status, 200);
    ASSERT_TRUE(write_all(r.fd, data.data(), data.size()));
    ::shutdown(r.fd, SHUT_WR);
    std::vector<char> back;
    EXPECT_TRUE(read_to_eof(r.fd, back));  // our END_STREAM
    ::close(r.fd);
    // Wait until the stream closed cleanly with every byte buffered.
    bool closed = false;
    for (int i = 0; i < 500 && !closed; ++i) {
      closed = h.post_and_wait([&] { return !held.empty() && held.back()->closed(); });
      if (!closed) std::this_thread::sleep_for(10ms);
    }
    ASSERT_TRUE(closed);
    auto buffered = [&] { return h.post_and_wait([&] { return h.server_sessions.at(0)->buffered_bytes(); }); };
    EXPECT_EQ(buffered(), kBytes);
    // Round 0: the stream is dropped; round 1: reset after its clean close (a relay giving up).
    h.post_and_wait([&] {
      if (round == 0) held.clear();
      else held.back()->reset();
    });
    EXPECT_EQ(buffered(), 0u) << "round " << round;
  }
  // The connection still carries a tunnel end to end.
  h.post_and_wait([&] {
    h.handler = [&h](std::shared_ptr<IncomingRequest> r) { h.connect_and_relay(std::move(r)); };
  });
  auto ok = h.open(authority_of(h.echo_endpoint()));
  ASSERT_EQ(ok.status, 200);
  char c = 0;
  ASSERT_TRUE(write_all(ok.fd, "y", 1));
  ASSERT_TRUE(read_exact(ok.fd, &c, 1));
  ::close(ok.fd);
  EXPECT_EQ(h.server_connections.load(), 1);
}

}  // namespace hbone_tunnel_test
}  // namespace dsproxy::hbone::test
