// Routing decisions: matched family, port translation, resets, passthrough, loop protection.

#include "proxy/router.hpp"

#include <gtest/gtest.h>


#include "config/k8s_decoder.hpp"

namespace dsproxy::proxy {
namespace router_test {  // named: unity builds put several test files in one translation unit

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
kind: Service
metadata: {name: sidecar-ports, namespace: shop}
spec:
  ipFamilies: [IPv4]
  clusterIPs: [10.96.0.40]
  selector: {app: web}
  ports: [{name: in, port: 15006, targetPort: 15006}, {name: out, port: 15001, targetPort: 15001}]
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

net::IpAddress ip_of(const char* ip) { return *net::IpAddress::parse(ip); }
net::SocketAddress sa(const char* ip, std::uint16_t port) { return {*net::IpAddress::parse(ip), port}; }

// The node of these tests: loopback, one address per family, and the wildcards. Counts the
// questions, which must be asked only for destinations on a capture port.
struct FakeNode : LocalAddressCheck {
  int asked = 0;
  bool is_local(const net::IpAddress& ip) override {
    ++asked;
    for (const char* local : {"127.0.0.1", "127.0.0.53", "::1", "10.0.0.1", "fd00:1::1", "0.0.0.0", "::"})
      if (ip == *net::IpAddress::parse(local)) return true;
    return false;
  }
};

class RouterTest : public ::testing::Test {
 protected:
  std::shared_ptr<const snapshot::ClusterSnapshot> snapshot =
      snapshot::ClusterSnapshot::build(config::decode_objects(kCluster), {"n1", "cluster.local"});
  CapturePorts ports;
  FakeNode node;

  RouteDecision outbound(const char* ip, std::uint16_t port) {
    return route(*snapshot, Direction::outbound, sa(ip, port), ports, node);
  }
  RouteDecision inbound(const char* ip, std::uint16_t port) {
    return route(*snapshot, Direction::inbound, sa(ip, port), ports, node);
  }
};

TEST_F(RouterTest, ClusterIpOfEitherFamilyRoutesToTheService) {
  for (const char* vip : {"10.96.0.20", "fd00:10:96::20"}) {
    auto d = outbound(vip, 80);
    ASSERT_EQ(d.kind, RouteKind::service) << vip;
    EXPECT_EQ(d.cluster->cluster_name, "outbound|80||web.shop.svc.cluster.local");
  }
}

TEST_F(RouterTest, NoEndpointOfDialledFamilyIsRejected) {
  // legacy's only pod has no IPv6 address: the IPv6 ClusterIP has nothing to reach.
  auto d = outbound("fd00:10:96::30", 90);
  EXPECT_EQ(d.kind, RouteKind::reject);
  EXPECT_EQ(d.reason, RejectReason::no_endpoint_for_family);
  ASSERT_NE(d.cluster, nullptr);
}

TEST_F(RouterTest, DualStackServiceWithOnlyOtherFamilyEndpointsFallsBack) {
  // Decision table row 2: PreferDualStack with no ready IPv6 endpoint still serves its IPv6
  // ClusterIP, from IPv4 endpoints.
  auto objects = config::decode_objects(kCluster);
  for (auto& pod : objects.pods)
    if (pod.ns == "shop" && pod.labels["app"] == "web") pod.pod_ips.resize(1);  // IPv4 only
  auto only_v4 = snapshot::ClusterSnapshot::build(objects, {"n1", "cluster.local"});
  auto d = route(*only_v4, Direction::outbound, sa("fd00:10:96::20", 80), ports, node);
  EXPECT_EQ(d.kind, RouteKind::service);
  // ...unless the Service says never.
  for (auto& svc : objects.services) svc.annotations["dsproxy.io/family-fallback"] = "never";
  auto never = snapshot::ClusterSnapshot::build(objects, {"n1", "cluster.local"});
  EXPECT_EQ(route(*never, Direction::outbound, sa("fd00:10:96::20", 80), ports, node).reason,
            RejectReason::no_endpoint_for_family);
  EXPECT_EQ(route(*never, Direction::outbound, sa("10.96.0.20", 80), ports, node).kind, RouteKind::service);
}

// Row 2 for a captured client: the fallback leaves from the client's own address of the other
// family, so a client without one (a single-stack pod, an unknown source) is not sent across.
TEST_F(RouterTest, CapturedClientWithoutAnAddressOfTheOtherFamilyIsNotSentAcross) {
  auto objects = config::decode_objects(kCluster);
  for (auto& pod : objects.pods)
    if (pod.ns == "shop" && pod.labels["app"] == "web") pod.pod_ips.resize(1);  // IPv4 only
  objects.pods.push_back(objects.pods.front());  // a dual-stack client pod
  objects.pods.back().name = "client";
  objects.pods.back().labels = {};
  objects.pods.back().pod_ips = {ip_of("10.244.0.50"), ip_of("fd00:10:244::50")};
  auto only_v4 = snapshot::ClusterSnapshot::build(objects, {"n1", "cluster.local"});
  const auto vip = sa("fd00:10:96::20", 80);
  EXPECT_EQ(route(*only_v4, Direction::outbound, vip, ports, node, true, ip_of("fd00:10:244::50")).kind,
            RouteKind::service);
  auto d = route(*only_v4, Direction::outbound, vip, ports, node, true, ip_of("fd00:10:244::99"));
  EXPECT_EQ(d.kind, RouteKind::reject);
  EXPECT_EQ(d.reason, RejectReason::no_endpoint_for_family);
  // Not captured (an explicit --forward listener): the operator's choice, from the node.
  EXPECT_EQ(route(*only_v4, Direction::outbound, vip, ports, node, false, ip_of("fd00:10:244::99")).kind,
            RouteKind::service);
}

TEST_F(RouterTest, ClusterIpWithUnknownPortIsRejected) {
  auto d = outbound("10.96.0.20", 9999);
  EXPECT_EQ(d.kind, RouteKind::reject);
  EXPECT_EQ(d.reason, RejectReason::unknown_service_port);
}

TEST_F(RouterTest, OtherDestinationsPassThroughUnchanged) {
  for (auto dst : {sa("10.244.0.11", 9002), sa("fd00:10:244::b", 9002), sa("192.0.2.1", 443)}) {
    auto d = route(*snapshot, Direction::outbound, dst, ports, node);
    EXPECT_EQ(d.kind, RouteKind::passthrough);
    EXPECT_EQ(d.upstream, dst);
  }
}

TEST_F(RouterTest, InboundAlwaysPassesThroughToThePod) {
  auto d = inbound("fd00:10:244::a", 8080);
  EXPECT_EQ(d.kind, RouteKind::passthrough);
  EXPECT_EQ(d.upstream, sa("fd00:10:244::a", 8080));
}

TEST_F(RouterTest, DestinationOnACapturePortIsALoop) {
  EXPECT_EQ(outbound("127.0.0.1", 15001).reason, RejectReason::loop);
  EXPECT_EQ(inbound("::1", 15006).reason, RejectReason::loop);
}

TEST_F(RouterTest, LoopGuardRejectsExactlyTheConnectionsThatReachOurListeners) {
  // Made straight to a listener: loopback, a node address, the wildcard, both families.
  for (auto dst : {sa("127.0.0.53", 15001), sa("10.0.0.1", 15006), sa("fd00:1::1", 15001), sa("0.0.0.0", 15006),
                   sa("::", 15001), sa("::1", 15006)}) {
    EXPECT_EQ(route(*snapshot, Direction::outbound, dst, ports, node).reason, RejectReason::loop) << dst.to_string();
    EXPECT_EQ(route(*snapshot, Direction::inbound, dst, ports, node).reason, RejectReason::loop) << dst.to_string();
  }
  // An application's own 15001/15006 on a pod address (this node's or another's): it passes,
  // outbound and inbound.
  for (auto dst : {sa("10.244.0.11", 15006), sa("10.244.0.11", 15001), sa("fd00:10:244::b", 15006),
                   sa("10.244.1.7", 15001), sa("192.0.2.1", 15006)}) {
    for (auto dir : {Direction::outbound, Direction::inbound}) {
      auto d = route(*snapshot, dir, dst, ports, node);
      EXPECT_EQ(d.kind, RouteKind::passthrough) << to_string(dir) << " " << dst.to_string();
      EXPECT_EQ(d.upstream, dst);
    }
  }
}

TEST_F(RouterTest, ServicePortThatIsACapturePortRoutesToTheService) {
  // A ClusterIP is never dialled itself (its endpoints are), so its port cannot loop.
  for (std::uint16_t port : {15006, 15001}) {
    auto d = outbound("10.96.0.40", port);
    ASSERT_EQ(d.kind, RouteKind::service) << port;
    EXPECT_EQ(d.cluster->cluster_name, "outbound|" + std::to_string(port) + "||sidecar-ports.shop.svc.cluster.local");
  }
}

TEST_F(RouterTest, LocalAddressCheckIsAskedOnlyForCapturePorts) {
  // The common path (any other port) never asks; a capture-port destination that would be
  // passed through asks once.
  for (std::uint16_t port = 1; port < 2000; ++port) outbound("127.0.0.1", port);
  outbound("10.96.0.20", 80);
  inbound("10.244.0.11", 8080);
  EXPECT_EQ(node.asked, 0);
  outbound("10.244.0.11", 15006);
  inbound("10.244.0.11", 15001);
  EXPECT_EQ(node.asked, 2);
}

// Issue 14, finding 1: a passthrough destination a pod's packet can never carry (the kernel drops
// such martians before capture) is a local process at a listener: refused, never dialled.
TEST_F(RouterTest, PassthroughToLoopbackUnspecifiedOrMulticastIsRefused) {
  for (const char* ip : {"127.0.0.1", "::1", "0.0.0.0", "::", "224.0.0.5", "ff02::1", "255.255.255.255",
                         "::127.0.0.1", "0.0.0.7"}) {
    auto d = outbound(ip, 8080);
    EXPECT_EQ(d.kind, RouteKind::reject) << ip;
    EXPECT_EQ(d.reason, RejectReason::forbidden_destination) << ip;
    auto in = inbound(ip, 8080);
    EXPECT_EQ(in.kind, RouteKind::reject) << ip;
  }
  // Link-local stays the pod's own reach (a metadata server), dialled from the pod's address.
  EXPECT_EQ(outbound("169.254.169.254", 80).kind, RouteKind::passthrough);
}

// An IPv6 client whose packet was addressed to ::ffff:a.b.c.d (hand-crafted: a pod's own stack
// never sends that) arrives with a destination unmapped to IPv4. Routed, its upstream would be
// IPv4 with no IPv4 address of the client's to bind (an IPv6-only pod): it would leave from the
// node's own address. A captured connection is only served within the client's own family.
TEST_F(RouterTest, CapturedDestinationOfAnotherFamilyThanTheClientIsRefused) {
  for (const char* ip : {"10.96.0.20", "10.244.0.10", "192.0.2.1"}) {
    for (Direction dir : {Direction::outbound, Direction::inbound}) {
      auto d = route(*snapshot, dir, sa(ip, 80), ports, node, true, ip_of("fd00:10:244::99"));
      EXPECT_EQ(d.kind, RouteKind::reject) << ip;
      EXPECT_EQ(d.reason, RejectReason::forbidden_destination) << ip;
    }
    EXPECT_NE(route(*snapshot, Direction::outbound, sa(ip, 80), ports, node, true, ip_of("10.244.0.99")).reason,
              RejectReason::forbidden_destination)
        << ip;
    // An explicit --forward listener dials the target the operator chose, from the node.
    EXPECT_NE(route(*snapshot, Direction::outbound, sa(ip, 80), ports, node, false, ip_of("fd00:10:244::99")).reason,
              RejectReason::forbidden_destination)
        << ip;
  }
  EXPECT_EQ(route(*snapshot, Direction::outbound, sa("fd00:10:96::20", 80), ports, node, true, ip_of("10.244.0.99")).reason,
            RejectReason::forbidden_destination);
}

}  // namespace router_test
}  // namespace dsproxy::proxy
