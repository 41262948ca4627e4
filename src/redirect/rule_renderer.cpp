#include "redirect/rule_renderer.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "redirect/command_runner.hpp"
#include "redirect/ip_sets.hpp"

namespace dsproxy::redirect {

namespace {

bool is_v4(net::Family f) { return f == net::Family::v4; }

// "0x1000/0x1000", as iptables-save and `ip rule` print a value/mask pair.
std::string hex_pair(std::uint32_t value, std::uint32_t mask) {
  return fmt::format("{:#x}/{:#x}", value, mask);
}

// The mark match omits a full mask when printing; so do we, to read back identically.
std::string mark_match(std::uint32_t value, std::uint32_t mask) {
  return mask == 0xffffffffu ? fmt::format("{:#x}", value) : hex_pair(value, mask);
}

std::string tproxy_target(net::Family family, std::uint16_t port, const RedirectOptions& o) {
  return fmt::format("-j TPROXY --on-port {} --on-ip {} --tproxy-mark {}", port,
                     is_v4(family) ? "0.0.0.0" : "::", hex_pair(o.capture_mark, o.capture_mask));
}

void declare(std::string& text, const std::string& chain) { text += ":" + chain + " - [0:0]\n"; }

void append(std::string& text, const std::string& chain, const std::string& rule) {
  text += "-A " + chain + " " + rule + "\n";
}

// One rule per chain, whatever the number of pods: the pod addresses are in the <prefix>_PODS4/6
// set (ip_sets.hpp), looked up in O(1), and changed without touching a rule.
void append_pod_rules(std::string& text, net::Family family, const RedirectOptions& o, const ChainNames& c) {
  const std::string pods = pods_set(o, family).name;
  append(text, c.outbound, "-p tcp -m set --match-set " + pods + " src " + tproxy_target(family, o.outbound_port, o));
  if (o.hbone_port != 0)
    append(text, c.inbound, fmt::format("-p tcp -m tcp --dport {} -m set --match-set {} dst {}", o.hbone_port, pods,
                                        tproxy_target(family, o.hbone_port, o)));
  append(text, c.inbound, "-p tcp -m set --match-set " + pods + " dst " + tproxy_target(family, o.inbound_port, o));
  if (!o.dns_capture) return;
  const std::string on = fmt::format("-j TPROXY --on-port {} --on-ip {} --tproxy-mark {}", o.dns_port,
                                     is_v4(family) ? "0.0.0.0" : "::", hex_pair(o.capture_mark, o.capture_mask));
  for (const char* proto : {"udp", "tcp"})
    append(text, c.dns, fmt::format("-p {} -m {} --dport 53 -m set --match-set {} src {}", proto, proto, pods, on));
}

std::string ip_family_flag(net::Family family) { return is_v4(family) ? "-4" : "-6"; }

const std::string& iptables_program(net::Family family, const RedirectOptions& o) {
  return is_v4(family) ? o.iptables : o.ip6tables;
}

}  // namespace

ChainNames chain_names(const RedirectOptions& o) {
  return ChainNames{o.chain_prefix + "_PREROUTING", o.chain_prefix + "_DIVERT",
                    o.chain_prefix + "_OUTBOUND", o.chain_prefix + "_INBOUND", o.chain_prefix + "_DNS"};
}

std::vector<net::IpAddress> addresses_of(net::Family family, const std::vector<net::IpAddress>& ips) {
  std::vector<net::IpAddress> out;
  for (const auto& ip : ips)
    if (ip.family() == family) out.push_back(ip);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::string render_iptables(net::Family family, const RedirectOptions& o) {
  const auto c = chain_names(o);
  std::string text = "*mangle\n";
  for (const auto* chain : {&c.prerouting, &c.divert, &c.outbound, &c.inbound}) declare(text, *chain);
  if (o.dns_capture) declare(text, c.dns);
  append(text, c.prerouting, "-m mark --mark " + mark_match(o.proxy_mark, o.proxy_mask) + " -j RETURN");
  append(text, c.prerouting, "-p tcp -m socket --transparent -j " + c.divert);
  if (o.dns_capture) {
    append(text, c.prerouting, "-p udp -m udp --dport 53 -j " + c.dns);
    append(text, c.prerouting, "-p tcp -m tcp --dport 53 -j " + c.dns);
  }
  append(text, c.prerouting, "-p tcp -m addrtype --dst-type LOCAL -j RETURN");
  append(text, c.prerouting, "-p tcp -j " + c.outbound);
  append(text, c.prerouting, "-p tcp -j " + c.inbound);
  append(text, c.divert, "-j MARK --set-xmark " + hex_pair(o.capture_mark, o.capture_mask));
  append(text, c.divert, "-j ACCEPT");
  append_pod_rules(text, family, o, c);
  text += "COMMIT\n";
  return text;
}

std::string render_pods_fill(net::Family family, const std::vector<net::IpAddress>& node_pod_ips,
                             const RedirectOptions& o) {
  std::vector<std::string> members;
  for (const auto& ip : addresses_of(family, node_pod_ips)) members.push_back(ip_set_member(ip));
  std::sort(members.begin(), members.end());
  return render_ip_set_fill(pods_set(o, family), members);
}

std::string render_iptables_removal(net::Family, const RedirectOptions& o) {
  const auto c = chain_names(o);
  const std::string* chains[] = {&c.prerouting, &c.divert, &c.outbound, &c.inbound, &c.dns};
  std::string text = "*mangle\n";
  for (const auto* chain : chains) declare(text, *chain);
  for (const auto* chain : chains) text += "-X " + *chain + "\n";
  text += "COMMIT\n";
  return text;
}

std::string render_capture_release(const RedirectOptions& o, bool dns_chain) {
  const auto c = chain_names(o);
  // Under --noflush, declaring a chain flushes it: the jumps to these chains stay and return at once.
  std::string text = "*mangle\n";
  declare(text, c.outbound);
  declare(text, c.inbound);
  if (dns_chain) declare(text, c.dns);
  text += "COMMIT\n";
  return text;
}

IptablesCommands iptables_commands(net::Family family, const RedirectOptions& o) {
  const std::string& iptables = iptables_program(family, o);
  const std::string jump = chain_names(o).prerouting;
  // -w: wait for the xtables lock instead of failing when kube-proxy (legacy backend) holds it;
  // the nft backend accepts and ignores it.
  return IptablesCommands{
      {is_v4(family) ? o.iptables_restore : o.ip6tables_restore, "-w", "--noflush"},
      {iptables, "-w", "-t", "mangle", "-S"},
      {iptables, "-w", "-t", "mangle", "-C", "PREROUTING", "-j", jump},
      {iptables, "-w", "-t", "mangle", "-I", "PREROUTING", "1", "-j", jump},
      {iptables, "-w", "-t", "mangle", "-D", "PREROUTING", "-j", jump},
  };
}

std::string fwmark_selector(const RedirectOptions& o) {
  return "fwmark " + mark_match(o.capture_mark, o.capture_mask);
}

PolicyRoutingCommands policy_routing_commands(net::Family family, const RedirectOptions& o) {
  const std::string f = ip_family_flag(family);
  const std::string pref = std::to_string(o.rule_priority);
  const std::string table = std::to_string(o.route_table);
  return PolicyRoutingCommands{
      {o.ip, f, "rule", "show", "pref", pref},
      {o.ip, f, "rule", "add", "fwmark", hex_pair(o.capture_mark, o.capture_mask), "lookup", table,
       "pref", pref},
      {o.ip, f, "route", "replace", "local", is_v4(family) ? "0.0.0.0/0" : "::/0", "dev", "lo",
       "table", table},
      {o.ip, f, "rule", "del", "pref", pref},
      {o.ip, f, "route", "flush", "table", table},
  };
}

std::string render_script(const std::vector<net::IpAddress>& node_pod_ips, const RedirectOptions& o) {
  const auto c = chain_names(o);
  const auto v4 = addresses_of(net::Family::v4, node_pod_ips);
  const auto v6 = addresses_of(net::Family::v6, node_pod_ips);
  std::string s;
  s += "#!/bin/sh\n";
  s += "# dsproxy transparent redirect: what `dsproxy redirect install` applies, as a shell script.\n";
  s += fmt::format("# Node pod addresses: {} IPv4, {} IPv6.\n", v4.size(), v6.size());
  s += fmt::format("# TCP from node pods -> :{} (outbound), TCP to node pods from elsewhere -> :{} (inbound).\n",
                   o.outbound_port, o.inbound_port);
  s += fmt::format("# Capture mark {} routes to lo via table {} (rule pref {}); the proxy's own sockets\n",
                   hex_pair(o.capture_mark, o.capture_mask), o.route_table, o.rule_priority);
  s += fmt::format("# carry {} and pass untouched.\n", mark_match(o.proxy_mark, o.proxy_mask));
  if (o.dns_capture)
    s += fmt::format("# DNS (UDP and TCP port 53) from node pods -> :{} (the DNS proxy).\n", o.dns_port);
  s += "# Sysctls are left alone (forwarding is on on any Kubernetes node); the kernel modules\n";
  s += "# xt_TPROXY, xt_socket, xt_mark, xt_addrtype and xt_set are loaded on first use.\n";
  for (net::Family family : {net::Family::v4, net::Family::v6})
    if (!family_on(o, family))
      s += fmt::format("# {} is off on this node: no {} rules.\n", net::to_string(family), net::to_string(family));
  s += "set -e\n";
  for (net::Family family : families(o)) {
    const auto pods = is_v4(family) ? v4 : v6;
    const auto ipt = iptables_commands(family, o);
    const auto route = policy_routing_commands(family, o);
    s += fmt::format("\n# ---- {}: {} node pod address{} ----\n", net::to_string(family), pods.size(),
                     pods.size() == 1 ? "" : "es");
    s += "# Policy routing: packets with the capture mark are delivered locally, to the proxy.\n";
    s += format_argv(route.show_rule) + " | grep -q . || " + format_argv(route.add_rule) + "\n";
    s += format_argv(route.replace_route) + "\n";
    s += "# The node's pod addresses, in the set the rules match (filled aside, then swapped in).\n";
    s += format_argv(ipset_restore_argv(o)) + " <<'EOF'\n" + render_pods_fill(family, node_pod_ips, o) + "EOF\n";
    s += "# The chains, replaced atomically (\":CHAIN - [0:0]\" flushes an existing chain under --noflush).\n";
    s += format_argv(ipt.restore) + " <<'EOF'\n" + render_iptables(family, o) + "EOF\n";
    s += "# Capture starts with the jump from PREROUTING, added once.\n";
    s += format_argv(ipt.check_jump) + " 2>/dev/null || " + format_argv(ipt.insert_jump) + "\n";
  }
  s += "\n# ---- To remove everything (`dsproxy redirect uninstall`), for each family: ----\n";
  for (net::Family family : families(o)) {
    const auto ipt = iptables_commands(family, o);
    const auto route = policy_routing_commands(family, o);
    s += "# while " + format_argv(ipt.delete_jump) + " 2>/dev/null; do :; done\n";
    s += "# " + format_argv(ipt.restore) + " <<'EOF'\n";
    const std::string removal = render_iptables_removal(family, o);
    std::size_t start = 0;
    while (start < removal.size()) {
      auto end = removal.find('\n', start);
      s += "#   " + removal.substr(start, end - start) + "\n";
      start = end + 1;
    }
    s += "# EOF\n";
    s += "# while " + format_argv(route.delete_rule) + " 2>/dev/null; do :; done\n";
    s += "# " + format_argv(route.flush_routes) + "\n";
    s += "# " + format_argv(ipset_destroy_argv(o, pods_set(o, family).name)) + "\n";
  }
  return s;
}

}  // namespace dsproxy::redirect
