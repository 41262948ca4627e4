#pragma once
// One worker's pooled HBONE client connections, keyed as ztunnel keys them.

#include <openssl/ssl.h>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <tuple>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "hbone/hbone_options.hpp"
#include "hbone/session.hpp"

namespace dsproxy::hbone {

// A connection carries only streams of one source workload identity to one destination identity
// at one outer address (the destination pod's address, port 15008): TLS authenticates both ends
// as exactly these identities, so no stream may ride a connection made for another pair.
struct PoolKey {
  std::string source_identity;       // SPIFFE URI we present
  std::string destination_identity;  // SPIFFE URI the server must prove
  tcp::endpoint destination;         // outer connection's address
  // The outer connection's source address when the dialer binds one (ztunnel keys on it too, as
  // it spoofs the client pod's address); unspecified (default) when it does not.
  boost::asio::ip::address source_address{};
  bool operator==(const PoolKey&) const = default;
  bool operator<(const PoolKey& other) const {
    return std::tie(source_identity, destination_identity, destination, source_address) <
           std::tie(other.source_identity, other.destination_identity, other.destination, other.source_address);
  }
};

struct PoolStats {
  std::uint64_t connections_opened = 0;
  std::uint64_t connect_failures = 0;       // dial, TLS handshake or ALPN failed
  std::uint64_t identity_mismatches = 0;    // the verifier refused the server
  std::uint64_t idle_closed = 0;
  std::uint64_t streams_requested = 0;
};

// Lives on one io_context (a worker's); all calls on that thread. Create with make_shared-like
// ConnectionPool::create; destroy with close() before the io_context goes.
class ConnectionPool : public std::enable_shared_from_this<ConnectionPool> {
 public:
  using DialHandler = boost::asio::any_completion_handler<void(boost::system::error_code, tcp::socket)>;
  // Connects the outer TCP socket (the caller may bind a source, pick a family, ...).
  using Dialer = std::function<void(const PoolKey&, DialHandler)>;
  // The client SSL_CTX presenting key.source_identity (TLS 1.3, ALPN h2, verifies the chain).
  using ContextFor = std::function<std::shared_ptr<SSL_CTX>(const PoolKey&)>;
  // After the handshake, before the connection's first use: does the server's verified
  // certificate carry key.destination_identity? false fails every stream waiting for it.
  using Verifier = std::function<bool(const PoolKey&, SSL*)>;

  struct Hooks {
    ContextFor context_for;  // required
    Verifier verify;         // required: the pool never uses an unverified server
    // Optional, on the fresh SSL before the handshake, e.g. identity::expect_peer_identity so the
    // handshake itself fails for the wrong server; false fails the connection.
    std::function<bool(const PoolKey&, SSL*)> before_handshake;
    // Optional, after a failed handshake (identity::handshake_failure/report_refusal).
    std::function<void(const PoolKey&, SSL*, boost::system::error_code)> on_handshake_failure;
    // Optional; default: a plain async_connect to key.destination.
    Dialer dial;
  };

  static std::shared_ptr<ConnectionPool> create(boost::asio::any_io_executor executor, const PoolOptions& options,
                                                Hooks hooks);

  // A CONNECT stream to `authority` over a pooled connection for `key`: an open connection with a
  // free stream slot, else one being set up with room, else a new one. Completion as
  // Session::open_stream; access_denied when the verifier refused the server, timed_out when
  // the connection could not be set up in time.
  void open_stream(const PoolKey& key, std::string authority, Headers headers, Session::OpenHandler handler);

  // GOAWAY on every connection (streams finish), and no new ones.
  void shutdown();
  // Every connection closed now.
  void close();

  std::size_t connection_count() const;
  std::size_t connection_count(const PoolKey& key) const;
  const PoolStats& stats() const { return stats_; }

 private:
  struct Waiter {
    std::string authority;
    Headers headers;
    Session::OpenHandler handler;
  };
  struct Pending;
  struct Pooled {
    std::shared_ptr<Session> session;
    std::unique_ptr<boost::asio::steady_timer> idle_timer;
    bool idle_armed = false;
  };
  struct Entry {
    std::vector<std::shared_ptr<Pooled>> sessions;
    std::vector<std::shared_ptr<Pending>> pending;
  };

  ConnectionPool(boost::asio::any_io_executor executor, const PoolOptions& options, Hooks hooks);
  void connect(const PoolKey& key, std::shared_ptr<Pending> pending);
  void on_connected(const PoolKey& key, std::shared_ptr<Pending> pending, std::unique_ptr<TlsStream> io);
  void fail_pending(const PoolKey& key, const std::shared_ptr<Pending>& pending, boost::system::error_code ec);
  void on_session_event(const PoolKey& key, const std::weak_ptr<Pooled>& pooled);

  boost::asio::any_io_executor executor_;
  PoolOptions options_;
  Hooks hooks_;
  std::map<PoolKey, Entry> entries_;
  PoolStats stats_;
  bool closing_ = false;
};

}  // namespace dsproxy::hbone
