#pragma once
// The immutable routing view derived from ClusterObjects for one node.
//
// Built on the control path (config load or reload), then shared read-only by every worker
// thread through a std::shared_ptr<const ClusterSnapshot>. Nothing in it changes after build(),
// and it holds no runtime state: outlier and load state of endpoints is the proxy's
// (proxy/endpoint_states.hpp), keyed by endpoint address.

#include <atomic>
#include <cstdint>
#include <memory>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/k8s_objects.hpp"
#include "net/ip_address.hpp"

namespace dsproxy::snapshot {

// The snapshot is derived from the Kubernetes object model and speaks its vocabulary.
using config::ClusterObjects;
using config::IpFamilyPolicy;
using config::SessionAffinity;
using config::TrafficPolicy;

// Whether a Service may send a client to an endpoint of the other IP family than the ClusterIP
// it dialled. From the annotation dsproxy.io/family-fallback (never|other), else the node default.
enum class FamilyFallback : std::uint8_t { never, other };
std::string_view to_string(FamilyFallback f);

// The node-wide default: `policy` means other for PreferDualStack/RequireDualStack Services and
// never for SingleStack ones.
enum class FallbackDefault : std::uint8_t { policy, never, other };

struct Endpoint {
  net::SocketAddress address;  // pod (or slice) address with the translated target port
  bool ready = false;
  std::string pod;  // "ns/name" when known, for logs
  // EndpointSlice conditions (for selector-matched pods: serving = the pod's readiness,
  // terminating = deletionTimestamp set, ready = serving and not terminating).
  bool serving = false;
  bool terminating = false;
  std::string node_name;
  std::string zone;
  std::vector<std::string> zone_hints;  // hints.forZones
  // Whether the Service's rules leave this endpoint to be chosen, decided per family at build
  // time (see select_endpoints in cluster_snapshot.cpp): ready endpoints, else serving-terminating
  // ones; only this node's under internalTrafficPolicy Local; only this zone's when every ready
  // endpoint carries zone hints and one names this zone. Nothing else is ever picked.
  bool eligible = false;

  // HEALTHY (ready), DRAINING (serving and terminating), UNHEALTHY: as proxy-config prints it.
  std::string_view health() const {
    if (ready) return "HEALTHY";
    return serving && terminating ? "DRAINING" : "UNHEALTHY";
  }
};

// The endpoints of one pod (or one address, when a slice names no pod): what Happy Eyeballs
// races when a pod has both families. Indices into ServiceCluster::endpoints, -1 for none.
struct Backend {
  int v4 = -1;
  int v6 = -1;
  int index(net::Family f) const { return f == net::Family::v4 ? v4 : v6; }
};

// One Service port: the unit Envoy/Istio call a cluster ("outbound|9000||tcp-echo.ns.svc.cluster.local").
struct ServiceCluster {
  std::string cluster_name;
  std::string service_name;
  std::string service_ns;
  std::string hostname;  // tcp-echo.dual-stack.svc.cluster.local
  std::string port_name;
  std::uint16_t port = 0;
  IpFamilyPolicy ip_family_policy = IpFamilyPolicy::SingleStack;
  std::vector<net::Family> ip_families;
  std::vector<net::IpAddress> cluster_ips;  // primary first
  // Only the families in ip_families are present (as the EndpointSlice controller does).
  std::vector<Endpoint> endpoints;
  std::vector<Backend> backends;  // endpoints grouped by pod
  FamilyFallback family_fallback = FamilyFallback::never;
  TrafficPolicy internal_traffic_policy = TrafficPolicy::Cluster;
  SessionAffinity session_affinity = SessionAffinity::None;
  std::uint32_t affinity_timeout_s = 10800;
  std::string traffic_distribution;
  std::string app_protocol;

  // True when a client dialling a ClusterIP of `dialled` can be served: an eligible endpoint of
  // that family, or of the other one when fallback is allowed.
  bool serves(net::Family dialled) const;
  // True when an eligible endpoint of `family` exists (no fallback involved). Eligible, not just
  // ready: under the terminating fallback a Service with no ready endpoint still has some.
  bool has_ready(net::Family family) const;
};

// The TCP ports of one ClusterIP that have somewhere to go; everything else to it is refused.
struct VipPorts {
  net::IpAddress vip;
  std::vector<std::uint16_t> open_ports;  // sorted
};

// An endpoint address the builder refused to route to, whatever its source (config file, API,
// a DNS answer for a dsproxy.io/resolve Service): dialling it on a pod's behalf would reach
// something the pod cannot reach itself (the node's loopback, a ClusterIP and so another
// Service's endpoints, a link, a multicast group).
struct DroppedEndpoint {
  std::string cluster_name;
  net::SocketAddress address;
  std::string reason;  // "loopback", "link-local", ..., or "ClusterIP"
};

struct NodePod {
  std::string name;
  std::string ns;
  std::vector<net::IpAddress> ips;
};

class ClusterSnapshot : public std::enable_shared_from_this<ClusterSnapshot> {
 public:
  struct Options {
    std::string node_name;
    std::string cluster_domain = "cluster.local";
    FallbackDefault fallback_default = FallbackDefault::policy;
    // This node's topology zone (--zone); empty = the topology.kubernetes.io/zone label of the
    // Node object named node_name, if the config has one.
    std::string zone{};
  };

  // Throws ConfigError for a bad dsproxy.io/ annotation.
  static std::shared_ptr<const ClusterSnapshot> build(ClusterObjects objects, const Options& options);

  // Increases with every snapshot built in this process: tells which of two snapshots is newer.
  std::uint64_t serial() const { return serial_; }
  // The clusters of `older` (nullptr: none) that this snapshot no longer has, and this snapshot's
  // clusters that `older` did not have (a changed cluster is both). Clusters both share are not
  // visited. The shared_ptr keeps the cluster (and what it belongs to) alive.
  void for_each_cluster_change(const ClusterSnapshot* older,
                               const std::function<void(const ServiceCluster&)>& removed,
                               const std::function<void(const std::shared_ptr<const ServiceCluster>&)>& added) const;

  // The ServiceCluster whose ClusterIP:port is `vip`, or nullptr.
  const ServiceCluster* find_cluster(const net::SocketAddress& vip) const;
  // True when `ip` is any Service's ClusterIP (a VIP hit on an unknown port is a reset, not passthrough).
  bool is_cluster_ip(const net::IpAddress& ip) const;
  // The other-family address of the pod owning `ip`, if it is a pod address and the pod has one
  // (Happy Eyeballs for passthrough connections to pods).
  std::optional<net::IpAddress> other_family_address(const net::IpAddress& ip) const;
  // Every ClusterIP with the ports that can be served; the redirect rules refuse the rest.
  std::vector<VipPorts> vip_ports() const;

  const std::vector<ServiceCluster>& clusters() const { return clusters_; }
  const std::vector<NodePod>& node_pods() const { return node_pods_; }
  const std::vector<DroppedEndpoint>& dropped_endpoints() const { return dropped_endpoints_; }
  const ClusterObjects& objects() const { return objects_; }
  const Options& options() const { return options_; }
  // The zone topology hints are matched against: Options::zone, else the Node's label.
  const std::string& zone() const { return zone_; }

 private:
  ClusterObjects objects_;
  Options options_;
  std::uint64_t serial_ = 0;
  std::string zone_;
  std::vector<ServiceCluster> clusters_;  // sorted by hostname, then port
  std::vector<NodePod> node_pods_;        // this node's pods, hostNetwork excluded
  std::vector<DroppedEndpoint> dropped_endpoints_;
  std::unordered_map<net::SocketAddress, std::size_t, net::SocketAddressHash> by_vip_;
  std::unordered_map<net::IpAddress, bool, net::IpAddressHash> cluster_ips_;
  std::unordered_map<net::IpAddress, net::IpAddress, net::IpAddressHash> pod_other_family_;
};

}  // namespace dsproxy::snapshot
