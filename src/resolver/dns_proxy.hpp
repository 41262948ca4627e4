#pragma once
// The node's DNS proxy: what `dsproxy run` starts unless --no-dns-capture.
//
// Listens on port 15053 (UDP and TCP) on 0.0.0.0 and [::], transparently: the capture rules
// TPROXY every DNS packet of this node's pods here, whatever nameserver it was sent to
// (normally the cluster DNS ClusterIP). The UDP socket learns that address from
// IP_RECVORIGDSTADDR / IPV6_RECVORIGDSTADDR, and the answer leaves from exactly it, address and
// port, or the pod's resolver would drop it (io/origin_reply.hpp: a socket per answer, connected
// to the pod, so that no node address's port 53 is taken over); TCP connections are accepted with
// the original destination as their local address, so replies need nothing more.
// Only captured queries from this node's pods, and the node's own on loopback, are answered
// (dns_admission.hpp); TCP connections are capped in total and per client, and a message must
// arrive whole within tcp_message_timeout of its first octet (connection_limits.hpp).
// Cluster names are answered from the current snapshot, everything else is forwarded upstream
// with c-ares (see dns_handler.hpp and io/ares_upstream.hpp).
//
// Everything runs on the io_context given to the constructor (one thread). This header names no
// asio type, so it can be included anywhere.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "snapshot/snapshot_store.hpp"
#include "resolver/dns_handler.hpp"

namespace boost::asio {
class io_context;
}

namespace dsproxy::resolver {

struct DnsProxyOptions {
  bool enabled = true;
  std::uint16_t port = 15053;
  std::vector<std::string> bind = {"0.0.0.0", "::"};
  bool transparent = true;  // IP_TRANSPARENT listeners and original-destination replies
  std::string cluster_domain = "cluster.local";
  std::chrono::seconds ttl{30};
  // Upstream nameservers ("ip", "ip:port", "[ip6]:port"); empty: those of resolv_conf.
  std::vector<std::string> upstreams;
  std::string resolv_conf = "/etc/resolv.conf";
  std::uint32_t mark = 0x539;  // SO_MARK of upstream and reply sockets (the proxy mark)
  std::chrono::milliseconds upstream_timeout{2000};
  int upstream_tries = 2;
  std::size_t cache_entries = 10000;
  std::size_t max_tcp_connections = 256;
  // One client address may hold this many: a pod that opens connections and never finishes a
  // message locks only itself out. A stub resolver uses one connection per truncated answer.
  std::size_t max_tcp_connections_per_client = 32;
  std::chrono::seconds tcp_idle_timeout{10};  // waiting for the first octet of the next message
  // From a message's first octet to its last, and for writing an answer: a client sending (or
  // reading) slowly on purpose holds its connection this long at most, not tcp_idle_timeout.
  std::chrono::milliseconds tcp_message_timeout{2000};
};

class DnsProxy {
 public:
  DnsProxy(boost::asio::io_context& io, DnsProxyOptions options, const snapshot::SnapshotStore& store);
  ~DnsProxy();
  DnsProxy(const DnsProxy&) = delete;
  DnsProxy& operator=(const DnsProxy&) = delete;

  // Binds every listener and sets up the upstream; throws std::system_error / runtime_error
  // naming what failed (port in use, no CAP_NET_ADMIN, no nameserver). Call on the io thread or
  // before it runs.
  void start();
  // Closes the listeners and fails queries in flight. Idempotent; call on the io thread.
  void stop();

  // The UDP port actually bound (useful with port 0 in tests).
  std::uint16_t bound_port() const;
  const DnsStats& stats() const;
  std::vector<std::string> upstream_servers() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace dsproxy::resolver
