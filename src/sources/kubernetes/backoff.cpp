#include "sources/kubernetes/backoff.hpp"

#include <algorithm>
#include <cmath>

namespace dsproxy::sources::kubernetes {

std::chrono::milliseconds Backoff::next() {
  const double initial = static_cast<double>(policy_.initial.count());
  const double max = static_cast<double>(policy_.max.count());
  // Capped exponent: past ~60 doublings the double would overflow long after reaching max.
  const double base = std::min(max, initial * std::pow(policy_.factor, std::min<std::uint32_t>(attempt_, 60)));
  ++attempt_;
  std::uniform_real_distribution<double> spread(1.0 - policy_.jitter, 1.0 + policy_.jitter);
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(base * spread(random_))));
}

}  // namespace dsproxy::sources::kubernetes
