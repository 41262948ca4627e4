// DNS capture in the redirect rules: UDP and TCP port 53 from node pods TPROXY'd to the DNS
// proxy, both families, golden files like the TCP rules (DSPROXY_UPDATE_GOLDEN=1 rewrites them).

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "redirect/redirect_options.hpp"
#include "redirect/redirector.hpp"
#include "redirect/rule_renderer.hpp"
#include "redirect/vip_refusals.hpp"

namespace dsproxy::redirect {
namespace redirect_dns_capture_test {  // named: unity builds put several test files in one translation unit

using net::Family;
using net::IpAddress;

IpAddress ip(const char* text) { return IpAddress::parse(text).value(); }

std::vector<IpAddress> node_pods() {
  return {ip("10.244.0.12"), ip("fd00:10:244::1a"), ip("10.244.0.5"), ip("fd00:10:244::5")};
}

RedirectOptions with_dns() {
  RedirectOptions o;
  o.dns_capture = true;
  return o;
}

// The golden files are written by the code under test (DSPROXY_UPDATE_GOLDEN=1): a regression
// guard against unintended change, not proof the rules are right. The ordering tests below and
// the e2e DNS test check what the rules must do.
void expect_golden(const std::string& name, const std::string& actual) {
  const std::string path = std::string(DSPROXY_TEST_DATA_DIR) + "/redirect/" + name;
  if (const char* update = std::getenv("DSPROXY_UPDATE_GOLDEN"); update && std::string(update) == "1") {
    std::ofstream(path, std::ios::binary) << actual;
    return;
  }
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in) << "missing golden file " << path << " (DSPROXY_UPDATE_GOLDEN=1 writes it)";
  std::stringstream expected;
  expected << in.rdbuf();
  EXPECT_EQ(expected.str(), actual) << "differs from " << path;
}

TEST(RedirectDnsCapture, RulesMatchGoldenForBothFamilies) {
  expect_golden("dns_capture_v4.rules", render_iptables(Family::v4, with_dns()));
  expect_golden("dns_capture_v6.rules", render_iptables(Family::v6, with_dns()));
  expect_golden("dns_capture_print.sh", render_script(node_pods(), with_dns()));
}

TEST(RedirectDnsCapture, JumpsComeBeforeTheLocalReturnAndTheTcpCapture) {
  const std::string text = render_iptables(Family::v4, with_dns());
  const auto divert = text.find("-A DSPROXY_PREROUTING -p tcp -m socket --transparent -j DSPROXY_DIVERT\n");
  const auto udp = text.find("-A DSPROXY_PREROUTING -p udp -m udp --dport 53 -j DSPROXY_DNS\n");
  const auto tcp = text.find("-A DSPROXY_PREROUTING -p tcp -m tcp --dport 53 -j DSPROXY_DNS\n");
  const auto local = text.find("-A DSPROXY_PREROUTING -p tcp -m addrtype --dst-type LOCAL -j RETURN\n");
  const auto outbound = text.find("-A DSPROXY_PREROUTING -p tcp -j DSPROXY_OUTBOUND\n");
  ASSERT_NE(udp, std::string::npos) << text;
  ASSERT_NE(tcp, std::string::npos) << text;
  EXPECT_LT(divert, udp);
  EXPECT_LT(tcp, local);
  EXPECT_LT(tcp, outbound);
  EXPECT_NE(text.find("-A DSPROXY_DNS -p udp -m udp --dport 53 -m set --match-set DSPROXY_PODS4 src -j TPROXY "
                      "--on-port 15053 --on-ip 0.0.0.0 --tproxy-mark 0x1000/0x1000\n"),
            std::string::npos);
  const std::string v6 = render_iptables(Family::v6, with_dns());
  EXPECT_NE(v6.find("-A DSPROXY_DNS -p tcp -m tcp --dport 53 -m set --match-set DSPROXY_PODS6 src -j TPROXY "
                    "--on-port 15053 --on-ip :: --tproxy-mark 0x1000/0x1000\n"),
            std::string::npos);
}

TEST(RedirectDnsCapture, OffLeavesTheTcpRulesAsTheyWere) {
  EXPECT_EQ(render_iptables(Family::v4, RedirectOptions{}).find("--dport"), std::string::npos);
  EXPECT_EQ(render_iptables(Family::v4, RedirectOptions{}).find("DSPROXY_DNS"), std::string::npos);
  // Removal deletes the DNS chain whatever the options: an earlier run may have created it.
  EXPECT_NE(render_iptables_removal(Family::v4, RedirectOptions{}).find("-X DSPROXY_DNS\n"), std::string::npos);
}

TEST(RedirectDnsCapture, PortIsValidated) {
  RedirectOptions o = with_dns();
  o.dns_port = 0;
  EXPECT_EQ(validate(o).size(), 1u);
  o.dns_port = o.outbound_port;
  EXPECT_EQ(validate(o).size(), 1u);
  o.dns_capture = false;  // not used, not checked
  EXPECT_TRUE(validate(o).empty());
  EXPECT_EQ(chain_names(with_dns()).dns, "DSPROXY_DNS");
}

TEST(RedirectDnsCapture, TcpDnsToAVipWithoutEndpointsIsNotRefused) {
  // kube-dns has no endpoints dsproxy knows of, but its TCP port 53 is the DNS proxy's.
  const std::string with = render_refusal_rules(Family::v4, with_dns());
  const auto ret = with.find("-A DSPROXY_REFUSE -p tcp -m tcp --dport 53 -j RETURN\n");
  ASSERT_NE(ret, std::string::npos) << with;
  EXPECT_LT(ret, with.find("-A DSPROXY_REFUSE -p tcp -m set --match-set DSPROXY_VIPS4 dst -j REJECT"));
  EXPECT_EQ(render_refusal_rules(Family::v4, RedirectOptions{}).find("--dport 53"), std::string::npos);
}

}  // namespace redirect_dns_capture_test
}  // namespace dsproxy::redirect
