// Issue 16: the Service semantics kube-proxy users rely on, one table per rule, for both families
// and through the family policy (fallback and Happy Eyeballs choose among what the rules leave).
//   endpoint conditions (ready / serving / terminating, the terminating fallback),
//   internalTrafficPolicy Local, sessionAffinity ClientIP, topology hints.

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "snapshot/cluster_snapshot.hpp"
#include "config/k8s_decoder.hpp"
#include "proxy/endpoint_picker.hpp"
#include "proxy/session_affinity.hpp"

namespace dsproxy {
namespace service_semantics_test {  // named: unity builds put several test files in one translation unit

using snapshot::ClusterSnapshot;
using snapshot::ServiceCluster;
using Addrs = std::set<std::string>;

net::IpAddress ip(const char* s) { return *net::IpAddress::parse(s); }
net::SocketAddress sa(const char* s, std::uint16_t port) { return {ip(s), port}; }
net::IpAddress v4n(std::uint32_t x) {
  return net::IpAddress::v4({static_cast<std::uint8_t>(x >> 24), static_cast<std::uint8_t>(x >> 16),
                             static_cast<std::uint8_t>(x >> 8), static_cast<std::uint8_t>(x)});
}

// One slice endpoint: its address (the family picks the slice) and the YAML of its other fields.
struct Ep {
  const char* address;
  std::string fields;  // e.g. "conditions: {ready: false, serving: true, terminating: true}, nodeName: n2"
};

// A PreferDualStack Service t/web (10.96.0.10 and fd00:10:96::10, port 80 -> 8080) with the given
// extra spec lines and one slice per family holding `eps`.
std::string service_yaml(const std::vector<Ep>& eps, const std::string& spec_extra = "",
                         const std::string& family_policy = "PreferDualStack") {
  std::string y = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: t}\nspec:\n"
                  "  ipFamilyPolicy: " + family_policy + "\n  ipFamilies: [IPv4, IPv6]\n"
                  "  clusterIPs: [10.96.0.10, \"fd00:10:96::10\"]\n  ports: [{port: 80, targetPort: 8080}]\n" +
                  spec_extra;
  for (const char* type : {"IPv4", "IPv6"}) {
    y += std::string("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-") +
         (type[3] == '4' ? "4" : "6") + ", namespace: t, labels: {kubernetes.io/service-name: web}}\n" +
         "addressType: " + type + "\nports: [{port: 8080}]\nendpoints:\n";
    for (const Ep& e : eps) {
      const bool v4 = ip(e.address).is_v4();
      if (v4 != (type[3] == '4')) continue;
      y += std::string("- {addresses: [\"") + e.address + "\"]" + (e.fields.empty() ? "" : ", " + e.fields) + "}\n";
    }
  }
  return y;
}

std::shared_ptr<const ClusterSnapshot> build(const std::string& yaml, const std::string& node = "n1",
                                             const std::string& zone = "") {
  ClusterSnapshot::Options o;
  o.node_name = node;
  o.zone = zone;
  return ClusterSnapshot::build(config::decode_objects(yaml), o);
}

const ServiceCluster& web(const ClusterSnapshot& s) { return *s.find_cluster(sa("10.96.0.10", 80)); }

// Every endpoint 200 picks reach when dialling a ClusterIP of `dialled` (first endpoint of each pick).
Addrs picked(const ServiceCluster& c, net::Family dialled) {
  proxy::OutlierDetector outliers;
  proxy::EndpointPicker picker(outliers, 7);
  Addrs out;
  for (int i = 0; i < 200; ++i)
    if (auto p = picker.pick(c, nullptr, dialled, proxy::Clock::now())) out.insert(p->endpoints[0]->address.ip.to_string());
  return out;
}

bool port_open(const ClusterSnapshot& s, const char* vip) {
  for (const auto& v : s.vip_ports())
    if (v.vip == ip(vip)) return std::find(v.open_ports.begin(), v.open_ports.end(), 80) != v.open_ports.end();
  return false;
}

const std::string kTerm = "conditions: {ready: false, serving: true, terminating: true}";
const std::string kGone = "conditions: {ready: false, serving: false, terminating: true}";
const std::string kUnready = "conditions: {ready: false}";

struct Row {
  const char* what;
  std::vector<Ep> eps;
  Addrs dial_v4;  // what a client dialling the IPv4 ClusterIP reaches (empty: refused)
  Addrs dial_v6;
  std::string spec = "";
  std::string node = "n1";
  std::string zone = "";
};

void run_table(const std::vector<Row>& rows) {
  for (const Row& r : rows) {
    SCOPED_TRACE(r.what);
    const auto s = build(service_yaml(r.eps, r.spec), r.node, r.zone);
    const auto& c = web(*s);
    EXPECT_EQ(picked(c, net::Family::v4), r.dial_v4);
    EXPECT_EQ(picked(c, net::Family::v6), r.dial_v6);
    // The redirect rules refuse exactly the ClusterIPs nothing would be picked for.
    EXPECT_EQ(port_open(*s, "10.96.0.10"), !r.dial_v4.empty());
    EXPECT_EQ(port_open(*s, "fd00:10:96::10"), !r.dial_v6.empty());
    EXPECT_EQ(c.serves(net::Family::v4), !r.dial_v4.empty());
    EXPECT_EQ(c.serves(net::Family::v6), !r.dial_v6.empty());
  }
}

// ------------------------------------------------------------------ 1. endpoint conditions

TEST(EndpointConditions, DecodedWithApiDefaults) {
  const auto o = config::decode_objects(service_yaml({{"10.0.0.1", ""},
                                                      {"10.0.0.2", kUnready},
                                                      {"10.0.0.3", kTerm},
                                                      {"10.0.0.4", "conditions: {ready: true, terminating: true}"}}));
  const auto& e = o.endpoint_slices.at(0).endpoints;
  ASSERT_EQ(e.size(), 4u);
  EXPECT_TRUE(e[0].ready && e[0].serving && !e[0].terminating) << "absent: ready, serving = ready, not terminating";
  EXPECT_TRUE(!e[1].ready && !e[1].serving && !e[1].terminating) << "absent serving = ready (false)";
  EXPECT_TRUE(!e[2].ready && e[2].serving && e[2].terminating);
  EXPECT_TRUE(e[3].ready && e[3].serving && e[3].terminating);
}

TEST(EndpointConditions, TableBothFamiliesThroughFamilyPolicy) {
  run_table({
      {"ready endpoints only: the terminating one waits", {{"10.0.0.1", ""}, {"10.0.0.2", kTerm}, {"fd00::1", ""}, {"fd00::2", kTerm}},
       {"10.0.0.1"}, {"fd00::1"}},
      {"no ready endpoint: serving-terminating ones serve (rollout with preStop)",
       {{"10.0.0.2", kTerm}, {"10.0.0.3", kTerm}, {"10.0.0.4", kGone}, {"fd00::2", kTerm}, {"fd00::4", kUnready}},
       {"10.0.0.2", "10.0.0.3"}, {"fd00::2"}},
      {"neither ready nor serving: never chosen, refused",
       {{"10.0.0.4", kGone}, {"10.0.0.5", kUnready}, {"fd00::4", kGone}}, {}, {}},
      {"per family: IPv6 uses its own terminating endpoint before crossing to ready IPv4",
       {{"10.0.0.1", ""}, {"fd00::2", kTerm}}, {"10.0.0.1"}, {"fd00::2"}},
      {"IPv6 with nothing usable falls back to IPv4's terminating endpoint (PreferDualStack)",
       {{"10.0.0.2", kTerm}, {"fd00::4", kGone}}, {"10.0.0.2"}, {"10.0.0.2"}},
      {"ready: false with serving absent is not serving",
       {{"10.0.0.2", "conditions: {ready: false, terminating: true}"}}, {}, {}},
  });
}

TEST(EndpointConditions, FallbackNeverDoesNotCrossToTheOtherFamilysTerminatingEndpoint) {
  const auto s = build(service_yaml({{"10.0.0.2", kTerm}}));
  EXPECT_EQ(picked(web(*s), net::Family::v6), Addrs{"10.0.0.2"});
  auto o = config::decode_objects(service_yaml({{"10.0.0.2", kTerm}}));
  o.services[0].annotations["dsproxy.io/family-fallback"] = "never";
  const auto never = ClusterSnapshot::build(o, {.node_name = "n1"});
  EXPECT_EQ(picked(web(*never), net::Family::v4), Addrs{"10.0.0.2"});
  EXPECT_TRUE(picked(web(*never), net::Family::v6).empty());
}

TEST(EndpointConditions, HappyEyeballsPartnerMustBeEligibleInItsFamily) {
  // One dual-stack pod: IPv4 ready, IPv6 terminating while another IPv6 endpoint is ready, so the
  // pod's IPv6 address is not eligible and is not raced.
  const std::string pod = ", targetRef: {kind: Pod, name: p1}";
  const auto s = build(service_yaml({{"10.0.0.1", "conditions: {}" + pod}, {"fd00::1", kTerm + pod}, {"fd00::9", ""}}));
  proxy::OutlierDetector outliers;
  proxy::EndpointPicker picker(outliers, 1);
  auto p = picker.pick(web(*s), nullptr, net::Family::v4, proxy::Clock::now());
  ASSERT_TRUE(p);
  EXPECT_EQ(p->count, 1);
}

constexpr const char* kPods = R"(
apiVersion: v1
kind: Service
metadata: {name: web, namespace: t}
spec:
  ipFamilyPolicy: PreferDualStack
  clusterIPs: [10.96.0.10, "fd00:10:96::10"]
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: t, labels: {app: web}, deletionTimestamp: "2026-01-01T00:00:00Z"}
spec: {nodeName: n1}
status: {podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}], conditions: [{type: Ready, status: "True"}]}
)";

TEST(EndpointConditions, SelectorPodWithDeletionTimestampIsDrainingAndServesWhenAlone) {
  const auto s = build(kPods);
  const auto& c = web(*s);
  ASSERT_EQ(c.endpoints.size(), 2u);
  for (const auto& e : c.endpoints) {
    EXPECT_FALSE(e.ready);
    EXPECT_TRUE(e.serving && e.terminating);
    EXPECT_EQ(e.health(), "DRAINING");
    EXPECT_TRUE(e.eligible);
  }
  EXPECT_EQ(picked(c, net::Family::v6), Addrs{"fd00::1"});

  auto o = config::decode_objects(kPods);
  auto fresh = o.pods[0];
  fresh.name = "new";
  fresh.terminating = false;
  fresh.pod_ips = {ip("10.0.0.2"), ip("fd00::2")};
  o.pods.push_back(fresh);
  const auto both = ClusterSnapshot::build(o, {.node_name = "n1"});
  EXPECT_EQ(picked(web(*both), net::Family::v4), Addrs{"10.0.0.2"});
  EXPECT_EQ(picked(web(*both), net::Family::v6), Addrs{"fd00::2"});
  EXPECT_EQ(web(*both).endpoints[0].health(), "DRAINING");
  EXPECT_EQ(web(*both).endpoints[1].health(), "HEALTHY");
}

TEST(EndpointConditions, PublishNotReadyAddressesMakesUnreadyPodsEndpoints) {
  auto o = config::decode_objects(kPods);
  o.pods[0].terminating = false;
  o.pods[0].ready = false;
  EXPECT_TRUE(picked(web(*ClusterSnapshot::build(o, {.node_name = "n1"})), net::Family::v4).empty());
  o.services[0].publish_not_ready_addresses = true;
  EXPECT_EQ(picked(web(*ClusterSnapshot::build(o, {.node_name = "n1"})), net::Family::v4), Addrs{"10.0.0.1"});
}

TEST(EndpointConditions, PublishNotReadyAddressesKeepsATerminatingPodReady) {
  // The EndpointSlice controller writes ready = publishNotReadyAddresses || (serving && !terminating)
  // and serving = the pod's readiness: with the flag a terminating pod stays ready and is picked
  // alongside the others, not only once they are all gone.
  auto o = config::decode_objects(kPods);
  auto fresh = o.pods[0];
  fresh.name = "new";
  fresh.terminating = false;
  fresh.pod_ips = {ip("10.0.0.2"), ip("fd00::2")};
  o.pods.push_back(fresh);
  o.services[0].publish_not_ready_addresses = true;
  const auto s = ClusterSnapshot::build(o, {.node_name = "n1"});
  EXPECT_EQ(picked(web(*s), net::Family::v4), (Addrs{"10.0.0.1", "10.0.0.2"}));
  EXPECT_EQ(web(*s).endpoints[0].health(), "HEALTHY");
  EXPECT_TRUE(web(*s).endpoints[0].terminating);
  // serving is the pod's own readiness, not forced by the flag.
  o.pods[1].ready = false;
  const auto unready = ClusterSnapshot::build(o, {.node_name = "n1"});
  EXPECT_TRUE(web(*unready).endpoints[1].ready);
  EXPECT_FALSE(web(*unready).endpoints[1].serving);
}

// ------------------------------------------------------------------ 2. internalTrafficPolicy

TEST(InternalTrafficPolicy, DecodesAndRejectsUnknownValues) {
  EXPECT_EQ(config::decode_objects(service_yaml({}, "  internalTrafficPolicy: Local\n")).services[0].internal_traffic_policy,
            config::TrafficPolicy::Local);
  EXPECT_THROW(config::decode_objects(service_yaml({}, "  internalTrafficPolicy: Nearby\n")), config::ConfigError);
}

TEST(InternalTrafficPolicy, LocalTableBothFamilies) {
  const std::string local = "  internalTrafficPolicy: Local\n";
  run_table({
      {"Cluster: every node's ready endpoints", {{"10.0.0.1", "nodeName: n1"}, {"10.0.0.2", "nodeName: n2"}, {"fd00::2", "nodeName: n2"}},
       {"10.0.0.1", "10.0.0.2"}, {"fd00::2"}},
      {"Local: only this node's", {{"10.0.0.1", "nodeName: n1"}, {"10.0.0.2", "nodeName: n2"}, {"fd00::1", "nodeName: n1"}, {"fd00::2", "nodeName: n2"}},
       {"10.0.0.1"}, {"fd00::1"}, local},
      {"Local, none on this node: refused, never another node's",
       {{"10.0.0.2", "nodeName: n2"}, {"fd00::2", "nodeName: n2"}, {"10.0.0.3", ""}}, {}, {}, local},
      {"Local: this node's serving-terminating endpoint before another node's ready one",
       {{"10.0.0.1", kTerm + ", nodeName: n1"}, {"10.0.0.2", "nodeName: n2"}}, {"10.0.0.1"}, {"10.0.0.1"}, local},
      {"Local: only IPv6 is local, IPv4 ClusterIP falls back to it (PreferDualStack)",
       {{"10.0.0.2", "nodeName: n2"}, {"fd00::1", "nodeName: n1"}}, {"fd00::1"}, {"fd00::1"}, local},
      {"Local on another node's proxy", {{"10.0.0.1", "nodeName: n1"}}, {}, {}, local, "n2"},
      {"Local, unready local endpoint: refused",
       {{"10.0.0.1", kUnready + ", nodeName: n1"}, {"10.0.0.2", "nodeName: n2"}}, {}, {}, local},
  });
}

TEST(InternalTrafficPolicy, SelectorPodsUseSpecNodeName) {
  auto o = config::decode_objects(kPods);
  o.pods[0].terminating = false;
  o.services[0].internal_traffic_policy = config::TrafficPolicy::Local;
  EXPECT_EQ(picked(web(*ClusterSnapshot::build(o, {.node_name = "n1"})), net::Family::v4), Addrs{"10.0.0.1"});
  EXPECT_TRUE(picked(web(*ClusterSnapshot::build(o, {.node_name = "n2"})), net::Family::v4).empty());
}

// ------------------------------------------------------------------ 4. topology hints

TEST(TopologyHints, DecodesZoneAndHints) {
  const auto o = config::decode_objects(service_yaml({{"10.0.0.1", "zone: a, hints: {forZones: [{name: a}, {name: b}]}"}}));
  const auto& e = o.endpoint_slices.at(0).endpoints.at(0);
  EXPECT_EQ(e.zone, "a");
  EXPECT_EQ(e.zone_hints, (std::vector<std::string>{"a", "b"}));
  EXPECT_THROW(config::decode_objects(service_yaml({{"10.0.0.1", "hints: {forZones: [{}]}"}})), config::ConfigError);
}

TEST(TopologyHints, TableBothFamilies) {
  const std::string ha = "zone: a, hints: {forZones: [{name: a}]}";
  const std::string hb = "zone: b, hints: {forZones: [{name: b}]}";
  const std::string pc = "  trafficDistribution: PreferClose\n";
  run_table({
      {"every ready endpoint hinted, some for this zone: only those",
       {{"10.0.0.1", ha}, {"10.0.0.2", hb}, {"fd00::1", ha}, {"fd00::2", hb}}, {"10.0.0.1"}, {"fd00::1"}, pc, "n1", "a"},
      {"the other zone's proxy", {{"10.0.0.1", ha}, {"10.0.0.2", hb}}, {"10.0.0.2"}, {"10.0.0.2"}, pc, "n1", "b"},
      {"one ready endpoint without hints: all", {{"10.0.0.1", ha}, {"10.0.0.2", "zone: b"}}, {"10.0.0.1", "10.0.0.2"},
       {"10.0.0.1", "10.0.0.2"}, "", "n1", "a"},
      {"no hint for this zone: all", {{"10.0.0.1", hb}, {"10.0.0.2", hb}}, {"10.0.0.1", "10.0.0.2"},
       {"10.0.0.1", "10.0.0.2"}, pc, "n1", "c"},
      {"zone unknown: all", {{"10.0.0.1", ha}, {"10.0.0.2", hb}}, {"10.0.0.1", "10.0.0.2"}, {"10.0.0.1", "10.0.0.2"}, pc},
      {"this zone's endpoints turn unready (the zone empties): the rest take over",
       {{"10.0.0.1", ha + ", " + kUnready}, {"10.0.0.2", hb}, {"10.0.0.3", hb}}, {"10.0.0.2", "10.0.0.3"},
       {"10.0.0.2", "10.0.0.3"}, pc, "n1", "a"},
      {"PreferClose without hints in the file: hinted by own zone, as the controller would",
       {{"10.0.0.1", "zone: a"}, {"10.0.0.2", "zone: b"}, {"fd00::1", "zone: a"}, {"fd00::2", "zone: b"}}, {"10.0.0.1"},
       {"fd00::1"}, pc, "n1", "a"},
      {"no trafficDistribution and no hints: all", {{"10.0.0.1", "zone: a"}, {"10.0.0.2", "zone: b"}},
       {"10.0.0.1", "10.0.0.2"}, {"10.0.0.1", "10.0.0.2"}, "", "n1", "a"},
      {"IPv6 hinted for this zone, IPv4 not at all: per family",
       {{"10.0.0.1", "zone: a"}, {"10.0.0.2", "zone: b"}, {"fd00::1", ha}, {"fd00::2", hb}}, {"10.0.0.1", "10.0.0.2"},
       {"fd00::1"}, "", "n1", "a"},
  });
}

TEST(TopologyHints, ZoneFromFlagElseNodeLabel) {
  const std::string y = service_yaml({{"10.0.0.1", "zone: a, hints: {forZones: [{name: a}]}"},
                                      {"10.0.0.2", "zone: b, hints: {forZones: [{name: b}]}"}}) +
                        "---\napiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {topology.kubernetes.io/zone: b}}\n";
  EXPECT_EQ(build(y, "n1")->zone(), "b");
  EXPECT_EQ(picked(web(*build(y, "n1")), net::Family::v4), Addrs{"10.0.0.2"});
  EXPECT_EQ(build(y, "n1", "a")->zone(), "a") << "--zone wins over the label";
  EXPECT_EQ(picked(web(*build(y, "n1", "a")), net::Family::v4), Addrs{"10.0.0.1"});
  EXPECT_EQ(build(y, "n9")->zone(), "") << "another node's label is not ours";
}

TEST(TopologyHints, PreferCloseHintsEachReadyEndpointWithAZone) {
  // As the controller: every ready endpoint that has a zone gets a hint for it; a not-ready one
  // without a zone (or one of the other family) does not stop the others from being hinted.
  const std::string pc = "  trafficDistribution: PreferClose\n";
  run_table({
      {"an unready endpoint without a zone does not disable topology",
       {{"10.0.0.1", "zone: a"}, {"10.0.0.2", "zone: b"}, {"10.0.0.3", kUnready}}, {"10.0.0.1"}, {"10.0.0.1"}, pc,
       "n1", "a"},
      {"IPv6 without zones does not disable IPv4's topology",
       {{"10.0.0.1", "zone: a"}, {"10.0.0.2", "zone: b"}, {"fd00::1", ""}, {"fd00::2", ""}}, {"10.0.0.1"},
       {"fd00::1", "fd00::2"}, pc, "n1", "a"},
      {"a ready endpoint without a zone: no topology (it has no hint)",
       {{"10.0.0.1", "zone: a"}, {"10.0.0.2", "zone: b"}, {"10.0.0.3", ""}}, {"10.0.0.1", "10.0.0.2", "10.0.0.3"},
       {"10.0.0.1", "10.0.0.2", "10.0.0.3"}, pc, "n1", "a"},
  });
}

TEST(TopologyHints, SelectorPodsTakeTheirNodesZone) {
  // Without slices the endpoints are what the controller would write, zone included: the
  // topology.kubernetes.io/zone label of the pod's Node.
  const std::string y = std::string(R"(
apiVersion: v1
kind: Service
metadata: {name: web, namespace: t}
spec:
  ipFamilyPolicy: SingleStack
  clusterIPs: [10.96.0.10]
  selector: {app: web}
  trafficDistribution: PreferClose
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: pa, namespace: t, labels: {app: web}}
spec: {nodeName: na}
status: {podIPs: [{ip: 10.0.0.1}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: pb, namespace: t, labels: {app: web}}
spec: {nodeName: nb}
status: {podIPs: [{ip: 10.0.0.2}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Node
metadata: {name: na, labels: {topology.kubernetes.io/zone: a}}
---
apiVersion: v1
kind: Node
metadata: {name: nb, labels: {topology.kubernetes.io/zone: b}}
)");
  const auto s = build(y, "na");
  ASSERT_EQ(s->zone(), "a");
  const auto& c = web(*s);
  ASSERT_EQ(c.endpoints.size(), 2u);
  EXPECT_EQ(c.endpoints[0].zone, "a");
  EXPECT_EQ(c.endpoints[1].zone, "b");
  EXPECT_EQ(picked(c, net::Family::v4), Addrs{"10.0.0.1"});
  EXPECT_EQ(picked(web(*build(y, "nb")), net::Family::v4), Addrs{"10.0.0.2"});
}

// ------------------------------------------------------------------ 3. sessionAffinity ClientIP

TEST(SessionAffinity, DecodesTimeoutWithDefaultAndRange) {
  auto svc = [](const std::string& extra) { return config::decode_objects(service_yaml({}, extra)).services.at(0); };
  EXPECT_EQ(svc("").session_affinity, config::SessionAffinity::None);
  EXPECT_EQ(svc("  sessionAffinity: ClientIP\n").affinity_timeout_s, 10800u);
  EXPECT_EQ(svc("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n").affinity_timeout_s, 60u);
  for (const char* bad : {"0", "86401", "-1", "ten"})
    EXPECT_THROW(svc(std::string("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: ") + bad + "}}\n"),
                 config::ConfigError)
        << bad;
  EXPECT_THROW(svc("  sessionAffinity: Cookie\n"), config::ConfigError);
}

// The values the API server accepts; a typo is an error naming the field, not a silent "no topology".
TEST(TopologyHints, TrafficDistributionDecodesOnlyTheApiServersValues) {
  auto svc = [](const std::string& extra) { return config::decode_objects(service_yaml({}, extra)).services.at(0); };
  for (const char* good : {"PreferClose", "PreferSameZone", "PreferSameNode"})
    EXPECT_EQ(svc(std::string("  trafficDistribution: ") + good + "\n").traffic_distribution, good);
  try {
    svc("  trafficDistribution: PreferCloze\n");
    ADD_FAILURE() << "a misspelt trafficDistribution was accepted";
  } catch (const config::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("spec.trafficDistribution"), std::string::npos) << e.what();
  }
}

class SessionAffinityTest : public ::testing::Test {
 protected:
  static std::string yaml(const std::string& v4_2 = "") {
    const std::string p = ", targetRef: {kind: Pod, name: ";
    return service_yaml({{"10.0.0.1", "conditions: {}" + p + "p1}"},
                         {"10.0.0.2", (v4_2.empty() ? std::string("conditions: {}") : v4_2) + p + "p2}"},
                         {"10.0.0.3", "conditions: {}" + p + "p3}"},
                         {"fd00::1", "conditions: {}" + p + "p1}"},
                         {"fd00::2", "conditions: {}" + p + "p2}"},
                         {"fd00::3", "conditions: {}" + p + "p3}"}},
                        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n");
  }
  std::string pick(const ServiceCluster& c, const char* client, net::Family f, proxy::Clock::time_point t,
                   std::span<const int> tried = {}) {
    auto p = pickers[n++ % 2].pick(c, states.current()->find(c), f, t, tried, ip(client));
    return p ? p->endpoints[0]->address.ip.to_string() : "";
  }
  proxy::OutlierDetector outliers;
  proxy::EndpointStates states;  // synced by the tests that need outlier state
  proxy::SessionAffinityTable table;
  // Two pickers (two workers) share one table: a client's connections land on either.
  proxy::EndpointPicker pickers[2] = {{outliers, 1, &table}, {outliers, 2, &table}};
  std::size_t n = 0;
  proxy::Clock::time_point now = proxy::Clock::now();
};

TEST_F(SessionAffinityTest, SameClientSameBackendAcrossWorkersPerFamily) {
  const auto s = build(yaml());
  for (const auto& [client, family] : std::vector<std::pair<const char*, net::Family>>{
           {"10.1.0.1", net::Family::v4}, {"10.1.0.2", net::Family::v4}, {"fd01::1", net::Family::v6}}) {
    const std::string first = pick(web(*s), client, family, now);
    ASSERT_FALSE(first.empty());
    for (int i = 0; i < 100; ++i) ASSERT_EQ(pick(web(*s), client, family, now + std::chrono::seconds(i % 20)), first);
  }
  // Without affinity the same client spreads.
  proxy::EndpointPicker plain(outliers, 3);
  Addrs seen;
  for (int i = 0; i < 50; ++i) seen.insert(plain.pick(web(*s), nullptr, net::Family::v4, now, {}, ip("10.1.0.1"))->endpoints[0]->address.ip.to_string());
  EXPECT_EQ(seen.size(), 3u);
  // Different clients are spread too (not all pinned to one pod).
  Addrs clients;
  for (int i = 0; i < 60; ++i) {
    const std::string c = "10.2.0." + std::to_string(i + 1);
    clients.insert(pick(web(*s), c.c_str(), net::Family::v4, now));
  }
  EXPECT_EQ(clients.size(), 3u);
}

TEST_F(SessionAffinityTest, MovesWhenThePinnedPodTurnsUnreadyAndSticksThere) {
  const auto s = build(yaml());
  std::string first;
  // Find a client pinned to 10.0.0.2.
  std::string client;
  for (int i = 1; i < 100 && client.empty(); ++i) {
    const std::string c = "10.3.0." + std::to_string(i);
    if (pick(web(*s), c.c_str(), net::Family::v4, now) == "10.0.0.2") client = c;
  }
  ASSERT_FALSE(client.empty());
  const auto unready = build(yaml(kUnready));
  const std::string moved = pick(web(*unready), client.c_str(), net::Family::v4, now);
  EXPECT_NE(moved, "10.0.0.2");
  for (int i = 0; i < 20; ++i) EXPECT_EQ(pick(web(*unready), client.c_str(), net::Family::v4, now), moved);
  // It stays on the new pod when the old one is back: affinity is to where it was last sent.
  EXPECT_EQ(pick(web(*s), client.c_str(), net::Family::v4, now), moved);
}

TEST_F(SessionAffinityTest, ExpiresAfterTimeoutSinceLastUse) {
  const auto s = build(yaml());
  pick(web(*s), "10.1.0.1", net::Family::v4, now);
  EXPECT_TRUE(table.lookup(web(*s).cluster_name, ip("10.1.0.1"), now + std::chrono::seconds(29)));
  pick(web(*s), "10.1.0.1", net::Family::v4, now + std::chrono::seconds(29));  // refreshed
  EXPECT_TRUE(table.lookup(web(*s).cluster_name, ip("10.1.0.1"), now + std::chrono::seconds(58)));
  EXPECT_FALSE(table.lookup(web(*s).cluster_name, ip("10.1.0.1"), now + std::chrono::seconds(59)));
  EXPECT_EQ(table.size(), 0u) << "an expired entry met by a lookup is dropped";
}

TEST_F(SessionAffinityTest, RetriesAndEjectionsMoveThePin) {
  const auto s = build(yaml());
  states.sync(s);
  const auto& c = web(*s);
  const std::string first = pick(c, "10.1.0.1", net::Family::v4, now);
  int first_backend = -1;
  for (std::size_t b = 0; b < c.backends.size(); ++b)
    if (c.endpoints[static_cast<std::size_t>(c.backends[b].v4)].address.ip.to_string() == first) first_backend = static_cast<int>(b);
  const int tried[] = {first_backend};
  const std::string retry = pick(c, "10.1.0.1", net::Family::v4, now, tried);
  EXPECT_NE(retry, first) << "a retry never goes back to the backend that failed";
  EXPECT_EQ(pick(c, "10.1.0.1", net::Family::v4, now), retry) << "the pin follows the connection's last pick";

  const auto& ep = c.endpoints[static_cast<std::size_t>(c.backends[0].v4)];
  for (std::uint32_t i = 0; i < outliers.options().consecutive_failures; ++i) outliers.record_failure((*states.current()->find(c))[static_cast<std::size_t>(c.backends[0].v4)], now);
  table.remember(c.cluster_name, ip("10.1.0.9"), ep.address, std::chrono::seconds(30), now);
  EXPECT_NE(pick(c, "10.1.0.9", net::Family::v4, now), ep.address.ip.to_string()) << "an ejected pin is not honoured";
}

TEST_F(SessionAffinityTest, PinToTheOtherFamilyHoldsThePodInTheDialledFamily) {
  // A client that fell back to IPv6 (its pin is an IPv6 address) returns to the same pod, by its
  // IPv4 address, once IPv4 serves again: the pin names a backend (pod), never a family switch.
  const auto s = build(yaml());
  table.remember(web(*s).cluster_name, ip("10.1.0.1"), sa("fd00::2", 8080), std::chrono::seconds(30), now);
  for (int i = 0; i < 20; ++i) ASSERT_EQ(pick(web(*s), "10.1.0.1", net::Family::v4, now), "10.0.0.2") << i;
}

TEST(SessionAffinityTable, BoundedEvictsLeastRecentlyUsedAndIsThreadSafe) {
  proxy::SessionAffinityTable t(64);
  const auto now = proxy::Clock::now();
  for (int i = 0; i < 1000; ++i) {
    const net::IpAddress client = v4n(0x0a000000u + static_cast<std::uint32_t>(i));
    t.remember("c", client, sa("10.0.0.1", 80), std::chrono::seconds(60), now);
  }
  EXPECT_LE(t.size(), t.capacity());
  EXPECT_TRUE(t.lookup("c", v4n(0x0a000000u + 999), now)) << "the newest stays";
  EXPECT_FALSE(t.lookup("c", v4n(0x0a000000u), now)) << "the oldest went";
  EXPECT_FALSE(t.lookup("other", v4n(0x0a000000u + 999), now)) << "keyed by cluster too";

  proxy::SessionAffinityTable shared;
  std::vector<std::thread> threads;
  for (int th = 0; th < 4; ++th)
    threads.emplace_back([&, th] {
      for (int i = 0; i < 5000; ++i) {
        const net::IpAddress client = v4n(0x0b000000u + static_cast<std::uint32_t>(i % 500));
        shared.remember("c", client, sa(th % 2 ? "10.0.0.1" : "10.0.0.2", 80), std::chrono::seconds(60), now);
        (void)shared.lookup("c", client, now);
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(shared.size(), 500u);
}

}  // namespace service_semantics_test
}  // namespace dsproxy
