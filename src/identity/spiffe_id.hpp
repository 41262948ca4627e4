#pragma once
// A workload identity as Istio spells it: spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
//
// Strict on purpose: the id is compared byte for byte (the client's "is this the workload I meant
// to reach" check, authorization principals), so two spellings of one identity must not both
// parse. Rejected: another scheme or a scheme in upper case, a port/userinfo/query/fragment,
// percent-encoding, empty segments, any path other than exactly ns/<ns>/sa/<sa>, a trust domain
// outside [a-z0-9.-_] (SPIFFE: lower case), and namespace/service account names outside the
// characters Kubernetes allows in them ([a-z0-9.-], at most 253).

#include <compare>
#include <optional>
#include <string>
#include <string_view>

namespace dsproxy::identity {

struct SpiffeId {
  std::string trust_domain;
  std::string ns;
  std::string service_account;

  // spiffe://<trust domain>/ns/<ns>/sa/<sa>
  std::string uri() const;
  // nullopt for anything that is not exactly that form (see above).
  static std::optional<SpiffeId> parse(std::string_view uri);
  // Why `uri` does not parse ("" when it does), for error messages and logs.
  static std::string why_invalid(std::string_view uri);
  // The parts checked as parse() checks them; nullopt if one is invalid.
  static std::optional<SpiffeId> make(std::string_view trust_domain, std::string_view ns, std::string_view sa);

  auto operator<=>(const SpiffeId&) const = default;
  bool operator==(const SpiffeId&) const = default;
};

// Trust domain names as --trust-domain accepts them.
bool valid_trust_domain(std::string_view name);

}  // namespace dsproxy::identity
