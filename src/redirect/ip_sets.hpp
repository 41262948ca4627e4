#pragma once
// The kernel ipsets the redirect rules match with `-m set`, so every rule costs one hash lookup
// per packet however many pods or ClusterIPs the node has (one rule per object made every SYN
// walk tens of thousands of rules on a large cluster).
//
//   <prefix>_PODS4 / _PODS6   hash:ip        this node's pod addresses   (Redirector: capture)
//   <prefix>_VIPS4 / _VIPS6   hash:ip        every ClusterIP             (VipRefusals)
//   <prefix>_OPEN4 / _OPEN6   hash:ip,port   ClusterIP,tcp:port that has somewhere to go
//
// Why ipset and not native nftables sets: the capture stays in iptables (TPROXY, socket and
// addrtype matches, as before, on either iptables backend: xt_set works through nft_compat on
// iptables-nft and natively on iptables-legacy), so there is one rule mechanism and the sets are
// just a lookup it calls. ipsets live in the network namespace, independent of the iptables
// backend, and are changed element by element with `ipset restore` without touching any rule.
//
// Updates are differences only: `ipset -exist restore` with `add` and `del` lines (-exist makes
// re-adding a present element and deleting an absent one a no-op, so a retry after a partial
// failure converges). ipset applies the lines one by one, not as one transaction, so callers
// order them such that every intermediate state is safe (see VipRefusals). A full fill (install,
// or recovery after a failed update) builds a temporary set and `swap`s it in: rules see the old
// contents or the new ones, never an empty set.

#include <cstdint>
#include <string>
#include <vector>

#include "net/ip_address.hpp"
#include "redirect/redirect_options.hpp"

namespace dsproxy::redirect {

enum class IpSetType { ip, ip_port };

struct IpSetSpec {
  std::string name;
  IpSetType type = IpSetType::ip;
  net::Family family = net::Family::v4;
};

IpSetSpec pods_set(const RedirectOptions& options, net::Family family);
IpSetSpec vips_set(const RedirectOptions& options, net::Family family);
IpSetSpec open_set(const RedirectOptions& options, net::Family family);
// The temporary set a full fill swaps in: "<name>_NEXT".
std::string next_set_name(const IpSetSpec& set);

// Members as ipset prints and parses them: "10.96.0.1", "fd00::1", "10.96.0.1,tcp:9000".
std::string ip_set_member(const net::IpAddress& ip);
std::string ip_set_member(const net::IpAddress& ip, std::uint16_t tcp_port);

// "create NAME hash:ip family inet hashsize 1024 maxelem 1048576": the same parameters every time,
// so `create` under -exist is a no-op for a set we made before (and an error for a foreign set of
// the same name with other parameters, which is what we want to hear about).
std::string ip_set_create_line(const IpSetSpec& set);
std::string ip_set_create_line(const IpSetSpec& set, const std::string& name);

// Restore lines that make `set` hold exactly `members`, whatever it held before: fill
// <name>_NEXT, swap it with <name>, destroy it. `members` in the order given.
std::string render_ip_set_fill(const IpSetSpec& set, const std::vector<std::string>& members);
// Restore lines adding `added` then deleting `removed`.
std::string render_ip_set_adds(const std::string& name, const std::vector<std::string>& added);
std::string render_ip_set_dels(const std::string& name, const std::vector<std::string>& removed);

// What changes from `before` to `after`; both sorted and unique.
struct SetDifference {
  std::vector<std::string> added;
  std::vector<std::string> removed;
  bool empty() const { return added.empty() && removed.empty(); }
};
SetDifference difference(const std::vector<std::string>& before, const std::vector<std::string>& after);

// argv of `ipset -exist restore` (lines on stdin) and `ipset destroy NAME`.
std::vector<std::string> ipset_restore_argv(const RedirectOptions& options);
std::vector<std::string> ipset_destroy_argv(const RedirectOptions& options, const std::string& name);

class CommandRunner;
// Destroys every set in `names` (and its _NEXT), best effort: a set that does not exist is fine,
// every other failure is appended to `errors`. Call after the rules that match the sets are gone.
void destroy_ip_sets(CommandRunner& runner, const RedirectOptions& options, const std::vector<std::string>& names,
                     std::vector<std::string>& errors);

}  // namespace dsproxy::redirect
