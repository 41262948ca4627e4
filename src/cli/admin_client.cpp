#include "cli/admin_client.hpp"

#include <sys/socket.h>
#include <sys/time.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <stdexcept>

#include "net/ip_address.hpp"
#include "net/io/transparent_socket.hpp"

namespace dsproxy::cli {

namespace http = boost::beast::http;

namespace {

// IP:PORT, [IPv6]:PORT, or an address alone (the admin API's default port).
net::SocketAddress parse_admin_address(const std::string& admin) {
  if (const auto with_port = net::SocketAddress::parse(admin)) return *with_port;
  const bool bracketed = admin.size() > 2 && admin.front() == '[' && admin.back() == ']';
  if (const auto ip = net::IpAddress::parse(bracketed ? admin.substr(1, admin.size() - 2) : admin))
    return {*ip, 15000};
  throw std::runtime_error("bad admin address '" + admin + "' (want IP:PORT or [IPv6]:PORT)");
}

}  // namespace

std::string admin_get(const std::string& admin, std::string_view path) {
  const auto address = parse_admin_address(admin);
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket(io);
  boost::system::error_code ec;
  const auto endpoint = net::to_endpoint(address);
  socket.open(endpoint.protocol(), ec);
  if (!ec) {
    // Blocking I/O with kernel timeouts: the simplest way to bound a one-shot CLI request.
    timeval tv{5, 0};
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    socket.connect(endpoint, ec);
  }
  if (ec)
    throw std::runtime_error("cannot reach the dsproxy admin API at " + address.to_string() + ": " + ec.message() +
                             " (is dsproxy running in this network namespace?)");
  http::request<http::empty_body> request{http::verb::get, std::string(path), 11};
  request.set(http::field::host, address.to_string());
  request.set(http::field::connection, "close");
  http::write(socket, request, ec);
  boost::beast::flat_buffer buffer;
  http::response<http::string_body> response;
  if (!ec) http::read(socket, buffer, response, ec);
  if (ec) throw std::runtime_error("admin API at " + address.to_string() + ": " + ec.message());
  if (response.result() != http::status::ok)
    throw std::runtime_error("admin API at " + address.to_string() + std::string(path) + " answered " +
                             std::to_string(response.result_int()));
  return std::move(response.body());
}

}  // namespace dsproxy::cli
