#pragma once
// One captured connection, from routing decision to the end of the relay.

#include <boost/asio/awaitable.hpp>

#include "config/snapshot_store.hpp"
#include "proxy/proxy_options.hpp"
#include "proxy/proxy_stats.hpp"
#include "proxy/transparent_socket.hpp"

namespace dsproxy::proxy {

// What every connection on a worker shares. Owned by ProxyServer, which outlives its workers'
// io_contexts and so every connection coroutine.
struct ConnectionContext {
  const ProxyOptions& options;
  const config::SnapshotStore& store;
  ProxyStats& stats;
};

// Owns `client` in its coroutine frame: the connection lives exactly as long as this coroutine.
// Never throws; every failure ends this connection only, with a log line and a counter.
boost::asio::awaitable<void> serve_connection(tcp::socket client, Direction direction, ConnectionContext context);

}  // namespace dsproxy::proxy
