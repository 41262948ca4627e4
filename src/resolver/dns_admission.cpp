#include "resolver/dns_admission.hpp"

namespace dsproxy::resolver {

std::string_view to_string(Admission a) {
  switch (a) {
    case Admission::answer:
      return "answer";
    case Admission::direct:
      return "direct";
    case Admission::not_node_pod:
      return "not a node pod";
  }
  return "?";
}

NodePodAddresses::NodePodAddresses(const snapshot::ClusterSnapshot& snapshot) {
  for (const auto& pod : snapshot.node_pods()) ips_.insert(pod.ips.begin(), pod.ips.end());
}

bool is_loopback(const net::IpAddress& ip) { return ip.scope() == net::AddressScope::loopback; }

Admission admit_query(const net::SocketAddress& client, const std::optional<net::SocketAddress>& destination,
                      const NodePodAddresses& pods) {
  if (!destination) return Admission::direct;
  if (destination->port == kCapturedDnsPort)
    return pods.contains(client.ip) ? Admission::answer : Admission::not_node_pod;
  if (is_loopback(client.ip) && is_loopback(destination->ip)) return Admission::answer;
  return Admission::direct;
}

}  // namespace dsproxy::resolver
