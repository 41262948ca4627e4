#pragma once
// The immutable routing view derived from the Kubernetes objects for one node.
//
// Made by a SnapshotBuilder (snapshot_builder.hpp) on the control thread, then shared read-only
// by every worker thread through a std::shared_ptr<const ClusterSnapshot>. Nothing in it changes
// after it is built, and it holds no runtime state: outlier and load state of endpoints is the
// proxy's (proxy/endpoint_states.hpp), keyed by endpoint address.
//
// Consecutive snapshots share what did not change: each Service's derived view (ServiceView, with
// its ServiceClusters) is one shared object, replaced only when one of its inputs changes, and
// the lookup indexes are PersistentMaps, of which a new snapshot copies only the changed paths.
// The snapshot keeps no copy of the objects it was built from.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "authz/policy_index.hpp"
#include "config/k8s_objects.hpp"
#include "net/ip_address.hpp"
#include "snapshot/persistent_map.hpp"

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

// An immutable string shared by every copy: the pod name of a dual-stack pod's endpoints in every
// port of a Service, a node's name or zone in all of its endpoints. One pointer per use instead
// of a std::string (and its heap buffer) each.
class SharedString {
 public:
  SharedString() = default;
  explicit SharedString(std::string s)
      : s_(s.empty() ? nullptr : std::make_shared<const std::string>(std::move(s))) {}
  const std::string& str() const { return s_ ? *s_ : empty_string(); }
  operator const std::string&() const { return str(); }
  bool empty() const { return !s_; }
  friend bool operator==(const SharedString& a, const SharedString& b) { return a.s_ == b.s_ || a.str() == b.str(); }
  friend bool operator==(const SharedString& a, std::string_view b) { return a.str() == b; }
  friend auto operator<=>(const SharedString& a, const SharedString& b) { return a.str() <=> b.str(); }
  friend std::ostream& operator<<(std::ostream& out, const SharedString& s) { return out << s.str(); }

 private:
  static const std::string& empty_string() {
    static const std::string empty;
    return empty;
  }
  std::shared_ptr<const std::string> s_;  // null: empty
};

struct Endpoint {
  net::SocketAddress address;  // pod (or slice) address with the translated target port
  bool ready = false;
  SharedString pod;  // "ns/name" when known, for logs
  // EndpointSlice conditions (for selector-matched pods: serving = the pod's readiness,
  // terminating = deletionTimestamp set, ready = serving and not terminating).
  bool serving = false;
  bool terminating = false;
  SharedString node_name;
  SharedString zone;
  std::vector<SharedString> zone_hints;  // hints.forZones
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

// How traffic reaches a workload from another node: plaintext (TCP) as kube-proxy would, or
// inside an HBONE tunnel (mutual TLS + HTTP/2 CONNECT to its node's proxy on 15008), for pods in
// the ambient mesh (istio.io/dataplane-mode: ambient on the pod or its namespace, not "none" on
// the pod). As istioctl ztunnel-config workloads prints it.
enum class WorkloadProtocol : std::uint8_t { TCP, HBONE };
std::string_view to_string(WorkloadProtocol p);

// One pod as the data path needs to know it to tunnel to it or accept a tunnel for it: who it
// is (its SPIFFE identity is spiffe://<trust domain>/ns/<ns>/sa/<service account>), where it
// runs and whether it is in the mesh. Every pod the source gives (the file source: all; the API:
// all, compacted for other nodes' pods to what is here), hostNetwork pods excepted (their
// addresses are their node's).
struct Workload {
  std::string name;
  std::string ns;
  std::string service_account;
  SharedString node;
  std::vector<net::IpAddress> ips;  // status.podIPs, in the pod's order
  WorkloadProtocol protocol = WorkloadProtocol::TCP;
  bool local = false;  // on this node (Options::node_name)

  // spiffe://<trust_domain>/ns/<ns>/sa/<service account>
  std::string identity(std::string_view trust_domain) const;
  // The address of `family`, if the pod has one.
  std::optional<net::IpAddress> address(net::Family family) const;
};

struct NodePod {
  std::string name;
  std::string ns;
  std::vector<net::IpAddress> ips;
  std::string service_account;  // its workload identity (spiffe://<td>/ns/<ns>/sa/<this>)
};

// Everything derived from one Service: its clusters (one per TCP port), the endpoints refused,
// and what the DNS answers for its name. Shared by consecutive snapshots until one of the
// Service's inputs changes (its object, its EndpointSlices, the pods its selector matches when it
// has no slice, the ClusterIPs its endpoints may not be, this node's zone).
struct ServiceView {
  std::string name;
  std::string ns;
  std::string hostname;  // <name>.<ns>.svc.<cluster domain>
  std::string type;      // ClusterIP, NodePort, LoadBalancer, ExternalName
  bool headless = false;
  std::vector<net::IpAddress> cluster_ips;  // primary first
  std::vector<net::Family> ip_families;
  std::string external_name;
  // Sorted by port; a Service with no ClusterIP (headless, ExternalName) has none.
  std::vector<std::shared_ptr<const ServiceCluster>> clusters;
  std::vector<DroppedEndpoint> dropped;
  // Headless and ExternalName Services: the addresses their name resolves to (the ready
  // endpoints of its families, or all of them with publishNotReadyAddresses), sorted.
  std::vector<net::IpAddress> dns_addresses;
};

class ClusterSnapshot {
 public:
  struct Options {
    std::string node_name;
    std::string cluster_domain = "cluster.local";
    FallbackDefault fallback_default = FallbackDefault::policy;
    // This node's topology zone (--zone); empty = the topology.kubernetes.io/zone label of the
    // Node object named node_name, if the config has one.
    std::string zone{};
    // The SPIFFE trust domain of workload identities (--trust-domain).
    std::string trust_domain = "cluster.local";

    // AuthorizationPolicies in this namespace apply to the whole mesh (--authz-root-namespace).
    std::string authz_root_namespace = "istio-system";
  };

  // A fresh SnapshotBuilder fed `objects` at once (tests and one-shot commands; the daemon keeps
  // one builder and feeds it changes). Throws ConfigError for a bad dsproxy.io/ annotation.
  static std::shared_ptr<const ClusterSnapshot> build(ClusterObjects objects, const Options& options);

  // Increases with every snapshot built in this process: tells which of two snapshots is newer.
  std::uint64_t serial() const { return serial_; }
  // The clusters of `older` (nullptr: none) that this snapshot no longer has, and this snapshot's
  // clusters that `older` did not have (a changed cluster is both). Clusters both share are not
  // visited. The shared_ptr keeps the cluster (and what it belongs to) alive.
  void for_each_cluster_change(const ClusterSnapshot* older,
                               const std::function<void(const ServiceCluster&)>& removed,
                               const std::function<void(const std::shared_ptr<const ServiceCluster>&)>& added) const;
  // The Services whose views differ between `older` (nullptr: none) and this snapshot, with the
  // view before and after (nullptr where missing): what a consumer that keeps its own state per
  // Service (refusal rules, DNS caches) updates, in time proportional to the change.
  void for_each_service_change(const ClusterSnapshot* older,
                               const std::function<void(const ServiceView* before, const ServiceView* after)>& changed) const;

  // The ServiceCluster whose ClusterIP:port is `vip`, or nullptr.
  const ServiceCluster* find_cluster(const net::SocketAddress& vip) const;
  // True when `ip` is any Service's ClusterIP (a VIP hit on an unknown port is a reset, not passthrough).
  bool is_cluster_ip(const net::IpAddress& ip) const;
  // The other-family address of the pod owning `ip`, if it is a pod address and the pod has one
  // (Happy Eyeballs for passthrough connections to pods).
  std::optional<net::IpAddress> other_family_address(const net::IpAddress& ip) const;
  // The workload (pod) owning `ip`, or nullptr. One lookup per connection on the data path.
  const Workload* workload(const net::IpAddress& ip) const {
    const auto* w = workloads_.find(ip);
    return w ? w->get() : nullptr;
  }
  // Every workload once, sorted by namespace and name. O(workloads): for the admin view only.
  std::vector<std::shared_ptr<const Workload>> workloads() const;
  std::size_t workload_count() const { return workload_count_; }
  // Every ClusterIP with the ports that can be served; the redirect rules refuse the rest.
  // O(cluster): for a full rule set; an incremental consumer uses for_each_service_change.
  std::vector<VipPorts> vip_ports() const;

  // Every cluster, sorted by hostname then port. O(cluster log cluster) per call: for the admin
  // view, the CLI and tests, never the data path (which uses find_cluster).
  std::vector<std::reference_wrapper<const ServiceCluster>> clusters() const;
  std::size_t cluster_count() const { return cluster_count_; }
  std::size_t service_count() const { return services_.size(); }
  // This node's pods (hostNetwork excluded), sorted by namespace and name.
  const std::vector<NodePod>& node_pods() const { return *node_pods_; }
  // Every endpoint refused, by cluster name. O(cluster), like clusters().
  std::vector<DroppedEndpoint> dropped_endpoints() const;
  // What the source said about its input that the admin view shows (decoder warnings).
  const std::vector<std::string>& warnings() const { return *warnings_; }
  const Options& options() const { return options_; }
  // The zone topology hints are matched against: Options::zone, else the Node's label.
  const std::string& zone() const { return zone_; }
  // The authorization view: this node's workloads with the AuthorizationPolicies that select
  // them (authz/policy_index.hpp). Shared with the previous snapshot when neither the policies
  // nor the local pods changed, so comparing authz_index() pointers tells whether a policy
  // change may have changed a decision.
  const authz::PolicyIndex& authz() const { return *authz_; }
  const std::shared_ptr<const authz::PolicyIndex>& authz_index() const { return authz_; }

  // The DNS side's queries. The view of Service ns/name, or nullptr.
  const ServiceView* service(std::string_view ns, std::string_view name) const;
  // True when some Service lives in namespace `ns` (<ns>.svc.<domain> then exists in DNS).
  bool has_namespace(std::string_view ns) const { return namespaces_.contains(std::string(ns)); }
  // The Service owning ClusterIP `ip` (for PTR), or nullptr.
  const ServiceView* cluster_ip_owner(const net::IpAddress& ip) const;

 private:
  friend class SnapshotBuilder;
  using ServiceViews = std::vector<std::shared_ptr<const ServiceView>>;

  Options options_;
  std::uint64_t serial_ = 0;
  std::string zone_;
  std::size_t cluster_count_ = 0;
  PersistentMap<std::string, std::shared_ptr<const ServiceView>> services_;  // by "ns/name"
  // ClusterIP -> the Services claiming it, by hostname (the decoder refuses shared ClusterIPs, so
  // one but for hand-built objects; then the first by hostname wins, on every build alike).
  PersistentMap<net::IpAddress, ServiceViews, net::IpAddressHash> cluster_ips_;
  // A dual-stack pod's address -> its other-family address, from Pod objects and from the
  // EndpointSlices that name the pod in both families: (other, contributors), smallest other first.
  PersistentMap<net::IpAddress, std::vector<std::pair<net::IpAddress, std::uint32_t>>, net::IpAddressHash> other_family_;
  PersistentMap<std::string, std::uint32_t> namespaces_;  // Services per namespace
  std::shared_ptr<const std::vector<NodePod>> node_pods_;
  std::shared_ptr<const std::vector<std::string>> warnings_;
  // Pod address -> its workload (a dual-stack pod's two addresses share one).
  PersistentMap<net::IpAddress, std::shared_ptr<const Workload>, net::IpAddressHash> workloads_;
  std::size_t workload_count_ = 0;

  std::shared_ptr<const authz::PolicyIndex> authz_;
};

}  // namespace dsproxy::snapshot
