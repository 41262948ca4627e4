#pragma once
// The data path's side of HBONE (issue 11): when a connection is tunnelled, and the 15008
// listener that accepts tunnels for this node's pods.
//
// Which connections go through a tunnel (plan_tunnel): mTLS configured (an IdentityManager), the
// CLIENT a pod of this node in the mesh (it has an identity to present), the chosen endpoint a
// pod of ANOTHER node in the mesh. Everything else stays plaintext as before: a destination not
// in the mesh (a ztunnel node would not accept HBONE for it either), a pod of this node (the
// bytes never leave the node: no TLS needed), an address that is no pod.
//
// Outbound: the outer connection goes from the node's own address (SO_MARK, never captured) to
// <destination pod address>:15008, where the destination node's capture hands it to its proxy;
// when that family's path does not answer, to the same pod's other-family address (Happy
// Eyeballs, the connect code of plaintext connections). The CONNECT's :authority is the endpoint
// the Service's family policy chose, whatever family the outer connection uses.
//
// Inbound (serve_hbone): the outer connection's original destination names the pod, so the
// certificate to present; the CONNECT must be for that same pod (400 otherwise: never an open
// relay to another address); the upstream connection is bound to the original client's address
// from the `forwarded` header (same family), so the pod sees the client as with plaintext; a
// client address that is a known workload of another identity than the TLS peer proved is
// refused with 401 (a peer cannot borrow another workload's address).

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <memory>
#include <optional>
#include <string>

#include "hbone/connection_pool.hpp"
#include "hbone/hbone_options.hpp"
#include "net/ip_address.hpp"
#include "snapshot/cluster_snapshot.hpp"
#include "snapshot/snapshot_store.hpp"

namespace dsproxy::identity {
class IdentityManager;
}

namespace dsproxy::proxy {

struct ProxyOptions;
struct ProxyStats;
struct WorkerLoad;

// Process-wide: null identities means mTLS is off (plaintext only, as before issue 11).
struct MeshOptions {
  identity::IdentityManager* identities = nullptr;
  std::uint16_t hbone_port = 15008;
  hbone::PoolOptions pool{};
};

// What a tunnelled connection needs to know, decided from one snapshot.
struct TunnelPlan {
  std::string source_identity;       // the client pod's SPIFFE URI
  std::string destination_identity;  // the destination pod's
  net::SocketAddress target;         // the :authority: the endpoint as the family policy chose it
  net::IpAddress outer;              // the destination pod's address of the target's family
};

// nullopt: plaintext. `trust_domain` from the snapshot's options.
std::optional<TunnelPlan> plan_tunnel(const snapshot::ClusterSnapshot& snapshot, const net::IpAddress& client,
                                      const net::SocketAddress& target);

// One worker's HBONE state: its connection pool (on the worker's io_context). All calls on that
// worker's thread.
class MeshWorker {
 public:
  // `load`: the worker's, which HBONE connections and tunnelled streams count against like
  // plaintext connections (ProxyOptions::limits).
  MeshWorker(boost::asio::any_io_executor executor, const MeshOptions& mesh, const ProxyOptions& proxy,
             const snapshot::SnapshotStore& store, ProxyStats& stats, WorkerLoad& load);
  ~MeshWorker();
  MeshWorker(const MeshWorker&) = delete;
  MeshWorker& operator=(const MeshWorker&) = delete;

  bool enabled() const { return mesh_.identities != nullptr; }
  const MeshOptions& options() const { return mesh_; }

  // A CONNECT stream for `plan` over a pooled connection; nullptr when it could not be opened
  // (logged, counted).
  boost::asio::awaitable<std::shared_ptr<hbone::Stream>> open_tunnel(const TunnelPlan& plan,
                                                                     const net::SocketAddress& client,
                                                                     std::string_view service_host);

  // One accepted connection on the HBONE listener: TLS, HTTP/2, CONNECT handling. Never throws.
  // The connection counts against the worker's connection limit until it closes, and against
  // its pending-handshake limit until the TLS handshake ends (the accept loop checks both).
  // Each tunnelled stream counts as one more connection (it holds an upstream socket) and, while
  // it connects, as a pending connect: past either limit it is answered 503 and counted.
  boost::asio::awaitable<void> serve_hbone(boost::asio::ip::tcp::socket socket, boost::asio::ip::tcp::endpoint peer);

  // Closes the pool's connections (drain).
  void shutdown();

 private:
  boost::asio::awaitable<void> handle_request(std::shared_ptr<hbone::IncomingRequest> request,
                                              net::SocketAddress outer_destination);
  void dial(const hbone::PoolKey& key, hbone::ConnectionPool::DialHandler handler);

  boost::asio::any_io_executor executor_;
  MeshOptions mesh_;
  const ProxyOptions& proxy_;
  const snapshot::SnapshotStore& store_;
  ProxyStats& stats_;
  WorkerLoad& load_;
  std::shared_ptr<hbone::ConnectionPool> pool_;
};

}  // namespace dsproxy::proxy
