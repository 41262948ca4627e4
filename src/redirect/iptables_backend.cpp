#include "redirect/iptables_backend.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <array>
#include <vector>

namespace dsproxy::redirect {

namespace {

// The chains kubelet keeps in the mangle table of the backend the node uses, so that containers
// like this one can tell (kubelet 1.17+; KUBE-KUBELET-CANARY alone on older ones).
constexpr std::array<std::string_view, 2> kKubeletChains = {"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"};

// iptables-save declares a chain as ":NAME POLICY [packets:bytes]" at the start of a line.
std::optional<std::string_view> kubelet_chain_in(std::string_view save_output) {
  std::size_t at = 0;
  while (at < save_output.size()) {
    auto end = save_output.find('\n', at);
    if (end == std::string_view::npos) end = save_output.size();
    const std::string_view line = save_output.substr(at, end - at);
    for (auto chain : kKubeletChains)
      if (line.size() > chain.size() + 1 && line[0] == ':' && line.substr(1, chain.size()) == chain &&
          line[chain.size() + 1] == ' ')
        return chain;
    at = end + 1;
  }
  return std::nullopt;
}

std::string plural_rules(std::size_t n) { return fmt::format("{} rule{}", n, n == 1 ? "" : "s"); }

struct Saved {
  bool found = false;  // at least one family's program could be started
  std::string out;
};

// Both families' output of `<iptables|ip6tables>-<variant>-save [args]`, for the families that are on.
Saved save(CommandRunner& runner, const RedirectOptions& options, std::string_view variant,
           const std::vector<std::string>& args) {
  Saved saved;
  for (auto family : families(options)) {
    Command command{{fmt::format("{}-{}-save", family == net::Family::v4 ? "iptables" : "ip6tables", variant)}, {}};
    command.argv.insert(command.argv.end(), args.begin(), args.end());
    spdlog::debug("redirect: running `{}`", format_argv(command.argv));
    const CommandResult result = runner.run(command);
    if (result.exit_code == 127) continue;
    saved.found = true;
    // A save that fails (no such table yet, no permission) shows nothing to vote with.
    if (result.ok()) saved.out += result.out;
  }
  return saved;
}

}  // namespace

std::string_view to_string(IptablesBackend backend) {
  switch (backend) {
    case IptablesBackend::automatic:
      return "auto";
    case IptablesBackend::nft:
      return "nft";
    case IptablesBackend::legacy:
      return "legacy";
  }
  return "auto";
}

std::optional<IptablesBackend> parse_iptables_backend(std::string_view text) {
  for (auto b : {IptablesBackend::automatic, IptablesBackend::nft, IptablesBackend::legacy})
    if (text == to_string(b)) return b;
  return std::nullopt;
}

std::size_t count_foreign_rules(std::string_view save_output, std::string_view chain_prefix) {
  const std::string ours = std::string(chain_prefix) + "_";
  std::size_t count = 0, at = 0;
  while (at < save_output.size()) {
    auto end = save_output.find('\n', at);
    if (end == std::string_view::npos) end = save_output.size();
    const std::string_view line = save_output.substr(at, end - at);
    // Our rules either live in our chains (-A DSPROXY_...) or jump to them (-j DSPROXY_...).
    if (line.starts_with("-A ") && line.find(ours) == std::string_view::npos) ++count;
    at = end + 1;
  }
  return count;
}

BackendChoice judge(const BackendProbe& probe, std::string_view chain_prefix) {
  if (!probe.nft_found && !probe.legacy_found)
    return {IptablesBackend::automatic,
            "neither iptables-nft-save nor iptables-legacy-save exists: using the plain iptables programs"};
  if (!probe.legacy_found) return {IptablesBackend::nft, "iptables-legacy-save is not installed"};
  if (!probe.nft_found) return {IptablesBackend::legacy, "iptables-nft-save is not installed"};
  if (auto chain = kubelet_chain_in(probe.nft_mangle))
    return {IptablesBackend::nft, fmt::format("kubelet's {} chain is in the nf_tables backend", *chain)};
  if (auto chain = kubelet_chain_in(probe.legacy_all))
    return {IptablesBackend::legacy, fmt::format("kubelet's {} chain is in the legacy backend", *chain)};
  const std::size_t legacy = count_foreign_rules(probe.legacy_all, chain_prefix);
  const std::size_t nft = count_foreign_rules(probe.nft_all, chain_prefix);
  if (legacy > nft)
    return {IptablesBackend::legacy, fmt::format("no kubelet hint chain; the legacy backend holds {}, nf_tables {}",
                                                 plural_rules(legacy), plural_rules(nft))};
  if (nft > legacy)
    return {IptablesBackend::nft, fmt::format("no kubelet hint chain; nf_tables holds {}, the legacy backend {}",
                                              plural_rules(nft), plural_rules(legacy))};
  return {IptablesBackend::nft,
          fmt::format("no kubelet hint chain and {} in either backend: nf_tables, the distributions' default",
                      plural_rules(nft))};
}

BackendProbe probe_backends(CommandRunner& runner, const RedirectOptions& options) {
  BackendProbe probe;
  // In the order judge() asks, stopping as soon as the answer is known: on a big cluster the
  // full saves hold every Service's NAT rules.
  const Saved nft_mangle = save(runner, options, "nft", {"-t", "mangle"});
  probe.nft_found = nft_mangle.found;
  probe.nft_mangle = nft_mangle.out;
  if (probe.nft_found && kubelet_chain_in(probe.nft_mangle)) return probe;
  const Saved legacy = save(runner, options, "legacy", {});
  probe.legacy_found = legacy.found;
  probe.legacy_all = legacy.out;
  if (!probe.nft_found || !probe.legacy_found || kubelet_chain_in(probe.legacy_all)) return probe;
  probe.nft_all = save(runner, options, "nft", {}).out;
  return probe;
}

void use_backend(RedirectOptions& options, IptablesBackend backend) {
  if (backend == IptablesBackend::automatic) return;
  const std::string variant(to_string(backend));
  options.iptables = "iptables-" + variant;
  options.ip6tables = "ip6tables-" + variant;
  options.iptables_restore = "iptables-" + variant + "-restore";
  options.ip6tables_restore = "ip6tables-" + variant + "-restore";
  options.iptables_backend = backend;
}

std::string resolve_iptables_backend(RedirectOptions& options, CommandRunner& runner) {
  if (options.iptables_backend != IptablesBackend::automatic) {
    const auto backend = options.iptables_backend;
    use_backend(options, backend);
    return fmt::format("iptables backend: {} (--iptables-backend {}; {} and {})", to_string(backend),
                       to_string(backend), options.iptables_restore, options.ip6tables_restore);
  }
  const BackendChoice choice = judge(probe_backends(runner, options), options.chain_prefix);
  use_backend(options, choice.backend);
  if (choice.backend == IptablesBackend::automatic)
    return fmt::format("iptables backend: as installed (auto: {}; {} and {})", choice.reason, options.iptables_restore,
                       options.ip6tables_restore);
  return fmt::format("iptables backend: {} (auto: {}; {} and {})", to_string(choice.backend), choice.reason,
                     options.iptables_restore, options.ip6tables_restore);
}

}  // namespace dsproxy::redirect
