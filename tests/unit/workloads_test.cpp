// Which pods are in the mesh (istio.io/dataplane-mode on the pod or its namespace), their
// identity and protocol in the snapshot, and how the admin view and proxy-config show them.

#include <gtest/gtest.h>

#include "admin/config_dump.hpp"
#include "cli/proxy_config_view.hpp"
#include "config/k8s_decoder.hpp"
#include "snapshot/snapshot_builder.hpp"
#include "proxy/mesh.hpp"
#include "redirect/rule_renderer.hpp"
#include "sources/kubernetes/kubernetes_source.hpp"

namespace dsproxy::snapshot {
namespace workloads_test {  // named: unity builds put several test files in one translation unit

using namespace config;

net::IpAddress ip(const std::string& s) { return *net::IpAddress::parse(s); }

Pod pod(std::string ns, std::string name, std::string node, std::vector<std::string> ips, Labels labels = {},
        std::string sa = "default") {
  Pod p;
  p.ns = std::move(ns);
  p.name = std::move(name);
  p.node_name = std::move(node);
  for (const auto& s : ips) p.pod_ips.push_back(ip(s));
  p.labels = std::move(labels);
  p.service_account = std::move(sa);
  p.ready = true;
  return p;
}

const std::string kMode(config::kDataplaneModeLabel);

TEST(Workloads, MeshMembershipFollowsPodThenNamespaceLabel) {
  SnapshotBuilder b({"node-a"});
  b.upsert(Namespace{"mesh", {{kMode, "ambient"}}});
  b.upsert(Namespace{"plain", {}});
  b.upsert(pod("mesh", "in", "node-a", {"10.0.0.1", "fd00::1"}, {}, "sa-in"));
  b.upsert(pod("mesh", "out", "node-b", {"10.0.0.2"}, {{kMode, "none"}}));
  b.upsert(pod("plain", "opted", "node-b", {"10.0.0.3"}, {{kMode, "ambient"}}));
  b.upsert(pod("plain", "plain", "node-b", {"10.0.0.4"}));
  auto s = b.build();

  const Workload* in = s->workload(ip("fd00::1"));
  ASSERT_NE(in, nullptr);
  EXPECT_EQ(in, s->workload(ip("10.0.0.1")));  // one workload, both addresses
  EXPECT_EQ(in->protocol, WorkloadProtocol::HBONE);
  EXPECT_TRUE(in->local);
  EXPECT_EQ(in->identity("cluster.local"), "spiffe://cluster.local/ns/mesh/sa/sa-in");
  EXPECT_EQ(in->address(net::Family::v6), ip("fd00::1"));
  EXPECT_EQ(s->workload(ip("10.0.0.2"))->protocol, WorkloadProtocol::TCP);
  EXPECT_EQ(s->workload(ip("10.0.0.3"))->protocol, WorkloadProtocol::HBONE);
  EXPECT_FALSE(s->workload(ip("10.0.0.3"))->local);
  EXPECT_EQ(s->workload(ip("10.0.0.3"))->node, "node-b");
  EXPECT_EQ(s->workload(ip("10.0.0.4"))->protocol, WorkloadProtocol::TCP);
  EXPECT_EQ(s->workload(ip("10.9.9.9")), nullptr);
  EXPECT_EQ(s->workload_count(), 4u);
  ASSERT_EQ(s->workloads().size(), 4u);
  EXPECT_EQ(s->workloads()[0]->name, "in");  // sorted by namespace, name

  // Relabelling the namespace moves its pods in or out; pod labels still win.
  b.upsert(Namespace{"plain", {{kMode, "ambient"}}});
  b.upsert(Namespace{"mesh", {}});
  s = b.build();
  EXPECT_EQ(s->workload(ip("10.0.0.1"))->protocol, WorkloadProtocol::TCP);
  EXPECT_EQ(s->workload(ip("10.0.0.2"))->protocol, WorkloadProtocol::TCP);
  EXPECT_EQ(s->workload(ip("10.0.0.4"))->protocol, WorkloadProtocol::HBONE);

  b.erase(ObjectKind::namespace_, "", "plain");
  b.erase(ObjectKind::pod, "mesh", "in");
  s = b.build();
  EXPECT_EQ(s->workload(ip("10.0.0.4"))->protocol, WorkloadProtocol::TCP);
  EXPECT_EQ(s->workload(ip("10.0.0.3"))->protocol, WorkloadProtocol::HBONE);  // its own label
  EXPECT_EQ(s->workload(ip("10.0.0.1")), nullptr);
  EXPECT_EQ(s->workload(ip("fd00::1")), nullptr);
  EXPECT_EQ(s->workload_count(), 3u);
}

TEST(Workloads, HostNetworkPodsAreNotWorkloads) {
  SnapshotBuilder b({"node-a"});
  auto p = pod("kube-system", "host", "node-a", {"192.168.1.1"}, {{kMode, "ambient"}});
  p.host_network = true;
  b.upsert(std::move(p));
  EXPECT_EQ(b.build()->workload(ip("192.168.1.1")), nullptr);
}

TEST(Workloads, AnAddressTakenOverByANewPodStaysWithIt) {
  SnapshotBuilder b({"node-a"});
  b.upsert(pod("ns", "old", "node-a", {"10.0.0.1"}));
  b.build();
  b.upsert(pod("ns", "new", "node-a", {"10.0.0.1"}, {{kMode, "ambient"}}));
  b.erase(ObjectKind::pod, "ns", "old");
  auto s = b.build();
  ASSERT_NE(s->workload(ip("10.0.0.1")), nullptr);
  EXPECT_EQ(s->workload(ip("10.0.0.1"))->name, "new");
}

TEST(Workloads, ReplaceAllAppliesNamespacesFromAFile) {
  const auto objects = decode_objects(R"(
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: mesh}
spec: {nodeName: node-b, serviceAccountName: api}
status: {podIPs: [{ip: 10.0.0.7}]}
)", "test");
  ASSERT_EQ(objects.namespaces.size(), 1u);
  EXPECT_EQ(objects.namespaces[0].labels.at(kMode), "ambient");
  SnapshotBuilder b({"node-a"});
  b.replace_all(objects);
  auto s = b.build();
  ASSERT_NE(s->workload(ip("10.0.0.7")), nullptr);
  EXPECT_EQ(s->workload(ip("10.0.0.7"))->protocol, WorkloadProtocol::HBONE);
  EXPECT_EQ(s->workload(ip("10.0.0.7"))->service_account, "api");
  // The namespace gone from the next file: its pods leave the mesh.
  auto without = objects;
  without.namespaces.clear();
  b.replace_all(without);
  EXPECT_EQ(b.build()->workload(ip("10.0.0.7"))->protocol, WorkloadProtocol::TCP);
}

TEST(Workloads, ApiSourceKeepsOtherNodesPodsCompact) {
  auto p = pod("ns", "p", "node-b", {"10.0.0.1"}, {{kMode, "ambient"}, {"app", "x"}}, "sa");
  p.container_ports.push_back({"http", 80, "TCP"});
  sources::kubernetes::KubernetesSource::compact(p);
  EXPECT_EQ(p.labels, (Labels{{kMode, "ambient"}}));
  EXPECT_TRUE(p.container_ports.empty());
  EXPECT_EQ(p.service_account, "sa");
  EXPECT_EQ(p.node_name, "node-b");
  EXPECT_EQ(p.pod_ips.size(), 1u);
}

TEST(Workloads, ConfigDumpAndProxyConfigShowProtocolAndIdentity) {
  SnapshotBuilder b({"node-a"});
  b.upsert(Namespace{"mesh", {{kMode, "ambient"}}});
  b.upsert(pod("mesh", "server", "node-b", {"10.0.0.1", "fd00::1"}, {}, "echo"));
  b.upsert(pod("default", "sleep", "node-a", {"10.0.0.2"}));
  auto s = b.build();
  proxy::ProxyStats stats;
  proxy::ProxyOptions options;
  const std::string dump = admin::render_config_dump(admin::DumpContext{*s, options, stats});
  EXPECT_NE(dump.find(R"("identity":"spiffe://cluster.local/ns/mesh/sa/echo")"), std::string::npos) << dump;
  const std::string table = cli::workloads_table(dump);
  EXPECT_NE(table.find("NAMESPACE"), std::string::npos);
  EXPECT_NE(table.find("PROTOCOL"), std::string::npos);
  // Rows: default/sleep first, then mesh/server with both addresses.
  const auto sleep = table.find("default");
  const auto server = table.find("mesh");
  ASSERT_NE(sleep, std::string::npos);
  ASSERT_NE(server, std::string::npos);
  EXPECT_LT(sleep, server);
  EXPECT_NE(table.find("10.0.0.1,fd00::1"), std::string::npos) << table;
  EXPECT_NE(table.find("HBONE"), std::string::npos);
  EXPECT_NE(table.find("TCP"), std::string::npos);
  EXPECT_NE(cli::workloads_json(dump).find(R"("protocol":"HBONE")"), std::string::npos);
}

TEST(Workloads, TunnelOnlyFromALocalMeshPodToAnotherNodesMeshPod) {
  SnapshotBuilder b({"node-a"});
  b.upsert(Namespace{"mesh", {{kMode, "ambient"}}});
  b.upsert(pod("mesh", "client", "node-a", {"10.0.0.1", "fd00::1"}, {}, "client"));
  b.upsert(pod("mesh", "local-server", "node-a", {"10.0.0.2"}));
  b.upsert(pod("mesh", "remote-server", "node-b", {"10.0.1.2", "fd00:1::2"}, {}, "server"));
  b.upsert(pod("plain", "plain-client", "node-a", {"10.0.0.3"}));
  b.upsert(pod("plain", "plain-server", "node-b", {"10.0.1.3"}));
  auto s = b.build();
  const net::SocketAddress remote6{ip("fd00:1::2"), 9000};
  const auto plan = proxy::plan_tunnel(*s, ip("10.0.0.1"), remote6);
  ASSERT_TRUE(plan);
  EXPECT_EQ(plan->source_identity, "spiffe://cluster.local/ns/mesh/sa/client");
  EXPECT_EQ(plan->destination_identity, "spiffe://cluster.local/ns/mesh/sa/server");
  EXPECT_EQ(plan->target, remote6);  // the authority keeps the family the policy chose
  EXPECT_EQ(plan->outer, ip("fd00:1::2"));
  // Same node: no TLS. Not in the mesh (either end): plaintext. Not a pod: plaintext.
  EXPECT_FALSE(proxy::plan_tunnel(*s, ip("10.0.0.1"), {ip("10.0.0.2"), 9000}));
  EXPECT_FALSE(proxy::plan_tunnel(*s, ip("10.0.0.1"), {ip("10.0.1.3"), 9000}));
  EXPECT_FALSE(proxy::plan_tunnel(*s, ip("10.0.0.3"), {ip("10.0.1.2"), 9000}));
  EXPECT_FALSE(proxy::plan_tunnel(*s, ip("10.0.0.1"), {ip("10.9.9.9"), 9000}));
  EXPECT_FALSE(proxy::plan_tunnel(*s, ip("10.0.1.2"), {ip("10.0.0.1"), 9000}));  // a remote "client"
}

TEST(Workloads, HboneCaptureRuleComesBeforeTheInboundOne) {
  redirect::RedirectOptions o;
  const std::string off = redirect::render_iptables(net::Family::v4, o);
  EXPECT_EQ(off.find("15008"), std::string::npos);
  o.hbone_port = 15008;
  const std::string on = redirect::render_iptables(net::Family::v6, o);
  const auto hbone = on.find("-A DSPROXY_INBOUND -p tcp -m tcp --dport 15008 -m set --match-set DSPROXY_PODS6 dst -j TPROXY "
                             "--on-port 15008 --on-ip :: ");
  const auto inbound = on.find("-A DSPROXY_INBOUND -p tcp -m set --match-set DSPROXY_PODS6 dst -j TPROXY --on-port 15006");
  ASSERT_NE(hbone, std::string::npos) << on;
  ASSERT_NE(inbound, std::string::npos) << on;
  EXPECT_LT(hbone, inbound);
}

}  // namespace
}  // namespace dsproxy::snapshot
