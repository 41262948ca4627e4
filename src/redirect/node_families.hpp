#pragma once
// Which IP families this node can carry, decided once when dsproxy starts.
//
// A Kubernetes node may have IPv6 switched off (net.ipv6.conf.all.disable_ipv6=1, or the kernel
// booted with ipv6.disable=1) or may simply have no IPv4 address but loopback's. A family that
// is off gets no capture rules, no listeners and no DNS sockets; the other one is served in full.
// Services and endpoints of the off family stay in the snapshot: no connection of that family
// can arrive, and the rest of the config does not depend on them.
//
// How IPv6 is judged off (any of):
//   - socket(AF_INET6) fails with anything but a resource shortage: EAFNOSUPPORT when the kernel
//     has no IPv6 at all (ipv6.disable=1, and then /proc/sys/net/ipv6 does not exist either), or
//     a sandbox that forbids the family;
//   - /proc/sys/net/ipv6/conf/all/disable_ipv6 is 1: the administrator turned IPv6 off;
//   - /proc/sys/net/ipv6/conf/lo/disable_ipv6 is 1: the capture route `local ::/0 dev lo` cannot
//     exist ("IPv6 is disabled on nexthop device"), so nothing could be captured.
// /proc/sys/net shows the values of the network namespace of the process reading it, so this
// is the node namespace's view. A file that is missing or unreadable while the socket works
// proves nothing and is ignored: a family is only off on evidence.
// IPv4 cannot be switched off in Linux; it is judged off only when socket(AF_INET) fails the
// same way. A node without IPv4 addresses keeps IPv4 on: its rules match no pod and cost nothing.
//
// Decided once: a family switched on or off later is picked up by restarting dsproxy.

#include <optional>
#include <string>

#include "net/ip_address.hpp"

namespace dsproxy::redirect {

struct FamilyAvailability {
  bool on = true;
  std::string reason;  // why it is off, e.g. "net.ipv6.conf.all.disable_ipv6=1"; empty when on
};

struct NodeFamilies {
  FamilyAvailability v4;
  FamilyAvailability v6;
  bool has(net::Family family) const { return family == net::Family::v4 ? v4.on : v6.on; }
};

// What was observed, without judging it (so the judgement can be tested without a kernel).
struct FamilyProbe {
  int socket_errno = 0;  // errno of socket(AF_INET[6], SOCK_STREAM); 0: the socket was created
  // IPv6 only: the contents of /proc/sys/net/ipv6/conf/{all,lo}/disable_ipv6; nullopt: could not read.
  std::optional<std::string> all_disable_ipv6;
  std::optional<std::string> lo_disable_ipv6;
};

FamilyAvailability judge(net::Family family, const FamilyProbe& probe);

// Probes the running kernel: sockets, and the sysctls under `proc_sys_net` (tests pass a
// directory of their own).
FamilyProbe probe(net::Family family, const std::string& proc_sys_net = "/proc/sys/net");
NodeFamilies detect_node_families(const std::string& proc_sys_net = "/proc/sys/net");

// The one line to log at start when a family is off, e.g.
//   "IPv6 is off on this node (net.ipv6.conf.all.disable_ipv6=1): serving IPv4 only; no IPv6
//    capture rules, listeners or DNS sockets. Restart dsproxy after turning IPv6 on."
// Empty when both are on. When both are off, says so (the caller cannot serve anything).
std::string describe_off_families(const NodeFamilies& families);

}  // namespace dsproxy::redirect
