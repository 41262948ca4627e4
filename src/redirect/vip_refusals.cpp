#include "redirect/vip_refusals.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "redirect/redirector.hpp"

namespace dsproxy::redirect {

namespace {

constexpr int kMaxRepeatedDeletes = 64;  // bounds "delete until gone" against a misbehaving tool

const std::string& iptables_of(net::Family f, const RedirectOptions& o) {
  return f == net::Family::v4 ? o.iptables : o.ip6tables;
}
const std::string& restore_of(net::Family f, const RedirectOptions& o) {
  return f == net::Family::v4 ? o.iptables_restore : o.ip6tables_restore;
}

std::vector<std::string> jump_args(const RedirectOptions& o, const char* op) {
  std::vector<std::string> args{"-w", "-t", "filter", op, "INPUT"};
  if (std::string_view(op) == "-I") args.push_back("1");
  for (const char* a : {"-p", "tcp", "-m", "tcp", "--syn", "-j"}) args.emplace_back(a);
  args.push_back(refuse_chain_name(o));
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

}  // namespace

std::string refuse_chain_name(const RedirectOptions& options) { return options.chain_prefix + "_REFUSE"; }

std::string render_refusals(net::Family family, const std::vector<VipOpenPorts>& vips, const RedirectOptions& o) {
  const std::string chain = refuse_chain_name(o);
  std::string out = "*filter\n:" + chain + " - [0:0]\n";
  // With DNS capture, TCP port 53 to any address (the DNS VIP above all) belongs to the DNS
  // proxy, whatever endpoints the Service has: never refuse it.
  if (o.dns_capture) out += fmt::format("-A {} -p tcp -m tcp --dport 53 -j RETURN\n", chain);
  for (const auto& v : vips) {
    if (v.vip.family() != family) continue;
    const std::string dst = v.vip.to_string() + "/" + std::to_string(v.vip.host_prefix());
    for (auto port : v.open_ports)
      out += fmt::format("-A {} -d {} -p tcp -m tcp --dport {} -j RETURN\n", chain, dst, port);
    out += fmt::format("-A {} -d {} -p tcp -j REJECT --reject-with tcp-reset\n", chain, dst);
  }
  return out + "COMMIT\n";
}

std::string render_refusals_script(const std::vector<VipOpenPorts>& vips, const RedirectOptions& o) {
  std::string out =
      "\n# ---- Refusals: ClusterIP ports with no servable endpoint answer SYN with a TCP reset ----\n";
  for (auto family : families(o)) {
    out += fmt::format("{} -w --noflush <<'EOF'\n{}EOF\n", restore_of(family, o), render_refusals(family, vips, o));
    const auto check = jump_args(o, "-C"), insert = jump_args(o, "-I");
    out += fmt::format("{} {} 2>/dev/null || {} {}\n", iptables_of(family, o), format_argv(check),
                       iptables_of(family, o), format_argv(insert));
  }
  return out;
}

void VipRefusals::apply(const std::vector<VipOpenPorts>& vips) {
  if (installed_ && vips == applied_) return;
  for (auto family : families(options_)) {
    const Command restore{{restore_of(family, options_), "-w", "--noflush"}, render_refusals(family, vips, options_)};
    if (auto r = runner_.run(restore); !r.ok()) throw RedirectError("redirect: " + failure(restore, r));
    const Command check = iptables_command(family, options_, jump_args(options_, "-C"));
    const auto checked = runner_.run(check);
    if (checked.exit_code == 1 || checked.exit_code == 2) {
      const Command insert = iptables_command(family, options_, jump_args(options_, "-I"));
      if (auto r = runner_.run(insert); !r.ok()) throw RedirectError("redirect: " + failure(insert, r));
    } else if (!checked.ok()) {
      throw RedirectError("redirect: " + failure(check, checked));
    }
  }
  std::size_t refused_vips = 0;
  for (const auto& v : vips) refused_vips += v.open_ports.empty() ? 1 : 0;
  spdlog::info("redirect: refusing unserved ports on {} ClusterIP(s) ({} with no servable port at all)", vips.size(),
               refused_vips);
  applied_ = vips;
  installed_ = true;
}

void VipRefusals::uninstall() {
  std::vector<std::string> errors;
  const std::string chain = refuse_chain_name(options_);
  for (auto family : families(options_)) {
    for (int i = 0; i < kMaxRepeatedDeletes; ++i) {
      const Command check = iptables_command(family, options_, jump_args(options_, "-C"));
      const auto checked = runner_.run(check);
      if (checked.exit_code == 1 || checked.exit_code == 2) break;
      if (!checked.ok()) {
        errors.push_back(failure(check, checked));
        break;
      }
      const Command del = iptables_command(family, options_, jump_args(options_, "-D"));
      if (auto r = runner_.run(del); !r.ok()) {
        errors.push_back(failure(del, r));
        break;
      }
    }
    // Only touch the table if our chain exists: restoring into a namespace without a filter
    // table would create one (iptables-nft), a trace where we had none.
    const Command list = iptables_command(family, options_, {"-w", "-t", "filter", "-S"});
    const auto listed = runner_.run(list);
    if (listed.ok() && listed.out.find("-N " + chain + "\n") == std::string::npos) continue;
    const Command removal{{restore_of(family, options_), "-w", "--noflush"},
                          "*filter\n:" + chain + " - [0:0]\n-X " + chain + "\nCOMMIT\n"};
    if (auto r = runner_.run(removal); !r.ok()) errors.push_back(failure(removal, r));
  }
  installed_ = false;
  applied_.clear();
  if (errors.empty()) return;
  std::string text = "redirect: refusal rules not fully removed:";
  for (const auto& e : errors) text += "\n  - " + e;
  throw RedirectError(text);
}

}  // namespace dsproxy::redirect
