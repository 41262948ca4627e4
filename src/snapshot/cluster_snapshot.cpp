#include "snapshot/cluster_snapshot.hpp"

#include <algorithm>
#include <map>
#include <tuple>

#include "snapshot/snapshot_builder.hpp"

namespace dsproxy::snapshot {

std::string_view to_string(FamilyFallback f) { return f == FamilyFallback::never ? "never" : "other"; }

std::string_view to_string(WorkloadProtocol p) { return p == WorkloadProtocol::HBONE ? "HBONE" : "TCP"; }

std::string Workload::identity(std::string_view trust_domain) const {
  std::string uri = "spiffe://";
  uri.append(trust_domain).append("/ns/").append(ns).append("/sa/").append(service_account);
  return uri;
}

std::optional<net::IpAddress> Workload::address(net::Family family) const {
  for (const auto& ip : ips)
    if (ip.family() == family) return ip;
  return std::nullopt;
}

std::vector<std::shared_ptr<const Workload>> ClusterSnapshot::workloads() const {
  std::vector<std::shared_ptr<const Workload>> out;
  out.reserve(workload_count_);
  workloads_.for_each([&](const net::IpAddress& ip, const std::shared_ptr<const Workload>& w) {
    // A dual-stack pod is in the map once per address: listed under its first one only.
    if (!w->ips.empty() && w->ips.front() == ip) out.push_back(w);
  });
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return std::tie(a->ns, a->name, a->ips) < std::tie(b->ns, b->name, b->ips);
  });
  return out;
}

bool ServiceCluster::serves(net::Family dialled) const {
  bool other = false;
  for (const Endpoint& e : endpoints) {
    if (!e.eligible) continue;
    if (e.address.ip.family() == dialled) return true;
    other = true;
  }
  return other && family_fallback == FamilyFallback::other;
}

bool ServiceCluster::has_ready(net::Family family) const {
  return std::any_of(endpoints.begin(), endpoints.end(),
                     [family](const Endpoint& e) { return e.eligible && e.address.ip.family() == family; });
}

std::shared_ptr<const ClusterSnapshot> ClusterSnapshot::build(ClusterObjects objects, const Options& options) {
  SnapshotBuilder builder(options);
  builder.replace_all(std::move(objects));
  return builder.build();
}

const ServiceCluster* ClusterSnapshot::find_cluster(const net::SocketAddress& vip) const {
  const auto* owners = cluster_ips_.find(vip.ip);
  if (!owners) return nullptr;
  // Owners by hostname, each one's clusters by port: the first claimant of a shared VIP wins.
  for (const auto& view : *owners)
    for (const auto& c : view->clusters)
      if (c->port == vip.port) return c.get();
  return nullptr;
}

bool ClusterSnapshot::is_cluster_ip(const net::IpAddress& ip) const { return cluster_ips_.contains(ip); }

std::optional<net::IpAddress> ClusterSnapshot::other_family_address(const net::IpAddress& ip) const {
  const auto* refs = other_family_.find(ip);
  if (!refs || refs->empty()) return std::nullopt;
  return refs->front().first;
}

const ServiceView* ClusterSnapshot::service(std::string_view ns, std::string_view name) const {
  std::string key;
  key.reserve(ns.size() + 1 + name.size());
  key.append(ns).append(1, '/').append(name);
  const auto* view = services_.find(key);
  return view ? view->get() : nullptr;
}

const ServiceView* ClusterSnapshot::cluster_ip_owner(const net::IpAddress& ip) const {
  const auto* owners = cluster_ips_.find(ip);
  return owners && !owners->empty() ? owners->front().get() : nullptr;
}

std::vector<VipPorts> ClusterSnapshot::vip_ports() const {
  std::vector<VipPorts> out;
  cluster_ips_.for_each([&](const net::IpAddress& ip, const ServiceViews& owners) {
    VipPorts v{ip, {}};
    for (const auto& view : owners)
      for (const auto& c : view->clusters)
        if (c->serves(ip.family())) v.open_ports.push_back(c->port);
    std::sort(v.open_ports.begin(), v.open_ports.end());
    out.push_back(std::move(v));
  });
  std::sort(out.begin(), out.end(), [](const VipPorts& a, const VipPorts& b) { return a.vip < b.vip; });
  return out;
}

std::vector<std::reference_wrapper<const ServiceCluster>> ClusterSnapshot::clusters() const {
  std::vector<std::reference_wrapper<const ServiceCluster>> out;
  out.reserve(cluster_count_);
  services_.for_each([&](const std::string&, const std::shared_ptr<const ServiceView>& view) {
    for (const auto& c : view->clusters) out.push_back(std::cref(*c));
  });
  std::sort(out.begin(), out.end(), [](const ServiceCluster& a, const ServiceCluster& b) {
    return std::tie(a.hostname, a.port, a.cluster_name) < std::tie(b.hostname, b.port, b.cluster_name);
  });
  return out;
}

std::vector<DroppedEndpoint> ClusterSnapshot::dropped_endpoints() const {
  std::vector<DroppedEndpoint> out;
  services_.for_each([&](const std::string&, const std::shared_ptr<const ServiceView>& view) {
    out.insert(out.end(), view->dropped.begin(), view->dropped.end());
  });
  std::stable_sort(out.begin(), out.end(),
                   [](const DroppedEndpoint& a, const DroppedEndpoint& b) { return a.cluster_name < b.cluster_name; });
  return out;
}

void ClusterSnapshot::for_each_cluster_change(
    const ClusterSnapshot* older, const std::function<void(const ServiceCluster&)>& removed,
    const std::function<void(const std::shared_ptr<const ServiceCluster>&)>& added) const {
  static const decltype(services_) kNone;
  decltype(services_)::diff(older ? older->services_ : kNone, services_,
                            [&](const std::string&, const std::shared_ptr<const ServiceView>* before,
                                const std::shared_ptr<const ServiceView>* after) {
                              static const std::vector<std::shared_ptr<const ServiceCluster>> kEmpty;
                              const auto& was = before ? (*before)->clusters : kEmpty;
                              const auto& now = after ? (*after)->clusters : kEmpty;
                              // A Service keeps an unchanged cluster's object only when the whole
                              // view is shared, but compare anyway: cheap, and exact.
                              for (const auto& c : was)
                                if (std::find(now.begin(), now.end(), c) == now.end()) removed(*c);
                              for (const auto& c : now)
                                if (std::find(was.begin(), was.end(), c) == was.end()) added(c);
                            });
}

void ClusterSnapshot::for_each_service_change(
    const ClusterSnapshot* older,
    const std::function<void(const ServiceView* before, const ServiceView* after)>& changed) const {
  static const decltype(services_) kNone;
  decltype(services_)::diff(older ? older->services_ : kNone, services_,
                            [&](const std::string&, const std::shared_ptr<const ServiceView>* before,
                                const std::shared_ptr<const ServiceView>* after) {
                              changed(before ? before->get() : nullptr, after ? after->get() : nullptr);
                            });
}

}  // namespace dsproxy::snapshot
