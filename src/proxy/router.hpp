#pragma once
// Where a captured connection goes: the pure routing decision, separate from any socket so it
// can be tested exhaustively. Which endpoint of a Service is the EndpointPicker's job.

#include <cstdint>
#include <optional>
#include <string_view>

#include "snapshot/cluster_snapshot.hpp"
#include "net/ip_address.hpp"
#include "proxy/local_address_check.hpp"

namespace dsproxy::proxy {

enum class Direction : std::uint8_t { outbound, inbound };
std::string_view to_string(Direction d);

enum class RouteKind : std::uint8_t { service, passthrough, reject };

enum class RejectReason : std::uint8_t {
  none,
  no_endpoint_for_family,  // the Service has no ready endpoint of the dialled ClusterIP's family
  unknown_service_port,    // a ClusterIP, but not one of the Service's ports
  loop,                    // the destination is our own listener: dialling it would loop
  forbidden_destination,   // loopback, unspecified, multicast, ...: never dialled on a pod's behalf
};
std::string_view to_string(RejectReason r);

struct RouteDecision {
  RouteKind kind = RouteKind::reject;
  RejectReason reason = RejectReason::none;
  net::SocketAddress upstream;                      // passthrough: exactly where the client dialled
  const snapshot::ServiceCluster* cluster = nullptr;  // service (and no_endpoint rejects): pick from it
};

struct CapturePorts {
  std::uint16_t outbound = 15001;
  std::uint16_t inbound = 15006;
};

// `destination` is the original destination of the captured connection (already canonical:
// v4-mapped addresses unmapped). The snapshot must outlive the use of `decision.cluster`.
// `local` is asked only about a destination that would be passed through on a capture port.
// `captured`: false for an explicitly addressed listener (--forward, non-transparent mode), whose
// target the operator chose; only captured connections are held to the pod's own reach.
// `client`: the client's (canonical) address, when known. A captured connection is only ever
// connected from the client's own addresses, so:
//  * one whose destination is of the other family than the client is refused
//    (forbidden_destination): a pod's own stack never sends IPv6 to a v4-mapped address, so such
//    a destination was hand-crafted (a pod with CAP_NET_RAW), and once unmapped to IPv4 its
//    upstream could not be bound to the IPv6 client's address: it would leave from the node's
//    own IPv4 address, as the node;
//  * a Service that could serve the dialled family only across families is refused
//    (no_endpoint_for_family) to a client without an address of the other family: from the
//    node's address it would reach an endpoint the client cannot reach itself, past that
//    endpoint's NetworkPolicies, seen as the node.
RouteDecision route(const snapshot::ClusterSnapshot& snapshot, Direction direction,
                    const net::SocketAddress& destination, const CapturePorts& ports, LocalAddressCheck& local,
                    bool captured = true, std::optional<net::IpAddress> client = std::nullopt);

}  // namespace dsproxy::proxy
