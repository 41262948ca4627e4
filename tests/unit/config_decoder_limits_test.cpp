// The decoder's input limits (issue 14, finding 8): hostile config text is refused with an error
// that names the limit, before it costs CPU, memory or stack. Nothing here measures time: the
// ctest timeout is the bound a regression would hit (the billion-laughs document below took
// minutes before the limits).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "config/k8s_decoder.hpp"

namespace dsproxy::config {
namespace config_decoder_limits_test {  // named: unity builds put several test files in one translation unit

const std::string kDataDir = DSPROXY_TEST_DATA_DIR;

std::string error_of(const std::string& text, const DecodeLimits& limits = {}) {
  try {
    decode_objects(text, "cluster.yaml", limits);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "<decoded without error>";
}

// A valid Service whose spec more fields can be appended to ("  field: value\n").
const char* kService = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80}]\n";

// Nine lists of nine aliases to the previous level: 9^9 (387 million) strings for 500 bytes,
// decoded as an ignored field of a Service, where the decoder used to walk every one.
std::string billion_laughs() {
  std::string s = "apiVersion: v1\nkind: Service\nmetadata: {name: lol}\nspec:\n  ports: [{port: 80}]\n";
  s += "  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n";
  for (int level = 1; level <= 9; ++level) {
    const std::string prev = "*l" + std::to_string(level - 1);
    s += "  l" + std::to_string(level) + ": &l" + std::to_string(level) + " [";
    for (int i = 0; i < 9; ++i) s += (i ? ", " : "") + prev;
    s += "]\n";
  }
  return s;
}

TEST(ConfigDecoderLimits, BillionLaughsIsRefusedNamingTheLimit) {
  const std::string doc = billion_laughs();
  ASSERT_LT(doc.size(), 700u);
  // l1 to l4 repeat 90 + 819 + 7,380 + 66,429 nodes; l5's first alias (line 11) adds 66,430.
  EXPECT_EQ(error_of(doc),
            "cluster.yaml: document 1: line 11, column 12: aliases repeat more than 100000 nodes in total "
            "(the config alias-expansion limit)");
}

TEST(ConfigDecoderLimits, AliasesCountOverAllDocuments) {
  // Each document alone is within a limit of 25 repeated nodes, together they are not.
  const std::string doc = std::string(kService) + "  x: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\n  y: [*a]\n";
  DecodeLimits limits;
  limits.max_alias_nodes = 25;
  EXPECT_EQ(error_of(doc, limits), "<decoded without error>");
  const std::string other = "---\napiVersion: v1\nkind: Service\nmetadata: {name: t}\nspec: {clusterIP: 10.96.0.2, "
                            "ports: [{port: 80}], x: &a [1, 2, 3, 4, 5, 6, 7, 8, 9], y: [*a, *a]}\n";
  EXPECT_EQ(error_of(doc + other, limits),
            "cluster.yaml: document 2: line 13, column 94: aliases repeat more than 25 nodes in total "
            "(the config alias-expansion limit)");
}

TEST(ConfigDecoderLimits, CyclicAliasIsRefusedNotAStackOverflow) {
  // yaml-cpp builds a node that contains itself; the decoder's walk used to recurse until SIGSEGV.
  EXPECT_EQ(error_of("apiVersion: v1\nkind: Service\nmetadata: {name: x, labels: &l {app: *l}}\n"),
            "cluster.yaml: document 1: line 3, column 38: an alias refers to a mapping or list that contains it "
            "(a cycle)");
  EXPECT_NE(error_of(std::string(kService) + "  loop: &s [a, [b, *s]]\n").find("(a cycle)"), std::string::npos);
}

TEST(ConfigDecoderLimits, ReasonableAliasesStillDecode) {
  const ClusterObjects o = decode_objects(R"(
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: &app {app: web}
spec:
  clusterIP: 10.96.0.1
  selector: *app
  ports: [{name: http, port: 80}]
)");
  ASSERT_EQ(o.services.size(), 1u);
  EXPECT_EQ(o.services[0].labels, (Labels{{"app", "web"}}));
  EXPECT_EQ(o.services[0].selector, (Labels{{"app", "web"}}));
}

TEST(ConfigDecoderLimits, DeepNestingIsRefusedInYamlAndJson) {
  const std::string flow = std::string(kService) + "  deep: " + std::string(5000, '[') + std::string(5000, ']') + "\n";
  EXPECT_NE(error_of(flow).find("nested deeper than 100 levels (the config nesting limit)"), std::string::npos)
      << error_of(flow);

  std::string block = std::string(kService) + "  deep:\n";
  for (int i = 0; i < 150; ++i) block += std::string(4 + 2 * i, ' ') + "k:\n";
  EXPECT_NE(error_of(block).find("(the config nesting limit)"), std::string::npos) << error_of(block);

  std::string json = R"({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "j"}, "spec": {"x": )";
  for (int i = 0; i < 1000; ++i) json += R"({"a": )";
  json += "1" + std::string(1000, '}') + "}}";
  EXPECT_EQ(error_of(json).substr(0, 33), "cluster.yaml: document 1: line 1,") << error_of(json);
  EXPECT_NE(error_of(json).find("nested deeper than 100 levels (the config nesting limit)"), std::string::npos);

  // Exactly at the limit is fine: 100 levels are the document, spec, x and 97 more.
  std::string at_limit = R"({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "j"}, "spec": {"ports": [{"port": 80}], "x": )";
  for (int i = 0; i < 98; ++i) at_limit += "[";
  at_limit += std::string(98, ']') + "}}";
  EXPECT_EQ(error_of(at_limit), "<decoded without error>");
  EXPECT_NE(error_of("[" + at_limit + "]").find("nesting limit"), std::string::npos);
}

TEST(ConfigDecoderLimits, OversizedInputIsRefusedBeforeParsing) {
  // One byte over the limit; spaces would parse to nothing, so only the size check can fail it.
  DecodeLimits limits;
  limits.max_bytes = 100;
  EXPECT_EQ(error_of(std::string(101, ' '), limits), "cluster.yaml: 101 bytes, more than 100 (the config size limit)");
  EXPECT_EQ(error_of(std::string(100, ' '), limits), "<decoded without error>");

  // A file stops being read one byte past the limit.
  try {
    load_objects_file(kDataDir + "/multi-document.yaml", limits);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), kDataDir + "/multi-document.yaml: more than 100 bytes (the config size limit)");
  }
}

TEST(ConfigDecoderLimits, TooManyNodesIsRefused) {
  DecodeLimits limits;
  limits.max_nodes = 50;
  try {
    load_objects_file(kDataDir + "/kubectl-list.yaml", limits);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("more than 50 nodes (the config node limit)"), std::string::npos) << e.what();
  }
  // Limits are checked before yaml-cpp builds anything: a flat list one past the limit.
  limits.max_nodes = 1000;
  std::string many = "[1";
  for (int i = 0; i < 1000; ++i) many += ",1";
  // The list is a node too: 1,000 scalars in a list are 1,001 nodes, and the 1,000th scalar fails.
  EXPECT_EQ(error_of(many + "]", limits),
            "cluster.yaml: document 1: line 1, column 2000: more than 1000 nodes (the config node limit)");
  // 999 scalars pass the guard (and fail the decoder: a list is not a Kubernetes object).
  EXPECT_EQ(error_of("[1" + many.substr(6) + "]", limits),
            "cluster.yaml: document 1: expected a mapping (a Kubernetes object), got a list");
}

// Found by fuzz/config_decoder_fuzzer: after this broken JSON, yaml-cpp 0.7 stops consuming input
// and reports an empty document at the same place forever; LoadAll never returned (CPU and memory
// until killed). The decoder now stops at the second document that starts where the last one did.
// Text that starts with `{` is JSON to the decoder, and its error is the JSON parser's; yaml-cpp
// still reads it (flow YAML looks like JSON), so it must still stop; as YAML proper (the comment
// line first), the message is the YAML reader's.
TEST(ConfigDecoderLimits, ParserThatStopsAdvancingIsAnError) {
  const std::string stall =
      "{\n\t\"apiVersamespace\": \"ipv6\"},\n\t\t\t\"spec\": {\n\t\t\t\t\"clusterIP\": \"fd00:10:96::9c3a\",\n"
      "\t\t\t\t\"clusterIPs\": [\"fd00:10:96::9c3a\"],\n\t\t\t\t\"ipFamilies\": [\"IPv6\"],\n"
      "\t\t\t\t\"ipFamilyPolicy\": \"SingleStack\",\n\t\t\t\"ports\": [{\"name\": \"tcp\", \"containerPort\": 9000}]}]},\n"
      "\t\t\t\"status\": {\"podIPs\": [{\"ip\": \"10.244.0.24\"}], \"conditions\": [{\"type\": \"Ready\"}]}\n\t\t}\n\t]\n}\n";
  EXPECT_EQ(error_of(stall), "cluster.yaml: line 2, column 28: invalid JSON: text after the end of the value");
  EXPECT_EQ(error_of("# not JSON\n" + stall),
            "cluster.yaml: document 3: line 3, column 28: invalid YAML: the parser stopped advancing here (check the "
            "brackets and quotes before this point)");
}

// Within every limit, a Service with many ports: the duplicate check compared each port with all
// earlier ones (and built a message path each time), minutes of CPU for 60,000 ports (measured: over 2 minutes). Now each
// port is looked up once; the error still names the first holder of the port and of the name.
TEST(ConfigDecoderLimits, ManyServicePortsDecodeAndDuplicatesAreNamed) {
  std::string text = "apiVersion: v1\nkind: Service\nmetadata: {name: many}\nspec:\n  clusterIP: 10.96.0.1\n  ports:\n";
  for (int i = 1; i <= 5000; ++i)
    text += "  - {name: p" + std::to_string(i) + ", port: " + std::to_string(i) + "}\n";
  const ClusterObjects o = decode_objects(text);
  ASSERT_EQ(o.services.size(), 1u);
  ASSERT_EQ(o.services[0].ports.size(), 5000u);
  EXPECT_EQ(o.services[0].ports[4999].port, 5000);

  EXPECT_EQ(error_of(text + "  - {name: late, port: 1234}\n"),
            "cluster.yaml: document 1 (Service default/many): spec.ports[5000].port: 1234/TCP is already spec.ports[1233]");
  EXPECT_EQ(error_of(text + "  - {name: p777, port: 30000}\n"),
            "cluster.yaml: document 1 (Service default/many): spec.ports[5000].name: \"p777\" is already "
            "spec.ports[776].name");
}

// A config of the kind a generator writes, a few megabytes, loads under the default limits,
// with an anchor per Service as a hand-written file would use one.
TEST(ConfigDecoderLimits, LargeNormalConfigLoads) {
  constexpr int kServices = 2000;
  std::string text;
  for (int i = 0; i < kServices; ++i) {
    const std::string n = std::to_string(i);
    const std::string v4 = "10.96." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1);
    const std::string v4ep = "10.244." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1);
    char v6[32];
    std::snprintf(v6, sizeof v6, "fd00:10:96::%x", i + 1);
    text += "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-" + n + "\n  namespace: ns-" +
            std::to_string(i % 50) + "\n  labels: &l" + n + " {app: svc-" + n +
            ", tier: backend}\n  annotations: {note: \"generated service " + n +
            "\"}\nspec:\n  type: ClusterIP\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n"
            "  clusterIPs: [" + v4 + ", \"" + v6 + "\"]\n  selector: *l" + n +
            "\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  - {name: grpc, port: 9000}\n"
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-" + n +
            "-v4\n  namespace: ns-" + std::to_string(i % 50) + "\n  labels: {kubernetes.io/service-name: svc-" + n +
            "}\naddressType: IPv4\nendpoints:\n- addresses: [" + v4ep + "]\n  conditions: {ready: true}\n"
            "  nodeName: node-" + std::to_string(i % 10) + "\nports:\n- {name: http, port: 8080, protocol: TCP}\n"
            "- {name: grpc, port: 9000, protocol: TCP}\n";
  }
  ASSERT_GT(text.size(), 1'500'000u);
  const ClusterObjects o = decode_objects(text, "generated.yaml");
  ASSERT_EQ(o.services.size(), static_cast<std::size_t>(kServices));
  ASSERT_EQ(o.endpoint_slices.size(), static_cast<std::size_t>(kServices));
  EXPECT_EQ(o.services[kServices - 1].selector, (Labels{{"app", "svc-1999"}, {"tier", "backend"}}));
  EXPECT_TRUE(o.warnings.empty());
}

}  // namespace config_decoder_limits_test
}  // namespace dsproxy::config
