// Golden-file and argv tests of the redirect rule text. Regenerate the golden files after an
// intended change with DSPROXY_UPDATE_GOLDEN=1 and review the diff.
//
// The golden files (tests/unit/data/redirect/*.rules, *.sh) are written by the code under test:
// they are regression guards that catch any unintended change, not proof that the rules are
// right. What the rules must do is checked independently of them by CaptureRulesHoldTheirProperties
// below, and on a real kernel by the end-to-end tests.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <tuple>
#include <vector>

#include "redirect/redirect_options.hpp"
#include "redirect/rule_renderer.hpp"

namespace dsproxy::redirect {
namespace redirect_rule_renderer_test {  // named: unity builds put several test files in one translation unit

using net::Family;
using net::IpAddress;

IpAddress ip(const char* text) {
  auto parsed = IpAddress::parse(text);
  EXPECT_TRUE(parsed.has_value()) << text;
  return parsed.value_or(IpAddress{});
}

// Unsorted, with a duplicate and a v4-mapped address (which is IPv4), both families mixed.
std::vector<IpAddress> node_pods() {
  return {ip("10.244.0.12"), ip("fd00:10:244::1a"), ip("10.244.0.5"), ip("::ffff:10.244.0.7"),
          ip("fd00:10:244::5"), ip("10.244.0.5")};
}

std::string golden_path(const std::string& name) {
  return std::string(DSPROXY_TEST_DATA_DIR) + "/redirect/" + name;
}

void expect_golden(const std::string& name, const std::string& actual) {
  const std::string path = golden_path(name);
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

std::vector<std::string> lines_starting(const std::string& text, const std::string& prefix) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.starts_with(prefix)) out.push_back(line);
  return out;
}

// What the capture must do, stated from the design (README "How it works") rather than read back
// from the renderer: the proxy's own marked traffic leaves first; every node pod address of the
// family (a member of the family's pods set, once; a v4-mapped address is IPv4) is diverted to
// 15001 as a source and to 15006 as a destination, with the capture mark, by ONE rule each
// whatever the number of pods; and nothing of the other family appears.
TEST(RedirectRuleRenderer, CaptureRulesHoldTheirProperties) {
  struct Expect {
    Family family;
    std::vector<std::string> pods;  // by hand, not from addresses_of
    std::string set, on_ip, other_family_sign;
  };
  for (const Expect& e : {Expect{Family::v4, {"10.244.0.5", "10.244.0.7", "10.244.0.12"}, "DSPROXY_PODS4", "0.0.0.0", ":"},
                          Expect{Family::v6, {"fd00:10:244::5", "fd00:10:244::1a"}, "DSPROXY_PODS6", "::", "10.244."}}) {
    const std::string text = render_iptables(e.family, RedirectOptions{});
    SCOPED_TRACE(text);
    const auto prerouting = lines_starting(text, "-A DSPROXY_PREROUTING ");
    ASSERT_FALSE(prerouting.empty());
    EXPECT_EQ(prerouting.front(), "-A DSPROXY_PREROUTING -m mark --mark 0x539/0xfff -j RETURN");

    for (const auto& [chain, direction, port] : {std::tuple{"DSPROXY_OUTBOUND", "src", "15001"},
                                                 std::tuple{"DSPROXY_INBOUND", "dst", "15006"}}) {
      const auto rules = lines_starting(text, std::string("-A ") + chain + " ");
      ASSERT_EQ(rules.size(), 1u) << chain;
      std::istringstream words(rules[0]);
      std::vector<std::string> w{std::istream_iterator<std::string>(words), {}};
      EXPECT_EQ(std::vector(w.begin() + 2, w.end()),
                (std::vector<std::string>{"-p", "tcp", "-m", "set", "--match-set", e.set, direction, "-j", "TPROXY",
                                          "--on-port", port, "--on-ip", e.on_ip, "--tproxy-mark", "0x1000/0x1000"}))
          << rules[0];
    }
    for (const auto& line : lines_starting(text, "-A "))
      EXPECT_EQ(line.find(e.other_family_sign), std::string::npos) << "other family in: " << line;

    // The set: filled aside and swapped in, each pod once.
    const std::string fill = render_pods_fill(e.family, node_pods(), RedirectOptions{});
    SCOPED_TRACE(fill);
    std::vector<std::string> added;
    for (const auto& l : lines_starting(fill, "add " + e.set + "_NEXT ")) added.push_back(l.substr(l.rfind(' ') + 1));
    std::sort(added.begin(), added.end());
    std::vector<std::string> want = e.pods;
    std::sort(want.begin(), want.end());
    EXPECT_EQ(added, want);
    EXPECT_EQ(lines_starting(fill, "swap "), (std::vector<std::string>{"swap " + e.set + "_NEXT " + e.set}));
    EXPECT_EQ(fill.find(e.other_family_sign == ":" ? "fd00" : "10.244."), std::string::npos);
  }
}

TEST(RedirectRuleRenderer, OutboundInboundV4MatchesGolden) {
  expect_golden("outbound_inbound_v4.rules", render_iptables(Family::v4, RedirectOptions{}));
}

TEST(RedirectRuleRenderer, OutboundInboundV6MatchesGolden) {
  expect_golden("outbound_inbound_v6.rules", render_iptables(Family::v6, RedirectOptions{}));
}

TEST(RedirectRuleRenderer, PodsFillMatchesGolden) {
  expect_golden("pods_fill_v4.ipset", render_pods_fill(Family::v4, node_pods(), RedirectOptions{}));
  expect_golden("pods_fill_v6.ipset", render_pods_fill(Family::v6, node_pods(), RedirectOptions{}));
}

TEST(RedirectRuleRenderer, RemovalMatchesGoldenForBothFamilies) {
  expect_golden("removal.rules", render_iptables_removal(Family::v4, RedirectOptions{}));
  EXPECT_EQ(render_iptables_removal(Family::v4, RedirectOptions{}),
            render_iptables_removal(Family::v6, RedirectOptions{}));
}

TEST(RedirectRuleRenderer, PrintScriptMatchesGolden) {
  expect_golden("print.sh", render_script(node_pods(), RedirectOptions{}));
}

TEST(RedirectRuleRenderer, NoPodsGivesAnEmptySetNotFewerRules) {
  EXPECT_EQ(render_pods_fill(Family::v6, {ip("10.0.0.1")}, RedirectOptions{}),
            "create DSPROXY_PODS6 hash:ip family inet6 hashsize 1024 maxelem 1048576\n"
            "create DSPROXY_PODS6_NEXT hash:ip family inet6 hashsize 1024 maxelem 1048576\n"
            "flush DSPROXY_PODS6_NEXT\n"
            "swap DSPROXY_PODS6_NEXT DSPROXY_PODS6\n"
            "destroy DSPROXY_PODS6_NEXT\n");
  EXPECT_NE(render_iptables(Family::v6, RedirectOptions{}).find("TPROXY"), std::string::npos);
}

TEST(RedirectRuleRenderer, AddressesOfFiltersSortsAndDeduplicates) {
  EXPECT_EQ(addresses_of(Family::v4, node_pods()),
            (std::vector<IpAddress>{ip("10.244.0.5"), ip("10.244.0.7"), ip("10.244.0.12")}));
  EXPECT_EQ(addresses_of(Family::v6, node_pods()),
            (std::vector<IpAddress>{ip("fd00:10:244::5"), ip("fd00:10:244::1a")}));
  EXPECT_TRUE(addresses_of(Family::v6, {ip("10.0.0.1")}).empty());
}

TEST(RedirectRuleRenderer, OptionsShapeTheText) {
  RedirectOptions o;
  o.chain_prefix = "ZT";
  o.outbound_port = 16001;
  o.inbound_port = 16006;
  o.capture_mark = 0x80;
  o.capture_mask = 0x80;
  o.proxy_mark = 0x2;
  o.proxy_mask = 0xffffffff;  // a full mask is printed without "/mask" by iptables-save
  const std::string text = render_iptables(Family::v6, o);
  EXPECT_NE(text.find("-A ZT_PREROUTING -m mark --mark 0x2 -j RETURN\n"), std::string::npos) << text;
  EXPECT_NE(text.find("-A ZT_PREROUTING -p tcp -m socket --transparent -j ZT_DIVERT\n"), std::string::npos);
  EXPECT_NE(text.find("-A ZT_DIVERT -j MARK --set-xmark 0x80/0x80\n"), std::string::npos);
  EXPECT_NE(text.find("-A ZT_OUTBOUND -p tcp -m set --match-set ZT_PODS6 src -j TPROXY --on-port 16001 --on-ip :: "
                      "--tproxy-mark 0x80/0x80\n"),
            std::string::npos);
  EXPECT_NE(text.find("-A ZT_INBOUND -p tcp -m set --match-set ZT_PODS6 dst -j TPROXY --on-port 16006 --on-ip :: "
                      "--tproxy-mark 0x80/0x80\n"),
            std::string::npos);
  EXPECT_EQ(fwmark_selector(o), "fwmark 0x80/0x80");
  o.capture_mask = 0xffffffff;
  EXPECT_EQ(fwmark_selector(o), "fwmark 0x80");
}

TEST(RedirectRuleRenderer, IptablesCommandsPerFamily) {
  const RedirectOptions o;
  const auto v4 = iptables_commands(Family::v4, o);
  EXPECT_EQ(v4.restore, (Argv{"iptables-restore", "-w", "--noflush"}));
  EXPECT_EQ(v4.list_mangle, (Argv{"iptables", "-w", "-t", "mangle", "-S"}));
  EXPECT_EQ(v4.check_jump, (Argv{"iptables", "-w", "-t", "mangle", "-C", "PREROUTING", "-j", "DSPROXY_PREROUTING"}));
  EXPECT_EQ(v4.insert_jump,
            (Argv{"iptables", "-w", "-t", "mangle", "-I", "PREROUTING", "1", "-j", "DSPROXY_PREROUTING"}));
  EXPECT_EQ(v4.delete_jump, (Argv{"iptables", "-w", "-t", "mangle", "-D", "PREROUTING", "-j", "DSPROXY_PREROUTING"}));
  const auto v6 = iptables_commands(Family::v6, o);
  EXPECT_EQ(v6.restore, (Argv{"ip6tables-restore", "-w", "--noflush"}));
  EXPECT_EQ(v6.check_jump, (Argv{"ip6tables", "-w", "-t", "mangle", "-C", "PREROUTING", "-j", "DSPROXY_PREROUTING"}));
}

TEST(RedirectRuleRenderer, ProgramsComeFromOptions) {
  RedirectOptions o;
  o.iptables = "iptables-legacy";
  o.ip6tables_restore = "/usr/sbin/ip6tables-legacy-restore";
  o.ip = "/sbin/ip";
  EXPECT_EQ(iptables_commands(Family::v4, o).insert_jump.front(), "iptables-legacy");
  EXPECT_EQ(iptables_commands(Family::v6, o).restore.front(), "/usr/sbin/ip6tables-legacy-restore");
  EXPECT_EQ(policy_routing_commands(Family::v6, o).add_rule.front(), "/sbin/ip");
}

TEST(RedirectRuleRenderer, PolicyRoutingArgvV4) {
  const auto c = policy_routing_commands(Family::v4, RedirectOptions{});
  EXPECT_EQ(c.show_rule, (Argv{"ip", "-4", "rule", "show", "pref", "32000"}));
  EXPECT_EQ(c.add_rule, (Argv{"ip", "-4", "rule", "add", "fwmark", "0x1000/0x1000", "lookup", "133", "pref", "32000"}));
  EXPECT_EQ(c.replace_route, (Argv{"ip", "-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", "133"}));
  EXPECT_EQ(c.delete_rule, (Argv{"ip", "-4", "rule", "del", "pref", "32000"}));
  EXPECT_EQ(c.flush_routes, (Argv{"ip", "-4", "route", "flush", "table", "133"}));
}

TEST(RedirectRuleRenderer, PolicyRoutingArgvV6) {
  RedirectOptions o;
  o.route_table = 200;
  o.rule_priority = 100;
  const auto c = policy_routing_commands(Family::v6, o);
  EXPECT_EQ(c.show_rule, (Argv{"ip", "-6", "rule", "show", "pref", "100"}));
  EXPECT_EQ(c.add_rule, (Argv{"ip", "-6", "rule", "add", "fwmark", "0x1000/0x1000", "lookup", "200", "pref", "100"}));
  EXPECT_EQ(c.replace_route, (Argv{"ip", "-6", "route", "replace", "local", "::/0", "dev", "lo", "table", "200"}));
  EXPECT_EQ(c.delete_rule, (Argv{"ip", "-6", "rule", "del", "pref", "100"}));
  EXPECT_EQ(c.flush_routes, (Argv{"ip", "-6", "route", "flush", "table", "200"}));
}

TEST(RedirectOptionsValidate, DefaultsAreValid) { EXPECT_TRUE(validate(RedirectOptions{}).empty()); }

TEST(RedirectOptionsValidate, ReportsEveryProblem) {
  RedirectOptions o;
  o.inbound_port = o.outbound_port;
  o.proxy_mark = 0x1000;      // carries the capture bit
  o.proxy_mask = 0x1fff;
  o.route_table = 254;        // main
  o.rule_priority = 32766;    // at main's rule
  o.chain_prefix = "MY CHAINS";
  o.ip = "";
  const auto problems = validate(o);
  ASSERT_EQ(problems.size(), 6u) << ::testing::PrintToString(problems);
  EXPECT_NE(problems[0].find("both 15001"), std::string::npos);
  EXPECT_NE(problems[1].find("routed to lo"), std::string::npos);
  EXPECT_NE(problems[2].find("route_table 254"), std::string::npos);
  EXPECT_NE(problems[3].find("rule_priority 32766"), std::string::npos);
  EXPECT_NE(problems[4].find("MY CHAINS"), std::string::npos);
  EXPECT_NE(problems[5].find("ip must name a program"), std::string::npos);
}

TEST(RedirectOptionsValidate, MarksAndPrefixLength) {
  RedirectOptions o;
  o.capture_mark = 0x3000;  // outside its mask
  EXPECT_EQ(validate(o).size(), 1u);
  o = RedirectOptions{};
  o.proxy_mark = 0;  // would match every unmarked packet
  EXPECT_EQ(validate(o).size(), 1u);
  o = RedirectOptions{};
  o.chain_prefix = std::string(17, 'A');  // + "_PREROUTING" = 28, the most iptables takes
  EXPECT_TRUE(validate(o).empty());
  o.chain_prefix += "A";
  EXPECT_EQ(validate(o).size(), 1u);
  o.chain_prefix = "-X";
  EXPECT_EQ(validate(o).size(), 1u);
}

}  // namespace
}  // namespace dsproxy::redirect
