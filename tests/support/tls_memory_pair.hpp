#pragma once
// A TLS client and server joined by an in-memory BIO pair, driven step by step on the calling
// thread: the handshake and a few bytes each way without sockets or an io_context, so identity
// tests can check every refusal quickly and deterministically.

#include <optional>
#include <string>

#include "identity/openssl_handles.hpp"
#include "identity/spiffe_id.hpp"
#include "identity/tls_contexts.hpp"

namespace dsproxy::testing {

struct TlsMemoryPair {
  identity::SslPtr client, server;
  bool client_ok = false, server_ok = false;  // handshake done and one byte exchanged each way
  unsigned long client_openssl_error = 0, server_openssl_error = 0;  // the packed error of a failure
  identity::PeerError client_error = identity::PeerError::none;      // handshake_failure() of each side
  identity::PeerError server_error = identity::PeerError::none;

  // Handshake between SSLs made from `client_ctx` and `server_ctx`; the client expects the server
  // to be `expected` when given. Then one byte each way, which is where a TLS 1.3 client learns
  // that the server refused its certificate.
  static TlsMemoryPair connect(SSL_CTX* client_ctx, SSL_CTX* server_ctx,
                               const std::optional<identity::SpiffeId>& expected = std::nullopt);
  // Exchanges `bytes` each way over an established pair; false if either side fails.
  bool exchange(const std::string& bytes = "ping");
};

}  // namespace dsproxy::testing
