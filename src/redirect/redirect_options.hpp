#pragma once
// The marks, ports and table numbers shared by the redirect rules and the proxy's sockets.
// They must agree: the proxy marks its upstream sockets with proxy_mark, and the rules let
// packets carrying it through untouched, so nothing the proxy sends is captured again.

#include <cstdint>
#include <string>
#include <vector>

#include "net/ip_address.hpp"

namespace dsproxy::redirect {

// --iptables-backend: which iptables flavour the rules are written with (iptables_backend.hpp).
enum class IptablesBackend { automatic, nft, legacy };

struct RedirectOptions {
  std::uint16_t outbound_port = 15001;  // TCP from this node's pods
  std::uint16_t inbound_port = 15006;   // TCP to this node's pods from elsewhere
  // HBONE: TCP to port hbone_port of this node's pods (another node's proxy opening a tunnel to
  // one of them) goes to the proxy's HBONE listener on the same port instead of the inbound one.
  // 0: mTLS is off, no such rule (and a pod's own port 15008 is captured like any other).
  std::uint16_t hbone_port = 0;
  // DNS capture: UDP and TCP to port 53 from this node's pods, whatever the nameserver address,
  // go to dns_port (the DNS proxy). Off in this struct's defaults, so the plain TCP rules read
  // as before; `dsproxy run` and `dsproxy redirect` turn it on unless --no-dns-capture.
  bool dns_capture = false;
  std::uint16_t dns_port = 15053;
  // Set by TPROXY and by the socket divert rule; selects the policy-routing table whose
  // `local 0.0.0.0/0` / `local ::/0` route delivers foreign-addressed packets to our sockets.
  // Must not overlap proxy_mark's bits, or the proxy's own traffic would be routed to lo.
  std::uint32_t capture_mark = 0x1000;
  std::uint32_t capture_mask = 0x1000;
  // SO_MARK of every upstream socket the proxy opens.
  std::uint32_t proxy_mark = 0x539;
  std::uint32_t proxy_mask = 0xfff;
  int route_table = 133;
  int rule_priority = 32000;
  std::string chain_prefix = "DSPROXY";
  // The families whose rules are installed, updated and removed (node_families.hpp decides at
  // start). A family that is off is left alone entirely: on a node with IPv6 disabled even the
  // `local ::/0 dev lo` route cannot be added, and no packet of that family can arrive anyway.
  bool ipv4 = true;
  bool ipv6 = true;

  // What --iptables-backend asked for. resolve_iptables_backend() (iptables_backend.hpp) turns
  // automatic into the backend the node uses and points the four iptables programs below at its
  // variants (iptables-nft-restore, iptables-legacy-restore, ...): the two backends' rules
  // coexist in the kernel but neither tool shows or orders against the other's.
  IptablesBackend iptables_backend = IptablesBackend::automatic;
  // The programs the rules are applied with: a bare name is looked up in PATH, then in
  // /usr/local/sbin, /usr/sbin and /sbin (daemons often run with a PATH lacking the sbin
  // directories).
  std::string iptables = "iptables";
  std::string ip6tables = "ip6tables";
  std::string iptables_restore = "iptables-restore";
  std::string ip6tables_restore = "ip6tables-restore";
  std::string ip = "ip";
  // Fills the sets the rules match (ip_sets.hpp); independent of the iptables backend.
  std::string ipset = "ipset";
};

// The families that are on, IPv4 first: the order rules are applied and removed in.
std::vector<net::Family> families(const RedirectOptions& options);
bool family_on(const RedirectOptions& options, net::Family family);

// Every reason these options cannot work (overlapping marks, a reserved routing table, a chain
// prefix iptables would reject, ...), one sentence each; empty when they are usable.
std::vector<std::string> validate(const RedirectOptions& options);

}  // namespace dsproxy::redirect
