// AuthorizationPolicy: decoding, ztunnel's matching semantics and the decision, as one table of
// (policy set, connection) -> decision, then the index's scope and its use by the snapshot.

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "authz/policy.hpp"
#include "authz/policy_index.hpp"
#include "config/k8s_decoder.hpp"
#include "net/cidr.hpp"
#include "snapshot/cluster_snapshot.hpp"
#include "snapshot/snapshot_builder.hpp"

namespace dsproxy::authz {
namespace authz_test {  // named: unity builds put several test files in one translation unit

net::IpAddress ip(std::string_view s) { return *net::IpAddress::parse(s); }

// The node's workloads every case runs against.
std::vector<PolicyIndex::LocalWorkload> workloads() {
  return {
      {"web", "app", {{"app", "web"}}, "web-sa", {ip("10.244.0.10"), ip("fd00:10:244::10")}},
      {"db", "app", {{"app", "db"}}, "db-sa", {ip("10.244.0.11"), ip("fd00:10:244::11")}},
      {"svc", "other", {{"app", "web"}}, "default", {ip("10.244.0.12")}},
      {"gw", "istio-system", {{"app", "gw"}}, "gw", {ip("10.244.0.13")}},
  };
}

std::shared_ptr<const PolicyIndex> index_of(const std::string& yaml, const std::string& root = "istio-system") {
  auto set = std::make_shared<PolicyIndex::PolicySet>();
  if (!yaml.empty()) {
    auto objects = config::decode_objects(yaml);
    for (const auto& p : objects.authorization_policies) (*set)[p.ns][p.name] = compile(p, root, nullptr, false);
  }
  return PolicyIndex::build(set, workloads(), root);
}

struct Case {
  std::string name;
  std::string policies;  // YAML documents
  std::string destination;
  std::uint16_t port;
  std::string source;
  std::string identity;  // "ns/sa" in trust domain cluster.local; "" = plaintext
  bool allow;
  std::string policy;  // the deciding policy's key, "" for none
};

Decision run(const PolicyIndex& index, const Case& c) {
  const Workload* w = index.workload(ip(c.destination));
  if (!w) throw std::runtime_error("no workload " + c.destination);
  ConnectionAttributes attrs{ip(c.source), ip(c.destination), c.port, std::nullopt};
  if (!c.identity.empty()) {
    const auto slash = c.identity.find('/');
    attrs.source_identity = SourceIdentity{"cluster.local", c.identity.substr(0, slash), c.identity.substr(slash + 1)};
  }
  return decide(*w, attrs);
}

std::string policy(const std::string& ns, const std::string& name, const std::string& spec,
                   const std::string& api = "security.istio.io/v1", const std::string& annotations = "") {
  return "---\napiVersion: " + api + "\nkind: AuthorizationPolicy\nmetadata:\n  name: " + name + "\n  namespace: " + ns +
         "\n" + annotations + "spec:\n" + spec + "\n";
}

const std::string kWebSelector = "  selector:\n    matchLabels:\n      app: web\n";

std::vector<Case> cases() {
  const std::string allow_ip = policy("app", "allow-ip", kWebSelector + R"(  action: ALLOW
  rules:
  - from:
    - source:
        ipBlocks: ["10.0.0.0/8", "fd00:1::/32"])");
  const std::string allow_not_ip = policy("app", "allow-not-ip", kWebSelector + R"(  rules:
  - from:
    - source:
        notIpBlocks: ["192.168.0.0/16", "fd00:bad::/32"])");
  const std::string allow_mapped = policy("app", "allow-mapped", kWebSelector + R"(  rules:
  - from:
    - source:
        ipBlocks: ["::ffff:10.1.0.0/112"])");
  const std::string ports = policy("app", "ports", kWebSelector + R"(  rules:
  - to:
    - operation:
        ports: ["8080", "9000"]
        notPorts: ["9000"])");
  const std::string principals = policy("app", "principals", kWebSelector + R"(  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/client/sa/curl"])");
  const std::string prefix = policy("app", "prefix", kWebSelector + R"(  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/client/*"])");
  const std::string suffix = policy("app", "suffix", kWebSelector + R"(  rules:
  - from:
    - source:
        principals: ["*/sa/curl"])");
  const std::string presence = policy("app", "presence", kWebSelector + R"(  rules:
  - from:
    - source:
        principals: ["*"])");
  const std::string spiffe_written = policy("app", "spiffe-written", kWebSelector + R"(  rules:
  - from:
    - source:
        principals: ["spiffe://cluster.local/ns/client/sa/curl"])");
  const std::string require_mtls = policy("app", "require-mtls", kWebSelector + R"(  action: DENY
  rules:
  - from:
    - source:
        notPrincipals: ["*"])");
  const std::string namespaces = policy("app", "namespaces", kWebSelector + R"(  rules:
  - from:
    - source:
        namespaces: ["client", "team-*"]
        notNamespaces: ["team-b"])");
  const std::string not_namespaces_deny = policy("app", "not-ns", kWebSelector + R"(  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["app"])");
  const std::string service_accounts = policy("app", "sas", kWebSelector + R"(  rules:
  - from:
    - source:
        serviceAccounts: ["client/curl", "local-sa"])");
  const std::string when_l4 = policy("app", "when", kWebSelector + R"(  rules:
  - when:
    - key: source.ip
      values: ["10.0.0.0/8"]
      notValues: ["10.9.0.0/16"]
    - key: destination.port
      values: ["8080"]
    - key: destination.ip
      notValues: ["fd00:10:244::10"])");
  const std::string when_identity = policy("app", "when-id", kWebSelector + R"(  rules:
  - when:
    - key: source.namespace
      values: ["client"]
    - key: source.principal
      notValues: ["cluster.local/ns/client/sa/bad"])");
  const std::string two_rules = policy("app", "two-rules", kWebSelector + R"(  rules:
  - to:
    - operation:
        ports: ["80"]
  - from:
    - source:
        ipBlocks: ["10.5.0.0/16"])");
  const std::string from_and_to = policy("app", "from-and-to", kWebSelector + R"(  rules:
  - from:
    - source:
        ipBlocks: ["10.5.0.0/16"]
    - source:
        ipBlocks: ["10.6.0.0/16"]
    to:
    - operation:
        ports: ["80"])");
  const std::string mesh_deny = policy("istio-system", "mesh-deny", R"(  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["10.66.0.0/16"])");
  const std::string mesh_selector = policy("istio-system", "mesh-web", kWebSelector + R"(  action: DENY
  rules:
  - to:
    - operation:
        ports: ["22"])");
  const std::string ns_deny = policy("app", "ns-deny", R"(  action: DENY
  rules:
  - to:
    - operation:
        ports: ["23"])");
  const std::string allow_all_web = policy("app", "allow-all", kWebSelector + "  rules:\n  - {}\n");
  const std::string allow_nothing = policy("app", "allow-nothing", kWebSelector);
  const std::string deny_no_rules = policy("app", "deny-no-rules", kWebSelector + "  action: DENY\n");
  const std::string dry_deny = policy("app", "dry-deny", kWebSelector + R"(  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["10.7.0.0/16"])",
                                      "security.istio.io/v1", "  annotations:\n    istio.io/dry-run: \"true\"\n");
  const std::string dry_allow = policy("app", "dry-allow", kWebSelector + R"(  rules:
  - from:
    - source:
        ipBlocks: ["10.8.0.0/16"])",
                                       "security.istio.io/v1", "  annotations:\n    istio.io/dry-run: \"true\"\n");
  const std::string audit = policy("app", "audit", kWebSelector + R"(  action: AUDIT
  rules:
  - to:
    - operation:
        ports: ["8080"])");
  const std::string l7_allow = policy("app", "l7-allow", kWebSelector + R"(  rules:
  - from:
    - source:
        ipBlocks: ["10.0.0.0/8"]
    to:
    - operation:
        methods: ["GET"]
  - to:
    - operation:
        ports: ["9443"])");
  const std::string l7_allow_request_principals = policy("app", "l7-rp", kWebSelector + R"(  rules:
  - from:
    - source:
        requestPrincipals: ["*"])");
  const std::string l7_allow_when = policy("app", "l7-when", kWebSelector + R"(  rules:
  - when:
    - key: request.headers[x-user]
      values: ["admin"])");
  const std::string l7_deny_mixed = policy("app", "l7-deny", kWebSelector + R"(  action: DENY
  rules:
  - to:
    - operation:
        ports: ["80"]
        paths: ["/admin"])");
  const std::string l7_deny_only = policy("app", "l7-deny-only", kWebSelector + R"(  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["10.3.0.0/16"]
    to:
    - operation:
        methods: ["POST"])");
  const std::string l7_deny_when = policy("app", "l7-deny-when", kWebSelector + R"(  action: DENY
  rules:
  - when:
    - key: request.auth.claims[iss]
      values: ["x"])");
  const std::string custom = policy("app", "custom", kWebSelector + R"(  action: CUSTOM
  provider:
    name: ext
  rules:
  - {})");
  const std::string target_ref = policy("app", "waypoint", R"(  targetRefs:
  - kind: Service
    group: ""
    name: web
  rules:
  - from:
    - source:
        ipBlocks: ["1.2.3.4/32"])");
  const std::string v1beta1 = policy("app", "beta", kWebSelector + R"(  rules:
  - from:
    - source:
        ipBlocks: ["10.0.0.0/8"])",
                                     "security.istio.io/v1beta1");

  const std::string web = "10.244.0.10", web6 = "fd00:10:244::10", db = "10.244.0.11", other = "10.244.0.12";
  return {
      {"no policy: allow", "", web, 80, "192.0.2.1", "", true, ""},
      {"ipBlocks v4 in", allow_ip, web, 80, "10.1.2.3", "", true, "app/allow-ip"},
      {"ipBlocks v4 out", allow_ip, web, 80, "192.0.2.1", "", false, ""},
      {"ipBlocks v6 in", allow_ip, web6, 80, "fd00:1::5", "", true, "app/allow-ip"},
      {"ipBlocks v6 out", allow_ip, web6, 80, "fd00:2::5", "", false, ""},
      {"ipBlocks: v4-mapped source matches its IPv4 block", allow_ip, web6, 80, "::ffff:10.1.2.3", "", true,
       "app/allow-ip"},
      {"ipBlocks: a v4-mapped block matches IPv4 sources", allow_mapped, web, 80, "10.1.9.9", "", true,
       "app/allow-mapped"},
      {"ipBlocks: never across families", allow_mapped, web6, 80, "fd00::1", "", false, ""},
      {"policy selects web only: db unaffected", allow_ip, db, 80, "192.0.2.1", "", true, ""},
      {"notIpBlocks: outside", allow_not_ip, web, 80, "10.1.2.3", "", true, "app/allow-not-ip"},
      {"notIpBlocks: inside v4", allow_not_ip, web, 80, "192.168.3.4", "", false, ""},
      {"notIpBlocks: inside v6", allow_not_ip, web6, 80, "fd00:bad::1", "", false, ""},
      {"ports: listed", ports, web, 8080, "192.0.2.1", "", true, "app/ports"},
      {"ports: listed and in notPorts", ports, web, 9000, "192.0.2.1", "", false, ""},
      {"ports: unlisted", ports, web, 22, "192.0.2.1", "", false, ""},
      {"principals exact with identity", principals, web, 80, "10.1.1.1", "client/curl", true, "app/principals"},
      {"principals: other identity", principals, web, 80, "10.1.1.1", "client/other", false, ""},
      {"principals: plaintext never matches", principals, web, 80, "10.1.1.1", "", false, ""},
      {"principals prefix", prefix, web, 80, "10.1.1.1", "client/anything", true, "app/prefix"},
      {"principals prefix: other ns", prefix, web, 80, "10.1.1.1", "clients/x", false, ""},
      {"principals suffix", suffix, web, 80, "10.1.1.1", "elsewhere/curl", true, "app/suffix"},
      {"principals *: any identity", presence, web, 80, "10.1.1.1", "x/y", true, "app/presence"},
      {"principals *: not plaintext", presence, web, 80, "10.1.1.1", "", false, ""},
      {"principals written with spiffe:// never match (as Istio)", spiffe_written, web, 80, "10.1.1.1", "client/curl",
       false, ""},
      {"DENY notPrincipals *: plaintext denied", require_mtls, web, 80, "10.1.1.1", "", false, "app/require-mtls"},
      {"DENY notPrincipals *: mTLS allowed", require_mtls, web, 80, "10.1.1.1", "client/curl", true, ""},
      {"namespaces: listed", namespaces, web, 80, "10.1.1.1", "client/x", true, "app/namespaces"},
      {"namespaces: prefix", namespaces, web, 80, "10.1.1.1", "team-a/x", true, "app/namespaces"},
      {"namespaces: in notNamespaces", namespaces, web, 80, "10.1.1.1", "team-b/x", false, ""},
      {"namespaces: plaintext", namespaces, web, 80, "10.1.1.1", "", false, ""},
      {"DENY notNamespaces: plaintext denied", not_namespaces_deny, web, 80, "10.1.1.1", "", false, "app/not-ns"},
      {"DENY notNamespaces: same namespace allowed", not_namespaces_deny, web, 80, "10.1.1.1", "app/x", true, ""},
      {"serviceAccounts ns/sa", service_accounts, web, 80, "10.1.1.1", "client/curl", true, "app/sas"},
      {"serviceAccounts sa of the policy's namespace", service_accounts, web, 80, "10.1.1.1", "app/local-sa", true,
       "app/sas"},
      {"serviceAccounts: plaintext", service_accounts, web, 80, "10.1.1.1", "", false, ""},
      {"when: all L4 conditions hold", when_l4, web, 8080, "10.1.1.1", "", true, "app/when"},
      {"when: source.ip notValues", when_l4, web, 8080, "10.9.1.1", "", false, ""},
      {"when: destination.port", when_l4, web, 80, "10.1.1.1", "", false, ""},
      {"when: destination.ip notValues", when_l4, web6, 8080, "::ffff:10.1.1.1", "", false, ""},
      {"when: source.namespace and principal", when_identity, web, 80, "10.1.1.1", "client/good", true, "app/when-id"},
      {"when: source.principal notValues", when_identity, web, 80, "10.1.1.1", "client/bad", false, ""},
      {"when: source.namespace, plaintext", when_identity, web, 80, "10.1.1.1", "", false, ""},
      {"rules are ORed (first)", two_rules, web, 80, "192.0.2.1", "", true, "app/two-rules"},
      {"rules are ORed (second)", two_rules, web, 22, "10.5.1.1", "", true, "app/two-rules"},
      {"rules are ORed (neither)", two_rules, web, 22, "192.0.2.1", "", false, ""},
      {"from entries ORed, from and to ANDed", from_and_to, web, 80, "10.6.1.1", "", true, "app/from-and-to"},
      {"from and to ANDed: port fails", from_and_to, web, 81, "10.6.1.1", "", false, ""},
      {"mesh-wide DENY in the root namespace applies to every namespace", mesh_deny, other, 80, "10.66.1.1", "",
       false, "istio-system/mesh-deny"},
      {"mesh-wide DENY: not matching", mesh_deny, other, 80, "10.67.1.1", "", true, ""},
      {"root-namespace selector applies across namespaces", mesh_selector, other, 22, "10.1.1.1", "", false,
       "istio-system/mesh-web"},
      {"root-namespace selector: not selected", mesh_selector, db, 22, "10.1.1.1", "", true, ""},
      {"namespace-wide DENY: same namespace", ns_deny, db, 23, "10.1.1.1", "", false, "app/ns-deny"},
      {"namespace-wide DENY: other namespace untouched", ns_deny, other, 23, "10.1.1.1", "", true, ""},
      {"DENY wins over a matching ALLOW", allow_all_web + ns_deny, web, 23, "10.1.1.1", "", false, "app/ns-deny"},
      {"rules: [{}] allows everything", allow_all_web, web, 1, "192.0.2.1", "", true, "app/allow-all"},
      {"ALLOW without rules allows nothing", allow_nothing, web, 80, "10.1.1.1", "client/curl", false, ""},
      {"DENY without rules denies nothing", deny_no_rules, web, 80, "10.1.1.1", "", true, ""},
      {"dry-run DENY changes nothing", dry_deny, web, 80, "10.7.1.1", "", true, ""},
      {"dry-run ALLOW is not an ALLOW policy", dry_allow, web, 80, "192.0.2.1", "", true, ""},
      {"dry-run ALLOW next to a real one", dry_allow + allow_ip, web, 80, "192.0.2.1", "", false, ""},
      {"AUDIT changes nothing", audit, web, 8080, "10.1.1.1", "", true, ""},
      {"AUDIT does not make an ALLOW policy", audit + ns_deny, web, 8080, "10.1.1.1", "", true, ""},
      {"L7 ALLOW: the rule with methods matches nothing", l7_allow, web, 80, "10.1.1.1", "", false, ""},
      {"L7 ALLOW: the other rule still allows", l7_allow, web, 9443, "192.0.2.1", "", true, "app/l7-allow"},
      {"L7 ALLOW: requestPrincipals rule matches nothing", l7_allow_request_principals, web, 80, "10.1.1.1",
       "client/curl", false, ""},
      {"L7 ALLOW: request.* when matches nothing", l7_allow_when, web, 80, "10.1.1.1", "client/curl", false, ""},
      {"L7 DENY: paths ignored, port 80 denied", l7_deny_mixed, web, 80, "10.1.1.1", "", false, "app/l7-deny"},
      {"L7 DENY: other port allowed", l7_deny_mixed, web, 81, "10.1.1.1", "", true, ""},
      {"L7 DENY: methods-only operation matches all, from still applies", l7_deny_only, web, 80, "10.3.1.1", "",
       false, "app/l7-deny-only"},
      {"L7 DENY: from does not match", l7_deny_only, web, 80, "10.4.1.1", "", true, ""},
      {"L7 DENY: request.auth when is ignored: denies all", l7_deny_when, web, 80, "192.0.2.1", "", false,
       "app/l7-deny-when"},
      {"CUSTOM is not enforced", custom, web, 80, "192.0.2.1", "", true, ""},
      {"targetRefs (waypoint) is not enforced", target_ref, web, 80, "192.0.2.1", "", true, ""},
      {"v1beta1 decodes the same", v1beta1, web, 80, "10.1.1.1", "", true, "app/beta"},
      {"v1beta1 denies the same", v1beta1, web, 80, "192.0.2.1", "", false, ""},
  };
}

const Case& named(const std::string& name) {
  static const std::vector<Case> all = cases();
  for (const auto& c : all)
    if (c.name == name) return c;
  throw std::runtime_error("no case " + name);
}

class DecisionTable : public ::testing::TestWithParam<Case> {};

TEST_P(DecisionTable, Decides) {
  const Case& c = GetParam();
  const auto index = index_of(c.policies);
  const Decision d = run(*index, c);
  EXPECT_EQ(!d.denied(), c.allow) << c.name;
  EXPECT_EQ(std::string(d.policy_key()), c.policy) << c.name;
}

INSTANTIATE_TEST_SUITE_P(Authz, DecisionTable, ::testing::ValuesIn(cases()), [](const auto& info) {
  std::string n;
  for (char ch : info.param.name) n += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return std::to_string(info.index) + "_" + n.substr(0, 60);
});

TEST(Authz, DryRunAndAuditNotes) {
  const auto dry = index_of(named("dry-run DENY changes nothing").policies);  // dry-run DENY
  const Decision d = run(*dry, {"", "", "10.244.0.10", 80, "10.7.1.1", "", true, ""});
  ASSERT_NE(d.dry_run_match, nullptr);
  EXPECT_EQ(d.dry_run_match->key, "app/dry-deny");
  EXPECT_TRUE(d.dry_run_would_deny);
  EXPECT_NE(describe(d, *dry->workload(ip("10.244.0.10"))).find("dry-run"), std::string::npos);

  const auto dry_allow = index_of(named("dry-run ALLOW is not an ALLOW policy").policies);
  const Decision d2 = run(*dry_allow, {"", "", "10.244.0.10", 80, "192.0.2.1", "", true, ""});
  EXPECT_TRUE(d2.dry_run_would_deny);
  const Decision d3 = run(*dry_allow, {"", "", "10.244.0.10", 80, "10.8.0.1", "", true, ""});
  EXPECT_FALSE(d3.dry_run_would_deny);
  ASSERT_NE(d3.dry_run_match, nullptr);
  EXPECT_GE(d3.dry_run_match->stats->dry_run.load(), 1u);

  const auto audit = index_of(named("AUDIT changes nothing").policies);
  const Decision a = run(*audit, {"", "", "10.244.0.10", 8080, "10.1.1.1", "", true, ""});
  ASSERT_NE(a.audit, nullptr);
  EXPECT_EQ(a.audit->key, "app/audit");
  EXPECT_EQ(a.audit->stats->audited.load(), 1u);
}

TEST(Authz, CountersPerPolicy) {
  const auto index = index_of(named("ipBlocks v4 in").policies);
  const auto* w = index->workload(ip("10.244.0.10"));
  ASSERT_NE(w, nullptr);
  ASSERT_EQ(w->allow.size(), 1u);
  for (int i = 0; i < 3; ++i) decide(*w, {ip("10.1.1.1"), ip("10.244.0.10"), 80, std::nullopt});
  decide(*w, {ip("192.0.2.1"), ip("10.244.0.10"), 80, std::nullopt});
  EXPECT_EQ(w->allow[0]->stats->allowed.load(), 3u);
}

TEST(Authz, ScopeAndIndex) {
  const std::string yaml = policy("istio-system", "mesh", "  action: DENY\n  rules:\n  - {}\n") +
                           policy("app", "ns", "  action: DENY\n  rules:\n  - {}\n") +
                           policy("app", "sel", kWebSelector + "  action: ALLOW\n") +
                           policy("other", "far", "  action: DENY\n");
  const auto index = index_of(yaml);
  EXPECT_EQ(index->policy_count(), 4u);
  const auto* web = index->workload(ip("fd00:10:244::10"));
  ASSERT_NE(web, nullptr);
  EXPECT_EQ(web->name, "web");
  EXPECT_EQ(web->deny.size(), 2u);   // mesh + ns
  EXPECT_EQ(web->allow.size(), 1u);  // sel
  const auto* db = index->workload(ip("10.244.0.11"));
  EXPECT_EQ(db->deny.size(), 2u);
  EXPECT_EQ(db->allow.size(), 0u);
  const auto* gw = index->workload(ip("10.244.0.13"));
  EXPECT_EQ(gw->deny.size(), 1u);  // mesh only, once
  EXPECT_EQ(index->workload(ip("10.244.9.9")), nullptr);
  // A custom root namespace moves the mesh scope.
  const auto moved = index_of(yaml, "app");
  // other/svc: app/ns (now mesh-wide) + other/far; app/sel's selector now reaches it too.
  EXPECT_EQ(moved->workload(ip("10.244.0.12"))->deny.size(), 2u);
  EXPECT_EQ(moved->workload(ip("10.244.0.12"))->allow.size(), 1u);
  EXPECT_EQ(moved->workload(ip("10.244.0.13"))->deny.size(), 2u);  // app/ns + istio-system/mesh, now namespace-wide
}

// Issue 12: "decision cost is constant in the number of policies that do not select the
// workload". decide() reads only the workload's own lists, so that holds if the index puts in
// them exactly the selecting policies, however many others exist in every place they could be:
// other namespaces, the workload's own namespace with other selectors, the root namespace with
// other selectors. And the decisions are the same as without the others.
TEST(Authz, NonSelectingPoliciesNeverReachTheDecision) {
  const std::string selecting =
      policy("app", "allow-web", kWebSelector + "  action: ALLOW\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0.0/8\"]\n") +
      policy("istio-system", "mesh-deny", "  action: DENY\n  rules:\n  - to:\n    - operation:\n        ports: [\"9999\"]\n");
  std::string others;
  for (int i = 0; i < 3000; ++i) {
    const std::string n = std::to_string(i);
    const std::string deny_all = "  action: DENY\n  rules:\n  - {}\n";
    others += policy("ns-" + n, "p", deny_all);                                                       // other namespaces
    others += policy("app", "other-" + n, "  selector:\n    matchLabels: {app: other-" + n + "}\n" + deny_all);  // same ns
    others += policy("istio-system", "sel-" + n, "  selector:\n    matchLabels: {app: x-" + n + "}\n" + deny_all);  // root
  }
  const auto small = index_of(selecting);
  const auto big = index_of(selecting + others);
  EXPECT_EQ(big->policy_count(), 9002u);
  const Workload* w = big->workload(ip("10.244.0.10"));
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->deny.size(), 1u);
  EXPECT_EQ(w->allow.size(), 1u);
  EXPECT_TRUE(w->audit.empty());
  EXPECT_TRUE(w->dry_run.empty());
  // svc (namespace other, app: web) is selected by the mesh-wide DENY only.
  EXPECT_EQ(big->workload(ip("10.244.0.12"))->deny.size(), 1u);
  EXPECT_TRUE(big->workload(ip("10.244.0.12"))->allow.empty());
  for (const Case& c : std::vector<Case>{
           {"allowed", "", "10.244.0.10", 9000, "10.1.2.3", "", true, "app/allow-web"},
           {"no allow match", "", "10.244.0.10", 9000, "192.168.1.1", "", false, ""},
           {"mesh deny", "", "fd00:10:244::10", 9999, "10.1.2.3", "", false, "istio-system/mesh-deny"},
           {"mesh deny, svc", "", "10.244.0.12", 9999, "10.1.2.3", "other/sa", false, "istio-system/mesh-deny"},
           {"svc allowed", "", "10.244.0.12", 9000, "192.168.1.1", "", true, ""},
       }) {
    const Decision a = run(*small, c), b = run(*big, c);
    EXPECT_EQ(b.denied(), !c.allow) << c.name;
    EXPECT_EQ(b.policy_key(), c.policy) << c.name;
    EXPECT_EQ(a.denied(), b.denied()) << c.name;
    EXPECT_EQ(a.policy_key(), b.policy_key()) << c.name;
  }
}

TEST(Authz, StringMatchAndCidr) {
  EXPECT_TRUE(StringMatch::parse("*").matches("x"));
  EXPECT_FALSE(StringMatch::parse("*").matches(""));
  EXPECT_TRUE(StringMatch::parse("a*").matches("abc"));
  EXPECT_TRUE(StringMatch::parse("*c").matches("abc"));
  EXPECT_FALSE(StringMatch::parse("abc").matches("abcd"));
  auto c = net::Cidr::parse("10.1.2.3/8");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->to_string(), "10.0.0.0/8");
  EXPECT_TRUE(c->contains(ip("10.200.0.1")));
  EXPECT_TRUE(c->contains(ip("::ffff:10.200.0.1")));
  EXPECT_FALSE(c->contains(ip("11.0.0.1")));
  EXPECT_EQ(net::Cidr::parse("10.0.0.1")->prefix(), 32);
  EXPECT_EQ(net::Cidr::parse("fd00::1")->prefix(), 128);
  EXPECT_TRUE(net::Cidr::parse("fd00::/7")->contains(ip("fdff::1")));
  EXPECT_FALSE(net::Cidr::parse("fd00::/8")->contains(ip("fe00::1")));
  EXPECT_EQ(net::Cidr::parse("::ffff:10.0.0.0/104")->to_string(), "10.0.0.0/8");
  EXPECT_FALSE(net::Cidr::parse("10.0.0.0/33"));
  EXPECT_FALSE(net::Cidr::parse("::ffff:10.0.0.0/90"));
  EXPECT_FALSE(net::Cidr::parse("10.0.0.0/"));
  EXPECT_FALSE(net::Cidr::parse("nope/8"));
}

TEST(AuthzDecoder, RefusesWhatIstioRefuses) {
  auto bad = [](const std::string& spec) {
    try {
      config::decode_objects(policy("app", "bad", spec));
    } catch (const config::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(bad("  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0.0/99\"]\n").find(
                "spec.rules[0].from[0].source.ipBlocks[0]: expected an IP address or CIDR block"),
            std::string::npos);
  EXPECT_NE(bad("  rules:\n  - to:\n    - operation:\n        ports: [\"http\"]\n")
                .find("spec.rules[0].to[0].operation.ports[0]: expected a port 1-65535"),
            std::string::npos);
  EXPECT_NE(bad("  action: MAYBE\n").find("spec.action"), std::string::npos);
  EXPECT_NE(bad("  rules:\n  - when:\n    - key: destination.port\n      values: [\"0\"]\n").find("when[0].values[0]"),
            std::string::npos);
  // Another API group's kind of the same name is ignored with a warning, not decoded.
  auto other = config::decode_objects(policy("app", "x", "  action: DENY\n", "example.com/v1"));
  EXPECT_TRUE(other.authorization_policies.empty());
  EXPECT_FALSE(other.warnings.empty());
}

TEST(AuthzDecoder, KeepsFieldsAndL7Names) {
  auto o = config::decode_objects(policy("app", "p", kWebSelector + R"(  action: DENY
  rules:
  - from:
    - source:
        principals: ["a"]
        remoteIpBlocks: ["1.2.3.4"]
    to:
    - operation:
        hosts: ["x"]
        notPorts: ["8"]
    when:
    - key: request.headers[a]
      values: ["b"])",
                                         "security.istio.io/v1", "  annotations:\n    istio.io/dry-run: \"true\"\n"));
  ASSERT_EQ(o.authorization_policies.size(), 1u);
  const auto& p = o.authorization_policies[0];
  EXPECT_TRUE(p.dry_run);
  EXPECT_EQ(p.action, config::AuthzAction::deny);
  ASSERT_TRUE(p.selector);
  EXPECT_EQ(p.selector->at("app"), "web");
  ASSERT_EQ(p.rules.size(), 1u);
  EXPECT_EQ(p.rules[0].from[0].l7, std::vector<std::string>{"remoteIpBlocks"});
  EXPECT_EQ(p.rules[0].to[0].l7, std::vector<std::string>{"hosts"});
  EXPECT_EQ(p.rules[0].to[0].not_ports, std::vector<std::uint16_t>{8});
  const auto compiled = compile(p, "istio-system", nullptr, false);
  EXPECT_EQ(compiled->l7_fields, (std::vector<std::string>{"hosts", "remoteIpBlocks", "when request.headers[a]"}));
}

TEST(AuthzSnapshot, IndexFollowsPoliciesAndLocalPods) {
  const std::string pod = R"(---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, labels: {app: web}}
spec: {nodeName: n1}
status: {podIPs: [{ip: 10.244.0.10}]}
)";
  snapshot::SnapshotBuilder builder({"n1"});
  builder.replace_all(config::decode_objects(pod + policy("app", "deny", "  action: DENY\n  rules:\n  - {}\n")));
  const auto s1 = builder.build();
  const auto* w = s1->authz().workload(ip("10.244.0.10"));
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->deny.size(), 1u);
  // Nothing changed: the index is shared (no re-evaluation of live connections).
  const auto s2 = builder.build();
  EXPECT_EQ(s1->authz_index(), s2->authz_index());
  // A removed policy: a new index without it.
  builder.erase(snapshot::ObjectKind::authorization_policy, "app", "deny");
  const auto s3 = builder.build();
  EXPECT_NE(s3->authz_index(), s2->authz_index());
  EXPECT_TRUE(s3->authz().workload(ip("10.244.0.10"))->deny.empty());
  // Counters survive an update of the same policy.
  builder.upsert(config::decode_objects(policy("app", "allow", "  rules:\n  - {}\n")).authorization_policies[0]);
  const auto s4 = builder.build();
  const auto& allow = s4->authz().workload(ip("10.244.0.10"))->allow;
  ASSERT_EQ(allow.size(), 1u);
  decide(*s4->authz().workload(ip("10.244.0.10")), {ip("10.1.1.1"), ip("10.244.0.10"), 80, std::nullopt});
  builder.upsert(config::decode_objects(policy("app", "allow", "  rules:\n  - {}\n  - {}\n")).authorization_policies[0]);
  const auto s5 = builder.build();
  EXPECT_EQ(s5->authz().workload(ip("10.244.0.10"))->allow[0]->stats->allowed.load(), 1u);
  EXPECT_EQ(s5->authz().workload(ip("10.244.0.10"))->allow[0]->rules.size(), 2u);
}

}  // namespace authz_test
}  // namespace dsproxy::authz
