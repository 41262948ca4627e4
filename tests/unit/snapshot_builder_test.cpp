// The incremental snapshot builder: every sequence of changes gives the snapshot a full build of
// the same objects gives, while unchanged Services are shared between snapshots.

#include "snapshot/snapshot_builder.hpp"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "config/k8s_decoder.hpp"
#include "proxy/endpoint_states.hpp"
#include "resolver/cluster_dns.hpp"

namespace dsproxy::snapshot {
namespace snapshot_builder_test {  // named: unity builds put several test files in one translation unit

using namespace config;

net::IpAddress ip(const std::string& s) { return *net::IpAddress::parse(s); }

// ------------------------------------------------------------------ a canonical description

std::string describe(const ClusterSnapshot& s, const std::vector<net::IpAddress>& probe_ips,
                     const std::vector<std::pair<std::string, std::string>>& probe_services) {
  std::ostringstream out;
  out << "zone " << s.zone() << "\n";
  for (const ServiceCluster& c : s.clusters()) {
    out << "cluster " << c.cluster_name << " " << c.service_ns << "/" << c.service_name << " " << c.hostname << " "
        << c.port_name << " " << c.port << " " << to_string(c.ip_family_policy) << " "
        << to_string(c.family_fallback) << " " << to_string(c.internal_traffic_policy) << " "
        << to_string(c.session_affinity) << " " << c.affinity_timeout_s << " " << c.traffic_distribution << " "
        << c.app_protocol << " ips";
    for (const auto& a : c.cluster_ips) out << " " << a.to_string();
    out << " families";
    for (const auto f : c.ip_families) out << " " << (f == net::Family::v4 ? 4 : 6);
    out << "\n";
    for (const Endpoint& e : c.endpoints) {
      out << "  ep " << e.address.to_string() << " r" << e.ready << " s" << e.serving << " t" << e.terminating << " e"
          << e.eligible << " pod=" << e.pod << " node=" << e.node_name << " zone=" << e.zone << " hints=";
      for (const auto& h : e.zone_hints) out << h << ",";
      out << "\n";
    }
    for (const Backend& b : c.backends) out << "  backend " << b.v4 << "," << b.v6 << "\n";
  }
  for (const VipPorts& v : s.vip_ports()) {
    out << "vip " << v.vip.to_string();
    for (auto p : v.open_ports) out << " " << p;
    out << "\n";
  }
  for (const NodePod& p : s.node_pods()) {
    out << "nodepod " << p.ns << "/" << p.name;
    for (const auto& a : p.ips) out << " " << a.to_string();
    out << "\n";
  }
  for (const DroppedEndpoint& d : s.dropped_endpoints())
    out << "dropped " << d.cluster_name << " " << d.address.to_string() << " " << d.reason << "\n";
  for (const auto& a : probe_ips) {
    const auto other = s.other_family_address(a);
    out << "ip " << a.to_string() << " vip=" << s.is_cluster_ip(a) << " other=" << (other ? other->to_string() : "-");
    if (const auto* owner = s.cluster_ip_owner(a)) out << " owner=" << owner->ns << "/" << owner->name;
    out << "\n";
  }
  for (const auto& [ns, name] : probe_services) {
    out << "svc " << ns << "/" << name << " ns=" << s.has_namespace(ns);
    if (const auto* v = s.service(ns, name)) {
      out << " dns";
      for (const auto& a : v->dns_addresses) out << " " << a.to_string();
    }
    out << "\n";
  }
  out << "counts " << s.cluster_count() << " " << s.service_count() << "\n";
  return out.str();
}

// ------------------------------------------------------------------ random objects

class Universe {
 public:
  explicit Universe(std::uint32_t seed) : rng_(seed) {
    for (int i = 1; i <= 4; ++i) {
      vips_.push_back(ip("10.96.0." + std::to_string(i)));
      vips_.push_back(ip("fd00:96::" + std::to_string(i)));
    }
    for (int i = 1; i <= 6; ++i) {
      pod_ips_.push_back(ip("10.244.0." + std::to_string(i)));
      pod_ips_.push_back(ip("fd00:244::" + std::to_string(i)));
    }
  }

  int pick(int n) { return static_cast<int>(rng_() % static_cast<std::uint32_t>(n)); }
  bool coin(int one_in = 2) { return pick(one_in) == 0; }
  std::string ns() { return coin() ? "a" : "b"; }
  std::string of(const std::vector<std::string>& v) { return v[static_cast<std::size_t>(pick(static_cast<int>(v.size())))]; }
  // Mostly pod addresses; sometimes a ClusterIP (dropped, and a collision to track).
  net::IpAddress endpoint_ip(net::Family f) {
    if (coin(8)) return vips_[static_cast<std::size_t>(pick(4) * 2 + (f == net::Family::v4 ? 0 : 1))];
    return pod_ips_[static_cast<std::size_t>(pick(6) * 2 + (f == net::Family::v4 ? 0 : 1))];
  }

  Service service() {
    Service s;
    s.ns = ns();
    s.name = "s" + std::to_string(pick(4));
    s.selector = Labels{{"app", coin() ? "x" : "y"}};
    if (coin(6)) s.selector.reset();
    const int shape = pick(6);
    const int v = pick(4) * 2;
    if (shape == 0) {
      s.headless = true;
    } else if (shape == 1) {
      s.type = "ExternalName";
      s.external_name = "db.example.com";
    } else if (shape == 2) {
      s.cluster_ips = {vips_[static_cast<std::size_t>(v)]};
    } else if (shape == 3) {
      s.cluster_ips = {vips_[static_cast<std::size_t>(v) + 1]};
    } else {
      s.cluster_ips = {vips_[static_cast<std::size_t>(v)], vips_[static_cast<std::size_t>(v) + 1]};
      if (coin()) std::swap(s.cluster_ips[0], s.cluster_ips[1]);
      s.ip_family_policy = coin() ? IpFamilyPolicy::RequireDualStack : IpFamilyPolicy::PreferDualStack;
    }
    for (const auto& a : s.cluster_ips) s.ip_families.push_back(a.family());
    s.ports.push_back({"http", 80, std::uint16_t{8080}, "TCP"});
    if (coin()) s.ports.push_back({"web", 81, std::string("web"), "TCP"});
    if (coin(4)) s.ports.push_back({"dns", 53, std::uint16_t{53}, "UDP"});
    if (coin(4)) s.internal_traffic_policy = TrafficPolicy::Local;
    if (coin(4)) s.traffic_distribution = "PreferClose";
    if (coin(4)) s.session_affinity = SessionAffinity::ClientIP;
    if (coin(5)) s.annotations["dsproxy.io/family-fallback"] = coin() ? "never" : "other";
    if (coin(6)) s.publish_not_ready_addresses = true;
    return s;
  }

  Pod pod() {
    Pod p;
    p.ns = ns();
    p.name = "p" + std::to_string(pick(6));
    p.labels = {{"app", coin() ? "x" : "y"}};
    p.node_name = coin() ? "n1" : "n2";
    const int i = pick(6) * 2;
    if (!coin(6)) p.pod_ips.push_back(pod_ips_[static_cast<std::size_t>(i)]);
    if (!coin(4)) p.pod_ips.push_back(pod_ips_[static_cast<std::size_t>(i) + 1]);
    if (coin(10) && !p.pod_ips.empty()) p.pod_ips[0] = vips_[static_cast<std::size_t>(pick(4) * 2)];  // a liar
    p.ready = !coin(4);
    p.terminating = coin(6);
    p.host_network = coin(10);
    if (coin()) p.container_ports.push_back({"web", 9000, "TCP"});
    return p;
  }

  EndpointSlice slice() {
    EndpointSlice s;
    s.ns = ns();
    s.name = "e" + std::to_string(pick(6));
    s.service_name = "s" + std::to_string(pick(4));
    if (coin(10)) s.service_name.clear();
    s.address_type = coin() ? AddressType::IPv4 : AddressType::IPv6;
    const net::Family f = s.address_type == AddressType::IPv4 ? net::Family::v4 : net::Family::v6;
    const int n = pick(4);
    for (int i = 0; i < n; ++i) {
      SliceEndpoint e;
      e.addresses = {endpoint_ip(f)};
      e.ready = !coin(4);
      e.serving = e.ready || coin();
      e.terminating = !e.ready && coin();
      e.node_name = coin() ? "n1" : "n2";
      if (!coin(4)) e.target_pod = "p" + std::to_string(pick(6));
      if (coin()) e.zone = coin() ? "za" : "zb";
      if (coin(4)) e.zone_hints = {coin() ? "za" : "zb"};
      s.endpoints.push_back(e);
    }
    s.ports.push_back({std::string("http"), std::uint16_t{8080}, "TCP"});
    if (coin()) s.ports.push_back({std::string("web"), std::uint16_t{9000}, "TCP"});
    return s;
  }

  Node node() {
    Node n;
    n.name = coin() ? "n1" : "n2";
    const int z = pick(3);
    if (z > 0) n.labels["topology.kubernetes.io/zone"] = z == 1 ? "za" : "zb";
    return n;
  }

  std::vector<net::IpAddress> all_ips() const {
    std::vector<net::IpAddress> out = vips_;
    out.insert(out.end(), pod_ips_.begin(), pod_ips_.end());
    return out;
  }
  std::vector<std::pair<std::string, std::string>> all_services() const {
    std::vector<std::pair<std::string, std::string>> out;
    for (const char* ns : {"a", "b"})
      for (int i = 0; i < 4; ++i) out.emplace_back(ns, "s" + std::to_string(i));
    return out;
  }

 private:
  std::mt19937 rng_;
  std::vector<net::IpAddress> vips_;
  std::vector<net::IpAddress> pod_ips_;
};

// The objects as a source holds them, to rebuild from scratch.
struct Held {
  std::map<std::string, Service> services;
  std::map<std::string, Pod> pods;
  std::map<std::string, EndpointSlice> slices;
  std::map<std::string, Node> nodes;

  ClusterObjects objects() const {
    ClusterObjects o;
    for (const auto& [k, v] : services) o.services.push_back(v);
    for (const auto& [k, v] : pods) o.pods.push_back(v);
    for (const auto& [k, v] : slices) o.endpoint_slices.push_back(v);
    for (const auto& [k, v] : nodes) o.nodes.push_back(v);
    return o;
  }
};

void random_walk(std::uint32_t seed, const ClusterSnapshot::Options& options) {
  Universe u(seed);
  SnapshotBuilder builder(options);
  Held held;
  for (int step = 0; step < 250; ++step) {
    const int kind = u.pick(4);
    const bool erase = u.coin(4);
    std::string what;
    if (kind == 0) {
      Service s = u.service();
      const std::string key = s.ns + "/" + s.name;
      if (erase) {
        builder.erase(ObjectKind::service, s.ns, s.name);
        held.services.erase(key);
        what = "erase service " + key;
      } else {
        builder.upsert(s);
        held.services[key] = s;
        what = "upsert service " + key;
      }
    } else if (kind == 1) {
      Pod p = u.pod();
      const std::string key = p.ns + "/" + p.name;
      if (erase) {
        builder.erase(ObjectKind::pod, p.ns, p.name);
        held.pods.erase(key);
        what = "erase pod " + key;
      } else {
        builder.upsert(p);
        held.pods[key] = p;
        what = "upsert pod " + key;
      }
    } else if (kind == 2) {
      EndpointSlice s = u.slice();
      const std::string key = s.ns + "/" + s.name;
      if (erase) {
        builder.erase(ObjectKind::endpoint_slice, s.ns, s.name);
        held.slices.erase(key);
        what = "erase slice " + key;
      } else {
        builder.upsert(s);
        held.slices[key] = s;
        what = "upsert slice " + key + " of " + s.service_name;
      }
    } else {
      Node n = u.node();
      if (erase) {
        builder.erase(ObjectKind::node, "", n.name);
        held.nodes.erase(n.name);
        what = "erase node " + n.name;
      } else {
        builder.upsert(n);
        held.nodes[n.name] = n;
        what = "upsert node " + n.name;
      }
    }
    // Several changes per build now and then, as a burst of watch events gives.
    if (u.coin(3)) continue;
    const auto incremental = builder.build();
    const auto full = ClusterSnapshot::build(held.objects(), options);
    const auto ips = u.all_ips();
    const auto services = u.all_services();
    ASSERT_EQ(describe(*incremental, ips, services), describe(*full, ips, services))
        << "seed " << seed << " step " << step << " after " << what;
  }
}

TEST(SnapshotBuilder, AnySequenceOfChangesMatchesAFullBuild) {
  for (std::uint32_t seed = 1; seed <= 40; ++seed) {
    random_walk(seed, {.node_name = "n1"});
    random_walk(seed + 1000, {.node_name = "n1", .fallback_default = FallbackDefault::never, .zone = "za"});
    if (HasFatalFailure()) return;
  }
}

// ------------------------------------------------------------------ sharing

constexpr const char* kTwoServices = R"(
apiVersion: v1
kind: Service
metadata: {name: web, namespace: t}
spec: {clusterIPs: [10.96.0.10, "fd00:96::10"], ipFamilies: [IPv4, IPv6], ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: t}
spec: {clusterIP: 10.96.0.11, ports: [{port: 81}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: t, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.0.0.1], targetRef: {kind: Pod, name: w1}}
- {addresses: [10.0.0.2], targetRef: {kind: Pod, name: w2}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: t, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{port: 8080}]
endpoints:
- {addresses: ["fd00::1"], targetRef: {kind: Pod, name: w1}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: t, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.0.0.1]}
)";

EndpointSlice slice_named(const ClusterObjects& o, const std::string& name) {
  for (const auto& s : o.endpoint_slices)
    if (s.name == name) return s;
  throw std::runtime_error("no slice " + name);
}

TEST(SnapshotBuilder, AnEventRederivesOnlyItsServiceAndSharesTheRest) {
  const ClusterObjects objects = decode_objects(kTwoServices);
  SnapshotBuilder builder({.node_name = "n1"});
  builder.replace_all(objects);
  const auto first = builder.build();
  EXPECT_EQ(builder.last_build().services_derived, 2u);

  EndpointSlice web = slice_named(objects, "web-v4");
  web.endpoints[1].ready = false;
  builder.upsert(web);
  const auto second = builder.build();
  EXPECT_EQ(builder.last_build().services_derived, 1u);
  EXPECT_FALSE(builder.last_build().collision_scan);
  EXPECT_EQ(first->service("t", "api"), second->service("t", "api")) << "the untouched Service is shared";
  EXPECT_NE(first->service("t", "web"), second->service("t", "web"));
  EXPECT_EQ(first->find_cluster({ip("10.96.0.11"), 81}), second->find_cluster({ip("10.96.0.11"), 81}));
  EXPECT_FALSE(second->find_cluster({ip("10.96.0.10"), 80})->endpoints[1].ready);
  EXPECT_TRUE(first->find_cluster({ip("10.96.0.10"), 80})->endpoints[1].ready) << "the old snapshot is unchanged";

  std::vector<std::string> removed, added;
  second->for_each_cluster_change(
      first.get(), [&](const ServiceCluster& c) { removed.push_back(c.cluster_name); },
      [&](const std::shared_ptr<const ServiceCluster>& c) { added.push_back(c->cluster_name); });
  EXPECT_EQ(removed, std::vector<std::string>{"outbound|80||web.t.svc.cluster.local"});
  EXPECT_EQ(added, std::vector<std::string>{"outbound|80||web.t.svc.cluster.local"});

  // An upsert of an identical object changes nothing at all.
  builder.upsert(web);
  const auto third = builder.build();
  EXPECT_EQ(builder.last_build().services_derived, 0u);
  EXPECT_EQ(third->service("t", "web"), second->service("t", "web"));
}

TEST(SnapshotBuilder, ReplaceAllAppliesOnlyTheDifference) {
  ClusterObjects objects = decode_objects(kTwoServices);
  SnapshotBuilder builder({.node_name = "n1"});
  builder.replace_all(objects);
  const auto first = builder.build();

  builder.replace_all(objects);  // the same file again
  const auto same = builder.build();
  EXPECT_EQ(builder.last_build().services_derived, 0u);
  EXPECT_EQ(first->service("t", "web"), same->service("t", "web"));
  EXPECT_EQ(first->service("t", "api"), same->service("t", "api"));

  // The relist lost api's slice and web changed a port: two Services, nothing else.
  std::erase_if(objects.endpoint_slices, [](const EndpointSlice& s) { return s.name == "api-1"; });
  objects.services[0].ports[0].port = 8000;
  builder.replace_all(objects);
  const auto next = builder.build();
  EXPECT_EQ(builder.last_build().services_derived, 2u);
  EXPECT_EQ(next->find_cluster({ip("10.96.0.10"), 80}), nullptr);
  ASSERT_NE(next->find_cluster({ip("10.96.0.10"), 8000}), nullptr);
  EXPECT_TRUE(next->find_cluster({ip("10.96.0.11"), 81})->endpoints.empty());
}

TEST(SnapshotBuilder, OtherFamilyAddressesComeFromSlicesWithoutPods) {
  SnapshotBuilder builder({.node_name = "n1"});
  builder.replace_all(decode_objects(kTwoServices));
  auto s = builder.build();
  // w1 is named in web's IPv4 and IPv6 slices: a remote pod the builder never saw as a Pod.
  ASSERT_TRUE(s->other_family_address(ip("10.0.0.1")));
  EXPECT_EQ(s->other_family_address(ip("10.0.0.1"))->to_string(), "fd00::1");
  EXPECT_EQ(s->other_family_address(ip("fd00::1"))->to_string(), "10.0.0.1");
  EXPECT_FALSE(s->other_family_address(ip("10.0.0.2")));
  builder.erase(ObjectKind::endpoint_slice, "t", "web-v6");
  s = builder.build();
  EXPECT_FALSE(s->other_family_address(ip("10.0.0.1"))) << "gone with the slice";
}

TEST(SnapshotBuilder, ABadAnnotationIsRefusedAndChangesNothing) {
  ClusterObjects objects = decode_objects(kTwoServices);
  SnapshotBuilder builder({.node_name = "n1"});
  builder.replace_all(objects);
  const auto first = builder.build();
  Service bad = objects.services[1];
  bad.annotations["dsproxy.io/family-fallback"] = "sometimes";
  EXPECT_THROW(builder.upsert(bad), ConfigError);
  objects.services[1] = bad;
  objects.endpoint_slices.clear();
  EXPECT_THROW(builder.replace_all(objects), ConfigError);
  const auto second = builder.build();
  EXPECT_EQ(builder.last_build().services_derived, 0u);
  EXPECT_EQ(second->find_cluster({ip("10.96.0.10"), 80})->endpoints.size(), 3u);
}

TEST(SnapshotBuilder, AClusterIpAppearingAtAnEndpointAddressDropsIt) {
  SnapshotBuilder builder({.node_name = "n1"});
  builder.replace_all(decode_objects(kTwoServices));
  builder.build();
  Service grab;
  grab.ns = "u";
  grab.name = "grab";
  grab.cluster_ips = {ip("10.0.0.2")};  // web's endpoint address
  grab.ip_families = {net::Family::v4};
  builder.upsert(grab);
  auto s = builder.build();
  EXPECT_TRUE(builder.last_build().collision_scan);
  EXPECT_EQ(builder.last_build().services_derived, 2u) << "grab, and web whose endpoint it is";
  ASSERT_EQ(s->dropped_endpoints().size(), 1u);
  EXPECT_EQ(s->dropped_endpoints()[0].reason, "ClusterIP");
  builder.erase(ObjectKind::service, "u", "grab");
  s = builder.build();
  EXPECT_TRUE(s->dropped_endpoints().empty());
  EXPECT_EQ(s->find_cluster({ip("10.96.0.10"), 80})->endpoints.size(), 3u);
}

TEST(SnapshotBuilder, DnsAnswersFollowEvents) {
  SnapshotBuilder builder({.node_name = "n1"});
  builder.replace_all(decode_objects(kTwoServices));
  const auto before = builder.build();
  Service db;
  db.ns = "t";
  db.name = "db";
  db.headless = true;
  builder.upsert(db);
  EndpointSlice slice;
  slice.ns = "t";
  slice.name = "db-1";
  slice.service_name = "db";
  slice.endpoints.push_back({.addresses = {ip("10.0.0.7")}});
  builder.upsert(slice);
  const auto after = builder.build();
  auto ask = [](const std::shared_ptr<const ClusterSnapshot>& s, const char* name) {
    const auto dns = resolver::ClusterDns::build(s, {});
    resolver::Question q{*resolver::Name::from_text(name), resolver::rrtype::A, resolver::kClassIN};
    const auto spec = dns->answer(q);
    std::string out = std::to_string(static_cast<int>(spec.rcode));
    for (const auto& r : spec.answers) out += " " + std::to_string(r.type);
    return out + " " + std::to_string(spec.answers.size());
  };
  EXPECT_EQ(ask(before, "db.t.svc.cluster.local"), ask(before, "nothere.t.svc.cluster.local"));
  EXPECT_EQ(ask(after, "db.t.svc.cluster.local"), "0 1 1");
  EXPECT_EQ(after->service("t", "db")->dns_addresses, std::vector<net::IpAddress>{ip("10.0.0.7")});
}

// ------------------------------------------------------------------ runtime state across builds

TEST(SnapshotBuilder, EndpointStateSurvivesEventsAndIsFreedWhenGone) {
  const ClusterObjects objects = decode_objects(kTwoServices);
  SnapshotBuilder builder({.node_name = "n1"});
  proxy::EndpointStates states;
  builder.replace_all(objects);
  auto s = builder.build();
  states.sync(s);
  const auto* web = s->find_cluster({ip("10.96.0.10"), 80});
  auto* st = &(*states.current()->find(*web))[1];  // 10.0.0.2:8080
  ASSERT_EQ(web->endpoints[1].address.to_string(), "10.0.0.2:8080");
  st->ejections = 2;
  const auto* api_states = states.current()->find(*s->find_cluster({ip("10.96.0.11"), 81}));

  EndpointSlice v4 = slice_named(objects, "web-v4");
  v4.endpoints[0].ready = false;  // 10.0.0.1 flips; 10.0.0.2 stays
  builder.upsert(v4);
  s = builder.build();
  states.sync(s);
  web = s->find_cluster({ip("10.96.0.10"), 80});
  EXPECT_EQ(&(*states.current()->find(*web))[1], st) << "the same state for the same address";
  EXPECT_EQ(st->ejections.load(), 2u);
  EXPECT_EQ(states.current()->find(*s->find_cluster({ip("10.96.0.11"), 81})), api_states)
      << "an unchanged cluster keeps its entry";
  EXPECT_EQ(states.tracked_addresses(), 3u);  // 10.0.0.1 (web and api), 10.0.0.2, [fd00::1], all on 8080

  v4.endpoints.pop_back();  // 10.0.0.2 leaves
  builder.upsert(v4);
  for (int i = 0; i < 3; ++i) {
    states.sync(builder.build());
  }
  EXPECT_EQ(states.tracked_addresses(), 2u) << "10.0.0.2:8080's state is freed";
}

}  // namespace snapshot_builder_test
}  // namespace dsproxy::snapshot
