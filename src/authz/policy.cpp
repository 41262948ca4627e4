#include "authz/policy.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

namespace dsproxy::authz {

namespace {

using config::AuthzAction;

template <typename T, typename Pred>
bool any_of(const std::vector<T>& v, Pred&& p) {
  return std::any_of(v.begin(), v.end(), p);
}

// ztunnel's matches_internal: ANY positive value (when there are some) and NONE of the negative ones.
template <typename T, typename Pred>
bool field_matches(const std::vector<T>& positive, const std::vector<T>& negative, Pred&& p) {
  if (!positive.empty() && !any_of(positive, p)) return false;
  return negative.empty() || !any_of(negative, p);
}

std::vector<StringMatch> string_matches(const std::vector<std::string>& patterns) {
  std::vector<StringMatch> out;
  out.reserve(patterns.size());
  for (const auto& p : patterns) out.push_back(StringMatch::parse(p));
  return out;
}

std::vector<ServiceAccountMatch> service_account_matches(const std::vector<std::string>& values,
                                                         const std::string& policy_ns) {
  std::vector<ServiceAccountMatch> out;
  for (const auto& v : values) {
    const auto slash = v.find('/');
    if (slash == std::string::npos)
      out.push_back({policy_ns, v});
    else
      out.push_back({v.substr(0, slash), v.substr(slash + 1)});
  }
  return out;
}

bool is_l4_when_key(std::string_view key) {
  return key == "source.ip" || key == "source.namespace" || key == "source.principal" || key == "destination.ip" ||
         key == "destination.port";
}

}  // namespace

StringMatch StringMatch::parse(std::string_view pattern) {
  if (pattern == "*") return {Kind::presence, ""};
  if (pattern.starts_with('*')) return {Kind::suffix, std::string(pattern.substr(1))};
  if (pattern.ends_with('*')) return {Kind::prefix, std::string(pattern.substr(0, pattern.size() - 1))};
  return {Kind::exact, std::string(pattern)};
}

bool StringMatch::matches(std::string_view s) const {
  switch (kind) {
    case Kind::exact: return s == value;
    case Kind::prefix: return s.starts_with(value);
    case Kind::suffix: return s.ends_with(value);
    case Kind::presence: return !s.empty();
  }
  return false;
}

std::string SourceIdentity::principal() const { return trust_domain + "/ns/" + ns + "/sa/" + service_account; }

MatchInput::MatchInput(const ConnectionAttributes& c)
    : conn(c),
      principal(c.source_identity ? c.source_identity->principal() : std::string()),
      ns(c.source_identity ? std::string_view(c.source_identity->ns) : std::string_view()) {}

bool Match::empty() const {
  return !match_all && principals.empty() && not_principals.empty() && namespaces.empty() && not_namespaces.empty() &&
         service_accounts.empty() && not_service_accounts.empty() && source_ips.empty() && not_source_ips.empty() &&
         destination_ips.empty() && not_destination_ips.empty() && destination_ports.empty() &&
         not_destination_ports.empty();
}

bool Match::matches(const MatchInput& in) const {
  if (match_all) return true;
  const auto& c = in.conn;
  // Cheap fields first: a port or address mismatch ends it before any string compare.
  if (!field_matches(destination_ports, not_destination_ports, [&](std::uint16_t p) { return p == c.destination_port; }))
    return false;
  if (!field_matches(source_ips, not_source_ips, [&](const net::Cidr& b) { return b.contains(c.source_ip); }))
    return false;
  if (!field_matches(destination_ips, not_destination_ips,
                     [&](const net::Cidr& b) { return b.contains(c.destination_ip); }))
    return false;
  // No identity: the principal is "" and no pattern (not even "*") matches it.
  if (!field_matches(principals, not_principals,
                     [&](const StringMatch& m) { return c.source_identity && m.matches(in.principal); }))
    return false;
  if (!field_matches(namespaces, not_namespaces, [&](const StringMatch& m) { return m.matches(in.ns); })) return false;
  return field_matches(service_accounts, not_service_accounts, [&](const ServiceAccountMatch& m) {
    return c.source_identity && c.source_identity->ns == m.ns && c.source_identity->service_account == m.service_account;
  });
}

std::string_view to_string(Scope s) {
  switch (s) {
    case Scope::mesh: return "mesh";
    case Scope::ns: return "namespace";
    case Scope::workload: return "workload";
  }
  return "namespace";
}

bool Policy::matches(const MatchInput& in) const {
  for (const Rule& rule : rules) {
    bool all = true;
    for (const Clause& clause : rule) {
      bool any = false;
      for (const Match& m : clause)
        if (!m.empty() && m.matches(in)) {
          any = true;
          break;
        }
      // An empty clause cannot be built (from/to lists are only added when non-empty), but
      // ztunnel counts one as matching.
      if (!any && !clause.empty()) {
        all = false;
        break;
      }
    }
    if (all) return true;
  }
  return false;
}

bool Policy::selects(std::string_view workload_ns, const config::Labels& labels, std::string_view root) const {
  if (!ignored.empty()) return false;
  if (ns != workload_ns && ns != root) return false;
  if (!selector) return true;  // namespace-wide, or mesh-wide in the root namespace
  for (const auto& [k, v] : *selector) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
}

std::shared_ptr<const Policy> compile(const config::AuthorizationPolicy& p, std::string_view root_namespace,
                                      std::shared_ptr<PolicyStats> stats, bool log) {
  auto out = std::make_shared<Policy>();
  out->name = p.name;
  out->ns = p.ns;
  out->key = p.ns + "/" + p.name;
  out->action = p.action;
  out->selector = p.selector;
  out->dry_run = p.dry_run;
  out->scope = p.selector ? Scope::workload : (p.ns == root_namespace ? Scope::mesh : Scope::ns);
  if (stats) out->stats = std::move(stats);
  if (p.has_target_refs)
    out->ignored = "targetRef: a policy for a waypoint or gateway, not enforced by a node proxy";
  else if (p.action == AuthzAction::custom)
    out->ignored = "action CUSTOM (an external authorizer) is not supported at L4";

  // An ALLOW rule with L7 is dropped; DENY and AUDIT keep the rest of it.
  const bool drop_l7_rules = p.action == AuthzAction::allow;
  std::set<std::string> l7;
  for (const config::AuthzRule& r : p.rules) {
    bool rule_l7 = false;
    Rule rule;
    if (!r.to.empty()) {
      Clause clause;
      for (const auto& op : r.to) {
        Match m;
        m.destination_ports = op.ports;
        m.not_destination_ports = op.not_ports;
        if (!op.l7.empty()) {
          rule_l7 = true;
          l7.insert(op.l7.begin(), op.l7.end());
          if (m.empty()) m.match_all = true;
        }
        clause.push_back(std::move(m));
      }
      rule.push_back(std::move(clause));
    }
    if (!r.from.empty()) {
      Clause clause;
      for (const auto& s : r.from) {
        Match m;
        m.principals = string_matches(s.principals);
        m.not_principals = string_matches(s.not_principals);
        m.namespaces = string_matches(s.namespaces);
        m.not_namespaces = string_matches(s.not_namespaces);
        m.service_accounts = service_account_matches(s.service_accounts, p.ns);
        m.not_service_accounts = service_account_matches(s.not_service_accounts, p.ns);
        m.source_ips = s.ip_blocks;
        m.not_source_ips = s.not_ip_blocks;
        if (!s.l7.empty()) {
          rule_l7 = true;
          l7.insert(s.l7.begin(), s.l7.end());
          if (m.empty()) m.match_all = true;
        }
        clause.push_back(std::move(m));
      }
      rule.push_back(std::move(clause));
    }
    for (const auto& w : r.when) {
      Match m;
      if (w.key == "source.ip") {
        m.source_ips = w.cidr_values;
        m.not_source_ips = w.cidr_not_values;
      } else if (w.key == "destination.ip") {
        m.destination_ips = w.cidr_values;
        m.not_destination_ips = w.cidr_not_values;
      } else if (w.key == "destination.port") {
        m.destination_ports = w.port_values;
        m.not_destination_ports = w.port_not_values;
      } else if (w.key == "source.namespace") {
        m.namespaces = string_matches(w.values);
        m.not_namespaces = string_matches(w.not_values);
      } else if (w.key == "source.principal") {
        m.principals = string_matches(w.values);
        m.not_principals = string_matches(w.not_values);
      }
      if (!is_l4_when_key(w.key)) {
        rule_l7 = true;
        l7.insert("when " + w.key);
        m.match_all = true;
      }
      rule.push_back(Clause{std::move(m)});
    }
    if (rule_l7 && drop_l7_rules) continue;
    out->rules.push_back(std::move(rule));
  }
  out->l7_fields.assign(l7.begin(), l7.end());

  if (log && !out->ignored.empty()) {
    spdlog::warn("authz: AuthorizationPolicy {} is not enforced: {}", out->key, out->ignored);
  } else if (log && !l7.empty()) {
    std::string fields;
    for (const auto& f : l7) fields += (fields.empty() ? "" : ", ") + f;
    spdlog::warn("authz: AuthorizationPolicy {} ({}) uses L7 attributes a node proxy cannot see ({}): {}", out->key,
                 config::to_string(p.action), fields,
                 drop_l7_rules ? "the rules using them match nothing (more restrictive than written)"
                               : "they are ignored and the rest of each rule is enforced (more restrictive than written)");
  }
  return out;
}

}  // namespace dsproxy::authz
