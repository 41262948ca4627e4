#pragma once
// Passive outlier detection: an endpoint address that fails to connect N times in a row is
// ejected for a while, longer each time it is ejected again (Envoy's consecutive-5xx idea applied
// to connect failures, with its base-ejection-time arithmetic).

#include <chrono>
#include <cstdint>

#include "proxy/endpoint_states.hpp"

namespace dsproxy::proxy {

using Clock = std::chrono::steady_clock;

struct OutlierOptions {
  std::uint32_t consecutive_failures = 5;
  std::chrono::milliseconds base_ejection{std::chrono::seconds(30)};
  std::chrono::milliseconds max_ejection{std::chrono::seconds(300)};
};

class OutlierDetector {
 public:
  explicit OutlierDetector(OutlierOptions options = {}) : options_(options) {}

  bool is_ejected(const EndpointState& state, Clock::time_point now) const;
  // A connect that succeeded: the failure streak ends.
  void record_success(EndpointState& state) const;
  // A connect that failed (refused, unreachable, timed out). Returns true when this failure
  // ejected the endpoint, for `base_ejection x times ejected` (capped at max_ejection).
  bool record_failure(EndpointState& state, Clock::time_point now) const;

  const OutlierOptions& options() const { return options_; }

 private:
  OutlierOptions options_;
};

}  // namespace dsproxy::proxy
