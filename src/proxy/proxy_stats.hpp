#pragma once
// Process-wide outcome counters, exported by the admin API.
//
// Updated once per connection event (accept, routing outcome, close), never per read or write:
// the relay sums its byte counts in the connection's own frame and adds them when it ends, so
// two workers never bounce these cache lines on the data path.

#include <atomic>
#include <cstdint>

namespace dsproxy::proxy {

struct ProxyStats {
  using Counter = std::atomic<std::uint64_t>;
  Counter outbound_accepted{0};
  Counter inbound_accepted{0};
  Counter active_connections{0};
  Counter routed_to_service{0};
  Counter passthrough{0};
  Counter rejected_no_endpoint_for_family{0};
  Counter rejected_unknown_service_port{0};
  Counter rejected_loop{0};
  Counter rejected_forbidden_destination{0};
  Counter upstream_connect_failed{0};
  Counter family_fallbacks{0};          // served by an endpoint of the other family
  Counter happy_eyeballs_other_family{0};  // the second-family attempt won the race
  Counter connect_retries{0};           // backends tried after the first
  Counter outlier_ejections{0};
  // Failures of this node's own resources (descriptors, socket buffers, memory, source ports): an
  // upstream connect attempt that never left (held against no endpoint), or an accept().
  Counter local_errors{0};
  // Connections reset straight out of the accept queue because no descriptor was left for them.
  Counter accept_shed{0};
  // A handler on a worker threw (realistically std::bad_alloc): the one connection it served was
  // reset on both sides and the worker went on (see "Fail safe" in the README).
  Counter worker_faults{0};
  // Reset at accept: the worker already held ProxyLimits::connections_per_worker connections.
  Counter rejected_worker_connection_limit{0};
  // Reset before routing: the worker already had ProxyLimits::pending_connects_per_worker
  // connections routing or connecting.
  Counter rejected_pending_connect_limit{0};
  // Reset at accept on the HBONE listener: the worker already had
  // ProxyLimits::pending_handshakes_per_worker TLS handshakes under way.
  Counter rejected_pending_handshake_limit{0};
  Counter upstream_connect_timeout{0};
  Counter idle_timeouts{0};
  Counter resets_propagated{0};
  Counter bytes_to_upstream{0};
  Counter bytes_to_downstream{0};
  // HBONE (issue 11): connections accepted on the HBONE listener; CONNECT streams opened to
  // another node (outbound) and served to a local pod (inbound); tunnels refused (no certificate
  // for the pod, a TLS peer refused, 400/401 answered); tunnels that failed (no outer
  // connection, the remote answered non-200, the local pod did not answer: 503).
  Counter hbone_accepted{0};
  Counter tunnels_outbound{0};
  Counter tunnels_inbound{0};
  Counter tunnels_refused{0};
  Counter tunnel_failures{0};
  // Connections accepted on the HBONE listener that ended for the peer's HTTP/2 protocol
  // violation, answered with GOAWAY and an error code (a bad preface, a frame the protocol
  // forbids, a flood nghttp2 refuses).
  Counter hbone_protocol_errors{0};

  static void add(Counter& c, std::uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }
};

}  // namespace dsproxy::proxy
