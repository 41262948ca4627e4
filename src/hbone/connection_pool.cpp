#include "hbone/connection_pool.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "hbone/tls_stream.hpp"

namespace dsproxy::hbone {

namespace asio = boost::asio;
using boost::system::error_code;

struct ConnectionPool::Pending {
  explicit Pending(const asio::any_io_executor& executor) : timer(executor) {}
  std::vector<Waiter> waiters;
  asio::steady_timer timer;
  std::unique_ptr<tcp::socket> socket;  // while dialling with the default dialer
  std::unique_ptr<TlsStream> io;        // while the TLS handshake runs
  bool done = false;
};

std::shared_ptr<ConnectionPool> ConnectionPool::create(asio::any_io_executor executor, const PoolOptions& options,
                                                       Hooks hooks) {
  return std::shared_ptr<ConnectionPool>(new ConnectionPool(std::move(executor), options, std::move(hooks)));
}

ConnectionPool::ConnectionPool(asio::any_io_executor executor, const PoolOptions& options, Hooks hooks)
    : executor_(std::move(executor)), options_(options), hooks_(std::move(hooks)) {}

void ConnectionPool::open_stream(const PoolKey& key, std::string authority, Headers headers,
                                 Session::OpenHandler handler) {
  ++stats_.streams_requested;
  if (closing_) {
    asio::post(executor_, [h = std::move(handler)]() mutable { std::move(h)(asio::error::operation_aborted, 0, nullptr); });
    return;
  }
  auto& entry = entries_[key];
  for (auto& pooled : entry.sessions) {
    if (!pooled->session->can_open()) continue;
    if (pooled->idle_armed) {
      pooled->idle_armed = false;
      pooled->idle_timer->cancel();
    }
    pooled->session->open_stream(std::move(authority), std::move(headers), std::move(handler));
    return;
  }
  // A connection still being set up takes as many streams as a connection may carry: a burst
  // of new tunnels to one pod shares one handshake.
  for (auto& pending : entry.pending) {
    if (!pending->done && pending->waiters.size() < options_.session.max_concurrent_streams) {
      pending->waiters.push_back({std::move(authority), std::move(headers), std::move(handler)});
      return;
    }
  }
  auto pending = std::make_shared<Pending>(executor_);
  pending->waiters.push_back({std::move(authority), std::move(headers), std::move(handler)});
  entry.pending.push_back(pending);
  connect(key, pending);
}

void ConnectionPool::connect(const PoolKey& key, std::shared_ptr<Pending> pending) {
  std::weak_ptr<ConnectionPool> weak = weak_from_this();
  pending->timer.expires_after(options_.connect_timeout);
  pending->timer.async_wait([weak, key, pending](error_code ec) {
    auto self = weak.lock();
    if (ec || !self || pending->done) return;
    error_code ignored;
    if (pending->socket) pending->socket->close(ignored);
    if (pending->io) pending->io->lowest_layer().close(ignored);
    ++self->stats_.connect_failures;
    self->fail_pending(key, pending, asio::error::timed_out);
  });

  auto on_dialed = [weak, key, pending](error_code ec, tcp::socket socket) {
    auto self = weak.lock();
    if (!self || pending->done) return;
    pending->socket.reset();
    if (ec) {
      ++self->stats_.connect_failures;
      spdlog::debug("hbone: connect to {}:{} failed: {}", key.destination.address().to_string(),
                    key.destination.port(), ec.message());
      self->fail_pending(key, pending, ec);
      return;
    }
    auto context = self->hooks_.context_for ? self->hooks_.context_for(key) : nullptr;
    if (!context) {
      ++self->stats_.connect_failures;
      self->fail_pending(key, pending, asio::error::no_protocol_option);
      return;
    }
    pending->io = make_tls_stream(std::move(socket), context, true);
    if (!pending->io) {
      self->fail_pending(key, pending, asio::error::no_memory);
      return;
    }
    if (self->hooks_.before_handshake && !self->hooks_.before_handshake(key, pending->io->native_handle())) {
      ++self->stats_.connect_failures;
      self->fail_pending(key, pending, asio::error::no_memory);
      return;
    }
    pending->io->async_handshake(asio::ssl::stream_base::client, [weak, key, pending](error_code ec) {
      auto self = weak.lock();
      if (!self || pending->done) return;
      if (!ec && !negotiated_h2(pending->io->native_handle())) ec = asio::error::no_protocol_option;
      if (ec) {
        ++self->stats_.connect_failures;
        if (self->hooks_.on_handshake_failure) self->hooks_.on_handshake_failure(key, pending->io->native_handle(), ec);
        spdlog::debug("hbone: TLS with {}:{} failed: {}", key.destination.address().to_string(),
                      key.destination.port(), ec.message());
        self->fail_pending(key, pending, ec);
        return;
      }
      if (!self->hooks_.verify || !self->hooks_.verify(key, pending->io->native_handle())) {
        ++self->stats_.identity_mismatches;
        spdlog::warn("hbone: {}:{} did not prove identity {}; connection refused",
                     key.destination.address().to_string(), key.destination.port(), key.destination_identity);
        self->fail_pending(key, pending, asio::error::access_denied);
        return;
      }
      self->on_connected(key, pending, std::move(pending->io));
    });
  };

  if (hooks_.dial) {
    hooks_.dial(key, std::move(on_dialed));
    return;
  }
  pending->socket = std::make_unique<tcp::socket>(executor_);
  pending->socket->async_connect(key.destination, [pending, on_dialed = std::move(on_dialed)](error_code ec) mutable {
    if (!pending->socket) return on_dialed(asio::error::operation_aborted, tcp::socket(pending->timer.get_executor()));
    auto socket = std::move(*pending->socket);
    on_dialed(ec, std::move(socket));
  });
}

void ConnectionPool::fail_pending(const PoolKey& key, const std::shared_ptr<Pending>& pending, error_code ec) {
  pending->done = true;
  pending->timer.cancel();
  if (pending->io) {
    error_code ignored;
    pending->io->lowest_layer().close(ignored);
  }
  if (auto it = entries_.find(key); it != entries_.end()) {
    std::erase(it->second.pending, pending);
    if (it->second.pending.empty() && it->second.sessions.empty()) entries_.erase(it);
  }
  for (auto& waiter : pending->waiters)
    asio::post(executor_, [h = std::move(waiter.handler), ec]() mutable { std::move(h)(ec, 0, nullptr); });
  pending->waiters.clear();
}

void ConnectionPool::on_connected(const PoolKey& key, std::shared_ptr<Pending> pending, std::unique_ptr<TlsStream> io) {
  pending->done = true;
  pending->timer.cancel();
  auto& entry = entries_[key];
  std::erase(entry.pending, pending);
  ConnectionInfo info;
  info.peer_identity = key.destination_identity;
  error_code ignored;
  info.local = io->lowest_layer().local_endpoint(ignored);
  info.remote = io->lowest_layer().remote_endpoint(ignored);
  auto pooled = std::make_shared<Pooled>();
  pooled->session = Session::make_client(std::move(io), std::move(info), options_.session);
  pooled->idle_timer = std::make_unique<asio::steady_timer>(executor_);
  std::weak_ptr<ConnectionPool> weak = weak_from_this();
  std::weak_ptr<Pooled> weak_pooled = pooled;
  pooled->session->set_observer([weak, key, weak_pooled] {
    if (auto self = weak.lock()) self->on_session_event(key, weak_pooled);
  });
  entry.sessions.push_back(pooled);
  ++stats_.connections_opened;
  pooled->session->start();
  for (auto& waiter : pending->waiters) {
    if (pooled->session->can_open())
      pooled->session->open_stream(std::move(waiter.authority), std::move(waiter.headers), std::move(waiter.handler));
    else
      open_stream(key, std::move(waiter.authority), std::move(waiter.headers), std::move(waiter.handler));
  }
  pending->waiters.clear();
}

void ConnectionPool::on_session_event(const PoolKey& key, const std::weak_ptr<Pooled>& weak_pooled) {
  auto pooled = weak_pooled.lock();
  if (!pooled) return;
  auto remove = [&] {
    pooled->idle_timer->cancel();
    auto it = entries_.find(key);
    if (it == entries_.end()) return;
    std::erase(it->second.sessions, pooled);
    if (it->second.pending.empty() && it->second.sessions.empty()) entries_.erase(it);
  };
  auto& session = *pooled->session;
  if (session.closed()) {
    remove();
    return;
  }
  if (session.stream_count() > 0) {
    if (pooled->idle_armed) {
      pooled->idle_armed = false;
      pooled->idle_timer->cancel();
    }
    return;
  }
  if (pooled->idle_armed) return;
  pooled->idle_armed = true;
  pooled->idle_timer->expires_after(options_.idle_timeout);
  std::weak_ptr<ConnectionPool> weak = weak_from_this();
  pooled->idle_timer->async_wait([weak, key, weak_pooled](error_code ec) {
    auto self = weak.lock();
    auto pooled = weak_pooled.lock();
    if (ec || !self || !pooled || !pooled->idle_armed) return;
    pooled->idle_armed = false;
    if (pooled->session->stream_count() != 0 || pooled->session->closed()) return;
    ++self->stats_.idle_closed;
    // Out of the pool first, so no stream is opened on a connection that is going away.
    auto it = self->entries_.find(key);
    if (it != self->entries_.end()) {
      std::erase(it->second.sessions, pooled);
      if (it->second.pending.empty() && it->second.sessions.empty()) self->entries_.erase(it);
    }
    pooled->session->shutdown();
  });
}

void ConnectionPool::shutdown() {
  closing_ = true;
  auto entries = std::move(entries_);
  entries_.clear();
  for (auto& [key, entry] : entries) {
    for (auto& pooled : entry.sessions) {
      pooled->idle_timer->cancel();
      pooled->session->shutdown();
    }
    for (auto& pending : entry.pending) fail_pending(key, pending, asio::error::operation_aborted);
  }
}

void ConnectionPool::close() {
  closing_ = true;
  auto entries = std::move(entries_);
  entries_.clear();
  for (auto& [key, entry] : entries) {
    for (auto& pooled : entry.sessions) {
      pooled->idle_timer->cancel();
      pooled->session->close();
    }
    for (auto& pending : entry.pending) fail_pending(key, pending, asio::error::operation_aborted);
  }
}

std::size_t ConnectionPool::connection_count() const {
  std::size_t n = 0;
  for (const auto& [key, entry] : entries_) n += entry.sessions.size();
  return n;
}

std::size_t ConnectionPool::connection_count(const PoolKey& key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? 0 : it->second.sessions.size();
}

}  // namespace dsproxy::hbone
