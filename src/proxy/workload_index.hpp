#pragma once
// Names for addresses, for the access log and the Istio metrics: which pod (and so which
// workload, app and version) owns an IP, and the Service a routed connection went to.
//
// One per worker, brought up to date the first time a worker routes with a new snapshot, from
// what changed since the one it describes (ClusterSnapshot::for_each_cluster_change: the
// Services the incremental builder re-derived), so lookups on the data path take no lock and
// share nothing with other threads. The entries are shared_ptrs the connection records keep: a
// record outlives the snapshot it was routed with, and must not keep that snapshot alive.

#include <memory>
#include <string>
#include <unordered_map>

#include "config/k8s_objects.hpp"
#include "net/ip_address.hpp"
#include "proxy/connection_result.hpp"
#include "snapshot/cluster_snapshot.hpp"

namespace dsproxy::proxy {

// The workload a pod belongs to, from what a Pod object carries (dsproxy's model has no
// ownerReferences): a Deployment's pod is "<deployment>-<pod-template-hash>-<5 chars>", a
// StatefulSet's "<statefulset>-<ordinal>", a DaemonSet's/Job's "<owner>-<5 chars>" with a
// controller-revision-hash / job-name label. Else the app.kubernetes.io/name or app label; else,
// with no labels, a name of a Deployment's shape ("<name>-<6-10 generated>-<5 generated>");
// else "unknown": never the pod's own name, so a bare pod cannot add a series per pod.
WorkloadInfo describe_pod(const config::Pod& pod);

class WorkloadIndex {
 public:
  // Makes the index describe `snapshot`: a no-op when it already does (or describes a newer
  // one); else it applies what changed since the snapshot it describes, in time proportional to
  // the change (the Services whose views differ, and this node's pods when they changed).
  void refresh(const std::shared_ptr<const snapshot::ClusterSnapshot>& snapshot);
  // The pod owning `ip`, or null.
  std::shared_ptr<const WorkloadInfo> pod(const net::IpAddress& ip);
  // The Service behind `cluster` (a ServiceCluster of the snapshot last refreshed to, else one
  // is made for the call).
  std::shared_ptr<const ServiceInfo> service(const snapshot::ServiceCluster& cluster);
  std::size_t endpoint_addresses() const { return endpoint_pods_.size(); }

 private:
  struct EndpointPod {
    snapshot::SharedString pod;  // "ns/name", shared with the snapshot's endpoints
    std::uint32_t listings = 0;  // endpoints (of any cluster) naming this address
    std::shared_ptr<const WorkloadInfo> info;  // made at the first lookup
  };
  void index_node_pods(const snapshot::ClusterSnapshot& snapshot);
  std::shared_ptr<const WorkloadInfo> other_pod(const net::IpAddress& ip);
  void add_cluster(const std::shared_ptr<const snapshot::ServiceCluster>& cluster);
  void remove_cluster(const snapshot::ServiceCluster& cluster);

  // The snapshot described, kept so the next refresh can diff against it (and so the addresses
  // of its clusters and node-pod list, used as keys, cannot be reused meanwhile). It pins one
  // snapshot per worker until the next connection after a reload: consecutive snapshots share
  // all but what changed.
  std::shared_ptr<const snapshot::ClusterSnapshot> synced_;
  const std::vector<snapshot::NodePod>* node_pod_list_ = nullptr;
  std::unordered_map<net::IpAddress, std::shared_ptr<const WorkloadInfo>, net::IpAddressHash> node_pods_;
  // Every endpoint address a Service lists with a pod. Per worker: O(endpoints in the cluster)
  // entries (about 100 bytes each), built at the worker's first connection.
  std::unordered_map<net::IpAddress, EndpointPod, net::IpAddressHash> endpoint_pods_;
  std::unordered_map<const snapshot::ServiceCluster*, std::shared_ptr<const ServiceInfo>> services_;
  // Pods known only as the snapshot's workloads (not this node's, in no Service), by address.
  struct OtherPod {
    std::string ns, name;
    std::shared_ptr<const WorkloadInfo> info;
  };
  static constexpr std::size_t kMaxOtherPods = 16384;
  std::unordered_map<net::IpAddress, OtherPod, net::IpAddressHash> other_pods_;
};

}  // namespace dsproxy::proxy
