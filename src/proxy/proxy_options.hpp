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
};

}  // namespace dsproxy::proxy
