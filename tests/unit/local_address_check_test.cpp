// The loop guard's question put to the real kernel of the test's network namespace: only
// netlink route lookups, no packet is sent.

#include "proxy/local_address_check.hpp"

#include <gtest/gtest.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <cstring>

namespace dsproxy::proxy {
namespace local_address_check_test {  // named: unity builds put several test files in one translation unit

net::IpAddress ip(const char* text) { return *net::IpAddress::parse(text); }

TEST(KernelLocalAddressCheck, LoopbackAndWildcardsAreLocal) {
  KernelLocalAddressCheck check;
  // All of 127.0.0.0/8 is a local route, not just the address on lo.
  for (const char* a : {"127.0.0.1", "127.0.0.53", "127.255.255.254", "::1"}) {
    EXPECT_EQ(check.lookup(ip(a)), std::optional<bool>(true)) << a;
    EXPECT_TRUE(check.is_local(ip(a))) << a;
  }
  EXPECT_TRUE(check.is_local(ip("0.0.0.0")));
  EXPECT_TRUE(check.is_local(ip("::")));
}

TEST(KernelLocalAddressCheck, RemoteAddressesAreNot) {
  KernelLocalAddressCheck check(0x539);  // with the upstream mark, as the workers ask
  // Documentation ranges: routed out by a default route, or not at all; never local.
  for (const char* a : {"192.0.2.1", "198.51.100.7", "2001:db8::1"}) {
    EXPECT_EQ(check.lookup(ip(a)), std::optional<bool>(false)) << a;
    EXPECT_FALSE(check.is_local(ip(a))) << a;
  }
}

TEST(KernelLocalAddressCheck, EveryInterfaceAddressIsLocal) {
  ifaddrs* list = nullptr;
  ASSERT_EQ(::getifaddrs(&list), 0);
  KernelLocalAddressCheck check;
  int checked = 0;
  for (auto* i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr) continue;
    std::optional<net::IpAddress> a;
    if (i->ifa_addr->sa_family == AF_INET) {
      std::array<std::uint8_t, 4> b;
      std::memcpy(b.data(), &reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr, 4);
      a = net::IpAddress::v4(b);
    } else if (i->ifa_addr->sa_family == AF_INET6) {
      const auto* s6 = reinterpret_cast<const sockaddr_in6*>(i->ifa_addr);
      if (IN6_IS_ADDR_LINKLOCAL(&s6->sin6_addr)) continue;  // needs a scope to mean anything
      std::array<std::uint8_t, 16> b;
      std::memcpy(b.data(), &s6->sin6_addr, 16);
      a = net::IpAddress::v6(b);
    }
    if (!a) continue;
    EXPECT_TRUE(check.is_local(*a)) << a->to_string() << " on " << i->ifa_name;
    ++checked;
  }
  ::freeifaddrs(list);
  EXPECT_GE(checked, 1);  // lo's 127.0.0.1 at least
}

TEST(KernelLocalAddressCheck, ManyLookupsOnOneSocket) {
  // The worker's socket is reused: answers must keep matching their questions.
  KernelLocalAddressCheck check;
  for (int i = 0; i < 500; ++i) {
    ASSERT_EQ(check.lookup(ip(i % 2 ? "127.0.0.1" : "192.0.2.1")), std::optional<bool>(i % 2 == 1)) << i;
  }
}

}  // namespace local_address_check_test
}  // namespace dsproxy::proxy
