#pragma once
// TLS plumbing the HBONE sessions share: an Asio TLS stream over an SSL_CTX someone else built
// (identity's TlsContexts), and the ALPN check.

#include <openssl/ssl.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <memory>

namespace dsproxy::hbone {

using SslStream = boost::asio::ssl::stream<boost::asio::ip::tcp::socket>;

// The SSL object takes its own reference on `context` (SSL_new), so a context rotated away
// later stays alive exactly as long as the connections that use it. nullptr if OpenSSL cannot
// allocate the SSL. `keep_record_buffers`: keep OpenSSL's two record buffers between records
// (our pooled client connections, busy) rather than free them whenever they drain (accepted
// connections, which any peer may leave idle).
std::unique_ptr<SslStream> make_tls_stream(boost::asio::ip::tcp::socket socket, const std::shared_ptr<SSL_CTX>& context,
                                           bool keep_record_buffers);

// After the handshake: HBONE is HTTP/2 only, and a peer that did not agree on "h2" would not
// understand the preface.
bool negotiated_h2(SSL* ssl);

}  // namespace dsproxy::hbone
