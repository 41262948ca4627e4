#pragma once
// One typed record of a connection's outcome, from accept to close (ztunnel's ConnectionResult is
// the model). Created when a connection is accepted, filled in by routing (service, endpoint,
// families), connecting (fallback, Happy Eyeballs, retries) and relaying (bytes), and handed to
// its sink exactly once, when it is destroyed, whichever path ended the connection: a rejected
// route, a failed connect, a completed relay, or the worker's io_context being torn down at the
// end of a drain (the relay's handler is then destroyed without being called).
//
// The access log and the Prometheus metrics are both written from this record, so they cannot
// disagree on what happened to a connection.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "net/ip_address.hpp"
#include "proxy/router.hpp"

namespace dsproxy::proxy {

// Why a connection ended. Exactly one per connection.
enum class EndReason : std::uint8_t {
  completed,       // both directions ended with a FIN
  client_reset,    // the client reset (or failed a write): the upstream was reset in turn
  upstream_reset,  // the upstream reset (or failed a write): the client was reset in turn
  idle_timeout,    // no byte either way for --idle-timeout-s: both sides reset
  rejected_no_endpoint_for_family,  // a Service with nothing of the dialled family to serve it
  rejected_unknown_service_port,    // a ClusterIP, but not one of its Service's ports
  rejected_loop,                    // the destination was our own capture port
  rejected_forbidden_destination,   // never dialled on a pod's behalf (loopback, mapped, ...)
  connect_failed,   // every attempt refused or unreachable
  connect_timeout,  // --connect-timeout-ms ran out
  local_error,      // this node's own resources (descriptors, buffers, ports) failed us
  client_gone,      // the client vanished between accept and routing
  // Refused by an AuthorizationPolicy (ConnectionRecord::policy names it; none named: no ALLOW
  // policy matched while some exist). Set by the authz decision, before any upstream is dialled.
  denied_by_policy,
  rejected_overload,  // a per-worker limit (--max-pending-connects-per-worker, ...) was reached
  fault,              // an exception on the data path (bad_alloc): this connection alone was reset
  // An HBONE stream answered 401 because its `forwarded` client address is no workload of the
  // identity the peer's certificate proved (a peer may not choose the source the pod sees).
  rejected_source_identity,
  shutdown,         // still open when the worker was torn down (end of drain, process exit)
};
inline constexpr std::size_t kEndReasonCount = static_cast<std::size_t>(EndReason::shutdown) + 1;
std::string_view to_string(EndReason reason);
// Istio's response_flags as ztunnel sets them: "-" (none), "CONNECT" (no upstream connection
// could be made: failures, timeouts, nothing to serve the family), "DENY" (refused by rule: a
// loop, a forbidden destination, an AuthorizationPolicy).
std::string_view response_flags(EndReason reason);
EndReason reason_for(RejectReason reject);

// What the access log and the metrics say about a pod: the workload, never the pod alone in
// metrics (see WorkloadIndex). Shared and immutable: one per pod per snapshot, kept alive by the
// records that point to it, not by the snapshot.
struct WorkloadInfo {
  std::string pod;        // pod name
  std::string ns;         // namespace
  std::string workload;   // Deployment/StatefulSet/... name derived from the pod, else "unknown"
  std::string app;        // canonical service (Istio's rule: canonical-name, app.kubernetes.io/name, app, workload)
  std::string version;    // canonical revision (canonical-revision, app.kubernetes.io/version, version, "latest")
};

// The Service a connection was routed to, by name (the snapshot's ServiceCluster is not kept).
struct ServiceInfo {
  std::string hostname;  // tcp-echo.dual-stack.svc.cluster.local
  std::string name;
  std::string ns;
};

// How the connection reached us or left: plain TCP, or carried in (or received through) an HTTP/2
// CONNECT tunnel. The access log says protocol=HBONE; the request_protocol metric label stays
// "tcp" for both, as ztunnel reports every L4 connection (its RequestProtocol is tcp or http).
enum class RequestProtocol : std::uint8_t { tcp, hbone };
std::string_view to_string(RequestProtocol protocol);
// Istio's connection_security_policy label: "mutual_tls" when the peer's identity was proven by
// an mTLS handshake (HBONE), else "unknown" (plain TCP proves nothing).
enum class SecurityPolicy : std::uint8_t { unknown, mutual_tls };
std::string_view to_string(SecurityPolicy policy);

struct ConnectionRecord {
  Direction direction = Direction::outbound;
  std::chrono::steady_clock::time_point start{};
  std::chrono::system_clock::time_point start_wall{};
  net::SocketAddress source;       // the client, as accepted
  net::SocketAddress destination;  // where it dialled (ClusterIP:port, pod, ...)
  std::shared_ptr<const WorkloadInfo> source_workload;       // null: not a known pod
  std::shared_ptr<const WorkloadInfo> destination_workload;  // the endpoint's (or passthrough target's) pod
  std::shared_ptr<const ServiceInfo> service;                 // null: not a Service (passthrough, reject)
  std::optional<net::SocketAddress> endpoint;  // the upstream address connected to
  bool fell_back = false;          // served by an endpoint of the other family than dialled
  bool second_family_won = false;  // Happy Eyeballs: the other family's attempt connected first
  std::uint32_t retries = 0;       // backends tried after the first
  bool connected = false;          // an upstream was connected (the relay ran)
  std::uint64_t bytes_to_upstream = 0;    // client -> upstream (the request direction)
  std::uint64_t bytes_to_downstream = 0;  // upstream -> client (the response direction)
  std::chrono::steady_clock::duration duration{};
  EndReason reason = EndReason::shutdown;
  // Filled by the HBONE transport (unset for plain TCP). The principals are SPIFFE URIs
  // ("spiffe://cluster.local/ns/default/sa/sleep") of identities a handshake verified: the source
  // only from the peer's certificate (inbound) or our own workload's (outbound), the destination
  // from the certificate the client checked. Shared, not copied: the transport keeps one string
  // per identity (its pool is keyed by them), so a record costs a reference count, and the
  // metrics key their series cache by the pointer.
  RequestProtocol protocol = RequestProtocol::tcp;
  SecurityPolicy security = SecurityPolicy::unknown;
  std::shared_ptr<const std::string> source_principal;       // null: none proven
  std::shared_ptr<const std::string> destination_principal;  // null: none proven
  // Filled by the authz decision with reason denied_by_policy: the policy that refused, as
  // "ns/name" (empty: no ALLOW policy matched). Not a metric label (policies are unbounded).
  std::string policy;
  // The sink's own use between opened() and closed() (its metric series): looked up once.
  void* sink_slot = nullptr;
};

// Where records go. One per worker, called on that worker's thread only.
class ConnectionSink {
 public:
  virtual ~ConnectionSink() = default;
  // The labels are final (routing and connecting are done): a connection counts as opened from
  // here. Called at most once, always before closed().
  virtual void opened(ConnectionRecord& record) = 0;
  // The connection has ended; called exactly once per record.
  virtual void closed(const ConnectionRecord& record) = 0;
  // Whether records need names (workloads, Services) looked up; false: addresses only.
  virtual bool wants_names() const { return true; }
};

// The record's owner. Movable (a moved-from result emits nothing); emits on destruction: opened()
// first if nobody did yet, then closed() with the reason set by finish(), or `shutdown` when
// nothing set one (the connection was destroyed while still open). Without a sink it is inert.
class ConnectionResult {
 public:
  ConnectionResult() = default;
  ConnectionResult(ConnectionSink* sink, Direction direction, const net::SocketAddress& source,
                   const net::SocketAddress& destination);
  ConnectionResult(ConnectionResult&& other) noexcept;
  ConnectionResult& operator=(ConnectionResult&&) = delete;
  ConnectionResult(const ConnectionResult&) = delete;
  ConnectionResult& operator=(const ConnectionResult&) = delete;
  ~ConnectionResult();

  bool active() const { return sink_ != nullptr; }
  bool wants_names() const { return sink_ && sink_->wants_names(); }
  ConnectionRecord& record() { return record_; }
  const ConnectionRecord& record() const { return record_; }
  // Counts the connection as opened now (its labels are final).
  void mark_opened();
  // Sets why it ended; the first reason given wins (a reset seen after a timeout stays a timeout).
  void finish(EndReason reason);

 private:
  ConnectionSink* sink_ = nullptr;
  ConnectionRecord record_;
  bool opened_ = false;
  bool finished_ = false;
};

}  // namespace dsproxy::proxy
