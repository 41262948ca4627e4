#include "proxy/router.hpp"

namespace dsproxy::proxy {

std::string_view to_string(Direction d) { return d == Direction::outbound ? "outbound" : "inbound"; }

std::string_view to_string(RejectReason r) {
  switch (r) {
    case RejectReason::none: return "none";
    case RejectReason::no_endpoint_for_family: return "no_ready_endpoint_of_dialled_family";
    case RejectReason::unknown_service_port: return "port_not_in_service";
    case RejectReason::loop: return "destination_is_capture_port";
  }
  return "unknown";
}

namespace {

// Round robin over the ready endpoints of one family, without allocating: count, then walk to
// the k-th. Endpoint lists are short (pods of one Service), so two passes beat building a list.
const config::Endpoint* pick_endpoint(const config::ServiceCluster& cluster, net::Family family) {
  std::uint32_t candidates = 0;
  for (const auto& ep : cluster.endpoints)
    if (ep.ready && ep.address.ip.family() == family) ++candidates;
  if (candidates == 0) return nullptr;
  std::uint32_t k = cluster.next_pick.fetch_add(1, std::memory_order_relaxed) % candidates;
  for (const auto& ep : cluster.endpoints) {
    if (!ep.ready || ep.address.ip.family() != family) continue;
    if (k-- == 0) return &ep;
  }
  return nullptr;
}

}  // namespace

RouteDecision route(const config::ClusterSnapshot& snapshot, Direction direction,
                    const net::SocketAddress& destination, const CapturePorts& ports) {
  RouteDecision d;
  // A connection made straight to a capture port (not redirected to it) has the listener
  // itself as its original destination; passing it through would dial ourselves forever.
  if (destination.port == ports.outbound || destination.port == ports.inbound) {
    d.reason = RejectReason::loop;
    return d;
  }
  if (direction == Direction::outbound) {
    if (const auto* cluster = snapshot.find_cluster(destination)) {
      d.cluster = cluster;
      // Matched family, as kube-proxy does: the client dialled an IPv6 ClusterIP, so it gets an
      // IPv6 endpoint, and its own address can be kept as the upstream source.
      if (const auto* ep = pick_endpoint(*cluster, destination.ip.family())) {
        d.kind = RouteKind::service;
        d.upstream = ep->address;
      } else {
        d.reason = RejectReason::no_endpoint_for_family;
      }
      return d;
    }
    if (snapshot.is_cluster_ip(destination.ip)) {
      d.reason = RejectReason::unknown_service_port;
      return d;
    }
  }
  d.kind = RouteKind::passthrough;
  d.upstream = destination;
  return d;
}

}  // namespace dsproxy::proxy
