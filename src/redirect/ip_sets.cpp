#include "redirect/ip_sets.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "redirect/command_runner.hpp"

namespace dsproxy::redirect {

namespace {

// Room for 2^20 members per set (the default, 65536, is below a 20,000-Service cluster's
// ClusterIP,port count). Memory grows with what is stored, not with maxelem.
constexpr const char* kSetLimits = "hashsize 1024 maxelem 1048576";

// After the last rule using a set is deleted, iptables-nft drops its reference from a deferred
// kernel work item: `ipset destroy` can see "in use" for a moment. Bounded: 25 x 20 ms.
constexpr int kDestroyAttempts = 25;
constexpr auto kDestroyRetryDelay = std::chrono::milliseconds(20);

std::string suffix(net::Family family) { return family == net::Family::v4 ? "4" : "6"; }

bool contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace

IpSetSpec pods_set(const RedirectOptions& o, net::Family f) {
  return {o.chain_prefix + "_PODS" + suffix(f), IpSetType::ip, f};
}
IpSetSpec vips_set(const RedirectOptions& o, net::Family f) {
  return {o.chain_prefix + "_VIPS" + suffix(f), IpSetType::ip, f};
}
IpSetSpec open_set(const RedirectOptions& o, net::Family f) {
  return {o.chain_prefix + "_OPEN" + suffix(f), IpSetType::ip_port, f};
}
std::string next_set_name(const IpSetSpec& set) { return set.name + "_NEXT"; }

std::string ip_set_member(const net::IpAddress& ip) { return ip.to_string(); }
std::string ip_set_member(const net::IpAddress& ip, std::uint16_t tcp_port) {
  return fmt::format("{},tcp:{}", ip.to_string(), tcp_port);
}

std::string ip_set_create_line(const IpSetSpec& set, const std::string& name) {
  return fmt::format("create {} {} family {} {}\n", name, set.type == IpSetType::ip ? "hash:ip" : "hash:ip,port",
                     set.family == net::Family::v4 ? "inet" : "inet6", kSetLimits);
}
std::string ip_set_create_line(const IpSetSpec& set) { return ip_set_create_line(set, set.name); }

std::string render_ip_set_fill(const IpSetSpec& set, const std::vector<std::string>& members) {
  const std::string next = next_set_name(set);
  // `flush` first: a _NEXT left behind by a process that died mid-fill must not leak into the swap.
  std::string out = ip_set_create_line(set) + ip_set_create_line(set, next) + "flush " + next + "\n";
  out += render_ip_set_adds(next, members);
  out += "swap " + next + " " + set.name + "\n";
  out += "destroy " + next + "\n";
  return out;
}

std::string render_ip_set_adds(const std::string& name, const std::vector<std::string>& added) {
  std::string out;
  out.reserve(added.size() * (name.size() + 24));
  for (const auto& m : added) out.append("add ").append(name).append(" ").append(m).append("\n");
  return out;
}

std::string render_ip_set_dels(const std::string& name, const std::vector<std::string>& removed) {
  std::string out;
  for (const auto& m : removed) out.append("del ").append(name).append(" ").append(m).append("\n");
  return out;
}

SetDifference difference(const std::vector<std::string>& before, const std::vector<std::string>& after) {
  SetDifference d;
  std::set_difference(after.begin(), after.end(), before.begin(), before.end(), std::back_inserter(d.added));
  std::set_difference(before.begin(), before.end(), after.begin(), after.end(), std::back_inserter(d.removed));
  return d;
}

std::vector<std::string> ipset_restore_argv(const RedirectOptions& o) { return {o.ipset, "-exist", "restore"}; }
std::vector<std::string> ipset_destroy_argv(const RedirectOptions& o, const std::string& name) {
  return {o.ipset, "destroy", name};
}

void destroy_ip_sets(CommandRunner& runner, const RedirectOptions& o, const std::vector<std::string>& names,
                     std::vector<std::string>& errors) {
  for (const auto& base : names) {
    for (const std::string& name : {base, base + "_NEXT"}) {
      const Command destroy{ipset_destroy_argv(o, name), {}};
      for (int attempt = 1;; ++attempt) {
        const CommandResult r = runner.run(destroy);
        if (r.ok() || contains(r.err, "does not exist")) break;
        if (contains(r.err, "in use") && attempt < kDestroyAttempts) {
          std::this_thread::sleep_for(kDestroyRetryDelay);
          continue;
        }
        std::string err = r.err;
        while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
        errors.push_back(fmt::format("`{}` failed (exit {}){}{}", format_argv(destroy.argv), r.exit_code,
                                     err.empty() ? "" : ": ", err));
        break;
      }
    }
  }
}

}  // namespace dsproxy::redirect
