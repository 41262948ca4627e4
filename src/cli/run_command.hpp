#pragma once
// `dsproxy run`: loads the config, optionally installs the redirect rules, serves the data path
// and the admin API, reloads the config when the file changes, drains and cleans up on exit.

#include <chrono>
#include <cstdint>
#include <string>

#include "snapshot/cluster_snapshot.hpp"
#include "proxy/proxy_options.hpp"
#include "redirect/node_families.hpp"
#include "redirect/redirect_options.hpp"
#include "redirect/vip_refusals.hpp"
#include "resolver/dns_proxy.hpp"

namespace dsproxy::cli {

struct RunOptions {
  std::string config_path;
  std::string node;
  std::string zone;  // --zone: this node's topology zone (else the Node object's label)
  std::string cluster_domain = "cluster.local";
  snapshot::FallbackDefault fallback_default = snapshot::FallbackDefault::policy;
  bool redirect = false;  // install the capture rules at start, keep them current, remove at exit
  proxy::ProxyOptions proxy;
  redirect::RedirectOptions redirect_options;
  resolver::DnsProxyOptions dns;  // the DNS proxy on :15053, unless dns.enabled is false
  std::uint16_t admin_port = 15000;     // 127.0.0.1 and [::1]
  std::uint16_t readiness_port = 15021;  // 0.0.0.0 and [::]: kubelet probes it from the node
  // The admin API and readiness listeners per family; restrict_to_families clears the one that is off.
  bool admin_v4 = true;
  bool admin_v6 = true;
  std::chrono::milliseconds config_poll{1000};
  std::chrono::milliseconds drain_grace{5000};
};

// What the refusal rules need from a snapshot: every ClusterIP with its servable ports.
std::vector<redirect::VipOpenPorts> vip_open_ports(const snapshot::ClusterSnapshot& snapshot);

// `options` for a node that carries only the families that are on in `families`: the capture
// rules, the proxy and DNS listeners and the IPv6 admin/readiness listeners of a family that is
// off are dropped (a [::] bind fails outright on a kernel without IPv6).
RunOptions restrict_to_families(RunOptions options, const redirect::NodeFamilies& families);

// Returns the process exit code: 0 after a clean shutdown, non-zero when start-up failed.
int run_proxy(const RunOptions& options);

}  // namespace dsproxy::cli
