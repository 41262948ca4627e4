#include <gtest/gtest.h>

#include "hbone/authority.hpp"

namespace dsproxy::hbone {
namespace hbone_authority_test {  // named: unity builds put several test files in one translation unit

namespace ip = boost::asio::ip;

TEST(HboneAuthority, ParsesIpv4AndBracketedIpv6) {
  EXPECT_EQ(parse_authority("10.1.2.3:8080"), ip::tcp::endpoint(ip::make_address("10.1.2.3"), 8080));
  EXPECT_EQ(parse_authority("[fd00::1]:443"), ip::tcp::endpoint(ip::make_address("fd00::1"), 443));
  // An IPv4-mapped IPv6 address names the IPv4 pod.
  EXPECT_EQ(parse_authority("[::ffff:10.0.0.1]:80"), ip::tcp::endpoint(ip::make_address("10.0.0.1"), 80));
}

TEST(HboneAuthority, RejectsWhatIsNotALiteralSocketAddress) {
  for (const char* bad : {"", "10.0.0.1", "10.0.0.1:", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:80x",
                          "example.com:80", "fd00::1:80", "[fd00::1]", "[fd00::1]80", "[fd00::1%eth0]:80",
                          "[10.0.0.1]:80", " 10.0.0.1:80", "10.0.0.1:+80", "10.0.0.1:-1"})
    EXPECT_FALSE(parse_authority(bad)) << bad;
}

TEST(HboneAuthority, FormatsAsZtunnelDoes) {
  EXPECT_EQ(format_authority({ip::make_address("10.1.2.3"), 8080}), "10.1.2.3:8080");
  EXPECT_EQ(format_authority({ip::make_address("fd00::1"), 443}), "[fd00::1]:443");
  EXPECT_EQ(format_authority({ip::make_address("::ffff:10.0.0.1"), 80}), "10.0.0.1:80");
  EXPECT_EQ(format_authority({ip::make_address("255.255.255.255"), 65535}), "255.255.255.255:65535");
  EXPECT_EQ(format_authority({ip::make_address("0.0.0.0"), 0}), "0.0.0.0:0");
  EXPECT_EQ(format_authority({ip::make_address("192.168.100.9"), 15008}), "192.168.100.9:15008");
}

TEST(HboneAuthority, ForwardedCarriesTheClientAddress) {
  ip::tcp::endpoint v4(ip::make_address("10.0.0.9"), 5555), v6(ip::make_address("fd00::9"), 5555);
  EXPECT_EQ(format_forwarded(v4), "for=\"10.0.0.9:5555\"");
  EXPECT_EQ(format_forwarded(v6, "echo.default.svc.cluster.local"),
            "for=\"[fd00::9]:5555\";host=echo.default.svc.cluster.local");
  EXPECT_EQ(parse_forwarded_for(format_forwarded(v6, "x")), v6);
  EXPECT_EQ(parse_forwarded_for("host=a; For=\"10.0.0.9:5555\", for=1.1.1.1:1"), v4);
  EXPECT_FALSE(parse_forwarded_for("for=unknown"));
  EXPECT_FALSE(parse_forwarded_for("host=a"));
}

TEST(HboneAuthority, BaggageRoundTripsAndSkipsEmptyFields) {
  Baggage b{.cluster = "Kubernetes", .ns = "ns1", .workload_type = "deployment", .workload_name = "web",
            .service_name = "web", .service_version = "v2", .region = "", .zone = "z1"};
  auto text = format_baggage(b);
  EXPECT_EQ(text,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns1,k8s.deployment.name=web,service.name=web,"
            "service.version=v2,cloud.availability_zone=z1");
  EXPECT_EQ(parse_baggage(text), b);
  EXPECT_EQ(format_baggage({}), "");
  auto p = parse_baggage("k8s.pod.name=p1 , unknown=1,novalue,k8s.namespace.name=n;prop=1");
  EXPECT_EQ(p.workload_type, "pod");
  EXPECT_EQ(p.workload_name, "p1");
  EXPECT_EQ(p.ns, "n");
}

}  // namespace hbone_authority_test
}  // namespace dsproxy::hbone
