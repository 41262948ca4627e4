#include "snapshot/snapshot_builder.hpp"

#include <algorithm>
#include <atomic>
#include <tuple>

#include <spdlog/spdlog.h>

#include "config/k8s_decoder.hpp"

namespace dsproxy::snapshot {

// The derivation reads the Kubernetes object model throughout.
using namespace config;

namespace {

std::string key_of(std::string_view ns, std::string_view name) {
  std::string key;
  key.reserve(ns.size() + 1 + name.size());
  key.append(ns).append(1, '/').append(name);
  return key;
}

bool has_family(const std::vector<net::Family>& families, net::Family f) {
  return std::find(families.begin(), families.end(), f) != families.end();
}

// The DNS side's rule: a Service decoded without ipFamilies (and without ClusterIPs: headless)
// allows both.
bool dns_has_family(const std::vector<net::Family>& families, net::Family f) {
  return families.empty() || has_family(families, f);
}

bool selects(const Labels& selector, const Labels& labels) {
  for (const auto& [k, v] : selector) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
}

// Names shared by the endpoints of one derivation (a dual-stack pod's two addresses, in every port).
class PodNames {
 public:
  const SharedString& get(const std::string& ns, const std::string& name) {
    std::string key = key_of(ns, name);
    auto it = names_.find(key);
    if (it == names_.end()) it = names_.emplace(key, SharedString(key)).first;
    return it->second;
  }

 private:
  std::unordered_map<std::string, SharedString> names_;
};

template <typename Intern>
std::vector<Endpoint> slice_endpoints(const Service& svc, const ServicePort& sp,
                                      const std::vector<const EndpointSlice*>& slices, PodNames& pods,
                                      Intern&& intern) {
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
        if (!e.target_pod.empty()) ep.pod = pods.get(slice->ns, e.target_pod);
        ep.node_name = intern(e.node_name);
        ep.zone = intern(e.zone);
        for (const std::string& z : e.zone_hints) ep.zone_hints.push_back(intern(z));
      }
    }
  }
  return out;
}

template <typename Intern>
std::vector<Endpoint> selector_endpoints(const Service& svc, const ServicePort& sp, const std::vector<const Pod*>& pods,
                                         const std::unordered_map<std::string, std::string>& zones, PodNames& names,
                                         Intern&& intern) {
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
      ep.pod = names.get(pod->ns, pod->name);
      ep.node_name = intern(pod->node_name);
      // The controller takes the zone from the pod's Node; without it PreferClose has nothing to hint.
      if (auto z = zones.find(pod->node_name); z != zones.end()) ep.zone = intern(z->second);
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
  merged.reserve(eps.size());
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
  std::unordered_map<std::string_view, std::size_t> by_pod;
  for (std::size_t i = 0; i < eps.size(); ++i) {
    std::size_t b;
    const std::string& pod = eps[i].pod;
    auto it = pod.empty() ? by_pod.end() : by_pod.find(pod);
    if (it != by_pod.end() && backends[it->second].index(eps[i].address.ip.family()) < 0) {
      b = it->second;
    } else {
      b = backends.size();
      backends.emplace_back();
      if (!pod.empty()) by_pod[pod] = b;
    }
    (eps[i].address.ip.is_v4() ? backends[b].v4 : backends[b].v6) = static_cast<int>(i);
  }
  backends.shrink_to_fit();
  return backends;
}

bool has_hint(const Endpoint& e, const std::string& zone) {
  return std::find_if(e.zone_hints.begin(), e.zone_hints.end(), [&](const SharedString& h) { return h == zone; }) !=
         e.zone_hints.end();
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

// Every address a view lists as an endpoint before dropping (kept or dropped), once each.
std::vector<net::IpAddress> candidate_ips(const ServiceView& view) {
  std::vector<net::IpAddress> ips;
  for (const auto& c : view.clusters)
    for (const Endpoint& e : c->endpoints) ips.push_back(e.address.ip);
  for (const DroppedEndpoint& d : view.dropped) ips.push_back(d.address.ip);
  std::sort(ips.begin(), ips.end());
  ips.erase(std::unique(ips.begin(), ips.end()), ips.end());
  return ips;
}

// The (IPv4, IPv6) address pairs of the pods a view's clusters group into dual-stack backends.
std::vector<std::pair<net::IpAddress, net::IpAddress>> pod_pairs(const ServiceView& view) {
  std::vector<std::pair<net::IpAddress, net::IpAddress>> pairs;
  for (const auto& c : view.clusters)
    for (const Backend& b : c->backends)
      if (b.v4 >= 0 && b.v6 >= 0 && !c->endpoints[static_cast<std::size_t>(b.v4)].pod.empty())
        pairs.emplace_back(c->endpoints[static_cast<std::size_t>(b.v4)].address.ip,
                           c->endpoints[static_cast<std::size_t>(b.v6)].address.ip);
  std::sort(pairs.begin(), pairs.end());
  pairs.erase(std::unique(pairs.begin(), pairs.end()), pairs.end());
  return pairs;
}

bool is_pair_candidate(const Pod& p) {
  return !p.host_network && p.pod_ips.size() == 2 && p.pod_ips[0].family() != p.pod_ips[1].family();
}

std::atomic<std::uint64_t> next_serial{0};

}  // namespace

// Why `ip` must never be an upstream of a Service, or an empty view when it may be.
static std::string_view unsafe_reason(const net::IpAddress& ip, bool is_cluster_ip) {
  if (const auto scope = ip.scope(); scope != net::AddressScope::global) return net::to_string(scope);
  // A ClusterIP as an endpoint would be dialled with the client's address as source, past the
  // capture rules (SO_MARK): the other Service's refusals and policies would not apply.
  if (is_cluster_ip) return "ClusterIP";
  return {};
}

SnapshotBuilder::SnapshotBuilder(Options options) : options_(std::move(options)), zone_(options_.zone) {
  node_pods_ = std::make_shared<const std::vector<NodePod>>();
  warnings_ = std::make_shared<const std::vector<std::string>>();
}

const SharedString& SnapshotBuilder::intern(const std::string& s) {
  static const SharedString kEmpty;
  if (s.empty()) return kEmpty;
  auto it = interned_.find(s);
  if (it == interned_.end()) it = interned_.emplace(s, SharedString(s)).first;
  return it->second;
}

// ------------------------------------------------------------------------------- changes

void SnapshotBuilder::upsert(Service service) {
  family_fallback(service, options_.fallback_default);  // throws before anything changes
  std::string key = key_of(service.ns, service.name);
  auto it = services_.find(key);
  if (it != services_.end()) {
    if (it->second == service) return;
    it->second = std::move(service);
  } else {
    services_.emplace(key, std::move(service));
  }
  dirty_services_.insert(std::move(key));
}

void SnapshotBuilder::upsert(EndpointSlice slice) {
  if (slice.address_type == AddressType::FQDN) {  // nothing routes to a hostname
    erase(ObjectKind::endpoint_slice, slice.ns, slice.name);
    return;
  }
  // Kept for as long as the slice lives: without the growth slack decoding left (up to half of a
  // 100-endpoint slice's vector).
  for (SliceEndpoint& e : slice.endpoints) e.addresses.shrink_to_fit();
  slice.endpoints.shrink_to_fit();
  slice.ports.shrink_to_fit();
  std::string key = key_of(slice.ns, slice.name);
  auto it = slices_.find(key);
  if (it != slices_.end()) {
    if (it->second == slice) return;
    erase(ObjectKind::endpoint_slice, slice.ns, slice.name);
  }
  if (!slice.service_name.empty()) {
    std::string service = key_of(slice.ns, slice.service_name);
    slices_by_service_[service].insert(key);
    dirty_services_.insert(std::move(service));
  }
  slices_.emplace(std::move(key), std::move(slice));
}

void SnapshotBuilder::upsert(Pod pod) {
  std::string key = key_of(pod.ns, pod.name);
  auto [it, inserted] = pods_.try_emplace(key);
  PodEntry& entry = it->second;
  if (!inserted && entry.pod == pod) return;
  forget_pod(entry);
  const bool local = !options_.node_name.empty() && pod.node_name == options_.node_name;
  if (local || local_pods_.count(key)) node_pods_dirty_ = true;
  if (local) local_pods_.insert(key);
  else local_pods_.erase(key);
  const std::string ns = pod.ns;
  entry.pod = std::move(pod);
  dirty_pods_.insert(std::move(key));
  touch_pod_users(ns);
}

void SnapshotBuilder::upsert(Namespace ns) {
  auto it = ns.labels.find(std::string(config::kDataplaneModeLabel));
  const bool ambient = it != ns.labels.end() && it->second == "ambient";
  auto known = ambient_namespaces_.find(ns.name);
  const bool was = known != ambient_namespaces_.end();
  if (ambient == was) return;
  if (ambient) ambient_namespaces_.emplace(ns.name, true);
  else ambient_namespaces_.erase(known);
  touch_namespace_pods(ns.name);
}

void SnapshotBuilder::touch_namespace_pods(const std::string& ns) {
  const std::string from = ns + "/";
  for (auto it = pods_.lower_bound(from); it != pods_.end() && it->first.compare(0, from.size(), from) == 0; ++it) {
    forget_pod(it->second);
    dirty_pods_.insert(it->first);
  }
}

bool SnapshotBuilder::in_mesh(const Pod& pod) const {
  if (pod.host_network) return false;
  if (auto it = pod.labels.find(std::string(config::kDataplaneModeLabel)); it != pod.labels.end()) {
    if (it->second == "none") return false;
    if (it->second == "ambient") return true;
  }
  return ambient_namespaces_.contains(pod.ns);
}

void SnapshotBuilder::upsert(AuthorizationPolicy policy) {
  std::string key = key_of(policy.ns, policy.name);
  auto it = raw_policies_.find(key);
  if (it != raw_policies_.end() && it->second == policy) return;
  std::shared_ptr<authz::PolicyStats> stats;
  auto& named = policies_[policy.ns];
  if (auto old = named.find(policy.name); old != named.end()) stats = old->second->stats;
  named[policy.name] = authz::compile(policy, options_.authz_root_namespace, std::move(stats));
  raw_policies_.insert_or_assign(std::move(key), std::move(policy));
  authz_dirty_ = true;
}

void SnapshotBuilder::upsert(Node node) {
  auto it = node.labels.find("topology.kubernetes.io/zone");
  set_node_zone(node.name, it == node.labels.end() ? std::string() : it->second);
}

void SnapshotBuilder::erase(ObjectKind kind, std::string_view ns, std::string_view name) {
  switch (kind) {
    case ObjectKind::service: {
      std::string key = key_of(ns, name);
      if (services_.erase(key)) dirty_services_.insert(std::move(key));
      return;
    }
    case ObjectKind::endpoint_slice: {
      auto it = slices_.find(key_of(ns, name));
      if (it == slices_.end()) return;
      if (!it->second.service_name.empty()) {
        std::string service = key_of(ns, it->second.service_name);
        auto by = slices_by_service_.find(service);
        if (by != slices_by_service_.end()) {
          by->second.erase(it->first);
          if (by->second.empty()) slices_by_service_.erase(by);
        }
        dirty_services_.insert(std::move(service));
      }
      slices_.erase(it);
      return;
    }
    case ObjectKind::pod: {
      auto it = pods_.find(key_of(ns, name));
      if (it == pods_.end()) return;
      forget_pod(it->second);
      if (local_pods_.erase(it->first)) node_pods_dirty_ = true;
      dirty_pods_.erase(it->first);
      pods_.erase(it);
      touch_pod_users(std::string(ns));
      return;
    }
    case ObjectKind::node:
      set_node_zone(std::string(name), {});
      return;
    case ObjectKind::namespace_:
      upsert(Namespace{std::string(name), {}});
      return;

    case ObjectKind::authorization_policy: {
      if (!raw_policies_.erase(key_of(ns, name))) return;
      if (auto named = policies_.find(ns); named != policies_.end()) {
        named->second.erase(std::string(name));
        if (named->second.empty()) policies_.erase(named);
      }
      authz_dirty_ = true;
      return;
    }
  }
}

void SnapshotBuilder::replace_all(ClusterObjects objects) {
  for (const Service& s : objects.services) family_fallback(s, options_.fallback_default);

  std::unordered_set<std::string> keep;
  for (const Service& s : objects.services) keep.insert(key_of(s.ns, s.name));
  std::vector<std::string> gone;
  for (const auto& [key, svc] : services_)
    if (!keep.count(key)) gone.push_back(key);
  for (const auto& key : gone) {
    const auto slash = key.find('/');
    erase(ObjectKind::service, std::string_view(key).substr(0, slash), std::string_view(key).substr(slash + 1));
  }
  for (Service& s : objects.services) upsert(std::move(s));

  keep.clear();
  gone.clear();
  for (const EndpointSlice& s : objects.endpoint_slices)
    if (s.address_type != AddressType::FQDN) keep.insert(key_of(s.ns, s.name));
  for (const auto& [key, slice] : slices_)
    if (!keep.count(key)) gone.push_back(key);
  for (const auto& key : gone) {
    const auto slash = key.find('/');
    erase(ObjectKind::endpoint_slice, std::string_view(key).substr(0, slash), std::string_view(key).substr(slash + 1));
  }
  for (EndpointSlice& s : objects.endpoint_slices) upsert(std::move(s));

  keep.clear();
  gone.clear();
  for (const Pod& p : objects.pods) keep.insert(key_of(p.ns, p.name));
  for (const auto& [key, entry] : pods_)
    if (!keep.count(key)) gone.push_back(key);
  for (const auto& key : gone) {
    const auto slash = key.find('/');
    erase(ObjectKind::pod, std::string_view(key).substr(0, slash), std::string_view(key).substr(slash + 1));
  }
  for (Pod& p : objects.pods) upsert(std::move(p));

  keep.clear();
  gone.clear();
  for (const Node& n : objects.nodes) keep.insert(n.name);
  for (const auto& [name, zone] : node_zones_)
    if (!keep.count(name)) gone.push_back(name);
  for (const auto& name : gone) set_node_zone(name, {});
  for (Node& n : objects.nodes) upsert(std::move(n));

  keep.clear();
  gone.clear();
  for (const Namespace& n : objects.namespaces) keep.insert(n.name);
  for (const auto& [name, ambient] : ambient_namespaces_)
    if (!keep.count(name)) gone.push_back(name);
  for (const auto& name : gone) upsert(Namespace{name, {}});
  for (Namespace& n : objects.namespaces) upsert(std::move(n));

  keep.clear();
  gone.clear();

  for (const AuthorizationPolicy& p : objects.authorization_policies) keep.insert(key_of(p.ns, p.name));
  for (const auto& [key, policy] : raw_policies_)
    if (!keep.count(key)) gone.push_back(key);
  for (const auto& key : gone) {
    const auto slash = key.find('/');
    erase(ObjectKind::authorization_policy, std::string_view(key).substr(0, slash),
          std::string_view(key).substr(slash + 1));
  }
  for (AuthorizationPolicy& p : objects.authorization_policies) upsert(std::move(p));

  if (objects.warnings != *warnings_)
    warnings_ = std::make_shared<const std::vector<std::string>>(std::move(objects.warnings));
}

void SnapshotBuilder::touch_pod_users(const std::string& ns) {
  auto it = pod_users_.find(ns);
  if (it == pod_users_.end()) return;
  for (const auto& name : it->second) dirty_services_.insert(key_of(ns, name));
}

void SnapshotBuilder::touch_all_pod_users() {
  for (const auto& [ns, names] : pod_users_)
    for (const auto& name : names) dirty_services_.insert(key_of(ns, name));
}

void SnapshotBuilder::set_node_zone(const std::string& node, std::string zone) {
  auto it = node_zones_.find(node);
  const std::string old = it == node_zones_.end() ? std::string() : it->second;
  if (old == zone) return;
  if (zone.empty()) node_zones_.erase(it);
  else node_zones_[node] = zone;
  if (node == options_.node_name && !options_.node_name.empty() && options_.zone.empty()) {
    // This node's zone decides topology-aware routing for every Service: a rare event (a node
    // relabelled) that costs a full rederivation.
    zone_ = zone;
    for (const auto& [key, svc] : services_) dirty_services_.insert(key);
  }
  touch_all_pod_users();  // their endpoints on `node` carry its zone
}

// ------------------------------------------------------------------------------- pods

void SnapshotBuilder::forget_pod(PodEntry& entry) {
  if (entry.counted)
    for (const net::IpAddress& ip : entry.pod.pod_ips) count_endpoint_ip(ip, -1);
  if (entry.pair) {
    add_pair(entry.pair->first, entry.pair->second, -1);
    add_pair(entry.pair->second, entry.pair->first, -1);
  }
  entry.counted = false;
  entry.pair.reset();
  if (entry.workload) {
    // Only the addresses still pointing at this pod's entry: a new pod may have taken one over.
    for (const net::IpAddress& ip : entry.workload->ips)
      if (const auto* w = workloads_.find(ip); w && *w == entry.workload) workloads_.erase(ip);
    entry.workload.reset();
    --workload_count_;
  }
}

void SnapshotBuilder::apply_pod(PodEntry& entry) {
  const Pod& p = entry.pod;
  if (!p.host_network && !p.pod_ips.empty()) {
    auto w = std::make_shared<Workload>();
    w->name = p.name;
    w->ns = p.ns;
    w->service_account = p.service_account;
    w->node = intern(p.node_name);
    w->ips = p.pod_ips;
    w->protocol = in_mesh(p) ? WorkloadProtocol::HBONE : WorkloadProtocol::TCP;
    w->local = !options_.node_name.empty() && p.node_name == options_.node_name;
    entry.workload = w;
    for (const net::IpAddress& ip : p.pod_ips)
      if (unsafe_reason(ip, is_cluster_ip(ip)).empty()) workloads_.set(ip, w);
    ++workload_count_;
  }
  if (!is_pair_candidate(p)) return;
  entry.counted = true;
  for (const net::IpAddress& ip : p.pod_ips) count_endpoint_ip(ip, +1);
  // Happy Eyeballs to a pod's other address, and cross-family sources, use only addresses a pod
  // can really own.
  if (!unsafe_reason(p.pod_ips[0], is_cluster_ip(p.pod_ips[0])).empty() ||
      !unsafe_reason(p.pod_ips[1], is_cluster_ip(p.pod_ips[1])).empty())
    return;
  entry.pair.emplace(p.pod_ips[0], p.pod_ips[1]);
  add_pair(p.pod_ips[0], p.pod_ips[1], +1);
  add_pair(p.pod_ips[1], p.pod_ips[0], +1);
}

void SnapshotBuilder::count_endpoint_ip(const net::IpAddress& ip, int sign) {
  const std::uint32_t* count = endpoint_ip_refs_.find(ip);
  if (sign > 0) endpoint_ip_refs_.set(ip, count ? *count + 1 : 1);
  else if (count && *count > 1) endpoint_ip_refs_.set(ip, *count - 1);
  else endpoint_ip_refs_.erase(ip);
}

void SnapshotBuilder::add_pair(const net::IpAddress& a, const net::IpAddress& b, int sign) {
  using Refs = std::vector<std::pair<net::IpAddress, std::uint32_t>>;
  const Refs* refs = other_family_.find(a);
  if (sign > 0) {
    if (!refs) {
      other_family_.set(a, Refs{{b, 1}});
      return;
    }
    other_family_.update(a, [&](Refs& r) {
      auto it = std::lower_bound(r.begin(), r.end(), b, [](const auto& e, const net::IpAddress& k) { return e.first < k; });
      if (it != r.end() && it->first == b) ++it->second;
      else r.insert(it, {b, 1});
    });
    return;
  }
  if (!refs) return;
  if (refs->size() == 1 && refs->front().first == b && refs->front().second == 1) {
    other_family_.erase(a);
    return;
  }
  other_family_.update(a, [&](Refs& r) {
    auto it = std::lower_bound(r.begin(), r.end(), b, [](const auto& e, const net::IpAddress& k) { return e.first < k; });
    if (it != r.end() && it->first == b && --it->second == 0) r.erase(it);
  });
}

void SnapshotBuilder::rebuild_authz() {
  std::vector<authz::PolicyIndex::LocalWorkload> workloads;
  workloads.reserve(local_pods_.size());
  for (const auto& key : local_pods_) {
    const Pod& p = pods_.at(key).pod;
    if (p.host_network) continue;  // shares the node's addresses: not a workload proxied here
    workloads.push_back({p.name, p.ns, p.labels, p.service_account, p.pod_ips});
  }
  authz_ = authz::PolicyIndex::build(std::make_shared<const authz::PolicyIndex::PolicySet>(policies_), workloads,
                                     options_.authz_root_namespace);
  authz_dirty_ = false;
}

void SnapshotBuilder::rebuild_node_pods() {
  auto pods = std::make_shared<std::vector<NodePod>>();
  for (const auto& key : local_pods_) {
    const Pod& p = pods_.at(key).pod;
    // hostNetwork pods share the node's addresses; capturing "their" traffic would capture the node's.
    if (p.host_network || p.pod_ips.empty()) continue;
    pods->push_back({p.name, p.ns, p.pod_ips, p.service_account});
  }
  std::sort(pods->begin(), pods->end(),
            [](const NodePod& a, const NodePod& b) { return std::tie(a.ns, a.name) < std::tie(b.ns, b.name); });
  node_pods_ = std::move(pods);
  node_pods_dirty_ = false;
}

// ------------------------------------------------------------------------------- services

std::shared_ptr<const ServiceView> SnapshotBuilder::derive(const Service& svc, bool& uses_pods) {
  auto view = std::make_shared<ServiceView>();
  view->name = svc.name;
  view->ns = svc.ns;
  view->hostname = svc.name + "." + svc.ns + ".svc." + options_.cluster_domain;
  view->type = svc.type;
  view->headless = svc.headless;
  view->cluster_ips = svc.cluster_ips;
  view->ip_families = svc.ip_families;
  view->external_name = svc.external_name;

  const std::string key = key_of(svc.ns, svc.name);
  std::vector<const EndpointSlice*> slices;
  if (auto it = slices_by_service_.find(key); it != slices_by_service_.end())
    for (const auto& slice_key : it->second) slices.push_back(&slices_.at(slice_key));
  const bool sliced = !slices.empty();
  uses_pods = !sliced && svc.selector && !svc.selector->empty();
  std::vector<const Pod*> pods;
  if (uses_pods) {
    const std::string from = svc.ns + "/";
    for (auto it = pods_.lower_bound(from); it != pods_.end() && it->first.compare(0, from.size(), from) == 0; ++it)
      pods.push_back(&it->second.pod);
  }
  auto intern = [this](const std::string& s) -> const SharedString& { return this->intern(s); };
  PodNames pod_names;

  if (svc.type != "ExternalName" && !svc.headless && !svc.cluster_ips.empty()) {
    std::vector<const ServicePort*> ports;
    for (const ServicePort& sp : svc.ports)
      if (sp.protocol == "TCP") ports.push_back(&sp);
    std::stable_sort(ports.begin(), ports.end(), [](const ServicePort* a, const ServicePort* b) { return a->port < b->port; });
    const FamilyFallback fallback = family_fallback(svc, options_.fallback_default);
    for (const ServicePort* sp : ports) {
      auto c = std::make_shared<ServiceCluster>();
      c->cluster_name = "outbound|" + std::to_string(sp->port) + "||" + view->hostname;
      c->service_name = svc.name;
      c->service_ns = svc.ns;
      c->hostname = view->hostname;
      c->port_name = sp->name;
      c->port = sp->port;
      c->ip_family_policy = svc.ip_family_policy;
      c->ip_families = svc.ip_families;
      c->cluster_ips = svc.cluster_ips;
      // Slices, when a service has any, are the truth (they also cover selector-less services and
      // hand-managed endpoints); selector matching stands in for clusters dumped without them.
      if (sliced) c->endpoints = slice_endpoints(svc, *sp, slices, pod_names, intern);
      else if (uses_pods) c->endpoints = selector_endpoints(svc, *sp, pods, node_zones_, pod_names, intern);
      std::erase_if(c->endpoints, [&](const Endpoint& e) {
        const std::string_view reason = unsafe_reason(e.address.ip, is_cluster_ip(e.address.ip));
        if (reason.empty()) return false;
        view->dropped.push_back({c->cluster_name, e.address, std::string(reason)});
        spdlog::warn("{}: endpoint {} dropped: a {} address is never dialled on a pod's behalf", c->cluster_name,
                     e.address.to_string(), reason);
        return true;
      });
      sort_and_merge(c->endpoints);
      derive_hints(svc, c->endpoints);
      for (const net::Family f : {net::Family::v4, net::Family::v6})
        select_endpoints(c->endpoints, f, svc.internal_traffic_policy, options_.node_name, zone_);
      c->endpoints.shrink_to_fit();
      c->internal_traffic_policy = svc.internal_traffic_policy;
      c->session_affinity = svc.session_affinity;
      c->affinity_timeout_s = svc.affinity_timeout_s;
      c->traffic_distribution = svc.traffic_distribution;
      c->app_protocol = sp->app_protocol;
      c->backends = group_backends(c->endpoints);
      c->family_fallback = fallback;
      view->clusters.push_back(std::move(c));
    }
  } else {
    // What the name resolves to without a ClusterIP: the ready endpoint addresses, from the
    // slices when the Service has any (they also carry selector-less, hand-managed endpoints),
    // else the ready pods its selector matches (a pod being deleted is not ready, as the
    // EndpointSlice controller writes it). With publishNotReadyAddresses every endpoint is
    // answered, ready or not, as CoreDNS does (the controller then marks them all ready).
    auto& out = view->dns_addresses;
    if (sliced) {
      for (const EndpointSlice* slice : slices)
        for (const auto& e : slice->endpoints)
          if (e.ready || svc.publish_not_ready_addresses)
            for (const auto& a : e.addresses)
              if (dns_has_family(svc.ip_families, a.family())) out.push_back(a);
    } else if (uses_pods) {
      for (const Pod* pod : pods) {
        const bool ready = pod->ready && !pod->terminating;
        if ((!ready && !svc.publish_not_ready_addresses) || pod->host_network || !selects(*svc.selector, pod->labels))
          continue;
        for (const auto& a : pod->pod_ips)
          if (dns_has_family(svc.ip_families, a.family())) out.push_back(a);
      }
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
  }
  return view;
}

void SnapshotBuilder::add_view(const ServiceView& view, int sign) {
  for (const net::IpAddress& ip : candidate_ips(view)) count_endpoint_ip(ip, sign);
  for (const auto& [v4, v6] : pod_pairs(view)) {
    add_pair(v4, v6, sign);
    add_pair(v6, v4, sign);
  }
  const std::uint32_t* count = namespaces_.find(view.ns);
  if (sign > 0) namespaces_.set(view.ns, count ? *count + 1 : 1);
  else if (count && *count > 1) namespaces_.set(view.ns, *count - 1);
  else namespaces_.erase(view.ns);
  if (sign > 0) cluster_count_ += view.clusters.size();
  else cluster_count_ -= view.clusters.size();
}

void SnapshotBuilder::recompute_owners(const net::IpAddress& ip) {
  auto it = claims_.find(ip);
  if (it == claims_.end()) {
    owners_.erase(ip);
    return;
  }
  ClusterSnapshot::ServiceViews owners;
  for (const auto& key : it->second)
    if (const auto* view = views_.find(key)) owners.push_back(*view);
  std::sort(owners.begin(), owners.end(), [](const auto& a, const auto& b) {
    return std::tie(a->hostname, a->ns, a->name) < std::tie(b->hostname, b->ns, b->name);
  });
  if (owners.empty()) owners_.erase(ip);
  else owners_.set(ip, std::move(owners));
}

std::shared_ptr<const ClusterSnapshot> SnapshotBuilder::build() {
  last_build_ = {};
  // 1. ClusterIP claims, before any derivation: whether an endpoint address is a ClusterIP is
  //    decided by every Service of this build, changed ones included.
  std::set<net::IpAddress> toggled;
  for (const auto& key : dirty_services_) {
    const auto* old_view = views_.find(key);
    const std::vector<net::IpAddress> none;
    const auto& before = old_view ? (*old_view)->cluster_ips : none;
    auto svc = services_.find(key);
    const auto& after = svc != services_.end() ? svc->second.cluster_ips : none;
    if (before == after) continue;
    for (const net::IpAddress& ip : before) {
      auto it = claims_.find(ip);
      if (it == claims_.end()) continue;
      std::erase(it->second, key);
      if (it->second.empty()) {
        claims_.erase(it);
        toggled.insert(ip);
      }
    }
    for (const net::IpAddress& ip : after) {
      auto& claimants = claims_[ip];
      if (claimants.empty()) toggled.insert(ip);
      if (std::find(claimants.begin(), claimants.end(), key) == claimants.end()) claimants.push_back(key);
    }
  }
  // 2. A ClusterIP that appeared or vanished at an address some endpoint or pod has: those
  //    Services and pods are found by a scan (a real collision is rare; the count keeps the
  //    common case free of it).
  bool collision = false;
  for (const net::IpAddress& ip : toggled) collision = collision || endpoint_ip_refs_.contains(ip);
  if (collision) {
    last_build_.collision_scan = true;
    views_.for_each([&](const std::string& key, const std::shared_ptr<const ServiceView>& view) {
      for (const net::IpAddress& ip : candidate_ips(*view))
        if (toggled.count(ip)) {
          dirty_services_.insert(key);
          break;
        }
    });
    for (auto& [key, entry] : pods_)
      for (const net::IpAddress& ip : entry.pod.pod_ips)
        if ((entry.counted || entry.workload) && toggled.count(ip)) {
          forget_pod(entry);
          dirty_pods_.insert(key);
          break;
        }
  }
  // 3. Pods' own contributions.
  for (const auto& key : dirty_pods_)
    if (auto it = pods_.find(key); it != pods_.end()) apply_pod(it->second);
  dirty_pods_.clear();
  // 4. The touched Services, then the owners of their ClusterIPs.
  std::set<net::IpAddress> owners_touched;
  for (const auto& key : dirty_services_) {
    const auto* found = views_.find(key);
    const auto old_view = found ? *found : nullptr;
    const auto svc = services_.find(key);
    const auto slash = key.find('/');
    if (old_view) {
      add_view(*old_view, -1);
      owners_touched.insert(old_view->cluster_ips.begin(), old_view->cluster_ips.end());
      if (auto users = pod_users_.find(key.substr(0, slash)); users != pod_users_.end()) {
        users->second.erase(key.substr(slash + 1));
        if (users->second.empty()) pod_users_.erase(users);
      }
    }
    if (svc == services_.end()) {
      views_.erase(key);
    } else {
      bool uses_pods = false;
      auto view = derive(svc->second, uses_pods);
      add_view(*view, +1);
      owners_touched.insert(view->cluster_ips.begin(), view->cluster_ips.end());
      if (uses_pods) pod_users_[key.substr(0, slash)].insert(key.substr(slash + 1));
      views_.set(key, std::move(view));
    }
    ++last_build_.services_derived;
  }
  dirty_services_.clear();
  for (const net::IpAddress& ip : owners_touched) recompute_owners(ip);
  // The authorization index follows the policies and this node's pods (labels, addresses).
  if (node_pods_dirty_ || authz_dirty_ || !authz_) rebuild_authz();
  if (node_pods_dirty_) rebuild_node_pods();

  auto snap = std::make_shared<ClusterSnapshot>();
  snap->options_ = options_;
  snap->serial_ = next_serial.fetch_add(1, std::memory_order_relaxed) + 1;
  snap->zone_ = zone_;
  snap->cluster_count_ = cluster_count_;
  snap->services_ = views_;
  snap->cluster_ips_ = owners_;
  snap->other_family_ = other_family_;
  snap->namespaces_ = namespaces_;
  snap->node_pods_ = node_pods_;
  snap->workloads_ = workloads_;
  snap->workload_count_ = workload_count_;
  snap->warnings_ = warnings_;
  snap->authz_ = authz_;
  return snap;
}

}  // namespace dsproxy::snapshot
