#include "proxy/router.hpp"

namespace dsproxy::proxy {

std::string_view to_string(Direction d) { return d == Direction::outbound ? "outbound" : "inbound"; }

std::string_view to_string(RejectReason r) {
  switch (r) {
    case RejectReason::none: return "none";
    case RejectReason::no_endpoint_for_family: return "no_ready_endpoint_of_dialled_family";
    case RejectReason::unknown_service_port: return "port_not_in_service";
    case RejectReason::loop: return "destination_is_capture_port";
    case RejectReason::forbidden_destination: return "forbidden_destination";
  }
  return "unknown";
}

RouteDecision route(const config::ClusterSnapshot& snapshot, Direction direction,
                    const net::SocketAddress& destination, const CapturePorts& ports, bool captured) {
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
      // Matched family first (kube-proxy parity: an IPv6 ClusterIP gets an IPv6 endpoint and the
      // client's own address as source); the other family only where the Service allows it.
      if (cluster->serves(destination.ip.family())) d.kind = RouteKind::service;
      else d.reason = RejectReason::no_endpoint_for_family;
      return d;
    }
    if (snapshot.is_cluster_ip(destination.ip)) {
      d.reason = RejectReason::unknown_service_port;
      return d;
    }
  }
  // Passthrough dials exactly what the pod dialled, from the pod's own address: the pod reaches
  // nothing it could not reach itself. A pod's packet never arrives with a loopback, unspecified
  // or multicast destination (the kernel drops such martians before capture), so one that does is
  // a local process talking to a listener directly: refuse it rather than dial the node itself.
  // Link-local stays reachable (a cloud metadata server at 169.254.169.254 is the pod's own reach).
  if (const auto scope = destination.ip.scope();
      captured && scope != net::AddressScope::global && scope != net::AddressScope::link_local) {
    d.reason = RejectReason::forbidden_destination;
    return d;
  }
  d.kind = RouteKind::passthrough;
  d.upstream = destination;
  return d;
}

}  // namespace dsproxy::proxy
