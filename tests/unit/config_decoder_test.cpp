#include <gtest/gtest.h>

#include <cctype>
#include <string>

#include "config/k8s_decoder.hpp"

namespace dsproxy::config {
namespace config_decoder_test {  // named: unity builds put several test files in one translation unit

const std::string kDataDir = DSPROXY_TEST_DATA_DIR;

net::IpAddress ip(const char* s) { return *net::IpAddress::parse(s); }

// The error message of decoding `yaml`, or a note that it decoded.
std::string error_of(const std::string& yaml, const std::string& source = "cluster.yaml") {
  try {
    decode_objects(yaml, source);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "<decoded without error>";
}

const char* kGoodService = R"(
apiVersion: v1
kind: Service
metadata: {name: ok, namespace: a}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: tcp, port: 80}]
)";

std::string service_with_spec(const std::string& spec, const std::string& name = "tcp-echo") {
  return "apiVersion: v1\nkind: Service\nmetadata:\n  name: " + name + "\n  namespace: ipv4\nspec:\n" + spec;
}

std::string pod_with(const std::string& body) {
  return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns\n" + body;
}

std::string slice_with(const std::string& body) {
  return "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s-1\n  namespace: ns\n"
         "  labels: {kubernetes.io/service-name: s}\n" +
         body;
}

// ---------------------------------------------------------------- valid input

TEST(ConfigDecoder, MultiDocumentFile) {
  const ClusterObjects o = load_objects_file(kDataDir + "/multi-document.yaml");
  ASSERT_EQ(o.services.size(), 2u);
  ASSERT_EQ(o.pods.size(), 1u);
  ASSERT_EQ(o.endpoint_slices.size(), 1u);
  EXPECT_TRUE(o.warnings.empty());

  const Service& web = o.services[0];
  EXPECT_EQ(web.name, "web");
  EXPECT_EQ(web.ns, "shop");
  EXPECT_EQ(web.labels, (Labels{{"app", "web"}}));
  EXPECT_EQ(web.annotations, (Labels{{"example.com/owner", "team-a"}}));
  ASSERT_TRUE(web.selector.has_value());
  EXPECT_EQ(*web.selector, (Labels{{"app", "web"}}));
  EXPECT_EQ(web.type, "ClusterIP");
  EXPECT_FALSE(web.headless);
  EXPECT_EQ(web.ip_family_policy, IpFamilyPolicy::PreferDualStack);
  EXPECT_EQ(web.cluster_ips, (std::vector{ip("10.96.0.20"), ip("fd00:10:96::20")}));
  // No ipFamilies: the families of the cluster IPs, in their order.
  EXPECT_EQ(web.ip_families, (std::vector{net::Family::v4, net::Family::v6}));
  ASSERT_EQ(web.ports.size(), 3u);
  EXPECT_EQ(web.ports[0].name, "http");
  EXPECT_EQ(web.ports[0].port, 80);
  EXPECT_EQ(web.ports[0].target_port, (std::variant<std::uint16_t, std::string>{std::string("http-web")}));
  EXPECT_EQ(web.ports[0].protocol, "TCP");
  // A quoted string of digits is a port number, not a port name.
  EXPECT_EQ(web.ports[1].target_port, (std::variant<std::uint16_t, std::string>{std::uint16_t{9091}}));
  // targetPort absent: the service port.
  EXPECT_EQ(web.ports[2].target_port, (std::variant<std::uint16_t, std::string>{std::uint16_t{53}}));
  EXPECT_EQ(web.ports[2].protocol, "UDP");

  const Service& kubernetes = o.services[1];
  EXPECT_EQ(kubernetes.ns, "default");  // no metadata.namespace
  EXPECT_EQ(kubernetes.ip_family_policy, IpFamilyPolicy::SingleStack);
  EXPECT_EQ(kubernetes.ip_families, (std::vector{net::Family::v4}));
  EXPECT_FALSE(kubernetes.selector.has_value());

  const Pod& pod = o.pods[0];
  EXPECT_EQ(pod.name, "web-0");
  EXPECT_EQ(pod.node_name, "node-a");
  EXPECT_EQ(pod.service_account, "web-sa");  // the deprecated spec.serviceAccount spelling
  EXPECT_FALSE(pod.host_network);
  EXPECT_FALSE(pod.ready);
  EXPECT_EQ(pod.pod_ips, (std::vector{ip("10.244.0.10")}));  // status.podIP fallback
  ASSERT_EQ(pod.container_ports.size(), 2u);
  EXPECT_EQ(pod.container_ports[0].name, "http-web");
  EXPECT_EQ(pod.container_ports[0].port, 8080);
  EXPECT_EQ(pod.container_ports[1].protocol, "TCP");

  const EndpointSlice& slice = o.endpoint_slices[0];
  EXPECT_EQ(slice.name, "web-abcde");
  EXPECT_EQ(slice.service_name, "web");
  EXPECT_EQ(slice.address_type, AddressType::IPv6);
  ASSERT_EQ(slice.endpoints.size(), 2u);
  EXPECT_FALSE(slice.endpoints[0].ready);
  EXPECT_EQ(slice.endpoints[0].node_name, "node-a");
  EXPECT_EQ(slice.endpoints[0].target_pod, "web-0");
  EXPECT_TRUE(slice.endpoints[1].ready);  // conditions absent: ready
  EXPECT_EQ(slice.endpoints[1].addresses, (std::vector{ip("fd00:10:244::b")}));
  ASSERT_EQ(slice.ports.size(), 2u);
  EXPECT_EQ(slice.ports[0].name, std::optional<std::string>("http"));
  EXPECT_EQ(slice.ports[0].port, std::optional<std::uint16_t>(8080));
  EXPECT_FALSE(slice.ports[1].port.has_value());
}

TEST(ConfigDecoder, KubectlListOutput) {
  const ClusterObjects o = load_objects_file(kDataDir + "/kubectl-list.yaml");
  ASSERT_EQ(o.services.size(), 1u);
  ASSERT_EQ(o.pods.size(), 1u);
  EXPECT_EQ(o.services[0].ns, "ipv4");
  EXPECT_EQ(o.services[0].ip_families, (std::vector{net::Family::v4}));
  EXPECT_TRUE(o.pods[0].ready);
  EXPECT_EQ(o.pods[0].pod_ips, (std::vector{ip("10.244.0.19"), ip("fd00:10:244::13")}));
  EXPECT_EQ(o.pods[0].service_account, "default");
}

TEST(ConfigDecoder, JsonFile) {
  const ClusterObjects o = load_objects_file(kDataDir + "/cluster.json");
  ASSERT_EQ(o.services.size(), 1u);
  ASSERT_EQ(o.pods.size(), 1u);
  EXPECT_EQ(o.services[0].cluster_ips, (std::vector{ip("fd00:10:96::9c3a")}));
  EXPECT_EQ(o.pods[0].pod_ips.size(), 2u);
  EXPECT_TRUE(o.pods[0].ready);
}

TEST(ConfigDecoder, TypedListItemsInheritKind) {
  // The API server's own list responses carry the kind on the list, not on each item.
  const ClusterObjects o = decode_objects(R"(
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: a}
  spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}
)");
  ASSERT_EQ(o.services.size(), 1u);
  EXPECT_EQ(o.services[0].name, "a");
}

TEST(ConfigDecoder, IgnoresOtherKindsEmptyAndNullDocuments) {
  const ClusterObjects o = decode_objects(R"(
---
---
null
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {ports: [not, checked]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: n}
spec: {whatever: {}}
---
apiVersion: v1
kind: List
items: []
)");
  EXPECT_TRUE(o.services.empty());
  EXPECT_TRUE(o.pods.empty());
  EXPECT_TRUE(o.endpoint_slices.empty());
  EXPECT_TRUE(o.warnings.empty());
  EXPECT_TRUE(decode_objects("").services.empty());
}

TEST(ConfigDecoder, OtherApiGroupWithKnownKindIsIgnoredWithWarning) {
  const ClusterObjects o = decode_objects(R"(
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello}
spec: {template: {}}
)");
  EXPECT_TRUE(o.services.empty());
  ASSERT_EQ(o.warnings.size(), 1u);
  EXPECT_NE(o.warnings[0].find("serving.knative.dev/v1"), std::string::npos);
}

TEST(ConfigDecoder, FqdnSliceIsIgnoredWithWarning) {
  const ClusterObjects o = decode_objects(slice_with(R"(addressType: FQDN
endpoints:
- addresses: [db.example.com]
ports: [{name: tcp, port: 5432}]
)"),
                                          "slices.yaml");
  EXPECT_TRUE(o.endpoint_slices.empty());
  ASSERT_EQ(o.warnings.size(), 1u);
  EXPECT_NE(o.warnings[0].find("slices.yaml: document 1 (EndpointSlice ns/s-1): addressType FQDN"), std::string::npos)
      << o.warnings[0];
}

TEST(ConfigDecoder, HeadlessAndExternalNameServices) {
  const ClusterObjects o = decode_objects(R"(
apiVersion: v1
kind: Service
metadata: {name: db, namespace: a}
spec:
  clusterIP: None
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  ports: [{port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: a}
spec: {type: ExternalName, externalName: db.example.com}
)");
  ASSERT_EQ(o.services.size(), 2u);
  EXPECT_TRUE(o.services[0].headless);
  EXPECT_TRUE(o.services[0].cluster_ips.empty());
  EXPECT_EQ(o.services[0].ip_families, (std::vector{net::Family::v4, net::Family::v6}));
  EXPECT_EQ(o.services[1].type, "ExternalName");
  EXPECT_EQ(o.services[1].external_name, "db.example.com");
}

TEST(ConfigDecoder, ClusterIpsFollowIpFamiliesOrder) {
  const ClusterObjects o = decode_objects(service_with_spec(R"(  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv6, IPv4]
  clusterIP: fd00:10:96::f9fc
  clusterIPs: [fd00:10:96::f9fc, 10.96.106.11]
  ports: [{port: 9000}]
)"));
  ASSERT_EQ(o.services.size(), 1u);
  EXPECT_EQ(o.services[0].cluster_ips, (std::vector{ip("fd00:10:96::f9fc"), ip("10.96.106.11")}));
  EXPECT_EQ(o.services[0].ip_families, (std::vector{net::Family::v6, net::Family::v4}));
}

// ---------------------------------------------------------------- errors

TEST(ConfigDecoderErrors, FullMessageNamesSourceDocumentObjectAndField) {
  const std::string yaml = std::string(kGoodService) + "---\n---\n" + service_with_spec(R"(  clusterIP: 10.96.104.229
  ports:
  - {name: tcp, port: 9000}
  - {name: tcp-other, port: abc}
)");
  EXPECT_EQ(error_of(yaml),
            "cluster.yaml: document 3 (Service ipv4/tcp-echo): spec.ports[1].port: expected an integer 1-65535, "
            "got \"abc\"");
}

TEST(ConfigDecoderErrors, ListItemsAreNamedByDocumentAndItem) {
  const std::string yaml = std::string(kGoodService) + R"(---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: c}
- apiVersion: v1
  kind: Pod
  metadata: {name: fine}
- apiVersion: v1
  kind: Pod
  metadata: {name: broken, namespace: x}
  status: {podIP: 10.0.0.300}
)";
  EXPECT_EQ(error_of(yaml, "dump.yaml"),
            "dump.yaml: document 2 item 3 (Pod x/broken): status.podIP: expected an IP address, got \"10.0.0.300\"");
}

TEST(ConfigDecoderErrors, YamlSyntaxErrorNamesSourceAndLine) {
  const std::string e = error_of("apiVersion: v1\nkind: Service\nmetadata: {name: [x\n");
  EXPECT_EQ(e.rfind("cluster.yaml: line ", 0), 0u) << e;
  EXPECT_NE(e.find("invalid YAML"), std::string::npos) << e;
  const std::string e2 = error_of("a: 1\nb: c: d\n");
  EXPECT_EQ(e2.rfind("cluster.yaml: line 2, column ", 0), 0u) << e2;
}

TEST(ConfigDecoderErrors, DocumentMustBeAMapping) {
  EXPECT_EQ(error_of(std::string(kGoodService) + "---\n- just\n- a list\n"),
            "cluster.yaml: document 2: expected a mapping (a Kubernetes object), got a list");
  EXPECT_EQ(error_of("just a string\n"),
            "cluster.yaml: document 1: expected a mapping (a Kubernetes object), got \"just a string\"");
  EXPECT_EQ(error_of("apiVersion: v1\nkind: List\nitems: [42]\n"),
            "cluster.yaml: document 1 item 1: expected a mapping (a Kubernetes object), got \"42\"");
}

TEST(ConfigDecoderErrors, KindIsRequiredAndAString) {
  EXPECT_EQ(error_of("apiVersion: v1\nmetadata: {name: x}\n"), "cluster.yaml: document 1: kind: required");
  EXPECT_EQ(error_of("kind: {a: b}\n"), "cluster.yaml: document 1: kind: expected a string, got a mapping");
  EXPECT_EQ(error_of("kind: List\nitems: {a: b}\n"), "cluster.yaml: document 1: items: expected a list, got a mapping");
}

struct BrokenCase {
  const char* what;
  std::string yaml;
  std::string expected;  // a substring of the message: location, field path and complaint
};

class BrokenDocument : public ::testing::TestWithParam<BrokenCase> {};

TEST_P(BrokenDocument, ErrorNamesDocumentAndFieldPath) {
  // The broken object is always the second document, after a good one.
  const std::string e = error_of(std::string(kGoodService) + "---\n" + GetParam().yaml);
  EXPECT_NE(e.find(GetParam().expected), std::string::npos) << "message: " << e;
  EXPECT_EQ(e.rfind("cluster.yaml: document 2", 0), 0u) << "message: " << e;
}

std::string case_name(const ::testing::TestParamInfo<BrokenCase>& info) {
  std::string name;
  for (char c : std::string(info.param.what)) name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return name;
}

const std::string kSvc = "document 2 (Service ipv4/tcp-echo): ";
const std::string kPod = "document 2 (Pod ns/p): ";
const std::string kSlice = "document 2 (EndpointSlice ns/s-1): ";

INSTANTIATE_TEST_SUITE_P(
    Service, BrokenDocument,
    ::testing::Values(
        BrokenCase{"name missing", "apiVersion: v1\nkind: Service\nmetadata: {namespace: a}\nspec: {}\n",
                   "document 2 (Service): metadata.name: required"},
        BrokenCase{"name not a string", "apiVersion: v1\nkind: Service\nmetadata: {name: {a: b}}\n",
                   "document 2 (Service): metadata.name: expected a string, got a mapping"},
        BrokenCase{"metadata not a mapping", "apiVersion: v1\nkind: Service\nmetadata: [a]\n",
                   "document 2 (Service): metadata: expected a mapping, got a list"},
        BrokenCase{"label value a mapping", "apiVersion: v1\nkind: Service\nmetadata: {name: tcp-echo, namespace: ipv4, "
                                            "labels: {app: {x: y}}}\n",
                   kSvc + "metadata.labels.app: expected a string, got a mapping"},
        BrokenCase{"annotation value a list", "apiVersion: v1\nkind: Service\nmetadata: {name: tcp-echo, namespace: ipv4, "
                                              "annotations: {example.com/owner: [a]}}\n",
                   kSvc + "metadata.annotations[example.com/owner]: expected a string, got a list"},
        BrokenCase{"duplicate label", "apiVersion: v1\nkind: Service\nmetadata:\n  name: tcp-echo\n  namespace: ipv4\n"
                                      "  labels:\n    app: a\n    app: b\n",
                   kSvc + "metadata.labels.app: duplicate key"},
        BrokenCase{"spec not a mapping", service_with_spec("  - a\n"), kSvc + "spec: expected a mapping, got a list"},
        BrokenCase{"port zero", service_with_spec("  ports: [{port: 0}]\n"),
                   kSvc + "spec.ports[0].port: expected an integer 1-65535, got \"0\""},
        BrokenCase{"port too big", service_with_spec("  ports: [{port: 65536}]\n"),
                   kSvc + "spec.ports[0].port: expected an integer 1-65535, got \"65536\""},
        BrokenCase{"port a mapping", service_with_spec("  ports: [{port: {a: 1}}]\n"),
                   kSvc + "spec.ports[0].port: expected an integer 1-65535, got a mapping"},
        BrokenCase{"port missing", service_with_spec("  ports: [{name: tcp}]\n"), kSvc + "spec.ports[0].port: required"},
        BrokenCase{"ports not a list", service_with_spec("  ports: {port: 80}\n"),
                   kSvc + "spec.ports: expected a list, got a mapping"},
        BrokenCase{"port entry not a mapping", service_with_spec("  ports: [80]\n"),
                   kSvc + "spec.ports[0]: expected a mapping, got \"80\""},
        BrokenCase{"targetPort out of range", service_with_spec("  ports: [{port: 80, targetPort: \"70000\"}]\n"),
                   kSvc + "spec.ports[0].targetPort: expected an integer 1-65535, got \"70000\""},
        BrokenCase{"targetPort a list", service_with_spec("  ports: [{port: 80, targetPort: [1]}]\n"),
                   kSvc + "spec.ports[0].targetPort: expected a port number 1-65535 or a port name, got a list"},
        BrokenCase{"protocol unknown", service_with_spec("  ports: [{port: 80, protocol: HTTP}]\n"),
                   kSvc + "spec.ports[0].protocol: expected TCP, UDP or SCTP, got \"HTTP\""},
        BrokenCase{"duplicate port", service_with_spec("  ports: [{name: a, port: 80}, {name: b, port: 80}]\n"),
                   kSvc + "spec.ports[1].port: 80/TCP is already spec.ports[0]"},
        BrokenCase{"unnamed among several", service_with_spec("  ports: [{name: a, port: 80}, {port: 81}]\n"),
                   kSvc + "spec.ports[1].name: required when a service has more than one port"},
        BrokenCase{"bad cluster IP", service_with_spec("  clusterIPs: [10.96.0.1, nope]\n  ipFamilyPolicy: PreferDualStack\n"),
                   kSvc + "spec.clusterIPs[1]: expected an IP address, got \"nope\""},
        BrokenCase{"bad clusterIP", service_with_spec("  clusterIP: 10.96.0\n"),
                   kSvc + "spec.clusterIP: expected an IP address, got \"10.96.0\""},
        BrokenCase{"clusterIP differs", service_with_spec("  clusterIP: 10.96.0.2\n  clusterIPs: [10.96.0.1]\n"),
                   kSvc + "spec.clusterIP: \"10.96.0.2\" differs from spec.clusterIPs[0] \"10.96.0.1\""},
        BrokenCase{"same family twice",
                   service_with_spec("  ipFamilyPolicy: PreferDualStack\n  clusterIPs: [10.96.0.1, 10.96.0.2]\n"),
                   kSvc + "spec.clusterIPs[1]: same IP family as spec.clusterIPs[0]"},
        BrokenCase{"None with another", service_with_spec("  clusterIPs: [None, 10.96.0.1]\n"),
                   kSvc + "spec.clusterIPs[0]: \"None\" (headless) must be the only cluster IP"},
        BrokenCase{"ipFamilies entry", service_with_spec("  ipFamilies: [IPv4, ipv6]\n"),
                   kSvc + "spec.ipFamilies[1]: expected IPv4 or IPv6, got \"ipv6\""},
        BrokenCase{"ipFamilies twice", service_with_spec("  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4, IPv4]\n"),
                   kSvc + "spec.ipFamilies[1]: IPv4 is listed twice"},
        BrokenCase{"ipFamilyPolicy", service_with_spec("  ipFamilyPolicy: DualStack\n"),
                   kSvc + "spec.ipFamilyPolicy: expected SingleStack, PreferDualStack or RequireDualStack, got "
                          "\"DualStack\""},
        BrokenCase{"families out of order",
                   service_with_spec("  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n"
                                     "  clusterIPs: [10.96.106.11, fd00:10:96::f9fc]\n"),
                   kSvc + "spec.clusterIPs[0]: is an IPv4 address but spec.ipFamilies[0] is IPv6"},
        BrokenCase{"clusterIP family vs ipFamilies", service_with_spec("  ipFamilies: [IPv6]\n  clusterIP: 10.96.0.1\n"),
                   kSvc + "spec.clusterIP: is an IPv4 address but spec.ipFamilies[0] is IPv6"},
        BrokenCase{"fewer families than IPs",
                   service_with_spec("  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4]\n"
                                     "  clusterIPs: [10.96.0.1, fd00::1]\n"),
                   kSvc + "spec.ipFamilies: lists 1 IP family but there are 2 cluster IPs"},
        BrokenCase{"SingleStack with two", service_with_spec("  clusterIPs: [10.96.0.1, fd00::1]\n"),
                   kSvc + "spec.ipFamilyPolicy: SingleStack (also the default) allows one IP family"},
        BrokenCase{"RequireDualStack with one IP",
                   service_with_spec("  ipFamilyPolicy: RequireDualStack\n  clusterIPs: [10.96.0.1]\n"),
                   kSvc + "spec.clusterIPs: RequireDualStack needs an IPv4 and an IPv6 cluster IP, got 1"},
        BrokenCase{"type unknown", service_with_spec("  type: Internal\n"),
                   kSvc + "spec.type: expected one of ClusterIP, NodePort, LoadBalancer, ExternalName, got \"Internal\""},
        BrokenCase{"selector a list", service_with_spec("  selector: [app]\n"),
                   kSvc + "spec.selector: expected a mapping, got a list"},
        BrokenCase{"duplicate key", service_with_spec("  clusterIP: 10.96.0.9\n  clusterIP: 10.96.0.8\n"),
                   kSvc + "spec.clusterIP: duplicate key"},
        BrokenCase{"VIP already taken", service_with_spec("  clusterIP: 10.96.0.1\n"),
                   kSvc + "spec.clusterIP: 10.96.0.1 is already the cluster IP of Service a/ok (document 1)"},
        BrokenCase{"same object twice", "apiVersion: v1\nkind: Service\nmetadata: {name: ok, namespace: a}\n",
                   "document 2 (Service a/ok): metadata.name: the same Service is already defined in document 1"}),
    case_name);

INSTANTIATE_TEST_SUITE_P(
    Pod, BrokenDocument,
    ::testing::Values(
        BrokenCase{"name missing", "apiVersion: v1\nkind: Pod\nmetadata: {labels: {a: b}}\n",
                   "document 2 (Pod): metadata.name: required"},
        BrokenCase{"hostNetwork not a bool", pod_with("spec: {hostNetwork: maybe}\n"),
                   kPod + "spec.hostNetwork: expected true or false, got \"maybe\""},
        BrokenCase{"nodeName a list", pod_with("spec: {nodeName: [a]}\n"),
                   kPod + "spec.nodeName: expected a string, got a list"},
        BrokenCase{"containerPort", pod_with("spec:\n  containers:\n  - name: c\n  - name: d\n    ports: [{containerPort: x}]\n"),
                   kPod + "spec.containers[1].ports[0].containerPort: expected an integer 1-65535, got \"x\""},
        BrokenCase{"containerPort missing", pod_with("spec: {containers: [{ports: [{name: tcp}]}]}\n"),
                   kPod + "spec.containers[0].ports[0].containerPort: required"},
        BrokenCase{"podIPs entry", pod_with("status: {podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::zz'}]}\n"),
                   kPod + "status.podIPs[1].ip: expected an IP address, got \"fd00::zz\""},
        BrokenCase{"podIPs entry without ip", pod_with("status: {podIPs: [{address: 10.0.0.1}]}\n"),
                   kPod + "status.podIPs[0].ip: required"},
        BrokenCase{"podIPs same family", pod_with("status: {podIPs: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]}\n"),
                   kPod + "status.podIPs[1].ip: a pod has at most one address per IP family"},
        BrokenCase{"conditions not a list", pod_with("status: {conditions: {type: Ready}}\n"),
                   kPod + "status.conditions: expected a list, got a mapping"}),
    case_name);

INSTANTIATE_TEST_SUITE_P(
    EndpointSlice, BrokenDocument,
    ::testing::Values(
        BrokenCase{"addressType missing", slice_with("endpoints: []\n"), kSlice + "addressType: required"},
        BrokenCase{"addressType unknown", slice_with("addressType: IPX\n"),
                   kSlice + "addressType: expected IPv4, IPv6 or FQDN, got \"IPX\""},
        BrokenCase{"address not an IP", slice_with("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1, x]}]\n"),
                   kSlice + "endpoints[0].addresses[1]: expected an IP address, got \"x\""},
        BrokenCase{"address of the wrong family", slice_with("addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]\n"),
                   kSlice + "endpoints[0].addresses[0]: expected an IPv4 address (the slice's addressType), got "
                            "\"fd00::1\""},
        BrokenCase{"ready not a bool",
                   slice_with("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: yes please}}]\n"),
                   kSlice + "endpoints[0].conditions.ready: expected true or false, got \"yes please\""},
        BrokenCase{"port", slice_with("addressType: IPv4\nports: [{name: tcp, port: -5}]\n"),
                   kSlice + "ports[0].port: expected an integer 1-65535, got \"-5\""},
        BrokenCase{"targetRef not a mapping",
                   slice_with("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], targetRef: pod/x}]\n"),
                   kSlice + "endpoints[0].targetRef: expected a mapping, got \"pod/x\""}),
    case_name);

TEST(ConfigDecoderErrors, MissingFileIsAConfigError) {
  try {
    load_objects_file(kDataDir + "/does-not-exist.yaml");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("does-not-exist.yaml: cannot open"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_objects_file(kDataDir), ConfigError);
}

}  // namespace
}  // namespace dsproxy::config
