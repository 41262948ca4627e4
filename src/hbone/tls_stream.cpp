#include "hbone/tls_stream.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>

#include <algorithm>
#include <boost/asio/compose.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/write.hpp>
#include <cstring>

namespace dsproxy::hbone {

namespace asio = boost::asio;
using boost::system::error_code;

struct TlsStream::State {
  State(tcp::socket s, SSL* ssl_) : socket(std::move(s)), ssl(ssl_) {}
  ~State() {
    if (ssl) SSL_free(ssl);  // frees the BIO too
  }
  tcp::socket socket;
  SSL* ssl;
  // Received ciphertext OpenSSL has not read yet: the caller's buffer (feed) or `kept`.
  const std::uint8_t* in = nullptr;
  std::size_t in_len = 0;
  std::vector<std::uint8_t> kept;
  std::vector<std::uint8_t> out;  // ciphertext for the socket
  // `in` points into `kept` (anywhere: it may be partly consumed), so keeping it again must not
  // assign `kept` from itself.
  bool input_is_kept() const { return !kept.empty() && in >= kept.data() && in < kept.data() + kept.size(); }
  // With read-ahead, the handshake may have pulled the records after the peer's Finished (the
  // HTTP/2 preface, whatever came in the same segment) into OpenSSL's own buffer: they must be
  // decrypted before waiting for the socket. (SSL_has_pending cannot say so later: it is also
  // true for half a record, which needs the socket.)
  bool read_ahead_pending = false;
};

namespace {

// The BIO between OpenSSL and our buffers: writes append to State::out (never short, never
// blocking: the session bounds how much it encrypts per socket write), reads copy from the
// bytes fed and say "retry" when there are none.
TlsStream::State& state_of(BIO* bio) { return *static_cast<TlsStream::State*>(BIO_get_data(bio)); }

int bio_write(BIO* bio, const char* data, std::size_t n, std::size_t* written) {
  BIO_clear_retry_flags(bio);
  auto& out = state_of(bio).out;
  // No exception may unwind through OpenSSL's C frames: out of memory fails this write (and so
  // this connection) instead.
  try {
    out.insert(out.end(), reinterpret_cast<const std::uint8_t*>(data), reinterpret_cast<const std::uint8_t*>(data) + n);
  } catch (...) {
    return 0;
  }
  *written = n;
  return 1;
}

int bio_read(BIO* bio, char* data, std::size_t n, std::size_t* read) {
  BIO_clear_retry_flags(bio);
  auto& s = state_of(bio);
  if (s.in_len == 0) {
    BIO_set_retry_read(bio);
    *read = 0;
    return 0;
  }
  const std::size_t k = std::min(n, s.in_len);
  std::memcpy(data, s.in, k);
  s.in += k;
  s.in_len -= k;
  if (s.in_len == 0 && !s.kept.empty()) std::vector<std::uint8_t>().swap(s.kept);
  *read = k;
  return 1;
}

long bio_ctrl(BIO* bio, int cmd, long, void*) {
  switch (cmd) {
    case BIO_CTRL_FLUSH:  // the session flushes, after each batch
      return 1;
    case BIO_CTRL_PENDING:
      return static_cast<long>(state_of(bio).in_len);
    default:
      return 0;
  }
}

int bio_create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

BIO_METHOD* bio_method() {
  // Built once (thread-safe static), never freed: OpenSSL keeps a pointer in every BIO.
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "dsproxy hbone");
    if (!m) return m;
    BIO_meth_set_write_ex(m, bio_write);
    BIO_meth_set_read_ex(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    return m;
  }();
  return method;
}

// What asio::ssl::stream would report for a failed SSL_do_handshake, so callers classify
// failures as before (identity::handshake_failure reads the OpenSSL code from the value).
error_code handshake_error(SSL* ssl, int rv) {
  const int kind = SSL_get_error(ssl, rv);
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (kind == SSL_ERROR_ZERO_RETURN) return asio::error::eof;
  if (code != 0) return error_code(static_cast<int>(code), asio::error::get_ssl_category());
  return asio::ssl::error::stream_truncated;
}

// The handshake as a composed operation: SSL_do_handshake, send what it wrote, read when it
// wants input, until done or failed (a failure's alert is sent first).
struct HandshakeOp {
  explicit HandshakeOp(TlsStream::State* state) : s(state) {}
  TlsStream::State* s;
  std::vector<std::uint8_t> buffer;  // recv target; leftovers are kept by the stream at the end
  enum class Phase { start, step, read, write } phase = Phase::start;
  bool done = false;
  error_code failure;

  template <typename Self>
  void operator()(Self& self, error_code ec = {}, std::size_t n = 0) {
    switch (phase) {
      case Phase::start:
        // Never complete inside the initiating call.
        phase = Phase::step;
        asio::post(s->socket.get_executor(), std::move(self));
        return;
      case Phase::read:
        if (ec) return finish(self, ec == asio::error::eof ? error_code(asio::ssl::error::stream_truncated) : ec);
        s->in = buffer.data();
        s->in_len = n;
        break;
      case Phase::write:
        s->out.clear();
        if (failure) return finish(self, failure);
        if (ec) return finish(self, ec);
        if (done) return finish(self, {});
        break;
      case Phase::step:
        break;
    }
    // SSL_get_error reads the thread's error queue first: a stale entry left by any other
    // OpenSSL user on this worker would turn "no input yet" into a failure.
    ERR_clear_error();
    const int rv = SSL_do_handshake(s->ssl);
    if (rv == 1) {
      done = true;
    } else if (SSL_get_error(s->ssl, rv) != SSL_ERROR_WANT_READ) {
      failure = handshake_error(s->ssl, rv);
    } else if (s->out.empty()) {
      phase = Phase::read;
      buffer.resize(17 * 1024);
      s->socket.async_read_some(asio::buffer(buffer), std::move(self));
      return;
    }
    if (s->out.empty()) return finish(self, failure);
    phase = Phase::write;
    asio::async_write(s->socket, asio::buffer(s->out), std::move(self));
  }

  template <typename Self>
  void finish(Self& self, error_code ec) {
    // What the peer sent after its Finished (the HTTP/2 preface, a ticket) is the session's.
    if (s->in_len > 0 && !s->input_is_kept()) s->kept.assign(s->in, s->in + s->in_len), s->in = s->kept.data();
    if (ec) s->in_len = 0;
    else s->read_ahead_pending = SSL_has_pending(s->ssl) == 1;
    self.complete(ec);
  }
};

}  // namespace

TlsStream::TlsStream(tcp::socket socket, SSL* ssl) : state_(std::make_unique<State>(std::move(socket), ssl)) {
  BIO_METHOD* method = bio_method();
  BIO* bio = method ? BIO_new(method) : nullptr;
  if (!bio) return;  // encrypt/decrypt/handshake then fail: SSL without a BIO
  BIO_set_data(bio, state_.get());
  SSL_set_bio(ssl, bio, bio);  // one reference, taken by the SSL for both directions
  // Reading from memory is cheap: let OpenSSL take as much as its record buffer holds per read.
  SSL_set_read_ahead(ssl, 1);
}

TlsStream::~TlsStream() = default;
TlsStream::TlsStream(TlsStream&&) noexcept = default;
TlsStream& TlsStream::operator=(TlsStream&&) noexcept = default;

SSL* TlsStream::native_handle() const { return state_->ssl; }
TlsStream::tcp::socket& TlsStream::lowest_layer() { return state_->socket; }
TlsStream::executor_type TlsStream::get_executor() { return state_->socket.get_executor(); }

void TlsStream::start_handshake(asio::ssl::stream_base::handshake_type type, HandshakeHandler handler) {
  if (type == asio::ssl::stream_base::client) SSL_set_connect_state(state_->ssl);
  else SSL_set_accept_state(state_->ssl);
  asio::async_compose<HandshakeHandler, void(error_code)>(HandshakeOp{state_.get()}, handler, state_->socket);
}

bool TlsStream::encrypt(const std::uint8_t* data, std::size_t n) {
  ERR_clear_error();  // see the handshake: SSL_get_error must see only this call's errors
  while (n > 0) {
    std::size_t written = 0;
    if (SSL_write_ex(state_->ssl, data, n, &written) != 1) {
      ERR_clear_error();
      return false;
    }
    data += written;
    n -= written;
  }
  return true;
}

std::vector<std::uint8_t>& TlsStream::output() { return state_->out; }

void TlsStream::feed(const std::uint8_t* data, std::size_t n) {
  // Only called once everything fed before has been consumed (or kept and consumed).
  state_->in = data;
  state_->in_len = n;
}

void TlsStream::keep_input() {
  auto& s = *state_;
  if (s.in_len == 0 || s.input_is_kept()) return;  // already there (perhaps partly consumed)
  s.kept.assign(s.in, s.in + s.in_len);
  s.in = s.kept.data();
}

bool TlsStream::has_input() const { return state_->in_len > 0 || state_->read_ahead_pending; }

TlsStream::ReadResult TlsStream::decrypt(std::uint8_t* out, std::size_t capacity, std::size_t& n) {
  n = 0;
  if (ERR_peek_error() != 0) ERR_clear_error();  // see the handshake
  const int rv = SSL_read_ex(state_->ssl, out, capacity, &n);
  if (rv == 1) return ReadResult::data;
  switch (SSL_get_error(state_->ssl, rv)) {
    case SSL_ERROR_WANT_READ:
      state_->read_ahead_pending = false;
      return ReadResult::want_input;
    case SSL_ERROR_ZERO_RETURN:
      return ReadResult::closed;
    default:
      ERR_clear_error();
      return ReadResult::error;
  }
}

std::unique_ptr<TlsStream> make_tls_stream(boost::asio::ip::tcp::socket socket, const std::shared_ptr<SSL_CTX>& context,
                                           bool keep_record_buffers) {
  // From an SSL of our own rather than through asio::ssl::context, which would adopt the SSL_CTX
  // and, when destroyed, free it and clear callbacks it did not install.
  SSL* ssl = SSL_new(context.get());
  if (!ssl) return nullptr;
  // SSL_MODE_RELEASE_BUFFERS frees OpenSSL's ~17 KiB read and write record buffers whenever
  // they drain: with the batched I/O here, about once per socket read or write batch. Our
  // pooled client connections are long-lived and busy, so there the buffers stay (34 KiB per
  // connection). An accepted connection comes from any peer and may sit idle for the idle
  // timeout: there the memory goes back while idle.
  if (keep_record_buffers) SSL_clear_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
  else SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
  auto stream = std::make_unique<TlsStream>(std::move(socket), ssl);
  if (!SSL_get_rbio(ssl)) return nullptr;
  return stream;
}

bool negotiated_h2(SSL* ssl) {
  const unsigned char* proto = nullptr;
  unsigned int length = 0;
  SSL_get0_alpn_selected(ssl, &proto, &length);
  return length == 2 && std::memcmp(proto, "h2", 2) == 0;
}

}  // namespace dsproxy::hbone
