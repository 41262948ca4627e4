// Throwaway TLS material for the fake API server, generated at start with the OpenSSL 3 API:
// a CA, a server certificate it signs (subjectAltName = the IP addresses served + localhost),
// and a second, unrelated "wrong" CA with its own server certificate, so tests can check that a
// client verifies the chain (trusting the wrong CA, or being shown the wrong certificate, must fail).
// EC P-256 keys: generated in about a millisecond, so every test gets fresh ones.
#pragma once

#include <string>
#include <vector>

namespace dsproxy::fake_api {

struct CertifiedKey {
  std::string certificate_pem;
  std::string private_key_pem;
};

struct TlsMaterial {
  CertifiedKey ca;
  CertifiedKey server;        // signed by ca
  CertifiedKey wrong_ca;
  CertifiedKey wrong_server;  // signed by wrong_ca, same subjectAltName as server
};

// ip_addresses: textual IPv4/IPv6 addresses for the server certificates' subjectAltName.
// Throws std::runtime_error naming the OpenSSL call that failed.
TlsMaterial generate_tls_material(const std::vector<std::string>& ip_addresses);

}  // namespace dsproxy::fake_api
