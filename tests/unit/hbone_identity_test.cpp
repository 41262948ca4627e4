// The tunnel over identity's own TLS contexts (src/identity/tls_contexts): the SSL_CTX pair the
// daemon will hand to the hbone listener and pool, certificates from identity's test PKI.

#include <gtest/gtest.h>

#include "hbone_harness.hpp"
#include "identity/tls_contexts.hpp"
#include "support/test_pki.hpp"

namespace dsproxy::hbone::test {
namespace {

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

}  // namespace
}  // namespace dsproxy::hbone::test
