#pragma once
// net::SocketAddress to and from the kernel's sockaddr, for the DNS proxy's raw socket calls
// (recvmsg with IP_ORIGDSTADDR, the per-reply sockets), which asio's endpoints do not cover.

#include <sys/socket.h>

#include <optional>

#include "net/ip_address.hpp"

namespace dsproxy::resolver {

struct SockAddr {
  sockaddr_storage storage{};
  socklen_t length = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

SockAddr to_sockaddr(const net::SocketAddress& a);
// nullopt for any family but AF_INET and AF_INET6.
std::optional<net::SocketAddress> from_sockaddr(const sockaddr* sa);

}  // namespace dsproxy::resolver
