#include "identity/spiffe_id.hpp"

#include <algorithm>

namespace dsproxy::identity {

namespace {

constexpr std::string_view kScheme = "spiffe://";
constexpr std::size_t kMaxTrustDomain = 255;  // SPIFFE: the trust domain is at most 255 bytes
constexpr std::size_t kMaxName = 253;         // Kubernetes object names (DNS-1123 subdomain)

bool lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// Namespace and service account: what Kubernetes accepts in their names, so every identity a
// pod can have parses and nothing else does ("." and ".." would also be path tricks).
std::string name_problem(std::string_view what, std::string_view name) {
  if (name.empty()) return std::string(what) + " is empty";
  if (name.size() > kMaxName) return std::string(what) + " is longer than 253 characters";
  if (!std::all_of(name.begin(), name.end(), [](char c) { return lower_alnum(c) || c == '-' || c == '.'; }))
    return std::string(what) + " has a character outside [a-z0-9.-]";
  if (!lower_alnum(name.front()) || !lower_alnum(name.back()))
    return std::string(what) + " must start and end with [a-z0-9]";
  return "";
}

std::string trust_domain_problem(std::string_view td) {
  if (td.empty()) return "trust domain is empty";
  if (td.size() > kMaxTrustDomain) return "trust domain is longer than 255 characters";
  if (!std::all_of(td.begin(), td.end(),
                   [](char c) { return lower_alnum(c) || c == '-' || c == '.' || c == '_'; }))
    return "trust domain has a character outside [a-z0-9._-] (no port, userinfo or upper case)";
  return "";
}

// The one parser: "" and the parts, or the reason.
std::string split(std::string_view uri, SpiffeId* out) {
  if (uri.substr(0, kScheme.size()) != kScheme) return "not a spiffe:// URI";
  std::string_view rest = uri.substr(kScheme.size());
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos) return "no path (want /ns/<namespace>/sa/<service account>)";
  const std::string_view td = rest.substr(0, slash);
  if (auto p = trust_domain_problem(td); !p.empty()) return p;
  std::string_view path = rest.substr(slash);  // "/ns/x/sa/y"
  if (path.find_first_of("?#%") != std::string_view::npos) return "query, fragment or percent-encoding in the path";
  // Exactly four segments: ns, <ns>, sa, <sa>.
  std::string_view segs[4];
  for (int i = 0; i < 4; ++i) {
    if (path.empty() || path.front() != '/') return "path is not /ns/<namespace>/sa/<service account>";
    path.remove_prefix(1);
    const auto next = path.find('/');
    segs[i] = path.substr(0, next);
    path = next == std::string_view::npos ? std::string_view{} : path.substr(next);
  }
  if (!path.empty()) return "extra path segments after the service account";
  if (segs[0] != "ns" || segs[2] != "sa") return "path is not /ns/<namespace>/sa/<service account>";
  if (auto p = name_problem("namespace", segs[1]); !p.empty()) return p;
  if (auto p = name_problem("service account", segs[3]); !p.empty()) return p;
  if (out) *out = SpiffeId{std::string(td), std::string(segs[1]), std::string(segs[3])};
  return "";
}

}  // namespace

std::string SpiffeId::uri() const {
  std::string s;
  s.reserve(kScheme.size() + trust_domain.size() + ns.size() + service_account.size() + 8);
  s.append(kScheme).append(trust_domain).append("/ns/").append(ns).append("/sa/").append(service_account);
  return s;
}

std::optional<SpiffeId> SpiffeId::parse(std::string_view uri) {
  SpiffeId id;
  if (!split(uri, &id).empty()) return std::nullopt;
  return id;
}

std::string SpiffeId::why_invalid(std::string_view uri) { return split(uri, nullptr); }

std::optional<SpiffeId> SpiffeId::make(std::string_view trust_domain, std::string_view ns, std::string_view sa) {
  if (!trust_domain_problem(trust_domain).empty() || !name_problem("", ns).empty() || !name_problem("", sa).empty())
    return std::nullopt;
  return SpiffeId{std::string(trust_domain), std::string(ns), std::string(sa)};
}

bool valid_trust_domain(std::string_view name) { return trust_domain_problem(name).empty(); }

}  // namespace dsproxy::identity
