#include "identity/local_issuer.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>

#include "identity/certificate_signer.hpp"
#include "identity/identity_error.hpp"

namespace dsproxy::identity {

namespace {

bool self_signed(X509* x) { return (X509_get_extension_flags(x) & EXFLAG_SS) != 0; }

std::vector<X509Ptr> parse_chain(const std::string& pem, const std::string& origin) {
  std::vector<X509Ptr> chain;
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  ERR_clear_error();
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) chain.emplace_back(x);
  ERR_clear_error();
  if (chain.empty()) throw IdentityError(origin + ": no certificate");
  return chain;
}

EvpPkeyPtr parse_key(const SensitiveText& pem, const std::string& origin) {
  BioPtr bio(BIO_new_mem_buf(pem.view().data(), static_cast<int>(pem.view().size())));
  auto no_passphrase = [](char*, int, int, void*) { return 0; };
  EvpPkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  if (!key) {
    const auto why = openssl_errors();
    throw IdentityError(origin + ": the private key does not parse (want an unencrypted PEM key" +
                        (why.empty() ? "" : "; " + why) + ")");
  }
  return key;
}

}  // namespace

LocalIssuer::LocalIssuer(LocalIssuerOptions options)
    : LocalIssuer(parse_chain(read_text_file(options.ca_cert), options.ca_cert.string()),
                  parse_key(read_private_key_file(options.ca_key), options.ca_key.string()), options.trust_domain,
                  options.lifetime) {
  backdate_ = options.backdate;
  ca_origin_ = options.ca_cert.string();
}

LocalIssuer::LocalIssuer(std::vector<X509Ptr> ca_chain, EvpPkeyPtr ca_key, std::string trust_domain,
                         std::chrono::seconds lifetime)
    : ca_chain_(std::move(ca_chain)),
      ca_key_(std::move(ca_key)),
      trust_domain_(std::move(trust_domain)),
      lifetime_(lifetime),
      ca_origin_("in memory") {
  if (ca_chain_.empty() || !ca_key_) throw IdentityError("local issuer: no CA certificate or key");
  X509* ca = ca_chain_.front().get();
  if (X509_check_ca(ca) < 1)
    throw IdentityError("local issuer: the CA certificate is not a CA (basicConstraints CA:TRUE, keyCertSign)");
  if (X509_check_private_key(ca, ca_key_.get()) != 1) {
    ERR_clear_error();
    throw IdentityError("local issuer: the CA key does not belong to the CA certificate");
  }
  if (lifetime_ < std::chrono::seconds(2)) throw IdentityError("local issuer: certificate lifetime under 2 s");
  const auto ca_not_after = to_time_point(X509_get0_notAfter(ca));
  if (ca_not_after <= SystemClock::now())
    throw IdentityError("local issuer: the CA certificate expired at " + format_utc(ca_not_after));
}

std::shared_ptr<const WorkloadCertificate> LocalIssuer::sign(const SpiffeId& id, SystemClock::time_point now) {
  X509* ca = ca_chain_.front().get();
  // Never outlive the CA (a verifier would refuse the chain), never start before it.
  const auto ca_not_before = to_time_point(X509_get0_notBefore(ca));
  const auto ca_not_after = to_time_point(X509_get0_notAfter(ca));
  CertificateSpec spec;
  spec.uri_sans = {id.uri()};
  spec.not_before = std::max(now - backdate_, ca_not_before);
  spec.not_after = std::min(now + lifetime_, ca_not_after);
  if (spec.not_after <= now) throw IdentityError("local issuer: the CA certificate has expired");
  EvpPkeyPtr key = generate_p256_key();
  std::vector<X509Ptr> chain;
  chain.push_back(sign_certificate(spec, key.get(), ca, ca_key_.get()));
  // Peers hold only roots: send every CA of ours that is not one.
  for (const auto& c : ca_chain_)
    if (!self_signed(c.get())) chain.push_back(share(c.get()));
  ++issued_;
  return WorkloadCertificate::make(std::move(chain), std::move(key), "local issuer");
}

RefreshResult LocalIssuer::refresh(const std::set<SpiffeId>& wanted, SystemClock::time_point now) {
  RefreshResult result;
  wanted_.clear();
  for (const auto& id : wanted) {
    if (id.trust_domain != trust_domain_) {
      result.errors.emplace_back(id, "not of trust domain " + trust_domain_);
      continue;
    }
    wanted_.insert(id);
  }
  for (auto it = current_.begin(); it != current_.end();) {
    if (wanted_.count(it->first)) {
      ++it;
      continue;
    }
    result.removed.push_back(it->first);
    renew_at_.erase(it->first);
    it = current_.erase(it);
  }
  for (const auto& id : wanted_) {
    const auto due = renew_at_.find(id);
    if (due != renew_at_.end() && current_.count(id) && now < due->second) continue;
    try {
      current_[id] = sign(id, now);
      renew_at_[id] = now + (current_[id]->not_after() - now) / 2;
      result.changed.push_back(id);
    } catch (const IdentityError& e) {
      result.errors.emplace_back(id, e.what());
    }
  }
  return result;
}

std::shared_ptr<const WorkloadCertificate> LocalIssuer::issue(const SpiffeId& id, SystemClock::time_point now) {
  if (!wanted_.count(id)) {
    ++refused_;
    throw IdentityError("local issuer: refusing to issue " + id.uri() +
                        ": not the service account of a pod on this node");
  }
  auto cert = sign(id, now);
  current_[id] = cert;
  renew_at_[id] = now + (cert->not_after() - now) / 2;
  return cert;
}

std::shared_ptr<const WorkloadCertificate> LocalIssuer::certificate(const SpiffeId& id) const {
  const auto it = current_.find(id);
  return it == current_.end() ? nullptr : it->second;
}

SystemClock::time_point LocalIssuer::next_due(SystemClock::time_point now) const {
  auto due = SystemClock::time_point::max();
  for (const auto& [id, at] : renew_at_) due = std::min(due, at);
  return due == SystemClock::time_point::max() ? now + lifetime_ : due;
}

boost::json::object LocalIssuer::describe() const {
  X509* ca = ca_chain_.front().get();
  char subject[256];
  X509_NAME_oneline(X509_get_subject_name(ca), subject, sizeof subject);
  return boost::json::object{{"kind", "local-issuer"},
                             {"caCertificate", ca_origin_},
                             {"caSubject", subject},
                             {"caNotAfter", format_utc(to_time_point(X509_get0_notAfter(ca)))},
                             {"certificateLifetimeSeconds", lifetime_.count()},
                             {"issued", issued_},
                             {"refused", refused_}};
}

}  // namespace dsproxy::identity
