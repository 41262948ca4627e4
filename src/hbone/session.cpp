#include "hbone/session.hpp"

#include <nghttp2/nghttp2.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <sys/socket.h>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstring>

#include "hbone/authority.hpp"
#include "proxy/log_text.hpp"
#include "proxy/log_throttle.hpp"

namespace dsproxy::hbone {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {
// One TLS read's worth; nghttp2 consumes it all per call.
constexpr std::size_t kReadChunk = 64 * 1024;
// Serialized frames per socket write: large enough for a few max-size TLS records, small
// enough that nghttp2 (not this buffer) holds whatever the socket cannot take yet.
constexpr std::size_t kWriteBatch = 256 * 1024;
// Request header limits: a CONNECT carries a handful of short headers.
constexpr std::size_t kMaxHeaderBytes = 16 * 1024;
constexpr std::size_t kMaxHeaders = 64;

// A peer can repeat a refused request or a violation once per stream or connection: one line a
// second per kind, saying how many were held back.
proxy::LogThrottle& refusal_log(SessionRefusal kind) {
  static proxy::LogThrottle throttles[2];
  return throttles[kind == SessionRefusal::bad_request ? 0 : 1];
}
std::string held_back(std::uint64_t n) {
  return n ? " [" + std::to_string(n) + " more like it since the last line]" : std::string();
}
// Peer-supplied text in a log line (a method, an :authority) and a GOAWAY's debug text: nghttp2
// refuses CR/LF in header fields today, but this log's safety should not rest on another
// library's validation rules, so the text is escaped and capped like every peer string.
std::string clip(std::string_view s) { return proxy::log_text(s); }

nghttp2_nv make_nv(const std::string& name, const std::string& value) {
  return nghttp2_nv{reinterpret_cast<std::uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<std::uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
                    NGHTTP2_NV_FLAG_NONE};
}
}  // namespace

const std::string* find_header(const Headers& headers, std::string_view name) {
  for (const auto& h : headers)
    if (h.name == name) return &h.value;
  return nullptr;
}

// ---- IncomingRequest ----

const ConnectionInfo& IncomingRequest::connection() const { return session_->info_; }
bool IncomingRequest::cancelled() const { return stream_->closed(); }

std::shared_ptr<Stream> IncomingRequest::accept(const Headers& headers) {
  if (answered_ || stream_->closed()) return nullptr;
  answered_ = true;
  if (!session_->submit_response(*stream_, 200, headers, true)) return nullptr;
  return stream_;
}

void IncomingRequest::reject(int status) {
  if (answered_ || stream_->closed()) return;
  answered_ = true;
  session_->submit_response(*stream_, status, {}, false);
  // The answer ends our side only, and nobody will read this stream: DATA the peer goes on
  // sending is dropped (its connection credit returned, its stream window never), so a peer
  // cannot park up to a stream window of memory on each refused stream. (RST_STREAM here would
  // overtake the answer: nghttp2 sends it before queued HEADERS.)
  stream_->discard_incoming();
  session_->update_idle();
}

// ---- nghttp2 callbacks ----

struct Session::Callbacks {
  static Session& self(void* user_data) { return *static_cast<Session*>(user_data); }

  static int on_begin_headers(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
    auto& s = self(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST || s.role_ != Role::server)
      return 0;
    auto id = frame->hd.stream_id;
    auto stream = std::make_shared<Stream>(s.shared_from_this(), id);
    auto request = std::make_shared<IncomingRequest>();
    request->session_ = s.shared_from_this();
    request->stream_ = stream;
    s.streams_[id] = std::move(stream);
    s.requests_[id] = std::move(request);
    s.update_idle();
    return 0;
  }

  static int on_header(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name, std::size_t namelen,
                       const std::uint8_t* value, std::size_t valuelen, std::uint8_t, void* user_data) {
    auto& s = self(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    std::string_view n(reinterpret_cast<const char*>(name), namelen);
    std::string_view v(reinterpret_cast<const char*>(value), valuelen);
    auto id = frame->hd.stream_id;
    if (s.role_ == Role::server && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      auto it = s.requests_.find(id);
      if (it == s.requests_.end()) return 0;
      auto& r = *it->second;
      r.header_bytes_ += namelen + valuelen + 32;
      // Too many or too large headers reset this stream only (not the connection).
      if (r.header_bytes_ > kMaxHeaderBytes || r.headers_.size() >= kMaxHeaders)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
      if (n == ":method") r.method_ = v;
      else if (n == ":authority") r.authority_ = v;
      else if (n == ":scheme") r.scheme_ = v;
      else if (n == ":path") r.path_ = v;
      else if (n == ":protocol") r.protocol_ = v;
      else r.headers_.push_back({std::string(n), std::string(v)});
    } else if (s.role_ == Role::client && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
      auto it = s.opens_.find(id);
      if (it == s.opens_.end()) return 0;
      if (n == ":status") {
        int status = 0;
        for (char c : v) status = (c >= '0' && c <= '9') ? status * 10 + (c - '0') : -1000;
        it->second.status = status > 0 ? status : 0;
      }
    }
    return 0;
  }

  static int on_frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
    auto& s = self(user_data);
    auto id = frame->hd.stream_id;
    switch (frame->hd.type) {
      case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && !s.settings_received_) {
          s.settings_received_ = true;
          s.handshake_timer_.cancel();
          s.notify();
        }
        return 0;
      case NGHTTP2_GOAWAY:
        // The peer's GOAWAY stops new streams of ours, never our idle timeout: a peer must not
        // switch that off by saying it is going away and then keeping the connection.
        s.goaway_received_ = true;
        s.update_idle();
        s.notify();
        return 0;
      case NGHTTP2_HEADERS:
        if (s.role_ == Role::server && frame->headers.cat == NGHTTP2_HCAT_REQUEST) s.dispatch_request(id);
        if (s.role_ == Role::client && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) s.on_response(id);
        break;
      case NGHTTP2_DATA:
        break;
      default:
        return 0;
    }
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
      auto it = s.streams_.find(id);
      if (it != s.streams_.end()) it->second->on_remote_end();
    }
    return 0;
  }

  static int on_data_chunk(nghttp2_session*, std::uint8_t, std::int32_t id, const std::uint8_t* data, std::size_t len,
                           void* user_data) {
    auto& s = self(user_data);
    auto it = s.streams_.find(id);
    if (it == s.streams_.end() || it->second->closed() || it->second->discarding()) {
      // Not ours to relay (answered with 400/401/503, or being reset): the bytes are dropped and
      // the connection's credit given straight back.
      s.connection_credit_ += len;
      return 0;
    }
    auto& stream = *it->second;
    s.buffered_ += len;
    // The connection's credit comes back at once while the connection buffers little, so a
    // stream whose reader stalls holds only its own window, never the others' share of the
    // connection window; past the limit, credit waits for readers, bounding memory.
    if (s.buffered_ <= s.options_.connection_buffer_limit) s.connection_credit_ += len;
    else stream.connection_debt_ += len;
    stream.on_data(data, len);
    return 0;
  }

  static int on_frame_send(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
    // Every connection error nghttp2 detects (and the bad preface we end ourselves) leaves as a
    // GOAWAY with an error code; its debug data is nghttp2's reason.
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR)
      self(user_data).report_violation(
          frame->goaway.error_code,
          std::string_view(reinterpret_cast<const char*>(frame->goaway.opaque_data), frame->goaway.opaque_data_len));
    return 0;
  }

  static int on_stream_close(nghttp2_session*, std::int32_t id, std::uint32_t code, void* user_data) {
    self(user_data).on_stream_closed(id, code);
    return 0;
  }

  static ssize_t read_length(nghttp2_session*, std::uint8_t, std::int32_t, std::int32_t session_window,
                             std::int32_t stream_window, std::uint32_t remote_max_frame, void* user_data) {
    // Larger DATA frames than nghttp2's default 16 KiB when the peer allows: fewer frame headers
    // and callbacks per byte on bulk streams.
    auto& s = self(user_data);
    std::int64_t n = std::min<std::int64_t>({session_window, stream_window, remote_max_frame,
                                             static_cast<std::int64_t>(s.options_.max_frame_size), 256 * 1024});
    return static_cast<ssize_t>(std::max<std::int64_t>(n, 1));
  }

  static ssize_t data_read(nghttp2_session*, std::int32_t, std::uint8_t*, std::size_t length,
                           std::uint32_t* data_flags, nghttp2_data_source* source, void*) {
    return static_cast<Stream*>(source->ptr)->read_for_send(length, data_flags);
  }

  // A DATA frame read_for_send flagged NO_COPY, sent now (inside nghttp2_session_mem_send, after
  // every frame before it was handed to do_write): header, payload, padding into the batch.
  static int send_data(nghttp2_session*, nghttp2_frame* frame, const std::uint8_t* framehd, std::size_t length,
                       nghttp2_data_source* source, void* user_data) {
    auto& out = self(user_data).out_;
    out.insert(out.end(), framehd, framehd + 9);
    const std::size_t padlen = frame->data.padlen;
    if (padlen > 0) out.push_back(static_cast<std::uint8_t>(padlen - 1));
    static_cast<Stream*>(source->ptr)->take_for_send(out, length);
    if (padlen > 1) out.insert(out.end(), padlen - 1, 0);
    // Unlike frames nghttp2 serialises itself, these do not return from mem_send one by one:
    // pausing keeps the batch near kWriteBatch when many streams have data.
    return out.size() >= kWriteBatch ? NGHTTP2_ERR_PAUSE : 0;
  }
};

// ---- Session ----

Session::Session(std::unique_ptr<TlsStream> io, ConnectionInfo info, const SessionOptions& options, Role role,
                 RequestHandler handler)
    : io_(std::move(io)),
      executor_(io_->get_executor()),
      info_(std::move(info)),
      options_(options),
      role_(role),
      handler_(std::move(handler)),
      handshake_timer_(executor_),
      idle_timer_(executor_) {}

std::shared_ptr<Session> Session::make_server(std::unique_ptr<TlsStream> io, ConnectionInfo info,
                                              const SessionOptions& options, RequestHandler handler) {
  auto s = std::shared_ptr<Session>(new Session(std::move(io), std::move(info), options, Role::server, std::move(handler)));
  s->init();
  return s;
}

std::shared_ptr<Session> Session::make_client(std::unique_ptr<TlsStream> io, ConnectionInfo info,
                                              const SessionOptions& options) {
  auto s = std::shared_ptr<Session>(new Session(std::move(io), std::move(info), options, Role::client, {}));
  s->init();
  return s;
}

Session::~Session() {
  if (h2_) nghttp2_session_del(h2_);
}

void Session::init() {
  nghttp2_session_callbacks* cbs = nullptr;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, &Callbacks::on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, &Callbacks::on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, &Callbacks::on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, &Callbacks::on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &Callbacks::on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, &Callbacks::on_frame_send);
  nghttp2_session_callbacks_set_data_source_read_length_callback(cbs, &Callbacks::read_length);
  nghttp2_session_callbacks_set_send_data_callback(cbs, &Callbacks::send_data);
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  // Window credit is returned by hand, as the relay drains each stream (see on_data_chunk).
  nghttp2_option_set_no_auto_window_update(opt, 1);
  // Until the peer's SETTINGS arrive, assume its limit is ours rather than unlimited.
  nghttp2_option_set_peer_max_concurrent_streams(opt, options_.max_concurrent_streams);
  if (role_ == Role::server) nghttp2_session_server_new2(&h2_, cbs, this, opt);
  else nghttp2_session_client_new2(&h2_, cbs, this, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);

  std::vector<nghttp2_settings_entry> settings{
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, options_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, options_.stream_window},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, options_.max_frame_size},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 64 * 1024},
  };
  if (role_ == Role::client) settings.push_back({NGHTTP2_SETTINGS_ENABLE_PUSH, 0});
  nghttp2_submit_settings(h2_, NGHTTP2_FLAG_NONE, settings.data(), settings.size());
  nghttp2_session_set_local_window_size(h2_, NGHTTP2_FLAG_NONE, 0, static_cast<std::int32_t>(options_.connection_window));
}

void Session::start() {
  if (started_) return;
  started_ = true;
  // Frames are small and latency matters (a WINDOW_UPDATE or a 200 held back by Nagle waits
  // for the peer's delayed ACK); writes are already batched per turn of the loop.
  error_code ignored;
  io_->lowest_layer().set_option(tcp::no_delay(true), ignored);
  handshake_timer_.expires_after(options_.handshake_timeout);
  handshake_timer_.async_wait([self = shared_from_this()](error_code ec) {
    if (!ec && !self->settings_received_ && !self->closed_) self->fail("no HTTP/2 SETTINGS in time");
  });
  do_read();
  do_write();
  update_idle();
}

void Session::update_idle() {
  if (role_ != Role::server || options_.idle_timeout.count() <= 0 || closed_ || goaway_sent_ || !started_) return;
  // Refused streams wait only for the peer's END_STREAM (their DATA is dropped): they hold
  // nothing of ours, and a peer must not keep a connection busy with them.
  const bool idle = std::none_of(streams_.begin(), streams_.end(),
                                 [](const auto& entry) { return !entry.second->discarding(); });
  if (!idle) {
    if (idle_armed_) {
      idle_armed_ = false;
      ++idle_generation_;
      idle_timer_.cancel();
    }
    return;
  }
  if (idle_armed_) return;
  idle_armed_ = true;
  idle_timer_.expires_after(options_.idle_timeout);
  idle_timer_.async_wait([weak = weak_from_this(), generation = ++idle_generation_](error_code ec) {
    auto self = weak.lock();
    if (ec || !self || !self->idle_armed_ || self->idle_generation_ != generation) return;
    self->idle_armed_ = false;
    self->idle_expired();
  });
}

void Session::idle_expired() {
  if (closed_) return;
  spdlog::debug("hbone: closing connection from {}: no stream for {} ms", info_.remote.address().to_string(),
                options_.idle_timeout.count());
  stats_.idle_timeout = true;
  // GOAWAY: the transport closes once it is written (no stream left to wait for). A peer that
  // does not read it, or keeps refused streams open, gets the handshake timeout, then the socket
  // is closed under it.
  shutdown();
  if (closed_) return;
  idle_timer_.expires_after(options_.handshake_timeout);
  idle_timer_.async_wait([weak = weak_from_this(), generation = ++idle_generation_](error_code ec) {
    auto self = weak.lock();
    if (ec || !self || self->idle_generation_ != generation) return;
    self->fail("GOAWAY not completed in time");
  });
}

void Session::notify() {
  if (!observer_) return;
  asio::post(executor_, [self = shared_from_this()] {
    if (self->observer_) self->observer_();
  });
}

// While a write is in flight, what OpenSSL writes by itself when reading (KeyUpdate answers a
// peer may ask for with every record) piles up unsent; a peer that never reads could grow it
// without bound. Past this, reading stops until the write completes (which reads again).
constexpr std::size_t kMaxUnsentWhileWriting = 64 * 1024;

void Session::do_read() {
  if (closed_ || reading_) return;
  if (writing_ && io_->output().size() > kMaxUnsentWhileWriting) return;
  reading_ = true;
  // Bytes the handshake (or an earlier turn that stopped early) left with the TLS stream come
  // first; otherwise wait for the socket, then recv (on_readable): no speculative recv that
  // mostly finds nothing.
  if (io_->has_input()) {
    asio::post(executor_, [self = shared_from_this()] { self->on_readable({}); });
    return;
  }
  io_->lowest_layer().async_wait(tcp::socket::wait_read,
                                 [self = shared_from_this()](error_code ec) { self->on_readable(ec); });
}

namespace {
// One worker thread's receive buffers, used only between a recv and the end of its processing,
// which never runs nested (on_readable is only ever a completion handler): 256 KiB of
// ciphertext per recv (several TLS records, so one syscall per batch the peer wrote), 64 KiB of
// plaintext per nghttp2_session_mem_recv. Per thread rather than per connection: an idle
// connection holds none of it.
struct ReceiveScratch {
  static constexpr std::size_t kCipher = 256 * 1024;
  std::unique_ptr<std::uint8_t[]> cipher{new std::uint8_t[kCipher]};
  std::unique_ptr<std::uint8_t[]> plain{new std::uint8_t[kReadChunk]};
  bool busy = false;
};
}  // namespace

void Session::on_readable(error_code ec) {
  reading_ = false;
  if (closed_) return;
  if (ec) {
    close_transport();
    return;
  }
  thread_local ReceiveScratch shared_scratch;
  std::unique_ptr<ReceiveScratch> own;  // only if a handler ever nests (it should not)
  ReceiveScratch* scratch = &shared_scratch;
  if (scratch->busy) {
    own = std::make_unique<ReceiveScratch>();
    scratch = own.get();
  }
  scratch->busy = true;
  const int fd = io_->lowest_layer().native_handle();
  bool drained = false;  // the last recv found the socket's queue shorter than the buffer
  bool eof = false;
  // A few recvs per turn while the peer keeps the socket full, then back to the event loop so
  // one busy connection does not starve the worker's others.
  for (int turn = 0; turn < 4 && !closed_ && !drained && !eof; ++turn) {
    if (writing_ && io_->output().size() > kMaxUnsentWhileWriting) break;  // see do_read
    if (!io_->has_input()) {
      const ssize_t n = ::recv(fd, scratch->cipher.get(), ReceiveScratch::kCipher, MSG_DONTWAIT);
      if (n == 0) {
        eof = true;  // the peer closed TCP (without close_notify): every stream ends reset
        break;
      }
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
        eof = true;
        break;
      }
      drained = static_cast<std::size_t>(n) < ReceiveScratch::kCipher;
      io_->feed(scratch->cipher.get(), static_cast<std::size_t>(n));
    }
    // Decrypt everything fed, handing nghttp2 up to kReadChunk at a time.
    bool input_done = false;
    while (!input_done && !closed_) {
      std::size_t filled = 0;
      TlsStream::ReadResult result = TlsStream::ReadResult::data;
      while (filled < kReadChunk) {
        std::size_t n = 0;
        result = io_->decrypt(scratch->plain.get() + filled, kReadChunk - filled, n);
        if (result != TlsStream::ReadResult::data) break;
        filled += n;
      }
      if (filled > 0) {
        in_nghttp2_ = true;
        auto rv = nghttp2_session_mem_recv(h2_, scratch->plain.get(), filled);
        in_nghttp2_ = false;
        if (rv < 0) {
          // A protocol violation nghttp2 could not answer by itself (a bad preface, a flood):
          // end this connection with GOAWAY, never more than this connection.
          violation_ = nghttp2_strerror(static_cast<int>(rv));
          nghttp2_session_terminate_session(h2_, NGHTTP2_PROTOCOL_ERROR);
          io_->keep_input();
          scratch->busy = false;
          do_write();
          return;
        }
      }
      if (result == TlsStream::ReadResult::want_input) input_done = true;
      else if (result != TlsStream::ReadResult::data) {
        // close_notify, or a record that does not decrypt: the connection is over.
        eof = true;
        break;
      }
    }
    if (closed_ || !nghttp2_session_want_read(h2_)) break;
  }
  io_->keep_input();
  scratch->busy = false;
  if (closed_) return;
  if (eof) {
    close_transport();
    return;
  }
  do_write();
  if (!closed_ && nghttp2_session_want_read(h2_)) do_read();
}

void Session::flush_credits() {
  for (auto [id, n] : stream_credits_) nghttp2_session_consume_stream(h2_, id, n);
  stream_credits_.clear();
  if (connection_credit_) {
    nghttp2_session_consume_connection(h2_, connection_credit_);
    connection_credit_ = 0;
  }
}

void Session::do_write() {
  if (closed_ || writing_ || in_nghttp2_) return;
  flush_credits();
  out_.clear();
  in_nghttp2_ = true;
  while (out_.size() < kWriteBatch) {
    const std::uint8_t* data = nullptr;
    auto n = nghttp2_session_mem_send(h2_, &data);
    if (n < 0) {
      in_nghttp2_ = false;
      fail(nghttp2_strerror(static_cast<int>(n)));
      return;
    }
    if (n == 0) break;
    out_.insert(out_.end(), data, data + n);
  }
  in_nghttp2_ = false;
  // The whole batch in one SSL_write: full-size records back to back in one buffer, one send.
  if (!out_.empty() && !io_->encrypt(out_.data(), out_.size())) {
    fail("TLS write failed");
    return;
  }
  if (io_->output().empty()) {
    if (!nghttp2_session_want_read(h2_) && !nghttp2_session_want_write(h2_)) close_transport();
    return;
  }
  // Swapped, so that OpenSSL can write (a KeyUpdate answer from SSL_read) while this is sent;
  // both keep their capacity.
  sending_.clear();
  std::swap(sending_, io_->output());
  writing_ = true;
  asio::async_write(io_->lowest_layer(), asio::buffer(sending_), [self = shared_from_this()](error_code ec, std::size_t) {
    self->writing_ = false;
    if (self->closed_) return;
    if (ec) {
      self->close_transport();
      return;
    }
    if (self->streams_.empty()) self->release_batch_buffers();
    self->do_write();
    // Reading may have paused for a GOAWAY in flight; nothing else stops it.
    if (!self->closed_ && nghttp2_session_want_read(self->h2_)) self->do_read();
  });
}

void Session::release_batch_buffers() {
  // A connection that carried a bulk transfer holds up to ~0.8 MiB of batch buffers (frames,
  // ciphertext being sent, ciphertext OpenSSL writes meanwhile); with no stream left they go
  // back. Buffers of short tunnels never grow past kKeep, so those connections keep theirs.
  constexpr std::size_t kKeep = 64 * 1024;
  if (sending_.capacity() > kKeep) std::vector<std::uint8_t>().swap(sending_);
  if (out_.capacity() > kKeep) std::vector<std::uint8_t>().swap(out_);
  auto& pending = io_->output();
  if (pending.empty() && pending.capacity() > kKeep) std::vector<std::uint8_t>().swap(pending);
}

void Session::fail(const char* why) {
  spdlog::debug("hbone: closing connection with {}: {}", info_.remote.address().to_string(), why);
  close_transport();
}

void Session::close() { close_transport(); }

void Session::shutdown() {
  if (closed_ || goaway_sent_) return;
  goaway_sent_ = true;
  nghttp2_submit_goaway(h2_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h2_), NGHTTP2_NO_ERROR,
                        nullptr, 0);
  do_write();
  notify();
}

void Session::close_transport() {
  if (closed_) return;
  closed_ = true;
  handshake_timer_.cancel();
  ++idle_generation_;
  idle_timer_.cancel();
  error_code ignored;
  io_->lowest_layer().shutdown(tcp::socket::shutdown_both, ignored);
  io_->lowest_layer().close(ignored);
  // Every stream still open ends as reset; the relays see connection_reset.
  auto streams = std::move(streams_);
  streams_.clear();
  // (on_closed gives each one's buffered bytes back.)
  for (auto& [id, stream] : streams) stream->on_closed(NGHTTP2_INTERNAL_ERROR, true);
  auto opens = std::move(opens_);
  opens_.clear();
  for (auto& [id, open] : opens)
    asio::post(executor_, [h = std::move(open.handler)]() mutable {
      std::move(h)(asio::error::connection_reset, 0, nullptr);
    });
  requests_.clear();
  held_.reset();
  notify();
}

void Session::dispatch_request(std::int32_t id) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  auto request = it->second;
  requests_.erase(it);
  ++stats_.streams_opened;
  // nghttp2's HTTP messaging checks already refused malformed requests (a CONNECT with
  // :scheme/:path, missing pseudo-headers); what is left that is not a plain CONNECT is a
  // well-formed request HBONE does not serve.
  std::optional<tcp::endpoint> target;
  if (request->method_ == "CONNECT" && request->protocol_.empty()) target = parse_authority(request->authority_);
  if (!target) {
    ++stats_.streams_refused;
    if (const auto held = refusal_log(SessionRefusal::bad_request).admit(proxy::LogThrottle::Clock::now())) {
      const std::string peer = info_.remote.address().to_string() + ":" + std::to_string(info_.remote.port());
      if (request->method_ != "CONNECT" || !request->protocol_.empty())
        spdlog::warn("hbone: refused a {} request from {} ({}): HBONE serves CONNECT only (400){}",
                     clip(request->method_), peer, info_.peer_identity, held_back(*held));
      else
        spdlog::warn("hbone: refused a CONNECT to '{}' from {} ({}): the authority is not <ip>:<port> (400){}",
                     clip(request->authority_), peer, info_.peer_identity, held_back(*held));
    }
    if (refusal_observer_) refusal_observer_(SessionRefusal::bad_request);
    request->reject(400);
    return;
  }
  request->target_ = *target;
  asio::post(executor_, [handler = handler_, request] {
    if (!request->cancelled()) handler(request);
  });
}

void Session::report_violation(std::uint32_t error_code, std::string_view reason) {
  if (stats_.protocol_error) return;  // one per connection
  stats_.protocol_error = true;
  if (reason.empty()) reason = violation_;
  if (const auto held = refusal_log(SessionRefusal::protocol_violation).admit(proxy::LogThrottle::Clock::now()))
    spdlog::warn("hbone: {} connection {} {}:{} ({}) closed: HTTP/2 protocol violation: {} (GOAWAY {}){}",
                 role_ == Role::server ? "server" : "client", role_ == Role::server ? "from" : "to",
                 info_.remote.address().to_string(), info_.remote.port(), info_.peer_identity,
                 reason.empty() ? "-" : clip(reason), nghttp2_http2_strerror(error_code), held_back(*held));
  if (refusal_observer_) refusal_observer_(SessionRefusal::protocol_violation);
}

void Session::on_response(std::int32_t id) {
  auto it = opens_.find(id);
  if (it == opens_.end()) return;
  auto open = std::move(it->second);
  opens_.erase(it);
  auto sit = streams_.find(id);
  if (sit == streams_.end()) return;
  auto stream = sit->second;
  if (open.status == 200) {
    asio::post(executor_, [h = std::move(open.handler), stream]() mutable { std::move(h)(error_code{}, 200, stream); });
    return;
  }
  // Refused: end our side too, so the stream closes cleanly, and drop whatever DATA the server
  // goes on sending (nobody will read this stream: kept, it would sit in the window's memory).
  stream->discard_incoming();
  stream->send_shutdown_ = true;
  if (stream->send_deferred_) {
    stream->send_deferred_ = false;
    nghttp2_session_resume_data(h2_, id);
  }
  asio::post(executor_, [h = std::move(open.handler), status = open.status]() mutable {
    std::move(h)(asio::error::connection_refused, status, nullptr);
  });
}

void Session::on_stream_closed(std::int32_t id, std::uint32_t code) {
  auto it = streams_.find(id);
  if (it == streams_.end()) return;
  auto stream = it->second;
  streams_.erase(it);
  requests_.erase(id);
  if (auto oit = opens_.find(id); oit != opens_.end()) {
    auto ec = code == NGHTTP2_REFUSED_STREAM ? asio::error::try_again : asio::error::connection_reset;
    asio::post(executor_, [h = std::move(oit->second.handler), ec]() mutable { std::move(h)(ec, 0, nullptr); });
    opens_.erase(oit);
  }
  stream->on_closed(code, code != 0 && !stream->local_reset_);
  update_idle();
  notify();
}

void Session::stream_consumed(Stream& stream, std::size_t n) {
  if (!stream.closed_) stream_credits_.emplace_back(stream.id_, n);
  buffered_ -= std::min(buffered_, n);
  auto debt = std::min(stream.connection_debt_, n);
  stream.connection_debt_ -= debt;
  connection_credit_ += debt;
  do_write();
}

void Session::stream_release(Stream& stream) {
  // Bytes a closed stream will never hand out: their connection credit comes back now.
  buffered_ -= std::min(buffered_, stream.buffered());
  connection_credit_ += stream.connection_debt_;
  stream.connection_debt_ = 0;
}

void Session::stream_resume(Stream& stream) {
  if (closed_ || stream.closed_) return;
  if (stream.send_deferred_) {
    stream.send_deferred_ = false;
    nghttp2_session_resume_data(h2_, stream.id_);
  }
  do_write();
}

void Session::stream_reset(Stream& stream, std::uint32_t code) {
  if (closed_) return;
  nghttp2_submit_rst_stream(h2_, NGHTTP2_FLAG_NONE, stream.id_, code);
  do_write();
}

bool Session::submit_response(Stream& stream, int status, const Headers& headers, bool with_body) {
  if (closed_) return false;
  std::string status_name = ":status", status_value = std::to_string(status);
  std::vector<nghttp2_nv> nva{make_nv(status_name, status_value)};
  for (const auto& h : headers) nva.push_back(make_nv(h.name, h.value));
  nghttp2_data_provider provider{};
  provider.source.ptr = &stream;
  provider.read_callback = &Callbacks::data_read;
  if (with_body) stream.send_attached_ = true;
  int rv = nghttp2_submit_response(h2_, stream.id_, nva.data(), nva.size(), with_body ? &provider : nullptr);
  if (rv != 0) return false;
  do_write();
  return true;
}

void Session::open_stream(std::string authority, Headers headers, OpenHandler handler) {
  if (role_ != Role::client || !can_open()) {
    asio::post(executor_, [h = std::move(handler), closed = closed_]() mutable {
      std::move(h)(closed ? asio::error::connection_reset : asio::error::try_again, 0, nullptr);
    });
    return;
  }
  // ztunnel's request: CONNECT with only :method and :authority (no :scheme/:path, no
  // extended-CONNECT :protocol), then its headers.
  std::string m = ":method", mv = "CONNECT", a = ":authority";
  std::vector<nghttp2_nv> nva{make_nv(m, mv), make_nv(a, authority)};
  for (const auto& h : headers) nva.push_back(make_nv(h.name, h.value));
  auto stream = std::make_shared<Stream>(shared_from_this(), 0);
  nghttp2_data_provider provider{};
  provider.source.ptr = stream.get();
  provider.read_callback = &Callbacks::data_read;
  stream->send_attached_ = true;
  auto id = nghttp2_submit_request(h2_, nullptr, nva.data(), nva.size(), &provider, nullptr);
  if (id < 0) {
    asio::post(executor_, [h = std::move(handler)]() mutable { std::move(h)(asio::error::try_again, 0, nullptr); });
    return;
  }
  stream->id_ = id;
  streams_[id] = stream;
  opens_.emplace(id, PendingOpen{std::move(handler), 0});
  ++stats_.streams_opened;
  do_write();
}

std::size_t Session::max_streams() const {
  auto remote = nghttp2_session_get_remote_settings(h2_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  return std::min<std::size_t>(options_.max_concurrent_streams, remote);
}

bool Session::can_open() const {
  return !closed_ && !goaway_sent_ && !goaway_received_ && nghttp2_session_check_request_allowed(h2_) && streams_.size() < max_streams();
}

}  // namespace dsproxy::hbone
