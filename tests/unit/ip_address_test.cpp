#include <gtest/gtest.h>

#include <unordered_set>

#include "net/ip_address.hpp"

namespace dsproxy::net {
namespace {

TEST(IpAddress, ParsesIpv4) {
  auto a = IpAddress::parse("10.244.0.26");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->family(), Family::v4);
  EXPECT_TRUE(a->is_v4());
  EXPECT_EQ(a->host_prefix(), 32);
  EXPECT_EQ(a->bytes()[0], 10);
  EXPECT_EQ(a->bytes()[3], 26);
  EXPECT_EQ(a->bytes()[4], 0);  // the unused tail stays zero, so comparisons are by value
  EXPECT_EQ(a->to_string(), "10.244.0.26");
}

TEST(IpAddress, ParsesIpv6AndPrintsCanonically) {
  auto a = IpAddress::parse("FD00:0010:0244:0000:0000:0000:0000:001A");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->family(), Family::v6);
  EXPECT_EQ(a->host_prefix(), 128);
  EXPECT_EQ(a->to_string(), "fd00:10:244::1a");
  EXPECT_EQ(*a, *IpAddress::parse("fd00:10:244::1a"));
  EXPECT_EQ(IpAddress::parse("::1")->to_string(), "::1");
  EXPECT_EQ(IpAddress::parse("::")->to_string(), "::");
}

TEST(IpAddress, V4MappedIsCanonicalisedToV4) {
  auto a = IpAddress::parse("::ffff:10.244.0.5");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->family(), Family::v4);
  EXPECT_EQ(*a, *IpAddress::parse("10.244.0.5"));
  EXPECT_EQ(a->to_string(), "10.244.0.5");

  std::array<std::uint8_t, 16> mapped{};
  mapped[10] = mapped[11] = 0xff;
  mapped[12] = 192;
  mapped[13] = 0;
  mapped[14] = 2;
  mapped[15] = 1;
  EXPECT_EQ(IpAddress::v6(mapped), IpAddress::v4({192, 0, 2, 1}));
  // Only ::ffff:0:0/96 is mapped; the deprecated v4-compatible ::a.b.c.d stays IPv6.
  EXPECT_EQ(IpAddress::parse("::10.0.0.1")->family(), Family::v6);
}

TEST(IpAddress, RejectsInvalidInput) {
  for (const char* bad : {"", "10.0.0", "10.0.0.256", "10.0.0.1.2", "1.2.3.4 ", " 1.2.3.4", "fd00::zz", "fd00:::1",
                          "1:2:3:4:5:6:7:8:9", "[fd00::1]", "fd00::1/64", "10.0.0.1/32", "example.com", "None",
                          "fd00::1%eth0", "0x0a000001"}) {
    EXPECT_FALSE(IpAddress::parse(bad).has_value()) << '"' << bad << '"';
  }
  // Longer than any address text: must not overflow the parse buffer.
  EXPECT_FALSE(IpAddress::parse(std::string(200, '1')).has_value());
}

TEST(IpAddress, FamilyNamesMatchKubernetes) {
  EXPECT_EQ(to_string(Family::v4), "IPv4");
  EXPECT_EQ(to_string(Family::v6), "IPv6");
  EXPECT_EQ(other(Family::v4), Family::v6);
  EXPECT_EQ(other(Family::v6), Family::v4);
}

TEST(IpAddress, OrdersIpv4BeforeIpv6) {
  EXPECT_LT(*IpAddress::parse("255.255.255.255"), *IpAddress::parse("::"));
  EXPECT_LT(*IpAddress::parse("10.0.0.2"), *IpAddress::parse("10.0.0.10"));
}

TEST(SocketAddress, ToStringBracketsIpv6) {
  EXPECT_EQ((SocketAddress{*IpAddress::parse("10.244.0.19"), 9000}).to_string(), "10.244.0.19:9000");
  EXPECT_EQ((SocketAddress{*IpAddress::parse("fd00::1"), 80}).to_string(), "[fd00::1]:80");
}

TEST(SocketAddress, IstioStringIsUnbracketed) {
  // What `istioctl proxy-config endpoints` prints, ambiguity and all.
  EXPECT_EQ((SocketAddress{*IpAddress::parse("fd00:10:244::1a"), 9000}).to_istio_string(), "fd00:10:244::1a:9000");
  EXPECT_EQ((SocketAddress{*IpAddress::parse("10.244.0.26"), 9000}).to_istio_string(), "10.244.0.26:9000");
}

TEST(SocketAddress, HashesDistinguishPortAndFamily) {
  std::unordered_set<SocketAddress, SocketAddressHash> set;
  set.insert({*IpAddress::parse("10.0.0.1"), 80});
  set.insert({*IpAddress::parse("10.0.0.1"), 81});
  set.insert({*IpAddress::parse("::ffff:10.0.0.1"), 80});  // the same as the first
  set.insert({*IpAddress::parse("::a00:1"), 80});          // same low bytes, other family
  EXPECT_EQ(set.size(), 3u);
  std::unordered_set<IpAddress, IpAddressHash> ips{*IpAddress::parse("fd00::1"), *IpAddress::parse("fd00::1")};
  EXPECT_EQ(ips.size(), 1u);
}

}  // namespace
TEST(SocketAddress, ParsesTheFormsItPrints) {
  for (const char* text : {"10.0.0.1:80", "[fd00::1]:8080", "0.0.0.0:65535", "[::]:1"}) {
    const auto a = SocketAddress::parse(text);
    ASSERT_TRUE(a) << text;
    EXPECT_EQ(a->to_string(), text);
  }
  EXPECT_TRUE(SocketAddress::parse("[::ffff:10.0.0.1]:80")->ip.is_v4());  // canonical, like IpAddress
  EXPECT_EQ(SocketAddress::parse("127.0.0.1:0", true)->port, 0);
}

TEST(SocketAddress, RejectsAmbiguousOrIncompleteInput) {
  for (const char* text : {"", "10.0.0.1", "10.0.0.1:", "fd00::1:80", "[fd00::1]", "[fd00::1]80", "[10.0.0.1]:80",
                           "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:8o", "10.0.0.1:+80", "host:80", "[fd00::1:80"})
    EXPECT_FALSE(SocketAddress::parse(text)) << text;
}

}  // namespace dsproxy::net

namespace dsproxy::net {
namespace {

// Issue 14, finding 1: which addresses are never an upstream of a Service. A table, both families.
TEST(IpAddressScope, ClassifiesEverySpecialPurposeBlock) {
  const std::pair<const char*, AddressScope> cases[] = {
      {"10.244.0.5", AddressScope::global},       {"fd00:10:244::5", AddressScope::global},
      {"2001:db8::1", AddressScope::global},      {"8.8.8.8", AddressScope::global},
      {"127.0.0.1", AddressScope::loopback},      {"127.255.0.9", AddressScope::loopback},
      {"::1", AddressScope::loopback},            {"::ffff:127.0.0.1", AddressScope::loopback},
      {"0.0.0.0", AddressScope::unspecified},     {"::", AddressScope::unspecified},
      {"::ffff:0.0.0.0", AddressScope::unspecified}, {"0.1.2.3", AddressScope::this_network},
      {"169.254.169.254", AddressScope::link_local}, {"fe80::1", AddressScope::link_local},
      {"febf::1", AddressScope::link_local},      {"fec0::1", AddressScope::global},
      {"224.0.0.1", AddressScope::multicast},     {"239.255.255.250", AddressScope::multicast},
      {"ff02::1", AddressScope::multicast},       {"255.255.255.255", AddressScope::broadcast},
      {"::127.0.0.1", AddressScope::v4_compatible}, {"::10.0.0.1", AddressScope::v4_compatible},
      {"223.255.255.255", AddressScope::global},  {"240.0.0.1", AddressScope::global},
  };
  for (const auto& [text, want] : cases) {
    const auto a = IpAddress::parse(text);
    ASSERT_TRUE(a) << text;
    EXPECT_EQ(a->scope(), want) << text << " is " << to_string(a->scope()) << ", want " << to_string(want);
  }
}

}  // namespace
}  // namespace dsproxy::net
