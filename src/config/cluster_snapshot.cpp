#include "config/cluster_snapshot.hpp"

#include <algorithm>
#include <map>
#include <tuple>
#include <utility>

namespace dsproxy::config {

ServiceCluster::ServiceCluster(const ServiceCluster& o)
    : cluster_name(o.cluster_name),
      service_name(o.service_name),
      service_ns(o.service_ns),
      hostname(o.hostname),
      port_name(o.port_name),
      port(o.port),
      ip_family_policy(o.ip_family_policy),
      ip_families(o.ip_families),
      cluster_ips(o.cluster_ips),
      endpoints(o.endpoints),
      next_pick(o.next_pick.load(std::memory_order_relaxed)) {}

namespace {

bool has_family(const std::vector<net::Family>& families, net::Family f) {
  return std::find(families.begin(), families.end(), f) != families.end();
}

bool selects(const Labels& selector, const Labels& labels) {
  for (const auto& [k, v] : selector) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
}

using SliceIndex = std::map<std::pair<std::string, std::string>, std::vector<const EndpointSlice*>>;  // ns, service

std::vector<Endpoint> slice_endpoints(const Service& svc, const ServicePort& sp,
                                      const std::vector<const EndpointSlice*>& slices) {
  std::vector<Endpoint> out;
  for (const EndpointSlice* slice : slices) {
    if (slice->address_type == AddressType::FQDN) continue;
    // A slice port with no number means "all ports" and carries nothing to translate to.
    auto port = std::find_if(slice->ports.begin(), slice->ports.end(), [&](const EndpointSlicePort& p) {
      return p.name.value_or("") == sp.name && p.protocol == sp.protocol && p.port;
    });
    if (port == slice->ports.end()) continue;
    for (const SliceEndpoint& e : slice->endpoints) {
      for (const net::IpAddress& a : e.addresses) {
        if (!has_family(svc.ip_families, a.family())) continue;
        out.push_back({net::SocketAddress{a, *port->port}, e.ready,
                       e.target_pod.empty() ? std::string() : slice->ns + "/" + e.target_pod});
      }
    }
  }
  return out;
}

std::vector<Endpoint> selector_endpoints(const Service& svc, const ServicePort& sp, const std::vector<const Pod*>& pods) {
  std::vector<Endpoint> out;
  // No selector, or an empty one, selects nothing: such services get endpoints from slices only.
  if (!svc.selector || svc.selector->empty()) return out;
  for (const Pod* pod : pods) {
    if (!selects(*svc.selector, pod->labels)) continue;
    std::uint16_t target = 0;
    if (const auto* number = std::get_if<std::uint16_t>(&sp.target_port)) {
      target = *number;
    } else {
      const std::string& name = std::get<std::string>(sp.target_port);
      auto cp = std::find_if(pod->container_ports.begin(), pod->container_ports.end(), [&](const ContainerPort& c) {
        return c.name == name && c.protocol == sp.protocol;
      });
      // The endpoints controller leaves out a pod that lacks the named port; so do we.
      if (cp == pod->container_ports.end()) continue;
      target = cp->port;
    }
    for (const net::IpAddress& a : pod->pod_ips)
      if (has_family(svc.ip_families, a.family()))
        out.push_back({net::SocketAddress{a, target}, pod->ready, pod->ns + "/" + pod->name});
  }
  return out;
}

// Same order on every build, so round-robin and the admin dump do not shuffle across reloads.
// An address listed twice (slices overlap while the controller moves an endpoint) is kept once,
// ready if any copy is.
void sort_and_merge(std::vector<Endpoint>& eps) {
  std::sort(eps.begin(), eps.end(), [](const Endpoint& a, const Endpoint& b) {
    return std::tie(a.address, a.pod, a.ready) < std::tie(b.address, b.pod, b.ready);
  });
  std::vector<Endpoint> merged;
  for (Endpoint& e : eps) {
    if (!merged.empty() && merged.back().address == e.address) {
      merged.back().ready = merged.back().ready || e.ready;
      if (merged.back().pod.empty()) merged.back().pod = std::move(e.pod);
      continue;
    }
    merged.push_back(std::move(e));
  }
  eps = std::move(merged);
}

}  // namespace

std::shared_ptr<const ClusterSnapshot> ClusterSnapshot::build(ClusterObjects objects, const Options& options) {
  auto snap = std::make_shared<ClusterSnapshot>();
  snap->objects_ = std::move(objects);
  snap->options_ = options;
  const ClusterObjects& objs = snap->objects_;

  SliceIndex slices;
  for (const EndpointSlice& s : objs.endpoint_slices)
    if (!s.service_name.empty()) slices[{s.ns, s.service_name}].push_back(&s);
  std::map<std::string, std::vector<const Pod*>> pods_by_ns;
  for (const Pod& p : objs.pods) pods_by_ns[p.ns].push_back(&p);

  struct Plan {
    const Service* svc;
    const ServicePort* port;
    std::string hostname;
  };
  std::vector<Plan> plans;
  for (const Service& svc : objs.services) {
    // Every ClusterIP counts as a VIP, even one with no TCP port: TCP to it has no route and
    // must be refused rather than passed through to an address nothing owns.
    for (const net::IpAddress& ip : svc.cluster_ips) snap->cluster_ips_[ip] = true;
    if (svc.type == "ExternalName" || svc.headless || svc.cluster_ips.empty()) continue;
    const std::string hostname = svc.name + "." + svc.ns + ".svc." + options.cluster_domain;
    for (const ServicePort& sp : svc.ports)
      if (sp.protocol == "TCP") plans.push_back({&svc, &sp, hostname});
  }
  std::sort(plans.begin(), plans.end(), [](const Plan& a, const Plan& b) {
    return std::tie(a.hostname, a.port->port) < std::tie(b.hostname, b.port->port);
  });

  // ServiceCluster holds an atomic, so it cannot be sorted in place; build it in final order.
  snap->clusters_.reserve(plans.size());
  for (const Plan& plan : plans) {
    const Service& svc = *plan.svc;
    const ServicePort& sp = *plan.port;
    ServiceCluster& c = snap->clusters_.emplace_back();
    c.cluster_name = "outbound|" + std::to_string(sp.port) + "||" + plan.hostname;
    c.service_name = svc.name;
    c.service_ns = svc.ns;
    c.hostname = plan.hostname;
    c.port_name = sp.name;
    c.port = sp.port;
    c.ip_family_policy = svc.ip_family_policy;
    c.ip_families = svc.ip_families;
    c.cluster_ips = svc.cluster_ips;
    // Slices, when a service has any, are the truth (they also cover selector-less services and
    // hand-managed endpoints); selector matching stands in for clusters dumped without them.
    if (auto it = slices.find({svc.ns, svc.name}); it != slices.end())
      c.endpoints = slice_endpoints(svc, sp, it->second);
    else if (auto pods = pods_by_ns.find(svc.ns); pods != pods_by_ns.end())
      c.endpoints = selector_endpoints(svc, sp, pods->second);
    sort_and_merge(c.endpoints);
  }

  for (std::size_t i = 0; i < snap->clusters_.size(); ++i) {
    const ServiceCluster& c = snap->clusters_[i];
    // emplace keeps the first claimant; the decoder rejects shared VIPs, so this only matters
    // for objects built by hand.
    for (const net::IpAddress& ip : c.cluster_ips) snap->by_vip_.emplace(net::SocketAddress{ip, c.port}, i);
  }

  if (!options.node_name.empty()) {
    for (const Pod& p : objs.pods) {
      // hostNetwork pods share the node's addresses; capturing "their" traffic would capture the node's.
      if (p.node_name != options.node_name || p.host_network || p.pod_ips.empty()) continue;
      snap->node_pods_.push_back({p.name, p.ns, p.pod_ips});
    }
    std::sort(snap->node_pods_.begin(), snap->node_pods_.end(),
              [](const NodePod& a, const NodePod& b) { return std::tie(a.ns, a.name) < std::tie(b.ns, b.name); });
  }
  return snap;
}

const ServiceCluster* ClusterSnapshot::find_cluster(const net::SocketAddress& vip) const {
  auto it = by_vip_.find(vip);
  return it == by_vip_.end() ? nullptr : &clusters_[it->second];
}

bool ClusterSnapshot::is_cluster_ip(const net::IpAddress& ip) const { return cluster_ips_.count(ip) != 0; }

}  // namespace dsproxy::config
