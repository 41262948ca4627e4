// The ClusterIP rules: refusal of ports with nowhere to go and the conntrack exemption, with the
// VIPs and open ports in sets that are updated by their difference.

#include "redirect/vip_refusals.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <sstream>

#include "redirect/ip_sets.hpp"
#include "redirect/redirector.hpp"

namespace dsproxy::redirect {
namespace {

net::IpAddress ip(const char* s) { return *net::IpAddress::parse(s); }

// Records commands and models the ipsets; `iptables -C` answers "absent" until an insert was seen.
struct RecordingRunner : CommandRunner {
  std::vector<Command> commands;
  std::set<std::string> jumps;  // "<program> <table> <hook>"
  std::map<std::string, std::set<std::string>> sets;
  std::vector<std::string> set_lines;  // every line ipset applied, in order
  std::map<std::string, CommandResult> failures;  // by format_argv(argv)

  CommandResult run(const Command& c) override {
    commands.push_back(c);
    if (auto f = failures.find(format_argv(c.argv)); f != failures.end()) return f->second;
    auto has = [&](const char* a) { return std::find(c.argv.begin(), c.argv.end(), a) != c.argv.end(); };
    if (c.argv[0] == "ipset") {
      if (c.argv[1] == "destroy") {
        if (!sets.erase(c.argv[2])) return {1, "", "ipset v7.17: The set with the given name does not exist\n"};
        return {};
      }
      std::istringstream in(c.input);
      for (std::string l; std::getline(in, l);) {
        set_lines.push_back(l);
        std::istringstream words(l);
        std::string verb, name, arg;
        words >> verb >> name >> arg;
        if (verb == "create") sets[name];
        else if (verb == "flush") sets[name].clear();
        else if (verb == "add") sets[name].insert(arg);
        else if (verb == "del") sets[name].erase(arg);
        else if (verb == "swap") std::swap(sets[name], sets[arg]);
        else if (verb == "destroy") sets.erase(name);
      }
      return {};
    }
    if (c.argv.size() > 5 && c.argv[1] == "-w") {
      const std::string key = c.argv[0] + " " + c.argv[3] + " " + c.argv[5] + (has("socket") ? " held" : "");
      if (has("-C")) return {jumps.count(key) ? 0 : 1, "", ""};
      if (has("-I")) jumps.insert(key);
      if (has("-D") && !jumps.erase(key)) return {1, "", "iptables: Bad rule (does a matching rule exist in that chain?).\n"};
    }
    if (has("-S")) return {0, "-P INPUT ACCEPT\n-N DSPROXY_REFUSE\n-N DSPROXY_NOTRACK\n", ""};
    return {0, "", ""};
  }
};

const std::vector<VipOpenPorts> kVips{
    {ip("10.96.106.11"), {9000, 9001}},
    {ip("fd00:10:96::f9fc"), {9000}},
    {ip("10.96.0.99"), {}},  // a Service with no endpoint at all
};

TEST(VipRefusals, RulesAreAFixedFewWhateverTheVips) {
  RedirectOptions o;
  EXPECT_EQ(render_refusal_rules(net::Family::v4, o),
            "*filter\n"
            ":DSPROXY_REFUSE - [0:0]\n"
            "-A DSPROXY_REFUSE -p tcp -m set --match-set DSPROXY_OPEN4 dst,dst -j RETURN\n"
            "-A DSPROXY_REFUSE -p tcp -m set --match-set DSPROXY_VIPS4 dst -j REJECT --reject-with tcp-reset\n"
            "COMMIT\n"
            "*raw\n"
            ":DSPROXY_NOTRACK - [0:0]\n"
            "-A DSPROXY_NOTRACK -p tcp -m set --match-set DSPROXY_PODS4 src -m set --match-set DSPROXY_VIPS4 dst -j CT "
            "--notrack\n"
            "-A DSPROXY_NOTRACK -p tcp -m set --match-set DSPROXY_VIPS4 src -m set --match-set DSPROXY_PODS4 dst -j CT "
            "--notrack\n"
            "COMMIT\n");
  const std::string v6 = render_refusal_rules(net::Family::v6, o);
  EXPECT_NE(v6.find("--match-set DSPROXY_OPEN6 dst,dst -j RETURN"), std::string::npos) << v6;
  EXPECT_EQ(v6.find("4 "), std::string::npos) << v6;
  o.dns_capture = true;
  const std::string dns = render_refusal_rules(net::Family::v4, o);
  EXPECT_NE(dns.find("-A DSPROXY_NOTRACK -p udp -m udp --dport 53 -m set --match-set DSPROXY_PODS4 src -m set "
                     "--match-set DSPROXY_VIPS4 dst -j CT --notrack\n"),
            std::string::npos)
      << dns;
}

TEST(VipRefusals, SetMembersPerFamily) {
  const auto v4 = vip_set_members(net::Family::v4, kVips);
  EXPECT_EQ(v4.vips, (std::vector<net::IpAddress>{ip("10.96.0.99"), ip("10.96.106.11")}));
  EXPECT_EQ(v4.open, (std::vector<VipPort>{{ip("10.96.106.11"), 9000}, {ip("10.96.106.11"), 9001}}));
  const auto v6 = vip_set_members(net::Family::v6, kVips);
  EXPECT_EQ(v6.vips, (std::vector<net::IpAddress>{ip("fd00:10:96::f9fc")}));
  EXPECT_EQ(v6.open, (std::vector<VipPort>{{ip("fd00:10:96::f9fc"), 9000}}));
  EXPECT_EQ(ip_set_member(ip("fd00:10:96::f9fc"), 9000), "fd00:10:96::f9fc,tcp:9000");
}

TEST(VipRefusals, InstallFillsSetsBeforeRulesAndJumpsOnce) {
  RecordingRunner runner;
  VipRefusals refusals(RedirectOptions{}, runner);
  refusals.apply(kVips);
  ASSERT_FALSE(runner.commands.empty());
  EXPECT_EQ(runner.commands[0].argv, (std::vector<std::string>{"ipset", "-exist", "restore"}));
  EXPECT_EQ(runner.sets.at("DSPROXY_VIPS4"), (std::set<std::string>{"10.96.0.99", "10.96.106.11"}));
  EXPECT_EQ(runner.sets.at("DSPROXY_OPEN6"), (std::set<std::string>{"fd00:10:96::f9fc,tcp:9000"}));
  EXPECT_TRUE(runner.sets.count("DSPROXY_PODS4"));  // the NOTRACK rules name it
  EXPECT_FALSE(runner.sets.count("DSPROXY_VIPS4_NEXT"));
  int inserts = 0;
  for (const auto& c : runner.commands)
    if (std::find(c.argv.begin(), c.argv.end(), "-I") != c.argv.end()) ++inserts;
  EXPECT_EQ(inserts, 6);  // per family: filter INPUT, raw PREROUTING, raw OUTPUT
  EXPECT_TRUE(runner.jumps.count("iptables filter INPUT"));
  EXPECT_TRUE(runner.jumps.count("ip6tables raw PREROUTING"));
  EXPECT_TRUE(runner.jumps.count("ip6tables raw OUTPUT"));
  for (const auto& c : runner.commands) {
    if (std::find(c.argv.begin(), c.argv.end(), "INPUT") != c.argv.end()) {
      EXPECT_NE(std::find(c.argv.begin(), c.argv.end(), "--syn"), c.argv.end());
    }
  }

  const auto before = runner.commands.size();
  refusals.apply(kVips);
  EXPECT_EQ(runner.commands.size(), before) << "unchanged VIP ports: nothing to do";
}

TEST(VipRefusals, UpdatesAreOneRestoreOfTheDifferenceOnly) {
  RecordingRunner runner;
  VipRefusals refusals(RedirectOptions{}, runner);
  refusals.apply(kVips);
  runner.commands.clear();
  auto changed = kVips;
  changed[2].open_ports = {80};  // an endpoint appeared
  refusals.apply(changed);
  ASSERT_EQ(runner.commands.size(), 1u);
  EXPECT_EQ(runner.commands[0].argv, (std::vector<std::string>{"ipset", "-exist", "restore"}));
  EXPECT_EQ(runner.commands[0].input, "add DSPROXY_OPEN4 10.96.0.99,tcp:80\n");

  // Thousands of VIPs, one changes: the update is that one line.
  std::vector<VipOpenPorts> many;
  for (int i = 0; i < 2000; ++i)
    many.push_back({ip(fmt::format("10.96.{}.{}", i / 250, i % 250 + 1).c_str()), {80, 443}});
  RecordingRunner big;
  VipRefusals large(RedirectOptions{}, big);
  large.apply(many);
  big.commands.clear();
  many[7].open_ports = {80};
  large.apply(many);
  ASSERT_EQ(big.commands.size(), 1u);
  EXPECT_EQ(big.commands[0].input, "del DSPROXY_OPEN4 10.96.0.8,tcp:443\n");
  EXPECT_EQ(big.sets.at("DSPROXY_OPEN4").size(), 3999u);
}

// Every prefix of an update is a state some SYN may see: a port open before and after must never
// be refused in between. Checked by replaying the update line by line against the sets.
TEST(VipRefusals, NoIntermediateStateRefusesAPortOpenBeforeAndAfter) {
  const std::vector<VipOpenPorts> before{{ip("10.96.0.1"), {80}}, {ip("10.96.0.2"), {80}}, {ip("fd00::1"), {80}}};
  const std::vector<VipOpenPorts> after{{ip("10.96.0.2"), {80, 81}},  // gains a port
                                        {ip("10.96.0.3"), {443}},     // new Service
                                        {ip("10.96.0.4"), {}},        // new, nothing to serve
                                        {ip("fd00::1"), {80}}};       // unchanged; 10.96.0.1 left
  RecordingRunner runner;
  VipRefusals refusals(RedirectOptions{}, runner);
  refusals.apply(before);
  runner.set_lines.clear();
  refusals.apply(after);
  ASSERT_FALSE(runner.set_lines.empty());

  // Replay on a copy of the sets as they were before the update.
  std::map<std::string, std::set<std::string>> sets{{"DSPROXY_VIPS4", {"10.96.0.1", "10.96.0.2"}},
                                                    {"DSPROXY_OPEN4", {"10.96.0.1,tcp:80", "10.96.0.2,tcp:80"}}};
  auto refused = [&](const std::string& vip, int port) {
    return sets["DSPROXY_VIPS4"].count(vip) && !sets["DSPROXY_OPEN4"].count(vip + ",tcp:" + std::to_string(port));
  };
  for (const auto& l : runner.set_lines) {
    std::istringstream words(l);
    std::string verb, name, arg;
    words >> verb >> name >> arg;
    if (verb == "add") sets[name].insert(arg);
    if (verb == "del") sets[name].erase(arg);
    EXPECT_FALSE(refused("10.96.0.2", 80)) << "after: " << l;  // open before and after
  }
  // ... and the end state is the wanted one.
  EXPECT_FALSE(refused("10.96.0.2", 81));
  EXPECT_FALSE(refused("10.96.0.3", 443));
  EXPECT_TRUE(refused("10.96.0.3", 80));
  EXPECT_TRUE(refused("10.96.0.4", 80));
  EXPECT_FALSE(sets["DSPROXY_VIPS4"].count("10.96.0.1"));
  EXPECT_EQ(sets["DSPROXY_OPEN4"], (std::set<std::string>{"10.96.0.2,tcp:80", "10.96.0.2,tcp:81", "10.96.0.3,tcp:443"}));
  // A new Service's port is open before its VIP joins the refused set.
  const auto open_at = std::find(runner.set_lines.begin(), runner.set_lines.end(), "add DSPROXY_OPEN4 10.96.0.3,tcp:443");
  const auto vip_at = std::find(runner.set_lines.begin(), runner.set_lines.end(), "add DSPROXY_VIPS4 10.96.0.3");
  ASSERT_NE(open_at, runner.set_lines.end());
  ASSERT_NE(vip_at, runner.set_lines.end());
  EXPECT_LT(open_at, vip_at);
  // The unchanged IPv6 set is not touched.
  for (const auto& l : runner.set_lines) EXPECT_EQ(l.find("6 "), std::string::npos) << l;
}

TEST(VipRefusals, FailedUpdateIsFollowedByAWholeRefill) {
  struct Failing : RecordingRunner {
    bool fail = false;
    CommandResult run(const Command& c) override {
      if (fail && c.argv[0] == "ipset") {
        commands.push_back(c);
        return {1, "", "ipset v7.17: Error in line 3: Hash is full, cannot add more elements\n"};
      }
      return RecordingRunner::run(c);
    }
  } runner;
  VipRefusals refusals(RedirectOptions{}, runner);
  refusals.apply(kVips);
  runner.fail = true;
  auto changed = kVips;
  changed[0].open_ports = {9000};
  EXPECT_THROW(refusals.apply(changed), RedirectError);
  runner.fail = false;
  runner.commands.clear();
  refusals.apply(changed);
  ASSERT_FALSE(runner.commands.empty());
  EXPECT_NE(runner.commands[0].input.find("swap DSPROXY_OPEN4_NEXT DSPROXY_OPEN4"), std::string::npos)
      << runner.commands[0].input;
  EXPECT_EQ(runner.sets.at("DSPROXY_OPEN4"), (std::set<std::string>{"10.96.106.11,tcp:9000"}));
}

TEST(VipRefusals, UninstallRemovesJumpsChainsAndSets) {
  RecordingRunner runner;
  VipRefusals refusals(RedirectOptions{}, runner);
  refusals.apply(kVips);
  runner.commands.clear();
  refusals.uninstall();
  bool deleted_refuse = false, deleted_notrack = false;
  std::size_t last_rule_change = 0, first_destroy = runner.commands.size();
  for (std::size_t i = 0; i < runner.commands.size(); ++i) {
    const auto& c = runner.commands[i];
    if (c.input.find("-X DSPROXY_REFUSE") != std::string::npos) deleted_refuse = true;
    if (c.input.find("-X DSPROXY_NOTRACK") != std::string::npos) deleted_notrack = true;
    if (c.argv[0] == "ipset") first_destroy = std::min(first_destroy, i);
    if (c.argv[0].find("ip6") == 0 && c.argv[0].find("restore") != std::string::npos) last_rule_change = i;
  }
  EXPECT_TRUE(deleted_refuse);
  EXPECT_TRUE(deleted_notrack);
  EXPECT_TRUE(runner.jumps.empty());
  EXPECT_FALSE(runner.sets.count("DSPROXY_VIPS4"));
  EXPECT_FALSE(runner.sets.count("DSPROXY_OPEN6"));
  EXPECT_TRUE(runner.sets.count("DSPROXY_PODS4")) << "the pods sets are the Redirector's to remove";
  EXPECT_LT(first_destroy, last_rule_change) << "IPv4 sets go once the IPv4 rules are gone";
  EXPECT_NO_THROW(refusals.uninstall());  // again: nothing left, nothing fails
}

// The staged removal: raw PREROUTING's jump to NOTRACK is narrowed to the proxy's own connections
// (the narrow one inserted before the wide one goes), the rest stays; uninstall removes both kinds.
TEST(VipRefusals, ReleaseNarrowsTheNotrackJumpToHeldConnections) {
  RecordingRunner runner;
  VipRefusals refusals(RedirectOptions{}, runner);
  refusals.apply(kVips);
  runner.commands.clear();
  EXPECT_TRUE(refusals.release({net::Family::v4, net::Family::v6}));
  const std::set<std::string> after = {
      "iptables filter INPUT",  "iptables raw OUTPUT",  "iptables raw PREROUTING held",
      "ip6tables filter INPUT", "ip6tables raw OUTPUT", "ip6tables raw PREROUTING held"};
  EXPECT_EQ(runner.jumps, after);
  std::vector<std::string> lines;
  for (const auto& c : runner.commands) lines.push_back(format_argv(c.argv));
  ASSERT_GE(lines.size(), 4u);
  EXPECT_EQ(lines[0], "iptables -w -t raw -C PREROUTING -j DSPROXY_NOTRACK");
  EXPECT_EQ(lines[1], "iptables -w -t raw -C PREROUTING -m socket --transparent -j DSPROXY_NOTRACK");
  EXPECT_EQ(lines[2], "iptables -w -t raw -I PREROUTING 1 -m socket --transparent -j DSPROXY_NOTRACK");
  EXPECT_EQ(lines[3], "iptables -w -t raw -D PREROUTING -j DSPROXY_NOTRACK");
  // Again: the wide jump is gone, nothing more to do.
  runner.commands.clear();
  EXPECT_TRUE(refusals.release({net::Family::v4, net::Family::v6}));
  EXPECT_EQ(runner.commands.size(), 2u);  // one check per family
  refusals.uninstall();
  EXPECT_TRUE(runner.jumps.empty());
}

// A family whose capture could not be released keeps the wide exemption (its captured SYNs must
// stay untracked); a narrowing that fails is reported, so the daemon removes every rule instead
// of leaving the wide jump with no capture behind it (new ClusterIP connections black-holed).
TEST(VipRefusals, ReleaseNarrowsOnlyReleasedFamiliesAndReportsFailures) {
  RecordingRunner runner;
  VipRefusals refusals(RedirectOptions{}, runner);
  refusals.apply(kVips);
  EXPECT_TRUE(refusals.release({net::Family::v6}));
  EXPECT_TRUE(runner.jumps.count("iptables raw PREROUTING"));
  EXPECT_FALSE(runner.jumps.count("iptables raw PREROUTING held"));
  EXPECT_FALSE(runner.jumps.count("ip6tables raw PREROUTING"));
  EXPECT_TRUE(runner.jumps.count("ip6tables raw PREROUTING held"));

  runner.failures["iptables -w -t raw -I PREROUTING 1 -m socket --transparent -j DSPROXY_NOTRACK"] = {4, "", "denied\n"};
  EXPECT_FALSE(refusals.release({net::Family::v4, net::Family::v6}));
  EXPECT_TRUE(runner.jumps.count("iptables raw PREROUTING")) << "the wide jump stays if the narrow one is missing";
  runner.failures.clear();

  runner.failures["iptables -w -t raw -D PREROUTING -j DSPROXY_NOTRACK"] = {4, "", "denied\n"};
  EXPECT_FALSE(refusals.release({net::Family::v4, net::Family::v6}));
  runner.failures.clear();
  EXPECT_TRUE(refusals.release({net::Family::v4, net::Family::v6}));
  EXPECT_FALSE(runner.jumps.count("iptables raw PREROUTING"));
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
    EXPECT_EQ(format_argv(c.argv).find("6"), std::string::npos) << format_argv(c.argv);
    EXPECT_EQ(c.input.find("inet6"), std::string::npos) << c.input;
  }
  const auto script = render_refusals_script(kVips, o);
  EXPECT_EQ(script.find("ip6tables"), std::string::npos) << script;
  EXPECT_EQ(script.find("inet6"), std::string::npos) << script;
  EXPECT_NE(script.find("iptables-restore"), std::string::npos) << script;
}

}  // namespace
}  // namespace dsproxy::redirect

namespace dsproxy::redirect {
namespace {

// apply_changes against apply: any sequence of changes leaves the same sets as handing over the
// whole resulting list, and each update is the difference only.
TEST(VipRefusalsChanges, MatchApplyingTheWholeListStepByStep) {
  std::map<net::IpAddress, std::vector<std::uint16_t>> state;
  RecordingRunner by_changes, by_list;
  VipRefusals changes_side(RedirectOptions{}, by_changes), list_side(RedirectOptions{}, by_list);
  auto whole = [&] {
    std::vector<VipOpenPorts> out;
    for (const auto& [vip, ports] : state) out.push_back({vip, ports});
    return out;
  };
  std::uint32_t seed = 12345;
  auto next = [&](std::uint32_t n) {
    seed = seed * 1103515245u + 12345u;
    return (seed >> 8) % n;
  };
  for (int step = 0; step < 300; ++step) {
    VipChanges change;
    std::set<net::IpAddress> edited;  // one edit per VIP and step (twice in `changed` would be a union)
    const int edits = step == 0 ? 40 : 1 + static_cast<int>(next(3));
    for (int e = 0; e < edits; ++e) {
      const auto n = next(60);
      const auto vip = n % 2 ? ip(fmt::format("10.96.0.{}", n + 1).c_str()) : ip(fmt::format("fd00::{:x}", n + 1).c_str());
      if (!edited.insert(vip).second) continue;
      if (next(4) == 0 && state.count(vip)) {
        state.erase(vip);
        change.removed.push_back(vip);
      } else {
        std::vector<std::uint16_t> ports;
        for (std::uint16_t p = 80; p < 84; ++p)
          if (next(2)) ports.push_back(p);
        state[vip] = ports;
        change.changed.push_back({vip, ports});
      }
    }
    changes_side.apply_changes(change);
    list_side.apply(whole());
    ASSERT_EQ(by_changes.sets, by_list.sets) << "step " << step;
    ASSERT_EQ(changes_side.vip_count(), state.size());
    ASSERT_EQ(changes_side.open_count(), list_side.open_count());
  }
  EXPECT_EQ(by_changes.sets.at("DSPROXY_VIPS4").size() + by_changes.sets.at("DSPROXY_VIPS6").size(), state.size());
}

TEST(VipRefusalsChanges, OneChangeIsOneShortRestore) {
  RecordingRunner runner;
  VipRefusals refusals(RedirectOptions{}, runner);
  refusals.apply_changes({kVips, {}});  // the first call installs
  EXPECT_EQ(runner.sets.at("DSPROXY_VIPS4"), (std::set<std::string>{"10.96.0.99", "10.96.106.11"}));
  EXPECT_TRUE(runner.jumps.count("iptables filter INPUT"));
  runner.commands.clear();
  refusals.apply_changes({{{ip("10.96.106.11"), {9001, 9002}}}, {ip("fd00:10:96::f9fc"), ip("10.1.1.1")}});
  ASSERT_EQ(runner.commands.size(), 1u);
  EXPECT_EQ(runner.commands[0].input,
            "add DSPROXY_OPEN4 10.96.106.11,tcp:9002\n"
            "del DSPROXY_VIPS6 fd00:10:96::f9fc\n"
            "del DSPROXY_OPEN4 10.96.106.11,tcp:9000\n"
            "del DSPROXY_OPEN6 fd00:10:96::f9fc,tcp:9000\n");
  runner.commands.clear();
  refusals.apply_changes({{{ip("10.96.106.11"), {9002, 9001, 9002}}}, {ip("10.1.1.1")}});
  EXPECT_TRUE(runner.commands.empty()) << "the same ports in another order, an unknown removal: nothing";
  EXPECT_EQ(refusals.vip_count(), 2u);
  EXPECT_EQ(refusals.open_count(), 2u);
}

TEST(VipRefusalsChanges, DuplicatesGetTheUnionAndChangedBeatsRemoved) {
  RecordingRunner runner;
  VipRefusals refusals(RedirectOptions{}, runner);
  refusals.apply({{ip("10.96.0.1"), {80}}, {ip("10.96.0.1"), {443}}});
  EXPECT_EQ(runner.sets.at("DSPROXY_OPEN4"), (std::set<std::string>{"10.96.0.1,tcp:80", "10.96.0.1,tcp:443"}));
  // Duplicate of a VIP already applied: the slow path, same result.
  refusals.apply({{ip("10.96.0.1"), {80}}, {ip("10.96.0.2"), {}}, {ip("10.96.0.1"), {8080}}});
  EXPECT_EQ(runner.sets.at("DSPROXY_OPEN4"), (std::set<std::string>{"10.96.0.1,tcp:80", "10.96.0.1,tcp:8080"}));
  EXPECT_EQ(runner.sets.at("DSPROXY_VIPS4"), (std::set<std::string>{"10.96.0.1", "10.96.0.2"}));
  refusals.apply_changes({{{ip("10.96.0.2"), {22}}}, {ip("10.96.0.2")}});
  EXPECT_EQ(runner.sets.at("DSPROXY_VIPS4"), (std::set<std::string>{"10.96.0.1", "10.96.0.2"}));
  EXPECT_TRUE(runner.sets.at("DSPROXY_OPEN4").count("10.96.0.2,tcp:22"));
}

TEST(VipRefusalsChanges, AFailedChangeIsRefilledWholeNextTime) {
  struct Failing : RecordingRunner {
    bool fail = false;
    CommandResult run(const Command& c) override {
      if (fail && c.argv[0] == "ipset") return {1, "", "ipset v7.17: Error in line 1: Hash is full\n"};
      return RecordingRunner::run(c);
    }
  } runner;
  VipRefusals refusals(RedirectOptions{}, runner);
  refusals.apply(kVips);
  runner.fail = true;
  EXPECT_THROW(refusals.apply_changes({{{ip("10.96.0.99"), {80}}}, {}}), RedirectError);
  runner.fail = false;
  runner.commands.clear();
  refusals.apply_changes({{{ip("10.96.0.7"), {}}}, {}});
  ASSERT_FALSE(runner.commands.empty());
  EXPECT_NE(runner.commands[0].input.find("swap DSPROXY_OPEN4_NEXT DSPROXY_OPEN4"), std::string::npos);
  // Both the failed change and the new one are in.
  EXPECT_TRUE(runner.sets.at("DSPROXY_OPEN4").count("10.96.0.99,tcp:80"));
  EXPECT_TRUE(runner.sets.at("DSPROXY_VIPS4").count("10.96.0.7"));
}

}  // namespace
}  // namespace dsproxy::redirect
