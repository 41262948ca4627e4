#include <gtest/gtest.h>

#include <algorithm>

#include <map>
#include <string>
#include <vector>

#include "snapshot/cluster_snapshot.hpp"
#include "config/k8s_decoder.hpp"

namespace dsproxy::snapshot {
using namespace config;
namespace cluster_snapshot_test {  // named: unity builds put several test files in one translation unit

net::IpAddress ip(const char* s) { return *net::IpAddress::parse(s); }
net::SocketAddress sa(const char* s, std::uint16_t port) { return {ip(s), port}; }

std::vector<std::string> addresses(const ServiceCluster& c) {
  std::vector<std::string> out;
  for (const Endpoint& e : c.endpoints) out.push_back(e.address.to_string() + (e.ready ? "" : " (not ready)"));
  return out;
}

std::shared_ptr<const ClusterSnapshot> experiment() {
  static const ClusterObjects objects = load_objects_file(DSPROXY_SOURCE_DIR "/config/tcp-echo-experiment.yaml");
  return ClusterSnapshot::build(objects, {.node_name = "kind-worker"});
}

const ServiceCluster& cluster(const ClusterSnapshot& s, const char* vip, std::uint16_t port) {
  const ServiceCluster* c = s.find_cluster(sa(vip, port));
  if (c == nullptr) throw std::runtime_error(std::string("no cluster for ") + vip);
  return *c;
}

// ---------------------------------------------------------------- the experiment file

TEST(ExperimentFile, LoadsWithTheAgreedObjects) {
  const ClusterObjects o = load_objects_file(DSPROXY_SOURCE_DIR "/config/tcp-echo-experiment.yaml");
  EXPECT_TRUE(o.warnings.empty());
  EXPECT_EQ(o.services.size(), 4u);
  EXPECT_EQ(o.pods.size(), 5u);
  EXPECT_TRUE(o.endpoint_slices.empty());
}

TEST(ExperimentFile, ClustersAreNamedAndSortedLikeIstio) {
  auto s = experiment();
  std::vector<std::string> names;
  for (const ServiceCluster& c : s->clusters()) names.push_back(c.cluster_name);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "outbound|80||sleep.default.svc.cluster.local",
                       "outbound|9000||tcp-echo.dual-stack.svc.cluster.local",
                       "outbound|9001||tcp-echo.dual-stack.svc.cluster.local",
                       "outbound|9000||tcp-echo.ipv4.svc.cluster.local",
                       "outbound|9001||tcp-echo.ipv4.svc.cluster.local",
                       "outbound|9000||tcp-echo.ipv6.svc.cluster.local",
                       "outbound|9001||tcp-echo.ipv6.svc.cluster.local",
                   }));
  const ServiceCluster& dual = s->clusters()[1];
  EXPECT_EQ(s->cluster_count(), 7u);
  EXPECT_EQ(dual.hostname, "tcp-echo.dual-stack.svc.cluster.local");
  EXPECT_EQ(dual.service_name, "tcp-echo");
  EXPECT_EQ(dual.service_ns, "dual-stack");
  EXPECT_EQ(dual.port_name, "tcp");
  EXPECT_EQ(dual.ip_family_policy, IpFamilyPolicy::RequireDualStack);
  EXPECT_EQ(dual.ip_families, (std::vector{net::Family::v6, net::Family::v4}));
  EXPECT_EQ(dual.cluster_ips, (std::vector{ip("fd00:10:96::f9fc"), ip("10.96.106.11")}));
}

TEST(ExperimentFile, EndpointsFollowTheServiceFamilies) {
  auto s = experiment();
  // Every pod is dual-stack; the service decides which of its addresses are endpoints.
  EXPECT_EQ(addresses(cluster(*s, "10.96.104.229", 9000)), (std::vector<std::string>{"10.244.0.19:9000"}));
  EXPECT_EQ(addresses(cluster(*s, "fd00:10:96::9c3a", 9000)), (std::vector<std::string>{"[fd00:10:244::18]:9000"}));
  // IPv4 first although the service lists IPv6 first: endpoint order is by address.
  EXPECT_EQ(addresses(cluster(*s, "fd00:10:96::f9fc", 9000)),
            (std::vector<std::string>{"10.244.0.26:9000", "[fd00:10:244::1a]:9000"}));
  EXPECT_EQ(cluster(*s, "fd00:10:96::f9fc", 9000).endpoints[0].pod, "dual-stack/tcp-echo-6d7b4fbcf4-xk2mz");
  EXPECT_TRUE(cluster(*s, "fd00:10:96::f9fc", 9000).endpoints[0].ready);
}

TEST(ExperimentFile, NamedTargetPortResolvesPerPod) {
  auto s = experiment();
  EXPECT_EQ(addresses(cluster(*s, "10.96.104.229", 9001)), (std::vector<std::string>{"10.244.0.19:9001"}));
  EXPECT_EQ(addresses(cluster(*s, "10.96.106.11", 9001)),
            (std::vector<std::string>{"10.244.0.26:9001", "[fd00:10:244::1a]:9001"}));
}

TEST(ExperimentFile, EveryVipAndPortFindsItsCluster) {
  auto s = experiment();
  struct Vip {
    const char* ip;
    const char* hostname;
  };
  for (const Vip& v : {Vip{"fd00:10:96::f9fc", "tcp-echo.dual-stack.svc.cluster.local"},
                       Vip{"10.96.106.11", "tcp-echo.dual-stack.svc.cluster.local"},
                       Vip{"10.96.104.229", "tcp-echo.ipv4.svc.cluster.local"},
                       Vip{"fd00:10:96::9c3a", "tcp-echo.ipv6.svc.cluster.local"}}) {
    for (std::uint16_t port : {9000, 9001}) {
      const ServiceCluster* c = s->find_cluster(sa(v.ip, port));
      ASSERT_NE(c, nullptr) << v.ip << " " << port;
      EXPECT_EQ(c->hostname, v.hostname);
      EXPECT_EQ(c->port, port);
    }
    EXPECT_TRUE(s->is_cluster_ip(ip(v.ip)));
    // A VIP on a port the service does not have: no cluster, but still a VIP (reset, not passthrough).
    EXPECT_EQ(s->find_cluster(sa(v.ip, 9002)), nullptr);
  }
  ASSERT_NE(s->find_cluster(sa("10.96.200.10", 80)), nullptr);
  EXPECT_EQ(s->find_cluster(sa("10.244.0.19", 9000)), nullptr);  // a pod IP is no VIP
  EXPECT_FALSE(s->is_cluster_ip(ip("10.244.0.19")));
  EXPECT_FALSE(s->is_cluster_ip(ip("fd00:10:96::1")));
  // The v4-mapped form a dual-stack socket reports is the same VIP.
  EXPECT_NE(s->find_cluster(sa("::ffff:10.96.104.229", 9000)), nullptr);
}

TEST(ExperimentFile, NodePodsAreThisNodesPods) {
  auto s = experiment();
  std::vector<std::string> names;
  for (const NodePod& p : s->node_pods()) names.push_back(p.ns + "/" + p.name);
  EXPECT_EQ(names, (std::vector<std::string>{"default/sleep-7656cf8794-8tqd6", "dual-stack/tcp-echo-6d7b4fbcf4-xk2mz",
                                             "ipv4/tcp-echo-5b8f9d6c7-q4wlr", "ipv6/tcp-echo-7c9d8b5f6-m2nzp"}));
  EXPECT_EQ(s->node_pods()[0].ips, (std::vector{ip("10.244.0.5"), ip("fd00:10:244::5")}));

  auto other = ClusterSnapshot::build(load_objects_file(DSPROXY_SOURCE_DIR "/config/tcp-echo-experiment.yaml"),
                                      {.node_name = "kind-worker2"});
  ASSERT_EQ(other->node_pods().size(), 1u);
  EXPECT_EQ(other->node_pods()[0].name, "remote-client-0");
}

// ---------------------------------------------------------------- built from objects

Service service(const char* ns, const char* name, std::vector<const char*> vips) {
  Service s;
  s.name = name;
  s.ns = ns;
  s.selector = Labels{{"app", name}};
  for (const char* v : vips) {
    s.cluster_ips.push_back(ip(v));
    s.ip_families.push_back(ip(v).family());
  }
  if (vips.size() == 2) s.ip_family_policy = IpFamilyPolicy::RequireDualStack;
  return s;
}

Pod pod(const char* ns, const char* name, const char* app, std::vector<const char*> ips, bool ready = true) {
  Pod p;
  p.name = name;
  p.ns = ns;
  p.labels = {{"app", app}};
  p.node_name = "node-a";
  for (const char* a : ips) p.pod_ips.push_back(ip(a));
  p.ready = ready;
  return p;
}

TEST(ClusterSnapshot, NamedTargetPortExcludesPodsWithoutThatName) {
  ClusterObjects o;
  Service s = service("ns", "web", {"10.96.0.10"});
  s.ports.push_back({"http", 80, std::string("web-http"), "TCP"});
  o.services.push_back(s);
  Pod a = pod("ns", "a", "web", {"10.244.0.2"});
  a.container_ports = {{"web-http", 8080, "TCP"}};
  Pod b = pod("ns", "b", "web", {"10.244.0.3"});
  b.container_ports = {{"other", 8080, "TCP"}};
  Pod c = pod("ns", "c", "web", {"10.244.0.4"});
  c.container_ports = {{"web-http", 8081, "UDP"}};  // the name, but not for TCP
  Pod d = pod("ns", "d", "web", {"10.244.0.5"});
  d.container_ports = {{"web-http", 9090, "TCP"}};  // each pod's own number
  o.pods = {a, b, c, d};
  auto snap = ClusterSnapshot::build(o, {.node_name = "node-a"});
  ASSERT_EQ(snap->clusters().size(), 1u);
  EXPECT_EQ(addresses(snap->clusters()[0]), (std::vector<std::string>{"10.244.0.2:8080", "10.244.0.5:9090"}));
}

TEST(ClusterSnapshot, SelectorMatchingRules) {
  ClusterObjects o;
  Service s = service("ns", "web", {"10.96.0.10"});
  s.selector = Labels{{"app", "web"}, {"tier", "front"}};
  s.ports.push_back({"", 80, std::uint16_t{8080}, "TCP"});
  o.services.push_back(s);
  Service none = service("ns", "none", {"10.96.0.11"});
  none.selector.reset();
  none.ports.push_back({"", 80, std::uint16_t{8080}, "TCP"});
  o.services.push_back(none);
  Service empty = service("ns", "empty", {"10.96.0.12"});
  empty.selector = Labels{};
  empty.ports.push_back({"", 80, std::uint16_t{8080}, "TCP"});
  o.services.push_back(empty);

  Pod match = pod("ns", "match", "web", {"10.244.0.2"});
  match.labels["tier"] = "front";
  match.labels["extra"] = "ignored";
  Pod partial = pod("ns", "partial", "web", {"10.244.0.3"});  // lacks tier
  Pod elsewhere = pod("other", "elsewhere", "web", {"10.244.0.4"});
  elsewhere.labels["tier"] = "front";
  o.pods = {match, partial, elsewhere};

  auto snap = ClusterSnapshot::build(o, {.node_name = "node-a"});
  EXPECT_EQ(addresses(cluster(*snap, "10.96.0.10", 80)), (std::vector<std::string>{"10.244.0.2:8080"}));
  EXPECT_TRUE(cluster(*snap, "10.96.0.11", 80).endpoints.empty());
  EXPECT_TRUE(cluster(*snap, "10.96.0.12", 80).endpoints.empty());
}

TEST(ClusterSnapshot, NotReadyPodsAreEndpointsMarkedNotReady) {
  ClusterObjects o;
  Service s = service("ns", "web", {"10.96.0.10", "fd00::10"});
  s.ports.push_back({"http", 80, std::uint16_t{8080}, "TCP"});
  o.services.push_back(s);
  o.pods = {pod("ns", "up", "web", {"10.244.0.2", "fd00:244::2"}), pod("ns", "down", "web", {"10.244.0.3"}, false)};
  auto snap = ClusterSnapshot::build(o, {.node_name = "node-a"});
  EXPECT_EQ(addresses(cluster(*snap, "fd00::10", 80)),
            (std::vector<std::string>{"10.244.0.2:8080", "10.244.0.3:8080 (not ready)", "[fd00:244::2]:8080"}));
}

TEST(ClusterSnapshot, SlicesOverrideSelector) {
  ClusterObjects o;
  Service s = service("ns", "web", {"10.96.0.10", "fd00::10"});
  s.ports.push_back({"http", 80, std::uint16_t{8080}, "TCP"});
  s.ports.push_back({"admin", 81, std::uint16_t{8081}, "TCP"});
  o.services.push_back(s);
  o.pods = {pod("ns", "selected", "web", {"10.244.0.2"})};  // ignored once slices exist

  EndpointSlice v4;
  v4.name = "web-v4";
  v4.ns = "ns";
  v4.service_name = "web";
  v4.address_type = AddressType::IPv4;
  v4.ports = {{"http", 9080, "TCP"}, {"admin", std::nullopt, "TCP"}};
  v4.endpoints = {{{ip("10.244.1.9")}, true, "node-b", "from-slice"}, {{ip("10.244.1.8")}, false, "node-b", ""}};
  EndpointSlice v6 = v4;
  v6.name = "web-v6";
  v6.address_type = AddressType::IPv6;
  v6.endpoints = {{{ip("fd00:244:1::9")}, true, "node-b", "from-slice"}};
  EndpointSlice stray = v4;  // another service's slice
  stray.name = "not-web-v4";  // objects are keyed by namespace and name, as in the API
  stray.service_name = "not-web";
  stray.endpoints = {{{ip("10.244.1.77")}, true, "", ""}};
  o.endpoint_slices = {v6, v4, stray};

  auto snap = ClusterSnapshot::build(o, {.node_name = "node-a"});
  const ServiceCluster& http = cluster(*snap, "10.96.0.10", 80);
  EXPECT_EQ(addresses(http), (std::vector<std::string>{"10.244.1.8:9080 (not ready)", "10.244.1.9:9080",
                                                       "[fd00:244:1::9]:9080"}));
  EXPECT_EQ(http.endpoints[1].pod, "ns/from-slice");
  EXPECT_EQ(http.endpoints[0].pod, "");
  // The slice has the admin port without a number: nothing to connect to.
  EXPECT_TRUE(cluster(*snap, "10.96.0.10", 81).endpoints.empty());
}

TEST(ClusterSnapshot, SliceAddressesOutsideServiceFamiliesAreDropped) {
  ClusterObjects o;
  Service s = service("ns", "web", {"10.96.0.10"});
  s.ports.push_back({"", 80, std::uint16_t{8080}, "TCP"});
  o.services.push_back(s);
  EndpointSlice v6;
  v6.ns = "ns";
  v6.service_name = "web";
  v6.address_type = AddressType::IPv6;
  v6.ports = {{std::nullopt, 8080, "TCP"}};  // absent name matches the unnamed service port
  v6.endpoints = {{{ip("fd00::2")}, true, "", ""}};
  EndpointSlice v4 = v6;
  v4.address_type = AddressType::IPv4;
  v4.ports = {{std::string(""), 8080, "TCP"}};
  v4.endpoints = {{{ip("10.0.0.2")}, true, "", ""}};
  o.endpoint_slices = {v6, v4};
  auto snap = ClusterSnapshot::build(o, {});
  EXPECT_EQ(addresses(cluster(*snap, "10.96.0.10", 80)), (std::vector<std::string>{"10.0.0.2:8080"}));
}

TEST(ClusterSnapshot, DuplicateSliceEndpointsAreMerged) {
  ClusterObjects o;
  Service s = service("ns", "web", {"10.96.0.10"});
  s.ports.push_back({"", 80, std::uint16_t{8080}, "TCP"});
  o.services.push_back(s);
  EndpointSlice a;
  a.ns = "ns";
  a.service_name = "web";
  a.ports = {{std::nullopt, 8080, "TCP"}};
  a.endpoints = {{{ip("10.0.0.2")}, false, "", ""}};
  EndpointSlice b = a;
  b.endpoints = {{{ip("10.0.0.2")}, true, "", "p"}};
  o.endpoint_slices = {a, b};
  auto snap = ClusterSnapshot::build(o, {});
  ASSERT_EQ(cluster(*snap, "10.96.0.10", 80).endpoints.size(), 1u);
  EXPECT_TRUE(cluster(*snap, "10.96.0.10", 80).endpoints[0].ready);
}

TEST(ClusterSnapshot, HeadlessExternalNameAndNonTcpPortsGetNoClusters) {
  ClusterObjects o;
  Service headless = service("ns", "db", {});
  headless.headless = true;
  headless.ports.push_back({"", 5432, std::uint16_t{5432}, "TCP"});
  Service ext = service("ns", "ext", {});
  ext.type = "ExternalName";
  ext.external_name = "db.example.com";
  ext.ports.push_back({"", 5432, std::uint16_t{5432}, "TCP"});
  Service dns = service("kube-system", "kube-dns", {"10.96.0.10"});
  dns.ports = {{"dns", 53, std::uint16_t{53}, "UDP"}, {"dns-tcp", 53, std::uint16_t{53}, "TCP"},
               {"metrics", 9153, std::uint16_t{9153}, "SCTP"}};
  o.services = {headless, ext, dns};
  auto snap = ClusterSnapshot::build(o, {.node_name = "n", .cluster_domain = "corp.example"});
  ASSERT_EQ(snap->clusters().size(), 1u);
  EXPECT_EQ(snap->clusters()[0].get().cluster_name, "outbound|53||kube-dns.kube-system.svc.corp.example");
  EXPECT_EQ(snap->service_count(), 3u);
  ASSERT_NE(snap->service("ns", "ext"), nullptr);  // kept for the DNS side
  EXPECT_EQ(snap->service("ns", "ext")->external_name, "db.example.com");
  EXPECT_TRUE(snap->is_cluster_ip(ip("10.96.0.10")));
  EXPECT_EQ(snap->find_cluster(sa("10.96.0.10", 9153)), nullptr);
}

TEST(ClusterSnapshot, NodePodsExcludeOtherNodesHostNetworkAndPodsWithoutIps) {
  ClusterObjects o;
  Pod here = pod("b", "here", "x", {"10.244.0.2"});
  Pod first = pod("a", "z", "x", {"10.244.0.3", "fd00::3"});
  Pod there = pod("a", "there", "x", {"10.244.1.2"});
  there.node_name = "node-b";
  Pod host = pod("kube-system", "kube-proxy", "x", {"172.18.0.2"});
  host.host_network = true;
  Pod pending = pod("a", "pending", "x", {});
  o.pods = {here, first, there, host, pending};
  auto snap = ClusterSnapshot::build(o, {.node_name = "node-a"});
  std::vector<std::string> names;
  for (const NodePod& p : snap->node_pods()) names.push_back(p.ns + "/" + p.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a/z", "b/here"}));
  EXPECT_TRUE(ClusterSnapshot::build(o, {})->node_pods().empty());
}

TEST(ClusterSnapshot, BuildIsDeterministic) {
  const ClusterObjects o = load_objects_file(DSPROXY_SOURCE_DIR "/config/tcp-echo-experiment.yaml");
  ClusterObjects reversed = o;
  std::reverse(reversed.pods.begin(), reversed.pods.end());
  std::reverse(reversed.services.begin(), reversed.services.end());
  auto a = ClusterSnapshot::build(o, {.node_name = "kind-worker"});
  auto b = ClusterSnapshot::build(reversed, {.node_name = "kind-worker"});
  ASSERT_EQ(a->clusters().size(), b->clusters().size());
  for (std::size_t i = 0; i < a->clusters().size(); ++i) {
    EXPECT_EQ(a->clusters()[i].get().cluster_name, b->clusters()[i].get().cluster_name);
    EXPECT_EQ(addresses(a->clusters()[i]), addresses(b->clusters()[i]));
  }
}

TEST(ServiceCluster, DualStackPodIsOneBackendWithBothAddresses) {
  auto s = experiment();
  const ServiceCluster& ds = cluster(*s, "10.96.106.11", 9000);
  ASSERT_EQ(ds.backends.size(), 1u);
  ASSERT_GE(ds.backends[0].v4, 0);
  ASSERT_GE(ds.backends[0].v6, 0);
  EXPECT_EQ(ds.endpoints[ds.backends[0].v4].address.to_string(), "10.244.0.26:9000");
  EXPECT_EQ(ds.endpoints[ds.backends[0].v6].address.to_string(), "[fd00:10:244::1a]:9000");
  const ServiceCluster& v4 = cluster(*s, "10.96.104.229", 9000);
  ASSERT_EQ(v4.backends.size(), 1u);
  EXPECT_EQ(v4.backends[0].v6, -1);
}

TEST(ServiceCluster, FallbackFollowsPolicyUnlessAnnotatedOrOverridden) {
  auto s = experiment();
  EXPECT_EQ(cluster(*s, "10.96.106.11", 9000).family_fallback, FamilyFallback::other);   // RequireDualStack
  EXPECT_EQ(cluster(*s, "10.96.104.229", 9000).family_fallback, FamilyFallback::never);  // SingleStack
  auto objects = load_objects_file(DSPROXY_SOURCE_DIR "/config/tcp-echo-experiment.yaml");
  auto never = ClusterSnapshot::build(objects, {.node_name = "kind-worker", .fallback_default = FallbackDefault::never});
  EXPECT_EQ(cluster(*never, "10.96.106.11", 9000).family_fallback, FamilyFallback::never);
  for (auto& svc : objects.services)
    if (svc.ns == "ipv4") svc.annotations["dsproxy.io/family-fallback"] = "other";
  auto annotated = ClusterSnapshot::build(objects, {.node_name = "kind-worker", .fallback_default = FallbackDefault::never});
  EXPECT_EQ(cluster(*annotated, "10.96.104.229", 9000).family_fallback, FamilyFallback::other);
}

TEST(ServiceCluster, BadFallbackAnnotationNamesTheField) {
  auto objects = load_objects_file(DSPROXY_SOURCE_DIR "/config/tcp-echo-experiment.yaml");
  objects.services[0].annotations["dsproxy.io/family-fallback"] = "sometimes";
  try {
    ClusterSnapshot::build(objects, {.node_name = "kind-worker"});
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("metadata.annotations[dsproxy.io/family-fallback]"), std::string::npos)
        << e.what();
  }
}

TEST(ClusterSnapshot, VipPortsListServablePortsPerClusterIp) {
  auto objects = load_objects_file(DSPROXY_SOURCE_DIR "/config/tcp-echo-experiment.yaml");
  for (auto& pod : objects.pods)
    if (pod.ns == "ipv6") pod.ready = false;  // tcp-echo.ipv6 has no ready endpoint left
  auto s = ClusterSnapshot::build(objects, {.node_name = "kind-worker"});
  std::map<std::string, std::vector<std::uint16_t>> open;
  for (const auto& v : s->vip_ports()) open[v.vip.to_string()] = v.open_ports;
  EXPECT_EQ(open["10.96.106.11"], (std::vector<std::uint16_t>{9000, 9001}));
  EXPECT_EQ(open["fd00:10:96::f9fc"], (std::vector<std::uint16_t>{9000, 9001}));
  EXPECT_EQ(open["10.96.104.229"], (std::vector<std::uint16_t>{9000, 9001}));
  ASSERT_TRUE(open.count("fd00:10:96::9c3a"));
  EXPECT_TRUE(open["fd00:10:96::9c3a"].empty());
}

TEST(ClusterSnapshot, OtherFamilyAddressOfDualStackPods) {
  auto s = experiment();
  EXPECT_EQ(s->other_family_address(*net::IpAddress::parse("10.244.0.26"))->to_string(), "fd00:10:244::1a");
  EXPECT_EQ(s->other_family_address(*net::IpAddress::parse("fd00:10:244::1a"))->to_string(), "10.244.0.26");
  EXPECT_FALSE(s->other_family_address(*net::IpAddress::parse("10.96.106.11")));
}

// ---------------------------------------------------------------- unsafe endpoints (issue 14)

// The reproductions of finding 1, as config: a RequireDualStack Service whose endpoints point at the
// node's loopback in both families, at a ClusterIP, at link-local and multicast groups, and a pod
// whose status claims ::1. None of them is ever an endpoint; the Service's good endpoint stays.
constexpr const char* kUnsafeEndpoints = R"(
apiVersion: v1
kind: Service
metadata: {name: admin-grab, namespace: evil}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIPs: [10.96.7.1, fd00:10:96::7:1]
  ports: [{name: http, port: 80, targetPort: 15000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: admin-grab-v4, namespace: evil, labels: {kubernetes.io/service-name: admin-grab}}
addressType: IPv4
endpoints:
- addresses: [127.0.0.1]
- addresses: [0.0.0.0]
- addresses: [169.254.169.254]
- addresses: [224.0.0.1]
- addresses: [10.96.0.10]
- addresses: [10.244.0.9]
ports: [{name: http, port: 15000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: admin-grab-v6, namespace: evil, labels: {kubernetes.io/service-name: admin-grab}}
addressType: IPv6
endpoints:
- addresses: ["::1"]
- addresses: ["::"]
- addresses: ["fe80::1"]
- addresses: ["::127.0.0.1"]
- addresses: ["fd00:10:96::7:1"]
ports: [{name: http, port: 15000}]
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  ports: [{name: dns-tcp, port: 53}]
---
apiVersion: v1
kind: Service
metadata: {name: by-selector, namespace: evil}
spec:
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv6, IPv4]
  clusterIPs: [fd00:10:96::7:2, 10.96.7.2]
  selector: {app: liar}
  ports: [{port: 80, targetPort: 15000}]
---
apiVersion: v1
kind: Pod
metadata: {name: liar, namespace: evil, labels: {app: liar}}
spec: {nodeName: n1}
status:
  podIPs: [{ip: 127.0.0.1}, {ip: "::1"}]
  conditions: [{type: Ready, status: "True"}]
)";

TEST(UnsafeEndpoints, LoopbackLinkLocalMulticastAndClusterIpsAreDroppedWhateverTheSource) {
  auto snap = ClusterSnapshot::build(decode_objects(kUnsafeEndpoints), {.node_name = "n1"});
  const ServiceCluster& grab = cluster(*snap, "10.96.7.1", 80);
  EXPECT_EQ(addresses(grab), (std::vector<std::string>{"10.244.0.9:15000"}));
  // No IPv6 endpoint is left: the IPv6 ClusterIP is served only by falling back to 10.244.0.9.
  EXPECT_FALSE(grab.has_ready(net::Family::v6));
  const ServiceCluster& liar = cluster(*snap, "fd00:10:96::7:2", 80);
  EXPECT_TRUE(liar.endpoints.empty());
  EXPECT_FALSE(liar.serves(net::Family::v4));
  EXPECT_FALSE(liar.serves(net::Family::v6));

  std::vector<std::string> dropped;
  for (const DroppedEndpoint& d : snap->dropped_endpoints())
    dropped.push_back(d.cluster_name + " " + d.address.to_string() + " " + d.reason);
  std::sort(dropped.begin(), dropped.end());
  EXPECT_EQ(dropped, (std::vector<std::string>{
                         "outbound|80||admin-grab.evil.svc.cluster.local 0.0.0.0:15000 unspecified",
                         "outbound|80||admin-grab.evil.svc.cluster.local 10.96.0.10:15000 ClusterIP",
                         "outbound|80||admin-grab.evil.svc.cluster.local 127.0.0.1:15000 loopback",
                         "outbound|80||admin-grab.evil.svc.cluster.local 169.254.169.254:15000 link-local",
                         "outbound|80||admin-grab.evil.svc.cluster.local 224.0.0.1:15000 multicast",
                         "outbound|80||admin-grab.evil.svc.cluster.local [::127.0.0.1]:15000 IPv4-compatible",
                         "outbound|80||admin-grab.evil.svc.cluster.local [::1]:15000 loopback",
                         "outbound|80||admin-grab.evil.svc.cluster.local [::]:15000 unspecified",
                         "outbound|80||admin-grab.evil.svc.cluster.local [fd00:10:96::7:1]:15000 ClusterIP",
                         "outbound|80||admin-grab.evil.svc.cluster.local [fe80::1]:15000 link-local",
                         "outbound|80||by-selector.evil.svc.cluster.local 127.0.0.1:15000 loopback",
                         "outbound|80||by-selector.evil.svc.cluster.local [::1]:15000 loopback",
                     }));
  // The lying pod's addresses are not used as anyone's other-family address either.
  EXPECT_FALSE(snap->other_family_address(*net::IpAddress::parse("127.0.0.1")));
  EXPECT_FALSE(snap->other_family_address(*net::IpAddress::parse("::1")));
  // A VIP with nothing safe behind it is refused by the rules, not captured.
  for (const VipPorts& v : snap->vip_ports())
    if (v.vip.to_string() == "fd00:10:96::7:2" || v.vip.to_string() == "10.96.7.2") EXPECT_TRUE(v.open_ports.empty());
}

}  // namespace cluster_snapshot_test
}  // namespace dsproxy::snapshot
