#pragma once
// The TLS side of an identity: for one local workload identity, an immutable pair of SSL_CTX
// objects, and how a peer is verified.
//
//   server(): TLS 1.3 only; presents the workload's certificate; ALPN selects "h2" (a client
//             that does not offer h2 fails the handshake: no_application_protocol); requires a
//             client certificate and verifies it against the trust bundle; the client's leaf must
//             carry a SPIFFE id of our trust domain (read with peer_identity() for authz).
//   client(): TLS 1.3 only; presents the workload's certificate (the source identity); offers
//             ALPN "h2"; verifies the server's chain against the trust bundle; with
//             expect_peer_identity() the handshake itself fails unless the server presents the
//             expected SPIFFE id, so no byte of the tunnel is sent to the wrong workload.
//   No session tickets or session cache on either side: a resumed session would skip the
//   certificate checks against the *current* bundle, and the connection pool makes handshakes
//   rare anyway.
//
// Rotation: a new certificate or bundle gives new TlsContexts (IdentityManager publishes them
// atomically). An SSL holds its own reference to the SSL_CTX it was made from (SSL_new ups its
// count), so connections established with the old pair keep working until they close.
//
// Use from Asio (the hbone helper): SSL* ssl = SSL_new(ctx->client().get()); then
// expect_peer_identity(ssl, destination_id); then ssl::stream<tcp::socket>(std::move(sock), ssl).
// After a failed handshake, handshake_failure(ssl, ec) says why; report_refusal() counts and
// logs it. Nothing here blocks or throws on the data path.

#include <array>
#include <atomic>
#include <boost/json/object.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "identity/openssl_handles.hpp"
#include "identity/spiffe_id.hpp"
#include "identity/trust_bundle.hpp"
#include "identity/workload_certificate.hpp"

namespace dsproxy::identity {

inline constexpr std::string_view kAlpnH2 = "h2";

// Why a peer was refused. Each has its own counter and log wording.
enum class PeerError : std::uint8_t {
  none = 0,
  no_certificate,   // the client sent no certificate (server side)
  expired,          // a certificate of the chain is past notAfter
  not_yet_valid,    // ... or before notBefore
  unknown_ca,       // the chain does not lead to a root of the trust bundle
  wrong_identity,   // valid chain, but not the SPIFFE id expected (or another trust domain)
  no_identity,      // valid chain, but the leaf carries no (or no single, valid) SPIFFE URI SAN
  bad_certificate,  // any other verification failure (bad signature, not a CA, wrong usage, ...)
  protocol,         // not a certificate problem: TLS < 1.3, no h2 in ALPN, plaintext, ...
  // Not a refusal by either side: the transport ended the handshake (reset, EOF, our handshake
  // timeout). A node restarting or a port scanner is no protocol error; kept apart so that the
  // `protocol` count means a peer that spoke TLS badly.
  connection_lost,
};
inline constexpr std::size_t kPeerErrorCount = 10;
std::string_view to_string(PeerError e);  // "expired", "not-yet-valid", "unknown-ca", ...

enum class Side : std::uint8_t { server = 0, client = 1 };
std::string_view to_string(Side s);

// Handshake outcomes, per side; shared by all workers (relaxed atomics).
struct TlsStats {
  std::array<std::atomic<std::uint64_t>, 2> handshakes{};  // successful, by Side
  std::array<std::array<std::atomic<std::uint64_t>, kPeerErrorCount>, 2> refused{};  // by Side, PeerError
  std::uint64_t refused_total(Side s) const;
  // {"server": {"handshakes": n, "refused": {"expired": n, ...}}, "client": {...}}
  boost::json::object to_json() const;
};

class TlsContexts {
 public:
  // Throws IdentityError if OpenSSL refuses the certificate/key (e.g. a key that is not the
  // leaf's) — on the identity thread, never on the data path.
  static std::shared_ptr<const TlsContexts> make(std::shared_ptr<const WorkloadCertificate> certificate,
                                                 std::shared_ptr<const TrustBundle> bundle, std::string trust_domain,
                                                 std::shared_ptr<TlsStats> stats);

  const SpiffeId& identity() const { return certificate_->id(); }
  const std::shared_ptr<SSL_CTX>& server() const { return server_; }
  const std::shared_ptr<SSL_CTX>& client() const { return client_; }
  const WorkloadCertificate& certificate() const { return *certificate_; }
  const TrustBundle& bundle() const { return *bundle_; }
  TlsStats& stats() const { return *stats_; }

 private:
  TlsContexts() = default;
  std::shared_ptr<const WorkloadCertificate> certificate_;
  std::shared_ptr<const TrustBundle> bundle_;
  std::shared_ptr<TlsStats> stats_;
  std::shared_ptr<SSL_CTX> server_, client_;
};

// Client side, before the handshake: the handshake fails (PeerError::wrong_identity) unless the
// server's verified leaf carries exactly `expected`. false only if OpenSSL cannot allocate.
bool expect_peer_identity(SSL* ssl, const SpiffeId& expected);

// After a successful handshake: the SPIFFE id of the peer's verified leaf. nullopt if the
// handshake is not complete, the chain was not verified, or the leaf has no valid SPIFFE id.
std::optional<SpiffeId> peer_identity(SSL* ssl);

// After a successful handshake: none if peer_identity(ssl) == expected, else wrong_identity or
// no_identity (for a client that did not use expect_peer_identity, and for tests).
PeerError check_peer_identity(SSL* ssl, const SpiffeId& expected);

// After a failed handshake: why. `openssl_error` is the packed OpenSSL error the failure
// reported (Asio: ec.value() when ec.category() is asio's ssl category); 0 when the failure was
// not OpenSSL's (Asio: any other category — a reset, EOF (stream_truncated), a closed socket),
// which is connection_lost unless the verification had already refused the peer.
PeerError handshake_failure(SSL* ssl, unsigned long openssl_error);

// A one-line description of what the peer presented and why it was refused ("presented
// spiffe://cluster.local/ns/a/sa/b, notAfter 2026-12-07T10:00:00Z"), from what the verification
// recorded on `ssl`; "" if nothing was recorded. Public certificate facts only.
std::string refusal_detail(SSL* ssl);

// Counts one refused peer (connection_lost: one handshake the transport ended, not counted in
// refused_total) and logs it — "tls server: refused client 10.1.0.5:40112: expired
// certificate (presented ..., notAfter ...)" — at most once per second per (side, reason), with
// the number held back since. Any thread, lock-free.
void report_refusal(TlsStats& stats, Side side, PeerError error, std::string_view peer, SSL* ssl);
// Counts one successful handshake.
void report_handshake(TlsStats& stats, Side side);

// The negotiated ALPN protocol is h2 (the client side checks it; the server only ever selects h2).
bool negotiated_h2(SSL* ssl);

}  // namespace dsproxy::identity
