#pragma once
// Socket set-up the kernel's transparent proxying needs, and conversions between asio endpoints
// and our address values. Only sources that do socket I/O include this (it pulls in asio);
// it is shared by the proxy, the DNS proxy and the admin API.

#include <boost/asio/ip/tcp.hpp>
#include <cstdint>
#include <optional>
#include <system_error>

#include "net/ip_address.hpp"

namespace dsproxy::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

tcp::endpoint to_endpoint(const SocketAddress& address);
// Canonical: a v4-mapped IPv6 endpoint becomes the IPv4 address it carries.
SocketAddress to_socket_address(const tcp::endpoint& endpoint);

struct ListenerSocketOptions {
  // IP_TRANSPARENT / IPV6_TRANSPARENT: TPROXY delivers connections addressed to any IP to this
  // socket; accepted sockets inherit the flag, so their local address is the original destination.
  bool transparent = true;
  // One listener per worker thread on the same address: the kernel spreads connections across
  // them with no shared accept queue lock.
  bool reuse_port = true;
  int backlog = 4096;
  // false: bind only. A bound socket that is not listening is in no SO_REUSEPORT group and
  // receives nothing (TPROXY looks up listening sockets only), so an instance that is still
  // syncing its configuration can hold its ports without taking a share of the connections
  // from the instance it replaces; start_listening() joins the group later.
  bool listen = true;
};

// Binds `address`. IPv6 listeners are IPV6_V6ONLY, so "[::]" and "0.0.0.0" are separate sockets and
// an IPv4 client is never seen as ::ffff:a.b.c.d. Throws std::system_error naming the address.
tcp::acceptor open_listener(const asio::any_io_executor& executor, const SocketAddress& address,
                            const ListenerSocketOptions& options);

// listen(2) on a socket open_listener() bound with `listen = false`. Throws std::system_error.
void start_listening(tcp::acceptor& acceptor, int backlog);

struct UpstreamSocketOptions {
  std::uint32_t mark = 0;  // SO_MARK, so the redirect rules never capture our own traffic; 0 = none
  // Bind to the client's address (IP_TRANSPARENT) so the destination sees the real client, as
  // with kube-proxy. An attempt of the other family binds to the client pod's own address of that
  // family instead (other_family_source), so the endpoint, its NetworkPolicies and its logs still
  // see the pod and never the node. An attempt of a family with neither is left unbound (the
  // node's own address): only explicit, non-captured listeners (--forward, non-transparent mode)
  // do that; the connection code never offers a captured client such an attempt.
  std::optional<IpAddress> source;
  std::optional<IpAddress> other_family_source;
};

// Opens `socket` for `family` and applies the options; errors as values for the data path.
std::error_code prepare_upstream(tcp::socket& socket, Family family, const UpstreamSocketOptions& options);

// Closes with SO_LINGER {1, 0}: the kernel sends RST instead of FIN, which is how a reset seen on
// one side of a relay is propagated to the other.
void reset_connection(tcp::socket& socket);

}  // namespace dsproxy::net
