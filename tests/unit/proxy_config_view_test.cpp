// The admin API's config dump and the istioctl-style tables rendered from it.

#include "cli/proxy_config_view.hpp"

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "admin/config_dump.hpp"
#include "config/k8s_decoder.hpp"

namespace dsproxy {
namespace proxy_config_view_test {  // named: unity builds put several test files in one translation unit

std::string experiment_dump() {
  auto objects = config::load_objects_file(DSPROXY_SOURCE_DIR "/config/tcp-echo-experiment.yaml");
  auto snapshot = snapshot::ClusterSnapshot::build(std::move(objects), {"kind-worker", "cluster.local"});
  proxy::ProxyOptions options;
  proxy::ProxyStats stats;
  return admin::render_config_dump({*snapshot, options, stats, 1});
}

// Tables are compared with runs of spaces collapsed: the column widths are cosmetic.
std::string squeeze(const std::string& s) {
  std::string out;
  for (char c : s)
    if (!(c == ' ' && !out.empty() && out.back() == ' ')) out += c;
  return out;
}

TEST(ProxyConfigView, EndpointsTableMatchesIstioctlShape) {
  const auto table = squeeze(cli::endpoints_table(experiment_dump(), 9000));
  EXPECT_EQ(table,
            "ENDPOINT STATUS OUTLIER CHECK NODE ZONE CLUSTER\n"
            "10.244.0.19:9000 HEALTHY OK kind-worker - outbound|9000||tcp-echo.ipv4.svc.cluster.local\n"
            "10.244.0.26:9000 HEALTHY OK kind-worker - outbound|9000||tcp-echo.dual-stack.svc.cluster.local\n"
            "fd00:10:244::18:9000 HEALTHY OK kind-worker - outbound|9000||tcp-echo.ipv6.svc.cluster.local\n"
            "fd00:10:244::1a:9000 HEALTHY OK kind-worker - outbound|9000||tcp-echo.dual-stack.svc.cluster.local\n");
}

// Issue 16: STATUS says HEALTHY (ready), DRAINING (serving and terminating) or UNHEALTHY, with
// the endpoint's node and zone; /config_dump carries the Service's policies.
TEST(ProxyConfigView, EndpointStateNodeZoneAndServicePolicies) {
  auto objects = config::decode_objects(R"(
apiVersion: v1
kind: Service
metadata: {name: web, namespace: t}
spec:
  clusterIP: 10.96.0.10
  internalTrafficPolicy: Local
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  trafficDistribution: PreferClose
  ports: [{port: 80, targetPort: 8080, appProtocol: kubernetes.io/h2c}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: t, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.0.0.1], nodeName: n1, zone: a}
- {addresses: [10.0.0.2], nodeName: n2, zone: b, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.3], conditions: {ready: false}}
)");
  auto snapshot = snapshot::ClusterSnapshot::build(std::move(objects), {.node_name = "n1", .zone = "a"});
  proxy::ProxyOptions options;
  proxy::ProxyStats stats;
  const std::string dump = admin::render_config_dump({*snapshot, options, stats, 1});
  EXPECT_EQ(squeeze(cli::endpoints_table(dump, 8080)),
            "ENDPOINT STATUS OUTLIER CHECK NODE ZONE CLUSTER\n"
            "10.0.0.1:8080 HEALTHY OK n1 a outbound|80||web.t.svc.cluster.local\n"
            "10.0.0.2:8080 DRAINING OK n2 b outbound|80||web.t.svc.cluster.local\n"
            "10.0.0.3:8080 UNHEALTHY OK - - outbound|80||web.t.svc.cluster.local\n");
  for (const char* field : {"\"internalTrafficPolicy\":\"Local\"", "\"sessionAffinity\":\"ClientIP\"",
                            "\"sessionAffinityTimeoutSeconds\":600", "\"trafficDistribution\":\"PreferClose\"",
                            "\"appProtocol\":\"kubernetes.io/h2c\"", "\"zone\":\"a\"", "\"eligible\":true",
                            "\"terminating\":true"})
    EXPECT_NE(dump.find(field), std::string::npos) << field << " in " << dump;
  EXPECT_NE(cli::endpoints_json(dump, 8080).find("\"status\":\"DRAINING\""), std::string::npos);
}

TEST(ProxyConfigView, ListenersHaveAdditionalAddressesOnlyForDualStack) {
  const auto table = squeeze(cli::listeners_table(experiment_dump(), 9000));
  EXPECT_NE(table.find("fd00:10:96::f9fc,10.96.106.11 9000 ALL Cluster: "
                       "outbound|9000||tcp-echo.dual-stack.svc.cluster.local"),
            std::string::npos)
      << table;
  EXPECT_NE(table.find("10.96.104.229 9000 ALL"), std::string::npos) << table;
  EXPECT_NE(table.find("fd00:10:96::9c3a 9000 ALL"), std::string::npos) << table;

  // Exactly one listener on port 9000 is dual-stack, and it is the dual-stack Service's. Read
  // as JSON: comparing find() with rfind() of the key also passed when the key was absent.
  const auto json = cli::listeners_json(experiment_dump(), 9000);
  const auto listeners = boost::json::parse(json);
  ASSERT_TRUE(listeners.is_array()) << json;
  ASSERT_EQ(listeners.as_array().size(), 3u) << json;
  std::vector<std::string> dual_stack;
  for (const auto& l : listeners.as_array())
    if (l.as_object().contains("additionalAddresses"))
      dual_stack.emplace_back(l.as_object().at("name").as_string());
  EXPECT_EQ(dual_stack, std::vector<std::string>{"fd00:10:96::f9fc_9000"}) << json;
}

TEST(ProxyConfigView, VirtualInboundListensOnBothFamilies) {
  const auto json = cli::listeners_json(experiment_dump(), 15006);
  EXPECT_NE(json.find("\"name\": \"virtualInbound\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"address\": \"0.0.0.0\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"address\": \"::\""), std::string::npos) << json;
}

TEST(ProxyConfigView, GarbageIsAClearError) {
  EXPECT_THROW(cli::endpoints_table("not json", std::nullopt), std::runtime_error);
  EXPECT_THROW(cli::listeners_table("{}", std::nullopt), std::runtime_error);
}

}  // namespace proxy_config_view_test
}  // namespace dsproxy
