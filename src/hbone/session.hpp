#pragma once
// One HBONE connection: HTTP/2 (nghttp2's session API) over TLS over TCP, on one io_context.
// The server side accepts CONNECT streams and hands each to a handler; the client side opens them.

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hbone/hbone_options.hpp"
#include "hbone/stream.hpp"
#include "hbone/tls_stream.hpp"

struct nghttp2_session;

namespace dsproxy::hbone {

using tcp = boost::asio::ip::tcp;

struct Header {
  std::string name;  // lower case, as HTTP/2 requires
  std::string value;
};
using Headers = std::vector<Header>;
const std::string* find_header(const Headers& headers, std::string_view name);

// What the caller knows about the outer connection: the TLS peer's verified identity (its
// SPIFFE URI; identity::peer_identity reads it) and the TCP endpoints. On the server, `local` is
// the outer connection's original destination (the pod it was addressed to).
struct ConnectionInfo {
  std::string peer_identity;
  tcp::endpoint local;
  tcp::endpoint remote;
};

class Session;

// A CONNECT request the server received, waiting for the handler's answer. Answer exactly once,
// on the session's thread; if the client resets the stream first, both answers are no-ops
// (accept returns nullptr), and cancelled() says so.
class IncomingRequest {
 public:
  const ConnectionInfo& connection() const;
  const std::string& authority() const { return authority_; }
  const tcp::endpoint& target() const { return target_; }  // the parsed :authority
  const Headers& headers() const { return headers_; }
  bool cancelled() const;
  // 200 with `headers` (e.g. ztunnel's response baggage); the stream is then open both ways.
  std::shared_ptr<Stream> accept(const Headers& headers = {});
  // 400 / 401 / 503 (any non-2xx), with END_STREAM: the tunnel is refused.
  void reject(int status);

 private:
  friend class Session;
  std::shared_ptr<Session> session_;
  std::shared_ptr<Stream> stream_;
  std::string method_, authority_, scheme_, path_, protocol_;
  std::size_t header_bytes_ = 0;
  Headers headers_;
  tcp::endpoint target_;
  bool answered_ = false;
};
using RequestHandler = std::function<void(std::shared_ptr<IncomingRequest>)>;

struct SessionStats {
  std::uint64_t streams_opened = 0;
  std::uint64_t streams_refused = 0;  // non-CONNECT / bad authority answered 400 by the session
  bool protocol_error = false;        // ended with GOAWAY(PROTOCOL_ERROR) or a bad preface
  bool idle_timeout = false;          // server: GOAWAY after SessionOptions::idle_timeout without streams
};

// What a session refused on its own (it logs the details; its owner counts): a well-formed
// request that is not a plain CONNECT to "<ip>:<port>" (answered 400), or an HTTP/2 protocol
// violation that ends the connection (a bad preface, or any error nghttp2 answers with
// GOAWAY and an error code).
enum class SessionRefusal { bad_request, protocol_violation };

class Session : public std::enable_shared_from_this<Session> {
 public:
  enum class Role { client, server };
  // (ec, HTTP status or 0 when none arrived, the stream when status == 200)
  using OpenHandler = boost::asio::any_completion_handler<void(boost::system::error_code, int, std::shared_ptr<Stream>)>;

  // `io` has completed its TLS handshake (ALPN "h2" checked by the caller: see tls_check_alpn).
  static std::shared_ptr<Session> make_server(std::unique_ptr<TlsStream> io, ConnectionInfo info,
                                              const SessionOptions& options, RequestHandler handler);
  static std::shared_ptr<Session> make_client(std::unique_ptr<TlsStream> io, ConnectionInfo info,
                                              const SessionOptions& options);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Sends the preface and SETTINGS and starts reading. The session keeps itself alive while its
  // socket is open.
  void start();

  // Client: a CONNECT stream to `authority` with `headers` (forwarded, baggage, ...). Completes
  // with the stream on 200; with connection_refused and the status on any other status; with
  // connection_reset when the stream or connection ended before a response; with
  // try_again when the connection cannot take another stream (check can_open()).
  void open_stream(std::string authority, Headers headers, OpenHandler handler);

  // GOAWAY(NO_ERROR): no new streams; the connection closes once its streams have ended.
  void shutdown();
  // Closes the socket now; every stream is reset.
  void close();

  bool closed() const { return closed_; }
  bool ready() const { return settings_received_; }
  // Streams open or being opened.
  std::size_t stream_count() const { return streams_.size(); }
  // min(our limit, the peer's SETTINGS_MAX_CONCURRENT_STREAMS).
  std::size_t max_streams() const;
  bool can_open() const;
  const ConnectionInfo& info() const { return info_; }
  const SessionStats& stats() const { return stats_; }
  // Received DATA not yet read, over all streams (what connection_buffer_limit bounds).
  std::size_t buffered_bytes() const { return buffered_; }
  boost::asio::any_io_executor get_executor() { return executor_; }
  // Kept until the connection closes (or the session goes): e.g. the owner's count of open
  // connections, so that it follows the socket, not the last reference to this object.
  void hold_until_closed(std::shared_ptr<void> token) { held_ = std::move(token); }
  // Posted whenever stream_count(), can_open() or closed() may have changed (the pool's hook).
  void set_observer(std::function<void()> observer) { observer_ = std::move(observer); }
  // Called (on the session's thread) once per refusal above; set before start().
  void set_refusal_observer(std::function<void(SessionRefusal)> observer) { refusal_observer_ = std::move(observer); }

 private:
  friend class Stream;
  friend class IncomingRequest;
  struct Callbacks;

  Session(std::unique_ptr<TlsStream> io, ConnectionInfo info, const SessionOptions& options, Role role,
          RequestHandler handler);
  void init();
  void do_read();
  void on_readable(boost::system::error_code ec);
  void do_write();
  // After a write, with no stream left (never inside nghttp2: out_ may hold frames then).
  void release_batch_buffers();
  void flush_credits();
  void fail(const char* why);
  void close_transport();
  void notify();
  void dispatch_request(std::int32_t id);
  void report_violation(std::uint32_t error_code, std::string_view reason);
  void on_response(std::int32_t id);
  void on_stream_closed(std::int32_t id, std::uint32_t code);
  // Server: (re)arms or disarms the idle timer after the set of live streams changed.
  void update_idle();
  void idle_expired();
  // From Stream.
  void stream_consumed(Stream& stream, std::size_t n);
  void stream_resume(Stream& stream);
  void stream_reset(Stream& stream, std::uint32_t code);
  void stream_release(Stream& stream);
  // From IncomingRequest.
  bool submit_response(Stream& stream, int status, const Headers& headers, bool with_body);

  std::unique_ptr<TlsStream> io_;
  boost::asio::any_io_executor executor_;
  ConnectionInfo info_;
  SessionOptions options_;
  Role role_;
  RequestHandler handler_;
  nghttp2_session* h2_ = nullptr;
  boost::asio::steady_timer handshake_timer_;
  boost::asio::steady_timer idle_timer_;
  std::uint64_t idle_generation_ = 0;  // a timer completion of an older arming is stale
  bool idle_armed_ = false;
  std::map<std::int32_t, std::shared_ptr<Stream>> streams_;
  std::map<std::int32_t, std::shared_ptr<IncomingRequest>> requests_;  // server, until answered
  struct PendingOpen {
    OpenHandler handler;
    int status = 0;
  };
  std::map<std::int32_t, PendingOpen> opens_;  // client, until the response
  std::vector<std::pair<std::int32_t, std::size_t>> stream_credits_;
  std::size_t connection_credit_ = 0;
  std::size_t buffered_ = 0;  // received DATA not yet read, over all streams
  // out_: HTTP/2 frames of one batch, encrypted together; sending_: the ciphertext being
  // written (TlsStream::output() takes what OpenSSL writes meanwhile, e.g. a KeyUpdate answer).
  std::vector<std::uint8_t> out_, sending_;
  bool started_ = false, reading_ = false, writing_ = false, in_nghttp2_ = false;
  bool closed_ = false, settings_received_ = false;
  bool goaway_sent_ = false, goaway_received_ = false;  // ours stops the idle timer; the peer's must not
  SessionStats stats_;
  std::string violation_;  // what nghttp2 refused, for the log line of the GOAWAY it causes
  std::function<void()> observer_;
  std::function<void(SessionRefusal)> refusal_observer_;
  std::shared_ptr<void> held_;
};

}  // namespace dsproxy::hbone
