#include "config/k8s_objects.hpp"

namespace dsproxy::config {

std::string_view to_string(IpFamilyPolicy p) {
  switch (p) {
    case IpFamilyPolicy::SingleStack: return "SingleStack";
    case IpFamilyPolicy::PreferDualStack: return "PreferDualStack";
    case IpFamilyPolicy::RequireDualStack: return "RequireDualStack";
  }
  return "SingleStack";
}

std::string_view to_string(TrafficPolicy p) { return p == TrafficPolicy::Local ? "Local" : "Cluster"; }

std::string_view to_string(SessionAffinity a) { return a == SessionAffinity::ClientIP ? "ClientIP" : "None"; }

std::string_view to_string(AddressType t) {
  switch (t) {
    case AddressType::IPv4: return "IPv4";
    case AddressType::IPv6: return "IPv6";
    case AddressType::FQDN: return "FQDN";
  }
  return "IPv4";
}

std::string_view to_string(AuthzAction a) {
  switch (a) {
    case AuthzAction::allow: return "ALLOW";
    case AuthzAction::deny: return "DENY";
    case AuthzAction::audit: return "AUDIT";
    case AuthzAction::custom: return "CUSTOM";
  }
  return "ALLOW";
}

}  // namespace dsproxy::config
