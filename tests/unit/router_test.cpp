// Routing decisions: matched family, port translation, resets, passthrough, loop protection.

#include "proxy/router.hpp"

#include <gtest/gtest.h>

#include <map>

#include "config/k8s_decoder.hpp"

namespace dsproxy::proxy {
namespace {

constexpr const char* kCluster = R"(
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIPs: [10.96.0.20, fd00:10:96::20]
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: admin, port: 81, targetPort: admin}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec:
  ipFamilies: [IPv6]
  clusterIPs: [fd00:10:96::30]
  selector: {app: legacy}
  ports: [{port: 90}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: c, ports: [{name: admin, containerPort: 9901}]}]
status:
  podIPs: [{ip: 10.244.0.10}, {ip: "fd00:10:244::a"}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c}]}
status:
  podIPs: [{ip: 10.244.0.11}, {ip: "fd00:10:244::b"}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-3, namespace: shop, labels: {app: web}}
spec: {nodeName: n1}
status:
  podIPs: [{ip: 10.244.0.12}, {ip: "fd00:10:244::c"}]
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Pod
metadata: {name: legacy-1, namespace: shop, labels: {app: legacy}}
spec: {nodeName: n1}
status:
  podIPs: [{ip: 10.244.0.40}]
  conditions: [{type: Ready, status: "True"}]
)";

net::SocketAddress sa(const char* ip, std::uint16_t port) { return {*net::IpAddress::parse(ip), port}; }

class RouterTest : public ::testing::Test {
 protected:
  std::shared_ptr<const config::ClusterSnapshot> snapshot =
      config::ClusterSnapshot::build(config::decode_objects(kCluster), {"n1", "cluster.local"});
  CapturePorts ports;

  RouteDecision outbound(const char* ip, std::uint16_t port) {
    return route(*snapshot, Direction::outbound, sa(ip, port), ports);
  }
};

TEST_F(RouterTest, IPv4ClusterIpGetsReadyIPv4EndpointWithTargetPort) {
  for (int i = 0; i < 4; ++i) {
    auto d = outbound("10.96.0.20", 80);
    ASSERT_EQ(d.kind, RouteKind::service);
    EXPECT_TRUE(d.upstream.ip.is_v4());
    EXPECT_EQ(d.upstream.port, 8080);
    EXPECT_NE(d.upstream.ip.to_string(), "10.244.0.12") << "not-ready pod must never be picked";
    EXPECT_EQ(d.cluster->cluster_name, "outbound|80||web.shop.svc.cluster.local");
  }
}

TEST_F(RouterTest, IPv6ClusterIpGetsIPv6Endpoint) {
  auto d = outbound("fd00:10:96::20", 80);
  ASSERT_EQ(d.kind, RouteKind::service);
  EXPECT_FALSE(d.upstream.ip.is_v4());
  EXPECT_EQ(d.upstream.port, 8080);
}

TEST_F(RouterTest, RoundRobinSpreadsOverReadyEndpointsOfTheFamily) {
  std::map<std::string, int> hits;
  for (int i = 0; i < 100; ++i) hits[outbound("fd00:10:96::20", 80).upstream.ip.to_string()]++;
  ASSERT_EQ(hits.size(), 2u);
  EXPECT_EQ(hits["fd00:10:244::a"], 50);
  EXPECT_EQ(hits["fd00:10:244::b"], 50);
}

TEST_F(RouterTest, NamedTargetPortResolvesPerPodAndExcludesPodsWithoutIt) {
  for (int i = 0; i < 6; ++i) {
    auto d = outbound("10.96.0.20", 81);
    ASSERT_EQ(d.kind, RouteKind::service);
    EXPECT_EQ(d.upstream, sa("10.244.0.10", 9901));  // web-2 has no "admin" port
  }
}

TEST_F(RouterTest, NoEndpointOfDialledFamilyIsRejected) {
  // legacy's only pod has no IPv6 address: the IPv6 ClusterIP has nothing to reach.
  auto d = outbound("fd00:10:96::30", 90);
  EXPECT_EQ(d.kind, RouteKind::reject);
  EXPECT_EQ(d.reason, RejectReason::no_endpoint_for_family);
  ASSERT_NE(d.cluster, nullptr);
}

TEST_F(RouterTest, ClusterIpWithUnknownPortIsRejected) {
  auto d = outbound("10.96.0.20", 9999);
  EXPECT_EQ(d.kind, RouteKind::reject);
  EXPECT_EQ(d.reason, RejectReason::unknown_service_port);
}

TEST_F(RouterTest, OtherDestinationsPassThroughUnchanged) {
  for (auto dst : {sa("10.244.0.11", 9002), sa("fd00:10:244::b", 9002), sa("192.0.2.1", 443)}) {
    auto d = route(*snapshot, Direction::outbound, dst, ports);
    EXPECT_EQ(d.kind, RouteKind::passthrough);
    EXPECT_EQ(d.upstream, dst);
  }
}

TEST_F(RouterTest, InboundAlwaysPassesThroughToThePod) {
  auto d = route(*snapshot, Direction::inbound, sa("fd00:10:244::a", 8080), ports);
  EXPECT_EQ(d.kind, RouteKind::passthrough);
  EXPECT_EQ(d.upstream, sa("fd00:10:244::a", 8080));
}

TEST_F(RouterTest, DestinationOnACapturePortIsALoop) {
  EXPECT_EQ(outbound("127.0.0.1", 15001).reason, RejectReason::loop);
  EXPECT_EQ(route(*snapshot, Direction::inbound, sa("::1", 15006), ports).reason, RejectReason::loop);
}

}  // namespace
}  // namespace dsproxy::proxy
