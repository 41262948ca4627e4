#include "proxy/router.hpp"

namespace dsproxy::proxy {

std::string_view to_string(Direction d) { return d == Direction::outbound ? "outbound" : "inbound"; }

std::string_view to_string(RejectReason r) {
  switch (r) {
    case RejectReason::none: return "none";
    case RejectReason::no_endpoint_for_family: return "no_ready_endpoint_of_dialled_family";
    case RejectReason::unknown_service_port: return "port_not_in_service";
    case RejectReason::loop: return "destination_is_our_own_listener";
    case RejectReason::forbidden_destination: return "forbidden_destination";
  }
  return "unknown";
}

RouteDecision route(const snapshot::ClusterSnapshot& snapshot, Direction direction,
                    const net::SocketAddress& destination, const CapturePorts& ports, LocalAddressCheck& local,
                    bool captured, std::optional<net::IpAddress> client) {
  RouteDecision d;
  const bool held_to_client = captured && client.has_value();
  if (held_to_client && client->family() != destination.ip.family()) {
    d.reason = RejectReason::forbidden_destination;
    return d;
  }
  if (direction == Direction::outbound) {
    // A ClusterIP is never dialled itself, only its endpoints: whatever its port, it cannot loop.
    if (const auto* cluster = snapshot.find_cluster(destination)) {
      d.cluster = cluster;
      // Matched family first (kube-proxy parity: an IPv6 ClusterIP gets an IPv6 endpoint and the
      // client's own address as source); the other family only where the Service allows it, and
      // only for a client with an address of its own in that family (see the header).
      // The common case (a ready endpoint of the dialled family) never looks the client up.
      const net::Family dialled = destination.ip.family();
      const bool servable = cluster->serves(dialled) &&
                            (!held_to_client || cluster->has_ready(dialled) ||
                             snapshot.other_family_address(*client).has_value());
      if (servable) d.kind = RouteKind::service;
      else d.reason = RejectReason::no_endpoint_for_family;
      return d;
    }
    if (snapshot.is_cluster_ip(destination.ip)) {
      d.reason = RejectReason::unknown_service_port;
      return d;
    }
  }
  // Passing through dials the destination itself. A connection made straight to a capture port
  // (not redirected to it) has our listener as its original destination: a local address, and
  // dialling it would reach the listener again, forever. The same port on any other address (a
  // pod's app listening on 15006) is somebody else's and passes. Only a capture port is worth
  // the question, which keeps the lookup off the common path.
  if ((destination.port == ports.outbound || destination.port == ports.inbound) && local.is_local(destination.ip)) {
    d.reason = RejectReason::loop;
    return d;
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
