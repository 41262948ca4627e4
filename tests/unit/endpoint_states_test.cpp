// The proxy's runtime endpoint state: keyed by address, kept across snapshots, freed when gone.

#include "proxy/endpoint_states.hpp"

#include <gtest/gtest.h>

#include "config/k8s_decoder.hpp"

namespace dsproxy::proxy {
namespace endpoint_states_test {  // named: unity builds put several test files in one translation unit

using snapshot::ClusterSnapshot;

net::SocketAddress sa(const char* ip, std::uint16_t port) { return {*net::IpAddress::parse(ip), port}; }

// Two Services whose endpoints share the pod address 10.0.0.1:8080; `extra` adds one to web.
std::string cluster_yaml(const std::string& extra = "") {
  return R"(
apiVersion: v1
kind: Service
metadata: {name: web, namespace: t}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: t}
spec: {clusterIP: 10.96.0.11, ports: [{port: 81}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: t, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.0.0.1]}
)" + extra + R"(
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: t, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.0.0.1]}
)";
}

std::shared_ptr<const ClusterSnapshot> build(const std::string& yaml) {
  return ClusterSnapshot::build(config::decode_objects(yaml), {.node_name = "n1"});
}

EndpointState* state_of(const EndpointStates& states, const ClusterSnapshot& s, const char* vip, std::uint16_t port,
                        const char* endpoint) {
  const auto* c = s.find_cluster(sa(vip, port));
  if (!c) return nullptr;
  const auto* cs = states.current()->find(*c);
  if (!cs) return nullptr;
  for (std::size_t i = 0; i < c->endpoints.size(); ++i)
    if (c->endpoints[i].address.to_string() == endpoint) return &(*cs)[i];
  return nullptr;
}

TEST(EndpointStates, StateIsPerAddressAndSurvivesRebuilds) {
  EndpointStates states;
  const auto a = build(cluster_yaml());
  states.sync(a);
  EndpointState* web = state_of(states, *a, "10.96.0.10", 80, "10.0.0.1:8080");
  ASSERT_NE(web, nullptr);
  EXPECT_EQ(web, state_of(states, *a, "10.96.0.11", 81, "10.0.0.1:8080")) << "one address, one state";
  web->ejections = 3;
  web->active = 2;

  const auto b = build(cluster_yaml("- {addresses: [10.0.0.2]}"));
  states.sync(b);
  EXPECT_EQ(state_of(states, *b, "10.96.0.10", 80, "10.0.0.1:8080"), web) << "a rebuilt cluster keeps its states";
  EXPECT_EQ(web->ejections.load(), 3u);
  EXPECT_EQ(web->active.load(), 2u);
  ASSERT_NE(state_of(states, *b, "10.96.0.10", 80, "10.0.0.2:8080"), nullptr);
  EXPECT_EQ(states.tracked_addresses(), 2u);
}

TEST(EndpointStates, GoneAddressesAreFreedAfterOneSyncOfGrace) {
  EndpointStates states;
  const auto a = build(cluster_yaml("- {addresses: [10.0.0.2]}"));
  states.sync(a);
  const auto* old_web = a->find_cluster(sa("10.96.0.10", 80));
  EXPECT_EQ(states.tracked_addresses(), 2u);

  const auto b = build(cluster_yaml());  // 10.0.0.2 is gone
  states.sync(b);
  // A connection that loaded `a` just before the publish still finds its cluster's states.
  EXPECT_NE(states.current()->find(*old_web), nullptr);
  const auto c = build(cluster_yaml());
  states.sync(c);
  EXPECT_EQ(states.current()->find(*old_web), nullptr) << "retired clusters leave the index after one sync";
  const auto d = build(cluster_yaml());
  states.sync(d);
  EXPECT_EQ(states.tracked_addresses(), 1u) << "the state of 10.0.0.2:8080 is freed";

  // A relayed connection that still holds a state keeps it (and the registry entry) alive.
  const auto* cs = states.current()->find(*d->find_cluster(sa("10.96.0.10", 80)));
  ASSERT_NE(cs, nullptr);
  auto held = cs->share(0);
  held->active = 1;
  const auto empty = build("");
  for (int i = 0; i < 3; ++i) states.sync(i == 0 ? empty : build(""));
  EXPECT_EQ(states.tracked_addresses(), 1u);
  held.reset();
  states.sync(build(""));
  EXPECT_EQ(states.tracked_addresses(), 0u);
}

TEST(EndpointStates, IndexNeverGoesBackToAnOlderSnapshot) {
  EndpointStates states;
  const auto older = build(cluster_yaml());
  const auto newer = build(cluster_yaml("- {addresses: [10.0.0.2]}"));
  states.sync(newer);
  EXPECT_EQ(states.index_for(older), states.current());
  EXPECT_EQ(states.current()->find(*older->find_cluster(sa("10.96.0.10", 80))), nullptr);
  EXPECT_NE(states.current()->find(*newer->find_cluster(sa("10.96.0.10", 80))), nullptr);
}

}  // namespace
}  // namespace dsproxy::proxy
