// The cluster DNS table: name -> answer for every kind of Service and both families, the empty
// non-terminals, NXDOMAIN, PTR, and the search list a pod's stub resolver walks.

#include <gtest/gtest.h>

#include "config/k8s_decoder.hpp"
#include "resolver/cluster_dns.hpp"

namespace dsproxy::resolver {
namespace {

std::shared_ptr<const ClusterDns> table(ClusterDnsOptions options = {}) {
  static const auto objects =
      config::load_objects_file(std::string(DSPROXY_TEST_DATA_DIR) + "/resolver/cluster.yaml");
  return ClusterDns::build(objects, options);
}

// "NOERROR A=10.0.0.1 AAAA=fd00::1 | SOA": rcode, answers, then authority types.
std::string ask(const ClusterDns& dns, const std::string& name, std::uint16_t type) {
  const Question q{Name::from_text(name).value(), type, kClassIN};
  if (!dns.authoritative_for(q.name.key())) return "FORWARD";
  const ResponseSpec spec = dns.answer(q);
  std::string out(to_string(spec.rcode));
  for (const auto& r : spec.answers) {
    out += ' ';
    if (const auto* ip = std::get_if<net::IpAddress>(&r.data))
      out += (r.type == rrtype::A ? "A=" : "AAAA=") + ip->to_string();
    else if (const auto* n = std::get_if<Name>(&r.data))
      out += (r.type == rrtype::CNAME ? "CNAME=" : "PTR=") + n->to_text();
    else
      out += "SOA";
  }
  if (!spec.authority.empty()) out += " |";
  for (const auto& r : spec.authority) out += r.type == rrtype::SOA ? " SOA" : " ?";
  return out;
}

struct Row {
  const char* name;
  std::uint16_t type;
  const char* expected;
};

TEST(ResolverClusterDns, AnswerTable) {
  const auto dns = table();
  const std::vector<Row> rows = {
      // RequireDualStack [IPv6, IPv4]: both families.
      {"tcp-echo.dual-stack.svc.cluster.local", rrtype::A, "NOERROR A=10.96.106.11"},
      {"tcp-echo.dual-stack.svc.cluster.local", rrtype::AAAA, "NOERROR AAAA=fd00:10:96::f9fc"},
      {"tcp-echo.dual-stack.svc.cluster.local", rrtype::ANY, "NOERROR A=10.96.106.11 AAAA=fd00:10:96::f9fc"},
      // SingleStack IPv4: no AAAA, and an empty NOERROR (not NXDOMAIN) for it.
      {"tcp-echo.ipv4.svc.cluster.local", rrtype::A, "NOERROR A=10.96.104.229"},
      {"tcp-echo.ipv4.svc.cluster.local", rrtype::AAAA, "NOERROR | SOA"},
      // SingleStack IPv6: no A.
      {"tcp-echo.ipv6.svc.cluster.local", rrtype::A, "NOERROR | SOA"},
      {"tcp-echo.ipv6.svc.cluster.local", rrtype::AAAA, "NOERROR AAAA=fd00:10:96::9c3a"},
      // PreferDualStack with one family allocated.
      {"prefer.ipv4.svc.cluster.local", rrtype::A, "NOERROR A=10.96.7.7"},
      {"prefer.ipv4.svc.cluster.local", rrtype::AAAA, "NOERROR | SOA"},
      // Headless dual-stack: the ready pods (db-0, db-1), not the unready db-2.
      {"db.dual-stack.svc.cluster.local", rrtype::A, "NOERROR A=10.244.0.40 A=10.244.0.41"},
      {"db.dual-stack.svc.cluster.local", rrtype::AAAA, "NOERROR AAAA=fd00:10:244::28 AAAA=fd00:10:244::29"},
      // Headless IPv6-only over dual-stack pods: only their IPv6 addresses.
      {"db6.dual-stack.svc.cluster.local", rrtype::A, "NOERROR | SOA"},
      {"db6.dual-stack.svc.cluster.local", rrtype::AAAA, "NOERROR AAAA=fd00:10:244::28 AAAA=fd00:10:244::29"},
      // Headless without selector: the slice's ready addresses.
      {"external-db.default.svc.cluster.local", rrtype::A, "NOERROR A=192.0.2.10"},
      {"external-db.default.svc.cluster.local", rrtype::AAAA, "NOERROR | SOA"},
      // ExternalName: a CNAME for every type.
      {"search.default.svc.cluster.local", rrtype::A, "NOERROR CNAME=search.example.com"},
      {"search.default.svc.cluster.local", rrtype::AAAA, "NOERROR CNAME=search.example.com"},
      // Other types on an existing name: NODATA.
      {"tcp-echo.dual-stack.svc.cluster.local", rrtype::TXT, "NOERROR | SOA"},
      // Case does not matter.
      {"TCP-ECHO.Dual-Stack.SVC.cluster.LOCAL", rrtype::A, "NOERROR A=10.96.106.11"},
      // Empty non-terminals exist: NODATA, never NXDOMAIN.
      {"dual-stack.svc.cluster.local", rrtype::A, "NOERROR | SOA"},
      {"svc.cluster.local", rrtype::AAAA, "NOERROR | SOA"},
      {"cluster.local", rrtype::A, "NOERROR | SOA"},
      {"cluster.local", rrtype::SOA, "NOERROR SOA"},
      // Unknown names in the zone.
      {"nope.dual-stack.svc.cluster.local", rrtype::A, "NXDOMAIN | SOA"},
      {"tcp-echo.nope.svc.cluster.local", rrtype::AAAA, "NXDOMAIN | SOA"},
      {"x.tcp-echo.dual-stack.svc.cluster.local", rrtype::A, "NXDOMAIN | SOA"},
      {"nope.cluster.local", rrtype::A, "NXDOMAIN | SOA"},
      // PTR for ClusterIPs (not for headless pods).
      {"11.106.96.10.in-addr.arpa", rrtype::PTR, "NOERROR PTR=tcp-echo.dual-stack.svc.cluster.local"},
      {"a.3.c.9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa", rrtype::PTR,
       "NOERROR PTR=tcp-echo.ipv6.svc.cluster.local"},
      {"40.0.244.10.in-addr.arpa", rrtype::PTR, "FORWARD"},
      // Everything else goes upstream.
      {"example.com", rrtype::A, "FORWARD"},
      {"tcp-echo.dual-stack", rrtype::A, "FORWARD"},
      {"xcluster.local", rrtype::A, "FORWARD"},
  };
  for (const auto& row : rows) EXPECT_EQ(ask(*dns, row.name, row.type), row.expected) << row.name << " type " << row.type;
}

TEST(ResolverClusterDns, TtlAndDomainAreOptions) {
  ClusterDnsOptions options;
  options.domain = "corp.example";
  options.ttl = std::chrono::seconds(5);
  const auto dns = table(options);
  EXPECT_EQ(ask(*dns, "tcp-echo.ipv4.svc.cluster.local", rrtype::A), "FORWARD");
  EXPECT_EQ(ask(*dns, "tcp-echo.ipv4.svc.corp.example", rrtype::A), "NOERROR A=10.96.104.229");
  const auto spec = dns->answer({Name::from_text("tcp-echo.ipv4.svc.corp.example").value(), rrtype::A, kClassIN});
  ASSERT_EQ(spec.answers.size(), 1u);
  EXPECT_EQ(spec.answers[0].ttl, 5u);
  const auto nx = dns->answer({Name::from_text("nope.corp.example").value(), rrtype::A, kClassIN});
  ASSERT_EQ(nx.authority.size(), 1u);
  EXPECT_EQ(nx.authority[0].name.to_text(), "corp.example");
  EXPECT_EQ(std::get<SoaData>(nx.authority[0].data).minimum, 5u);
}

TEST(ResolverClusterDns, NonInClassIsRefused) {
  const auto spec = table()->answer({Name::from_text("tcp-echo.ipv4.svc.cluster.local").value(), rrtype::A, 3});
  EXPECT_EQ(spec.rcode, Rcode::Refused);
}

// What a pod's stub resolver does with ndots:5 and kubelet's search list: each candidate in
// order until one is not NXDOMAIN (NODATA also ends the walk, with no address of that family).
std::string resolve_like_a_stub(const ClusterDns& dns, const std::string& ns, const std::string& name,
                                std::uint16_t type) {
  std::vector<std::string> candidates;
  for (const auto& suffix : pod_search_list(ns, "cluster.local")) candidates.push_back(name + "." + suffix);
  candidates.push_back(name);
  for (const auto& c : candidates) {
    const std::string answer = ask(dns, c, type);
    if (answer.rfind("NXDOMAIN", 0) == 0 || answer == "FORWARD") continue;
    return c + " " + answer;
  }
  return "not found";
}

TEST(ResolverClusterDns, SearchListExpansion) {
  const auto dns = table();
  EXPECT_EQ(pod_search_list("default", "cluster.local"),
            (std::vector<std::string>{"default.svc.cluster.local", "svc.cluster.local", "cluster.local"}));
  // From default: "tcp-echo.dual-stack" resolves through the second search domain.
  EXPECT_EQ(resolve_like_a_stub(*dns, "default", "tcp-echo.dual-stack", rrtype::A),
            "tcp-echo.dual-stack.svc.cluster.local NOERROR A=10.96.106.11");
  EXPECT_EQ(resolve_like_a_stub(*dns, "default", "tcp-echo.ipv6", rrtype::AAAA),
            "tcp-echo.ipv6.svc.cluster.local NOERROR AAAA=fd00:10:96::9c3a");
  // The IPv4-only Service has no AAAA however it is reached: NODATA, not an address.
  EXPECT_EQ(resolve_like_a_stub(*dns, "default", "tcp-echo.ipv4", rrtype::AAAA),
            "tcp-echo.ipv4.svc.cluster.local NOERROR | SOA");
  // From inside the namespace the short name works through the first search domain.
  EXPECT_EQ(resolve_like_a_stub(*dns, "ipv4", "tcp-echo", rrtype::A), "tcp-echo.ipv4.svc.cluster.local NOERROR A=10.96.104.229");
  EXPECT_EQ(resolve_like_a_stub(*dns, "dual-stack", "tcp-echo", rrtype::AAAA),
            "tcp-echo.dual-stack.svc.cluster.local NOERROR AAAA=fd00:10:96::f9fc");
  // The fully qualified name also works (its search candidates are NXDOMAIN first).
  EXPECT_EQ(resolve_like_a_stub(*dns, "default", "tcp-echo.ipv6.svc.cluster.local", rrtype::AAAA),
            "tcp-echo.ipv6.svc.cluster.local NOERROR AAAA=fd00:10:96::9c3a");
  // A short name from another namespace is not found in the cluster (it would go upstream).
  EXPECT_EQ(resolve_like_a_stub(*dns, "default", "tcp-echo", rrtype::A), "not found");
}

TEST(ResolverClusterDns, ReverseNames) {
  EXPECT_EQ(reverse_name(net::IpAddress::parse("10.96.0.10").value()), "10.0.96.10.in-addr.arpa");
  EXPECT_EQ(reverse_name(net::IpAddress::parse("fd00::1").value()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa");
}

}  // namespace
}  // namespace dsproxy::resolver

namespace dsproxy::resolver {
namespace {

// Issue 16: publishNotReadyAddresses puts not-ready pods into a headless Service's answers; a pod
// being deleted (deletionTimestamp) is not ready, so it leaves them unless the Service publishes
// not-ready addresses.
TEST(ResolverClusterDns, PublishNotReadyAddressesAndTerminatingPods) {
  auto objects = config::load_objects_file(std::string(DSPROXY_TEST_DATA_DIR) + "/resolver/cluster.yaml");
  for (auto& p : objects.pods)
    if (p.name == "db-1") p.terminating = true;
  EXPECT_EQ(ask(*ClusterDns::build(objects, {}), "db.dual-stack.svc.cluster.local", rrtype::A), "NOERROR A=10.244.0.40");
  for (auto& s : objects.services)
    if (s.name == "db") s.publish_not_ready_addresses = true;
  EXPECT_EQ(ask(*ClusterDns::build(objects, {}), "db.dual-stack.svc.cluster.local", rrtype::A),
            "NOERROR A=10.244.0.40 A=10.244.0.41 A=10.244.0.42");
}

}  // namespace
}  // namespace dsproxy::resolver
