#include "admin/admin_server.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <list>

#include "net/io/transparent_socket.hpp"

namespace dsproxy::admin {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr auto as_values = asio::as_tuple(asio::use_awaitable);

// Holds one place of a SessionLimit for a session's whole life (its coroutine frame).
class SessionSlot {
 public:
  explicit SessionSlot(std::shared_ptr<SessionLimit> limit) : limit_(std::move(limit)) {
    if (limit_) limit_->active.fetch_add(1, std::memory_order_relaxed);
  }
  SessionSlot(SessionSlot&& other) noexcept : limit_(std::move(other.limit_)) {}
  SessionSlot(const SessionSlot&) = delete;
  SessionSlot& operator=(const SessionSlot&) = delete;
  SessionSlot& operator=(SessionSlot&&) = delete;
  ~SessionSlot() {
    if (limit_) limit_->active.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  std::shared_ptr<SessionLimit> limit_;
};

asio::awaitable<void> serve_session(tcp::socket socket, std::shared_ptr<AdminHandler> handler, SessionSlot) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  for (;;) {
    // A slow or silent admin client loses its own connection after 10 s, nothing else.
    stream.expires_after(std::chrono::seconds(10));
    http::request_parser<http::empty_body> parser;
    parser.header_limit(16 * 1024);
    auto [read_ec, n] = co_await http::async_read(stream, buffer, parser, as_values);
    if (read_ec) break;
    const auto& request = parser.get();
    http::response<http::string_body> response;
    response.version(request.version());
    response.keep_alive(request.keep_alive());
    if (request.method() != http::verb::get && request.method() != http::verb::head) {
      response.result(http::status::method_not_allowed);
      response.set(http::field::content_type, "text/plain");
      response.body() = "only GET is supported\n";
    } else {
      std::string_view target(request.target().data(), request.target().size());
      if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
      AdminResponse r = (*handler)(target);
      response.result(static_cast<unsigned>(r.status));
      response.set(http::field::content_type, r.content_type);
      response.body() = std::move(r.body);
    }
    response.prepare_payload();
    auto [write_ec, written] = co_await http::async_write(stream, response, as_values);
    if (write_ec || !response.keep_alive()) break;
  }
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
}

}  // namespace

struct AdminServer::Impl {
  asio::any_io_executor executor;
  std::list<tcp::acceptor> acceptors;  // list: stable addresses for the accept coroutines

  asio::awaitable<void> accept_loop(tcp::acceptor& acceptor, std::shared_ptr<AdminHandler> handler,
                                    std::shared_ptr<SessionLimit> limit) {
    asio::steady_timer pause(executor);
    for (;;) {
      auto [ec, socket] = co_await acceptor.async_accept(as_values);
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      if (ec) {
        // EMFILE and the like: retrying at once would spin the control thread.
        pause.expires_after(std::chrono::milliseconds(50));
        co_await pause.async_wait(as_values);
        continue;
      }
      if (limit && limit->active.load(std::memory_order_relaxed) >= limit->max) {
        // Full (a flood, or clients that connect and say nothing): refused at once with a
        // reset, so the front thread's memory and descriptors stay bounded.
        limit->refused.fetch_add(1, std::memory_order_relaxed);
        net::reset_connection(socket);
        continue;
      }
      // The place is taken here, before the session's first turn: a burst of accepts cannot
      // overshoot the limit.
      asio::co_spawn(executor, serve_session(std::move(socket), handler, SessionSlot(limit)), asio::detached);
    }
  }
};

AdminServer::AdminServer(asio::any_io_executor executor) : impl_(std::make_unique<Impl>()) {
  impl_->executor = std::move(executor);
}

AdminServer::~AdminServer() { close(); }

std::uint16_t AdminServer::listen(const net::SocketAddress& address, AdminHandler handler,
                         std::shared_ptr<SessionLimit> limit) {
  // SO_REUSEPORT on a fixed port: a successor dsproxy binds the admin and readiness ports while
  // this one runs; the old one closes its listeners once the successor has taken over.
  net::ListenerSocketOptions options{.transparent = false, .reuse_port = address.port != 0, .backlog = 128};
  auto& acceptor = impl_->acceptors.emplace_back(net::open_listener(impl_->executor, address, options));
  asio::co_spawn(impl_->executor,
                 impl_->accept_loop(acceptor, std::make_shared<AdminHandler>(std::move(handler)), std::move(limit)),
                 asio::detached);
  return acceptor.local_endpoint().port();
}

void AdminServer::close() {
  for (auto& a : impl_->acceptors) {
    boost::system::error_code ignored;
    a.close(ignored);
  }
}

}  // namespace dsproxy::admin
