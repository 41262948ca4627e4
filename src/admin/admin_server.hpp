#pragma once
// A small HTTP/1.1 server for the admin API (config_dump, stats) and the readiness probe.
// It runs on the control thread's io_context, never on a data-path worker.

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "net/ip_address.hpp"

namespace dsproxy::admin {

struct AdminResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

// The sessions of one kind of listener (the admin API on loopback, readiness on every address),
// shared by its listeners of both families. At most `max` at once: past that a new connection is
// reset as soon as it is accepted (never queued), and counted. Each session also has 10 s to
// send a whole request, so a silent client holds its place that long at most.
struct SessionLimit {
  explicit SessionLimit(std::uint64_t max_sessions) : max(max_sessions) {}
  const std::uint64_t max;
  std::atomic<std::uint64_t> active{0};
  std::atomic<std::uint64_t> refused{0};
};

// Called with the request path (query string stripped) of a GET; runs on the admin thread.
using AdminHandler = std::function<AdminResponse(std::string_view path)>;

class AdminServer {
 public:
  explicit AdminServer(boost::asio::any_io_executor executor);
  ~AdminServer();

  // Binds now (throws std::system_error naming the address) and serves `handler` on it, within
  // `limit` (none: unbounded, for tests). Returns the port bound (the kernel's choice for 0).
  std::uint16_t listen(const net::SocketAddress& address, AdminHandler handler, std::shared_ptr<SessionLimit> limit = nullptr);
  void close();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsproxy::admin
