// Refusal rules for ClusterIP ports with nowhere to go.

#include "redirect/vip_refusals.hpp"

#include <gtest/gtest.h>

#include "redirect/redirector.hpp"

namespace dsproxy::redirect {
namespace {

net::IpAddress ip(const char* s) { return *net::IpAddress::parse(s); }

// Records commands; `iptables -C` answers "absent" until an insert was seen.
struct RecordingRunner : CommandRunner {
  std::vector<Command> commands;
  bool jump_present = false;
  CommandResult run(const Command& c) override {
    commands.push_back(c);
    auto has = [&](const char* a) { return std::find(c.argv.begin(), c.argv.end(), a) != c.argv.end(); };
    if (has("-C")) return {jump_present ? 0 : 1, "", ""};
    if (has("-I")) jump_present = true;
    if (has("-D")) jump_present = false;
    if (has("-S")) return {0, "-P INPUT ACCEPT\n-N DSPROXY_REFUSE\n", ""};
    return {0, "", ""};
  }
};

const std::vector<VipOpenPorts> kVips{
    {ip("10.96.106.11"), {9000, 9001}},
    {ip("fd00:10:96::f9fc"), {9000}},
    {ip("10.96.0.99"), {}},  // a Service with no endpoint at all
};

TEST(VipRefusals, RendersReturnForServablePortsAndResetForTheRest) {
  RedirectOptions o;
  EXPECT_EQ(render_refusals(net::Family::v4, kVips, o),
            "*filter\n"
            ":DSPROXY_REFUSE - [0:0]\n"
            "-A DSPROXY_REFUSE -d 10.96.106.11/32 -p tcp -m tcp --dport 9000 -j RETURN\n"
            "-A DSPROXY_REFUSE -d 10.96.106.11/32 -p tcp -m tcp --dport 9001 -j RETURN\n"
            "-A DSPROXY_REFUSE -d 10.96.106.11/32 -p tcp -j REJECT --reject-with tcp-reset\n"
            "-A DSPROXY_REFUSE -d 10.96.0.99/32 -p tcp -j REJECT --reject-with tcp-reset\n"
            "COMMIT\n");
  EXPECT_EQ(render_refusals(net::Family::v6, kVips, o),
            "*filter\n"
            ":DSPROXY_REFUSE - [0:0]\n"
            "-A DSPROXY_REFUSE -d fd00:10:96::f9fc/128 -p tcp -m tcp --dport 9000 -j RETURN\n"
            "-A DSPROXY_REFUSE -d fd00:10:96::f9fc/128 -p tcp -j REJECT --reject-with tcp-reset\n"
            "COMMIT\n");
}

TEST(VipRefusals, ApplyIsIdempotentAndOnlyJumpsForSyn) {
  RecordingRunner runner;
  VipRefusals refusals(RedirectOptions{}, runner);
  refusals.apply(kVips);
  int inserts = 0;
  for (const auto& c : runner.commands)
    if (std::find(c.argv.begin(), c.argv.end(), "-I") != c.argv.end()) {
      ++inserts;
      EXPECT_NE(std::find(c.argv.begin(), c.argv.end(), "--syn"), c.argv.end());
    }
  EXPECT_EQ(inserts, 1) << "the fake shares one jump flag for both families";
  const auto before = runner.commands.size();
  refusals.apply(kVips);
  EXPECT_EQ(runner.commands.size(), before) << "unchanged VIP ports: nothing to do";
  auto changed = kVips;
  changed[2].open_ports = {80};  // an endpoint appeared
  refusals.apply(changed);
  EXPECT_GT(runner.commands.size(), before);
}

TEST(VipRefusals, UninstallRemovesJumpAndChain) {
  RecordingRunner runner;
  VipRefusals refusals(RedirectOptions{}, runner);
  refusals.apply(kVips);
  runner.commands.clear();
  refusals.uninstall();
  bool deleted_jump = false, deleted_chain = false;
  for (const auto& c : runner.commands) {
    if (std::find(c.argv.begin(), c.argv.end(), "-D") != c.argv.end()) deleted_jump = true;
    if (c.input.find("-X DSPROXY_REFUSE") != std::string::npos) deleted_chain = true;
  }
  EXPECT_TRUE(deleted_jump);
  EXPECT_TRUE(deleted_chain);
}

TEST(VipRefusals, FamilyOffGetsNoRefusalRules) {
  RedirectOptions o;
  o.ipv6 = false;
  RecordingRunner runner;
  VipRefusals refusals(o, runner);
  refusals.apply(kVips);
  refusals.uninstall();
  ASSERT_FALSE(runner.commands.empty());
  for (const auto& c : runner.commands) {
    EXPECT_EQ(c.argv[0].find("ip6"), std::string::npos) << format_argv(c.argv);
    EXPECT_EQ(c.input.find("fd00:"), std::string::npos) << c.input;
  }
  const auto script = render_refusals_script(kVips, o);
  EXPECT_EQ(script.find("ip6tables"), std::string::npos) << script;
  EXPECT_NE(script.find("iptables-restore"), std::string::npos) << script;
}

}  // namespace
}  // namespace dsproxy::redirect
