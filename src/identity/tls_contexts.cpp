#include "identity/tls_contexts.hpp"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>

#include "identity/identity_error.hpp"
#include "proxy/log_text.hpp"
#include "proxy/log_throttle.hpp"

namespace dsproxy::identity {

namespace {

// What the verification found out about one connection's peer, kept on its SSL (ex_data) so
// that after a failed handshake we can say exactly why: OpenSSL's verify result alone cannot
// tell "wrong identity" from any other application refusal, and holds no certificate details.
struct PeerNote {
  std::optional<SpiffeId> expected;  // client side: expect_peer_identity()
  PeerError error = PeerError::none;
  std::string detail;  // public facts about the refused certificate
};

// Per-context settings the verify callback needs (the SSL_CTX owns it).
struct ContextNote {
  std::string trust_domain;
};

void free_peer_note(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<PeerNote*>(ptr); }
void free_context_note(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<ContextNote*>(ptr);
}

int peer_note_index() {
  static const int index = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL, 0, nullptr, nullptr, nullptr, free_peer_note);
  return index;
}
int context_note_index() {
  static const int index =
      CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL_CTX, 0, nullptr, nullptr, nullptr, free_context_note);
  return index;
}

PeerNote* peer_note(SSL* ssl, bool create) {
  auto* note = static_cast<PeerNote*>(SSL_get_ex_data(ssl, peer_note_index()));
  if (!note && create) {
    note = new (std::nothrow) PeerNote();
    if (note && !SSL_set_ex_data(ssl, peer_note_index(), note)) {
      delete note;
      note = nullptr;
    }
  }
  return note;
}

PeerError classify_verify_error(long err) {
  switch (err) {
    case X509_V_OK:
      return PeerError::none;
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return PeerError::expired;
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return PeerError::not_yet_valid;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
      return PeerError::unknown_ca;
    default:
      return PeerError::bad_certificate;
  }
}

// Anyone who reaches 15008 can present a certificate from any CA, and this describes it in a log
// line: the SANs and the subject are the peer's bytes (OpenSSL does not check an IA5String's
// characters), so they go through log_text — escaped, each capped, at most a few SANs.
std::string describe_cert(X509* cert) {
  std::string out;
  const auto uris = uri_sans(cert);
  if (uris.empty()) {
    char buf[256];
    X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof buf);
    out = "subject " + proxy::log_text(buf);
  } else {
    out = "presented " + proxy::log_list(uris);
  }
  out += ", valid " + format_utc(to_time_point(X509_get0_notBefore(cert))) + " to " +
         format_utc(to_time_point(X509_get0_notAfter(cert)));
  return out;
}

void record(SSL* ssl, PeerError error, std::string detail) {
  PeerNote* note = peer_note(ssl, true);
  if (!note || note->error != PeerError::none) return;  // the first reason is the one that counts
  note->error = error;
  note->detail = std::move(detail);
}

int verify_callback(int preverify_ok, X509_STORE_CTX* store_ctx) {
  SSL* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (!ssl) return preverify_ok;
  X509* cert = X509_STORE_CTX_get_current_cert(store_ctx);
  const int depth = X509_STORE_CTX_get_error_depth(store_ctx);
  if (!preverify_ok) {
    const int err = X509_STORE_CTX_get_error(store_ctx);
    std::string detail = X509_verify_cert_error_string(err);
    if (cert) detail += std::string(depth == 0 ? "; " : "; at chain depth " + std::to_string(depth) + ": ") +
                        describe_cert(cert);
    record(ssl, classify_verify_error(err), std::move(detail));
    return 0;
  }
  if (depth != 0 || !cert) return 1;
  // The chain is good; now the leaf must name a workload of our trust domain (and, for a
  // client, the one it meant to reach).
  const auto id = spiffe_id_of(cert);
  if (!id) {
    record(ssl, PeerError::no_identity, "no single valid SPIFFE URI SAN; " + describe_cert(cert));
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  const auto* ctx_note =
      static_cast<const ContextNote*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), context_note_index()));
  if (ctx_note && id->trust_domain != ctx_note->trust_domain) {
    record(ssl, PeerError::wrong_identity,
           "presented " + id->uri() + ", not of trust domain " + ctx_note->trust_domain);
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  const PeerNote* note = peer_note(ssl, false);
  if (note && note->expected && *note->expected != *id) {
    record(ssl, PeerError::wrong_identity, "presented " + id->uri() + ", expected " + note->expected->uri());
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  return 1;
}

constexpr unsigned char kAlpnWire[] = {2, 'h', '2'};

int alpn_select(SSL* ssl, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, kAlpnWire, sizeof kAlpnWire, in, inlen) == OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  // HBONE is HTTP/2 only: a client that does not offer h2 cannot speak it.
  record(ssl, PeerError::protocol, "the client does not offer ALPN h2");
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

std::shared_ptr<SSL_CTX> build_context(bool server, const WorkloadCertificate& cert, const TrustBundle& bundle,
                                       const std::string& trust_domain) {
  const std::string what = std::string(server ? "server" : "client") + " TLS context for " + cert.id().uri();
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_method()));
  if (!ctx) throw IdentityError(what + ": " + openssl_errors());
  if (!SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION) ||
      !SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION))
    throw IdentityError(what + ": cannot restrict to TLS 1.3: " + openssl_errors());
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(ctx.get(), 0);
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  // Our chain is exactly the leaf and the intermediates we were given; never one OpenSSL
  // assembles from some store.
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_NO_AUTO_CHAIN | SSL_MODE_RELEASE_BUFFERS);

  if (SSL_CTX_use_certificate(ctx.get(), cert.leaf()) != 1)
    throw IdentityError(what + ": the certificate is refused: " + openssl_errors());
  for (X509* x : cert.intermediates())
    if (SSL_CTX_add1_chain_cert(ctx.get(), x) != 1)
      throw IdentityError(what + ": an intermediate is refused: " + openssl_errors());
  if (SSL_CTX_use_PrivateKey(ctx.get(), cert.key()) != 1 || SSL_CTX_check_private_key(ctx.get()) != 1) {
    ERR_clear_error();  // the reason could only be "key values mismatch"; say it in our words
    throw IdentityError(what + ": the private key is refused or does not match the certificate");
  }

  if (SSL_CTX_set1_verify_cert_store(ctx.get(), bundle.store()) != 1)
    throw IdentityError(what + ": cannot set the trust bundle: " + openssl_errors());
  X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx.get()), X509_V_FLAG_PARTIAL_CHAIN);
  SSL_CTX_set_verify_depth(ctx.get(), 8);
  SSL_CTX_set_verify(ctx.get(), server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER,
                     verify_callback);
  auto* note = new ContextNote{trust_domain};
  if (!SSL_CTX_set_ex_data(ctx.get(), context_note_index(), note)) {
    delete note;
    throw IdentityError(what + ": out of memory");
  }
  if (server) {
    SSL_CTX_set_alpn_select_cb(ctx.get(), alpn_select, nullptr);
  } else if (SSL_CTX_set_alpn_protos(ctx.get(), kAlpnWire, sizeof kAlpnWire) != 0) {  // 0 is success here
    throw IdentityError(what + ": cannot set ALPN: " + openssl_errors());
  }
  return std::shared_ptr<SSL_CTX>(ctx.release(), SSL_CTX_free);
}

// One throttle per (side, reason): a flood of one kind of failure does not hide another kind.
proxy::LogThrottle& throttle(Side side, PeerError error) {
  static proxy::LogThrottle throttles[2][kPeerErrorCount];
  return throttles[static_cast<int>(side)][static_cast<int>(error)];
}

std::string_view describe_error(PeerError e, Side side) {
  switch (e) {
    case PeerError::none:
      return "no error";
    case PeerError::no_certificate:
      return "no client certificate";
    case PeerError::expired:
      return "expired certificate";
    case PeerError::not_yet_valid:
      return "certificate not yet valid";
    case PeerError::unknown_ca:
      return "certificate from an unknown CA";
    case PeerError::wrong_identity:
      return "wrong identity";
    case PeerError::no_identity:
      return "certificate without a SPIFFE identity";
    case PeerError::bad_certificate:
      return "invalid certificate";
    case PeerError::protocol:
      return "TLS handshake failed";
    case PeerError::connection_lost:
      return "connection lost during the TLS handshake (reset, EOF or timeout)";
  }
  return "?";
}

}  // namespace

std::string_view to_string(PeerError e) {
  switch (e) {
    case PeerError::none:
      return "none";
    case PeerError::no_certificate:
      return "no-certificate";
    case PeerError::expired:
      return "expired";
    case PeerError::not_yet_valid:
      return "not-yet-valid";
    case PeerError::unknown_ca:
      return "unknown-ca";
    case PeerError::wrong_identity:
      return "wrong-identity";
    case PeerError::no_identity:
      return "no-identity";
    case PeerError::bad_certificate:
      return "bad-certificate";
    case PeerError::protocol:
      return "protocol";
    case PeerError::connection_lost:
      return "connection-lost";
  }
  return "?";
}

std::string_view to_string(Side s) { return s == Side::server ? "server" : "client"; }

std::uint64_t TlsStats::refused_total(Side s) const {
  std::uint64_t n = 0;
  for (std::size_t e = 0; e < kPeerErrorCount; ++e)
    if (static_cast<PeerError>(e) != PeerError::connection_lost)  // the peer refused nothing
      n += refused[static_cast<int>(s)][e].load(std::memory_order_relaxed);
  return n;
}

boost::json::object TlsStats::to_json() const {
  boost::json::object out;
  for (Side s : {Side::server, Side::client}) {
    boost::json::object refusals;
    for (std::size_t e = 1; e < kPeerErrorCount; ++e)
      refusals[to_string(static_cast<PeerError>(e))] =
          refused[static_cast<int>(s)][e].load(std::memory_order_relaxed);
    out[to_string(s)] = boost::json::object{
        {"handshakes", handshakes[static_cast<int>(s)].load(std::memory_order_relaxed)}, {"refused", refusals}};
  }
  return out;
}

std::shared_ptr<const TlsContexts> TlsContexts::make(std::shared_ptr<const WorkloadCertificate> certificate,
                                                     std::shared_ptr<const TrustBundle> bundle,
                                                     std::string trust_domain, std::shared_ptr<TlsStats> stats) {
  if (!certificate || !bundle) throw IdentityError("TLS contexts need a certificate and a trust bundle");
  std::shared_ptr<TlsContexts> c(new TlsContexts());
  c->server_ = build_context(true, *certificate, *bundle, trust_domain);
  c->client_ = build_context(false, *certificate, *bundle, trust_domain);
  c->certificate_ = std::move(certificate);
  c->bundle_ = std::move(bundle);
  c->stats_ = stats ? std::move(stats) : std::make_shared<TlsStats>();
  return c;
}

bool expect_peer_identity(SSL* ssl, const SpiffeId& expected) {
  PeerNote* note = peer_note(ssl, true);
  if (!note) return false;
  note->expected = expected;
  return true;
}

std::optional<SpiffeId> peer_identity(SSL* ssl) {
  if (!ssl || !SSL_is_init_finished(ssl)) return std::nullopt;
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (!cert || SSL_get_verify_result(ssl) != X509_V_OK) return std::nullopt;
  return spiffe_id_of(cert);
}

PeerError check_peer_identity(SSL* ssl, const SpiffeId& expected) {
  const auto id = peer_identity(ssl);
  if (!id) return PeerError::no_identity;
  if (*id != expected) {
    record(ssl, PeerError::wrong_identity, "presented " + id->uri() + ", expected " + expected.uri());
    return PeerError::wrong_identity;
  }
  return PeerError::none;
}

PeerError handshake_failure(SSL* ssl, unsigned long openssl_error) {
  if (ssl) {
    if (const PeerNote* note = peer_note(ssl, false); note && note->error != PeerError::none) return note->error;
    if (const long v = SSL_get_verify_result(ssl); v != X509_V_OK) return classify_verify_error(v);
  }
  if (openssl_error == 0) return PeerError::connection_lost;
  if (ERR_GET_LIB(openssl_error) == ERR_LIB_SSL) {
    const int reason = ERR_GET_REASON(openssl_error);
    if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) return PeerError::no_certificate;
    if (ssl && reason != 0) {
      const char* text = ERR_reason_error_string(openssl_error);
      // What OpenSSL says of a first record that is no TLS record at all ("wrong version number"
      // for HTTP/2's "PRI * HTTP/2.0" preface) is obscure in a log: say what it usually means.
      const bool not_tls = reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_HTTP_REQUEST ||
                           reason == SSL_R_HTTPS_PROXY_REQUEST;
      record(ssl, PeerError::protocol,
             std::string(not_tls ? "not TLS, a plaintext client? " : "") + (text ? text : ""));
    }
  }
  return PeerError::protocol;
}

std::string refusal_detail(SSL* ssl) {
  const PeerNote* note = ssl ? peer_note(ssl, false) : nullptr;
  return note ? note->detail : std::string();
}

void report_refusal(TlsStats& stats, Side side, PeerError error, std::string_view peer, SSL* ssl) {
  stats.refused[static_cast<int>(side)][static_cast<int>(error)].fetch_add(1, std::memory_order_relaxed);
  const auto suppressed = throttle(side, error).admit(proxy::LogThrottle::Clock::now());
  if (!suppressed) return;
  const std::string_view other = side == Side::server ? "client" : "server";
  const std::string more = *suppressed ? fmt::format(" [{} more like it since the last line]", *suppressed) : "";
  if (error == PeerError::connection_lost) {
    // Routine (a restarting node, a scanner, a client giving up): worth a line, not a warning.
    spdlog::info("tls {}: lost {} {}: {}{}", to_string(side), other, peer, describe_error(error, side), more);
    return;
  }
  const std::string detail = refusal_detail(ssl);
  spdlog::warn("tls {}: refused {} {}: {}{}{}{}{}", to_string(side), other, peer, describe_error(error, side),
               detail.empty() ? "" : " (", detail, detail.empty() ? "" : ")", more);
}

void report_handshake(TlsStats& stats, Side side) {
  stats.handshakes[static_cast<int>(side)].fetch_add(1, std::memory_order_relaxed);
}

bool negotiated_h2(SSL* ssl) {
  const unsigned char* proto = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(ssl, &proto, &len);
  return len == 2 && proto[0] == 'h' && proto[1] == '2';
}

}  // namespace dsproxy::identity
