#include "sources/kubernetes/api_client.hpp"

#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <charconv>

#include "sources/kubernetes/line_splitter.hpp"

namespace dsproxy::sources::kubernetes {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

namespace {

constexpr auto as_values = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t kHeaderLimit = 64 * 1024;

bool is_ip_literal(const std::string& host) {
  in6_addr v6{};
  in_addr v4{};
  return inet_pton(AF_INET6, host.c_str(), &v6) == 1 || inet_pton(AF_INET, host.c_str(), &v4) == 1;
}

std::optional<std::chrono::seconds> parse_retry_after(beast::string_view value) {
  // Only the delta-seconds form; the API server never sends an HTTP date here.
  unsigned seconds = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), seconds);
  if (ec != std::errc() || end != value.data() + value.size()) return std::nullopt;
  return std::chrono::seconds(seconds);
}

ApiResult failure(ApiErrorKind kind, std::string detail) {
  ApiResult r;
  r.error = kind;
  r.detail = std::move(detail);
  return r;
}

// Classifies an I/O error of a request that is under way.
ApiResult io_failure(const beast::error_code& ec, bool stopped, ApiErrorKind on_timeout) {
  if (stopped) return failure(ApiErrorKind::stopped, "stopped");
  if (ec == beast::error::timeout) return failure(on_timeout, "timed out");
  if (ec == http::error::body_limit || ec == http::error::header_limit)
    return failure(ApiErrorKind::too_large, ec.message());
  if (ec.category() == beast::error_code(http::error::end_of_stream).category() &&
      ec != http::error::end_of_stream && ec != http::error::partial_message)
    return failure(ApiErrorKind::protocol, ec.message());
  return failure(ApiErrorKind::io, ec.message());
}

}  // namespace

const char* to_string(ApiErrorKind kind) {
  switch (kind) {
    case ApiErrorKind::none: return "none";
    case ApiErrorKind::resolve: return "resolve";
    case ApiErrorKind::connect: return "connect";
    case ApiErrorKind::tls: return "tls";
    case ApiErrorKind::timeout: return "timeout";
    case ApiErrorKind::io: return "io";
    case ApiErrorKind::protocol: return "protocol";
    case ApiErrorKind::too_large: return "too_large";
    case ApiErrorKind::stalled: return "stalled";
    case ApiErrorKind::stopped: return "stopped";
  }
  return "unknown";
}

std::string ApiResult::describe() const {
  if (error == ApiErrorKind::none) {
    std::string s = "HTTP " + std::to_string(status);
    if (!reason.empty()) s += " " + reason;
    return s;
  }
  return std::string(to_string(error)) + ": " + detail;
}

using Stream = beast::ssl_stream<beast::tcp_stream>;

struct ApiClient::Impl {
  using LineHandler = ApiClient::LineHandler;
  asio::any_io_executor executor;
  ApiClientOptions options;
  std::string host;
  std::string port;
  std::string authority;
  std::string verify_name;
  bool verify_ip = false;
  std::string base_path;
  std::shared_ptr<BearerToken> token;
  ssl::context tls{ssl::context::tls_client};
  tcp::resolver resolver;
  std::optional<Stream> stream;  // open connection, reused while the server keeps it alive
  beast::flat_buffer buffer;
  bool stopped = false;
  std::uint64_t connections = 0;

  Impl(asio::any_io_executor ex, const ApiServerConfig& config, ApiClientOptions opts)
      : executor(ex), options(opts), resolver(ex) {
    host = config.host;
    port = std::to_string(config.port);
    authority = config.authority();
    verify_name = config.tls_server_name.empty() ? config.host : config.tls_server_name;
    verify_ip = is_ip_literal(verify_name);
    base_path = config.base_path;
    token = config.token;
    // TLS 1.2 is the oldest the API server speaks; peer verification is not optional.
    SSL_CTX_set_min_proto_version(tls.native_handle(), TLS1_2_VERSION);
    tls.set_verify_mode(ssl::verify_peer);
    beast::error_code ec;
    if (config.ca_pem.empty()) {
      tls.set_default_verify_paths(ec);
      if (ec) throw KubernetesConfigError("kubernetes: cannot load the system trust store: " + ec.message());
    } else {
      tls.add_certificate_authority(asio::buffer(config.ca_pem), ec);
      if (ec) throw KubernetesConfigError("kubernetes: the CA of " + config.origin + " is not a PEM certificate: " + ec.message());
    }
    if (!config.client_cert_pem.empty()) {
      tls.use_certificate_chain(asio::buffer(config.client_cert_pem), ec);
      if (ec) throw KubernetesConfigError("kubernetes: the client certificate of " + config.origin + " is not PEM: " + ec.message());
      tls.use_private_key(asio::buffer(config.client_key_pem), ssl::context::pem, ec);
      // No detail from OpenSSL here: it could quote the key material's position, not worth the risk.
      if (ec) throw KubernetesConfigError("kubernetes: the client key of " + config.origin + " cannot be loaded");
      if (SSL_CTX_check_private_key(tls.native_handle()) != 1)
        throw KubernetesConfigError("kubernetes: the client key of " + config.origin + " does not match its certificate");
    }
  }

  void close() {
    if (!stream) return;
    beast::error_code ignored;
    beast::get_lowest_layer(*stream).socket().close(ignored);
    stream.reset();
    buffer.clear();
  }

  asio::awaitable<ApiResult> connect() {
    close();
    auto [resolve_ec, endpoints] = co_await resolver.async_resolve(host, port, as_values);
    if (stopped) co_return failure(ApiErrorKind::stopped, "stopped");
    if (resolve_ec) co_return failure(ApiErrorKind::resolve, host + ": " + resolve_ec.message());
    stream.emplace(executor, tls);
    ++connections;
    SSL* ssl_handle = stream->native_handle();
    if (verify_ip) {
      // An IP literal is matched against the certificate's IP SANs; it is never sent as SNI
      // (RFC 6066 forbids addresses there).
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_handle), verify_name.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl_handle, verify_name.c_str());
      SSL_set1_host(ssl_handle, verify_name.c_str());
    }
    auto& tcp_layer = beast::get_lowest_layer(*stream);
    tcp_layer.expires_after(options.connect_timeout);
    auto [connect_ec, endpoint] = co_await tcp_layer.async_connect(endpoints, as_values);
    if (stopped) co_return failure(ApiErrorKind::stopped, "stopped");
    if (connect_ec) {
      close();
      co_return failure(ApiErrorKind::connect, authority + ": " + connect_ec.message());
    }
    tcp_layer.expires_after(options.tls_timeout);
    auto [handshake_ec] = co_await stream->async_handshake(ssl::stream_base::client, as_values);
    if (stopped) co_return failure(ApiErrorKind::stopped, "stopped");
    if (handshake_ec) {
      std::string detail = handshake_ec == beast::error::timeout ? "handshake timed out" : handshake_ec.message();
      const long verify = SSL_get_verify_result(ssl_handle);
      if (verify != X509_V_OK) detail += std::string(" (") + X509_verify_cert_error_string(verify) + ")";
      close();
      co_return failure(ApiErrorKind::tls, authority + ": " + detail);
    }
    co_return ApiResult{};
  }

  http::request<http::empty_body> request(const std::string& target) {
    http::request<http::empty_body> req{http::verb::get, target, 11};
    req.set(http::field::host, authority);
    req.set(http::field::user_agent, "dsproxy");
    req.set(http::field::accept, "application/json");
    if (token) {
      const std::string& bearer = token->current();
      if (!bearer.empty()) req.set(http::field::authorization, "Bearer " + bearer);
    }
    req.keep_alive(true);
    return req;
  }

  // Writes the request on the open connection, or on a new one. A reused connection may have been
  // closed by the server while idle; that shows as a failed write or an immediate EOF, and the
  // request is then retried once on a fresh connection.
  template <class Parser>
  asio::awaitable<ApiResult> send_and_read_header(const std::string& target, Parser& parser, bool& retry_fresh) {
    retry_fresh = false;
    const bool reused = stream.has_value();
    if (!stream) {
      ApiResult c = co_await connect();
      if (c.error != ApiErrorKind::none) co_return c;
    }
    auto req = request(target);
    auto& tcp_layer = beast::get_lowest_layer(*stream);
    tcp_layer.expires_after(options.response_timeout);
    auto [write_ec, written] = co_await http::async_write(*stream, req, as_values);
    if (!write_ec) {
      auto [read_ec, n] = co_await http::async_read_header(*stream, buffer, parser, as_values);
      if (!read_ec) co_return ApiResult{};
      if (stopped || !reused || read_ec == beast::error::timeout) {
        close();
        co_return io_failure(read_ec, stopped, ApiErrorKind::timeout);
      }
    } else if (stopped || !reused) {
      close();
      co_return io_failure(write_ec, stopped, ApiErrorKind::timeout);
    }
    close();
    retry_fresh = true;
    co_return failure(ApiErrorKind::io, "the reused connection was closed by the server");
  }

  static void fill_header(ApiResult& r, const http::response_header<>& header) {
    r.status = header.result_int();
    r.reason = std::string(header.reason());
    if (auto it = header.find(http::field::retry_after); it != header.end()) r.retry_after = parse_retry_after(it->value());
  }

  asio::awaitable<ApiResult> get(const std::string& target) {
    if (stopped) co_return failure(ApiErrorKind::stopped, "stopped");
    for (int attempt = 0; attempt < 2; ++attempt) {
      http::response_parser<http::string_body> parser;
      parser.header_limit(kHeaderLimit);
      parser.body_limit(options.max_body_bytes);
      bool retry_fresh = false;
      ApiResult sent = co_await send_and_read_header(target, parser, retry_fresh);
      if (retry_fresh) continue;
      if (sent.error != ApiErrorKind::none) co_return sent;
      ApiResult r;
      fill_header(r, parser.get().base());
      // A non-200 answer's body is a small Status object; bounded separately so that an error
      // page cannot cost a LIST's worth of memory.
      if (r.status != 200) parser.body_limit(options.max_error_body_bytes);
      auto [read_ec, n] = co_await http::async_read(*stream, buffer, parser, as_values);
      if (read_ec) {
        close();
        ApiResult f = io_failure(read_ec, stopped, ApiErrorKind::timeout);
        f.status = r.status;
        f.reason = r.reason;
        co_return f;
      }
      r.body = std::move(parser.get().body());
      if (!parser.keep_alive()) close();
      co_return r;
    }
    co_return failure(ApiErrorKind::io, "the server closed the connection twice");
  }

  asio::awaitable<ApiResult> watch(const std::string& target, std::chrono::milliseconds stall_timeout,
                                   const LineHandler& on_line) {
    if (stopped) co_return failure(ApiErrorKind::stopped, "stopped");
    for (int attempt = 0; attempt < 2; ++attempt) {
      http::response_parser<http::buffer_body> parser;
      parser.header_limit(kHeaderLimit);
      parser.body_limit(boost::none);  // a watch streams for minutes; lines are bounded instead
      bool retry_fresh = false;
      ApiResult sent = co_await send_and_read_header(target, parser, retry_fresh);
      if (retry_fresh) continue;
      if (sent.error != ApiErrorKind::none) co_return sent;
      ApiResult r;
      fill_header(r, parser.get().base());
      const bool streaming = r.status == 200;
      LineSplitter splitter(options.max_line_bytes);
      auto& tcp_layer = beast::get_lowest_layer(*stream);
      char chunk[16 * 1024];
      bool finished_by_caller = false;
      while (!parser.is_done()) {
        parser.get().body().data = chunk;
        parser.get().body().size = sizeof chunk;
        tcp_layer.expires_after(streaming ? stall_timeout : options.response_timeout);
        auto [read_ec, n] = co_await http::async_read_some(*stream, buffer, parser, as_values);
        if (read_ec == http::error::need_buffer) read_ec = {};
        if (read_ec) {
          // The unfinished line in the splitter is dropped with it: half an object is no object.
          close();
          ApiResult f = io_failure(read_ec, stopped, streaming ? ApiErrorKind::stalled : ApiErrorKind::timeout);
          f.status = r.status;
          f.reason = r.reason;
          f.lines = r.lines;
          co_return f;
        }
        const std::size_t got = sizeof chunk - parser.get().body().size;
        if (got == 0) continue;
        const std::string_view data(chunk, got);
        if (!streaming) {
          const std::size_t room = options.max_error_body_bytes - std::min(options.max_error_body_bytes, r.body.size());
          r.body.append(data.substr(0, room));
          continue;
        }
        const auto fed = splitter.feed(data, [&](std::string_view line) {
          ++r.lines;
          return on_line(line) && !stopped;
        });
        if (fed == LineSplitter::Result::line_too_long) {
          close();
          ApiResult f = failure(ApiErrorKind::too_large, "a watch event is longer than " +
                                                              std::to_string(options.max_line_bytes) + " bytes");
          f.status = r.status;
          f.lines = r.lines;
          co_return f;
        }
        if (fed == LineSplitter::Result::stopped) {
          finished_by_caller = true;
          break;
        }
      }
      if (stopped) {
        close();
        co_return failure(ApiErrorKind::stopped, "stopped");
      }
      // A body ended by the server (timeoutSeconds) leaves the connection reusable if it says so.
      if (finished_by_caller || !parser.keep_alive()) close();
      co_return r;
    }
    co_return failure(ApiErrorKind::io, "the server closed the connection twice");
  }
};

ApiClient::ApiClient(asio::any_io_executor executor, const ApiServerConfig& config, ApiClientOptions options)
    : impl_(std::make_shared<Impl>(std::move(executor), config, options)) {}

ApiClient::~ApiClient() {
  // A coroutine suspended in get() or watch() holds the Impl; it wakes up, sees `stopped` and
  // releases the connection itself.
  if (impl_) stop();
}

asio::awaitable<ApiResult> ApiClient::get(const std::string& target) {
  auto impl = impl_;  // the coroutine keeps the connection alive while it is suspended
  ApiResult result = co_await impl->get(target);
  co_return result;
}

asio::awaitable<ApiResult> ApiClient::watch(const std::string& target, std::chrono::milliseconds stall_timeout,
                                            const LineHandler& on_line) {
  auto impl = impl_;
  ApiResult result = co_await impl->watch(target, stall_timeout, on_line);
  co_return result;
}

void ApiClient::stop() {
  impl_->stopped = true;
  impl_->resolver.cancel();
  // Closing the socket completes the pending operation with operation_aborted; the coroutine then
  // sees `stopped` and returns. The stream object itself is destroyed by the coroutine, not here.
  if (impl_->stream) {
    beast::error_code ignored;
    beast::get_lowest_layer(*impl_->stream).socket().close(ignored);
  }
}

const std::shared_ptr<BearerToken>& ApiClient::token() const { return impl_->token; }
const std::string& ApiClient::base_path() const { return impl_->base_path; }
std::uint64_t ApiClient::connections_opened() const { return impl_->connections; }

}  // namespace dsproxy::sources::kubernetes
