#pragma once
// Sends one UDP answer from a captured query's original destination (address AND port: a stub
// resolver drops an answer from anywhere else), without leaving a socket behind that could
// receive someone else's traffic (issue 14, finding 2).
//
// Why a socket per reply, bound, connected, used once and closed:
//  - IP_PKTINFO / IPV6_PKTINFO on sendmsg choose the source address only, never the source port,
//    so the answer needs a socket bound to original-destination:53 (transparent, since that is
//    usually the cluster DNS ClusterIP, not a local address).
//  - A socket bound to a node address:53 and left unconnected is a more specific match than a
//    node DNS server's 0.0.0.0:53 in the kernel's UDP lookup: it would take every datagram any
//    host sends to that address's port 53 (the takeover). connect()ed to the client's ip:port it
//    only matches datagrams from that very ip:port; the TPROXY rule's "established" lookup would
//    also hand it that client's next queries, which is why it does not live on.
//  - Keeping connected sockets would not pay: stub resolvers pick a new random source port per
//    lookup, so a cache keyed by the client's ip:port almost never hits, while every entry is a
//    socket that swallows that client's retries unless it is read as well.
//  - The one window left is between bind() and connect() (a few microseconds): a datagram from
//    another host to that address:53 can land on the socket then. It is read back before the
//    close and reported as a stray (dropped; the sender retries), never answered.
// Before it closes, the socket is drained: a datagram from the client itself (a query sent while
// the socket existed, which the TPROXY lookup delivered here instead of the listener) is handed
// back to be answered like any captured query.
//
// A node server bound to the same port without SO_REUSEADDR makes bind() fail with EADDRINUSE:
// the answer cannot be sent from that port at all; the caller counts and logs it.

#include <cerrno>
#include <cstdint>
#include <vector>

#include "net/ip_address.hpp"
#include "resolver/dns_message.hpp"

namespace dsproxy::resolver {

struct OriginReplyOptions {
  bool transparent = true;  // IP_TRANSPARENT: `from` need not be a local address (CAP_NET_ADMIN)
  std::uint32_t mark = 0;   // SO_MARK (the proxy mark, so the capture rules leave it alone)
};

struct OriginReplyResult {
  int error = 0;            // errno of the failed step; 0 when the answer was sent
  const char* step = "";    // "socket", "setsockopt", "bind", "connect" or "send"
  std::vector<Bytes> late_queries;  // datagrams from `to` itself, read before the close
  std::size_t strays = 0;   // datagrams from anyone else (the bind-to-connect window), dropped
  bool sent() const { return error == 0; }
};

OriginReplyResult send_from_origin(const net::SocketAddress& from, const net::SocketAddress& to, ByteView payload,
                                   const OriginReplyOptions& options);

}  // namespace dsproxy::resolver
