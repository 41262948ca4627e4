#include "redirect/redirect_options.hpp"

#include <fmt/format.h>

#include <string_view>

namespace dsproxy::redirect {

namespace {

// iptables rejects chain names of 29 characters or more; "_PREROUTING" is the longest suffix.
constexpr std::size_t kMaxChainName = 28;
constexpr std::string_view kLongestChainSuffix = "_PREROUTING";

bool valid_chain_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

}  // namespace

std::vector<net::Family> families(const RedirectOptions& o) {
  std::vector<net::Family> out;
  if (o.ipv4) out.push_back(net::Family::v4);
  if (o.ipv6) out.push_back(net::Family::v6);
  return out;
}

bool family_on(const RedirectOptions& o, net::Family family) {
  return family == net::Family::v4 ? o.ipv4 : o.ipv6;
}

std::vector<std::string> validate(const RedirectOptions& o) {
  std::vector<std::string> problems;
  if (!o.ipv4 && !o.ipv6) problems.push_back("neither IPv4 nor IPv6 is on: there is nothing to capture");
  if (o.outbound_port == 0) problems.push_back("outbound_port must not be 0");
  if (o.inbound_port == 0) problems.push_back("inbound_port must not be 0");
  if (o.outbound_port != 0 && o.outbound_port == o.inbound_port)
    problems.push_back(fmt::format("outbound_port and inbound_port are both {}", o.inbound_port));
  if (o.dns_capture && o.dns_port == 0) problems.push_back("dns_port must not be 0");
  if (o.dns_capture && o.dns_port != 0 && (o.dns_port == o.outbound_port || o.dns_port == o.inbound_port))
    problems.push_back(fmt::format("dns_port {} is also a TCP capture port", o.dns_port));

  if (o.capture_mask == 0 || (o.capture_mark & o.capture_mask) == 0)
    problems.push_back(fmt::format(
        "capture_mark {:#x}/{:#x} sets no bit: the fwmark rule could not tell captured packets apart",
        o.capture_mark, o.capture_mask));
  if ((o.capture_mark & ~o.capture_mask) != 0)
    problems.push_back(fmt::format("capture_mark {:#x} has bits outside capture_mask {:#x}",
                                   o.capture_mark, o.capture_mask));
  if (o.proxy_mask == 0 || (o.proxy_mark & o.proxy_mask) == 0)
    problems.push_back(fmt::format(
        "proxy_mark {:#x}/{:#x} would match every unmarked packet, so nothing would be captured",
        o.proxy_mark, o.proxy_mask));
  if ((o.proxy_mark & ~o.proxy_mask) != 0)
    problems.push_back(fmt::format("proxy_mark {:#x} has bits outside proxy_mask {:#x}",
                                   o.proxy_mark, o.proxy_mask));
  // The proxy's own packets must not satisfy the capture fwmark rule, or they would be routed to lo.
  if (o.capture_mask != 0 && (o.proxy_mark & o.capture_mask) == (o.capture_mark & o.capture_mask))
    problems.push_back(fmt::format(
        "proxy_mark {:#x} carries capture_mark {:#x}/{:#x}: the proxy's own packets would be routed to lo",
        o.proxy_mark, o.capture_mark, o.capture_mask));

  // 0 is "unspecified"; 253, 254 and 255 are the kernel's default, main and local tables.
  if (o.route_table <= 0 || o.route_table == 253 || o.route_table == 254 || o.route_table == 255)
    problems.push_back(fmt::format(
        "route_table {} is not usable (1-252 or 256 and above; 253-255 are the kernel's own)",
        o.route_table));
  // Pref 0 holds the local-table rule; 32766 and 32767 the main and default ones: ours must sit
  // between, ahead of main, or main would route captured packets out of the node again.
  if (o.rule_priority <= 0 || o.rule_priority >= 32766)
    problems.push_back(fmt::format("rule_priority {} must be between 1 and 32765", o.rule_priority));

  if (o.chain_prefix.empty()) {
    problems.push_back("chain_prefix must not be empty");
  } else {
    bool chars_ok = o.chain_prefix.front() != '-';
    for (char c : o.chain_prefix) chars_ok = chars_ok && valid_chain_char(c);
    if (!chars_ok)
      problems.push_back(fmt::format(
          "chain_prefix \"{}\" may only hold letters, digits, '_' and '-', and not start with '-'",
          o.chain_prefix));
    if (o.chain_prefix.size() + kLongestChainSuffix.size() > kMaxChainName)
      problems.push_back(fmt::format("chain_prefix \"{}\" is too long: at most {} characters",
                                     o.chain_prefix, kMaxChainName - kLongestChainSuffix.size()));
  }

  const std::pair<std::string_view, const std::string*> programs[] = {
      {"iptables", &o.iptables},
      {"ip6tables", &o.ip6tables},
      {"iptables_restore", &o.iptables_restore},
      {"ip6tables_restore", &o.ip6tables_restore},
      {"ip", &o.ip},
      {"ipset", &o.ipset}};
  for (const auto& [name, value] : programs)
    if (value->empty()) problems.push_back(fmt::format("{} must name a program", name));
  return problems;
}

}  // namespace dsproxy::redirect
