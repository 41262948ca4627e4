#pragma once
// Settings of the data path, fixed for the life of a ProxyServer.

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "net/ip_address.hpp"

#include "proxy/outlier_detector.hpp"
#include "proxy/router.hpp"

namespace dsproxy::proxy {

// An explicitly addressed listener (--forward LISTEN=TARGET): clients connect to `listen`, and
// each connection is routed as if it had been captured on its way to `target` (a Service's
// ClusterIP:port or a pod's address), from the node's own address: no TPROXY, no transparent
// source. For nodes or tools that cannot capture, and to measure what capture costs.
struct Forward {
  net::SocketAddress listen;
  net::SocketAddress target;
};

// What one worker takes on at most; past a limit a new connection is reset at once (the client
// sees "connection reset" within a round trip), never queued. Each refusal is counted.
struct ProxyLimits {
  // Accepted and not yet closed, relaying ones included (--max-connections-per-worker). An
  // idle connection costs about 1.5 KiB of proxy memory plus two descriptors and the kernel's
  // socket buffers: the default bounds one worker to about 75 MB of proxy memory.
  std::uint64_t connections_per_worker = 50000;  // rejected_worker_connection_limit
  // Routing or connecting upstream (--max-pending-connects-per-worker): what a black-holed
  // upstream piles up for the whole connect timeout.
  std::uint64_t pending_connects_per_worker = 4096;  // rejected_pending_connect_limit
  // Accepted on the HBONE listener and still in the TLS handshake
  // (--max-pending-handshakes-per-worker): each costs a handshake's CPU and state before the peer
  // has proved anything, for up to the handshake timeout. Its own budget, so a ClientHello flood
  // refuses new HBONE connections only, never plaintext ones or established tunnels.
  std::uint64_t pending_handshakes_per_worker = 1024;  // rejected_pending_handshake_limit
};

// Tests only (run --test-fault, hidden): every Nth connection of a worker meets an injected
// std::bad_alloc, to show that a fault costs that connection and nothing else. Zero: off.
struct TestFaults {
  std::uint32_t relay_every = 0;       // thrown from the relay's first callback
  std::uint32_t connection_every = 0;  // thrown while the connection is being routed
  // Worker 0's loop blocks (a handler that never returns) this long after start: the liveness
  // check must report it.
  std::chrono::milliseconds stall_worker_after{0};
};

struct ProxyOptions {
  CapturePorts ports;             // outbound 15001, inbound 15006
  // Empty: no listener of that family (a node with IPv6 off, where [::] may not even bind);
  // at least one must be set.
  std::string bind_v4 = "0.0.0.0";
  std::string bind_v6 = "::";
  int workers = 1;                // threads, each with its own io_context and SO_REUSEPORT listeners
  bool transparent = true;        // IP_TRANSPARENT listeners and client-source upstream binds
  std::uint32_t upstream_mark = 0x539;
  // The whole budget for reaching an upstream, retries included.
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  // Backends tried per connection (the first try and the retries).
  int max_connect_attempts = 3;
  // RFC 8305 Connection Attempt Delay before racing a pod's other family.
  std::chrono::milliseconds attempt_delay{250};
  // Happy Eyeballs for passthrough to a dual-stack pod (off with --family-fallback never).
  bool passthrough_happy_eyeballs = true;
  OutlierOptions outlier;
  std::chrono::milliseconds idle_timeout{std::chrono::hours(1)};
  std::vector<Forward> forwards;
  ProxyLimits limits;
  TestFaults test_faults;
};

}  // namespace dsproxy::proxy
