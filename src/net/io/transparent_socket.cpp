#include "net/io/transparent_socket.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstring>

namespace dsproxy::net {

tcp::endpoint to_endpoint(const net::SocketAddress& address) {
  const auto& b = address.ip.bytes();
  if (address.ip.is_v4()) {
    asio::ip::address_v4::bytes_type v4{b[0], b[1], b[2], b[3]};
    return {asio::ip::address_v4(v4), address.port};
  }
  asio::ip::address_v6::bytes_type v6;
  std::memcpy(v6.data(), b.data(), 16);
  return {asio::ip::address_v6(v6), address.port};
}

net::SocketAddress to_socket_address(const tcp::endpoint& endpoint) {
  const auto a = endpoint.address();
  if (a.is_v4()) {
    auto b = a.to_v4().to_bytes();
    return {net::IpAddress::v4({b[0], b[1], b[2], b[3]}), endpoint.port()};
  }
  auto b = a.to_v6().to_bytes();
  std::array<std::uint8_t, 16> raw;
  std::memcpy(raw.data(), b.data(), 16);
  return {net::IpAddress::v6(raw), endpoint.port()};  // v6() unmaps ::ffff:a.b.c.d
}

namespace {

std::error_code set_int_option(int fd, int level, int name, int value) {
  if (::setsockopt(fd, level, name, &value, sizeof value) != 0) return {errno, std::generic_category()};
  return {};
}

std::error_code set_transparent(int fd, net::Family family) {
  return family == net::Family::v4 ? set_int_option(fd, SOL_IP, IP_TRANSPARENT, 1)
                                   : set_int_option(fd, SOL_IPV6, IPV6_TRANSPARENT, 1);
}

}  // namespace

tcp::acceptor open_listener(const asio::any_io_executor& executor, const net::SocketAddress& address,
                            const ListenerSocketOptions& options) {
  const auto endpoint = to_endpoint(address);
  tcp::acceptor acceptor(executor);
  auto fail = [&](std::error_code ec, const char* step) {
    throw std::system_error(ec, "listener " + address.to_string() + ": " + step);
  };
  boost::system::error_code bec;
  acceptor.open(endpoint.protocol(), bec);
  if (bec) fail(bec, "socket");
  const int fd = acceptor.native_handle();
  std::error_code ec;
  if (!address.ip.is_v4() && (ec = set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1))) fail(ec, "IPV6_V6ONLY");
  if ((ec = set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1))) fail(ec, "SO_REUSEADDR");
  if (options.reuse_port && (ec = set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1))) fail(ec, "SO_REUSEPORT");
  if (options.transparent && (ec = set_transparent(fd, address.ip.family())))
    fail(ec, "IP_TRANSPARENT (needs CAP_NET_ADMIN)");
  // Accepted sockets inherit TCP_NODELAY from their listener (they are clones of it), which saves
  // a setsockopt per connection: small interactive writes must not wait for Nagle.
  if ((ec = set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, 1))) fail(ec, "TCP_NODELAY");
  // Inherited too. TCP urgent data (MSG_OOB, telnet's Synch) is relayed as the ordinary byte it
  // is in the stream: without this, recv() would skip it and the relay would lose a byte the
  // client sent. The urgency itself does not cross the proxy, as with any L4 proxy.
  if ((ec = set_int_option(fd, SOL_SOCKET, SO_OOBINLINE, 1))) fail(ec, "SO_OOBINLINE");
  acceptor.bind(endpoint, bec);
  if (bec) fail(bec, "bind");
  if (options.listen) {
    acceptor.listen(options.backlog, bec);
    if (bec) fail(bec, "listen");
  }
  return acceptor;
}

void start_listening(tcp::acceptor& acceptor, int backlog) {
  // The raw call: the acceptor belongs to a worker's io_context (unlocked reactor), and listen(2)
  // touches only the kernel's socket, never asio's state, so any thread may make it.
  if (::listen(acceptor.native_handle(), backlog) != 0) {
    const std::error_code ec(errno, std::generic_category());
    boost::system::error_code ignored;
    throw std::system_error(ec, "listener " + to_socket_address(acceptor.local_endpoint(ignored)).to_string() +
                                    ": listen");
  }
}

std::error_code prepare_upstream(tcp::socket& socket, net::Family family, const UpstreamSocketOptions& options) {
  boost::system::error_code bec;
  socket.open(family == net::Family::v4 ? tcp::v4() : tcp::v6(), bec);
  if (bec) return bec;
  const int fd = socket.native_handle();
  if (auto ec = set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, 1)) return ec;  // as the listeners' sockets
  if (auto ec = set_int_option(fd, SOL_SOCKET, SO_OOBINLINE, 1)) return ec;   // likewise
  if (options.mark != 0)
    if (auto ec = set_int_option(fd, SOL_SOCKET, SO_MARK, static_cast<int>(options.mark))) return ec;
  std::optional<net::IpAddress> source;
  if (options.source && options.source->family() == family) source = options.source;
  else if (options.other_family_source && options.other_family_source->family() == family) source = options.other_family_source;
  if (source) {
    if (auto ec = set_transparent(fd, family)) return ec;
    // Defer the ephemeral port choice to connect(): the kernel can then pick a port that is
    // unique per 4-tuple instead of per source address, which matters when one client IP opens
    // many connections.
    if (auto ec = set_int_option(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)) return ec;
    socket.bind(to_endpoint({*source, 0}), bec);
    if (bec) return bec;
  }
  return {};
}

void reset_connection(tcp::socket& socket) {
  if (!socket.is_open()) return;
  boost::system::error_code ignored;
  socket.set_option(asio::socket_base::linger(true, 0), ignored);
  socket.close(ignored);
}

}  // namespace dsproxy::net
