#include "resolver/io/origin_reply.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>

#include "resolver/io/socket_address_conversion.hpp"

namespace dsproxy::resolver {

namespace {

// Closes the descriptor on every return path.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

bool set(int fd, int level, int name, int value) {
  return ::setsockopt(fd, level, name, &value, sizeof value) == 0;
}

// Largest datagram the drain keeps; a query that does not fit is no query a stub sends over
// UDP, and is treated like a stray.
constexpr std::size_t kDrainBuffer = 4096;
// Bound on the datagrams read back before the close.
constexpr int kDrainMax = 16;

void drain(int fd, const net::SocketAddress& client, OriginReplyResult& result) {
  std::array<std::uint8_t, kDrainBuffer> buffer;
  for (int i = 0; i < kDrainMax; ++i) {
    sockaddr_storage peer{};
    socklen_t peer_length = sizeof peer;
    const ssize_t n = ::recvfrom(fd, buffer.data(), buffer.size(), MSG_DONTWAIT | MSG_TRUNC,
                                 reinterpret_cast<sockaddr*>(&peer), &peer_length);
    if (n < 0) return;  // EAGAIN: nothing (more) queued
    const auto source = from_sockaddr(reinterpret_cast<const sockaddr*>(&peer));
    if (source && *source == client && static_cast<std::size_t>(n) <= buffer.size())
      result.late_queries.emplace_back(buffer.begin(), buffer.begin() + n);
    else
      ++result.strays;
  }
}

}  // namespace

OriginReplyResult send_from_origin(const net::SocketAddress& from, const net::SocketAddress& to, ByteView payload,
                                   const OriginReplyOptions& options) {
  OriginReplyResult result;
  auto fail = [&result](const char* step) {
    result.error = errno;
    result.step = step;
    return std::move(result);
  };
  const bool v4 = from.ip.is_v4();
  Fd s{::socket(v4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)};
  if (s.fd < 0) return fail("socket");
  // SO_REUSEADDR: shares the port with a node server that set it too (dnsmasq, most others);
  // the connect() below keeps this socket off that server's traffic.
  if ((!v4 && !set(s.fd, IPPROTO_IPV6, IPV6_V6ONLY, 1)) || !set(s.fd, SOL_SOCKET, SO_REUSEADDR, 1))
    return fail("setsockopt");
  if (options.transparent && !set(s.fd, v4 ? SOL_IP : SOL_IPV6, v4 ? IP_TRANSPARENT : IPV6_TRANSPARENT, 1))
    return fail("setsockopt");
  if (options.mark != 0 && !set(s.fd, SOL_SOCKET, SO_MARK, static_cast<int>(options.mark))) return fail("setsockopt");
  const SockAddr local = to_sockaddr(from);
  if (::bind(s.fd, local.get(), local.length) != 0) return fail("bind");
  const SockAddr peer = to_sockaddr(to);
  if (::connect(s.fd, peer.get(), peer.length) != 0) {
    const int error = errno;
    drain(s.fd, to, result);
    errno = error;
    return fail("connect");
  }
  if (::send(s.fd, payload.data(), payload.size(), MSG_DONTWAIT) < 0) {
    const int error = errno;
    drain(s.fd, to, result);
    errno = error;
    return fail("send");
  }
  drain(s.fd, to, result);
  return result;
}

}  // namespace dsproxy::resolver
