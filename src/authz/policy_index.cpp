#include "authz/policy_index.hpp"

#include <algorithm>

namespace dsproxy::authz {

namespace {

void bump(std::atomic<std::uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

}  // namespace

std::string_view to_string(Decision::Reason r) {
  switch (r) {
    case Decision::Reason::no_allow_policy: return "no ALLOW policy applies";
    case Decision::Reason::allow_matched: return "allowed by policy";
    case Decision::Reason::deny_matched: return "denied by policy";
    case Decision::Reason::no_allow_matched: return "no ALLOW policy matched";
  }
  return "";
}

AuthzTotals& totals() {
  static AuthzTotals t;
  return t;
}

Decision decide(const Workload& w, const ConnectionAttributes& connection) {
  Decision d;
  if (!w.any_policy()) {
    bump(totals().allowed);
    return d;  // the common case: nothing selects the workload, nothing to compute
  }
  const MatchInput in(connection);
  for (const auto& p : w.dry_run) {
    if (!p->matches(in)) continue;
    bump(p->stats->dry_run);
    if (!d.dry_run_match) d.dry_run_match = p.get();
  }
  for (const auto& p : w.audit)
    if (p->matches(in)) {
      bump(p->stats->audited);
      if (!d.audit) d.audit = p.get();
    }
  for (const auto& p : w.deny)
    if (p->matches(in)) {
      bump(p->stats->denied);
      bump(totals().denied);
      d.verdict = Decision::Verdict::deny;
      d.reason = Decision::Reason::deny_matched;
      d.policy = p.get();
      return d;
    }
  // What the dry-run policies would decide were they enforced (ztunnel logs the same two cases):
  // a dry-run DENY that matched, or dry-run ALLOW policies of which none matched while no
  // enforced ALLOW exists.
  if (d.dry_run_match && d.dry_run_match->action == config::AuthzAction::deny) d.dry_run_would_deny = true;
  if (w.allow.empty()) {
    bool dry_allow = false, dry_allow_matched = false;
    for (const auto& p : w.dry_run)
      if (p->action == config::AuthzAction::allow) {
        dry_allow = true;
        if (p->matches(in)) dry_allow_matched = true;
      }
    if (dry_allow && !dry_allow_matched) d.dry_run_would_deny = true;
    bump(totals().allowed);
    return d;
  }
  for (const auto& p : w.allow)
    if (p->matches(in)) {
      bump(p->stats->allowed);
      bump(totals().allowed);
      d.reason = Decision::Reason::allow_matched;
      d.policy = p.get();
      return d;
    }
  bump(totals().denied);
  bump(totals().denied_no_allow_match);
  d.verdict = Decision::Verdict::deny;
  d.reason = Decision::Reason::no_allow_matched;
  return d;
}

std::string describe(const Decision& d, const Workload& w) {
  std::string s;
  switch (d.reason) {
    case Decision::Reason::deny_matched: s = "denied by AuthorizationPolicy " + d.policy->key + " (DENY)"; break;
    case Decision::Reason::no_allow_matched:
      s = "denied: none of the " + std::to_string(w.allow.size()) + " ALLOW AuthorizationPolicy(ies) of " + w.ns + "/" +
          w.name + " matched";
      break;
    case Decision::Reason::allow_matched: s = "allowed by AuthorizationPolicy " + d.policy->key + " (ALLOW)"; break;
    case Decision::Reason::no_allow_policy: s = "allowed: no ALLOW AuthorizationPolicy applies"; break;
  }
  if (d.audit) s += "; audited by " + d.audit->key;
  if (d.dry_run_match)
    s += "; dry-run: " + d.dry_run_match->key + " (" + std::string(config::to_string(d.dry_run_match->action)) +
         ") matched";
  if (d.dry_run_would_deny) s += "; dry-run: enforcing the dry-run policies would deny";
  return s;
}

std::shared_ptr<const PolicyIndex> PolicyIndex::empty(std::string root_namespace) {
  return build(std::make_shared<const PolicySet>(), {}, std::move(root_namespace));
}

std::shared_ptr<const PolicyIndex> PolicyIndex::build(std::shared_ptr<const PolicySet> policies,
                                                      const std::vector<LocalWorkload>& workloads,
                                                      std::string root_namespace) {
  auto index = std::make_shared<PolicyIndex>();
  index->policies_ = std::move(policies);
  index->root_ = std::move(root_namespace);
  for (const auto& [ns, named] : *index->policies_) index->policy_count_ += named.size();
  const auto root = index->policies_->find(index->root_);

  index->workloads_.reserve(workloads.size());
  for (const LocalWorkload& lw : workloads) {
    Workload& w = index->workloads_.emplace_back();
    w.name = lw.name;
    w.ns = lw.ns;
    w.labels = lw.labels;
    w.service_account = lw.service_account;
    w.ips = lw.ips;
    auto add = [&](const std::map<std::string, std::shared_ptr<const Policy>>& named) {
      for (const auto& [name, p] : named) {
        if (!p->selects(w.ns, w.labels, index->root_)) continue;
        if (p->dry_run)
          w.dry_run.push_back(p);
        else if (p->action == config::AuthzAction::deny)
          w.deny.push_back(p);
        else if (p->action == config::AuthzAction::allow)
          w.allow.push_back(p);
        else
          w.audit.push_back(p);
      }
    };
    if (root != index->policies_->end()) add(root->second);
    if (w.ns != index->root_)
      if (auto own = index->policies_->find(w.ns); own != index->policies_->end()) add(own->second);
  }
  std::sort(index->workloads_.begin(), index->workloads_.end(),
            [](const Workload& a, const Workload& b) { return std::tie(a.ns, a.name) < std::tie(b.ns, b.name); });
  for (const Workload& w : index->workloads_)
    for (const auto& ip : w.ips) index->by_ip_.emplace(ip, &w);
  return index;
}

}  // namespace dsproxy::authz
