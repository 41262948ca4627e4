#include "resolver/io/socket_address_conversion.hpp"

#include <netinet/in.h>

#include <cstring>

namespace dsproxy::resolver {

SockAddr to_sockaddr(const net::SocketAddress& a) {
  SockAddr out;
  if (a.ip.is_v4()) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&out.storage);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(a.port);
    std::memcpy(&sin->sin_addr, a.ip.bytes().data(), 4);
    out.length = sizeof(sockaddr_in);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(a.port);
    std::memcpy(&sin6->sin6_addr, a.ip.bytes().data(), 16);
    out.length = sizeof(sockaddr_in6);
  }
  return out;
}

std::optional<net::SocketAddress> from_sockaddr(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(sa);
    std::array<std::uint8_t, 4> b;
    std::memcpy(b.data(), &sin->sin_addr, 4);
    return net::SocketAddress{net::IpAddress::v4(b), ntohs(sin->sin_port)};
  }
  if (sa->sa_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(sa);
    std::array<std::uint8_t, 16> b;
    std::memcpy(b.data(), &sin6->sin6_addr, 16);
    return net::SocketAddress{net::IpAddress::v6(b), ntohs(sin6->sin6_port)};
  }
  return std::nullopt;
}

}  // namespace dsproxy::resolver
