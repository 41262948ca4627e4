#pragma once
// Exponential backoff with jitter for retrying the API server: without the doubling, 5,000 nodes
// retrying a failing API server every 200 ms are 25,000 requests a second against it; without
// the jitter, the nodes that failed together retry together. Pure (the caller owns the timer and
// the random source), so it is tested without waiting.

#include <chrono>
#include <cstdint>
#include <random>

namespace dsproxy::sources::kubernetes {

struct BackoffPolicy {
  std::chrono::milliseconds initial{200};
  std::chrono::milliseconds max{30'000};
  double factor = 2.0;
  double jitter = 0.2;  // each delay is drawn uniformly from [d·(1-jitter), d·(1+jitter)]
};

class Backoff {
 public:
  explicit Backoff(BackoffPolicy policy = {}, std::uint64_t seed = std::random_device{}())
      : policy_(policy), random_(seed) {}

  // The delay before the next retry; each call doubles the base, up to max.
  std::chrono::milliseconds next();
  // After a success: the next failure waits `initial` again.
  void reset() { attempt_ = 0; }
  std::uint32_t attempts() const { return attempt_; }

 private:
  BackoffPolicy policy_;
  std::mt19937_64 random_;
  std::uint32_t attempt_ = 0;
};

}  // namespace dsproxy::sources::kubernetes
