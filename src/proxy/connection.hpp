#pragma once
// One captured connection, from routing decision to the end of the relay.

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <cstdint>

#include "snapshot/snapshot_store.hpp"
#include "proxy/connection_result.hpp"

#include "proxy/authz_connections.hpp"
#include "proxy/endpoint_picker.hpp"
#include "proxy/endpoint_states.hpp"
#include "proxy/local_address_check.hpp"
#include "proxy/proxy_options.hpp"
#include "proxy/proxy_stats.hpp"
#include "net/io/transparent_socket.hpp"
#include "proxy/workload_index.hpp"
#include "proxy/worker_load.hpp"

namespace dsproxy::proxy {

class MeshWorker;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// What every connection on a worker shares. The references point into ProxyServer and the
// worker, which outlive the worker's io_context and so every connection coroutine.
struct ConnectionContext {
  const ProxyOptions& options;
  const snapshot::SnapshotStore& store;
  ProxyStats& stats;
  const OutlierDetector& outliers;
  EndpointStates& endpoint_states;  // shared by every worker; readers take no lock
  EndpointPicker& picker;  // the worker's own: not shared between threads
  LocalAddressCheck& local_addresses;  // likewise
  WorkerLoad& load;  // likewise
  // Where each connection's ConnectionResult goes (null: nowhere), and the names it is given;
  // both the worker's own.
  ConnectionSink* sink = nullptr;
  WorkloadIndex* names = nullptr;
  MeshWorker* mesh = nullptr;  // the worker's HBONE side; null or disabled: plaintext only

  // The worker's live connections to local workloads (AuthorizationPolicy re-evaluation);
  // null: not tracked (tests that build a context by hand).
  AuthzConnections* authz_connections = nullptr;
};

// Owns `client` until the upstream is connected, then hands both sockets to the relay, which owns
// the connection from there (the coroutine ends). `peer` is the client's address as accept() returned it. A captured connection goes where the
// client dialled (the accepted socket's local address, with TPROXY); one accepted on a --forward
// listener goes to `forward_to`, from the node's own address. Never throws; every failure ends
// this connection only, with a log line and a counter: an exception from anything it calls
// (std::bad_alloc) resets the client and counts `worker_faults`. Past the worker's
// pending-connect limit the client is reset at once (`rejected_pending_connect_limit`).
boost::asio::awaitable<void> serve_connection(tcp::socket client, tcp::endpoint peer, Direction direction,
                                              ConnectionContext context,
                                              std::optional<net::SocketAddress> forward_to = std::nullopt);

}  // namespace dsproxy::proxy
