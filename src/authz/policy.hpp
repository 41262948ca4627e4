#pragma once
// One AuthorizationPolicy compiled for L4 enforcement, with ztunnel's matching semantics.
//
// Structure (as ztunnel evaluates it, src/rbac.rs; Istio's control plane builds the same shape in
// pilot/pkg/serviceregistry/ambient/authorization.go):
//   policy  matches when ANY of its rules matches; a policy without rules matches nothing
//   rule    matches when ALL of its clauses match; a rule without clauses (`- {}`) matches all
//   clause  one per `to` list, one per `from` list, one per `when` condition; matches when ANY of
//           its matches does
//   match   ALL of its fields hold; per field: ANY positive value and NONE of the `not` values.
//           A match with no field at all never matches (ztunnel skips it), except the fail-safe
//           match-all below.
// Principals and namespaces come from the peer's verified identity (HBONE). Without one (a
// plaintext connection) a principal or namespace never equals a value, so a positive
// principals/namespaces field never matches and a `not` one always does: "DENY notPrincipals: ['*']"
// denies every plaintext connection, as with ztunnel.
//
// L7 fields (methods, paths, hosts, requestPrincipals, remoteIpBlocks, `when` keys other than
// source.ip, source.namespace, source.principal, destination.ip, destination.port) cannot be
// seen at L4. Istio's docs for ztunnel and its control plane say what happens, and so do we:
//   ALLOW  a rule that uses one is dropped: it matches nothing (never allows more)
//   DENY   the L7 fields are ignored and the rest of the rule is enforced: it denies more. Where
//          dropping them leaves a from/to entry or a condition with nothing to check, that entry
//          matches everything (ztunnel's control plane sends an empty match there, which ztunnel
//          skips, so such a DENY has no effect at all: we deliberately deny instead, as the issue
//          demands never allowing more than the policy would)
//   AUDIT  as DENY (logs more, never less)
// and the policy is logged once (when it is compiled) naming the L7 fields.

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/k8s_objects.hpp"
#include "net/cidr.hpp"
#include "net/ip_address.hpp"

namespace dsproxy::authz {

// Istio's string match for principals and namespaces: "*" any non-empty value, "*x" suffix,
// "x*" prefix, else exact.
struct StringMatch {
  enum class Kind : std::uint8_t { exact, prefix, suffix, presence };
  Kind kind = Kind::exact;
  std::string value;
  static StringMatch parse(std::string_view pattern);
  bool matches(std::string_view s) const;
  friend bool operator==(const StringMatch&, const StringMatch&) = default;
};

struct ServiceAccountMatch {
  std::string ns;
  std::string service_account;
  friend bool operator==(const ServiceAccountMatch&, const ServiceAccountMatch&) = default;
};

// The peer's verified identity: SPIFFE spiffe://<trust_domain>/ns/<ns>/sa/<service_account>.
struct SourceIdentity {
  std::string trust_domain;
  std::string ns;
  std::string service_account;
  // "<trust_domain>/ns/<ns>/sa/<sa>": what principals match against (Istio writes principals
  // without the "spiffe://" scheme and compares them with the URI stripped of it).
  std::string principal() const;
};

// What a policy is evaluated against: everything L4 knows about one connection.
struct ConnectionAttributes {
  net::IpAddress source_ip;
  net::IpAddress destination_ip;  // the workload's own address (a pod IP)
  std::uint16_t destination_port = 0;
  // Set only for an authenticated (HBONE, mTLS) connection; plaintext has none.
  std::optional<SourceIdentity> source_identity;
};

// ConnectionAttributes with the identity's derived strings computed once per decision.
struct MatchInput {
  explicit MatchInput(const ConnectionAttributes& c);
  const ConnectionAttributes& conn;
  std::string principal;  // "" without an identity
  std::string_view ns;    // "" without an identity
};

struct Match {
  std::vector<StringMatch> principals, not_principals;
  std::vector<StringMatch> namespaces, not_namespaces;
  std::vector<ServiceAccountMatch> service_accounts, not_service_accounts;
  std::vector<net::Cidr> source_ips, not_source_ips;
  std::vector<net::Cidr> destination_ips, not_destination_ips;
  std::vector<std::uint16_t> destination_ports, not_destination_ports;
  bool match_all = false;  // the fail-safe stand-in for an entry that only had L7 fields (DENY, AUDIT)

  bool empty() const;
  bool matches(const MatchInput& in) const;
};

using Clause = std::vector<Match>;
using Rule = std::vector<Clause>;

enum class Scope : std::uint8_t { mesh, ns, workload };  // root namespace, namespace, selector
std::string_view to_string(Scope s);

// Counters of one policy, kept across recompiles of the same ns/name so a reload does not zero
// them. Updated once per decision that the policy took part in, never per packet.
struct PolicyStats {
  std::atomic<std::uint64_t> allowed{0};   // connections this ALLOW policy let in
  std::atomic<std::uint64_t> denied{0};    // connections this DENY policy reset
  std::atomic<std::uint64_t> audited{0};   // connections this AUDIT policy matched
  std::atomic<std::uint64_t> dry_run{0};   // connections this dry-run policy matched
  // The data path's denial log, throttled per policy so that a flood against one policy
  // neither fills the log nor hides which other policy denied something (proxy/authz_connections).
  std::atomic<std::int64_t> log_next_ns{0};
  std::atomic<std::uint64_t> log_suppressed{0};
};

struct Policy {
  std::string name;
  std::string ns;
  std::string key;  // "ns/name"
  config::AuthzAction action = config::AuthzAction::allow;
  Scope scope = Scope::ns;
  std::optional<config::Labels> selector;
  bool dry_run = false;
  std::vector<Rule> rules;
  std::vector<std::string> l7_fields;  // the L7 fields it uses, sorted, for the log and the view
  // Non-empty: ztunnel does not enforce this policy at all (CUSTOM action, targetRef(s)); it is
  // listed, never applied.
  std::string ignored;
  std::shared_ptr<PolicyStats> stats = std::make_shared<PolicyStats>();

  bool matches(const MatchInput& in) const;
  // Whether the policy applies to a workload of namespace `ns` with `labels`, `root` being the
  // root namespace.
  bool selects(std::string_view workload_ns, const config::Labels& labels, std::string_view root) const;
};

// Compiles `p`. `root_namespace` decides the mesh scope. `stats` (may be null: fresh ones) keeps
// the counters of a previous version. Logs, once, an L7 use or a reason to ignore the policy.
std::shared_ptr<const Policy> compile(const config::AuthorizationPolicy& p, std::string_view root_namespace,
                                      std::shared_ptr<PolicyStats> stats = nullptr, bool log = true);

}  // namespace dsproxy::authz
