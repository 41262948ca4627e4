#include "redirect/vip_refusals.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <optional>

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

// What release() puts in place of raw PREROUTING's jump: only packets of a connection the proxy
// holds (a transparent socket of ours matches their addresses) stay untracked. `-m socket` is
// allowed in PREROUTING and INPUT only, so it sits on this jump, not in the chain (raw OUTPUT
// jumps to the same chain).
Jump held_jump(const RedirectOptions& o) {
  return {"raw", "PREROUTING", {"-m", "socket", "--transparent"}, notrack_chain_name(o)};
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

namespace {

bool normalised(const std::vector<std::uint16_t>& ports) {
  return std::adjacent_find(ports.begin(), ports.end(), std::greater_equal<>()) == ports.end();
}
void normalise(std::vector<std::uint16_t>& ports) {
  if (normalised(ports)) return;
  std::sort(ports.begin(), ports.end());
  ports.erase(std::unique(ports.begin(), ports.end()), ports.end());
}

// One entry per VIP, ports sorted and unique, the union where a VIP came twice. The lists this
// sees are small (a change), or a whole cluster once in a rare fallback.
void merge_duplicates(std::vector<VipOpenPorts>& vips) {
  for (auto& v : vips) normalise(v.open_ports);
  if (vips.size() < 2) return;
  std::sort(vips.begin(), vips.end(), [](const auto& a, const auto& b) { return a.vip < b.vip; });
  std::size_t out = 0;
  for (std::size_t i = 1; i < vips.size(); ++i) {
    if (vips[i].vip == vips[out].vip) {
      auto& ports = vips[out].open_ports;
      ports.insert(ports.end(), vips[i].open_ports.begin(), vips[i].open_ports.end());
      normalise(ports);
    } else if (++out != i) {
      vips[out] = std::move(vips[i]);
    }
  }
  vips.resize(out + 1);
}

}  // namespace

void VipRefusals::install() {
  // Sorted by address before formatting: the same state always gives the same text.
  std::array<VipSetMembers, 2> members;
  for (const auto& [vip, wanted] : wanted_) {
    auto& m = members[index_of(vip.family())];
    m.vips.push_back(vip);
    for (auto port : wanted.ports) m.open.push_back({vip, port});
  }
  std::string fill;
  for (auto family : families(options_)) {
    auto& m = members[index_of(family)];
    std::sort(m.vips.begin(), m.vips.end(), [](const auto& a, const auto& b) { return fast_less(a, b); });
    std::sort(m.open.begin(), m.open.end(), [](const auto& a, const auto& b) { return fast_less(a, b); });
    fill += ip_set_create_line(pods_set(options_, family));
    fill += render_ip_set_fill(open_set(options_, family), text_of(m.open));
    fill += render_ip_set_fill(vips_set(options_, family), text_of(m.vips));
  }
  // Sets before the rules that name them; the jumps last.
  const Command fill_command{ipset_restore_argv(options_), std::move(fill)};
  if (auto r = runner_.run(fill_command); !r.ok()) throw RedirectError("redirect: " + failure(fill_command, r));
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
  installed_ = true;
}

void VipRefusals::apply(const std::vector<VipOpenPorts>& vips) {
  if (!installed_) {
    // Nothing to diff against that the sets are known to hold: the list is the new state.
    wanted_.clear();
    open_count_ = 0;
    VipChanges all;
    all.changed.reserve(vips.size());
    for (const auto& v : vips)
      if (family_on(options_, v.vip.family())) all.changed.push_back(v);
    update(std::move(all));
    return;
  }
  // One hash lookup per VIP; only the VIPs that differ are copied. Every VIP met is stamped
  // with this pass, so those never met (removed) are found without a second set, and a VIP
  // met twice (a duplicate, never from a snapshot) sends the list the slow way.
  const std::uint64_t pass = ++pass_;
  VipChanges changes;
  std::size_t met = 0;
  for (const auto& v : vips) {
    if (!family_on(options_, v.vip.family())) continue;
    auto it = wanted_.find(v.vip);
    if (it == wanted_.end()) {
      changes.changed.push_back(v);
      continue;
    }
    if (it->second.seen == pass) {
      auto merged = vips;
      merge_duplicates(merged);
      apply(merged);
      return;
    }
    it->second.seen = pass;
    ++met;
    const bool same = normalised(v.open_ports) ? v.open_ports == it->second.ports : [&] {
      auto ports = v.open_ports;
      normalise(ports);
      return ports == it->second.ports;
    }();
    if (!same) changes.changed.push_back(v);
  }
  if (met < wanted_.size())
    for (const auto& [vip, wanted] : wanted_)
      if (wanted.seen != pass) changes.removed.push_back(vip);
  update(std::move(changes));
}

void VipRefusals::apply_changes(const VipChanges& changes) {
  VipChanges own;
  for (const auto& v : changes.changed)
    if (family_on(options_, v.vip.family())) own.changed.push_back(v);
  for (const auto& vip : changes.removed)
    if (family_on(options_, vip.family())) own.removed.push_back(vip);
  update(std::move(own));
}

void VipRefusals::update(VipChanges changes) {
  merge_duplicates(changes.changed);
  // A VIP both removed and changed is changed: drop the removal (`changed` is sorted now).
  std::erase_if(changes.removed, [&](const net::IpAddress& vip) {
    return std::binary_search(changes.changed.begin(), changes.changed.end(), VipOpenPorts{vip, {}},
                              [](const auto& a, const auto& b) { return a.vip < b.vip; });
  });
  if (changes.empty() && installed_) return;

  // The lines per family and kind, formatted only for what differs, from wanted_ as the sets hold it.
  std::array<std::vector<std::string>, 2> open_added, open_removed, vips_added, vips_removed;
  for (auto& c : changes.changed) {
    const auto i = index_of(c.vip.family());
    auto [it, inserted] = wanted_.try_emplace(c.vip);
    auto& old_ports = it->second.ports;
    if (inserted) vips_added[i].push_back(ip_set_member(c.vip));
    auto o = old_ports.begin();
    auto n = c.open_ports.begin();
    while (o != old_ports.end() || n != c.open_ports.end()) {
      if (n == c.open_ports.end() || (o != old_ports.end() && *o < *n)) {
        open_removed[i].push_back(ip_set_member(c.vip, *o++));
      } else if (o == old_ports.end() || *n < *o) {
        open_added[i].push_back(ip_set_member(c.vip, *n++));
      } else {
        ++o, ++n;
      }
    }
    open_count_ = open_count_ - old_ports.size() + c.open_ports.size();
    old_ports = std::move(c.open_ports);
    it->second.seen = pass_;
  }
  for (const auto& vip : changes.removed) {
    auto it = wanted_.find(vip);
    if (it == wanted_.end()) continue;
    const auto i = index_of(vip.family());
    vips_removed[i].push_back(ip_set_member(vip));
    for (auto port : it->second.ports) open_removed[i].push_back(ip_set_member(vip, port));
    open_count_ -= it->second.ports.size();
    wanted_.erase(it);
  }

  if (!installed_) {
    // First call, or the sets are somewhere between two states after a failure: refill whole.
    install();
  } else {
    // ipset applies the lines one at a time, so every prefix of this text is a state some SYN
    // may see. Open ports first, then VIPs: a new Service is never refused on a port it serves.
    // VIPs leave before their open ports, for the same reason. A port that closes goes last.
    std::string text;
    for (auto family : families(options_)) text += render_ip_set_adds(open_set(options_, family).name, open_added[index_of(family)]);
    for (auto family : families(options_)) text += render_ip_set_adds(vips_set(options_, family).name, vips_added[index_of(family)]);
    for (auto family : families(options_)) text += render_ip_set_dels(vips_set(options_, family).name, vips_removed[index_of(family)]);
    for (auto family : families(options_)) text += render_ip_set_dels(open_set(options_, family).name, open_removed[index_of(family)]);
    if (text.empty()) return;  // ports listed in another order, nothing else
    const Command command{ipset_restore_argv(options_), std::move(text)};
    // A failure part way leaves the sets somewhere between: the next call refills them whole.
    installed_ = false;
    if (auto r = runner_.run(command); !r.ok()) throw RedirectError("redirect: " + failure(command, r));
    installed_ = true;
  }
  spdlog::info("redirect: {} ClusterIP(s) in the refusal sets, {} open ClusterIP:port(s)", wanted_.size(), open_count_);
}

bool VipRefusals::release(const std::vector<net::Family>& released) {
  bool complete = true;
  const Jump plain = jumps_of(options_)[1];
  const Jump held = held_jump(options_);
  auto fail = [&](net::Family family, const Command& command, const CommandResult& result) {
    spdlog::error("redirect: {} conntrack exemption not narrowed: {}", net::to_string(family),
                  failure(command, result));
    complete = false;
  };
  auto present = [&](net::Family family, const Jump& j) -> std::optional<bool> {
    const Command check = iptables_command(family, options_, jump_args(j, "-C"));
    const auto checked = runner_.run(check);
    if (checked.exit_code == 1 || checked.exit_code == 2) return false;
    if (!checked.ok()) {
      fail(family, check, checked);
      return std::nullopt;
    }
    return true;
  };
  for (auto family : families(options_)) {
    if (std::find(released.begin(), released.end(), family) == released.end()) continue;
    // Not installed, or released already: nothing to narrow.
    if (present(family, plain) != true) continue;
    // The narrow jump first, then the wide one goes: a held connection is never tracked between.
    if (auto h = present(family, held); h == false) {
      const Command insert = iptables_command(family, options_, jump_args(held, "-I"));
      if (auto r = runner_.run(insert); !r.ok()) {
        fail(family, insert, r);
        continue;
      }
    } else if (!h) {
      continue;
    }
    // Every copy of the wide jump (someone may have added it twice): until -D says there is none.
    bool deleted = false, failed = false;
    for (int i = 0; i < kMaxRepeatedDeletes && !deleted && !failed; ++i) {
      const Command del = iptables_command(family, options_, jump_args(plain, "-D"));
      const auto r = runner_.run(del);
      if (r.ok()) continue;
      if (r.exit_code != 1 && r.exit_code != 2) {
        fail(family, del, r);
        failed = true;
      } else {
        deleted = true;
      }
    }
    if (!deleted && !failed) {
      spdlog::error("redirect: {} conntrack exemption not narrowed: the wide jump is still there after {} deletes",
                    net::to_string(family), kMaxRepeatedDeletes);
      complete = false;
    }
    if (deleted)
      spdlog::info("redirect: {} conntrack exemption narrowed to the connections the proxy holds",
                   net::to_string(family));
  }
  return complete;
}

void VipRefusals::uninstall() {
  std::vector<std::string> errors;
  auto jumps = jumps_of(options_);
  jumps.push_back(held_jump(options_));  // left by release()
  for (auto family : families(options_)) {
    for (const auto& j : jumps) {
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
  wanted_.clear();
  open_count_ = 0;
  if (errors.empty()) return;
  std::string text = "redirect: refusal rules not fully removed:";
  for (const auto& e : errors) text += "\n  - " + e;
  throw RedirectError(text);
}

}  // namespace dsproxy::redirect
