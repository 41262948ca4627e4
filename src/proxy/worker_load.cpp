#include "proxy/worker_load.hpp"

#include <spdlog/spdlog.h>

#include <chrono>

#include "proxy/log_throttle.hpp"

namespace dsproxy::proxy {

namespace {

// One row per WorkerLimit, so that a limit's gauge, bound, counter and the names its log line
// gives cannot drift apart between the call sites.
struct LimitFacts {
  std::atomic<std::uint64_t> WorkerLoad::*held;
  std::uint64_t ProxyLimits::*bound;
  ProxyStats::Counter ProxyStats::*counter;
  const char* holds;  // "a worker <holds> <bound> <what>"
  const char* what;
  const char* flag;
  const char* counter_name;
};

constexpr LimitFacts kLimits[] = {
    {&WorkerLoad::connections, &ProxyLimits::connections_per_worker, &ProxyStats::rejected_worker_connection_limit,
     "holds", "connections", "--max-connections-per-worker", "rejected_worker_connection_limit"},
    {&WorkerLoad::connecting, &ProxyLimits::pending_connects_per_worker, &ProxyStats::rejected_pending_connect_limit,
     "has", "connections routing or connecting upstream", "--max-pending-connects-per-worker",
     "rejected_pending_connect_limit"},
    {&WorkerLoad::handshaking, &ProxyLimits::pending_handshakes_per_worker,
     &ProxyStats::rejected_pending_handshake_limit, "has", "HBONE handshakes under way",
     "--max-pending-handshakes-per-worker", "rejected_pending_handshake_limit"},
};

const LimitFacts& facts(WorkerLimit limit) { return kLimits[static_cast<std::size_t>(limit)]; }

}  // namespace

std::optional<WorkerLimit> WorkerLoad::full(const ProxyLimits& limits,
                                            std::initializer_list<WorkerLimit> checked) const {
  for (const WorkerLimit limit : checked) {
    const LimitFacts& f = facts(limit);
    if ((this->*f.held).load(std::memory_order_relaxed) >= limits.*f.bound) return limit;
  }
  return std::nullopt;
}

void count_refusal(WorkerLimit limit, const ProxyLimits& limits, ProxyStats& stats, LogThrottle* log,
                   std::string_view refused, std::optional<boost::asio::ip::address> from) {
  const LimitFacts& f = facts(limit);
  ProxyStats::add(stats.*f.counter);
  if (!log) return;
  if (const auto suppressed = log->admit(std::chrono::steady_clock::now()))
    spdlog::warn("a worker {} {} {} ({}): {}{}{} ({} similar event(s) not logged; see {})", f.holds,
                 limits.*f.bound, f.what, f.flag, refused, from ? ", this one from " : "",
                 from ? from->to_string() : std::string(), *suppressed, f.counter_name);
}

}  // namespace dsproxy::proxy
