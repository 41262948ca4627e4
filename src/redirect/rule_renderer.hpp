#pragma once
// The redirect rules as text and argv: pure functions of the node's pod addresses and the
// options, so every rule can be checked against golden files without touching a firewall.
//
// One shape for both families, in the mangle table (chain names from options.chain_prefix):
//
//   PREROUTING -> DSPROXY_PREROUTING
//     -m mark --mark <proxy_mark>/<proxy_mask> -j RETURN   the proxy's own sockets
//     -p tcp -m socket --transparent -j DSPROXY_DIVERT     connections the proxy already owns
//     -p tcp -m addrtype --dst-type LOCAL -j RETURN        traffic to the node itself
//     -p tcp -j DSPROXY_OUTBOUND
//     -p tcp -j DSPROXY_INBOUND
//   DSPROXY_DIVERT    set the capture mark, ACCEPT
//   DSPROXY_OUTBOUND  -p tcp -m set --match-set DSPROXY_PODS4|6 src -j TPROXY --on-port <outbound_port> ...
//   DSPROXY_INBOUND   [-p tcp -m tcp --dport <hbone_port> -m set --match-set DSPROXY_PODS4|6 dst -j TPROXY --on-port <hbone_port> ...]
//                     -p tcp -m set --match-set DSPROXY_PODS4|6 dst -j TPROXY --on-port <inbound_port> ...
// One rule each: the node's pod addresses are members of the hash:ip set DSPROXY_PODS4 (PODS6),
// one O(1) lookup per packet however many pods the node runs (ip_sets.hpp).
//
// With options.dns_capture, PREROUTING also sends UDP and TCP to port 53 (right after the
// socket divert, before the LOCAL return, so a node-local nameserver is captured too) to
//   DSPROXY_DNS       -p udp|tcp --dport 53 -m set --match-set DSPROXY_PODS4|6 src -j TPROXY --on-port <dns_port> ...
// The removal always deletes DSPROXY_DNS too, whoever installed it.
//
// plus policy routing: `ip rule fwmark <capture_mark>/<capture_mask> lookup <route_table>` and a
// `local 0.0.0.0/0` (`local ::/0`) route to lo in that table, which is what makes the kernel
// deliver TPROXY'd packets, addressed to foreign IPs, to the proxy's sockets.
//
// Rules are written the way iptables-save prints them back (option order, hex marks), so what
// a node holds can be compared with what was rendered.

#include <string>
#include <vector>

#include "net/ip_address.hpp"
#include "redirect/redirect_options.hpp"

namespace dsproxy::redirect {

using Argv = std::vector<std::string>;

struct ChainNames {
  std::string prerouting;  // DSPROXY_PREROUTING
  std::string divert;      // DSPROXY_DIVERT
  std::string outbound;    // DSPROXY_OUTBOUND
  std::string inbound;     // DSPROXY_INBOUND
  std::string dns;         // DSPROXY_DNS: UDP/TCP port 53 from node pods, with options.dns_capture
};
ChainNames chain_names(const RedirectOptions& options);

// The addresses of `family` among `ips`, sorted and without duplicates: the order rules are
// rendered in, so equal pod sets always give equal text.
std::vector<net::IpAddress> addresses_of(net::Family family, const std::vector<net::IpAddress>& ips);

// iptables-restore --noflush input ("*mangle" ... "COMMIT") that (re)creates all the chains
// with their rules. The rules name the pods set (<prefix>_PODS4/6, ip_sets.hpp), not the pods,
// so the text is the same whatever pods the node has and the set must exist before it is
// applied. Declaring a chain flushes it under --noflush, so applying this is an atomic replace
// and is idempotent. The PREROUTING jump is not in it (see IptablesCommands).
std::string render_iptables(net::Family family, const RedirectOptions& options);
// `ipset -exist restore` input that makes the pods set of `family` hold exactly that family's
// addresses among `node_pod_ips` (a fill and swap: see ip_sets.hpp).
std::string render_pods_fill(net::Family family, const std::vector<net::IpAddress>& node_pod_ips,
                             const RedirectOptions& options);
// Flushes and deletes all four chains (declared first, so it also succeeds when some are absent).
// Fails while PREROUTING still jumps to DSPROXY_PREROUTING: delete the jump first.
std::string render_iptables_removal(net::Family family, const RedirectOptions& options);
// The first stage of a removal (Redirector::release_capture): empties the chains that TPROXY new
// connections (OUTBOUND, INBOUND, and DNS with `dns_chain`) in one atomic restore, and leaves the
// PREROUTING jump, the socket divert and the policy routing, which steer the packets of
// connections the proxy already holds, or is in the middle of accepting, to its sockets.
std::string render_capture_release(const RedirectOptions& options, bool dns_chain);

struct IptablesCommands {
  Argv restore;      // iptables-restore -w --noflush      (text on stdin)
  Argv list_mangle;  // iptables -w -t mangle -S           (which of our chains exist)
  Argv check_jump;   // iptables -w -t mangle -C PREROUTING -j DSPROXY_PREROUTING
  Argv insert_jump;  // iptables -w -t mangle -I PREROUTING 1 -j DSPROXY_PREROUTING
  Argv delete_jump;  // iptables -w -t mangle -D PREROUTING -j DSPROXY_PREROUTING
};
IptablesCommands iptables_commands(net::Family family, const RedirectOptions& options);

struct PolicyRoutingCommands {
  Argv show_rule;      // ip -4 rule show pref 32000             install: add only if it lists nothing
  Argv add_rule;       // ip -4 rule add fwmark 0x1000/0x1000 lookup 133 pref 32000
  Argv replace_route;  // ip -4 route replace local 0.0.0.0/0 dev lo table 133
  Argv delete_rule;    // ip -4 rule del pref 32000              uninstall: repeat until it fails
  Argv flush_routes;   // ip -4 route flush table 133
};
PolicyRoutingCommands policy_routing_commands(net::Family family, const RedirectOptions& options);

// The selector as `ip rule show` prints it: "fwmark 0x1000/0x1000" ("fwmark 0x1000" for a full mask).
std::string fwmark_selector(const RedirectOptions& options);

// `dsproxy redirect print`: both families' commands as a commented POSIX shell script that does
// what Redirector::install does (policy routing, restore input, PREROUTING jump), followed by
// the uninstall steps as comments.
std::string render_script(const std::vector<net::IpAddress>& node_pod_ips, const RedirectOptions& options);

}  // namespace dsproxy::redirect
