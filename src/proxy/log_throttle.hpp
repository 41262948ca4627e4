#pragma once
// At most one log line per interval for an event that can repeat once per connection: under a
// flood (descriptor exhaustion, a loop) the log would otherwise become part of the problem. The
// line that is let through says how many were held back. Shared by the workers: lock-free.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>

namespace dsproxy::proxy {

class LogThrottle {
 public:
  using Clock = std::chrono::steady_clock;
  explicit LogThrottle(std::chrono::milliseconds interval = std::chrono::seconds(1)) : interval_(interval) {}

  // nullopt: stay quiet. Otherwise log, and mention the returned number of events suppressed
  // since the last line.
  std::optional<std::uint64_t> admit(Clock::time_point now);

 private:
  std::chrono::milliseconds interval_;
  std::atomic<std::int64_t> next_ns_{0};
  std::atomic<std::uint64_t> suppressed_{0};
};

}  // namespace dsproxy::proxy
