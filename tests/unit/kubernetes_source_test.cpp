// The Kubernetes source end to end inside the process: the fake API server (TLS, LIST + WATCH),
// the six reflectors, the decoder, the control plane and the SnapshotStore. What a node sees:
// only its own pods and Node, every Service and slice, events applied, bad objects skipped,
// a relist after 410 applying the difference in a few builds, readiness only after the sync.

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/json/parse.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <thread>

#include "daemon/control_plane.hpp"
#include "fake_apiserver/fake_api_server.hpp"
#include "sources/kubernetes/kubernetes_source.hpp"

namespace dsproxy::sources::kubernetes {
namespace kubernetes_source_test {  // named: unity builds put several test files in one translation unit

namespace json = boost::json;
using namespace std::chrono_literals;
using fake_api::FakeApiServer;

json::object obj(const std::string& text) { return json::parse(text).as_object(); }

json::object service(const std::string& name, const std::string& ip) {
  return obj(R"({"metadata":{"name":")" + name + R"(","namespace":"demo"},"spec":{"clusterIP":")" + ip +
             R"(","ipFamilies":["IPv4"],"ports":[{"port":80,"targetPort":8080}]}})");
}
json::object slice(const std::string& name, const std::string& service, const std::vector<std::string>& ips,
                   bool ready = true) {
  std::string endpoints;
  for (const auto& ip : ips)
    endpoints += std::string(endpoints.empty() ? "" : ",") + R"({"addresses":[")" + ip +
                 R"("],"conditions":{"ready":)" + (ready ? "true" : "false") + "}}";
  return obj(R"({"metadata":{"name":")" + name + R"(","namespace":"demo","labels":{"kubernetes.io/service-name":")" +
             service + R"("}},"addressType":"IPv4","endpoints":[)" + endpoints +
             R"(],"ports":[{"port":8080,"protocol":"TCP"}]})");
}
json::object pod(const std::string& name, const std::string& node, const std::string& ip) {
  return obj(R"({"metadata":{"name":")" + name + R"(","namespace":"demo"},"spec":{"nodeName":")" + node +
             R"("},"status":{"podIPs":[{"ip":")" + ip + R"("}],"conditions":[{"type":"Ready","status":"True"}]}})");
}
json::object node(const std::string& name, const std::string& zone) {
  return obj(R"({"metadata":{"name":")" + name + R"(","labels":{"topology.kubernetes.io/zone":")" + zone + R"("}}})");
}

bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds limit = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

struct NoRunner : redirect::CommandRunner {
  redirect::CommandResult run(const redirect::Command&) override { return {}; }
};

class KubernetesSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake_api::FakeApiServerOptions options;
    options.dir = std::filesystem::temp_directory_path() /
                  ("dsproxy-k8s-source-" + std::to_string(::getpid()) + "-" +
                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
    server = std::make_unique<FakeApiServer>(options);
    server->start();
  }
  void TearDown() override {
    if (cp) cp->stop();
    cp.reset();
    server->stop();
    std::filesystem::remove_all(server->kubeconfig_file().parent_path());
  }
  void start() {
    daemon::ControlPlaneOptions options;
    options.snapshot.node_name = "kind-worker";
    cp = std::make_unique<daemon::ControlPlane>(std::move(options), store, runner, daemon::ControlPlane::Callbacks{});
    KubernetesSourceOptions k;
    k.server = kubeconfig_config(server->kubeconfig_file().string());
    k.node_name = "kind-worker";
    k.reflector.backoff = BackoffPolicy{20ms, 200ms, 2.0, 0.2};
    k.reflector.log_interval = 0ms;
    k.reflector.absent_retry = absent_retry;
    k.reflector.client.connect_timeout = 2s;
    k.reflector.client.response_timeout = 5s;
    auto s = std::make_unique<KubernetesSource>(cp->io(), std::move(k), *cp);
    source = s.get();
    cp->add_source(std::move(s));
    cp->start();
  }
  std::chrono::milliseconds absent_retry{60'000};
  const snapshot::ServiceCluster* cluster(const char* ip) const {
    return store.current()->find_cluster({*net::IpAddress::parse(ip), 80});
  }
  std::size_t endpoints(const char* ip) const {
    const auto* c = cluster(ip);
    return c ? c->endpoints.size() : 0;
  }
  // How many items the last LIST of `resource` returned (the snapshot keeps no objects to count).
  std::uint64_t listed(std::string_view resource) const {
    const auto status = source->status();
    for (const auto& r : status.at("reflectors").as_array())
      if (r.as_object().at("resource").as_string() == resource)
        return r.as_object().at("last_list_items").to_number<std::uint64_t>();
    return 0;
  }
  std::uint64_t decode_errors() const { return source->status().at("decodeErrors").to_number<std::uint64_t>(); }

  std::unique_ptr<FakeApiServer> server;
  snapshot::SnapshotStore store;
  NoRunner runner;
  std::unique_ptr<daemon::ControlPlane> cp;
  KubernetesSource* source = nullptr;
};

TEST_F(KubernetesSourceTest, SyncsThisNodesViewAndFollowsEvents) {
  server->upsert("services", service("web", "10.96.0.10"));
  server->upsert("endpointslices", slice("web-1", "web", {"10.244.0.5"}));
  server->upsert("pods", pod("here", "kind-worker", "10.244.0.5"));
  server->upsert("pods", pod("there", "kind-worker2", "10.244.1.5"));
  server->upsert("nodes", node("kind-worker", "zone-a"));
  server->upsert("nodes", node("kind-worker2", "zone-b"));
  start();
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));
  EXPECT_TRUE(source->synced());
  EXPECT_EQ(endpoints("10.96.0.10"), 1u);
  EXPECT_EQ(store.current()->node_pods().size(), 1u);
  // Every node's pods are watched (HBONE needs the destination's identity), only this node's are
  // its pods; another node's is a workload, compacted.
  EXPECT_EQ(listed("pods"), 2u);
  ASSERT_NE(store.current()->workload(*net::IpAddress::parse("10.244.1.5")), nullptr);
  EXPECT_FALSE(store.current()->workload(*net::IpAddress::parse("10.244.1.5"))->local);
  EXPECT_EQ(store.current()->workload(*net::IpAddress::parse("10.244.1.5"))->protocol,
            snapshot::WorkloadProtocol::TCP);
  EXPECT_EQ(store.current()->zone(), "zone-a");
  ASSERT_EQ(listed("nodes"), 1u) << "only this node's Node";

  server->upsert("endpointslices", slice("web-1", "web", {"10.244.0.5", "10.244.0.6"}));
  EXPECT_TRUE(wait_for([&] { return endpoints("10.96.0.10") == 2; }));
  server->upsert("services", service("api", "10.96.0.11"));
  EXPECT_TRUE(wait_for([&] { return cluster("10.96.0.11") != nullptr; }));
  server->erase("endpointslices", "demo", "web-1");
  EXPECT_TRUE(wait_for([&] { return endpoints("10.96.0.10") == 0; }));
  server->erase("services", "demo", "api");
  EXPECT_TRUE(wait_for([&] { return cluster("10.96.0.11") == nullptr; }));
  // The namespace's ambient label puts its pods, this node's and others', in the mesh.
  server->upsert("namespaces", obj(R"({"metadata":{"name":"demo","labels":{"istio.io/dataplane-mode":"ambient"}}})"));
  EXPECT_TRUE(wait_for([&] {
    const auto* w = store.current()->workload(*net::IpAddress::parse("10.244.1.5"));
    return w && w->protocol == snapshot::WorkloadProtocol::HBONE;
  }));

  const auto status = source->status();
  EXPECT_EQ(status.at("reflectors").as_array().size(), 6u);
  for (const auto& r : status.at("reflectors").as_array()) EXPECT_TRUE(r.as_object().at("synced").as_bool());
}

// Istio's CRD may not be installed: its 404 is "no policy" (synced, logged once), and the LIST
// is tried again until the CRD appears; then its policies reach the snapshot's index.
TEST_F(KubernetesSourceTest, AuthorizationPoliciesWithTheCrdMissingThenInstalled) {
  server->upsert("pods", pod("web", "kind-worker", "10.244.0.5"));
  server->fail_next(3, 404, fake_api::FailOptions{.path_prefix = "/apis/security.istio.io"});
  absent_retry = 300ms;
  start();
  ASSERT_TRUE(wait_for([&] { return cp->synced(); })) << "a missing CRD must not hold readiness back";
  bool absent = false;
  const auto status = source->status();
  for (const auto& r : status.at("reflectors").as_array())
    if (r.as_object().at("resource").as_string() == "authorizationpolicies.security.istio.io")
      absent = r.as_object().contains("absent");
  EXPECT_TRUE(absent);
  server->upsert("authorizationpolicies",
                 obj(R"({"metadata":{"name":"deny-all","namespace":"demo"},"spec":{"action":"DENY","rules":[{}]}})"));
  const auto ip = *net::IpAddress::parse("10.244.0.5");
  ASSERT_TRUE(wait_for([&] {
    const auto* w = store.current()->authz().workload(ip);
    return w && w->deny.size() == 1;
  })) << "the policy arrives once the CRD is served";
  server->erase("authorizationpolicies", "demo", "deny-all");
  EXPECT_TRUE(wait_for([&] { return store.current()->authz().workload(ip)->deny.empty(); }));
}

TEST_F(KubernetesSourceTest, NotSyncedWhileTheServerIsDown) {
  server->upsert("services", service("web", "10.96.0.10"));
  server->pause(1500ms);
  start();
  std::this_thread::sleep_for(500ms);
  EXPECT_FALSE(cp->synced());
  EXPECT_EQ(store.generation(), 0u);
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));
  EXPECT_NE(cluster("10.96.0.10"), nullptr);
}

TEST_F(KubernetesSourceTest, ABadObjectIsSkippedAndTheWatchGoesOn) {
  server->upsert("services", service("web", "10.96.0.10"));
  server->upsert("endpointslices", slice("web-1", "web", {"10.244.0.5"}));
  start();
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));
  auto bad = slice("web-1", "web", {"10.244.0.5"});
  bad["addressType"] = "IPv7";
  server->upsert("endpointslices", bad);
  ASSERT_TRUE(wait_for([&] { return decode_errors() == 1; }));
  server->upsert("endpointslices", slice("web-2", "web", {"10.244.0.7"}));
  EXPECT_TRUE(wait_for([&] { return endpoints("10.96.0.10") == 2; })) << "the watch went on";
  EXPECT_EQ(endpoints("10.96.0.10"), 2u) << "web-1's last good version stays";
  EXPECT_NE(std::string(source->status().at("lastDecodeError").as_string()).find("addressType"), std::string::npos);
}

TEST_F(KubernetesSourceTest, A410RelistAppliesTheDifferenceInFewBuilds) {
  for (int i = 0; i < 600; ++i)
    server->upsert("services", service("svc-" + std::to_string(i),
                                       "10.96." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1)));
  start();
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));
  EXPECT_EQ(store.current()->clusters().size(), 600u);
  // While the server is away: one Service goes, one comes, and the history is compacted, so
  // the watches come back to a 410 and relist (two pages of 500 for the Services).
  server->pause(800ms);
  server->erase("services", "demo", "svc-0");
  server->upsert("services", service("new", "10.96.9.9"));
  server->compact();
  const auto builds = cp->builds();
  ASSERT_TRUE(wait_for([&] { return cluster("10.96.9.9") != nullptr && cluster("10.96.0.1") == nullptr; }));
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(store.current()->clusters().size(), 600u);
  // One per resource that relisted at most, never one per page or per object.
  EXPECT_LE(cp->builds() - builds, 4u);
  std::uint64_t relists = 0;
  const auto status = source->status();
  for (const auto& r : status.at("reflectors").as_array())
    relists += r.as_object().at("relists").to_number<std::uint64_t>();
  EXPECT_GE(relists, 1u);
}

}  // namespace kubernetes_source_test
}  // namespace dsproxy::sources::kubernetes
