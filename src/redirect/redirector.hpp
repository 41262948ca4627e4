#pragma once
// Applies, updates and removes the transparent-capture rules of one node (see rule_renderer.hpp
// for their shape), for IPv4 and IPv6, through a CommandRunner. Only the families that are on
// in the options (RedirectOptions::ipv4/ipv6) are touched, by every call below: a family that is
// off on this node gets no rule, no update and no removal attempt.
//
//   install      policy routing first, then the pods set (filled aside and swapped in), the
//                chains in one iptables-restore --noflush, and last the PREROUTING jump that
//                starts capture; safe to repeat (nothing is added twice). On failure it throws
//                and may leave a partial install: call uninstall().
//   update_pods  changes only the pods set, by its difference: one `ipset restore` per family
//                whose pods changed, additions before deletions; no rule is touched, so the
//                cost is that of the change, not of the node's pod count.
//   release_capture  the first stage of a staged removal: new connections are no longer
//                captured (the TPROXY chains are emptied), while the socket divert and the
//                policy routing stay, so the packets of connections the proxy holds, or whose
//                handshake it is completing, still reach its sockets; uninstall() later removes
//                the rest. Best effort: tries every family and returns those whose capture is
//                gone (released, or never installed); a family missing from the result still
//                captures, and its failure is logged. Never throws for a command's failure.
//   uninstall    removes every jump, chain, set, ip rule and route, whether or not this object (or
//                this process) installed them; best effort: it carries on past failures and
//                reports them all at the end.
//
// Sysctls are left alone: IP forwarding is already on on any Kubernetes node, and TPROXY needs
// nothing else from them. The calls are serialised internally, so a reload thread and a
// shutdown path may share one Redirector.

#include <array>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "net/ip_address.hpp"
#include "redirect/command_runner.hpp"
#include "redirect/redirect_options.hpp"

namespace dsproxy::redirect {

// What failed, with the command line (shell-quoted) and the program's stderr, e.g.
//   redirect: `ip -6 route replace local ::/0 dev lo table 133` failed (exit 2): Error: Nexthop device is not up.
class RedirectError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Redirector {
 public:
  // Throws RedirectError listing every problem validate(options) finds. `runner` must outlive this.
  Redirector(RedirectOptions options, CommandRunner& runner);

  // Addresses of both families may be mixed; duplicates are ignored.
  void install(const std::vector<net::IpAddress>& node_pod_ips);
  // Before a successful install() this is install(). Tries every family that is on, then throws if any failed.
  void update_pods(const std::vector<net::IpAddress>& node_pod_ips);
  std::vector<net::Family> release_capture();
  void uninstall();
  // The install as a shell script, for `dsproxy redirect print`; runs nothing.
  std::string print(const std::vector<net::IpAddress>& node_pod_ips) const;

  const RedirectOptions& options() const { return options_; }

 private:
  struct FamilyState {
    bool installed = false;
    std::vector<std::string> pods;  // the pods set's members as applied: this family only, sorted, unique
    bool pods_known = true;         // false after an update failed part way: refill, do not patch
  };

  void install_family(net::Family family, const std::vector<net::IpAddress>& node_pod_ips);
  void ensure_policy_rule(net::Family family);
  void update_family(net::Family family, const std::vector<net::IpAddress>& node_pod_ips);
  void uninstall_family(net::Family family, std::vector<std::string>& errors);
  CommandResult run_checked(const Command& command);
  FamilyState& state(net::Family family) { return state_[family == net::Family::v4 ? 0 : 1]; }

  RedirectOptions options_;
  CommandRunner& runner_;
  std::mutex mutex_;
  std::array<FamilyState, 2> state_;
};

}  // namespace dsproxy::redirect
