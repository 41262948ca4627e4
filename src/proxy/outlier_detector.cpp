#include "proxy/outlier_detector.hpp"

#include <algorithm>

namespace dsproxy::proxy {

namespace {
std::int64_t ticks(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
}  // namespace

bool OutlierDetector::is_ejected(const EndpointState& state, Clock::time_point now) const {
  return state.ejected_until_ns.load(std::memory_order_relaxed) > ticks(now);
}

void OutlierDetector::record_success(EndpointState& state) const {
  state.consecutive_failures.store(0, std::memory_order_relaxed);
}

bool OutlierDetector::record_failure(EndpointState& state, Clock::time_point now) const {
  const auto failures = state.consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1;
  // Exactly one of the workers that race past the threshold performs the ejection.
  if (failures != options_.consecutive_failures) return false;
  state.consecutive_failures.store(0, std::memory_order_relaxed);
  // The multiplier is forgiven once the endpoint has stayed in service for max_ejection since
  // its last ejection ended: a flap long ago should not cost a long ejection today.
  const auto last_end = state.ejected_until_ns.load(std::memory_order_relaxed);
  if (last_end != 0 && ticks(now) - last_end > std::chrono::nanoseconds(options_.max_ejection).count())
    state.ejections.store(0, std::memory_order_relaxed);
  const auto times = state.ejections.fetch_add(1, std::memory_order_relaxed) + 1;
  const auto duration = std::min<std::chrono::milliseconds>(options_.base_ejection * times, options_.max_ejection);
  state.ejected_until_ns.store(ticks(now + duration), std::memory_order_relaxed);
  return true;
}

}  // namespace dsproxy::proxy
