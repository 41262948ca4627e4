#pragma once
// A loopback HBONE testbed for the unit tests: our server (TLS 1.3, ALPN h2, mutual auth) on
// 127.0.0.1:0 whose default handler connects to the CONNECT target and relays, upstream test
// servers (echo, sink, resetter), and a client pool whose tunnels an app reaches over a local
// TCP socket, so the tests speak plain blocking TCP from their own thread while everything else
// runs on one io_context thread, as on a worker.

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "hbone/authority.hpp"
#include "hbone/connection_pool.hpp"
#include "hbone/session.hpp"
#include "hbone/stream_relay.hpp"
#include "hbone/tls_stream.hpp"
#include "hbone_test_pki.hpp"

namespace dsproxy::hbone::test {

namespace asio = boost::asio;
using boost::system::error_code;
using namespace std::chrono_literals;

inline std::vector<char> random_bytes(std::size_t n, unsigned seed = 1) {
  std::vector<char> out(n);
  std::mt19937 rng(seed);
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

inline std::string sha256(const char* data, std::size_t n) {
  unsigned char md[32];
  unsigned int len = 0;
  EVP_Digest(data, n, md, &len, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) out += {hex[md[i] >> 4], hex[md[i] & 15]};
  return out;
}

// Blocking-socket helpers with timeouts, for the test thread.
inline void set_timeouts(int fd, std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000), static_cast<suseconds_t>((t.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}
inline int connect_to(const asio::ip::tcp::endpoint& ep) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(ep.port());
  sa.sin_addr.s_addr = htonl(ep.address().to_v4().to_uint());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ::close(fd);
    return -1;
  }
  set_timeouts(fd, 10s);
  return fd;
}
inline bool write_all(int fd, const char* data, std::size_t n) {
  while (n) {
    auto w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    data += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}
// Reads until EOF (true) or an error/timeout (false, errno kept).
inline bool read_to_eof(int fd, std::vector<char>& out, std::size_t limit = 1u << 30) {
  char buf[65536];
  while (out.size() < limit) {
    auto r = ::recv(fd, buf, sizeof buf, 0);
    if (r == 0) return true;
    if (r < 0) return false;
    out.insert(out.end(), buf, buf + r);
  }
  return false;
}
inline bool read_exact(int fd, char* out, std::size_t n) {
  while (n) {
    auto r = ::recv(fd, out, n, 0);
    if (r <= 0) return false;
    out += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

struct OpenResult {
  error_code ec;
  int status = 0;
  int fd = -1;  // the app's end of the tunnel when status == 200
};

class Harness {
 public:
  using tcp = asio::ip::tcp;
  const TestPki& pki = TestPki::get();
  asio::io_context io;
  tcp::acceptor hbone{io}, app{io}, echo{io}, sink{io}, resetter{io};
  std::shared_ptr<SSL_CTX> server_ctx = pki.server_context("server");
  std::shared_ptr<SSL_CTX> client_ctx = pki.client_context("client");
  std::shared_ptr<ConnectionPool> pool;
  RequestHandler handler;  // the server's; default: connect to the target and relay
  std::vector<std::shared_ptr<Session>> server_sessions;
  std::vector<std::shared_ptr<tcp::socket>> sink_sockets;
  std::atomic<int> server_connections{0}, tls_failures{0}, echo_resets{0}, echo_eofs{0};
  // What the server sessions refused on their own (Session::set_refusal_observer).
  std::atomic<int> bad_requests{0}, protocol_violations{0};
  std::atomic<int> server_relay_idle_timeouts{0};
  // The server's sessions and relays (fixed at construction: the io thread reads them).
  const SessionOptions server_options;
  const StreamRelayOptions server_relay;
  std::vector<Headers> seen_headers;          // headers of each request the server saw (io thread)
  std::vector<std::string> seen_identities;  // peer identity per request

  // `pods`: where the upstream test servers (echo, sink, resetter) listen.
  explicit Harness(PoolOptions options = {}, SessionOptions server = {}, StreamRelayOptions relay = {},
                   asio::ip::address pods = asio::ip::address_v4::loopback())
      : server_options(server), server_relay(relay) {
    for (auto* a : {&hbone, &app, &echo, &sink, &resetter}) {
      a->open(tcp::v4());
      a->set_option(tcp::acceptor::reuse_address(true));
      a->bind({a == &hbone || a == &app ? asio::ip::address(asio::ip::address_v4::loopback()) : pods, 0});
      a->listen(1024);
    }
    handler = [this](std::shared_ptr<IncomingRequest> r) { connect_and_relay(std::move(r)); };
    ConnectionPool::Hooks hooks;
    hooks.context_for = [this](const PoolKey&) { return client_ctx; };
    hooks.verify = [](const PoolKey& key, SSL* ssl) { return TestPki::peer_uri(ssl) == key.destination_identity; };
    pool = ConnectionPool::create(io.get_executor(), options, std::move(hooks));
    accept_hbone();
    accept_echo();
    accept_sink();
    accept_resetter();
    thread_ = std::thread([this] { io.run(); });
  }

  ~Harness() {
    post_and_wait([this] {
      pool->close();
      for (auto& s : server_sessions) s->close();
      server_sessions.clear();
      for (auto& s : sink_sockets) s->close();
      sink_sockets.clear();
      for (auto* a : {&hbone, &app, &echo, &sink, &resetter}) a->close();
    });
    work_.reset();
    // Every relay and session ends once its sockets are closed; bounded in case one does not.
    auto done = std::async(std::launch::async, [this] { thread_.join(); });
    if (done.wait_for(5s) != std::future_status::ready) {
      io.stop();
      done.wait();
    }
  }

  tcp::endpoint hbone_endpoint() const { return hbone.local_endpoint(); }
  tcp::endpoint echo_endpoint() const { return echo.local_endpoint(); }
  tcp::endpoint sink_endpoint() const { return sink.local_endpoint(); }
  tcp::endpoint resetter_endpoint() const { return resetter.local_endpoint(); }
  PoolKey key(const std::string& server_identity = TestPki::spiffe("server")) const {
    return {TestPki::spiffe("client"), server_identity, hbone_endpoint()};
  }

  template <typename F>
  auto post_and_wait(F f) -> decltype(f()) {
    std::packaged_task<decltype(f())()> task(std::move(f));
    auto future = task.get_future();
    asio::post(io, [&task] { task(); });
    if (future.wait_for(10s) != std::future_status::ready) throw std::runtime_error("io thread stuck");
    return future.get();
  }

  // Opens a tunnel to `authority` through the pool and relays it to a local socket whose other
  // end is returned (blocking, 10 s timeouts).
  OpenResult open(const std::string& authority, Headers headers = {}, std::optional<PoolKey> k = std::nullopt) {
    auto promise = std::make_shared<std::promise<OpenResult>>();
    auto future = promise->get_future();
    PoolKey pool_key = k ? *k : key();
    asio::post(io, [this, promise, authority, headers, pool_key] {
      app.async_accept([this, promise, authority, headers, pool_key](error_code ec, tcp::socket socket) {
        if (ec) return promise->set_value({ec, 0, -1});
        auto sock = std::make_shared<tcp::socket>(std::move(socket));
        pool->open_stream(pool_key, authority, headers,
                          [promise, sock](error_code ec, int status, std::shared_ptr<Stream> stream) {
                            if (stream) start_stream_relay(std::move(*sock), stream, [](StreamRelayResult) {});
                            else sock->close();
                            promise->set_value({ec, status, -1});
                          });
      });
    });
    int fd = connect_to(app.local_endpoint());
    if (future.wait_for(10s) != std::future_status::ready) {
      ::close(fd);
      return {asio::error::timed_out, 0, -1};
    }
    auto result = future.get();
    if (result.status == 200) result.fd = fd;
    else ::close(fd);
    return result;
  }

  std::size_t pool_connections() {
    return post_and_wait([this] { return pool->connection_count(); });
  }
  std::size_t open_server_sessions() {
    return post_and_wait([this] {
      std::size_t n = 0;
      for (auto& s : server_sessions) n += s->closed() ? 0 : 1;
      return n;
    });
  }

  void connect_and_relay(std::shared_ptr<IncomingRequest> request) {
    seen_headers.push_back(request->headers());
    seen_identities.push_back(request->connection().peer_identity);
    auto upstream = std::make_shared<tcp::socket>(io);
    upstream->async_connect(request->target(), [this, request, upstream](error_code ec) {
      if (ec) return request->reject(503);
      auto stream = request->accept();
      if (!stream) return;
      start_stream_relay(std::move(*upstream), std::move(stream), server_relay, [this](StreamRelayResult r) {
        if (r.idle_timeout) ++server_relay_idle_timeouts;
      });
    });
  }

 private:
  void accept_hbone() {
    hbone.async_accept([this](error_code ec, tcp::socket socket) {
      if (ec) return;
      ++server_connections;
      std::shared_ptr<TlsStream> tls = make_tls_stream(std::move(socket), server_ctx, false);
      tls->async_handshake(asio::ssl::stream_base::server, [this, tls](error_code ec) mutable {
        if (ec || !negotiated_h2(tls->native_handle())) {
          ++tls_failures;
          error_code ignored;
          tls->lowest_layer().close(ignored);
          return;
        }
        ConnectionInfo info;
        info.peer_identity = TestPki::peer_uri(tls->native_handle()).value_or("");
        error_code ignored;
        info.local = tls->lowest_layer().local_endpoint(ignored);
        info.remote = tls->lowest_layer().remote_endpoint(ignored);
        // Session wants sole ownership; the handshake is done, so the stream moves in.
        auto owned = std::make_unique<TlsStream>(std::move(*tls));
        auto session =
            Session::make_server(std::move(owned), std::move(info), server_options, [this](auto r) { handler(r); });
        session->set_refusal_observer([this](SessionRefusal r) {
          ++(r == SessionRefusal::bad_request ? bad_requests : protocol_violations);
        });
        server_sessions.push_back(session);
        session->start();
      });
      accept_hbone();
    });
  }
  void accept_echo() {
    echo.async_accept([this](error_code ec, tcp::socket socket) {
      if (ec) return;
      echo_loop(std::make_shared<tcp::socket>(std::move(socket)), std::make_shared<std::vector<char>>(65536));
      accept_echo();
    });
  }
  void echo_loop(std::shared_ptr<tcp::socket> s, std::shared_ptr<std::vector<char>> buf) {
    s->async_read_some(asio::buffer(*buf), [this, s, buf](error_code ec, std::size_t n) {
      if (ec == asio::error::eof) {
        ++echo_eofs;
        s->shutdown(tcp::socket::shutdown_send, ec);
        return;
      }
      if (ec) {
        if (ec == asio::error::connection_reset) ++echo_resets;
        return;
      }
      asio::async_write(*s, asio::buffer(buf->data(), n), [this, s, buf](error_code ec, std::size_t) {
        if (!ec) echo_loop(s, buf);
      });
    });
  }
  void accept_sink() {
    sink.async_accept([this](error_code ec, tcp::socket socket) {
      if (ec) return;
      // Never read: the slow pod.
      socket.set_option(asio::socket_base::receive_buffer_size(64 * 1024));
      sink_sockets.push_back(std::make_shared<tcp::socket>(std::move(socket)));
      accept_sink();
    });
  }
  void accept_resetter() {
    resetter.async_accept([this](error_code ec, tcp::socket socket) {
      if (ec) return;
      auto s = std::make_shared<tcp::socket>(std::move(socket));
      auto buf = std::make_shared<std::array<char, 16>>();
      s->async_read_some(asio::buffer(*buf), [s, buf](error_code, std::size_t) {
        error_code ignored;
        s->set_option(asio::socket_base::linger(true, 0), ignored);
        s->close(ignored);
      });
      accept_resetter();
    });
  }

  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_{io.get_executor()};
  std::thread thread_;
};

}  // namespace dsproxy::hbone::test
