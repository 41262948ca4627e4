#include "identity/identity_options.hpp"

#include "identity/spiffe_id.hpp"

namespace dsproxy::identity {

std::string IdentityOptions::validate() const {
  if (!ca_cert.empty() && !cert_dir.empty())
    return "--ca-cert/--ca-key (local issuer) and --cert-dir (external issuer) exclude each other";
  if (ca_cert.empty() != ca_key.empty()) return "--ca-cert and --ca-key go together";
  if (!cert_dir.empty() && trust_bundle.empty())
    return "--cert-dir needs --trust-bundle (the roots the external issuer's certificates chain to)";
  if (!enabled() && !trust_bundle.empty())
    return "--trust-bundle without a certificate source (--ca-cert/--ca-key or --cert-dir)";
  if (!valid_trust_domain(trust_domain))
    return "--trust-domain '" + trust_domain + "': want lower-case letters, digits, '.', '-' or '_'";
  if (cert_lifetime < std::chrono::seconds(2)) return "--cert-lifetime-s: at least 2 seconds";
  return "";
}

}  // namespace dsproxy::identity
