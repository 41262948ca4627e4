// AuthorizationPolicy decision cost with 10,000 policies in the cluster against none (issue 12:
// "decision cost is constant in the number of policies that do not select the workload";
// ztunnel's own benchmark uses the same 10,000). Google Benchmark; prints ns per decision.
//
// What one plaintext connection to a local pod costs authz on the data path: the workload
// lookup by destination address in the snapshot's index, then decide() over the policies that
// select it. Scenarios:
//   none               no AuthorizationPolicy at all
//   10k_unrelated      10,000 policies in 1,000 other namespaces (10 each, half with selectors),
//                      none selecting the workload
//   10k_selecting_3    the same 10,000 plus 3 that select it: a namespace-wide DENY on another
//                      port, a mesh-wide DENY of another block, and an ALLOW that matches last
//   10k_same_ns        10,000 policies all in the workload's own namespace, with selectors for
//                      other apps, + the 3 (the index keeps only those that select it)
// and the control-plane side: building the index for 100 local pods with 10,000 policies.
//
//   cmake --build build --target dsproxy_authz_bench && build/tests/dsproxy_authz_bench

#include <benchmark/benchmark.h>

#include <string>

#include "authz/policy.hpp"
#include "authz/policy_index.hpp"

namespace {

using namespace dsproxy;

net::IpAddress ip(const std::string& s) { return *net::IpAddress::parse(s); }

config::AuthorizationPolicy deny_port(std::string ns, std::string name, std::uint16_t port,
                                      std::optional<config::Labels> selector = std::nullopt) {
  config::AuthorizationPolicy p;
  p.ns = std::move(ns);
  p.name = std::move(name);
  p.action = config::AuthzAction::deny;
  p.selector = std::move(selector);
  config::AuthzRule r;
  config::AuthzOperation op;
  op.ports = {port};
  r.to.push_back(op);
  p.rules.push_back(r);
  return p;
}

config::AuthorizationPolicy allow_block(std::string ns, std::string name, const std::string& cidr,
                                        std::optional<config::Labels> selector = std::nullopt) {
  config::AuthorizationPolicy p;
  p.ns = std::move(ns);
  p.name = std::move(name);
  p.action = config::AuthzAction::allow;
  p.selector = std::move(selector);
  config::AuthzRule r;
  config::AuthzSource s;
  s.ip_blocks = {*net::Cidr::parse(cidr)};
  r.from.push_back(s);
  p.rules.push_back(r);
  return p;
}

enum class Scenario { none, unrelated, selecting, same_ns };

struct Setup {
  std::shared_ptr<const authz::PolicyIndex> index;
  authz::ConnectionAttributes conn{ip("10.0.7.9"), ip("10.244.0.10"), 9000, std::nullopt};
};

std::vector<authz::PolicyIndex::LocalWorkload> local_pods() {
  std::vector<authz::PolicyIndex::LocalWorkload> pods;
  pods.push_back({"web-0", "app", {{"app", "web"}}, "web", {ip("10.244.0.10"), ip("fd00:10:244::10")}});
  for (int i = 1; i < 100; ++i)
    pods.push_back({"pod-" + std::to_string(i), "ns-" + std::to_string(i), {{"app", "a" + std::to_string(i % 10)}}, "default",
                    {ip("10.244.1." + std::to_string(i))}});
  return pods;
}

Setup setup(Scenario s) {
  auto set = std::make_shared<authz::PolicyIndex::PolicySet>();
  auto add = [&](const config::AuthorizationPolicy& p) { (*set)[p.ns][p.name] = authz::compile(p, "istio-system", nullptr, false); };
  if (s == Scenario::unrelated || s == Scenario::selecting) {
    for (int n = 0; n < 1000; ++n)
      for (int k = 0; k < 10; ++k) {
        const std::string ns = "other-" + std::to_string(n), name = "p" + std::to_string(k);
        if (k % 2) add(deny_port(ns, name, static_cast<std::uint16_t>(1000 + k), config::Labels{{"app", "x" + std::to_string(k)}}));
        else add(allow_block(ns, name, "10." + std::to_string(k) + ".0.0/16"));
      }
  }
  if (s == Scenario::same_ns)
    for (int k = 0; k < 10000; ++k)
      add(allow_block("app", "other-app-" + std::to_string(k), "10.1.0.0/16", config::Labels{{"app", "not-web-" + std::to_string(k)}}));
  if (s == Scenario::selecting || s == Scenario::same_ns) {
    add(deny_port("app", "ns-deny-22", 22));
    add(deny_port("istio-system", "mesh-deny", 23));
    add(allow_block("app", "allow-web", "10.0.0.0/8", config::Labels{{"app", "web"}}));
  }
  return {authz::PolicyIndex::build(set, local_pods(), "istio-system")};
}

void decide(benchmark::State& state, Scenario s) {
  const Setup su = setup(s);
  const auto* check = su.index->workload(su.conn.destination_ip);
  state.counters["policies_in_cluster"] = static_cast<double>(su.index->policy_count());
  state.counters["policies_selecting"] =
      static_cast<double>(check->deny.size() + check->allow.size() + check->audit.size() + check->dry_run.size());
  for (auto _ : state) {
    const authz::Workload* w = su.index->workload(su.conn.destination_ip);
    authz::Decision d = authz::decide(*w, su.conn);
    benchmark::DoNotOptimize(d);
  }
}

void build_index(benchmark::State& state) {
  auto set = std::make_shared<authz::PolicyIndex::PolicySet>();
  for (int n = 0; n < 1000; ++n)
    for (int k = 0; k < 10; ++k)
      (*set)["ns-" + std::to_string(n)]["p" + std::to_string(k)] =
          authz::compile(allow_block("ns-" + std::to_string(n), "p" + std::to_string(k), "10.0.0.0/8"), "istio-system", nullptr, false);
  const auto pods = local_pods();
  for (auto _ : state) benchmark::DoNotOptimize(authz::PolicyIndex::build(set, pods, "istio-system"));
}

BENCHMARK_CAPTURE(decide, none, Scenario::none);
BENCHMARK_CAPTURE(decide, 10k_unrelated, Scenario::unrelated);
BENCHMARK_CAPTURE(decide, 10k_selecting_3, Scenario::selecting);
BENCHMARK_CAPTURE(decide, 10k_same_ns_selecting_3, Scenario::same_ns);
BENCHMARK(build_index)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
