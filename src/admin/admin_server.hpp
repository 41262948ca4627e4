#pragma once
// A small HTTP/1.1 server for the admin API (config_dump, stats) and the readiness probe.
// It runs on the control thread's io_context, never on a data-path worker.

#include <boost/asio/any_io_executor.hpp>
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

// Called with the request path (query string stripped) of a GET; runs on the admin thread.
using AdminHandler = std::function<AdminResponse(std::string_view path)>;

class AdminServer {
 public:
  explicit AdminServer(boost::asio::any_io_executor executor);
  ~AdminServer();

  // Binds now (throws std::system_error naming the address) and serves `handler` on it.
  void listen(const net::SocketAddress& address, AdminHandler handler);
  void close();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsproxy::admin
