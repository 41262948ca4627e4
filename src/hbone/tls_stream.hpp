#pragma once
// TLS for the HBONE sessions: OpenSSL over a TCP socket through a BIO of our own rather than
// Asio's ssl::stream, over an SSL_CTX someone else built (identity's TlsContexts); and the ALPN
// check.
//
// Why not asio::ssl::stream: it moves ciphertext through a BIO pair of 17 KiB, so every TLS
// record is its own send() and every recv() reads at most a record or so: 150-220 syscalls per
// MB, against 10-15 for the plaintext relay. Here OpenSSL writes its records into a growable
// buffer (TlsStream::output), which the session sends in one write per batch of HTTP/2 frames
// (up to ~256 KiB: sixteen records), and decrypts from whatever one recv() brought in (up to
// 256 KiB, see Session::on_readable), so a batch costs a syscall or two either way.

#include <openssl/ssl.h>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream_base.hpp>
#include <cstdint>
#include <memory>
#include <vector>

namespace dsproxy::hbone {

class TlsStream {
 public:
  using tcp = boost::asio::ip::tcp;
  using executor_type = boost::asio::any_io_executor;
  using HandshakeHandler = boost::asio::any_completion_handler<void(boost::system::error_code)>;

  // Adopts `ssl` (frees it).
  TlsStream(tcp::socket socket, SSL* ssl);
  ~TlsStream();
  // Movable: the state OpenSSL's BIO points at lives on the heap.
  TlsStream(TlsStream&&) noexcept;
  TlsStream& operator=(TlsStream&&) noexcept;

  SSL* native_handle() const;
  tcp::socket& lowest_layer();
  tcp::socket& next_layer() { return lowest_layer(); }
  executor_type get_executor();

  // The TLS handshake; completes with OpenSSL's error (asio's ssl category, ERR_get_error's
  // code, as asio::ssl::stream reports it) or the socket's. An alert OpenSSL produced for a
  // failed handshake is sent before the completion, so the peer learns why. Bytes the peer sent
  // after its last handshake message stay buffered for the session (has_input()).
  template <typename Token>
  auto async_handshake(boost::asio::ssl::stream_base::handshake_type type, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [this](auto handler, boost::asio::ssl::stream_base::handshake_type t) {
          start_handshake(t, HandshakeHandler(std::move(handler)));
        },
        token, type);
  }

  // ---- the session's data path (after the handshake); no exceptions, no blocking ----

  // Encrypts `n` bytes into output() (as records of up to 16 KiB). False: the connection is
  // unusable (OpenSSL's error queue is cleared).
  bool encrypt(const std::uint8_t* data, std::size_t n);
  // Ciphertext (records, alerts, key updates) waiting for the socket; the caller sends it and
  // clears it. Never shrinks, so a busy connection allocates once.
  std::vector<std::uint8_t>& output();

  enum class ReadResult { data, want_input, closed, error };
  // Hands `n` received bytes to OpenSSL. They are read in place by decrypt() until it answers
  // want_input; a caller that stops earlier calls keep_input() before the bytes go away.
  void feed(const std::uint8_t* data, std::size_t n);
  // Copies bytes fed but not yet decrypted into the stream's own storage.
  void keep_input();
  // Received bytes wait to be decrypted (fed, kept, or read ahead into OpenSSL's buffer).
  bool has_input() const;
  // Up to `capacity` bytes of plaintext into `out` (`n` set) while it returns data; want_input
  // once every byte fed is consumed (a record may be half in); closed on the peer's
  // close_notify; error on a bad record (the connection is unusable).
  ReadResult decrypt(std::uint8_t* out, std::size_t capacity, std::size_t& n);

  // Socket, SSL and buffers, on the heap: OpenSSL's BIO points at them (tls_stream.cpp).
  struct State;

 private:
  void start_handshake(boost::asio::ssl::stream_base::handshake_type type, HandshakeHandler handler);
  std::unique_ptr<State> state_;
};

// The SSL object takes its own reference on `context` (SSL_new), so a context rotated away
// later stays alive exactly as long as the connections that use it. nullptr if OpenSSL cannot
// allocate the SSL. `keep_record_buffers`: keep OpenSSL's two record buffers between records
// (our pooled client connections, busy) rather than free them whenever they drain (accepted
// connections, which any peer may leave idle).
std::unique_ptr<TlsStream> make_tls_stream(boost::asio::ip::tcp::socket socket, const std::shared_ptr<SSL_CTX>& context,
                                           bool keep_record_buffers);

// After the handshake: HBONE is HTTP/2 only, and a peer that did not agree on "h2" would not
// understand the preface.
bool negotiated_h2(SSL* ssl);

}  // namespace dsproxy::hbone
