#pragma once
// One worker's own load against ProxyOptions::limits: the one check the accept loop, a plaintext
// connection and an inbound HBONE stream make before taking on more, and the one way a refusal is
// counted and logged. What is done with the refused connection (a reset, a 503) is the caller's.

#include <atomic>
#include <boost/asio/ip/address.hpp>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string_view>

#include "proxy/proxy_options.hpp"
#include "proxy/proxy_stats.hpp"

namespace dsproxy::proxy {

class LogThrottle;

// The bounds of ProxyLimits, each with its own counter (rejected_*_limit).
enum class WorkerLimit { connections, pending_connects, pending_handshakes };

// Written only by the worker's thread; atomics so that the admin API can read them.
struct WorkerLoad {
  std::atomic<std::uint64_t> connections{0};  // accepted and not yet closed, relaying included
  std::atomic<std::uint64_t> connecting{0};   // routing or connecting upstream (no relay yet)
  std::atomic<std::uint64_t> handshaking{0};  // HBONE connections in their TLS handshake
  std::uint64_t test_faults_seen = 0;         // connections counted for ProxyOptions::test_faults

  // The first of `checked` (in that order) this worker has reached, i.e. it already holds as many
  // as `limits` allows; nullopt: there is room for one more of each.
  std::optional<WorkerLimit> full(const ProxyLimits& limits, std::initializer_list<WorkerLimit> checked) const;
};

// Counts one connection or stream refused at `limit` in that limit's counter, and logs it through
// `log` (null: counted only), saying what the refused one met (`refused`, e.g. "new connections are
// reset") and, when given, where the last one came from. A flood of refusals is one line a
// throttle interval, which says how many were held back.
void count_refusal(WorkerLimit limit, const ProxyLimits& limits, ProxyStats& stats, LogThrottle* log,
                   std::string_view refused, std::optional<boost::asio::ip::address> from = std::nullopt);

}  // namespace dsproxy::proxy
