#pragma once
// The authorization view of one node: which policies apply to each local workload, and the
// decision for a connection to one of them.
//
// Built on the control-plane thread with every snapshot whose policies or local pods changed,
// published inside the ClusterSnapshot (immutable, shared by every worker). For each local
// workload it keeps only the policies that select it (root-namespace policies and those of its
// own namespace, narrowed by selector), split by action, so a decision looks up the workload by
// address (one hash lookup) and then reads only policies that apply to it: its cost does not
// depend on how many other policies the cluster has.
//
// The API the data path uses (plaintext here, HBONE in the tunnel server):
//   const auto snapshot = store.current();
//   const authz::PolicyIndex& index = snapshot->authz();
//   if (const authz::Workload* w = index.workload(pod_ip)) {
//     authz::Decision d = authz::decide(*w, {src_ip, pod_ip, pod_port, identity_or_nullopt});
//     if (d.denied()) { /* plaintext: reset; HBONE: answer 401 */ }
//   }
// Not a local workload (nullptr): nothing to enforce here; the destination's node does.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "authz/policy.hpp"
#include "config/k8s_objects.hpp"
#include "net/ip_address.hpp"

namespace dsproxy::authz {

// A pod of this node as authorization sees it, with the policies that select it.
struct Workload {
  std::string name;
  std::string ns;
  config::Labels labels;
  std::string service_account;
  std::vector<net::IpAddress> ips;
  // Enforced policies by action, then the dry-run ones (logged only), each sorted by key.
  std::vector<std::shared_ptr<const Policy>> deny, allow, audit, dry_run;
  bool any_policy() const { return !deny.empty() || !allow.empty() || !audit.empty() || !dry_run.empty(); }
};

struct Decision {
  enum class Verdict : std::uint8_t { allow, deny };
  enum class Reason : std::uint8_t {
    no_allow_policy,  // allowed: no ALLOW policy selects the workload
    allow_matched,    // allowed by `policy`
    deny_matched,     // denied by `policy`
    no_allow_matched  // denied: ALLOW policies select the workload and none matched
  };
  Verdict verdict = Verdict::allow;
  Reason reason = Reason::no_allow_policy;
  const Policy* policy = nullptr;  // the deciding policy (allow_matched, deny_matched)
  // Notes that change nothing: the first AUDIT policy that matched, the first dry-run policy
  // that matched, and what enforcing the dry-run policies would have decided.
  const Policy* audit = nullptr;
  const Policy* dry_run_match = nullptr;
  bool dry_run_would_deny = false;

  bool denied() const { return verdict == Verdict::deny; }
  // "ns/name" of the deciding policy, or "" (default allow) / "-" style callers choose.
  std::string_view policy_key() const { return policy ? std::string_view(policy->key) : std::string_view(); }
};
std::string_view to_string(Decision::Reason r);

// ztunnel's order: any matching DENY denies; else no ALLOW policy allows; else any matching
// ALLOW allows; else deny. AUDIT and dry-run policies are evaluated for the notes only. Updates
// the deciding policy's counters (and the audit/dry-run ones). Allocation-free for plaintext.
Decision decide(const Workload& destination, const ConnectionAttributes& connection);

// The text of a log line for a decision worth logging (a denial, an audit, a dry-run result):
// "denied by ns/name (DENY)", "denied: no ALLOW policy matched (2 apply)", "dry-run: ...".
std::string describe(const Decision& d, const Workload& w);

// Process-wide totals (every worker, plaintext and HBONE), for /stats.
struct AuthzTotals {
  std::atomic<std::uint64_t> allowed{0};
  std::atomic<std::uint64_t> denied{0};
  std::atomic<std::uint64_t> denied_no_allow_match{0};  // part of denied: no policy named
  std::atomic<std::uint64_t> revoked{0};  // established connections closed by a policy change
};
AuthzTotals& totals();

class PolicyIndex {
 public:
  // Every compiled policy by namespace (name order inside), and this node's workloads.
  using PolicySet = std::map<std::string, std::map<std::string, std::shared_ptr<const Policy>>, std::less<>>;
  struct LocalWorkload {
    std::string name, ns;
    config::Labels labels;
    std::string service_account;
    std::vector<net::IpAddress> ips;
  };
  static std::shared_ptr<const PolicyIndex> build(std::shared_ptr<const PolicySet> policies,
                                                  const std::vector<LocalWorkload>& workloads,
                                                  std::string root_namespace);
  static std::shared_ptr<const PolicyIndex> empty(std::string root_namespace = "istio-system");

  // The local workload owning `ip` (a pod address of this node), or nullptr.
  const Workload* workload(const net::IpAddress& ip) const {
    auto it = by_ip_.find(ip);
    return it == by_ip_.end() ? nullptr : it->second;
  }
  // Local workloads sorted by namespace and name (the proxy-config view).
  const std::vector<Workload>& workloads() const { return workloads_; }
  const PolicySet& policies() const { return *policies_; }
  std::size_t policy_count() const { return policy_count_; }
  const std::string& root_namespace() const { return root_; }

 private:
  std::shared_ptr<const PolicySet> policies_;
  std::size_t policy_count_ = 0;
  std::string root_;
  std::vector<Workload> workloads_;
  std::unordered_map<net::IpAddress, const Workload*, net::IpAddressHash> by_ip_;
};

}  // namespace dsproxy::authz
