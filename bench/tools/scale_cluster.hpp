#pragma once
// A synthetic dual-stack cluster for the scale benchmark, and the EndpointSlice events it is
// exercised with. Kept apart from the tool's main() so that other drivers reuse it: the
// coordinator's API-watch variant feeds the same events through the fake API server instead of
// straight into a SnapshotBuilder (see feed_slice_events: it takes how to apply an event and how
// to tell that its snapshot is live).
//
// Shape: `services` Services in `namespaces` namespaces, each RequireDualStack with an IPv4 and an
// IPv6 ClusterIP and one TCP port; `endpoints` endpoint addresses in total, half IPv4 half IPv6,
// i.e. endpoints / 2 dual-stack pods spread evenly over the Services; per Service one IPv4 and one
// IPv6 EndpointSlice whose endpoints name their pod (targetRef) and node. With
// dual_stack_percent < 100 the rest of the Services are IPv4-only (one ClusterIP, one slice, and
// their pods' IPv6 addresses are not listed), as in the 20,000-Service file. Pods are spread over
// `nodes` nodes; Pod objects are made only for the pods of `node` (what an API source watching
// spec.nodeName=<node> sees), unless `all_pods`.

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "config/k8s_objects.hpp"
#include "net/ip_address.hpp"

namespace dsproxy::bench {

struct ClusterShape {
  int services = 10'000;
  int endpoints = 100'000;  // addresses, both families together
  int namespaces = 100;
  int nodes = 100;
  std::string node = "node-0";
  bool all_pods = false;
  int dual_stack_percent = 100;  // the others are IPv4-only: one ClusterIP, one slice
};

inline net::IpAddress v4_of(std::uint32_t n) {
  return net::IpAddress::v4({10, static_cast<std::uint8_t>(n >> 16), static_cast<std::uint8_t>(n >> 8),
                             static_cast<std::uint8_t>(n)});
}
inline net::IpAddress v6_of(std::uint16_t prefix, std::uint32_t n) {
  std::array<std::uint8_t, 16> b{0xfd, 0x00, static_cast<std::uint8_t>(prefix >> 8), static_cast<std::uint8_t>(prefix)};
  b[12] = static_cast<std::uint8_t>(n >> 24);
  b[13] = static_cast<std::uint8_t>(n >> 16);
  b[14] = static_cast<std::uint8_t>(n >> 8);
  b[15] = static_cast<std::uint8_t>(n);
  return net::IpAddress::v6(b);
}

inline config::ClusterObjects make_cluster(const ClusterShape& shape) {
  config::ClusterObjects o;
  const int pods = shape.endpoints / 2;
  o.services.reserve(static_cast<std::size_t>(shape.services));
  o.endpoint_slices.reserve(static_cast<std::size_t>(shape.services) * 2);
  for (int n = 0; n < shape.nodes; ++n) {
    config::Node node;
    node.name = "node-" + std::to_string(n);
    node.labels["topology.kubernetes.io/zone"] = "zone-" + std::to_string(n % 3);
    o.nodes.push_back(std::move(node));
  }
  int pod = 0;
  for (int s = 0; s < shape.services; ++s) {
    config::Service svc;
    svc.ns = "ns-" + std::to_string(s % shape.namespaces);
    svc.name = "svc-" + std::to_string(s);
    svc.labels = {{"app", svc.name}};
    svc.selector = config::Labels{{"app", svc.name}};
    const bool dual = s % 100 < shape.dual_stack_percent;
    svc.cluster_ips = {net::IpAddress::v4({172, static_cast<std::uint8_t>(16 + (s >> 16)), static_cast<std::uint8_t>(s >> 8),
                                           static_cast<std::uint8_t>(s)})};
    svc.ip_families = {net::Family::v4};
    if (dual) {
      svc.cluster_ips.push_back(v6_of(0x96, static_cast<std::uint32_t>(s)));
      svc.ip_families.push_back(net::Family::v6);
      svc.ip_family_policy = config::IpFamilyPolicy::RequireDualStack;
    }
    svc.ports.push_back({"http", 80, std::uint16_t{8080}, "TCP"});
    // This Service's share of the pods (the remainder goes to the first ones).
    const int share = pods / shape.services + (s < pods % shape.services ? 1 : 0);
    config::EndpointSlice v4, v6;
    v4.ns = v6.ns = svc.ns;
    v4.name = svc.name + "-v4";
    v6.name = svc.name + "-v6";
    v4.service_name = v6.service_name = svc.name;
    v4.address_type = config::AddressType::IPv4;
    v6.address_type = config::AddressType::IPv6;
    v4.ports = v6.ports = {{std::string("http"), std::uint16_t{8080}, "TCP"}};
    for (int i = 0; i < share; ++i, ++pod) {
      const std::string pod_name = svc.name + "-" + std::to_string(i) + "-7d4b9c8f6d";
      const std::string node = "node-" + std::to_string(pod % shape.nodes);
      const std::string zone = "zone-" + std::to_string((pod % shape.nodes) % 3);
      const auto a4 = v4_of(static_cast<std::uint32_t>(pod) + 1);
      const auto a6 = v6_of(0x244, static_cast<std::uint32_t>(pod) + 1);
      config::SliceEndpoint e4{.addresses = {a4}, .ready = true, .node_name = node, .target_pod = pod_name};
      e4.zone = zone;
      config::SliceEndpoint e6 = e4;
      e6.addresses = {a6};
      v4.endpoints.push_back(std::move(e4));
      v6.endpoints.push_back(std::move(e6));
      if (!dual) v6.endpoints.pop_back();
      if (shape.all_pods || node == shape.node) {
        config::Pod p;
        p.ns = svc.ns;
        p.name = pod_name;
        p.labels = {{"app", svc.name}};
        p.node_name = node;
        p.pod_ips = {a4, a6};
        if (!dual) p.pod_ips.pop_back();
        p.ready = true;
        p.container_ports.push_back({"http", 8080, "TCP"});
        o.pods.push_back(std::move(p));
      }
    }
    o.services.push_back(std::move(svc));
    o.endpoint_slices.push_back(std::move(v4));
    if (dual) o.endpoint_slices.push_back(std::move(v6));
  }
  return o;
}

// The EndpointSlice changes a live cluster makes all the time, drawn at random: an endpoint's
// ready condition flips, an endpoint is added (a pod scheduled), or one is removed (a pod gone).
// Holds its own copy of the slices so that each event is the next version of a real slice.
class SliceEvents {
 public:
  SliceEvents(const config::ClusterObjects& objects, std::uint32_t seed) : slices_(objects.endpoint_slices), rng_(seed) {}

  config::EndpointSlice next() {
    config::EndpointSlice& s = slices_[rng_() % slices_.size()];
    const int what = static_cast<int>(rng_() % 3);
    if (what == 0 || s.endpoints.empty()) {
      if (!s.endpoints.empty()) {
        auto& e = s.endpoints[rng_() % s.endpoints.size()];
        e.ready = !e.ready;
        e.serving = e.ready;
      }
    } else if (what == 1) {
      config::SliceEndpoint e = s.endpoints.front();
      const std::uint32_t n = 0x800000u + added_++;  // addresses no generated pod has
      e.addresses = {s.address_type == config::AddressType::IPv4 ? v4_of(n) : v6_of(0x245, n)};
      e.target_pod = "added-" + std::to_string(n);
      s.endpoints.push_back(std::move(e));
    } else {
      s.endpoints.erase(s.endpoints.begin() + static_cast<long>(rng_() % s.endpoints.size()));
    }
    return s;
  }

 private:
  std::vector<config::EndpointSlice> slices_;
  std::mt19937 rng_;
  std::uint32_t added_ = 0;
};

// Feeds `events` slice changes one at a time and measures, for each, the time from handing the
// change over (`apply`) until `live` says its snapshot is the one the data path reads. With a
// SnapshotBuilder: apply = builder.upsert(slice); live = build(), publish, sync the state index.
// With the API watch: apply = write the slice to the fake API server; live = wait for the
// daemon's next published generation.
inline std::vector<std::chrono::nanoseconds> feed_slice_events(
    SliceEvents& source, int events, const std::function<void(config::EndpointSlice)>& apply,
    const std::function<void()>& live) {
  std::vector<std::chrono::nanoseconds> out;
  out.reserve(static_cast<std::size_t>(events));
  for (int i = 0; i < events; ++i) {
    config::EndpointSlice change = source.next();
    const auto start = std::chrono::steady_clock::now();
    apply(std::move(change));
    live();
    out.push_back(std::chrono::steady_clock::now() - start);
  }
  return out;
}

}  // namespace dsproxy::bench
