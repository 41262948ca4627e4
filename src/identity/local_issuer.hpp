#pragma once
// The local issuer: dsproxy holds a CA certificate and key (--ca-cert, --ca-key) and issues
// short-lived leaf certificates itself, for the demo, the tests and small clusters.
//
//   - Only for identities it is told are needed (the service accounts of this node's own pods):
//     a node that could mint any identity would let one compromised node impersonate every
//     workload of the cluster. issue() for anything else is refused.
//   - Each leaf: a fresh EC P-256 key, the SPIFFE id as its only SAN (URI), an empty subject,
//     CA:FALSE, keyUsage digitalSignature + keyAgreement, extendedKeyUsage serverAuth +
//     clientAuth (the same leaf serves both ends of a tunnel, as Istio's do), notBefore a minute
//     in the past (clock skew between nodes), lifetime --cert-lifetime-s (default 24 h); renewed
//     at half life, so a node whose issuer stalls still has half a lifetime of valid certificates.
//   - The chain sent to peers is the leaf plus the CA certificate when the CA is an
//     intermediate (not self-signed): the peers' bundle holds only the root.

#include <filesystem>
#include <map>

#include "identity/certificate_provider.hpp"
#include "identity/openssl_handles.hpp"

namespace dsproxy::identity {

struct LocalIssuerOptions {
  std::filesystem::path ca_cert;  // PEM: the issuing CA first, then its own issuers if any
  std::filesystem::path ca_key;   // PEM; refused if group/world accessible
  std::string trust_domain = "cluster.local";
  std::chrono::seconds lifetime{24 * 3600};
  // notBefore is backdated this much.
  std::chrono::seconds backdate{60};
};

class LocalIssuer final : public CertificateProvider {
 public:
  // Loads and checks the CA (a CA certificate whose key is the one given). Throws IdentityError.
  explicit LocalIssuer(LocalIssuerOptions options);
  // From CA objects already in memory (tests, the test PKI).
  LocalIssuer(std::vector<X509Ptr> ca_chain, EvpPkeyPtr ca_key, std::string trust_domain,
              std::chrono::seconds lifetime);

  std::string_view kind() const override { return "local-issuer"; }
  RefreshResult refresh(const std::set<SpiffeId>& wanted, SystemClock::time_point now) override;
  std::shared_ptr<const WorkloadCertificate> certificate(const SpiffeId& id) const override;
  SystemClock::time_point next_due(SystemClock::time_point now) const override;
  boost::json::object describe() const override;

  // A new leaf for `id` now, if `id` is wanted (the last refresh()'s set) and of this trust
  // domain; throws IdentityError otherwise ("not the service account of a pod on this node").
  std::shared_ptr<const WorkloadCertificate> issue(const SpiffeId& id, SystemClock::time_point now);

  std::uint64_t issued() const { return issued_; }
  std::uint64_t refused() const { return refused_; }

 private:
  std::shared_ptr<const WorkloadCertificate> sign(const SpiffeId& id, SystemClock::time_point now);

  std::vector<X509Ptr> ca_chain_;  // [0] signs the leaves
  EvpPkeyPtr ca_key_;
  std::string trust_domain_;
  std::chrono::seconds lifetime_;
  std::chrono::seconds backdate_{60};
  std::string ca_origin_;
  std::set<SpiffeId> wanted_;
  std::map<SpiffeId, std::shared_ptr<const WorkloadCertificate>> current_;
  // Half-way from issuance (not from the backdated notBefore, which with a short lifetime would
  // make every leaf due at once) to notAfter.
  std::map<SpiffeId, SystemClock::time_point> renew_at_;
  std::uint64_t issued_ = 0, refused_ = 0;
};

}  // namespace dsproxy::identity
