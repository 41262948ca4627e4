// The tunnel over identity's own TLS contexts (src/identity/tls_contexts): the SSL_CTX pair the
// daemon will hand to the hbone listener and pool, certificates from identity's test PKI.

#include <gtest/gtest.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <unistd.h>

#include <boost/asio/ssl/error.hpp>
#include <filesystem>

#include "hbone_harness.hpp"
#include "identity/identity_manager.hpp"
#include "identity/tls_contexts.hpp"
#include "proxy/mesh.hpp"
#include "support/test_pki.hpp"

namespace dsproxy::hbone::test {
namespace hbone_identity_test {  // named: unity builds put several test files in one translation unit

TEST(HboneIdentity, TunnelRunsOnIdentityTlsContexts) {
  Harness h;
  dsproxy::testing::TestPki pki;
  auto server_id = pki.id("default", "server"), client_id = pki.id("default", "client");
  auto server = pki.contexts(pki.leaf(server_id));
  auto client = pki.contexts(pki.leaf(client_id));
  h.post_and_wait([&] {
    h.server_ctx = server->server();
    h.client_ctx = client->client();
  });
  PoolKey key{client_id.uri(), server_id.uri(), h.hbone_endpoint()};
  auto r = h.open(format_authority(h.echo_endpoint()), {}, key);
  ASSERT_EQ(r.status, 200) << r.ec.message();
  auto data = random_bytes(1 << 20, 5);
  ASSERT_TRUE(write_all(r.fd, data.data(), data.size()));
  ::shutdown(r.fd, SHUT_WR);
  std::vector<char> back;
  EXPECT_TRUE(read_to_eof(r.fd, back));
  ::close(r.fd);
  EXPECT_EQ(sha256(back.data(), back.size()), sha256(data.data(), data.size()));
  EXPECT_EQ(h.post_and_wait([&] { return h.seen_identities.at(0); }), client_id.uri());
  // The pool's verify step refuses a server that is not the expected destination identity.
  PoolKey wrong{client_id.uri(), pki.id("default", "other").uri(), h.hbone_endpoint()};
  EXPECT_EQ(h.open(format_authority(h.echo_endpoint()), {}, wrong).ec, asio::error::access_denied);
}

// The daemon's pool hooks (proxy::identity_pool_hooks) over an IdentityManager: a server refused
// in the TLS handshake itself (a wrong identity: expect_peer_identity makes it a handshake
// failure; a chain from another CA) is counted under its reason, as the server side counts its
// refusals; a right server is counted as a handshake.
TEST(HboneIdentity, PoolHooksCountServersRefusedInTheHandshake) {
  dsproxy::testing::TestPki pki, foreign;
  struct TempDir {
    std::filesystem::path path =
        std::filesystem::temp_directory_path() / ("dsproxy-hbone-identity-" + std::to_string(::getpid()));
    TempDir() {
      std::filesystem::remove_all(path);
      std::filesystem::create_directories(path);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
  } dir;
  auto [ca_cert, ca_key] = pki.write_ca(dir.path);
  identity::IdentityOptions options;
  options.ca_cert = ca_cert;
  options.ca_key = ca_key;
  const auto client_id = pki.id("default", "client"), server_id = pki.id("default", "server");
  identity::IdentityManager identities(options, [client_id] { return std::set<identity::SpiffeId>{client_id}; });
  identities.refresh_now();
  ASSERT_NE(identities.contexts(client_id), nullptr);
  Harness h;  // after the manager: its io thread, which runs the hooks, ends first
  h.post_and_wait([&] { h.pool = ConnectionPool::create(h.io.get_executor(), {}, proxy::identity_pool_hooks(identities)); });
  const PoolKey key{client_id.uri(), server_id.uri(), h.hbone_endpoint()};
  using identity::PeerError;
  auto refused = [&](PeerError e) {
    return identities.stats()->refused[static_cast<int>(identity::Side::client)][static_cast<int>(e)].load();
  };

  h.post_and_wait([&] { h.server_ctx = pki.contexts(pki.leaf(pki.id("default", "impostor")))->server(); });
  EXPECT_NE(h.open(format_authority(h.echo_endpoint()), {}, key).status, 200);
  EXPECT_EQ(refused(PeerError::wrong_identity), 1u);

  h.post_and_wait([&] { h.server_ctx = foreign.contexts(foreign.leaf(server_id), pki.bundle())->server(); });
  EXPECT_NE(h.open(format_authority(h.echo_endpoint()), {}, key).status, 200);
  EXPECT_EQ(refused(PeerError::unknown_ca), 1u);

  // A server whose TCP connection is reset in the middle of the handshake refused nothing: it is
  // counted apart (connection_lost), not as a TLS protocol refusal, and not in refused_total.
  const PoolKey to_resetter{client_id.uri(), server_id.uri(), h.resetter_endpoint()};
  EXPECT_NE(h.open(format_authority(h.echo_endpoint()), {}, to_resetter).status, 200);
  EXPECT_EQ(refused(PeerError::connection_lost), 1u);
  EXPECT_EQ(refused(PeerError::protocol), 0u);

  h.post_and_wait([&] { h.server_ctx = pki.contexts(pki.leaf(server_id))->server(); });
  auto ok = h.open(format_authority(h.echo_endpoint()), {}, key);
  EXPECT_EQ(ok.status, 200);
  if (ok.fd >= 0) ::close(ok.fd);
  EXPECT_EQ(identities.stats()->refused_total(identity::Side::client), 2u);
  EXPECT_EQ(identities.stats()->handshakes[static_cast<int>(identity::Side::client)].load(), 1u);
}

// The hook's classification on its own: only an error of OpenSSL's category is the server's
// refusal; an EOF (Asio's stream_truncated), a reset or our own abort is connection_lost.
TEST(HboneIdentity, PoolHookCountsOnlyOpenSslErrorsAsRefusals) {
  dsproxy::testing::TestPki pki;
  struct TempDir {
    std::filesystem::path path =
        std::filesystem::temp_directory_path() / ("dsproxy-hbone-hook-" + std::to_string(::getpid()));
    TempDir() {
      std::filesystem::remove_all(path);
      std::filesystem::create_directories(path);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
  } dir;
  auto [ca_cert, ca_key] = pki.write_ca(dir.path);
  identity::IdentityOptions options;
  options.ca_cert = ca_cert;
  options.ca_key = ca_key;
  const auto client_id = pki.id("default", "client"), server_id = pki.id("default", "server");
  identity::IdentityManager identities(options, [client_id] { return std::set<identity::SpiffeId>{client_id}; });
  identities.refresh_now();
  auto contexts = identities.contexts(client_id);
  ASSERT_NE(contexts, nullptr);
  auto hooks = proxy::identity_pool_hooks(identities);
  ASSERT_TRUE(hooks.on_handshake_failure);
  const PoolKey key{client_id.uri(), server_id.uri(), {asio::ip::make_address("127.0.0.1"), 15008}};
  using identity::PeerError;
  auto count = [&](PeerError e) {
    return identities.stats()->refused[static_cast<int>(identity::Side::client)][static_cast<int>(e)].load();
  };
  for (const error_code ec : {error_code(asio::ssl::error::stream_truncated), error_code(asio::error::connection_reset),
                              error_code(asio::error::operation_aborted), error_code(asio::error::eof)}) {
    identity::SslPtr ssl(SSL_new(contexts->client().get()));
    hooks.on_handshake_failure(key, ssl.get(), ec);
  }
  EXPECT_EQ(count(PeerError::connection_lost), 4u);
  EXPECT_EQ(count(PeerError::protocol), 0u);
  EXPECT_EQ(identities.stats()->refused_total(identity::Side::client), 0u);

  identity::SslPtr ssl(SSL_new(contexts->client().get()));
  hooks.on_handshake_failure(
      key, ssl.get(),
      error_code(static_cast<int>(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_WRONG_VERSION_NUMBER)), asio::error::get_ssl_category()));
  EXPECT_EQ(count(PeerError::protocol), 1u);
  EXPECT_EQ(identities.stats()->refused_total(identity::Side::client), 1u);
  EXPECT_EQ(identities.stats()->to_json().at("client").at("refused").at("connection-lost").as_uint64(), 4u);
}

}  // namespace hbone_identity_test
}  // namespace dsproxy::hbone::test
