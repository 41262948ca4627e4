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

void WorkloadIndex::refresh(const std::shared_ptr<const snapshot::ClusterSnapshot>& snapshot) {
  // Same control block = same snapshot; no atomic operation for the common case.
  // An expired weak_ptr still holds its control block, so a new snapshot never compares equal to it.
  if (!snapshot_.owner_before(snapshot) && !snapshot.owner_before(snapshot_)) return;
  snapshot_ = snapshot;
  pods_.clear();
  services_.clear();
  if (!snapshot) return;
  // The snapshot keeps no Pod objects (nor their labels): this node's pods (the clients of
  // outbound connections, the servers of inbound ones) and the endpoints' pods ("ns/name") are
  // what it knows, so workloads come from the names' shape (describe_pod without labels).
  auto add = [this](const std::string& ns, const std::string& name, const net::IpAddress& ip) {
    config::Pod p;
    p.name = name;
    p.ns = ns;
    pods_.emplace(ip, std::make_shared<const WorkloadInfo>(describe_pod(p)));
  };
  for (const snapshot::NodePod& p : snapshot->node_pods())
    for (const auto& ip : p.ips) add(p.ns, p.name, ip);
  for (const snapshot::ServiceCluster& c : snapshot->clusters())
    for (const snapshot::Endpoint& e : c.endpoints) {
      const std::string& pod = e.pod;
      const auto slash = pod.find('/');
      if (slash == std::string::npos || pods_.count(e.address.ip)) continue;
      add(pod.substr(0, slash), pod.substr(slash + 1), e.address.ip);
    }
}

std::shared_ptr<const WorkloadInfo> WorkloadIndex::pod(const net::IpAddress& ip) const {
  auto it = pods_.find(ip);
  return it == pods_.end() ? nullptr : it->second;
}

std::shared_ptr<const ServiceInfo> WorkloadIndex::service(const snapshot::ServiceCluster& cluster) {
  auto [it, inserted] = services_.try_emplace(cluster.hostname);
  if (inserted) it->second = std::make_shared<const ServiceInfo>(ServiceInfo{cluster.hostname, cluster.service_name, cluster.service_ns});
  return it->second;
}

}  // namespace dsproxy::proxy
