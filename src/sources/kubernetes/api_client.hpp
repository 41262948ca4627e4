#pragma once
// HTTPS GETs against the Kubernetes API server: whole bodies for LIST pages, line by line for
// WATCH streams. Boost.Beast over OpenSSL, C++20 coroutines on the caller's io_context; one
// request at a time per client (each reflector owns one client, hence one connection, reused
// across requests while the server keeps it alive).
//
// Every wait is bounded: connect, TLS handshake, response (header and LIST body), and for a
// WATCH the gap between two reads (the stall timeout: a watch whose server went silent, e.g.
// behind a dead NAT entry, ends instead of hanging forever). Sizes are bounded too: a LIST body
// above max_body_bytes and a WATCH line above max_line_bytes end the request with too_large.
//
// TLS: the server certificate is always verified against the configured CA (or the system store)
// and the server's name: SNI and host-name checking for a DNS name, an IP SAN match for an IP
// literal (an in-cluster KUBERNETES_SERVICE_HOST is one, IPv4 or IPv6). The bearer token is sent
// in a header and never logged; error details come from the TLS and HTTP layers, never from the
// request.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "sources/kubernetes/api_server_config.hpp"

namespace dsproxy::sources::kubernetes {

struct ApiClientOptions {
  std::chrono::milliseconds connect_timeout{5'000};    // TCP connect (name resolution is the system's)
  std::chrono::milliseconds tls_timeout{5'000};        // TLS handshake
  std::chrono::milliseconds response_timeout{60'000};  // a LIST's header and body; a WATCH's header
  std::size_t max_body_bytes = 64 * 1024 * 1024;       // one LIST page
  std::size_t max_line_bytes = 16 * 1024 * 1024;       // one WATCH event
  std::size_t max_error_body_bytes = 64 * 1024;        // the Status body of a non-200 answer
};

// Why a request did not produce a complete answer. `none` with a status other than 200 is an HTTP
// error the server sent (its body, if any, in ApiResult::body).
enum class ApiErrorKind {
  none,
  resolve,    // the server's name did not resolve
  connect,    // refused, unreachable, connect timeout
  tls,        // handshake failed: certificate not trusted, name mismatch, handshake timeout
  timeout,    // no (complete) response within response_timeout
  io,         // reset or closed mid-response, or a WATCH stream cut (a partial line is dropped)
  protocol,   // not HTTP the parser accepts
  too_large,  // a LIST body above max_body_bytes or a WATCH line above max_line_bytes
  stalled,    // a WATCH stream sent nothing for the stall timeout
  stopped,    // stop() was called
};
const char* to_string(ApiErrorKind kind);

struct ApiResult {
  ApiErrorKind error = ApiErrorKind::none;
  std::string detail;  // the error's words ("certificate verify failed: ..."); no secrets
  unsigned status = 0; // the HTTP status, 0 if no response header was read
  std::string reason;  // the status line's reason ("Forbidden")
  std::string body;    // a LIST's body; for a non-200 answer the (bounded) error body
  std::optional<std::chrono::seconds> retry_after;  // from a 429 or 503
  std::size_t lines = 0;  // WATCH: complete lines handed to on_line

  bool ok() const { return error == ApiErrorKind::none && status == 200; }
  // "connect: Connection refused", "HTTP 410 Gone", "TLS: certificate verify failed ...".
  std::string describe() const;
};

class ApiClient {
 public:
  // Throws KubernetesConfigError when the CA or the client certificate/key cannot be loaded.
  ApiClient(boost::asio::any_io_executor executor, const ApiServerConfig& config, ApiClientOptions options = {});
  ~ApiClient();
  ApiClient(const ApiClient&) = delete;
  ApiClient& operator=(const ApiClient&) = delete;

  // Arguments are references (the caller co_awaits at once, so they outlive the call): GCC 12
  // mishandles class temporaries in a co_await expression (double destruction), so callers pass
  // named locals.

  // GET `target` (path and query, including the server's base path) and read the whole body.
  boost::asio::awaitable<ApiResult> get(const std::string& target);

  // GET a WATCH `target` and, on 200, call on_line for every complete line of the streamed body
  // as it arrives, on the executor's thread, until the server ends the body (error none), no
  // byte arrives for `stall_timeout` (stalled), the stream breaks (io; the unfinished line is
  // dropped, never parsed), or on_line returns false (error none; the connection is closed).
  using LineHandler = std::function<bool(std::string_view line)>;
  boost::asio::awaitable<ApiResult> watch(const std::string& target, std::chrono::milliseconds stall_timeout,
                                          const LineHandler& on_line);

  // Ends the request in progress (it completes with `stopped`) and every later one. Call on the
  // executor's thread.
  void stop();

  // The tokens (bearer token) this client uses; the reflector invalidates it after a 401.
  const std::shared_ptr<BearerToken>& token() const;
  const std::string& base_path() const;
  // How many TCP+TLS connections were opened (tests check reuse).
  std::uint64_t connections_opened() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace dsproxy::sources::kubernetes
