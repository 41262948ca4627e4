#pragma once
// X.509 issuance with OpenSSL 3's API, shared by the local issuer and the test PKI
// (tests/support/test_pki.hpp), so the tests exercise the same code that signs in production.

#include <chrono>
#include <string>
#include <vector>

#include "identity/openssl_handles.hpp"

namespace dsproxy::identity {

struct CertificateSpec {
  std::string common_name;            // subject CN; "" = empty subject (leaves: the SAN is the name)
  std::vector<std::string> uri_sans;  // subjectAltName URI entries, in order
  std::chrono::system_clock::time_point not_before;
  std::chrono::system_clock::time_point not_after;
  bool is_ca = false;  // CA:TRUE + keyCertSign/cRLSign; else CA:FALSE, leaf key usages, serverAuth+clientAuth
};

// A fresh EC P-256 key. Throws IdentityError.
EvpPkeyPtr generate_p256_key();
// Signs `spec` for `subject_key` with `issuer`/`issuer_key` (issuer == nullptr: self-signed with
// subject_key). Random 128-bit serial, SHA-256, subject/authority key identifiers. Throws
// IdentityError.
X509Ptr sign_certificate(const CertificateSpec& spec, EVP_PKEY* subject_key, X509* issuer, EVP_PKEY* issuer_key);

}  // namespace dsproxy::identity
