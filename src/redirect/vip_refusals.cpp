#include "redirect/vip_refusals.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "redirect/ip_sets.hpp"
#include "redirect/redirector.hpp"

namespace dsproxy::redirect {

namespace {

constexpr int kMaxRepeatedDeletes = 64;  // bounds "delete until gone" against a misbehaving tool

// Orders like IpAddress's operator<=> within one family (both compare the bytes as unsigned),
// but with memcmp: the defaulted comparison of std::array goes byte by byte, and sorting
// 100,000 members with it took ~50 ms of every config change.
bool fast_less(const net::IpAddress& a, const net::IpAddress& b) {
  return std::memcmp(a.bytes().data(), b.bytes().data(), a.bytes().size()) < 0;
}
bool fast_less(const VipPort& a, const VipPort& b) {
  const int c = std::memcmp(a.vip.bytes().data(), b.vip.bytes().data(), a.vip.bytes().size());
  return c < 0 || (c == 0 && a.port < b.port);
}


std::size_t index_of(net::Family f) { return f == net::Family::v4 ? 0 : 1; }

const std::string& iptables_of(net::Family f, const RedirectOptions& o) {
  return f == net::Family::v4 ? o.iptables : o.ip6tables;
}
const std::string& restore_of(net::Family f, const RedirectOptions& o) {
  return f == net::Family::v4 ? o.iptables_restore : o.ip6tables_restore;
}

struct Jump {
  std::string table;
  std::string hook;
  std::vector<std::string> match;
  std::string target;
};

std::vector<Jump> jumps_of(const RedirectOptions& o) {
  return {
      {"filter", "INPUT", {"-p", "tcp", "-m", "tcp", "--syn"}, refuse_chain_name(o)},
      // raw: before conntrack, so before any NAT (see the header).
      {"raw", "PREROUTING", {}, notrack_chain_name(o)},
      {"raw", "OUTPUT", {}, notrack_chain_name(o)},
  };
}

std::vector<std::string> jump_args(const Jump& j, const char* op) {
  std::vector<std::string> args{"-w", "-t", j.table, op, j.hook};
  if (std::string_view(op) == "-I") args.push_back("1");
  args.insert(args.end(), j.match.begin(), j.match.end());
  args.push_back("-j");
  args.push_back(j.target);
  return args;
}

Command iptables_command(net::Family f, const RedirectOptions& o, std::vector<std::string> args) {
  args.insert(args.begin(), iptables_of(f, o));
  return Command{std::move(args), {}};
}

std::string failure(const Command& c, const CommandResult& r) {
  std::string err = r.err;
  while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
  return fmt::format("`{}` failed (exit {}){}{}", format_argv(c.argv), r.exit_code, err.empty() ? "" : ": ", err);
}

std::vector<std::string> text_of(const std::vector<net::IpAddress>& ips) {
  std::vector<std::string> out;
  out.reserve(ips.size());
  for (const auto& ip : ips) out.push_back(ip_set_member(ip));
  return out;
}
std::vector<std::string> text_of(const std::vector<VipPort>& ports) {
  std::vector<std::string> out;
  out.reserve(ports.size());
  for (const auto& p : ports) out.push_back(ip_set_member(p.vip, p.port));
  return out;
}

// after - before and before - after of two sorted vectors.
template <typename T>
std::pair<std::vector<T>, std::vector<T>> changes(const std::vector<T>& before, const std::vector<T>& after) {
  std::pair<std::vector<T>, std::vector<T>> out;
  auto less = [](const T& a, const T& b) { return fast_less(a, b); };
  std::set_difference(after.begin(), after.end(), before.begin(), before.end(), std::back_inserter(out.first), less);
  std::set_difference(before.begin(), before.end(), after.begin(), after.end(), std::back_inserter(out.second), less);
  return out;
}

std::array<VipSetMembers, 2> members_of(const std::vector<VipOpenPorts>& vips) {
  return {vip_set_members(net::Family::v4, vips), vip_set_members(net::Family::v6, vips)};
}

}  // namespace

std::string refuse_chain_name(const RedirectOptions& options) { return options.chain_prefix + "_REFUSE"; }
std::string notrack_chain_name(const RedirectOptions& options) { return options.chain_prefix + "_NOTRACK"; }

VipSetMembers vip_set_members(net::Family family, const std::vector<VipOpenPorts>& vips) {
  VipSetMembers m;
  for (const auto& v : vips) {
    if (v.vip.family() != family) continue;
    m.vips.push_back(v.vip);
    for (auto port : v.open_ports) m.open.push_back({v.vip, port});
  }
  // The snapshot hands VIPs over in address order already: then checking is all it costs.
  const auto less = [](const auto& a, const auto& b) { return fast_less(a, b); };
  if (!std::is_sorted(m.vips.begin(), m.vips.end(), less)) std::sort(m.vips.begin(), m.vips.end(), less);
  m.vips.erase(std::unique(m.vips.begin(), m.vips.end()), m.vips.end());
  if (!std::is_sorted(m.open.begin(), m.open.end(), less)) std::sort(m.open.begin(), m.open.end(), less);
  m.open.erase(std::unique(m.open.begin(), m.open.end()), m.open.end());
  return m;
}

std::string render_refusal_rules(net::Family family, const RedirectOptions& o) {
  const std::string refuse = refuse_chain_name(o), notrack = notrack_chain_name(o);
  const std::string vips = vips_set(o, family).name, open = open_set(o, family).name, pods = pods_set(o, family).name;
  std::string out = "*filter\n:" + refuse + " - [0:0]\n";
  // With DNS capture, TCP port 53 to any address (the DNS VIP above all) belongs to the DNS
  // proxy, whatever endpoints the Service has: never refuse it.
  if (o.dns_capture) out += fmt::format("-A {} -p tcp -m tcp --dport 53 -j RETURN\n", refuse);
  out += fmt::format("-A {} -p tcp -m set --match-set {} dst,dst -j RETURN\n", refuse, open);
  out += fmt::format("-A {} -p tcp -m set --match-set {} dst -j REJECT --reject-with tcp-reset\n", refuse, vips);
  out += "COMMIT\n*raw\n:" + notrack + " - [0:0]\n";
  // Requests (pod -> ClusterIP, in PREROUTING) and the proxy's answers (ClusterIP -> pod, in
  // OUTPUT) in one chain: a packet of either shape seen at the other hook is not one kube-proxy
  // would translate either.
  out += fmt::format("-A {} -p tcp -m set --match-set {} src -m set --match-set {} dst -j CT --notrack\n", notrack,
                     pods, vips);
  out += fmt::format("-A {} -p tcp -m set --match-set {} src -m set --match-set {} dst -j CT --notrack\n", notrack,
                     vips, pods);
  if (o.dns_capture) {
    out += fmt::format(
        "-A {} -p udp -m udp --dport 53 -m set --match-set {} src -m set --match-set {} dst -j CT --notrack\n",
        notrack, pods, vips);
    out += fmt::format(
        "-A {} -p udp -m udp --sport 53 -m set --match-set {} src -m set --match-set {} dst -j CT --notrack\n",
        notrack, vips, pods);
  }
  return out + "COMMIT\n";
}

std::string render_vip_sets_fill(const std::vector<VipOpenPorts>& vips, const RedirectOptions& o) {
  std::string out;
  for (auto family : families(o)) {
    const auto m = vip_set_members(family, vips);
    out += ip_set_create_line(pods_set(o, family));
    out += render_ip_set_fill(open_set(o, family), text_of(m.open));
    out += render_ip_set_fill(vips_set(o, family), text_of(m.vips));
  }
  return out;
}

std::string render_vip_sets_update(const std::array<VipSetMembers, 2>& before, const std::array<VipSetMembers, 2>& after,
                                   const RedirectOptions& o) {
  std::array<SetDifference, 2> vips, open;
  for (auto family : families(o)) {
    const auto i = index_of(family);
    auto [vips_added, vips_removed] = changes(before[i].vips, after[i].vips);
    auto [open_added, open_removed] = changes(before[i].open, after[i].open);
    vips[i] = {text_of(vips_added), text_of(vips_removed)};
    open[i] = {text_of(open_added), text_of(open_removed)};
  }
  // ipset applies the lines one at a time, so every prefix of this text is a state some SYN may
  // see. Open ports first, then VIPs: a new Service is never refused on a port it serves. VIPs
  // leave before their open ports, for the same reason. A port that closes goes last.
  std::string out;
  for (auto family : families(o)) out += render_ip_set_adds(open_set(o, family).name, open[index_of(family)].added);
  for (auto family : families(o)) out += render_ip_set_adds(vips_set(o, family).name, vips[index_of(family)].added);
  for (auto family : families(o)) out += render_ip_set_dels(vips_set(o, family).name, vips[index_of(family)].removed);
  for (auto family : families(o)) out += render_ip_set_dels(open_set(o, family).name, open[index_of(family)].removed);
  return out;
}

std::string render_refusals_script(const std::vector<VipOpenPorts>& vips, const RedirectOptions& o) {
  std::string out =
      "\n# ---- ClusterIPs: ports with no servable endpoint answer SYN with a TCP reset; captured ----\n"
      "# ---- ClusterIP traffic is untracked, so kube-proxy's DNAT never rewrites it            ----\n";
  out += format_argv(ipset_restore_argv(o)) + " <<'EOF'\n" + render_vip_sets_fill(vips, o) + "EOF\n";
  for (auto family : families(o)) {
    out += fmt::format("{} -w --noflush <<'EOF'\n{}EOF\n", restore_of(family, o), render_refusal_rules(family, o));
    for (const auto& j : jumps_of(o))
      out += fmt::format("{} {} 2>/dev/null || {} {}\n", iptables_of(family, o), format_argv(jump_args(j, "-C")),
                         iptables_of(family, o), format_argv(jump_args(j, "-I")));
  }
  return out;
}

void VipRefusals::install(const std::vector<VipOpenPorts>& vips, const std::array<VipSetMembers, 2>& members) {
  // Sets before the rules that name them; the jumps last.
  const Command fill{ipset_restore_argv(options_), render_vip_sets_fill(vips, options_)};
  if (auto r = runner_.run(fill); !r.ok()) throw RedirectError("redirect: " + failure(fill, r));
  for (auto family : families(options_)) {
    const Command restore{{restore_of(family, options_), "-w", "--noflush"}, render_refusal_rules(family, options_)};
    if (auto r = runner_.run(restore); !r.ok()) throw RedirectError("redirect: " + failure(restore, r));
    for (const auto& j : jumps_of(options_)) {
      const Command check = iptables_command(family, options_, jump_args(j, "-C"));
      const auto checked = runner_.run(check);
      if (checked.exit_code == 1 || checked.exit_code == 2) {
        const Command insert = iptables_command(family, options_, jump_args(j, "-I"));
        if (auto r = runner_.run(insert); !r.ok()) throw RedirectError("redirect: " + failure(insert, r));
      } else if (!checked.ok()) {
        throw RedirectError("redirect: " + failure(check, checked));
      }
    }
  }
  applied_ = members;
  installed_ = true;
}

void VipRefusals::apply(const std::vector<VipOpenPorts>& vips) {
  const auto members = members_of(vips);
  if (installed_ && members == applied_) return;
  if (!installed_) {
    install(vips, members);
  } else {
    const Command update{ipset_restore_argv(options_), render_vip_sets_update(applied_, members, options_)};
    if (update.input.empty()) {
      applied_ = members;  // only a family that is off changed
      return;
    }
    // A failure part way leaves the sets somewhere between: install again (a whole refill) next time.
    installed_ = false;
    if (auto r = runner_.run(update); !r.ok()) throw RedirectError("redirect: " + failure(update, r));
    installed_ = true;
    applied_ = members;
  }
  std::size_t open = 0, vip_count = 0;
  for (auto family : families(options_)) {
    open += members[index_of(family)].open.size();
    vip_count += members[index_of(family)].vips.size();
  }
  spdlog::info("redirect: {} ClusterIP(s) in the refusal sets, {} open ClusterIP:port(s)", vip_count, open);
}

void VipRefusals::uninstall() {
  std::vector<std::string> errors;
  for (auto family : families(options_)) {
    for (const auto& j : jumps_of(options_)) {
      for (int i = 0; i < kMaxRepeatedDeletes; ++i) {
        const Command check = iptables_command(family, options_, jump_args(j, "-C"));
        const auto checked = runner_.run(check);
        if (checked.exit_code == 1 || checked.exit_code == 2) break;
        if (!checked.ok()) {
          errors.push_back(failure(check, checked));
          break;
        }
        const Command del = iptables_command(family, options_, jump_args(j, "-D"));
        if (auto r = runner_.run(del); !r.ok()) {
          errors.push_back(failure(del, r));
          break;
        }
      }
    }
    // Only touch a table if our chain exists there: restoring into a namespace without that
    // table would create it (iptables-nft), a trace where we had none.
    for (const auto& [table, chain] : {std::pair<std::string, std::string>{"filter", refuse_chain_name(options_)},
                                       std::pair<std::string, std::string>{"raw", notrack_chain_name(options_)}}) {
      const Command list = iptables_command(family, options_, {"-w", "-t", table, "-S"});
      const auto listed = runner_.run(list);
      if (listed.ok() && listed.out.find("-N " + chain + "\n") == std::string::npos) continue;
      const Command removal{{restore_of(family, options_), "-w", "--noflush"},
                            "*" + table + "\n:" + chain + " - [0:0]\n-X " + chain + "\nCOMMIT\n"};
      if (auto r = runner_.run(removal); !r.ok()) errors.push_back(failure(removal, r));
    }
    destroy_ip_sets(runner_, options_, {vips_set(options_, family).name, open_set(options_, family).name}, errors);
  }
  installed_ = false;
  applied_ = {};
  if (errors.empty()) return;
  std::string text = "redirect: refusal rules not fully removed:";
  for (const auto& e : errors) text += "\n  - " + e;
  throw RedirectError(text);
}

}  // namespace dsproxy::redirect
