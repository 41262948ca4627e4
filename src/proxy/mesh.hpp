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
//
// An inbound stream is a connection like a plaintext one: it has one ConnectionResult (reporter
// "destination" in the metrics, one access-log line), created when the CONNECT arrives and
// emitted once whatever ends it (a 400/401/503 answer, the relay's end, a policy change, the
// worker's teardown); and, once relaying to a pod with policies, it sits in the worker's
// AuthzConnections so that a policy change re-decides it (a denied stream is reset both ways).
// The source's labels come from the snapshot's workload at the forwarded address (which must be
// of the proven identity); the peer's `baggage` only names a source that is no known workload
// (telemetry only: never authorization, whose principal is the certificate's).

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

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
class ConnectionSink;
class WorkloadIndex;
class AuthzConnections;
struct WorkloadInfo;
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

// The pool's TLS side for this node's identities: the client context of the source identity, the
// handshake bound to the destination identity, and every refusal of a server (in the handshake or
// after it) counted and logged with its reason (identity::report_refusal). `identities` outlives
// the pool.
hbone::ConnectionPool::Hooks identity_pool_hooks(identity::IdentityManager& identities);

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
  // The worker's record sink, names and live-connection list (each may be null: no records, no
  // names, no re-evaluation); they must outlive this object's io_context's handlers.
  void attach(ConnectionSink* sink, WorkloadIndex* names, AuthzConnections* authz) {
    sink_ = sink;
    names_ = names;
    authz_ = authz;
  }
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

  // One shared string per principal, so that records share it (the metrics key their series
  // cache by the pointer); bounded.
  std::shared_ptr<const std::string> principal(const std::string& uri);

  // The `baggage` header open_tunnel sends for a client pod (ztunnel's form); empty when the
  // client is no known pod.
  std::string baggage_for(const net::IpAddress& client);

  // Closes the pool's connections (drain).
  void shutdown();

  // One CONNECT received on an outer connection addressed to `outer_destination`: answered
  // (400/401/503, or 200 and relayed to the pod), with its ConnectionResult. Public for tests.
  boost::asio::awaitable<void> handle_request(std::shared_ptr<hbone::IncomingRequest> request,
                                              net::SocketAddress outer_destination);

 private:
  void dial(const hbone::PoolKey& key, hbone::ConnectionPool::DialHandler handler);
  // A source named only by the peer's baggage (telemetry labels only), one per distinct value;
  // bounded, and null for values no Kubernetes name could be.
  std::shared_ptr<const WorkloadInfo> baggage_source(const std::string& value);

  boost::asio::any_io_executor executor_;
  MeshOptions mesh_;
  const ProxyOptions& proxy_;
  const snapshot::SnapshotStore& store_;
  ProxyStats& stats_;
  WorkerLoad& load_;
  std::shared_ptr<hbone::ConnectionPool> pool_;
  ConnectionSink* sink_ = nullptr;
  WorkloadIndex* names_ = nullptr;
  AuthzConnections* authz_ = nullptr;
  std::unordered_map<std::string, std::shared_ptr<const std::string>> principals_;
  std::unordered_map<std::string, std::shared_ptr<const WorkloadInfo>> baggage_sources_;
  // The server sessions accepted here, closed when this worker goes so that the streams they
  // carry end (and emit their records) with the worker's io_context instead of outliving it.
  std::vector<std::weak_ptr<hbone::Session>> sessions_;
  std::size_t sessions_kept_ = 16;
};

}  // namespace dsproxy::proxy
