#include "hbone/tls_stream.hpp"

#include <cstring>

namespace dsproxy::hbone {

std::unique_ptr<SslStream> make_tls_stream(boost::asio::ip::tcp::socket socket, const std::shared_ptr<SSL_CTX>& context) {
  // From an SSL of our own rather than through asio::ssl::context, which would adopt the SSL_CTX
  // and, when destroyed, free it and clear callbacks it did not install.
  SSL* ssl = SSL_new(context.get());
  if (!ssl) return nullptr;
  return std::make_unique<SslStream>(std::move(socket), ssl);
}

bool negotiated_h2(SSL* ssl) {
  const unsigned char* proto = nullptr;
  unsigned int length = 0;
  SSL_get0_alpn_selected(ssl, &proto, &length);
  return length == 2 && std::memcmp(proto, "h2", 2) == 0;
}

}  // namespace dsproxy::hbone
