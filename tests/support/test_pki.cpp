#include "support/test_pki.hpp"

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <fstream>
#include <stdexcept>

#include "identity/certificate_signer.hpp"
#include "identity/identity_error.hpp"

namespace dsproxy::testing {

using namespace identity;

namespace {

std::string pem_of(X509* x) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), x);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

}  // namespace

void write_file(const std::filesystem::path& path, std::string_view text, std::filesystem::perms mode) {
  std::filesystem::create_directories(path.parent_path());
  // Replace rather than rewrite: a reader never sees a half-written file, and the inode changes
  // as it does when a Kubernetes volume swaps its symlink.
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write " + tmp);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
  }
  std::filesystem::permissions(tmp, mode);
  std::filesystem::rename(tmp, path);
}

TestPki::TestPki(std::string trust_domain, std::string ca_name) : trust_domain_(std::move(trust_domain)) {
  ca_key_ = generate_p256_key();
  CertificateSpec spec;
  spec.common_name = std::move(ca_name);
  spec.is_ca = true;
  spec.not_before = SystemClock::now() - std::chrono::hours(1);
  spec.not_after = SystemClock::now() + std::chrono::hours(24 * 365);
  ca_chain_.push_back(sign_certificate(spec, ca_key_.get(), nullptr, nullptr));
}

TestPki TestPki::intermediate(std::string name) const {
  TestPki sub{Empty{}};
  sub.trust_domain_ = trust_domain_;
  sub.ca_key_ = generate_p256_key();
  CertificateSpec spec;
  spec.common_name = std::move(name);
  spec.is_ca = true;
  spec.not_before = SystemClock::now() - std::chrono::hours(1);
  spec.not_after = SystemClock::now() + std::chrono::hours(24 * 30);
  sub.ca_chain_.push_back(sign_certificate(spec, sub.ca_key_.get(), ca_cert(), ca_key()));
  for (const auto& c : ca_chain_) sub.ca_chain_.push_back(share(c.get()));
  return sub;
}

SpiffeId TestPki::id(std::string ns, std::string sa) const {
  return SpiffeId{trust_domain_, std::move(ns), std::move(sa)};
}

std::vector<X509Ptr> TestPki::ca_chain() const {
  std::vector<X509Ptr> out;
  for (const auto& c : ca_chain_) out.push_back(share(c.get()));
  return out;
}

std::string TestPki::ca_pem() const { return pem_of(ca_cert()); }
std::string TestPki::root_pem() const { return pem_of(ca_chain_.back().get()); }

std::shared_ptr<const TrustBundle> TestPki::bundle() const { return TrustBundle::from_pem(root_pem(), "test pki"); }

TestPki::RawLeaf TestPki::raw_leaf(const SpiffeId& id, LeafOptions options) const {
  const auto now = SystemClock::now();
  CertificateSpec spec;
  spec.uri_sans = options.uri_sans ? *options.uri_sans : std::vector<std::string>{id.uri()};
  spec.not_before = options.not_before.value_or(now - std::chrono::minutes(1));
  spec.not_after = options.not_after.value_or(now + std::chrono::hours(1));
  // A leaf without any SAN needs a subject to be a valid certificate at all.
  if (spec.uri_sans.empty()) spec.common_name = "no spiffe id";
  RawLeaf leaf;
  leaf.key = generate_p256_key();
  leaf.cert = sign_certificate(spec, leaf.key.get(), ca_cert(), ca_key());
  return leaf;
}

std::shared_ptr<const WorkloadCertificate> TestPki::leaf(const SpiffeId& id, LeafOptions options) const {
  options.uri_sans.reset();
  RawLeaf raw = raw_leaf(id, options);
  std::vector<X509Ptr> chain;
  chain.push_back(std::move(raw.cert));
  // Intermediates travel with the leaf; the root stays in the peer's bundle.
  for (std::size_t i = 0; i + 1 < ca_chain_.size(); ++i) chain.push_back(share(ca_chain_[i].get()));
  return WorkloadCertificate::make(std::move(chain), std::move(raw.key), "test pki");
}

std::shared_ptr<const WorkloadCertificate> TestPki::expired_leaf(const SpiffeId& id) const {
  const auto now = SystemClock::now();
  return leaf(id, {.not_before = now - std::chrono::hours(2), .not_after = now - std::chrono::hours(1)});
}

std::shared_ptr<const WorkloadCertificate> TestPki::not_yet_valid_leaf(const SpiffeId& id) const {
  const auto now = SystemClock::now();
  return leaf(id, {.not_before = now + std::chrono::hours(1), .not_after = now + std::chrono::hours(2)});
}

std::shared_ptr<const TlsContexts> TestPki::contexts(std::shared_ptr<const WorkloadCertificate> leaf,
                                                     std::shared_ptr<const TrustBundle> bundle,
                                                     std::shared_ptr<TlsStats> stats) const {
  return TlsContexts::make(std::move(leaf), bundle ? std::move(bundle) : this->bundle(), trust_domain_,
                           std::move(stats));
}

std::pair<std::filesystem::path, std::filesystem::path> TestPki::write_ca(const std::filesystem::path& dir) const {
  std::string chain;
  for (const auto& c : ca_chain_) chain += pem_of(c.get());
  const auto cert = dir / "ca.crt", key = dir / "ca.key";
  write_file(cert, chain, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                              std::filesystem::perms::group_read | std::filesystem::perms::others_read);
  write_file(key, key_pem(ca_key()));
  return {cert, key};
}

std::filesystem::path TestPki::write_bundle(const std::filesystem::path& file) const {
  write_file(file, root_pem(), std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                                   std::filesystem::perms::group_read | std::filesystem::perms::others_read);
  return file;
}

void TestPki::write_leaf(const WorkloadCertificate& leaf, const std::filesystem::path& cert,
                         const std::filesystem::path& key, std::filesystem::perms key_mode) {
  write_file(cert, leaf.chain_pem(), std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                                         std::filesystem::perms::group_read | std::filesystem::perms::others_read);
  write_file(key, key_pem(leaf.key()), key_mode);
}

std::string TestPki::key_pem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

}  // namespace dsproxy::testing
