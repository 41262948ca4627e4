#pragma once
// The admin API's JSON documents, in the shapes Envoy and Istio users read: listeners with
// `address.socketAddress` and `additionalAddresses`, endpoints per `outbound|port||host` cluster.

#include <string>

#include "config/cluster_snapshot.hpp"
#include "proxy/proxy_options.hpp"
#include "proxy/proxy_stats.hpp"

namespace dsproxy::admin {

struct DumpContext {
  const config::ClusterSnapshot& snapshot;
  const proxy::ProxyOptions& proxy;
  const proxy::ProxyStats& stats;
  std::uint64_t generation = 0;
};

std::string render_config_dump(const DumpContext& context);  // /config_dump
std::string render_stats(const proxy::ProxyStats& stats);    // /stats

}  // namespace dsproxy::admin
