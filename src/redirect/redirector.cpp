#include "redirect/redirector.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <string_view>

#include "redirect/ip_sets.hpp"
#include "redirect/rule_renderer.hpp"

namespace dsproxy::redirect {

namespace {

// Loops that repeat "delete one" until nothing is left stop here at the latest, so a runner that
// keeps reporting success (a broken tool, a fake) cannot spin forever.
constexpr int kMaxRepeatedDeletes = 64;

std::string trimmed(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  while (!s.empty() && (s.front() == '\n' || s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  return std::string(s);
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// iptables-restore names the input line it choked on ("line 12 failed"); quoting that line makes
// the error readable without the input at hand.
std::string offending_line(const Command& command, const std::string& err) {
  if (command.input.empty()) return {};
  auto at = err.find("line ");
  if (at == std::string::npos) return {};
  const char* begin = err.data() + at + 5;
  const char* end = err.data() + err.size();
  unsigned number = 0;
  auto [ptr, ec] = std::from_chars(begin, end, number);
  if (ec != std::errc() || ptr == begin || number == 0) return {};
  std::string_view input = command.input;
  for (unsigned line = 1; line < number; ++line) {
    auto nl = input.find('\n');
    if (nl == std::string_view::npos) return {};
    input.remove_prefix(nl + 1);
  }
  return fmt::format(" [input line {}: {}]", number, input.substr(0, input.find('\n')));
}

std::string describe_failure(const Command& command, const CommandResult& result) {
  std::string err = trimmed(result.err);
  std::string text = fmt::format("`{}` failed (exit {})", format_argv(command.argv), result.exit_code);
  if (!err.empty()) text += ": " + err;
  return text + offending_line(command, result.err);
}

// `iptables -C` answers "absent" with 1 (no such rule) or, on the nft backend, 2 when the jump's
// target chain does not exist either. Anything else (127: no iptables at all) is a real failure.
bool jump_absent(const CommandResult& r) { return r.exit_code == 1 || r.exit_code == 2; }

// `ip rule del pref N` with no rule left: "RTNETLINK answers: No such file or directory".
bool nothing_left_to_delete(const CommandResult& r) {
  return contains(r.err, "No such file or directory");
}

// `ip route flush table N` on a table that was never created: "Error: ipv4: FIB table does not exist."
bool nothing_to_flush(const CommandResult& r) { return contains(r.err, "FIB table does not exist"); }

std::string plural(std::size_t n, std::string_view one, std::string_view many) {
  return fmt::format("{} {}", n, n == 1 ? one : many);
}

// The pods set's members for `family`, sorted as strings (the order `difference` needs).
std::vector<std::string> pod_members(net::Family family, const std::vector<net::IpAddress>& ips) {
  std::vector<std::string> out;
  for (const auto& ip : addresses_of(family, ips)) out.push_back(ip_set_member(ip));
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

Redirector::Redirector(RedirectOptions options, CommandRunner& runner)
    : options_(std::move(options)), runner_(runner) {
  auto problems = validate(options_);
  if (!problems.empty()) {
    std::string text = "redirect: invalid options:";
    for (const auto& p : problems) text += "\n  - " + p;
    throw RedirectError(text);
  }
}

CommandResult Redirector::run_checked(const Command& command) {
  spdlog::debug("redirect: running `{}`", format_argv(command.argv));
  CommandResult result = runner_.run(command);
  if (!result.ok()) throw RedirectError("redirect: " + describe_failure(command, result));
  return result;
}

void Redirector::install(const std::vector<net::IpAddress>& node_pod_ips) {
  std::lock_guard lock(mutex_);
  for (net::Family family : families(options_)) install_family(family, node_pod_ips);
}

void Redirector::ensure_policy_rule(net::Family family) {
  const auto commands = policy_routing_commands(family, options_);
  const CommandResult shown = run_checked(Command{commands.show_rule, {}});
  const std::string listed = trimmed(shown.out);
  if (listed.empty()) {
    run_checked(Command{commands.add_rule, {}});
    return;
  }
  // `ip rule show` prints "32000:\tfrom all fwmark 0x1000/0x1000 lookup 133".
  if (contains(listed + "\n", fwmark_selector(options_) + " ") ||
      contains(listed + "\n", fwmark_selector(options_) + "\n"))
    return;
  throw RedirectError(fmt::format(
      "redirect: {} rule pref {} is taken by a rule that is not ours ({}); pick another "
      "rule_priority or remove that rule",
      net::to_string(family), options_.rule_priority, listed));
}

void Redirector::install_family(net::Family family, const std::vector<net::IpAddress>& node_pod_ips) {
  const auto ipt = iptables_commands(family, options_);
  const auto routing = policy_routing_commands(family, options_);
  auto pods = pod_members(family, node_pod_ips);

  // Routing before the rules: the capture mark is useless (captured packets would be forwarded
  // as if nothing happened) until the rule and the local route exist. The set before the
  // chains: a rule naming a set that does not exist is refused.
  ensure_policy_rule(family);
  run_checked(Command{routing.replace_route, {}});
  run_checked(Command{ipset_restore_argv(options_), render_ip_set_fill(pods_set(options_, family), pods)});
  run_checked(Command{ipt.restore, render_iptables(family, options_)});

  // The jump last: it is what switches capture on.
  const Command check{ipt.check_jump, {}};
  spdlog::debug("redirect: running `{}`", format_argv(check.argv));
  const CommandResult checked = runner_.run(check);
  bool inserted = false;
  if (checked.exit_code == 1) {
    run_checked(Command{ipt.insert_jump, {}});
    inserted = true;
  } else if (!checked.ok()) {
    throw RedirectError("redirect: " + describe_failure(check, checked));
  }

  auto& st = state(family);
  st.installed = true;
  st.pods_known = true;
  st.pods = std::move(pods);
  spdlog::info("redirect: {} capture installed for {} (outbound :{}, inbound :{}, table {}{})",
               net::to_string(family), plural(st.pods.size(), "node pod address", "node pod addresses"),
               options_.outbound_port, options_.inbound_port, options_.route_table,
               inserted ? "" : ", PREROUTING jump already present");
}

void Redirector::update_pods(const std::vector<net::IpAddress>& node_pod_ips) {
  std::lock_guard lock(mutex_);
  if (!state(net::Family::v4).installed && !state(net::Family::v6).installed) {
    for (net::Family family : families(options_)) install_family(family, node_pod_ips);
    return;
  }
  std::vector<std::string> errors;
  for (net::Family family : families(options_)) {
    try {
      update_family(family, node_pod_ips);
    } catch (const RedirectError& e) {
      errors.push_back(e.what());
    }
  }
  if (errors.size() == 1) throw RedirectError(errors.front());
  if (!errors.empty()) throw RedirectError(errors[0] + "\n" + errors[1]);
}

void Redirector::update_family(net::Family family, const std::vector<net::IpAddress>& node_pod_ips) {
  auto& st = state(family);
  if (!st.installed) {
    install_family(family, node_pod_ips);
    return;
  }
  auto pods = pod_members(family, node_pod_ips);
  const IpSetSpec set = pods_set(options_, family);
  if (!st.pods_known) {
    // The last update failed part way (ipset applies line by line): what the set holds is not
    // known, so it is refilled whole, atomically, instead of patched.
    run_checked(Command{ipset_restore_argv(options_), render_ip_set_fill(set, pods)});
    st.pods = std::move(pods);
    st.pods_known = true;
    spdlog::info("redirect: {} capture now covers {} (set refilled)", net::to_string(family),
                 plural(st.pods.size(), "node pod address", "node pod addresses"));
    return;
  }
  const SetDifference diff = difference(st.pods, pods);
  if (diff.empty()) {
    spdlog::debug("redirect: {} node pod addresses unchanged ({})", net::to_string(family), pods.size());
    return;
  }
  // Only the difference, additions first: a pod being added is captured from the next packet
  // on, and every other pod's capture is never interrupted.
  st.pods_known = false;
  run_checked(Command{ipset_restore_argv(options_),
                      render_ip_set_adds(set.name, diff.added) + render_ip_set_dels(set.name, diff.removed)});
  st.pods_known = true;
  spdlog::info("redirect: {} capture now covers {} (+{} -{})", net::to_string(family),
               plural(pods.size(), "node pod address", "node pod addresses"), diff.added.size(),
               diff.removed.size());
  st.pods = std::move(pods);
}

void Redirector::uninstall() {
  std::lock_guard lock(mutex_);
  std::vector<std::string> errors;
  for (net::Family family : families(options_)) uninstall_family(family, errors);
  for (auto& st : state_) st = FamilyState{};
  if (errors.empty()) return;
  std::string text = fmt::format("redirect: uninstall left things behind; {} failed:",
                                 plural(errors.size(), "step", "steps"));
  for (const auto& e : errors) text += "\n  - " + e;
  throw RedirectError(text);
}

std::vector<net::Family> Redirector::release_capture() {
  std::lock_guard lock(mutex_);
  std::vector<net::Family> released_families;
  const auto chains = chain_names(options_);
  // Both families' capture first, before anything else of either is removed: the order a
  // straddling handshake needs (see redirector.hpp).
  for (net::Family family : families(options_)) {
    const auto ipt = iptables_commands(family, options_);
    const std::string name(net::to_string(family));
    const Command list{ipt.list_mangle, {}};
    const CommandResult listed = runner_.run(list);
    if (!listed.ok()) {
      spdlog::error("redirect: {} capture release failed: {}", name, describe_failure(list, listed));
      continue;
    }
    // Nothing of ours in this family (never installed, or removed already): restoring would
    // create the chains, a trace where there was none.
    if (!contains(listed.out + "\n", "-N " + chains.prerouting + "\n")) {
      released_families.push_back(family);
      continue;
    }
    const bool dns = contains(listed.out + "\n", "-N " + chains.dns + "\n");
    const Command release{ipt.restore, render_capture_release(options_, dns)};
    const CommandResult released = runner_.run(release);
    if (!released.ok()) {
      spdlog::error("redirect: {} capture release failed: {}", name, describe_failure(release, released));
      continue;
    }
    released_families.push_back(family);
    spdlog::info("redirect: {} capture released: new connections go straight to their destination; the socket "
                 "divert stays for the connections the proxy holds",
                 name);
  }
  return released_families;
}

void Redirector::uninstall_family(net::Family family, std::vector<std::string>& errors) {
  const auto ipt = iptables_commands(family, options_);
  const auto routing = policy_routing_commands(family, options_);
  const auto chains = chain_names(options_);
  const std::string name(net::to_string(family));
  const std::size_t errors_before = errors.size();
  auto fail = [&](const Command& command, const CommandResult& result) {
    errors.push_back(name + ": " + describe_failure(command, result));
  };

  // 1. Every PREROUTING jump (someone may have added it twice); the chains cannot go while referenced.
  int jumps = 0;
  for (int i = 0; i < kMaxRepeatedDeletes; ++i) {
    const Command check{ipt.check_jump, {}};
    const CommandResult checked = runner_.run(check);
    if (jump_absent(checked)) break;
    if (!checked.ok()) {
      fail(check, checked);
      break;
    }
    const Command del{ipt.delete_jump, {}};
    const CommandResult deleted = runner_.run(del);
    if (!deleted.ok()) {
      fail(del, deleted);
      break;
    }
    ++jumps;
  }

  // 2. The chains, in one restore, if any exists: restoring into a namespace that never had a
  //    mangle table would create an empty one (iptables-nft), leaving a trace where we had none.
  bool any_chain = true;
  const Command list{ipt.list_mangle, {}};
  const CommandResult listed = runner_.run(list);
  if (listed.ok()) {
    any_chain = false;
    for (const auto* chain : {&chains.prerouting, &chains.divert, &chains.outbound, &chains.inbound, &chains.dns})
      any_chain = any_chain || contains(listed.out + "\n", "-N " + *chain + "\n");
  }
  if (any_chain) {
    const Command removal{ipt.restore, render_iptables_removal(family, options_)};
    const CommandResult removed = runner_.run(removal);
    if (!removed.ok()) fail(removal, removed);
  }

  // 3. The pods set, now that no rule matches it.
  destroy_ip_sets(runner_, options_, {pods_set(options_, family).name}, errors);

  // 4. Our ip rule(s): `del pref N` removes one per call.
  int rules = 0;
  for (int i = 0; i < kMaxRepeatedDeletes; ++i) {
    const Command del{routing.delete_rule, {}};
    const CommandResult deleted = runner_.run(del);
    if (!deleted.ok()) {
      if (!nothing_left_to_delete(deleted)) fail(del, deleted);
      break;
    }
    ++rules;
  }

  // 5. The local route(s) of our table.
  const Command flush{routing.flush_routes, {}};
  const CommandResult flushed = runner_.run(flush);
  if (!flushed.ok() && !nothing_to_flush(flushed)) fail(flush, flushed);

  if (errors.size() > errors_before) {
    spdlog::warn("redirect: {} capture removal incomplete: {} failed", name,
                 plural(errors.size() - errors_before, "step", "steps"));
    return;
  }
  spdlog::info("redirect: {} capture removed ({} PREROUTING jump{}, chains {}, {} ip rule{}, table {} emptied)",
               name, jumps, jumps == 1 ? "" : "s", any_chain ? "deleted" : "were absent", rules,
               rules == 1 ? "" : "s", options_.route_table);
}

std::string Redirector::print(const std::vector<net::IpAddress>& node_pod_ips) const {
  return render_script(node_pod_ips, options_);
}

}  // namespace dsproxy::redirect
