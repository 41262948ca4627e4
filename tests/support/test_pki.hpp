#pragma once
// A throw-away PKI for tests (unit tests, the hbone and transport tests, e2e helpers): a CA,
// leaves with any SPIFFE id, and the broken ones every refusal test needs — expired,
// not-yet-valid, from a foreign CA, without a SPIFFE id. Built with src/identity/'s own signer,
// so the tests use the code that issues in production.
//
//   dsproxy::testing::TestPki pki;                       // a fresh root CA, trust domain cluster.local
//   auto leaf = pki.leaf(pki.id("default", "client"));   // valid for an hour
//   auto old  = pki.leaf(id, {.not_after = now - 1h});   // expired
//   TestPki foreign("cluster.local", "foreign CA");      // an unknown CA
//   auto contexts = pki.contexts(leaf);                  // TlsContexts trusting pki's root
//   pki.write_ca(dir) / TestPki::write_leaf(*leaf, cert, key) for --ca-cert/--cert-dir tests.

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "identity/openssl_handles.hpp"
#include "identity/spiffe_id.hpp"
#include "identity/tls_contexts.hpp"
#include "identity/trust_bundle.hpp"
#include "identity/workload_certificate.hpp"

namespace dsproxy::testing {

using identity::SystemClock;

class TestPki {
 public:
  struct LeafOptions {
    // Defaults: a minute ago .. an hour from now.
    std::optional<SystemClock::time_point> not_before;
    std::optional<SystemClock::time_point> not_after;
    // Replaces the SAN list (e.g. {} for a leaf without SPIFFE id, or two URIs). Only raw_leaf()
    // honours it: WorkloadCertificate refuses leaves without exactly one SPIFFE id.
    std::optional<std::vector<std::string>> uri_sans;
  };
  struct RawLeaf {
    identity::X509Ptr cert;
    identity::EvpPkeyPtr key;
  };

  explicit TestPki(std::string trust_domain = "cluster.local", std::string ca_name = "dsproxy test root");
  // An intermediate CA signed by this one (its leaves chain through it).
  TestPki intermediate(std::string name) const;

  const std::string& trust_domain() const { return trust_domain_; }
  identity::SpiffeId id(std::string ns, std::string sa) const;

  X509* ca_cert() const { return ca_chain_.front().get(); }
  EVP_PKEY* ca_key() const { return ca_key_.get(); }
  std::vector<identity::X509Ptr> ca_chain() const;  // this CA first, then its issuers
  std::string ca_pem() const;                        // this CA's certificate
  std::string root_pem() const;                      // the root of the chain (what a bundle holds)
  std::shared_ptr<const identity::TrustBundle> bundle() const;

  std::shared_ptr<const identity::WorkloadCertificate> leaf(const identity::SpiffeId& id,
                                                            LeafOptions options = {}) const;
  std::shared_ptr<const identity::WorkloadCertificate> expired_leaf(const identity::SpiffeId& id) const;
  std::shared_ptr<const identity::WorkloadCertificate> not_yet_valid_leaf(const identity::SpiffeId& id) const;
  RawLeaf raw_leaf(const identity::SpiffeId& id, LeafOptions options = {}) const;

  // TlsContexts for `leaf`, trusting `bundle` (default: this PKI's root).
  std::shared_ptr<const identity::TlsContexts> contexts(
      std::shared_ptr<const identity::WorkloadCertificate> leaf,
      std::shared_ptr<const identity::TrustBundle> bundle = nullptr,
      std::shared_ptr<identity::TlsStats> stats = nullptr) const;

  // Files: the CA certificate (chain) and key (mode 0600) for --ca-cert/--ca-key; returns {cert, key}.
  std::pair<std::filesystem::path, std::filesystem::path> write_ca(const std::filesystem::path& dir) const;
  // The root as a bundle file for --trust-bundle.
  std::filesystem::path write_bundle(const std::filesystem::path& file) const;
  // A leaf's chain and key files (key mode `key_mode`, default 0600).
  static void write_leaf(const identity::WorkloadCertificate& leaf, const std::filesystem::path& cert,
                         const std::filesystem::path& key, std::filesystem::perms key_mode =
                                                               std::filesystem::perms::owner_read |
                                                               std::filesystem::perms::owner_write);
  static std::string key_pem(EVP_PKEY* key);  // tests only: product code never serialises a key

 private:
  struct Empty {};
  explicit TestPki(Empty) {}
  std::string trust_domain_;
  std::vector<identity::X509Ptr> ca_chain_;  // [0] this CA
  identity::EvpPkeyPtr ca_key_;
};

// Writes `text` to `path` (truncating) with `mode`.
void write_file(const std::filesystem::path& path, std::string_view text,
                std::filesystem::perms mode = std::filesystem::perms::owner_read |
                                              std::filesystem::perms::owner_write);

}  // namespace dsproxy::testing
