#include "proxy/outlier_detector.hpp"

#include <gtest/gtest.h>

namespace dsproxy::proxy {
namespace outlier_detector_test {  // named: unity builds put several test files in one translation unit

using namespace std::chrono_literals;

TEST(OutlierDetector, EjectsAfterConsecutiveFailuresForGrowingIntervals) {
  OutlierDetector d;  // 5 failures, 30 s base, 300 s max
  EndpointState st;
  auto t = Clock::time_point{} + 1000s;
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(d.record_failure(st, t));
  EXPECT_TRUE(d.record_failure(st, t));
  EXPECT_TRUE(d.is_ejected(st, t + 29s));
  EXPECT_FALSE(d.is_ejected(st, t + 30s));
  // Ejected again soon after: twice the base.
  t += 31s;
  for (int i = 0; i < 4; ++i) d.record_failure(st, t);
  EXPECT_TRUE(d.record_failure(st, t));
  EXPECT_TRUE(d.is_ejected(st, t + 59s));
  EXPECT_FALSE(d.is_ejected(st, t + 60s));
}

TEST(OutlierDetector, SuccessEndsTheStreak) {
  OutlierDetector d;
  EndpointState st;
  auto t = Clock::time_point{} + 1000s;
  for (int i = 0; i < 4; ++i) d.record_failure(st, t);
  d.record_success(st);
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(d.record_failure(st, t));
  EXPECT_FALSE(d.is_ejected(st, t));
}

TEST(OutlierDetector, EjectionTimeIsCappedAndForgivenAfterAQuietSpell) {
  OutlierDetector d({.consecutive_failures = 1, .base_ejection = 100s, .max_ejection = 250s});
  EndpointState st;
  auto t = Clock::time_point{} + 1000s;
  d.record_failure(st, t);  // 100 s
  t += 101s;
  d.record_failure(st, t);  // 200 s
  t += 201s;
  d.record_failure(st, t);  // 300 s, capped to 250 s
  EXPECT_TRUE(d.is_ejected(st, t + 249s));
  EXPECT_FALSE(d.is_ejected(st, t + 250s));
  t += 250s + 251s;  // in service for longer than max_ejection
  d.record_failure(st, t);
  EXPECT_FALSE(d.is_ejected(st, t + 100s)) << "back to the base ejection time";
}

}  // namespace outlier_detector_test
}  // namespace dsproxy::proxy
