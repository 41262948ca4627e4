// The TLS contexts and every way a peer is refused, over in-memory TLS pairs.

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <sstream>
#include <thread>

#include "identity/identity_error.hpp"
#include "identity/tls_contexts.hpp"
#include "proxy/log_text.hpp"
#include "support/test_pki.hpp"
#include "support/tls_memory_pair.hpp"

namespace identity_tls_test {  // named: unity builds put several test files in one translation unit

using namespace dsproxy::identity;
using dsproxy::testing::TestPki;
using dsproxy::testing::TlsMemoryPair;

struct Tls : ::testing::Test {
  TestPki pki;
  SpiffeId client_id = pki.id("default", "client");
  SpiffeId server_id = pki.id("backend", "server");
  std::shared_ptr<const TlsContexts> client = pki.contexts(pki.leaf(client_id));
  std::shared_ptr<const TlsContexts> server = pki.contexts(pki.leaf(server_id));
};

TEST_F(Tls, MutualHandshakeGivesEachSideThePeersIdentityAndH2) {
  auto p = TlsMemoryPair::connect(client->client().get(), server->server().get(), server_id);
  ASSERT_TRUE(p.client_ok && p.server_ok) << to_string(p.client_error) << " / " << to_string(p.server_error);
  EXPECT_EQ(peer_identity(p.server.get()), client_id);
  EXPECT_EQ(peer_identity(p.client.get()), server_id);
  EXPECT_EQ(check_peer_identity(p.client.get(), server_id), PeerError::none);
  EXPECT_TRUE(negotiated_h2(p.client.get()));
  EXPECT_TRUE(negotiated_h2(p.server.get()));
  EXPECT_EQ(SSL_version(p.client.get()), TLS1_3_VERSION);
  EXPECT_TRUE(p.exchange("hello"));
}

TEST_F(Tls, ClientRefusesAServerWithAnotherIdentityDuringTheHandshake) {
  auto p = TlsMemoryPair::connect(client->client().get(), server->server().get(), pki.id("backend", "other"));
  EXPECT_FALSE(p.client_ok);
  EXPECT_EQ(p.client_error, PeerError::wrong_identity);
  EXPECT_NE(refusal_detail(p.client.get()).find("expected spiffe://cluster.local/ns/backend/sa/other"),
            std::string::npos)
      << refusal_detail(p.client.get());
}

TEST_F(Tls, CheckPeerIdentityAfterTheHandshakeSaysWrongIdentity) {
  auto p = TlsMemoryPair::connect(client->client().get(), server->server().get());
  ASSERT_TRUE(p.client_ok);
  EXPECT_EQ(check_peer_identity(p.client.get(), pki.id("backend", "other")), PeerError::wrong_identity);
  EXPECT_EQ(check_peer_identity(p.client.get(), server_id), PeerError::none);
}

TEST_F(Tls, ServerRefusesAnExpiredClientCertificate) {
  auto old = pki.contexts(pki.expired_leaf(client_id));
  auto p = TlsMemoryPair::connect(old->client().get(), server->server().get(), server_id);
  EXPECT_FALSE(p.server_ok);
  EXPECT_EQ(p.server_error, PeerError::expired);
  EXPECT_EQ(peer_identity(p.server.get()), std::nullopt);
}

TEST_F(Tls, ServerRefusesANotYetValidClientCertificate) {
  auto early = pki.contexts(pki.not_yet_valid_leaf(client_id));
  auto p = TlsMemoryPair::connect(early->client().get(), server->server().get(), server_id);
  EXPECT_FALSE(p.server_ok);
  EXPECT_EQ(p.server_error, PeerError::not_yet_valid);
}

TEST_F(Tls, ServerRefusesAClientOfAForeignCa) {
  TestPki foreign("cluster.local", "foreign root");
  // The foreign client trusts our root, so only the server's check can stop it.
  auto stranger = foreign.contexts(foreign.leaf(client_id), pki.bundle());
  auto p = TlsMemoryPair::connect(stranger->client().get(), server->server().get(), server_id);
  EXPECT_FALSE(p.server_ok);
  EXPECT_EQ(p.server_error, PeerError::unknown_ca);
}

TEST_F(Tls, AForeignCaWithOurCasNameIsStillAnUnknownCa) {
  TestPki impostor("cluster.local", "dsproxy test root");  // same subject as pki's root
  auto stranger = impostor.contexts(impostor.leaf(client_id), pki.bundle());
  auto p = TlsMemoryPair::connect(stranger->client().get(), server->server().get(), server_id);
  EXPECT_FALSE(p.server_ok);
  EXPECT_EQ(p.server_error, PeerError::unknown_ca);
}

TEST_F(Tls, ClientRefusesAnExpiredOrForeignServer) {
  auto expired = pki.contexts(pki.expired_leaf(server_id));
  auto p = TlsMemoryPair::connect(client->client().get(), expired->server().get(), server_id);
  EXPECT_FALSE(p.client_ok);
  EXPECT_EQ(p.client_error, PeerError::expired);

  TestPki foreign("cluster.local", "foreign root");
  auto stranger = foreign.contexts(foreign.leaf(server_id), pki.bundle());
  auto q = TlsMemoryPair::connect(client->client().get(), stranger->server().get(), server_id);
  EXPECT_FALSE(q.client_ok);
  EXPECT_EQ(q.client_error, PeerError::unknown_ca);
}

TEST_F(Tls, ServerRefusesAClientWithoutCertificate) {
  SslCtxPtr bare(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_set_verify(bare.get(), SSL_VERIFY_NONE, nullptr);
  static const unsigned char h2[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(bare.get(), h2, sizeof h2);
  auto p = TlsMemoryPair::connect(bare.get(), server->server().get());
  EXPECT_FALSE(p.server_ok);
  EXPECT_EQ(p.server_error, PeerError::no_certificate);
}

TEST_F(Tls, ServerRefusesAClientCertificateWithoutSpiffeId) {
  for (const auto& sans : {std::vector<std::string>{}, std::vector<std::string>{"https://example.com/x"},
                           std::vector<std::string>{client_id.uri(), pki.id("default", "second").uri()}}) {
    auto raw = pki.raw_leaf(client_id, {.uri_sans = sans});
    SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
    SSL_CTX_use_certificate(ctx.get(), raw.cert.get());
    SSL_CTX_use_PrivateKey(ctx.get(), raw.key.get());
    static const unsigned char h2[] = {2, 'h', '2'};
    SSL_CTX_set_alpn_protos(ctx.get(), h2, sizeof h2);
    auto p = TlsMemoryPair::connect(ctx.get(), server->server().get());
    EXPECT_FALSE(p.server_ok) << sans.size();
    EXPECT_EQ(p.server_error, PeerError::no_identity) << sans.size();
  }
}

TEST_F(Tls, AnotherTrustDomainIsAWrongIdentity) {
  TestPki other_domain("example.org", "other");
  // Signed by our CA, but for another trust domain.
  auto raw = pki.raw_leaf(client_id, {.uri_sans = std::vector<std::string>{"spiffe://example.org/ns/default/sa/client"}});
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_use_certificate(ctx.get(), raw.cert.get());
  SSL_CTX_use_PrivateKey(ctx.get(), raw.key.get());
  static const unsigned char h2[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(ctx.get(), h2, sizeof h2);
  auto p = TlsMemoryPair::connect(ctx.get(), server->server().get());
  EXPECT_FALSE(p.server_ok);
  EXPECT_EQ(p.server_error, PeerError::wrong_identity);
}

TEST_F(Tls, ServerRefusesTls12AndClientsWithoutH2) {
  auto raw = pki.raw_leaf(client_id);
  auto make = [&](int max_version, bool h2) {
    SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
    SSL_CTX_use_certificate(ctx.get(), raw.cert.get());
    SSL_CTX_use_PrivateKey(ctx.get(), raw.key.get());
    SSL_CTX_set_max_proto_version(ctx.get(), max_version);
    static const unsigned char h2_wire[] = {2, 'h', '2'};
    static const unsigned char http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    if (h2)
      SSL_CTX_set_alpn_protos(ctx.get(), h2_wire, sizeof h2_wire);
    else
      SSL_CTX_set_alpn_protos(ctx.get(), http11, sizeof http11);
    return ctx;
  };
  auto tls12 = make(TLS1_2_VERSION, true);
  auto p = TlsMemoryPair::connect(tls12.get(), server->server().get());
  EXPECT_FALSE(p.server_ok);
  EXPECT_EQ(p.server_error, PeerError::protocol);

  auto no_h2 = make(TLS1_3_VERSION, false);
  auto q = TlsMemoryPair::connect(no_h2.get(), server->server().get());
  EXPECT_FALSE(q.server_ok);
  EXPECT_EQ(q.server_error, PeerError::protocol);
  EXPECT_NE(refusal_detail(q.server.get()).find("h2"), std::string::npos);
}

// A plaintext HTTP/2 client (h2c with prior knowledge) on the TLS port: its preface is no TLS
// record, and the refusal says so rather than only OpenSSL's "wrong version number".
TEST_F(Tls, ServerSaysAPlaintextClientIsNotTls) {
  SslPtr ssl(SSL_new(server->server().get()));
  static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  BIO* in = BIO_new_mem_buf(preface, sizeof preface - 1);
  SSL_set_bio(ssl.get(), in, BIO_new(BIO_s_mem()));
  ERR_clear_error();
  ASSERT_LE(SSL_accept(ssl.get()), 0);
  EXPECT_EQ(handshake_failure(ssl.get(), ERR_peek_last_error()), PeerError::protocol);
  EXPECT_NE(refusal_detail(ssl.get()).find("not TLS, a plaintext client?"), std::string::npos)
      << refusal_detail(ssl.get());
  ERR_clear_error();
}

TEST_F(Tls, LeavesOfAnIntermediateVerifyAgainstTheRoot) {
  TestPki sub = pki.intermediate("dsproxy test intermediate");
  auto c = sub.contexts(sub.leaf(client_id), pki.bundle());
  auto s = sub.contexts(sub.leaf(server_id), pki.bundle());
  auto p = TlsMemoryPair::connect(c->client().get(), s->server().get(), server_id);
  ASSERT_TRUE(p.client_ok && p.server_ok) << to_string(p.client_error) << " / " << to_string(p.server_error);
  EXPECT_EQ(peer_identity(p.server.get()), client_id);
}

TEST_F(Tls, ABundleWithTwoRootsAcceptsLeavesOfBoth) {
  TestPki next("cluster.local", "dsproxy next root");
  auto both = TrustBundle::from_pem(pki.root_pem() + next.root_pem(), "rotation bundle");
  EXPECT_EQ(both->roots().size(), 2u);
  auto old_client = pki.contexts(pki.leaf(client_id), both);
  auto new_server = next.contexts(next.leaf(server_id), both);
  auto p = TlsMemoryPair::connect(old_client->client().get(), new_server->server().get(), server_id);
  ASSERT_TRUE(p.client_ok && p.server_ok) << to_string(p.client_error) << " / " << to_string(p.server_error);
  // Once the old root is gone from the bundle, its leaves are refused.
  auto new_only = TrustBundle::from_pem(next.root_pem(), "new root");
  auto strict_server = next.contexts(next.leaf(server_id), new_only);
  auto q = TlsMemoryPair::connect(old_client->client().get(), strict_server->server().get(), server_id);
  EXPECT_EQ(q.server_error, PeerError::unknown_ca);
}

TEST_F(Tls, RotationLeavesEstablishedConnectionsWorking) {
  auto p = TlsMemoryPair::connect(client->client().get(), server->server().get(), server_id);
  ASSERT_TRUE(p.client_ok && p.server_ok);
  const std::string old_fingerprint = server->certificate().fingerprint();
  // Rotate: new leaves, new contexts; the old ones are released by everyone but the SSLs.
  server = pki.contexts(pki.leaf(server_id));
  client = pki.contexts(pki.leaf(client_id));
  EXPECT_NE(server->certificate().fingerprint(), old_fingerprint);
  EXPECT_TRUE(p.exchange("still there after rotation"));
  auto q = TlsMemoryPair::connect(client->client().get(), server->server().get(), server_id);
  ASSERT_TRUE(q.client_ok && q.server_ok);
  X509* presented = SSL_get0_peer_certificate(q.client.get());
  ASSERT_TRUE(presented);
  EXPECT_EQ(X509_cmp(presented, server->certificate().leaf()), 0);
  EXPECT_TRUE(p.exchange("and after a new handshake"));
}

TEST(TlsContextsMake, RefusesAKeyThatIsNotTheLeafs) {
  TestPki pki;
  auto a = pki.raw_leaf(pki.id("a", "a"));
  auto b = pki.raw_leaf(pki.id("b", "b"));
  std::vector<X509Ptr> chain;
  chain.push_back(std::move(a.cert));
  EXPECT_THROW(WorkloadCertificate::make(std::move(chain), std::move(b.key), "test"), IdentityError);
}

// report_refusal's log throttle is per process and per (side, reason), 1 s: a test that
// captures the lines waits out what an earlier test (e.g. HboneIdentity's client wrong-identity
// refusals, run just before when filtered together) may have logged.
void wait_out_refusal_log_throttle() { std::this_thread::sleep_for(std::chrono::milliseconds(1100)); }

TEST(TlsReport, EachReasonHasItsOwnCounterAndALogLine) {
  wait_out_refusal_log_throttle();
  std::ostringstream log;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  TlsStats stats;
  TestPki pki;
  auto server = pki.contexts(pki.leaf(pki.id("s", "s")));
  auto old = pki.contexts(pki.expired_leaf(pki.id("c", "c")));
  auto p = TlsMemoryPair::connect(old->client().get(), server->server().get());
  report_refusal(stats, Side::server, p.server_error, "10.1.0.5:40112", p.server.get());
  report_refusal(stats, Side::client, PeerError::wrong_identity, "[fd00::5]:15008", nullptr);
  report_refusal(stats, Side::server, PeerError::unknown_ca, "10.1.0.6:1", nullptr);
  report_handshake(stats, Side::server);
  spdlog::set_default_logger(previous);

  EXPECT_EQ(stats.refused[0][static_cast<int>(PeerError::expired)].load(), 1u);
  EXPECT_EQ(stats.refused[0][static_cast<int>(PeerError::unknown_ca)].load(), 1u);
  EXPECT_EQ(stats.refused[1][static_cast<int>(PeerError::wrong_identity)].load(), 1u);
  EXPECT_EQ(stats.refused_total(Side::server), 2u);
  EXPECT_EQ(stats.handshakes[0].load(), 1u);
  const auto json = stats.to_json();
  EXPECT_EQ(json.at("server").at("refused").at("expired").as_uint64(), 1u);
  const std::string text = log.str();
  EXPECT_NE(text.find("tls server: refused client 10.1.0.5:40112: expired certificate"), std::string::npos) << text;
  EXPECT_NE(text.find("spiffe://cluster.local/ns/c/sa/c"), std::string::npos) << text;
  EXPECT_NE(text.find("tls client: refused server [fd00::5]:15008: wrong identity"), std::string::npos) << text;
  EXPECT_NE(text.find("certificate from an unknown CA"), std::string::npos) << text;
}

TEST(LogText, EscapesEveryByteOutsidePrintableAsciiAndCaps) {
  using dsproxy::proxy::log_list;
  using dsproxy::proxy::log_text;
  EXPECT_EQ(log_text("spiffe://cluster.local/ns/a/sa/b"), "spiffe://cluster.local/ns/a/sa/b");
  EXPECT_EQ(log_text(std::string("a\r\nb\x1b[31m\0\x7f\xff", 12)), "a\\x0d\\x0ab\\x1b[31m\\x00\\x7f\\xff");
  const std::string big(10000, 'x');
  EXPECT_EQ(log_text(big), std::string(256, 'x') + "\u2026(10000 bytes)");
  EXPECT_EQ(log_text(std::string(256, 'y')), std::string(256, 'y'));  // exactly the cap: no marker
  EXPECT_EQ(log_text("abcdef", 3), "abc\u2026(6 bytes)");
  EXPECT_EQ(log_list({"a", "b\n"}), "a b\\x0a");
  EXPECT_EQ(log_list({"1", "2", "3", "4", "5", "6"}), "1 2 3 4 and 2 more");
  EXPECT_EQ(log_list({}), "");
}

// Review finding: anyone reaching 15008 can present a certificate from any CA, and its URI SANs
// were logged verbatim. OpenSSL parses an IA5String SAN holding CR/LF, ESC and bytes >= 0x80
// without complaint (this test's handshakes get to the verification with them), so the log
// line must escape and cap them itself, and list only a few SANs.
TEST(TlsReport, APeersCertificateNamesAreLoggedEscapedAndCapped) {
  const std::string evil = "spiffe://cluster.local/ns/x/sa/y\n2026-12-07 [warning] forged line\x1b[2J" +
                           std::string(10 * 1024, 'A');
  std::vector<std::string> sans{evil, "spiffe://cluster.local/ns/a/sa/\xc3\xa9\xff", "urn:3", "urn:4", "urn:5", "urn:6"};
  TestPki pki, foreign("cluster.local", "foreign CA");
  auto server = pki.contexts(pki.leaf(pki.id("s", "s")));
  auto expected = pki.id("s", "s");
  wait_out_refusal_log_throttle();
  for (const TestPki* issuer : {&foreign, &pki}) {  // unknown CA, and a known CA without a valid SPIFFE id
    std::ostringstream log;
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
    auto previous = spdlog::default_logger();
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
    auto raw = issuer->raw_leaf(issuer->id("c", "c"), {.uri_sans = sans});
    // As a client presents it to the server (15008), and as a server presents it to the client.
    SslCtxPtr client_ctx(SSL_CTX_new(TLS_client_method()));
    SSL_CTX_set_min_proto_version(client_ctx.get(), TLS1_3_VERSION);
    SSL_CTX_set_verify(client_ctx.get(), SSL_VERIFY_NONE, nullptr);
    static const unsigned char h2_wire[] = {2, 'h', '2'};
    SSL_CTX_set_alpn_protos(client_ctx.get(), h2_wire, sizeof h2_wire);
    ASSERT_EQ(SSL_CTX_use_certificate(client_ctx.get(), raw.cert.get()), 1);
    ASSERT_EQ(SSL_CTX_use_PrivateKey(client_ctx.get(), raw.key.get()), 1);
    auto p = TlsMemoryPair::connect(client_ctx.get(), server->server().get());
    EXPECT_FALSE(p.server_ok);
    EXPECT_EQ(p.server_error, issuer == &foreign ? PeerError::unknown_ca : PeerError::no_identity);
    TlsStats stats;
    report_refusal(stats, Side::server, p.server_error, "10.1.0.5:40112", p.server.get());

    SslCtxPtr server_ctx(SSL_CTX_new(TLS_server_method()));
    SSL_CTX_set_min_proto_version(server_ctx.get(), TLS1_3_VERSION);
    SSL_CTX_set_alpn_select_cb(
        server_ctx.get(),
        [](SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char*, unsigned int, void*) {
          *out = h2_wire + 1;
          *outlen = 2;
          return SSL_TLSEXT_ERR_OK;
        },
        nullptr);
    ASSERT_EQ(SSL_CTX_use_certificate(server_ctx.get(), raw.cert.get()), 1);
    ASSERT_EQ(SSL_CTX_use_PrivateKey(server_ctx.get(), raw.key.get()), 1);
    auto client = pki.contexts(pki.leaf(pki.id("c", "c")));
    auto q = TlsMemoryPair::connect(client->client().get(), server_ctx.get(), expected);
    EXPECT_FALSE(q.client_ok);
    report_refusal(stats, Side::client, q.client_error, "[fd00::5]:15008", q.client.get());
    spdlog::set_default_logger(previous);

    const std::string text = log.str();
    // Two lines, each ended by the sink's own newline: no forged line, no escape sequence.
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2) << text;
    EXPECT_EQ(text.find('\x1b'), std::string::npos);
    EXPECT_EQ(std::count_if(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) > 0x7e; }),
              2 * 3)  // only the two "…" markers (3 UTF-8 bytes each)
        << text;
    EXPECT_EQ(text.find("forged line\\x1b[2J" + std::string(250, 'A')), std::string::npos);
    for (std::string_view side : {"tls server: refused client 10.1.0.5:40112", "tls client: refused server [fd00::5]:15008"}) {
      const auto at = text.find(side);
      ASSERT_NE(at, std::string::npos) << text;
      const std::string line = text.substr(at, text.find('\n', at) - at);
      EXPECT_NE(line.find("/sa/y\\x0a2026-12-07 [warning] forged line\\x1b[2JAAA"), std::string::npos) << line;
      EXPECT_NE(line.find("\u2026(" + std::to_string(evil.size()) + " bytes)"), std::string::npos) << line;
      EXPECT_NE(line.find("/sa/\\xc3\\xa9\\xff urn:3 urn:4 and 2 more"), std::string::npos) << line;
      EXPECT_LT(line.size(), 1024u) << line;
    }
  }
}

}  // namespace identity_tls_test
