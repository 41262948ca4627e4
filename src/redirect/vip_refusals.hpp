#pragma once
// The rules keyed by ClusterIP: fast refusal of ports with nowhere to go, and the conntrack
// exemption of captured ClusterIP traffic that lets dsproxy work next to kube-proxy.
//
// Refusal. A captured SYN to a VIP:port whose Service has no servable endpoint (or to a port the
// Service does not have) would otherwise be accepted by the proxy and then reset: the client
// sees a connection that opened and died. With these rules the kernel answers the SYN itself
// with a TCP reset, so the client's connect() fails at once with "connection refused", as it
// would against a host with nothing listening. The sets follow every config change: a VIP:port
// opens again as soon as an endpoint appears.
//
// Conntrack exemption (why): kube-proxy (iptables or nftables mode) DNATs ClusterIP:port to an
// endpoint in nat PREROUTING (priority -100). Our TPROXY runs earlier (mangle, -150) and assigns
// the packet to the proxy's listener, but NAT still rewrites the destination before the packet
// reaches the socket: the proxy would accept a connection "to" the pod kube-proxy picked,
// losing the ClusterIP and with it the Service's family policy (conntrack then un-NATs the
// replies, so the client never notices). NAT only ever happens to tracked packets, so the
// captured pod -> ClusterIP packets (and the proxy's replies, ClusterIP -> pod) are untracked
// in the raw table, which runs before conntrack (-300 < -200) and before any NAT. Nothing else
// loses tracking: not the proxy's upstream connections (their SNAT/masquerade on the way out of
// the cluster needs conntrack), not traffic to Services from other nodes or from the node
// itself (kube-proxy keeps serving those), not UDP other than DNS. TPROXY and `-m socket`
// look sockets up by the packet's own addresses, so untracked packets are captured as before.
//
// Shape, per family (filter and raw tables; sets from ip_sets.hpp):
//   filter INPUT -p tcp --syn -> DSPROXY_REFUSE          only new connections pay for the lookup
//   DSPROXY_REFUSE [-p tcp --dport 53 -j RETURN]         with DNS capture: port 53 is the DNS proxy's
//   DSPROXY_REFUSE -p tcp -m set --match-set DSPROXY_OPEN4 dst,dst -j RETURN
//   DSPROXY_REFUSE -p tcp -m set --match-set DSPROXY_VIPS4 dst -j REJECT --reject-with tcp-reset
//   raw PREROUTING -> DSPROXY_NOTRACK, raw OUTPUT -> DSPROXY_NOTRACK
//   DSPROXY_NOTRACK -p tcp -m set --match-set DSPROXY_PODS4 src -m set --match-set DSPROXY_VIPS4 dst -j CT --notrack
//   DSPROXY_NOTRACK -p tcp -m set --match-set DSPROXY_VIPS4 src -m set --match-set DSPROXY_PODS4 dst -j CT --notrack
//   (and the same for UDP port 53 with DNS capture)
// A fixed number of rules: the ClusterIPs and open ports are set members, so a SYN costs two
// hash lookups however many Services the cluster has, and an update changes only members.

#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "net/ip_address.hpp"
#include "redirect/command_runner.hpp"
#include "redirect/redirect_options.hpp"

namespace dsproxy::redirect {

struct VipOpenPorts {
  net::IpAddress vip;
  std::vector<std::uint16_t> open_ports;  // every other TCP port of the VIP is refused
  bool operator==(const VipOpenPorts&) const = default;
};

std::string refuse_chain_name(const RedirectOptions& options);
std::string notrack_chain_name(const RedirectOptions& options);

// The members of one family's VIPS and OPEN sets, sorted and unique, as addresses (formatting
// 100,000 members as ipset text takes ~170 ms: VipRefusals only ever formats what differs, and
// the whole sets only on install). For `redirect print` and the full fill.
struct VipPort {
  net::IpAddress vip;
  std::uint16_t port = 0;
  auto operator<=>(const VipPort&) const = default;
};
struct VipSetMembers {
  std::vector<net::IpAddress> vips;
  std::vector<VipPort> open;
  bool operator==(const VipSetMembers&) const = default;
};
VipSetMembers vip_set_members(net::Family family, const std::vector<VipOpenPorts>& vips);

// iptables-restore --noflush input that (re)creates the REFUSE (filter) and NOTRACK (raw) chains
// of one family. Independent of the VIPs: they are in the sets.
std::string render_refusal_rules(net::Family family, const RedirectOptions& options);
// `ipset -exist restore` input that fills the VIPS and OPEN sets of every family that is on
// (fill and swap), and creates the pods sets if missing (the NOTRACK rules name them).
std::string render_vip_sets_fill(const std::vector<VipOpenPorts>& vips, const RedirectOptions& options);
// `ipset -exist restore` input that turns `before` into `after` (index 0: IPv4, 1: IPv6), in an
// order that never refuses a port open both before and after: open ports added, VIPs added, VIPs
// deleted, open ports deleted. Empty when nothing changes.
std::string render_vip_sets_update(const std::array<VipSetMembers, 2>& before, const std::array<VipSetMembers, 2>& after,
                                   const RedirectOptions& options);
// Shell lines for `dsproxy redirect print`.
std::string render_refusals_script(const std::vector<VipOpenPorts>& vips, const RedirectOptions& options);

// A change of the refusal sets between two states, for VipRefusals::apply_changes: `changed`
// holds the complete new open-port list of every VIP that is new or whose ports differ (not a
// delta of ports), `removed` the VIPs that are gone. A VIP in both is changed; a VIP listed
// twice in `changed` gets the union of its ports; removing an unknown VIP does nothing.
struct VipChanges {
  std::vector<VipOpenPorts> changed;
  std::vector<net::IpAddress> removed;
  bool empty() const { return changed.empty() && removed.empty(); }
};

class VipRefusals {
 public:
  VipRefusals(RedirectOptions options, CommandRunner& runner) : options_(std::move(options)), runner_(runner) {}

  // The whole list of ClusterIPs (any order; a VIP listed twice gets the union of its ports).
  // First call: fills the sets, (re)creates the chains and makes sure the jumps exist; later
  // calls change only the set members that differ, in one `ipset restore`. The diff is one hash
  // lookup per VIP against what was applied, and only the difference is formatted. Idempotent;
  // throws RedirectError naming the failing command (the next call then refills the sets whole).
  void apply(const std::vector<VipOpenPorts>& vips);
  // Only what changed (e.g. the control plane's diff of two snapshots): costs the size of the
  // change, whatever the cluster's size. Same guarantees as apply(); before any successful
  // apply, or after a failure, it refills the sets whole from what it knows (everything it was
  // ever told), so a first call with the whole cluster in `changed` is an install.
  void apply_changes(const VipChanges& changes);
  // The first stage of a staged removal (the capture is released, the proxy still holds
  // connections): raw PREROUTING's jump to the NOTRACK chain is narrowed to packets of a
  // connection the proxy holds (`-m socket --transparent`), so those stay untracked (tracked
  // mid-stream, kube-proxy's DNAT would take them over), while a new connection to a ClusterIP,
  // no longer captured, is tracked and DNATed by kube-proxy as without dsproxy (left untracked
  // it would go nowhere). The refusals stay: an uncaptured SYN to a ClusterIP is forwarded and
  // never reaches filter INPUT. Only `released` families (those whose capture is gone: a
  // family still captured needs the wide exemption, or its captured SYNs would be tracked and
  // DNATed before the proxy accepts them). Best effort: false if a family's wide jump may still
  // be there (the failures are logged; the caller then removes every rule rather than leave
  // new ClusterIP connections untracked and uncaptured, i.e. black-holed).
  bool release(const std::vector<net::Family>& released);
  // Removes the jumps (also release()'s), the chains and the VIPS/OPEN sets; best effort, reports every failure at the end.
  void uninstall();

  // What the sets hold (or are to hold, after a failed update): VIPs and open VIP:ports of the
  // families that are on.
  std::size_t vip_count() const { return wanted_.size(); }
  std::size_t open_count() const { return open_count_; }

 private:
  struct Wanted {
    std::vector<std::uint16_t> ports;  // sorted, unique
    std::uint64_t seen = 0;            // apply(): the pass that last saw this VIP
  };
  void install();
  // Applies `changes` (duplicates merged) to wanted_ and, when the sets are known to match
  // wanted_, the difference to the sets; else refills them whole.
  void update(VipChanges changes);

  RedirectOptions options_;
  CommandRunner& runner_;
  std::unordered_map<net::IpAddress, Wanted, net::IpAddressHash> wanted_;
  std::size_t open_count_ = 0;
  std::uint64_t pass_ = 0;
  bool installed_ = false;  // the chains and jumps exist and the sets hold exactly wanted_
};

}  // namespace dsproxy::redirect
