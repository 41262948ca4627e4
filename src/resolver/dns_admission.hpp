#pragma once
// Who the DNS proxy answers (issue 14, finding 3: no open resolver).
//
// The listener on :15053 is reachable on every node address, by anyone who can route to the
// node. Only two kinds of query are answered:
//  - captured: the capture rules TPROXY'd it here, so its original destination port is 53, and
//    it comes from one of this node's pods (the rules only match those; checking again keeps a
//    stale rule or a spoofed packet from turning dsproxy into someone else's resolver);
//  - the node itself: sent straight to the DNS port, from a loopback address to a loopback
//    address. The kernel drops loopback sources and destinations arriving on any other
//    interface (unless route_localnet is set, and even then the answer goes back to loopback), so
//    only processes on the node get an answer this way.
// Everything else is dropped (UDP: no answer, no reflection) or reset (TCP), and counted.
//
// Pure logic: the I/O code hands in the addresses it read (IP_RECVORIGDSTADDR, getsockname).

#include <cstdint>
#include <optional>
#include <string_view>
#include <unordered_set>

#include "snapshot/cluster_snapshot.hpp"
#include "net/ip_address.hpp"

namespace dsproxy::resolver {

// The port the capture rules match; a query whose original destination port is this one was
// captured, any other was sent straight to the listener.
inline constexpr std::uint16_t kCapturedDnsPort = 53;

enum class Admission {
  answer,        // captured from a node pod, or the node itself on loopback
  direct,        // sent straight to the listener from off the node's loopback
  not_node_pod,  // captured, but the source is not one of this node's pods
};
std::string_view to_string(Admission a);

// This node's pod addresses (hostNetwork pods excluded: their address is the node's, and their
// DNS is not captured).
class NodePodAddresses {
 public:
  NodePodAddresses() = default;
  explicit NodePodAddresses(const snapshot::ClusterSnapshot& snapshot);
  bool contains(const net::IpAddress& ip) const { return ips_.contains(ip); }
  std::size_t size() const { return ips_.size(); }

 private:
  std::unordered_set<net::IpAddress, net::IpAddressHash> ips_;
};

bool is_loopback(const net::IpAddress& ip);

// `destination`: the query's original destination (UDP: IP_ORIGDSTADDR; TCP: the accepted
// socket's local address). Unknown (nullopt) counts as direct.
Admission admit_query(const net::SocketAddress& client, const std::optional<net::SocketAddress>& destination,
                      const NodePodAddresses& pods);

}  // namespace dsproxy::resolver
