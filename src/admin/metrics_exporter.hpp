#pragma once
// The Prometheus endpoint's body (GET :15020/metrics and /stats/prometheus): every source of
// metrics is a prometheus-cpp Collectable asked at scrape time, on the front thread, and the
// text exposition format is prometheus-cpp's TextSerializer. Nothing here runs on the data path.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include "proxy/proxy_stats.hpp"
#include "resolver/dns_handler.hpp"

namespace dsproxy::admin {

class MetricsExporter {
 public:
  using Collect = std::function<std::vector<prometheus::MetricFamily>()>;
  explicit MetricsExporter(std::string version = kVersion);
  static const char* const kVersion;  // the build's (CMake's project version)
  // `collect` runs on the scraping thread; what it reads must allow that (atomics, or the
  // per-worker series of proxy::ConnectionTelemetry).
  void add(Collect collect);
  std::string render() const;

 private:
  // dsproxy_build_info: a constant gauge, the one metric held in a prometheus-cpp Registry.
  std::shared_ptr<prometheus::Registry> registry_;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
};

// dsproxy's own counters that ProxyStats already keeps (process-wide atomics, bumped once per
// connection event): accepted connections, cross-family fallbacks, Happy Eyeballs second-family
// wins, connect retries, outlier ejections, local errors, idle timeouts.
std::vector<prometheus::MetricFamily> proxy_stats_families(const proxy::ProxyStats& stats);
// DNS queries by transport and answers by type (from the resolver's DnsStats).
std::vector<prometheus::MetricFamily> dns_stats_families(const resolver::DnsStats& stats);
// Snapshot builds (config reloads) and those that failed.
std::vector<prometheus::MetricFamily> config_families(std::uint64_t builds, std::uint64_t failures);

}  // namespace dsproxy::admin
