#pragma once
// The Kubernetes objects dsproxy understands, decoded from YAML/JSON, before any derivation.
// Only the fields dsproxy uses are kept; everything else in the input is ignored.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "net/cidr.hpp"
#include "net/ip_address.hpp"

namespace dsproxy::config {

using Labels = std::map<std::string, std::string>;

enum class IpFamilyPolicy { SingleStack, PreferDualStack, RequireDualStack };
std::string_view to_string(IpFamilyPolicy p);

// spec.internalTrafficPolicy: Local keeps ClusterIP traffic on endpoints of this node.
enum class TrafficPolicy { Cluster, Local };
std::string_view to_string(TrafficPolicy p);

// spec.sessionAffinity.
enum class SessionAffinity { None, ClientIP };
std::string_view to_string(SessionAffinity a);

struct ServicePort {
  std::string name;  // may be empty for a single unnamed port
  std::uint16_t port = 0;
  // A number, or the name of a container port resolved per pod. Absent in the input = `port`.
  std::variant<std::uint16_t, std::string> target_port = std::uint16_t{0};
  std::string protocol = "TCP";
  std::string app_protocol{};  // spec.ports[].appProtocol; informational for an L4 proxy
  // Whole-object equality: the snapshot builder skips an update that changes nothing.
  friend bool operator==(const ServicePort&, const ServicePort&) = default;
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
  TrafficPolicy internal_traffic_policy = TrafficPolicy::Cluster;
  SessionAffinity session_affinity = SessionAffinity::None;
  std::uint32_t affinity_timeout_s = 10800;  // sessionAffinityConfig.clientIP.timeoutSeconds (1..86400)
  std::string traffic_distribution;          // spec.trafficDistribution ("" = none)
  bool publish_not_ready_addresses = false;  // spec.publishNotReadyAddresses
  friend bool operator==(const Service&, const Service&) = default;
};

struct ContainerPort {
  std::string name;
  std::uint16_t port = 0;
  std::string protocol = "TCP";
  friend bool operator==(const ContainerPort&, const ContainerPort&) = default;
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
  bool terminating = false;             // metadata.deletionTimestamp is set
  std::vector<ContainerPort> container_ports;  // spec.containers[].ports[]
  friend bool operator==(const Pod&, const Pod&) = default;
};

enum class AddressType { IPv4, IPv6, FQDN };
std::string_view to_string(AddressType t);  // as EndpointSlice spells addressType

struct EndpointSlicePort {
  std::optional<std::string> name;  // matches ServicePort::name ("" and absent are the same)
  std::optional<std::uint16_t> port;
  std::string protocol = "TCP";
  friend bool operator==(const EndpointSlicePort&, const EndpointSlicePort&) = default;
};

struct SliceEndpoint {
  std::vector<net::IpAddress> addresses;
  // discovery.k8s.io/v1 conditions: absent ready = true, absent serving = ready, absent
  // terminating = false.
  bool ready = true;
  std::string node_name;
  std::string target_pod;  // targetRef.name when targetRef.kind == Pod
  std::vector<std::string> hostnames{};  // addresses of an addressType FQDN slice (then `addresses` is empty)
  bool serving = true;
  bool terminating = false;
  std::string zone{};                   // endpoints[].zone
  std::vector<std::string> zone_hints{};  // endpoints[].hints.forZones[].name
  friend bool operator==(const SliceEndpoint&, const SliceEndpoint&) = default;
};

struct EndpointSlice {
  std::string name;
  std::string ns;
  std::string service_name;  // label kubernetes.io/service-name
  AddressType address_type = AddressType::IPv4;
  std::vector<SliceEndpoint> endpoints;
  std::vector<EndpointSlicePort> ports;
  friend bool operator==(const EndpointSlice&, const EndpointSlice&) = default;
};

// A v1 Node: only its name and labels (topology.kubernetes.io/zone gives this node's zone).
struct Node {
  std::string name;
  Labels labels;
  friend bool operator==(const Node&, const Node&) = default;
};

// A v1 Namespace: its name and labels (istio.io/dataplane-mode: ambient puts its pods in the mesh).
struct Namespace {
  std::string name;
  Labels labels;
  friend bool operator==(const Namespace&, const Namespace&) = default;
};

// Istio ambient's opt-in label, on a pod or its namespace: "ambient" puts the pod in the mesh
// (its traffic between nodes goes through HBONE); "none" on a pod keeps it out whatever its
// namespace says.
inline constexpr std::string_view kDataplaneModeLabel = "istio.io/dataplane-mode";

// ---- security.istio.io/v1 (and v1beta1) AuthorizationPolicy ----
// What ztunnel enforces of it: the L4 fields, kept typed; of the L7 fields (HTTP methods, paths,
// hosts, request principals, remote IP blocks, `when` keys other than the five L4 ones) only
// their names, because a rule that uses one must fail safe (src/authz/policy.hpp says how).

enum class AuthzAction { allow, deny, audit, custom };
std::string_view to_string(AuthzAction a);  // "ALLOW", "DENY", "AUDIT", "CUSTOM"

struct AuthzSource {  // rules[].from[].source
  std::vector<std::string> principals, not_principals;
  std::vector<std::string> namespaces, not_namespaces;
  std::vector<std::string> service_accounts, not_service_accounts;  // "ns/sa" or "sa" (the policy's namespace)
  std::vector<net::Cidr> ip_blocks, not_ip_blocks;
  std::vector<std::string> l7;  // names of the L7 fields set: "requestPrincipals", "remoteIpBlocks", ...
  friend bool operator==(const AuthzSource&, const AuthzSource&) = default;
};

struct AuthzOperation {  // rules[].to[].operation
  std::vector<std::uint16_t> ports, not_ports;
  std::vector<std::string> l7;  // "hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"
  friend bool operator==(const AuthzOperation&, const AuthzOperation&) = default;
};

struct AuthzCondition {  // rules[].when[]
  std::string key;
  // Typed by key: source.ip / destination.ip in the CIDR lists, destination.port in the port
  // lists, source.namespace / source.principal in the string lists. Other keys (request.*,
  // experimental.*, ...) are L7: values kept as text, never matched.
  std::vector<std::string> values, not_values;
  std::vector<net::Cidr> cidr_values, cidr_not_values;
  std::vector<std::uint16_t> port_values, port_not_values;
  friend bool operator==(const AuthzCondition&, const AuthzCondition&) = default;
};

struct AuthzRule {
  std::vector<AuthzSource> from;
  std::vector<AuthzOperation> to;
  std::vector<AuthzCondition> when;
  friend bool operator==(const AuthzRule&, const AuthzRule&) = default;
};

struct AuthorizationPolicy {
  std::string name;
  std::string ns;
  std::string api_version;  // security.istio.io/v1 or /v1beta1 (shown, not otherwise used)
  // spec.selector.matchLabels; nullopt (or empty): every workload of the namespace, of the mesh
  // for the root namespace.
  std::optional<Labels> selector;
  // spec.targetRef / targetRefs: the policy is for a waypoint or gateway, never for ztunnel.
  bool has_target_refs = false;
  AuthzAction action = AuthzAction::allow;
  std::vector<AuthzRule> rules;
  bool dry_run = false;  // annotation istio.io/dry-run: "true"
  friend bool operator==(const AuthorizationPolicy&, const AuthorizationPolicy&) = default;
};

struct ClusterObjects {
  std::vector<Service> services;
  std::vector<Pod> pods;
  std::vector<EndpointSlice> endpoint_slices;
  std::vector<Node> nodes;
  std::vector<Namespace> namespaces;

  std::vector<AuthorizationPolicy> authorization_policies;
  // addressType FQDN slices, kept apart: nothing routes to a hostname, but the resolver turns
  // those of a Service annotated dsproxy.io/resolve: "true" into IPv4/IPv6 slices.
  std::vector<EndpointSlice> fqdn_slices;
  std::vector<std::string> warnings;  // ignored kinds are silent; FQDN slices etc. warn here
};

}  // namespace dsproxy::config
