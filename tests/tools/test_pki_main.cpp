// dsproxy_test_pki: the test PKI (tests/support/test_pki.hpp) from the command line, for the
// end-to-end scripts and the Node.js interop peer.
//
//   dsproxy_test_pki ca DIR [--name CN]                 DIR/ca.crt, DIR/ca.key (0600)
//   dsproxy_test_pki leaf --ca DIR --id SPIFFE_URI --cert FILE --key FILE
//                    [--expired | --not-yet-valid] [--hours N]
//   dsproxy_test_pki intermediate --ca DIR --out DIR2 [--name CN]   DIR2/ca.crt holds the chain

#include <openssl/pem.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "identity/identity_error.hpp"
#include "identity/certificate_signer.hpp"
#include <openssl/x509v3.h>
#include "identity/workload_certificate.hpp"
#include "support/test_pki.hpp"

using namespace dsproxy;

namespace {

// A TestPki around a CA on disk: issues with the same signer through LocalIssuer's parts.
std::pair<std::vector<identity::X509Ptr>, identity::EvpPkeyPtr> load_ca(const std::filesystem::path& dir) {
  const std::string chain_pem = identity::read_text_file(dir / "ca.crt");
  std::vector<identity::X509Ptr> chain;
  identity::BioPtr bio(BIO_new_mem_buf(chain_pem.data(), static_cast<int>(chain_pem.size())));
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) chain.emplace_back(x);
  const auto key_pem = identity::read_private_key_file(dir / "ca.key");
  identity::BioPtr kbio(BIO_new_mem_buf(key_pem.view().data(), static_cast<int>(key_pem.view().size())));
  identity::EvpPkeyPtr key(PEM_read_bio_PrivateKey(kbio.get(), nullptr, nullptr, nullptr));
  if (chain.empty() || !key) throw identity::IdentityError("cannot read the CA in " + dir.string());
  return {std::move(chain), std::move(key)};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Test PKI for dsproxy's tests"};
  app.require_subcommand(1);
  std::string dir, name = "dsproxy test root", ca, id, cert, key, out;
  bool expired = false, not_yet_valid = false;
  int hours = 24;
  auto* ca_cmd = app.add_subcommand("ca", "A new root CA");
  ca_cmd->add_option("dir", dir)->required();
  ca_cmd->add_option("--name", name);
  auto* leaf_cmd = app.add_subcommand("leaf", "A leaf certificate signed by the CA in --ca");
  leaf_cmd->add_option("--ca", ca)->required();
  leaf_cmd->add_option("--id", id)->required();
  leaf_cmd->add_option("--cert", cert)->required();
  leaf_cmd->add_option("--key", key)->required();
  leaf_cmd->add_flag("--expired", expired);
  leaf_cmd->add_flag("--not-yet-valid", not_yet_valid);
  leaf_cmd->add_option("--hours", hours, "validity")->check(CLI::Range(1, 24 * 365));
  auto* sub_cmd = app.add_subcommand("intermediate", "An intermediate CA signed by the CA in --ca");
  sub_cmd->add_option("--ca", ca)->required();
  sub_cmd->add_option("--out", out)->required();
  sub_cmd->add_option("--name", name);
  CLI11_PARSE(app, argc, argv);
  try {
    if (ca_cmd->parsed()) {
      testing::TestPki pki("cluster.local", name);
      pki.write_ca(dir);
      return 0;
    }
    auto [chain, ca_key] = load_ca(ca);
    if (leaf_cmd->parsed()) {
      const auto spiffe = identity::SpiffeId::parse(id);
      if (!spiffe) throw identity::IdentityError("--id: " + identity::SpiffeId::why_invalid(id));
      const auto now = identity::SystemClock::now();
      identity::CertificateSpec spec;
      spec.uri_sans = {id};
      spec.not_before = now - std::chrono::minutes(1);
      spec.not_after = now + std::chrono::hours(hours);
      if (expired) spec = {"", {id}, now - std::chrono::hours(2), now - std::chrono::hours(1)};
      if (not_yet_valid) spec = {"", {id}, now + std::chrono::hours(1), now + std::chrono::hours(2)};
      auto leaf_key = identity::generate_p256_key();
      std::vector<identity::X509Ptr> leaf_chain;
      leaf_chain.push_back(identity::sign_certificate(spec, leaf_key.get(), chain.front().get(), ca_key.get()));
      for (auto& c : chain)
        if (!(X509_get_extension_flags(c.get()) & EXFLAG_SS)) leaf_chain.push_back(identity::share(c.get()));
      auto workload = identity::WorkloadCertificate::make(std::move(leaf_chain), std::move(leaf_key), "test pki");
      testing::TestPki::write_leaf(*workload, cert, key);
      return 0;
    }
    if (sub_cmd->parsed()) {
      const auto now = identity::SystemClock::now();
      auto sub_key = identity::generate_p256_key();
      identity::CertificateSpec spec{name, {}, now - std::chrono::hours(1), now + std::chrono::hours(24 * 30), true};
      auto sub = identity::sign_certificate(spec, sub_key.get(), chain.front().get(), ca_key.get());
      std::string pem;
      auto append = [&pem](X509* x) {
        identity::BioPtr b(BIO_new(BIO_s_mem()));
        PEM_write_bio_X509(b.get(), x);
        char* data = nullptr;
        const long n = BIO_get_mem_data(b.get(), &data);
        pem.append(data, static_cast<std::size_t>(n));
      };
      append(sub.get());
      for (auto& c : chain) append(c.get());
      testing::write_file(std::filesystem::path(out) / "ca.crt", pem,
                          std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                              std::filesystem::perms::group_read | std::filesystem::perms::others_read);
      testing::write_file(std::filesystem::path(out) / "ca.key", testing::TestPki::key_pem(sub_key.get()));
      return 0;
    }
  } catch (const std::exception& e) {
    std::cerr << "dsproxy_test_pki: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
