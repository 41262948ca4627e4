#pragma once
// Names for addresses, for the access log and the Istio metrics: which pod (and so which
// workload, app and version) owns an IP, and the Service a routed connection went to.
//
// One per worker, rebuilt lazily the first time a worker sees a new snapshot (O(this node's pods
// + endpoints), on the worker, once per reload), so lookups on the data path take no lock and share nothing with
// other threads. The entries are shared_ptrs the connection records keep: a record outlives the
// snapshot it was routed with, and must not keep that snapshot alive.

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
  // Makes the index describe `snapshot` (a no-op when it already does).
  void refresh(const std::shared_ptr<const snapshot::ClusterSnapshot>& snapshot);
  // The pod owning `ip`, or null.
  std::shared_ptr<const WorkloadInfo> pod(const net::IpAddress& ip) const;
  // The Service behind `cluster` (a ServiceCluster of the current snapshot).
  std::shared_ptr<const ServiceInfo> service(const snapshot::ServiceCluster& cluster);

 private:
  std::weak_ptr<const snapshot::ClusterSnapshot> snapshot_;
  std::unordered_map<net::IpAddress, std::shared_ptr<const WorkloadInfo>, net::IpAddressHash> pods_;
  std::unordered_map<std::string, std::shared_ptr<const ServiceInfo>> services_;  // by hostname
};

}  // namespace dsproxy::proxy
