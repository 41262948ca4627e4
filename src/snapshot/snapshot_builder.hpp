#pragma once
// Keeps the cluster's objects and turns them into ClusterSnapshots, incrementally.
//
// A source feeds it object by object (the API watch: upsert on ADDED/MODIFIED, erase on
// DELETED; a relist: replace_all with what was listed) or all at once (the file source:
// replace_all with the decoded file, which applies only the difference). build() then makes the
// next immutable snapshot, recomputing only the Services a change since the last build touched:
//
//   a Service object             that Service
//   an EndpointSlice             the Service it names (kubernetes.io/service-name), before and after
//   a Pod                        the Services of its namespace that select pods because they have no
//                                EndpointSlice (the file source's selector matching), and the pod's
//                                own contributions (this node's pods; its other-family address)
//   a Namespace's ambient label  its pods' workload entries (mesh membership)
//   a Node's zone                this node's: every Service (the zone decides topology-aware
//                                routing); another node's: the selector-matched Services (their
//                                endpoints carry the node's zone)
//   a ClusterIP appearing or     the Services with an endpoint at that address (it is dropped then:
//   disappearing                 see DroppedEndpoint); found through a count of endpoint
//                                addresses, so only a real collision costs a scan
//
// Everything else is shared with the previous snapshot: unchanged ServiceViews (and their
// ServiceClusters) by pointer, the indexes through PersistentMap. One event thus costs the
// derivation of one Service plus a few map paths, whatever the size of the cluster.
//
// What it keeps: Services, EndpointSlices and Nodes' zones as given, the ambient label of each
// Namespace, and the Pods it is given. Every pod is a Workload (identity, node, mesh protocol:
// what HBONE needs of a tunnel's destination). The API source watches every node's pods but
// hands over other nodes' ones compacted (addresses, node, service account, the
// istio.io/dataplane-mode label only: KubernetesSource::compact), so selector matching of
// Services without EndpointSlices still finds this node's matching pods only there (a cluster
// always has slices: the controller writes them); the file source gives every pod whole. addressType FQDN slices are not routed and not kept: the control plane hands them
// to the hostname table, which upserts what they resolve to as ordinary IPv4/IPv6 slices.
//
// One thread: the control thread that runs the sources. Not thread-safe; the snapshots it returns
// are immutable and may go to any thread.

#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "config/k8s_objects.hpp"
#include "snapshot/cluster_snapshot.hpp"

namespace dsproxy::snapshot {

// Spelled as sources::ObjectKind (sources/config_source.hpp), which can become an alias of this one.
enum class ObjectKind { service, pod, endpoint_slice, node, namespace_, authorization_policy };

class SnapshotBuilder {
 public:
  using Options = ClusterSnapshot::Options;
  explicit SnapshotBuilder(Options options);

  // Adds or replaces the object named by its namespace and name. A Service with a bad
  // dsproxy.io/ annotation throws ConfigError and changes nothing (the caller logs and goes on).
  void upsert(config::Service service);
  void upsert(config::Pod pod);
  void upsert(config::EndpointSlice slice);
  void upsert(config::Node node);
  void upsert(config::Namespace ns);

  // Compiled at once (authz/policy.hpp); a change of a policy or of this node's pods rebuilds
  // the authorization index at the next build(), everything else is untouched.
  void upsert(config::AuthorizationPolicy policy);
  // Removes an object; unknown names are ignored. Nodes have no namespace (pass "").
  void erase(ObjectKind kind, std::string_view ns, std::string_view name);
  // Makes the kept objects exactly `objects` (a file read, a relist), touching only what differs
  // from what is kept. Validates every Service first: on ConfigError nothing changes.
  // `objects.warnings` become the snapshot's warnings; fqdn_slices are ignored.
  void replace_all(config::ClusterObjects objects);

  // The next snapshot: the previous one with every change since then applied.
  std::shared_ptr<const ClusterSnapshot> build();

  // What the last build() recomputed (benchmarks and tests).
  struct BuildStats {
    std::size_t services_derived = 0;  // Services whose view was recomputed
    bool collision_scan = false;       // a ClusterIP met an endpoint address: some Services were found by a scan
  };
  const BuildStats& last_build() const { return last_build_; }
  std::size_t services() const { return services_.size(); }
  std::size_t endpoint_slices() const { return slices_.size(); }
  std::size_t pods() const { return pods_.size(); }
  std::size_t authorization_policies() const { return raw_policies_.size(); }

 private:
  struct PodEntry {
    config::Pod pod;
    bool counted = false;  // its addresses are in endpoint_ip_refs_
    std::optional<std::pair<net::IpAddress, net::IpAddress>> pair;  // its other-family contribution
    std::shared_ptr<const Workload> workload;  // what it put in workloads_ (null: nothing)
  };

  void touch_pod_users(const std::string& ns);
  void touch_all_pod_users();
  void set_node_zone(const std::string& node, std::string zone);
  void forget_pod(PodEntry& entry);
  void apply_pod(PodEntry& entry);
  std::shared_ptr<const ServiceView> derive(const config::Service& svc, bool& uses_pods);
  void add_view(const ServiceView& view, int sign);
  void add_pair(const net::IpAddress& a, const net::IpAddress& b, int sign);
  void count_endpoint_ip(const net::IpAddress& ip, int sign);
  bool is_cluster_ip(const net::IpAddress& ip) const { return claims_.count(ip) != 0; }
  void recompute_owners(const net::IpAddress& ip);
  void rebuild_node_pods();
  bool in_mesh(const config::Pod& pod) const;
  void touch_namespace_pods(const std::string& ns);

  void rebuild_authz();
  const SharedString& intern(const std::string& s);

  Options options_;
  std::string zone_;  // the effective zone: Options::zone, else this node's label

  // The kept objects, by "ns/name".
  std::unordered_map<std::string, config::Service> services_;
  std::unordered_map<std::string, config::EndpointSlice> slices_;
  std::map<std::string, std::set<std::string>> slices_by_service_;  // "ns/service" -> slice keys
  std::map<std::string, PodEntry> pods_;                            // ordered: a namespace is a range
  std::set<std::string> local_pods_;                                // keys of this node's pods
  std::unordered_map<std::string, std::string> node_zones_;         // node -> topology.kubernetes.io/zone
  std::map<std::string, std::set<std::string>> pod_users_;          // ns -> Services matching pods (no slices)
  std::unordered_map<net::IpAddress, std::vector<std::string>, net::IpAddressHash> claims_;  // ClusterIP -> Service keys
  // How many Services list each address as an endpoint (before dropping) plus the dual-stack pods
  // that have it: a ClusterIP appearing at a counted address forces those Services to be rederived.
  // (A PersistentMap for its compact leaves: one sorted array entry per address, no node each.)
  PersistentMap<net::IpAddress, std::uint32_t, net::IpAddressHash> endpoint_ip_refs_;
  std::unordered_map<std::string, SharedString> interned_;  // node names and zones
  std::unordered_map<std::string, bool> ambient_namespaces_;  // namespace -> labelled ambient (only those kept)

  // AuthorizationPolicies: as given (to skip unchanged updates), compiled (by namespace), and
  // the counters of each ns/name, kept while the policy exists.
  std::unordered_map<std::string, config::AuthorizationPolicy> raw_policies_;
  authz::PolicyIndex::PolicySet policies_;
  bool authz_dirty_ = true;
  std::shared_ptr<const authz::PolicyIndex> authz_;

  // Changes waiting for build().
  std::set<std::string> dirty_services_;
  std::set<std::string> dirty_pods_;
  bool node_pods_dirty_ = true;
  std::shared_ptr<const std::vector<std::string>> warnings_;

  // What the next snapshot starts from (the last one's maps).
  PersistentMap<std::string, std::shared_ptr<const ServiceView>> views_;
  PersistentMap<net::IpAddress, ClusterSnapshot::ServiceViews, net::IpAddressHash> owners_;
  PersistentMap<net::IpAddress, std::vector<std::pair<net::IpAddress, std::uint32_t>>, net::IpAddressHash> other_family_;
  PersistentMap<std::string, std::uint32_t> namespaces_;
  std::shared_ptr<const std::vector<NodePod>> node_pods_;
  PersistentMap<net::IpAddress, std::shared_ptr<const Workload>, net::IpAddressHash> workloads_;
  std::size_t workload_count_ = 0;
  std::size_t cluster_count_ = 0;
  BuildStats last_build_;
};

}  // namespace dsproxy::snapshot
