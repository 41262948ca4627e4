// The decoder's two transports (text as YAML or JSON, and one Boost.JSON object at a time as the
// API watch delivers them) give the same objects and the same messages; and text is decoded one
// object at a time (Lists streamed, speculation taken back when a document is not a List).
#include <gtest/gtest.h>

#include <boost/json/parse.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include "config/k8s_decoder.hpp"

namespace dsproxy::config {
namespace config_decoder_object_test {  // named: unity builds put several test files in one translation unit

namespace json = boost::json;

net::IpAddress ip(const char* s) { return *net::IpAddress::parse(s); }

json::object object_of(std::string_view text) { return json::parse(text).as_object(); }

std::string error_of(const std::string& text, const DecodeLimits& limits = {}) {
  try {
    decode_objects(text, "cluster.json", limits);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "<decoded without error>";
}

std::string object_error(std::string_view kind, std::string_view text) {
  try {
    decode_object(kind, object_of(text), "watch");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "<decoded without error>";
}

// ---------------------------------------------------------------- decode_object

TEST(ConfigDecodeObject, Service) {
  // A LIST item: no kind, no apiVersion.
  const auto d = decode_object("Service", object_of(R"({
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"},
                 "annotations": {"dsproxy.io/resolve": "true",
                                 "kubectl.kubernetes.io/last-applied-configuration": "{\"a huge\": \"copy\"}"}},
    "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:10:96::20"],
             "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack", "selector": {"app": "web"},
             "ports": [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]}
  })"), "watch");
  ASSERT_TRUE(d.has_value());
  const Service& s = std::get<Service>(*d);
  EXPECT_EQ(s.name, "web");
  EXPECT_EQ(s.ns, "shop");
  EXPECT_EQ(s.cluster_ips, (std::vector{ip("10.96.0.20"), ip("fd00:10:96::20")}));
  EXPECT_EQ(s.ip_family_policy, IpFamilyPolicy::RequireDualStack);
  // kubectl apply's copy of the object is not kept; everything else is.
  EXPECT_EQ(s.annotations, (Labels{{"dsproxy.io/resolve", "true"}}));
  ASSERT_EQ(s.ports.size(), 2u);
  EXPECT_EQ(s.ports[0].target_port, (std::variant<std::uint16_t, std::string>{std::uint16_t{8080}}));
  EXPECT_EQ(s.ports[1].target_port, (std::variant<std::uint16_t, std::string>{std::string("dns")}));
  EXPECT_EQ(s.ports[1].protocol, "UDP");
}

TEST(ConfigDecodeObject, Pod) {
  const auto d = decode_object(object_of(R"({
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web-0", "namespace": "shop", "deletionTimestamp": "2026-12-01T10:00:00Z"},
    "spec": {"nodeName": "node-a", "serviceAccountName": "web", "hostNetwork": false,
             "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
    "status": {"podIPs": [{"ip": "10.244.0.5"}, {"ip": "fd00:10:244::5"}],
               "conditions": [{"type": "Ready", "status": "True"}]}
  })"), "watch");
  ASSERT_TRUE(d.has_value());
  const Pod& p = std::get<Pod>(*d);
  EXPECT_EQ(p.node_name, "node-a");
  EXPECT_EQ(p.service_account, "web");
  EXPECT_TRUE(p.ready);
  EXPECT_TRUE(p.terminating);
  EXPECT_EQ(p.pod_ips, (std::vector{ip("10.244.0.5"), ip("fd00:10:244::5")}));
  ASSERT_EQ(p.container_ports.size(), 1u);
  EXPECT_EQ(p.container_ports[0].port, 8080);
}

TEST(ConfigDecodeObject, EndpointSliceOfEachAddressType) {
  const auto v6 = decode_object("EndpointSlice", object_of(R"({
    "apiVersion": "discovery.k8s.io/v1", "addressType": "IPv6",
    "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
    "endpoints": [{"addresses": ["fd00:10:244::5"], "conditions": {"ready": false, "serving": true, "terminating": true},
                   "nodeName": "node-a", "zone": "z1", "hints": {"forZones": [{"name": "z1"}]},
                   "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "shop"}}],
    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "all", "port": null}]
  })"), "watch");
  ASSERT_TRUE(v6.has_value());
  const EndpointSlice& es = std::get<EndpointSlice>(*v6);
  EXPECT_EQ(es.service_name, "web");
  EXPECT_EQ(es.address_type, AddressType::IPv6);
  ASSERT_EQ(es.endpoints.size(), 1u);
  EXPECT_FALSE(es.endpoints[0].ready);
  EXPECT_TRUE(es.endpoints[0].serving);
  EXPECT_TRUE(es.endpoints[0].terminating);
  EXPECT_EQ(es.endpoints[0].target_pod, "web-0");
  EXPECT_EQ(es.endpoints[0].zone_hints, (std::vector<std::string>{"z1"}));
  ASSERT_EQ(es.ports.size(), 2u);
  EXPECT_EQ(es.ports[0].port, std::optional<std::uint16_t>(8080));
  EXPECT_FALSE(es.ports[1].port.has_value());

  // FQDN: an EndpointSlice of hostnames, with the warning decode_objects would list.
  std::vector<std::string> warnings;
  const auto fqdn = decode_object("EndpointSlice", object_of(R"({
    "addressType": "FQDN", "metadata": {"name": "db-1", "namespace": "shop"},
    "endpoints": [{"addresses": ["db.example.com"]}], "ports": [{"port": 5432}]
  })"), "watch", &warnings);
  ASSERT_TRUE(fqdn.has_value());
  EXPECT_EQ(std::get<EndpointSlice>(*fqdn).address_type, AddressType::FQDN);
  EXPECT_EQ(std::get<EndpointSlice>(*fqdn).endpoints[0].hostnames, (std::vector<std::string>{"db.example.com"}));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_EQ(warnings[0].rfind("watch (EndpointSlice shop/db-1): addressType FQDN", 0), 0u) << warnings[0];
}

TEST(ConfigDecodeObject, Node) {
  const auto d = decode_object("Node", object_of(R"({"metadata": {"name": "node-a",
      "labels": {"topology.kubernetes.io/zone": "z1"}}, "spec": {"podCIDRs": ["10.244.0.0/24"]}})"), "watch");
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(std::get<Node>(*d).name, "node-a");
  EXPECT_EQ(std::get<Node>(*d).labels, (Labels{{"topology.kubernetes.io/zone", "z1"}}));
}

TEST(ConfigDecodeObject, ErrorsNameTheObjectAndTheFieldPath) {
  EXPECT_EQ(object_error("Service", R"({"metadata": {"name": "x", "namespace": "a"},
                                       "spec": {"ports": [{"port": "abc"}]}})"),
            "watch (Service a/x): spec.ports[0].port: expected an integer 1-65535, got \"abc\"");
  EXPECT_EQ(object_error("EndpointSlice", R"({"metadata": {"name": "s"}, "addressType": "IPv4",
                                             "endpoints": [{"addresses": ["fd00::1"]}]})"),
            "watch (EndpointSlice default/s): endpoints[0].addresses[0]: expected an IPv4 address (the slice's "
            "addressType), got \"fd00::1\"");
  EXPECT_EQ(object_error("Pod", R"({"metadata": {"name": "p"}, "spec": {"hostNetwork": 1}})"),
            "watch (Pod default/p): spec.hostNetwork: expected true or false, got \"1\"");
  // A number where a name belongs is its text, as in a file; a double prints shortest.
  EXPECT_EQ(object_error("Service", R"({"metadata": {"name": 7}, "spec": {"ports": [{"port": 80.5}]}})"),
            "watch (Service default/7): spec.ports[0].port: expected an integer 1-65535, got \"80.5\"");
  // The object's own kind must be the resource's.
  EXPECT_EQ(object_error("Service", R"({"kind": "Pod", "metadata": {"name": "p"}})"),
            "watch: kind: expected \"Service\" (the resource's kind), got \"Pod\"");
  try {
    decode_object(object_of(R"({"metadata": {"name": "p"}})"), "watch");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "watch: kind: required");
  }
}

TEST(ConfigDecodeObject, IgnoredKindsAndOtherApiGroupsAreNullopt) {
  EXPECT_FALSE(decode_object("ConfigMap", object_of(R"({"metadata": {"name": "c"}, "data": {"x": [1]}})"), "watch"));
  EXPECT_FALSE(decode_object(object_of(R"({"kind": "Endpoints", "metadata": {"name": "e"}})"), "watch"));
  std::vector<std::string> warnings;
  EXPECT_FALSE(decode_object(object_of(R"({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                          "metadata": {"name": "k"}, "spec": {"template": {}}})"),
                             "watch", &warnings));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("serving.knative.dev/v1"), std::string::npos);
}

// ---------------------------------------------------------------- one set of rules for YAML and JSON

TEST(ConfigDecoderTransports, ScalarsReadTheSameFromYamlAndJson) {
  // Quoted or not, in either format: `port: "80"` is a port, `name: 123` a name, a quoted
  // "true" a boolean, a plain `1.50` keeps its text.
  const std::string yaml = R"(
apiVersion: v1
kind: Pod
metadata: {name: 123, namespace: ns, labels: {version: 1.50, quoted: "80", flag: true}}
spec:
  hostNetwork: "true"
  containers: [{ports: [{containerPort: "8080"}, {containerPort: 9000, name: 42}]}]
)";
  const std::string json = R"({"apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": 123, "namespace": "ns", "labels": {"version": 1.50, "quoted": "80", "flag": true}},
    "spec": {"hostNetwork": "true", "containers": [{"ports": [{"containerPort": "8080"}, {"containerPort": 9000, "name": 42}]}]}})";
  for (const std::string& text : {yaml, json}) {
    const ClusterObjects o = decode_objects(text);
    ASSERT_EQ(o.pods.size(), 1u) << text;
    const Pod& p = o.pods[0];
    EXPECT_EQ(p.name, "123");
    EXPECT_EQ(p.labels, (Labels{{"flag", "true"}, {"quoted", "80"}, {"version", "1.50"}}));
    EXPECT_TRUE(p.host_network);
    ASSERT_EQ(p.container_ports.size(), 2u);
    EXPECT_EQ(p.container_ports[0].port, 8080);
    EXPECT_EQ(p.container_ports[1].name, "42");
  }
  // A number that is not a plain integer is refused with the text it was written as.
  EXPECT_EQ(error_of(R"({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"ports": [{"containerPort": 80.0}]}]}})"),
            "cluster.json: document 1 (Pod default/p): spec.containers[0].ports[0].containerPort: expected an integer "
            "1-65535, got \"80.0\"");
  EXPECT_EQ(error_of("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{ports: [{containerPort: 0x50}]}]}\n"),
            "cluster.json: document 1 (Pod default/p): spec.containers[0].ports[0].containerPort: expected an integer "
            "1-65535, got \"0x50\"");
}

TEST(ConfigDecoderTransports, JsonDuplicateKeysAreNamedLikeYamls) {
  EXPECT_EQ(error_of(R"({"kind": "Service", "metadata": {"name": "s", "labels": {"app": "a", "app": "b"}}})"),
            "cluster.json: document 1 (Service default/s): metadata.labels.app: duplicate key");
  // Inside a List item, the path starts at the item.
  EXPECT_EQ(error_of(R"({"items": [{"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p"},
                       "spec": {"containers": [{}, {"ports": [{"containerPort": 1, "containerPort": 2}]}]}}],
                       "kind": "List"})"),
            "cluster.json: document 1 item 1 (Pod default/p): spec.containers[1].ports[0].containerPort: duplicate key");
  // In an object dsproxy ignores, as before, nobody minds.
  EXPECT_EQ(error_of(R"({"kind": "ConfigMap", "data": {"a": "1", "a": "2"}})"), "<decoded without error>");
}

TEST(ConfigDecoderTransports, JsonSyntaxErrorNamesLineAndColumn) {
  EXPECT_EQ(error_of("{\n  \"kind\": \"Service\",\n  \"metadata\": {\"name\" \"x\"}\n}\n"),
            "cluster.json: line 3, column 23: invalid JSON: syntax error");
  EXPECT_EQ(error_of("[1, 2"), "cluster.json: line 1, column 6: invalid JSON: incomplete JSON");
}

TEST(ConfigDecoderTransports, FlowYamlThatLooksLikeJsonStillDecodes) {
  const ClusterObjects o = decode_objects(
      "{apiVersion: v1, kind: Service, metadata: {name: s}, spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}}\n");
  ASSERT_EQ(o.services.size(), 1u);
  EXPECT_EQ(o.services[0].cluster_ips, (std::vector{ip("10.96.0.1")}));
}

TEST(ConfigDecoderTransports, SyntaxErrorsAnywhereComeBeforeDecodeErrors) {
  // The object error is in the first document, the syntax error in the last; the input is
  // refused for its syntax, as when it was parsed whole before anything was decoded.
  const std::string e = error_of("kind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 0}]}\n---\nkind: [x\n");
  EXPECT_NE(e.find("invalid YAML"), std::string::npos) << e;
  DecodeLimits limits;
  limits.max_nodes = 20;
  EXPECT_NE(error_of("kind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 0}]}\n---\nx: [1, 2, 3, 4, 5, 6, 7, 8]\n",
                     limits)
                .find("(the config node limit)"),
            std::string::npos);
}

// ---------------------------------------------------------------- Lists, one object at a time

// What `kubectl get svc,endpointslices -o json` prints: keys sorted, so "items" before "kind".
std::string kubectl_list(int services, const std::string& kind = "List") {
  std::string s = R"({"apiVersion": "v1", "items": [)";
  for (int i = 0; i < services; ++i) {
    const std::string n = std::to_string(i);
    s += std::string(i ? "," : "") + R"({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s)" + n +
         R"(", "namespace": "ns"}, "spec": {"clusterIP": "10.96.)" + std::to_string(i / 250) + "." +
         std::to_string(i % 250 + 1) + R"(", "ports": [{"port": 80}]}},)" +
         R"({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4", "metadata": {"name": "s)" +
         n + R"(-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "s)" + n +
         R"("}}, "endpoints": [{"addresses": ["10.244.0.)" + std::to_string(i % 250 + 1) + R"("]}]})";
  }
  return s + R"(], "kind": ")" + kind + R"(", "metadata": {"resourceVersion": ""}})";
}

TEST(ConfigDecoderLists, KindAfterItemsStillMakesAList) {
  const ClusterObjects o = decode_objects(kubectl_list(3));
  ASSERT_EQ(o.services.size(), 3u);
  ASSERT_EQ(o.endpoint_slices.size(), 3u);
  EXPECT_EQ(o.services[2].name, "s2");
  EXPECT_EQ(o.endpoint_slices[2].service_name, "s2");
  // Errors and the checks across objects name the item as before, speculation or not.
  std::string twice = kubectl_list(2);
  twice.insert(twice.find("], \"kind\""),
               R"(, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s0", "namespace": "ns"}})");
  EXPECT_EQ(error_of(twice), "cluster.json: document 1 item 5 (Service ns/s0): metadata.name: the same Service is "
                             "already defined in document 1 item 1");
}

TEST(ConfigDecoderLists, ItemsOfAnObjectThatIsNotAListAreTakenBack) {
  // Decoded while the kind was unknown, then dropped, with their cluster IPs and names: the
  // next document may use them.
  const std::string not_a_list = kubectl_list(2, "ConfigMap");
  const std::string real =
      R"({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s0", "namespace": "ns"},
          "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}})";
  const ClusterObjects o = decode_objects(not_a_list + "\n---\n" + real);
  ASSERT_EQ(o.services.size(), 1u);
  EXPECT_TRUE(o.endpoint_slices.empty());
  EXPECT_EQ(o.services[0].cluster_ips, (std::vector{ip("10.96.0.1")}));
  // A broken item of a non-List is nobody's business either.
  EXPECT_EQ(error_of(R"({"items": [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                    "spec": {"ports": [{"port": 0}]}}], "kind": "Template"})"),
            "<decoded without error>");
}

TEST(ConfigDecoderLists, TypedListItemsWithoutKindWaitForTheListsKind) {
  // The API server's own LIST body: kind first, items without kind.
  const std::string first = R"({"kind": "ServiceList", "apiVersion": "v1", "metadata": {},
      "items": [{"metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}}]})";
  // The same with keys sorted: the items wait, in order, until "kind" says what they are.
  const std::string sorted = R"({"apiVersion": "v1",
      "items": [{"metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}},
                {"metadata": {"name": "b"}, "spec": {"clusterIP": "10.96.0.6", "ports": [{"port": 80}]}}],
      "kind": "ServiceList", "metadata": {}})";
  EXPECT_EQ(decode_objects(first).services.size(), 1u);
  const ClusterObjects o = decode_objects(sorted);
  ASSERT_EQ(o.services.size(), 2u);
  EXPECT_EQ(o.services[1].name, "b");
  // Waiting items are kept whole, so they count against the one-object limit.
  DecodeLimits limits;
  limits.max_object_nodes = 20;  // each item is 14 nodes, the two waiting 28
  EXPECT_NE(error_of(sorted, limits).find("(the config object-size limit)"), std::string::npos) << error_of(sorted, limits);
}

TEST(ConfigDecoderLists, OneObjectAtATime) {
  // 200 items of about 40 nodes each decode under a one-object limit of 100 nodes: only one
  // item's tree exists at a time. One object over it is refused, naming the limit.
  DecodeLimits limits;
  limits.max_object_nodes = 100;
  const std::string list = kubectl_list(200);
  ASSERT_EQ(error_of(list, limits), "<decoded without error>");
  std::string big = R"({"kind": "ConfigMap", "data": [)";
  for (int i = 0; i < 200; ++i) big += std::string(i ? "," : "") + "1";
  EXPECT_EQ(error_of(big + "]}", limits),
            "cluster.json: document 1: line 1, column 222: one object holds more than 100 nodes (the config "
            "object-size limit)");
}

TEST(ConfigDecoderLists, FileIsReadInPiecesWithTheSameResult) {
  // A JSON and a YAML file several read chunks long: tokens straddle the chunk boundaries.
  const std::string text = kubectl_list(3000);
  ASSERT_GT(text.size(), 4u * 64 * 1024);
  const std::string path = testing::TempDir() + "/dsproxy-decoder-" + std::to_string(::getpid()) + ".json";
  {
    std::ofstream out(path, std::ios::binary);
    out << text;
  }
  const ClusterObjects from_file = load_objects_file(path);
  const ClusterObjects from_text = decode_objects(text);
  std::filesystem::remove(path);
  ASSERT_EQ(from_file.services.size(), 3000u);
  ASSERT_EQ(from_file.endpoint_slices.size(), 3000u);
  for (std::size_t i = 0; i < 3000; ++i) {
    EXPECT_EQ(from_file.services[i].cluster_ips, from_text.services[i].cluster_ips);
    EXPECT_EQ(from_file.endpoint_slices[i].endpoints[0].addresses, from_text.endpoint_slices[i].endpoints[0].addresses);
  }
  // The byte limit holds for a JSON file read in pieces too.
  {
    std::ofstream out(path, std::ios::binary);
    out << text;
  }
  DecodeLimits limits;
  limits.max_bytes = 100'000;
  try {
    load_objects_file(path, limits);
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), path + ": more than 100000 bytes (the config size limit)");
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace dsproxy::config
