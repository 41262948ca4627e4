#pragma once
// The admin API's JSON documents, in the shapes Envoy and Istio users read: listeners with
// `address.socketAddress` and `additionalAddresses`, endpoints per `outbound|port||host` cluster.

#include <boost/json/value.hpp>
#include <string>

#include "snapshot/cluster_snapshot.hpp"
#include "proxy/endpoint_states.hpp"
#include "proxy/proxy_options.hpp"
#include "proxy/proxy_stats.hpp"
#include "resolver/dns_handler.hpp"

namespace dsproxy::admin {

struct DumpContext {
  const snapshot::ClusterSnapshot& snapshot;
  const proxy::ProxyOptions& proxy;
  const proxy::ProxyStats& stats;
  std::uint64_t generation = 0;
  const resolver::DnsStats* dns = nullptr;  // null when the DNS proxy is off
  // The daemon's control plane: its sources' status (synced, errors, ...), shown as
  // "controlPlane" when set.
  boost::json::value control_plane = nullptr;
  // Workload identities (certificates, trust bundle, handshake counters; never a key), shown as
  // "identity"; null: mTLS is off, shown as {"mtls": false}.
  boost::json::value identity = nullptr;
  // The endpoints' outlier and load state; null (or an index not covering `snapshot` yet) prints
  // every endpoint as fresh.
  const proxy::EndpointStates* endpoint_states = nullptr;
  // The limits in force and how often each was hit, shown as "limits" when set.
  boost::json::value limits = nullptr;
};

std::string render_config_dump(const DumpContext& context);  // /config_dump
// /stats: the proxy's counters, and the DNS proxy's under "dns" when it runs.
// `limits`, when set, goes under "limits". With `authz`, the AuthorizationPolicy counters under
// "authz": totals, and per policy of the index (allowed, denied, audited, dryRun), keyed "ns/name"
// for an exporter's policy label.
std::string render_stats(const proxy::ProxyStats& stats, const resolver::DnsStats* dns = nullptr,
                         const boost::json::value& limits = nullptr, const authz::PolicyIndex* authz = nullptr);
// The "authz" section of /config_dump: the policies and, per local workload, those that apply.
boost::json::object authz_dump(const authz::PolicyIndex& index);

}  // namespace dsproxy::admin
