// Hostname endpoints: FQDN EndpointSlices and ExternalName targets of Services annotated
// dsproxy.io/resolve: "true", resolved one family per query, re-resolved at TTL expiry on a fake
// clock, turned into IPv4/IPv6 slices the snapshot routes to (with the family policy applied).

#include <gtest/gtest.h>

#include <algorithm>

#include "snapshot/cluster_snapshot.hpp"
#include "config/k8s_decoder.hpp"
#include "resolver/cluster_dns.hpp"
#include "resolver/hostname_table.hpp"

namespace dsproxy::resolver {
namespace resolver_hostname_test {  // named: unity builds put several test files in one translation unit

using namespace std::chrono_literals;

net::IpAddress ip(const char* text) { return net::IpAddress::parse(text).value(); }

const char* kObjects = R"(
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: default
  annotations: {dsproxy.io/resolve: "true"}
spec:
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: fd00:10:96::db
  clusterIPs: [fd00:10:96::db]
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-fqdn
  namespace: default
  labels: {kubernetes.io/service-name: db}
addressType: FQDN
endpoints:
- addresses: [db.example.com]
ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata:
  name: search
  namespace: default
  annotations: {dsproxy.io/resolve: "true"}
spec:
  type: ExternalName
  externalName: search.example.com
---
# Not annotated: its FQDN slice is left alone.
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec:
  clusterIP: 10.96.9.9
  clusterIPs: [10.96.9.9]
  ipFamilies: [IPv4]
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: plain-fqdn
  namespace: default
  labels: {kubernetes.io/service-name: plain}
addressType: FQDN
endpoints:
- addresses: [plain.example.com]
ports: [{name: pg, port: 5432}]
)";

// Answers by hand; records every question.
class FakeUpstream final : public Upstream {
 public:
  void send(Bytes query, Done done) override {
    auto parsed = parse_query(query);
    questions.push_back(parsed.query.question.name.key() + (parsed.query.question.type == rrtype::A ? " A" : " AAAA"));
    pending.push_back({std::move(query), std::move(done)});
  }
  // Answers the pending question `question` ("db.example.com AAAA") with `addresses`.
  bool answer(const std::string& question, std::vector<net::IpAddress> addresses, std::uint32_t ttl) {
    for (std::size_t i = 0; i < pending.size(); ++i) {
      auto parsed = parse_query(pending[i].first);
      const std::string q =
          parsed.query.question.name.key() + (parsed.query.question.type == rrtype::A ? " A" : " AAAA");
      if (q != question) continue;
      ResponseSpec spec;
      for (const auto& a : addresses)
        spec.answers.push_back({parsed.query.question.name, a.is_v4() ? rrtype::A : rrtype::AAAA, ttl, a});
      auto done = std::move(pending[i].second);
      Bytes response = build_response(parsed.query, pending[i].first, spec);
      pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));
      done({true, std::move(response), {}});
      return true;
    }
    return false;
  }
  std::vector<std::string> questions;
  std::vector<std::pair<Bytes, Done>> pending;
};

class ResolverHostnames : public ::testing::Test {
 protected:
  ResolverHostnames() : objects(config::decode_objects(kObjects)), table(upstream, [this] { return now; }) {
    table.on_change([this] { ++changes; });
  }
  config::ClusterObjects objects;
  FakeUpstream upstream;
  std::chrono::steady_clock::time_point now{std::chrono::hours(1)};
  HostnameTable table;
  int changes = 0;
};

TEST_F(ResolverHostnames, DecoderKeepsFqdnSlicesApart) {
  EXPECT_TRUE(objects.endpoint_slices.empty());
  ASSERT_EQ(objects.fqdn_slices.size(), 2u);
  EXPECT_EQ(objects.fqdn_slices[0].endpoints.at(0).hostnames, std::vector<std::string>{"db.example.com"});
  EXPECT_THROW(config::decode_objects(R"(apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: x, namespace: default}
addressType: FQDN
endpoints: [{addresses: ["not a host"]}]
)"),
               config::ConfigError);
}

TEST_F(ResolverHostnames, OneQueryPerFamilyForAnnotatedServicesOnly) {
  table.update(objects);
  EXPECT_EQ(upstream.questions, (std::vector<std::string>{"search.example.com A", "search.example.com AAAA",
                                                          "db.example.com A", "db.example.com AAAA"}));
  EXPECT_EQ(table.size(), 2u);
  // The AAAA answer does not wait for the A one.
  ASSERT_TRUE(upstream.answer("db.example.com AAAA", {ip("2001:db8::5")}, 60));
  EXPECT_EQ(table.addresses("db.example.com"), std::vector<net::IpAddress>{ip("2001:db8::5")});
  EXPECT_EQ(changes, 1);
  ASSERT_TRUE(upstream.answer("db.example.com A", {ip("192.0.2.5")}, 60));
  EXPECT_EQ(table.addresses("db.example.com"), (std::vector<net::IpAddress>{ip("192.0.2.5"), ip("2001:db8::5")}));
}

TEST_F(ResolverHostnames, ResolvedAddressesBecomeEndpointsOfTheServiceFamiliesOnly) {
  table.update(objects);
  upstream.answer("db.example.com A", {ip("192.0.2.5")}, 60);
  upstream.answer("db.example.com AAAA", {ip("2001:db8::5"), ip("2001:db8::6")}, 60);
  config::ClusterObjects augmented = objects;
  table.augment(augmented);
  const auto snapshot = snapshot::ClusterSnapshot::build(augmented, {"kind-worker"});
  const auto* cluster = snapshot->find_cluster({ip("fd00:10:96::db"), 5432});
  ASSERT_NE(cluster, nullptr);
  // The Service is IPv6-only: the IPv4 address of the hostname is not an endpoint.
  std::vector<std::string> endpoints;
  for (const auto& e : cluster->endpoints) endpoints.push_back(e.address.to_string() + (e.ready ? " ready" : ""));
  EXPECT_EQ(endpoints, (std::vector<std::string>{"[2001:db8::5]:5432 ready", "[2001:db8::6]:5432 ready"}));
  // The unannotated Service got nothing.
  const auto* plain = snapshot->find_cluster({ip("10.96.9.9"), 5432});
  ASSERT_NE(plain, nullptr);
  EXPECT_TRUE(plain->endpoints.empty());
}

// Issue 14, finding 1: a DNS answer is no more trusted than a config file. A name that resolves to
// the node's loopback, a link-local or multicast address, or a ClusterIP is never an endpoint.
TEST_F(ResolverHostnames, AnswersThatReachTheNodeOrAClusterIpAreDropped) {
  table.update(objects);
  upstream.answer("db.example.com A", {ip("127.0.0.1")}, 60);
  upstream.answer("db.example.com AAAA",
                  {ip("::1"), ip("::ffff:127.0.0.1"), ip("fe80::1"), ip("ff02::1"), ip("::"), ip("fd00:10:96::db"),
                   ip("2001:db8::7")},
                  60);
  config::ClusterObjects augmented = objects;
  table.augment(augmented);
  const auto snapshot = snapshot::ClusterSnapshot::build(augmented, {"kind-worker"});
  const auto* cluster = snapshot->find_cluster({ip("fd00:10:96::db"), 5432});
  ASSERT_NE(cluster, nullptr);
  ASSERT_EQ(cluster->endpoints.size(), 1u);
  EXPECT_EQ(cluster->endpoints[0].address.to_string(), "[2001:db8::7]:5432");
  std::vector<std::string> dropped;
  for (const auto& d : snapshot->dropped_endpoints()) dropped.push_back(d.address.to_string() + " " + d.reason);
  std::sort(dropped.begin(), dropped.end());
  // ::ffff:127.0.0.1 is 127.0.0.1 once parsed: an IPv4 address, not an endpoint of this IPv6 Service.
  EXPECT_EQ(dropped, (std::vector<std::string>{"[::1]:5432 loopback", "[::]:5432 unspecified",
                                               "[fd00:10:96::db]:5432 ClusterIP", "[fe80::1]:5432 link-local",
                                               "[ff02::1]:5432 multicast"}));
}

TEST_F(ResolverHostnames, ReResolvedAtTtlExpiryAndChangesReported) {
  table.update(objects);
  upstream.answer("db.example.com A", {ip("192.0.2.5")}, 30);
  upstream.answer("db.example.com AAAA", {}, 30);  // NODATA: retried after 5 s
  upstream.questions.clear();
  now += 4s;
  table.tick();
  EXPECT_TRUE(upstream.questions.empty() || upstream.questions == std::vector<std::string>{});
  now += 1s;
  table.tick();
  EXPECT_EQ(upstream.questions, std::vector<std::string>{"db.example.com AAAA"});
  upstream.answer("db.example.com AAAA", {}, 30);
  const int before = changes;
  now += 25s;  // 30 s after the A answer
  table.tick();
  ASSERT_TRUE(upstream.answer("db.example.com A", {ip("192.0.2.5")}, 30));
  EXPECT_EQ(changes, before);  // same answer: no change
  now += 30s;
  table.tick();
  ASSERT_TRUE(upstream.answer("db.example.com A", {ip("192.0.2.9")}, 30));
  EXPECT_EQ(changes, before + 1);
  EXPECT_EQ(table.addresses("db.example.com"), std::vector<net::IpAddress>{ip("192.0.2.9")});
}

TEST_F(ResolverHostnames, FailuresKeepTheLastAddresses) {
  table.update(objects);
  upstream.answer("db.example.com A", {ip("192.0.2.5")}, 10);
  now += 10s;
  table.tick();
  for (auto& [query, done] : upstream.pending)
    if (parse_query(query).query.question.name.key() == "db.example.com" &&
        parse_query(query).query.question.type == rrtype::A) {
      auto d = std::move(done);
      d({false, {}, "timeout"});
      break;
    }
  EXPECT_EQ(table.addresses("db.example.com")->front(), ip("192.0.2.5"));
}

TEST_F(ResolverHostnames, DroppedServicesAreForgotten) {
  table.update(objects);
  objects.services.erase(objects.services.begin());  // db
  table.update(objects);
  EXPECT_EQ(table.size(), 1u);
  EXPECT_FALSE(table.addresses("db.example.com"));
  EXPECT_FALSE(upstream.answer("db.example.com A", {ip("192.0.2.5")}, 10) && changes > 0);
}

TEST_F(ResolverHostnames, ExternalNameAnswersCarryTheResolvedTarget) {
  table.update(objects);
  upstream.answer("search.example.com A", {ip("198.51.100.1")}, 60);
  upstream.answer("search.example.com AAAA", {ip("2001:db8::1")}, 60);
  config::ClusterObjects augmented = objects;
  table.augment(augmented);
  const auto dns = ClusterDns::build(augmented, {});
  const auto spec = dns->answer({Name::from_text("search.default.svc.cluster.local").value(), rrtype::AAAA, kClassIN});
  ASSERT_EQ(spec.answers.size(), 2u);
  EXPECT_EQ(spec.answers[0].type, rrtype::CNAME);
  EXPECT_EQ(spec.answers[1].type, rrtype::AAAA);
  EXPECT_EQ(spec.answers[1].name.to_text(), "search.example.com");
  EXPECT_EQ(std::get<net::IpAddress>(spec.answers[1].data), ip("2001:db8::1"));
}

}  // namespace
}  // namespace dsproxy::resolver
