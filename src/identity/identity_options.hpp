#pragma once
// What `dsproxy run` is told about identities (--ca-cert/--ca-key, --cert-dir, --trust-bundle,
// --trust-domain, --cert-lifetime-s). No certificate source: mTLS is off and dsproxy forwards in
// plaintext as before.

#include <chrono>
#include <filesystem>
#include <string>

namespace dsproxy::identity {

struct IdentityOptions {
  std::filesystem::path ca_cert;       // local issuer: the CA certificate (PEM) ...
  std::filesystem::path ca_key;        // ... and its key (PEM, mode 0600 or stricter)
  std::filesystem::path cert_dir;      // external issuer: <dir>/<ns>/<sa>/{tls.crt,tls.key}
  std::filesystem::path trust_bundle;  // PEM roots; empty: ca_cert's (local issuer) — required with cert_dir
  std::string trust_domain = "cluster.local";
  std::chrono::seconds cert_lifetime{24 * 3600};  // local issuer's leaves; renewed at half life
  // How often the identity thread looks at the bundle file, the cert dir and the set of local
  // identities.
  std::chrono::milliseconds poll{1000};

  bool enabled() const { return !ca_cert.empty() || !cert_dir.empty(); }
  // "" when usable; else what is wrong (both sources, a key without its certificate, no bundle
  // for --cert-dir, a bad trust domain, ...).
  std::string validate() const;
};

}  // namespace dsproxy::identity
