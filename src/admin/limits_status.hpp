#pragma once
// The "limits" object of /stats and /config_dump: every limit dsproxy enforces, its value, what
// is in use where that is known, and how often it refused (issue 13: limits are configurable and
// counted). Names are stable: the metrics export reads them.

#include <boost/json/object.hpp>
#include <vector>

#include "admin/admin_server.hpp"
#include "proxy/proxy_options.hpp"
#include "proxy/proxy_server.hpp"
#include "proxy/proxy_stats.hpp"
#include "resolver/dns_proxy.hpp"

namespace dsproxy::admin {

struct LimitsContext {
  const proxy::ProxyLimits& proxy;
  const proxy::ProxyStats& stats;
  std::vector<proxy::ProxyServer::WorkerLoadView> workers;
  const SessionLimit* admin_sessions = nullptr;
  const SessionLimit* readiness_sessions = nullptr;
  const resolver::DnsProxyOptions* dns = nullptr;  // null when the DNS proxy is off
  const resolver::DnsStats* dns_stats = nullptr;
};

boost::json::object limits_status(const LimitsContext& context);

}  // namespace dsproxy::admin
