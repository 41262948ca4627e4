// Which families a node carries (issue 14 finding 4), and what `run` leaves out for one that is off.

#include "redirect/node_families.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>

#include "daemon/daemon.hpp"
#include "config/k8s_decoder.hpp"
#include "proxy/proxy_server.hpp"

namespace dsproxy::redirect {
namespace redirect_node_families_test {  // named: unity builds put several test files in one translation unit

using net::Family;

FamilyProbe v6_probe(int socket_errno, std::optional<std::string> all, std::optional<std::string> lo) {
  FamilyProbe p;
  p.socket_errno = socket_errno;
  p.all_disable_ipv6 = std::move(all);
  p.lo_disable_ipv6 = std::move(lo);
  return p;
}

TEST(NodeFamilies, Ipv6OnWhenSocketWorksAndNothingDisablesIt) {
  EXPECT_TRUE(judge(Family::v6, v6_probe(0, "0\n", "0\n")).on);
  EXPECT_TRUE(judge(Family::v6, v6_probe(0, "0", "0")).on);
  EXPECT_TRUE(judge(Family::v6, v6_probe(0, "0\n", "0\n")).reason.empty());
}

TEST(NodeFamilies, SysctlAllDisablesIpv6) {
  const auto s = judge(Family::v6, v6_probe(0, "1\n", "1\n"));
  EXPECT_FALSE(s.on);
  EXPECT_EQ(s.reason, "net.ipv6.conf.all.disable_ipv6=1");
}

TEST(NodeFamilies, LoopbackWithoutIpv6DisablesIt) {
  // all=0 but lo=1: the capture route `local ::/0 dev lo` cannot be added.
  const auto s = judge(Family::v6, v6_probe(0, "0\n", "1\n"));
  EXPECT_FALSE(s.on);
  EXPECT_NE(s.reason.find("net.ipv6.conf.lo.disable_ipv6=1"), std::string::npos) << s.reason;
}

TEST(NodeFamilies, KernelWithoutIpv6) {
  // ipv6.disable=1: no /proc/sys/net/ipv6 (nothing readable) and no AF_INET6 sockets.
  const auto s = judge(Family::v6, v6_probe(EAFNOSUPPORT, std::nullopt, std::nullopt));
  EXPECT_FALSE(s.on);
  EXPECT_NE(s.reason.find("ipv6.disable=1"), std::string::npos) << s.reason;
  // A sandbox that forbids the family is just as off.
  EXPECT_FALSE(judge(Family::v6, v6_probe(EACCES, "0", "0")).on);
}

TEST(NodeFamilies, NoEvidenceIsNotOff) {
  // Unreadable sysctls with a working socket prove nothing; so does a socket() that failed for
  // lack of descriptors or memory (the listeners will say so themselves).
  EXPECT_TRUE(judge(Family::v6, v6_probe(0, std::nullopt, std::nullopt)).on);
  for (int err : {EMFILE, ENFILE, ENOBUFS, ENOMEM}) EXPECT_TRUE(judge(Family::v6, v6_probe(err, "0", "0")).on) << err;
  EXPECT_TRUE(judge(Family::v6, v6_probe(0, "garbage", "")).on);
}

TEST(NodeFamilies, Ipv4IsOffOnlyWithoutSockets) {
  FamilyProbe p;
  EXPECT_TRUE(judge(Family::v4, p).on);
  p.all_disable_ipv6 = "1";  // IPv6's sysctls say nothing about IPv4
  EXPECT_TRUE(judge(Family::v4, p).on);
  p.socket_errno = EAFNOSUPPORT;
  EXPECT_FALSE(judge(Family::v4, p).on);
}

// probe() reads the sysctls from the directory it is given: a fake /proc/sys/net.
class FakeProcSysNet : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::temp_directory_path() / ("dsproxy-node-families-" + std::to_string(::getpid()));
    std::filesystem::remove_all(root_);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }
  void write(const std::string& iface, const std::string& value) {
    const auto dir = root_ / "ipv6" / "conf" / iface;
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "disable_ipv6") << value;
  }
  static bool host_has_ipv6_sockets() {
    const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0) return false;
    ::close(fd);
    return true;
  }
  std::filesystem::path root_;
};

TEST_F(FakeProcSysNet, ReadsTheSysctlFiles) {
  write("all", "1\n");
  write("lo", "1\n");
  const auto p = probe(Family::v6, root_.string());
  EXPECT_EQ(p.all_disable_ipv6, "1");
  EXPECT_EQ(p.lo_disable_ipv6, "1");
  const auto families = detect_node_families(root_.string());
  EXPECT_FALSE(families.v6.on);
  EXPECT_FALSE(families.has(Family::v6));
  if (host_has_ipv6_sockets()) {
    EXPECT_EQ(families.v6.reason, "net.ipv6.conf.all.disable_ipv6=1");
  }
}

TEST_F(FakeProcSysNet, MissingDirectoryLeavesTheSocketToDecide) {
  const auto p = probe(Family::v6, (root_ / "absent").string());
  EXPECT_FALSE(p.all_disable_ipv6.has_value());
  EXPECT_FALSE(p.lo_disable_ipv6.has_value());
  EXPECT_EQ(detect_node_families((root_ / "absent").string()).v6.on, host_has_ipv6_sockets());
}

TEST(NodeFamilies, OffFamilyIsDescribedInOneLine) {
  EXPECT_EQ(describe_off_families({}), "");
  NodeFamilies f;
  f.v6 = {false, "net.ipv6.conf.all.disable_ipv6=1"};
  const auto text = describe_off_families(f);
  EXPECT_EQ(text,
            "IPv6 is off on this node (net.ipv6.conf.all.disable_ipv6=1): serving IPv4 only; no IPv6 capture "
            "rules, listeners or DNS sockets. Restart dsproxy after turning IPv6 on.");
  EXPECT_EQ(text.find('\n'), std::string::npos);
  f.v4 = {false, "the kernel has no IPv4"};
  EXPECT_NE(describe_off_families(f).find("neither IPv4"), std::string::npos);
  f.v6 = {};
  EXPECT_NE(describe_off_families(f).find("IPv4 is off on this node"), std::string::npos);
}

TEST(NodeFamilies, DaemonOptionsLoseEverythingOfTheFamilyThatIsOff) {
  daemon::DaemonOptions defaults;
  NodeFamilies both;
  const auto same = daemon::restrict_to_families(defaults, both);
  EXPECT_EQ(same.proxy.bind_v4, "0.0.0.0");
  EXPECT_EQ(same.proxy.bind_v6, "::");
  EXPECT_EQ(same.dns.bind, (std::vector<std::string>{"0.0.0.0", "::"}));
  EXPECT_TRUE(same.redirect_options.ipv4 && same.redirect_options.ipv6 && same.admin_v4 && same.admin_v6);

  NodeFamilies no_v6;
  no_v6.v6 = {false, "net.ipv6.conf.all.disable_ipv6=1"};
  const auto v4_only = daemon::restrict_to_families(defaults, no_v6);
  EXPECT_EQ(v4_only.proxy.bind_v4, "0.0.0.0");
  EXPECT_EQ(v4_only.proxy.bind_v6, "");
  EXPECT_EQ(v4_only.dns.bind, std::vector<std::string>{"0.0.0.0"});
  EXPECT_TRUE(v4_only.redirect_options.ipv4);
  EXPECT_FALSE(v4_only.redirect_options.ipv6);
  EXPECT_TRUE(v4_only.admin_v4);
  EXPECT_FALSE(v4_only.admin_v6);

  NodeFamilies no_v4;
  no_v4.v4 = {false, "the kernel has no IPv4"};
  const auto v6_only = daemon::restrict_to_families(defaults, no_v4);
  EXPECT_EQ(v6_only.proxy.bind_v4, "");
  EXPECT_EQ(v6_only.proxy.bind_v6, "::");
  EXPECT_EQ(v6_only.dns.bind, std::vector<std::string>{"::"});
  EXPECT_FALSE(v6_only.redirect_options.ipv4);
  EXPECT_TRUE(v6_only.redirect_options.ipv6);
  EXPECT_FALSE(v6_only.admin_v4);
  EXPECT_TRUE(v6_only.admin_v6);
}

TEST(RedirectOptionsValidate, SomeFamilyMustBeOn) {
  RedirectOptions o;
  o.ipv6 = false;
  EXPECT_TRUE(validate(o).empty());
  o.ipv4 = false;
  ASSERT_EQ(validate(o).size(), 1u);
  EXPECT_NE(validate(o)[0].find("neither IPv4 nor IPv6"), std::string::npos);
  EXPECT_EQ(families(o).size(), 0u);
  o.ipv6 = true;
  EXPECT_EQ(families(o), std::vector<Family>{Family::v6});
}

// What restrict_to_families hands the proxy: an empty bind address opens no listener of that
// family (on a kernel booted with ipv6.disable=1 a [::] bind fails outright, so it must not even
// be tried). Hermetic: loopback, kernel-chosen ports, no TPROXY.
int connect_errno(int family, std::uint16_t port) {
  const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  int rc;
  if (family == AF_INET) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  } else {
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    a.sin6_addr = in6addr_loopback;
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  const int err = rc == 0 ? 0 : errno;
  ::close(fd);
  return err;
}

class OneFamilyProxy : public ::testing::Test {
 protected:
  void SetUp() override {
    store.publish(snapshot::ClusterSnapshot::build(config::decode_objects(""), {"n1", "cluster.local"}));
    options.ports = {0, 0};
    options.transparent = false;
    options.workers = 2;  // SO_REUSEPORT groups: the port bookkeeping must hold past the first worker
  }
  snapshot::SnapshotStore store;
  proxy::ProxyStats stats;
  proxy::ProxyOptions options;
};

TEST_F(OneFamilyProxy, Ipv6OffOpensIpv4ListenersOnly) {
  options.bind_v6.clear();
  proxy::ProxyServer server(options, store, stats);
  server.start();
  const auto ports = server.bound_ports();
  ASSERT_NE(ports.outbound, 0);
  ASSERT_NE(ports.inbound, 0);
  EXPECT_EQ(connect_errno(AF_INET, ports.outbound), 0);
  EXPECT_EQ(connect_errno(AF_INET, ports.inbound), 0);
  EXPECT_EQ(connect_errno(AF_INET6, ports.outbound), ECONNREFUSED);
  EXPECT_EQ(connect_errno(AF_INET6, ports.inbound), ECONNREFUSED);
  server.drain(std::chrono::seconds(1));
}

TEST_F(OneFamilyProxy, Ipv4OffOpensIpv6ListenersOnly) {
  options.bind_v4.clear();
  proxy::ProxyServer server(options, store, stats);
  server.start();
  const auto ports = server.bound_ports();
  ASSERT_NE(ports.outbound, 0);
  ASSERT_NE(ports.inbound, 0);
  EXPECT_EQ(connect_errno(AF_INET6, ports.outbound), 0);
  EXPECT_EQ(connect_errno(AF_INET6, ports.inbound), 0);
  EXPECT_EQ(connect_errno(AF_INET, ports.outbound), ECONNREFUSED);
  EXPECT_EQ(connect_errno(AF_INET, ports.inbound), ECONNREFUSED);
  server.drain(std::chrono::seconds(1));
}

TEST_F(OneFamilyProxy, NoFamilyAtAllIsRefused) {
  options.bind_v4.clear();
  options.bind_v6.clear();
  proxy::ProxyServer server(options, store, stats);
  EXPECT_THROW(server.start(), std::invalid_argument);
}

}  // namespace redirect_node_families_test
}  // namespace dsproxy::redirect
