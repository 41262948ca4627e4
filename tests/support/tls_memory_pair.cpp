#include "support/tls_memory_pair.hpp"

#include <openssl/err.h>

namespace dsproxy::testing {

using namespace identity;

namespace {

enum class Step { done, want, failed };

Step step(int rc, SSL* ssl, unsigned long& error) {
  if (rc > 0) return Step::done;
  const int e = SSL_get_error(ssl, rc);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return Step::want;
  error = ERR_peek_last_error();
  ERR_clear_error();
  return Step::failed;
}

}  // namespace

TlsMemoryPair TlsMemoryPair::connect(SSL_CTX* client_ctx, SSL_CTX* server_ctx,
                                     const std::optional<SpiffeId>& expected) {
  TlsMemoryPair p;
  ERR_clear_error();
  p.client.reset(SSL_new(client_ctx));
  p.server.reset(SSL_new(server_ctx));
  BIO *a = nullptr, *b = nullptr;
  BIO_new_bio_pair(&a, 0, &b, 0);
  SSL_set_bio(p.client.get(), a, a);
  SSL_set_bio(p.server.get(), b, b);
  SSL_set_connect_state(p.client.get());
  SSL_set_accept_state(p.server.get());
  if (expected) expect_peer_identity(p.client.get(), *expected);

  Step c = Step::want, s = Step::want;
  for (int i = 0; i < 50 && (c == Step::want || s == Step::want); ++i) {
    if (c == Step::want) c = step(SSL_do_handshake(p.client.get()), p.client.get(), p.client_openssl_error);
    if (s == Step::want) s = step(SSL_do_handshake(p.server.get()), p.server.get(), p.server_openssl_error);
    if (c == Step::failed || s == Step::failed) {
      // Let the other side read the alert that was sent.
      if (c == Step::want) c = step(SSL_do_handshake(p.client.get()), p.client.get(), p.client_openssl_error);
      if (s == Step::want) s = step(SSL_do_handshake(p.server.get()), p.server.get(), p.server_openssl_error);
      break;
    }
  }
  if (c == Step::done && s == Step::done && p.exchange("x")) {
    p.client_ok = p.server_ok = true;
    return p;
  }
  if (c == Step::done && s == Step::done) {
    // The handshakes completed but the exchange failed: recorded by exchange().
  }
  if (!p.client_ok) p.client_error = handshake_failure(p.client.get(), p.client_openssl_error);
  if (!p.server_ok) p.server_error = handshake_failure(p.server.get(), p.server_openssl_error);
  return p;
}

bool TlsMemoryPair::exchange(const std::string& bytes) {
  auto one_way = [&](SSL* from, SSL* to, unsigned long& from_error, unsigned long& to_error) {
    if (SSL_write(from, bytes.data(), static_cast<int>(bytes.size())) <= 0) {
      from_error = ERR_peek_last_error();
      ERR_clear_error();
      return false;
    }
    std::string got(bytes.size(), '\0');
    std::size_t n = 0;
    for (int i = 0; i < 20 && n < got.size(); ++i) {
      const int rc = SSL_read(to, got.data() + n, static_cast<int>(got.size() - n));
      if (rc > 0) {
        n += static_cast<std::size_t>(rc);
        continue;
      }
      const int e = SSL_get_error(to, rc);
      if (e == SSL_ERROR_WANT_READ) {
        // The writer may owe a post-handshake message; let it run.
        char dummy;
        const int rf = SSL_read(from, &dummy, 0);
        if (rf < 0 && SSL_get_error(from, rf) == SSL_ERROR_SSL) {
          from_error = ERR_peek_last_error();
          ERR_clear_error();
          return false;
        }
        continue;
      }
      to_error = ERR_peek_last_error();
      ERR_clear_error();
      return false;
    }
    return n == got.size() && got == bytes;
  };
  return one_way(client.get(), server.get(), client_openssl_error, server_openssl_error) &&
         one_way(server.get(), client.get(), server_openssl_error, client_openssl_error);
}

}  // namespace dsproxy::testing
