#include "proxy/workload_index.hpp"

#include <algorithm>
#include <cctype>

namespace dsproxy::proxy {

namespace {

std::string label(const config::Labels& labels, std::initializer_list<const char*> keys) {
  for (const char* k : keys)
    if (auto it = labels.find(k); it != labels.end() && !it->second.empty()) return it->second;
  return {};
}

// Strips "-<suffix>" when the name ends with it.
bool strip_suffix(std::string& name, std::string_view suffix) {
  if (name.size() <= suffix.size() + 1) return false;
  if (name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return false;
  if (name[name.size() - suffix.size() - 1] != '-') return false;
  name.resize(name.size() - suffix.size() - 1);
  return true;
}

// Strips the last "-xxxxx" (the random suffix the controllers add).
bool strip_last_dash(std::string& name) {
  const auto dash = name.rfind('-');
  if (dash == std::string::npos || dash == 0) return false;
  name.resize(dash);
  return true;
}

// The alphabet Kubernetes' generated name suffixes use (rand.SafeEncodeString: no vowels, no
// 0, 1, 3), so a word of it is a generated suffix, not part of a name.
bool generated(std::string_view s, std::size_t min, std::size_t max) {
  if (s.size() < min || s.size() > max) return false;
  return s.find_first_not_of("bcdfghjklmnpqrstvwxz2456789") == std::string_view::npos;
}

// A Deployment's pod without its labels: "<deployment>-<pod-template-hash>-<5 chars>".
std::string deployment_of(const std::string& pod) {
  const auto last = pod.rfind('-');
  if (last == std::string::npos || last == 0) return {};
  const auto hash = pod.rfind('-', last - 1);
  if (hash == std::string::npos || hash == 0) return {};
  if (!generated(std::string_view(pod).substr(last + 1), 5, 5)) return {};
  if (!generated(std::string_view(pod).substr(hash + 1, last - hash - 1), 6, 10)) return {};
  return pod.substr(0, hash);
}

}  // namespace

WorkloadInfo describe_pod(const config::Pod& pod) {
  WorkloadInfo w{pod.name, pod.ns, {}, {}, {}};
  const auto& l = pod.labels;
  std::string name = pod.name;
  if (auto hash = label(l, {"pod-template-hash"}); !hash.empty()) {
    // Deployment -> ReplicaSet "<deployment>-<hash>" -> pod "<replicaset>-<5>".
    if (strip_last_dash(name) && strip_suffix(name, hash)) w.workload = name;
  } else if (!label(l, {"statefulset.kubernetes.io/pod-name"}).empty()) {
    if (strip_last_dash(name)) w.workload = name;
  } else if (auto job = label(l, {"job-name", "batch.kubernetes.io/job-name"}); !job.empty()) {
    w.workload = job;
  } else if (!label(l, {"controller-revision-hash"}).empty()) {
    if (strip_last_dash(name)) w.workload = name;  // a DaemonSet's pod
  }
  if (w.workload.empty()) w.workload = label(l, {"app.kubernetes.io/name", "app"});
  if (w.workload.empty()) w.workload = deployment_of(pod.name);  // no labels known: the name's shape
  if (w.workload.empty()) w.workload = "unknown";
  w.app = label(l, {"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"});
  if (w.app.empty()) w.app = w.workload;
  w.version = label(l, {"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"});
  if (w.version.empty()) w.version = "latest";
  return w;
}

namespace {

std::shared_ptr<const WorkloadInfo> describe(std::string_view ns, std::string_view name) {
  // The snapshot keeps no Pod objects (nor their labels): the names' shape is what is left
  // (describe_pod without labels).
  config::Pod p;
  p.name = std::string(name);
  p.ns = std::string(ns);
  return std::make_shared<const WorkloadInfo>(describe_pod(p));
}

}  // namespace

void WorkloadIndex::refresh(const std::shared_ptr<const snapshot::ClusterSnapshot>& snapshot) {
  if (!snapshot || snapshot == synced_) return;
  // A connection that loaded a snapshot older than the one described: the newer names serve.
  if (synced_ && snapshot->serial() < synced_->serial()) return;
  if (&snapshot->node_pods() != node_pod_list_) index_node_pods(*snapshot);
  snapshot->for_each_cluster_change(
      synced_.get(), [this](const snapshot::ServiceCluster& c) { remove_cluster(c); },
      [this](const std::shared_ptr<const snapshot::ServiceCluster>& c) { add_cluster(c); });
  synced_ = snapshot;
}

// This node's pods: the clients of outbound connections, the servers of inbound ones. Few, and
// rebuilt only when the list changed.
void WorkloadIndex::index_node_pods(const snapshot::ClusterSnapshot& snapshot) {
  node_pod_list_ = &snapshot.node_pods();
  node_pods_.clear();
  for (const snapshot::NodePod& p : snapshot.node_pods()) {
    auto info = describe(p.ns, p.name);
    for (const auto& ip : p.ips) node_pods_.emplace(ip, info);
  }
}

void WorkloadIndex::add_cluster(const std::shared_ptr<const snapshot::ServiceCluster>& cluster) {
  services_[cluster.get()] =
      std::make_shared<const ServiceInfo>(ServiceInfo{cluster->hostname, cluster->service_name, cluster->service_ns});
  for (const snapshot::Endpoint& e : cluster->endpoints) {
    if (e.pod.empty()) continue;
    auto& entry = endpoint_pods_[e.address.ip];
    // One address, two pods (a stale slice naming an address's previous owner): the first named
    // keeps it until every listing of the address is gone.
    if (entry.listings++ == 0) {
      entry.pod = e.pod;
      entry.info.reset();
    }
  }
}

void WorkloadIndex::remove_cluster(const snapshot::ServiceCluster& cluster) {
  services_.erase(&cluster);
  for (const snapshot::Endpoint& e : cluster.endpoints) {
    if (e.pod.empty()) continue;
    auto it = endpoint_pods_.find(e.address.ip);
    if (it != endpoint_pods_.end() && --it->second.listings == 0) endpoint_pods_.erase(it);
  }
}

std::shared_ptr<const WorkloadInfo> WorkloadIndex::pod(const net::IpAddress& ip) {
  if (auto it = node_pods_.find(ip); it != node_pods_.end()) return it->second;
  auto it = endpoint_pods_.find(ip);
  if (it == endpoint_pods_.end()) return other_pod(ip);
  auto& entry = it->second;
  if (!entry.info) {
    const std::string& pod = entry.pod.str();
    const auto slash = pod.find('/');
    if (slash == std::string::npos) return nullptr;
    entry.info = describe(std::string_view(pod).substr(0, slash), std::string_view(pod).substr(slash + 1));
  }
  return entry.info;
}

// A pod of another node that no Service lists (an HBONE peer's client, a pod dialled directly):
// the snapshot's workloads know it. Cached per address with the workload it was made from, so a
// pod replaced at the same address gets its own names; bounded (cleared past the bound).
std::shared_ptr<const WorkloadInfo> WorkloadIndex::other_pod(const net::IpAddress& ip) {
  if (!synced_) return nullptr;
  const snapshot::Workload* w = synced_->workload(ip);
  if (!w) return nullptr;
  if (auto it = other_pods_.find(ip); it != other_pods_.end() && it->second.ns == w->ns && it->second.name == w->name)
    return it->second.info;
  if (other_pods_.size() >= kMaxOtherPods) other_pods_.clear();
  auto info = describe(w->ns, w->name);
  other_pods_.insert_or_assign(ip, OtherPod{w->ns, w->name, info});
  return info;
}

std::shared_ptr<const ServiceInfo> WorkloadIndex::service(const snapshot::ServiceCluster& cluster) {
  if (auto it = services_.find(&cluster); it != services_.end()) return it->second;
  return std::make_shared<const ServiceInfo>(ServiceInfo{cluster.hostname, cluster.service_name, cluster.service_ns});
}

}  // namespace dsproxy::proxy
