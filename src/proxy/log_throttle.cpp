#include "proxy/log_throttle.hpp"

namespace dsproxy::proxy {

std::optional<std::uint64_t> LogThrottle::admit(Clock::time_point now) {
  const std::int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
  std::int64_t next = next_ns_.load(std::memory_order_relaxed);
  // Exactly one of the workers racing past the deadline wins the exchange and logs.
  if (now_ns >= next &&
      next_ns_.compare_exchange_strong(next, now_ns + std::chrono::nanoseconds(interval_).count(),
                                       std::memory_order_relaxed))
    return suppressed_.exchange(0, std::memory_order_relaxed);
  suppressed_.fetch_add(1, std::memory_order_relaxed);
  return std::nullopt;
}

}  // namespace dsproxy::proxy
