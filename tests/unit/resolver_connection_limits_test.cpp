// The TCP DNS connection caps (issue 14, finding 7): one client cannot take every slot.

#include <gtest/gtest.h>

#include "resolver/connection_limits.hpp"

namespace dsproxy::resolver {
namespace resolver_connection_limits_test {  // named: unity builds put several test files in one translation unit

const net::IpAddress kPod = *net::IpAddress::parse("10.244.0.5");
const net::IpAddress kOther = *net::IpAddress::parse("10.244.0.26");
const net::IpAddress kOther6 = *net::IpAddress::parse("fd00:10:244::1a");
using V = ConnectionLimits::Verdict;

TEST(ResolverConnectionLimits, OneClientGetsItsShareAndTheOthersStillGetIn) {
  ConnectionLimits limits(10, 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(limits.acquire(kPod), V::accepted);
  for (int i = 0; i < 300; ++i) EXPECT_EQ(limits.acquire(kPod), V::over_client);
  EXPECT_EQ(limits.of(kPod), 3u);
  EXPECT_EQ(limits.total(), 3u);
  EXPECT_EQ(limits.acquire(kOther), V::accepted);
  EXPECT_EQ(limits.acquire(kOther6), V::accepted);  // another address, another share
  EXPECT_EQ(limits.total(), 5u);
}

TEST(ResolverConnectionLimits, ReleaseGivesTheSlotBackAndForgetsIdleClients) {
  ConnectionLimits limits(10, 2);
  EXPECT_EQ(limits.acquire(kPod), V::accepted);
  EXPECT_EQ(limits.acquire(kPod), V::accepted);
  EXPECT_EQ(limits.acquire(kPod), V::over_client);
  limits.release(kPod);
  EXPECT_EQ(limits.acquire(kPod), V::accepted);
  limits.release(kPod);
  limits.release(kPod);
  EXPECT_EQ(limits.of(kPod), 0u);
  EXPECT_EQ(limits.total(), 0u);
  EXPECT_EQ(limits.clients(), 0u);  // no entry per address ever seen
  limits.release(kOther);           // never acquired: ignored, nothing underflows
  EXPECT_EQ(limits.total(), 0u);
}

TEST(ResolverConnectionLimits, TheTotalCapStillHolds) {
  ConnectionLimits limits(4, 3);
  EXPECT_EQ(limits.acquire(kPod), V::accepted);
  EXPECT_EQ(limits.acquire(kPod), V::accepted);
  EXPECT_EQ(limits.acquire(kPod), V::accepted);
  EXPECT_EQ(limits.acquire(kOther), V::accepted);
  EXPECT_EQ(limits.acquire(kOther), V::over_total);
  EXPECT_EQ(limits.acquire(kOther6), V::over_total);
  EXPECT_EQ(limits.clients(), 2u);  // a refused client leaves no entry
}

TEST(ResolverConnectionLimits, ZeroPerClientRefusesEveryone) {
  ConnectionLimits limits(4, 0);
  EXPECT_EQ(limits.acquire(kPod), V::over_client);
  EXPECT_EQ(limits.clients(), 0u);
}

}  // namespace resolver_connection_limits_test
}  // namespace dsproxy::resolver
