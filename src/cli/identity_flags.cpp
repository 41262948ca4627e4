#include "cli/identity_flags.hpp"

#include <stdexcept>

namespace dsproxy::cli {

void add_identity_flags(CLI::App& run, identity::IdentityOptions& options, std::uint16_t& hbone_port) {
  auto* ca_cert = run.add_option("--ca-cert", options.ca_cert,
                                 "Local issuer: CA certificate (PEM) that signs this node's workload certificates");
  auto* ca_key = run.add_option("--ca-key", options.ca_key,
                                "Local issuer: the CA's private key (PEM; refused unless mode 0600 or stricter)");
  auto* cert_dir = run.add_option(
      "--cert-dir", options.cert_dir,
      "External issuer: DIR/<namespace>/<service account>/{tls.crt,tls.key}, reloaded when they change");
  ca_cert->excludes(cert_dir);
  ca_key->excludes(cert_dir);
  run.add_option("--trust-bundle", options.trust_bundle,
                 "PEM roots peers are verified against, reloaded when it changes (default: --ca-cert)");
  run.add_option("--trust-domain", options.trust_domain, "SPIFFE trust domain of the workload identities")
      ->capture_default_str();
  run.add_option_function<std::int64_t>(
         "--cert-lifetime-s",
         [&options](std::int64_t s) { options.cert_lifetime = std::chrono::seconds(s); },
         "Local issuer: lifetime of the workload certificates (renewed at half life)")
      ->default_str(std::to_string(options.cert_lifetime.count()))
      ->check(CLI::Range(std::int64_t{2}, std::int64_t{30} * 86400));
  run.add_option("--hbone-port", hbone_port, "HBONE (mTLS HTTP/2 CONNECT) listener port")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
}

void check_identity_flags(const identity::IdentityOptions& options) {
  if (const auto problem = options.validate(); !problem.empty()) throw std::invalid_argument(problem);
}

}  // namespace dsproxy::cli
