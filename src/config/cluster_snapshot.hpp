#pragma once
// The immutable routing view derived from ClusterObjects for one node.
//
// Built on the control path (config load or reload), then shared read-only by every worker
// thread through a std::shared_ptr<const ClusterSnapshot>. Nothing in it changes after build(),
// except the round-robin cursors, which are relaxed atomics: a lost increment under a race only
// skews one pick and needs no lock.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/k8s_objects.hpp"
#include "net/ip_address.hpp"

namespace dsproxy::config {

struct Endpoint {
  net::SocketAddress address;  // pod (or slice) address with the translated target port
  bool ready = false;
  std::string pod;  // "ns/name" when known, for logs
};

// One Service port: the unit Envoy/Istio call a cluster ("outbound|9000||tcp-echo.ns.svc.cluster.local").
struct ServiceCluster {
  std::string cluster_name;
  std::string service_name;
  std::string service_ns;
  std::string hostname;  // tcp-echo.dual-stack.svc.cluster.local
  std::string port_name;
  std::uint16_t port = 0;
  IpFamilyPolicy ip_family_policy = IpFamilyPolicy::SingleStack;
  std::vector<net::Family> ip_families;
  std::vector<net::IpAddress> cluster_ips;  // primary first
  // Only the families in ip_families are present (as the EndpointSlice controller does).
  std::vector<Endpoint> endpoints;
  mutable std::atomic<std::uint32_t> next_pick{0};

  ServiceCluster() = default;
  ServiceCluster(const ServiceCluster& o);  // copies the cursor's value
};

struct NodePod {
  std::string name;
  std::string ns;
  std::vector<net::IpAddress> ips;
};

class ClusterSnapshot {
 public:
  struct Options {
    std::string node_name;
    std::string cluster_domain = "cluster.local";
  };

  static std::shared_ptr<const ClusterSnapshot> build(ClusterObjects objects, const Options& options);

  // The ServiceCluster whose ClusterIP:port is `vip`, or nullptr.
  const ServiceCluster* find_cluster(const net::SocketAddress& vip) const;
  // True when `ip` is any Service's ClusterIP (a VIP hit on an unknown port is a reset, not passthrough).
  bool is_cluster_ip(const net::IpAddress& ip) const;

  const std::vector<ServiceCluster>& clusters() const { return clusters_; }
  const std::vector<NodePod>& node_pods() const { return node_pods_; }
  const ClusterObjects& objects() const { return objects_; }
  const Options& options() const { return options_; }

 private:
  ClusterObjects objects_;
  Options options_;
  std::vector<ServiceCluster> clusters_;  // sorted by hostname, then port
  std::vector<NodePod> node_pods_;        // this node's pods, hostNetwork excluded
  std::unordered_map<net::SocketAddress, std::size_t, net::SocketAddressHash> by_vip_;
  std::unordered_map<net::IpAddress, bool, net::IpAddressHash> cluster_ips_;
};

}  // namespace dsproxy::config
