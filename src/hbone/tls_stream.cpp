#include "hbone/tls_stream.hpp"

#include <cstring>

namespace dsproxy::hbone {

std::unique_ptr<SslStream> make_tls_stream(boost::asio::ip::tcp::socket socket, const std::shared_ptr<SSL_CTX>& context,
                                           bool keep_record_buffers) {
  // From an SSL of our own rather than through asio::ssl::context, which would adopt the SSL_CTX
  // and, when destroyed, free it and clear callbacks it did not install.
  SSL* ssl = SSL_new(context.get());
  if (!ssl) return nullptr;
  auto stream = std::make_unique<SslStream>(std::move(socket), ssl);
  // Asio turns SSL_MODE_RELEASE_BUFFERS on: OpenSSL then frees its ~17 KiB read and write record
  // buffers whenever they drain and allocates them again for the next record, i.e. a malloc/free
  // pair per TLS record on a bulk stream and several per tunnelled connection. Our pooled client
  // connections are long-lived and busy, so there the buffers stay (34 KiB per connection). An
  // accepted connection comes from any peer and may sit idle for the idle timeout: there the
  // memory goes back while idle.
  if (keep_record_buffers) SSL_clear_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
  return stream;
}

bool negotiated_h2(SSL* ssl) {
  const unsigned char* proto = nullptr;
  unsigned int length = 0;
  SSL_get0_alpn_selected(ssl, &proto, &length);
  return length == 2 && std::memcmp(proto, "h2", 2) == 0;
}

}  // namespace dsproxy::hbone
