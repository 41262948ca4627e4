#include "snapshot/cluster_snapshot.hpp"

#include <algorithm>
#include <map>
#include <tuple>
#include <utility>

#include <spdlog/spdlog.h>

#include "config/k8s_decoder.hpp"

namespace dsproxy::snapshot {

// The build reads the Kubernetes object model throughout.
using namespace config;

std::string_view to_string(FamilyFallback f) { return f == FamilyFallback::never ? "never" : "other"; }

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
        Endpoint& ep = out.emplace_back();
        ep.address = net::SocketAddress{a, *port->port};
        ep.ready = e.ready;
        ep.serving = e.serving;
        ep.terminating = e.terminating;
        if (!e.target_pod.empty()) ep.pod = slice->ns + "/" + e.target_pod;
        ep.node_name = e.node_name;
        ep.zone = e.zone;
        ep.zone_hints = e.zone_hints;
      }
    }
  }
  return out;
}

using NodeZones = std::map<std::string, std::string, std::less<>>;  // Node name -> its topology.kubernetes.io/zone

std::vector<Endpoint> selector_endpoints(const Service& svc, const ServicePort& sp, const std::vector<const Pod*>& pods,
                                         const NodeZones& zones) {
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
    // What the EndpointSlice controller would write for this pod: serving is the pod's readiness;
    // ready is serving and not terminating, or forced by publishNotReadyAddresses (then even a
    // terminating pod stays ready, so kube-proxy keeps it among the others, not only as fallback).
    const bool serving = pod->ready;
    const bool ready = svc.publish_not_ready_addresses || (serving && !pod->terminating);
    for (const net::IpAddress& a : pod->pod_ips) {
      if (!has_family(svc.ip_families, a.family())) continue;
      Endpoint& ep = out.emplace_back();
      ep.address = net::SocketAddress{a, target};
      ep.ready = ready;
      ep.serving = serving;
      ep.terminating = pod->terminating;
      ep.pod = pod->ns + "/" + pod->name;
      ep.node_name = pod->node_name;
      // The controller takes the zone from the pod's Node; without it PreferClose has nothing to hint.
      if (auto z = zones.find(pod->node_name); z != zones.end()) ep.zone = z->second;
    }
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
      merged.back().serving = merged.back().serving || e.serving;
      merged.back().terminating = merged.back().terminating && e.terminating;
      if (merged.back().node_name.empty()) merged.back().node_name = std::move(e.node_name);
      if (merged.back().zone.empty()) merged.back().zone = std::move(e.zone);
      if (merged.back().zone_hints.empty()) merged.back().zone_hints = std::move(e.zone_hints);
      if (merged.back().pod.empty()) merged.back().pod = std::move(e.pod);
      continue;
    }
    merged.push_back(std::move(e));
  }
  eps = std::move(merged);
}

// Groups endpoints by pod: a dual-stack pod is one backend with two addresses. Endpoints without
// a pod (hand-made slices) are a backend each. Keeps the endpoints' order.
std::vector<Backend> group_backends(const std::vector<Endpoint>& eps) {
  std::vector<Backend> backends;
  std::map<std::string, std::size_t> by_pod;
  for (std::size_t i = 0; i < eps.size(); ++i) {
    std::size_t b;
    auto it = eps[i].pod.empty() ? by_pod.end() : by_pod.find(eps[i].pod);
    if (it != by_pod.end() && backends[it->second].index(eps[i].address.ip.family()) < 0) {
      b = it->second;
    } else {
      b = backends.size();
      backends.emplace_back();
      if (!eps[i].pod.empty()) by_pod[eps[i].pod] = b;
    }
    (eps[i].address.ip.is_v4() ? backends[b].v4 : backends[b].v6) = static_cast<int>(i);
  }
  return backends;
}

// Why `ip` must never be an upstream of a Service, or an empty view when it may be.
std::string_view unsafe_endpoint_reason(const net::IpAddress& ip,
                                        const std::unordered_map<net::IpAddress, bool, net::IpAddressHash>& cluster_ips) {
  if (const auto scope = ip.scope(); scope != net::AddressScope::global) return net::to_string(scope);
  // A ClusterIP as an endpoint would be dialled with the client's address as source, past the
  // capture rules (SO_MARK): the other Service's refusals and policies would not apply.
  if (cluster_ips.count(ip)) return "ClusterIP";
  return {};
}

bool has_hint(const Endpoint& e, const std::string& zone) {
  return std::find(e.zone_hints.begin(), e.zone_hints.end(), zone) != e.zone_hints.end();
}

// Marks the endpoints the Service's rules leave to the picker, for one family at a time (as
// kube-proxy, which runs one proxier per family). Its order (CategorizeEndpoints):
//   internalTrafficPolicy Local: this node's ready endpoints, else this node's serving-terminating
//     ones, else none (the ClusterIP port is refused: never another node's);
//   Cluster: the ready endpoints, narrowed to those hinted for this zone when every ready one
//     carries hints and at least one hint is this zone; none ready: the serving-terminating ones.
void select_endpoints(std::vector<Endpoint>& eps, net::Family family, TrafficPolicy policy,
                      const std::string& node_name, const std::string& zone) {
  auto in_family = [family](const Endpoint& e) { return e.address.ip.family() == family; };
  auto mark = [&](auto&& rule) {
    bool any = false;
    for (Endpoint& e : eps)
      if (in_family(e) && rule(e)) any = e.eligible = true;
    return any;
  };
  auto serving_terminating = [](const Endpoint& e) { return e.serving && e.terminating; };
  if (policy == TrafficPolicy::Local) {
    auto local = [&](const Endpoint& e) { return !node_name.empty() && e.node_name == node_name; };
    if (!mark([&](const Endpoint& e) { return local(e) && e.ready; }))
      mark([&](const Endpoint& e) { return local(e) && serving_terminating(e); });
    return;
  }
  bool any_ready = false, all_hinted = true, hinted_here = false;
  for (const Endpoint& e : eps) {
    if (!in_family(e) || !e.ready) continue;
    any_ready = true;
    if (e.zone_hints.empty()) all_hinted = false;
    else if (has_hint(e, zone)) hinted_here = true;
  }
  const bool by_zone = !zone.empty() && any_ready && all_hinted && hinted_here;
  if (!mark([&](const Endpoint& e) { return e.ready && (!by_zone || has_hint(e, zone)); }))
    mark(serving_terminating);
}

// What the EndpointSlice controller writes for trafficDistribution PreferClose: each ready endpoint
// hinted for its own zone. A slice dumped from a cluster already carries the hints; a
// hand-written one gets them here, so the same file behaves the same with or without them.
void derive_hints(const Service& svc, std::vector<Endpoint>& eps) {
  if (svc.traffic_distribution != "PreferClose" && svc.traffic_distribution != "PreferSameZone") return;
  if (std::any_of(eps.begin(), eps.end(), [](const Endpoint& e) { return !e.zone_hints.empty(); })) return;
  // The controller hints each ready endpoint that has a zone, one by one: a ready endpoint
  // without a zone stays unhinted (and so turns topology off for its family in select_endpoints),
  // while a not-ready one, or one of the other family, changes nothing for the rest.
  for (Endpoint& e : eps)
    if (e.ready && !e.zone.empty()) e.zone_hints = {e.zone};
}

constexpr const char* kFallbackAnnotation = "dsproxy.io/family-fallback";

FamilyFallback family_fallback(const Service& svc, FallbackDefault node_default) {
  if (auto it = svc.annotations.find(kFallbackAnnotation); it != svc.annotations.end()) {
    if (it->second == "never") return FamilyFallback::never;
    if (it->second == "other") return FamilyFallback::other;
    throw ConfigError("Service " + svc.ns + "/" + svc.name + ": metadata.annotations[" + kFallbackAnnotation +
                      "]: expected \"never\" or \"other\", got \"" + it->second + "\"");
  }
  switch (node_default) {
    case FallbackDefault::never: return FamilyFallback::never;
    case FallbackDefault::other: return FamilyFallback::other;
    case FallbackDefault::policy: break;
  }
  return svc.ip_family_policy == IpFamilyPolicy::SingleStack ? FamilyFallback::never : FamilyFallback::other;
}

}  // namespace

std::shared_ptr<const ClusterSnapshot> ClusterSnapshot::build(ClusterObjects objects, const Options& options) {
  static std::atomic<std::uint64_t> serials{0};
  auto snap = std::make_shared<ClusterSnapshot>();
  snap->serial_ = serials.fetch_add(1, std::memory_order_relaxed) + 1;
  snap->objects_ = std::move(objects);
  snap->options_ = options;
  const ClusterObjects& objs = snap->objects_;
  NodeZones node_zones;
  for (const Node& n : objs.nodes)
    if (auto it = n.labels.find("topology.kubernetes.io/zone"); it != n.labels.end() && !it->second.empty())
      node_zones.emplace(n.name, it->second);
  snap->zone_ = options.zone;
  if (snap->zone_.empty() && !options.node_name.empty())
    if (auto it = node_zones.find(options.node_name); it != node_zones.end()) snap->zone_ = it->second;

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
      c.endpoints = selector_endpoints(svc, sp, pods->second, node_zones);
    std::erase_if(c.endpoints, [&](const Endpoint& e) {
      const std::string_view reason = unsafe_endpoint_reason(e.address.ip, snap->cluster_ips_);
      if (reason.empty()) return false;
      snap->dropped_endpoints_.push_back({c.cluster_name, e.address, std::string(reason)});
      return true;
    });
    sort_and_merge(c.endpoints);
    derive_hints(svc, c.endpoints);
    for (const net::Family f : {net::Family::v4, net::Family::v6})
      select_endpoints(c.endpoints, f, svc.internal_traffic_policy, options.node_name, snap->zone_);
    c.internal_traffic_policy = svc.internal_traffic_policy;
    c.session_affinity = svc.session_affinity;
    c.affinity_timeout_s = svc.affinity_timeout_s;
    c.traffic_distribution = svc.traffic_distribution;
    c.app_protocol = sp.app_protocol;
    c.backends = group_backends(c.endpoints);
    c.family_fallback = family_fallback(svc, options.fallback_default);
  }

  for (std::size_t i = 0; i < snap->clusters_.size(); ++i) {
    const ServiceCluster& c = snap->clusters_[i];
    // emplace keeps the first claimant; the decoder rejects shared VIPs, so this only matters
    // for objects built by hand.
    for (const net::IpAddress& ip : c.cluster_ips) snap->by_vip_.emplace(net::SocketAddress{ip, c.port}, i);
  }

  for (const DroppedEndpoint& d : snap->dropped_endpoints_)
    spdlog::warn("{}: endpoint {} dropped: a {} address is never dialled on a pod's behalf", d.cluster_name,
                 d.address.to_string(), d.reason);

  for (const Pod& p : objs.pods) {
    if (p.host_network || p.pod_ips.size() != 2 || p.pod_ips[0].family() == p.pod_ips[1].family()) continue;
    // Happy Eyeballs to a pod's other address, and cross-family sources, use only addresses a pod
    // can really own.
    if (!unsafe_endpoint_reason(p.pod_ips[0], snap->cluster_ips_).empty() ||
        !unsafe_endpoint_reason(p.pod_ips[1], snap->cluster_ips_).empty())
      continue;
    snap->pod_other_family_.emplace(p.pod_ips[0], p.pod_ips[1]);
    snap->pod_other_family_.emplace(p.pod_ips[1], p.pod_ips[0]);
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

void ClusterSnapshot::for_each_cluster_change(
    const ClusterSnapshot* older, const std::function<void(const ServiceCluster&)>& removed,
    const std::function<void(const std::shared_ptr<const ServiceCluster>&)>& added) const {
  if (older == this) return;
  // Each build makes its clusters anew: every cluster of the older snapshot is gone.
  if (older)
    for (const ServiceCluster& c : older->clusters_) removed(c);
  const auto self = shared_from_this();
  for (const ServiceCluster& c : clusters_) added(std::shared_ptr<const ServiceCluster>(self, &c));
}

const ServiceCluster* ClusterSnapshot::find_cluster(const net::SocketAddress& vip) const {
  auto it = by_vip_.find(vip);
  return it == by_vip_.end() ? nullptr : &clusters_[it->second];
}

bool ClusterSnapshot::is_cluster_ip(const net::IpAddress& ip) const { return cluster_ips_.count(ip) != 0; }

std::optional<net::IpAddress> ClusterSnapshot::other_family_address(const net::IpAddress& ip) const {
  auto it = pod_other_family_.find(ip);
  if (it == pod_other_family_.end()) return std::nullopt;
  return it->second;
}

std::vector<VipPorts> ClusterSnapshot::vip_ports() const {
  std::map<net::IpAddress, std::vector<std::uint16_t>> open;
  for (const auto& [ip, unused] : cluster_ips_) open[ip];
  for (const ServiceCluster& c : clusters_)
    for (const net::IpAddress& ip : c.cluster_ips)
      if (c.serves(ip.family())) open[ip].push_back(c.port);
  std::vector<VipPorts> out;
  for (auto& [ip, ports] : open) {
    std::sort(ports.begin(), ports.end());
    out.push_back({ip, std::move(ports)});
  }
  return out;
}

}  // namespace dsproxy::snapshot
