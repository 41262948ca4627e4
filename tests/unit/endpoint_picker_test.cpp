// Endpoint choice: matched family, fallback, Happy Eyeballs partners, outliers, load spread.

#include "proxy/endpoint_picker.hpp"

#include <gtest/gtest.h>

#include <map>

#include "config/k8s_decoder.hpp"

namespace dsproxy::proxy {
namespace endpoint_picker_test {  // named: unity builds put several test files in one translation unit

// Three dual-stack pods behind a PreferDualStack Service, a named port only two of them have,
// and a SingleStack IPv4 Service over the same pods.
constexpr const char* kCluster = R"(
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv6, IPv4]
  clusterIPs: [fd00:10:96::20, 10.96.0.20]
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: admin, port: 81, targetPort: admin}
---
apiVersion: v1
kind: Service
metadata: {name: web4, namespace: shop}
spec:
  ipFamilies: [IPv4]
  clusterIPs: [10.96.0.40]
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: web-1, namespace: shop, labels: {app: web}}
  spec: {containers: [{name: c, ports: [{name: admin, containerPort: 9901}]}]}
  status: {podIPs: [{ip: 10.244.0.11}, {ip: "fd00:10:244::11"}], conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: web-2, namespace: shop, labels: {app: web}}
  spec: {containers: [{name: c, ports: [{name: admin, containerPort: 9902}]}]}
  status: {podIPs: [{ip: 10.244.0.12}, {ip: "fd00:10:244::12"}], conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: web-3, namespace: shop, labels: {app: web}}
  spec: {containers: [{name: c}]}
  status: {podIPs: [{ip: 10.244.0.13}, {ip: "fd00:10:244::13"}], conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: web-4, namespace: shop, labels: {app: web}}
  spec: {containers: [{name: c}]}
  status: {podIPs: [{ip: 10.244.0.14}, {ip: "fd00:10:244::14"}], conditions: [{type: Ready, status: "False"}]}
)";

net::SocketAddress sa(const char* ip, std::uint16_t port) { return {*net::IpAddress::parse(ip), port}; }

class EndpointPickerTest : public ::testing::Test {
 protected:
  std::shared_ptr<const snapshot::ClusterSnapshot> build(const config::ClusterObjects& o) {
    auto s = snapshot::ClusterSnapshot::build(o, {"n1", "cluster.local"});
    states.sync(s);
    return s;
  }
  // The runtime states of `c`'s endpoints, as the data path finds them.
  const ClusterStates* st(const snapshot::ServiceCluster& c) {
    const ClusterStates* found = states.current()->find(c);
    EXPECT_NE(found, nullptr);
    return found;
  }
  EndpointState& state(const snapshot::ServiceCluster& c, const snapshot::Endpoint& e) {
    return (*st(c))[static_cast<std::size_t>(&e - c.endpoints.data())];
  }
  const snapshot::ServiceCluster& cluster(const snapshot::ClusterSnapshot& s, const char* vip, std::uint16_t port) {
    const auto* c = s.find_cluster(sa(vip, port));
    EXPECT_NE(c, nullptr);
    return *c;
  }
  config::ClusterObjects objects = config::decode_objects(kCluster);
  OutlierDetector outliers;
  EndpointStates states;
  EndpointPicker picker{outliers, 42};
  Clock::time_point now = Clock::now();
};

TEST_F(EndpointPickerTest, Row1MatchedFamilyWithHappyEyeballsPartner) {
  auto s = build(objects);
  for (auto family : {net::Family::v4, net::Family::v6}) {
    auto p = picker.pick(cluster(*s, "10.96.0.20", 80), st(cluster(*s, "10.96.0.20", 80)), family, now);
    ASSERT_TRUE(p);
    EXPECT_FALSE(p->fallback);
    ASSERT_EQ(p->count, 2);
    EXPECT_EQ(p->endpoints[0]->address.ip.family(), family);
    EXPECT_EQ(p->endpoints[1]->address.ip.family(), net::other(family));
    EXPECT_EQ(p->endpoints[0]->pod, p->endpoints[1]->pod) << "partners are the same pod";
    EXPECT_EQ(p->endpoints[0]->address.port, 8080);
    EXPECT_NE(p->endpoints[0]->pod, "shop/web-4") << "not ready";
  }
}

TEST_F(EndpointPickerTest, Row2FallsBackOnlyWhereTheServiceAllows) {
  for (auto& pod : objects.pods) pod.pod_ips.resize(1);  // IPv4 only
  auto s = build(objects);
  auto p = picker.pick(cluster(*s, "fd00:10:96::20", 80), st(cluster(*s, "fd00:10:96::20", 80)), net::Family::v6, now);
  ASSERT_TRUE(p);
  EXPECT_TRUE(p->fallback);
  EXPECT_EQ(p->count, 1);
  EXPECT_TRUE(p->endpoints[0]->address.ip.is_v4());

  for (auto& svc : objects.services) svc.annotations["dsproxy.io/family-fallback"] = "never";
  auto never = build(objects);
  EXPECT_FALSE(picker.pick(cluster(*never, "fd00:10:96::20", 80), st(cluster(*never, "fd00:10:96::20", 80)), net::Family::v6, now));
}

TEST_F(EndpointPickerTest, SingleStackNeverCrossesFamilies) {
  auto s = build(objects);
  const auto& web4 = cluster(*s, "10.96.0.40", 80);
  auto p = picker.pick(web4, st(web4), net::Family::v4, now);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->count, 1) << "no IPv6 partner for a SingleStack IPv4 Service";
  EXPECT_FALSE(picker.pick(web4, st(web4), net::Family::v6, now));
}

TEST_F(EndpointPickerTest, Row8NamedTargetPortExcludesPodsWithoutIt) {
  auto s = build(objects);
  std::map<std::string, int> seen;
  for (int i = 0; i < 40; ++i) {
    auto p = picker.pick(cluster(*s, "10.96.0.20", 81), st(cluster(*s, "10.96.0.20", 81)), net::Family::v4, now);
    ASSERT_TRUE(p);
    seen[p->endpoints[0]->address.to_string()]++;
  }
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen.count("10.244.0.11:9901"));
  EXPECT_TRUE(seen.count("10.244.0.12:9902"));
}

TEST_F(EndpointPickerTest, RetriesGoToBackendsNotYetTried) {
  auto s = build(objects);
  const auto& c = cluster(*s, "10.96.0.20", 80);
  std::vector<int> tried;
  for (int i = 0; i < 3; ++i) {
    auto p = picker.pick(c, st(c), net::Family::v4, now, tried);
    ASSERT_TRUE(p);
    EXPECT_EQ(std::count(tried.begin(), tried.end(), p->backend), 0);
    tried.push_back(p->backend);
  }
  EXPECT_FALSE(picker.pick(c, st(c), net::Family::v4, now, tried)) << "three ready pods, all tried";
}

TEST_F(EndpointPickerTest, Row6EjectedEndpointIsSkippedWhileOthersRemain) {
  auto s = build(objects);
  const auto& c = cluster(*s, "10.96.0.20", 80);
  // Eject every IPv4 endpoint but web-3's.
  for (const auto& e : c.endpoints)
    if (e.address.ip.is_v4() && e.pod != "shop/web-3")
      for (std::uint32_t i = 0; i < outliers.options().consecutive_failures; ++i) outliers.record_failure(state(c, e), now);
  for (int i = 0; i < 10; ++i) {
    auto p = picker.pick(c, st(c), net::Family::v4, now);
    ASSERT_TRUE(p);
    EXPECT_EQ(p->endpoints[0]->pod, "shop/web-3");
  }
  // Once web-3 is ejected too, an ejected one is better than a refusal.
  for (const auto& e : c.endpoints)
    if (e.pod == "shop/web-3")
      for (std::uint32_t i = 0; i < outliers.options().consecutive_failures; ++i) outliers.record_failure(state(c, e), now);
  // Every IPv4 endpoint is ejected but the IPv6 ones are healthy: fallback is allowed here, so a
  // healthy IPv6 endpoint wins over an ejected IPv4 one.
  auto p = picker.pick(c, st(c), net::Family::v4, now);
  ASSERT_TRUE(p);
  EXPECT_FALSE(p->endpoints[0]->address.ip.is_v4());
}

TEST_F(EndpointPickerTest, Row7LeastOutstandingSpreadsEvenly) {
  auto s = build(objects);
  const auto& c = cluster(*s, "fd00:10:96::20", 80);
  std::map<std::string, int> hits;
  for (int i = 0; i < 999; ++i) hits[picker.pick(c, st(c), net::Family::v6, now)->endpoints[0]->pod]++;
  ASSERT_EQ(hits.size(), 3u);
  for (const auto& [pod, n] : hits) EXPECT_NEAR(n, 333, 5) << pod;
}

TEST_F(EndpointPickerTest, Row7BusyEndpointGetsFewerNewConnections) {
  auto s = build(objects);
  const auto& c = cluster(*s, "10.96.0.40", 80);
  // web-1 holds 100 long-lived connections; new ones should go to the others.
  for (const auto& e : c.endpoints)
    if (e.pod == "shop/web-1") state(c, e).active = 100;
  std::map<std::string, int> hits;
  for (int i = 0; i < 300; ++i) hits[picker.pick(c, st(c), net::Family::v4, now)->endpoints[0]->pod]++;
  EXPECT_EQ(hits["shop/web-1"], 0) << "power of two choices never prefers the busiest of two";
}

}  // namespace endpoint_picker_test
}  // namespace dsproxy::proxy
