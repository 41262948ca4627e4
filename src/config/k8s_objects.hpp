#pragma once
// The Kubernetes objects dsproxy understands, decoded from YAML/JSON, before any derivation.
// Only the fields dsproxy uses are kept; everything else in the input is ignored.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "net/ip_address.hpp"

namespace dsproxy::config {

using Labels = std::map<std::string, std::string>;

enum class IpFamilyPolicy { SingleStack, PreferDualStack, RequireDualStack };
std::string_view to_string(IpFamilyPolicy p);

struct ServicePort {
  std::string name;  // may be empty for a single unnamed port
  std::uint16_t port = 0;
  // A number, or the name of a container port resolved per pod. Absent in the input = `port`.
  std::variant<std::uint16_t, std::string> target_port = std::uint16_t{0};
  std::string protocol = "TCP";
};

struct Service {
  std::string name;
  std::string ns;
  Labels labels;
  Labels annotations;
  std::optional<Labels> selector;  // nullopt: no selector (endpoints come from slices only)
  std::string type = "ClusterIP";  // ClusterIP, NodePort, LoadBalancer, ExternalName
  bool headless = false;           // clusterIP: None
  std::vector<net::IpAddress> cluster_ips;  // spec.clusterIPs, else spec.clusterIP; primary first
  std::vector<net::Family> ip_families;     // spec.ipFamilies; if absent, the families of cluster_ips
  IpFamilyPolicy ip_family_policy = IpFamilyPolicy::SingleStack;
  std::vector<ServicePort> ports;
  std::string external_name;
};

struct ContainerPort {
  std::string name;
  std::uint16_t port = 0;
  std::string protocol = "TCP";
};

struct Pod {
  std::string name;
  std::string ns;
  Labels labels;
  std::string node_name;
  std::string service_account = "default";
  bool host_network = false;
  std::vector<net::IpAddress> pod_ips;  // status.podIPs[].ip, else status.podIP
  bool ready = false;                   // status.conditions[type=Ready].status == "True"
  std::vector<ContainerPort> container_ports;  // spec.containers[].ports[]
};

enum class AddressType { IPv4, IPv6, FQDN };
std::string_view to_string(AddressType t);  // as EndpointSlice spells addressType

struct EndpointSlicePort {
  std::optional<std::string> name;  // matches ServicePort::name ("" and absent are the same)
  std::optional<std::uint16_t> port;
  std::string protocol = "TCP";
};

struct SliceEndpoint {
  std::vector<net::IpAddress> addresses;
  bool ready = true;  // conditions.ready; absent means ready (Kubernetes API semantics)
  std::string node_name;
  std::string target_pod;  // targetRef.name when targetRef.kind == Pod
  std::vector<std::string> hostnames;  // addresses of an addressType FQDN slice (then `addresses` is empty)
};

struct EndpointSlice {
  std::string name;
  std::string ns;
  std::string service_name;  // label kubernetes.io/service-name
  AddressType address_type = AddressType::IPv4;
  std::vector<SliceEndpoint> endpoints;
  std::vector<EndpointSlicePort> ports;
};

struct ClusterObjects {
  std::vector<Service> services;
  std::vector<Pod> pods;
  std::vector<EndpointSlice> endpoint_slices;
  // addressType FQDN slices, kept apart: nothing routes to a hostname, but the resolver turns
  // those of a Service annotated dsproxy.io/resolve: "true" into IPv4/IPv6 slices.
  std::vector<EndpointSlice> fqdn_slices;
  std::vector<std::string> warnings;  // ignored kinds are silent; FQDN slices etc. warn here
};

}  // namespace dsproxy::config
