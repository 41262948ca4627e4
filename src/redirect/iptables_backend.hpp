#pragma once
// Which iptables backend dsproxy writes its rules with: the one the node already uses.
//
// iptables 1.8 comes in two flavours that talk to different kernel subsystems: "legacy"
// (x_tables, the setsockopt interface of iptables 1.6 and before) and "nft" (the iptables syntax
// translated into nf_tables). Both sets of rules are live at once, but neither tool shows or
// orders against the other's: `-I PREROUTING 1` in one backend is not "before" a rule of the
// other. Debian 12's plain `iptables` is iptables-nft, so on a node whose kube-proxy or CNI
// writes legacy rules, the plain name would put dsproxy's rules where nobody looks for them
// (and vice versa on a node whose image defaults to legacy). So, like kube-proxy's own image
// (kubernetes-sigs/iptables-wrappers), dsproxy looks at what is there once at start:
//
//   1. kubelet (1.17+) creates KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY in the mangle table of
//      the backend the node uses: found in nf_tables (`iptables-nft-save -t mangle`) -> nft;
//      found in the legacy save -> legacy. The legacy save is taken without `-t`: naming a
//      legacy table instantiates it, a trace where there was none.
//   2. Otherwise the backend holding more rules (`-A` lines of both families) wins; dsproxy's own
//      rules (chains named <chain_prefix>_*, left by an earlier run) do not vote.
//   3. A tie (an empty node, a fresh network namespace) -> nft: the default of Debian 12 and of
//      every current distribution, and it loads no legacy x_tables module.
// A variant whose save program is missing cannot be chosen; with neither present the plain
// names stay (whatever the distribution's `iptables` is). `--iptables-backend nft|legacy`
// skips the detection. Decided once: the node's backend does not change while it runs.

#include <optional>
#include <string>
#include <string_view>

#include "redirect/command_runner.hpp"
#include "redirect/redirect_options.hpp"

namespace dsproxy::redirect {

std::string_view to_string(IptablesBackend backend);
std::optional<IptablesBackend> parse_iptables_backend(std::string_view text);

// What the save programs printed (both families concatenated), without judging it, so the
// judgement can be tested without a kernel. `*_found` is false when the variant's programs do
// not exist (exit 127); a save that ran and failed counts as found with no output.
struct BackendProbe {
  bool nft_found = true;
  bool legacy_found = true;
  std::string nft_mangle;   // iptables-nft-save -t mangle, ip6tables-nft-save -t mangle
  std::string nft_all;      // iptables-nft-save, ip6tables-nft-save (only taken when step 2 is reached)
  std::string legacy_all;   // iptables-legacy-save, ip6tables-legacy-save
};

struct BackendChoice {
  // nft or legacy; automatic only when neither variant exists (the plain names are kept).
  IptablesBackend backend = IptablesBackend::nft;
  std::string reason;  // e.g. "kubelet's KUBE-IPTABLES-HINT chain is in the legacy backend"
};

// Rules ("-A" lines) in iptables-save output, not counting those that name a chain of ours.
std::size_t count_foreign_rules(std::string_view save_output, std::string_view chain_prefix);
BackendChoice judge(const BackendProbe& probe, std::string_view chain_prefix);

// Runs the save programs of the families that are on in `options`, reading only what the
// judgement needs (nf_tables' mangle first: one small table on most nodes).
BackendProbe probe_backends(CommandRunner& runner, const RedirectOptions& options);

// Points the program names of `options` (iptables, ip6tables, *-restore) at `backend`'s
// variants: iptables-nft, ip6tables-legacy-restore, ... automatic leaves them as they are.
void use_backend(RedirectOptions& options, IptablesBackend backend);

// The whole start-up step: detects when options.iptables_backend is automatic, sets the program
// names and options.iptables_backend to the outcome, and returns the one line to log, e.g.
//   "iptables backend: legacy (auto: kubelet's KUBE-IPTABLES-HINT chain is in the legacy backend)"
std::string resolve_iptables_backend(RedirectOptions& options, CommandRunner& runner);

}  // namespace dsproxy::redirect
