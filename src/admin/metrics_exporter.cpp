#include "admin/metrics_exporter.hpp"

#include <prometheus/gauge.h>
#include <prometheus/text_serializer.h>

#include <sstream>

namespace dsproxy::admin {

const char* const MetricsExporter::kVersion = DSPROXY_VERSION;

namespace {

class FunctionCollectable final : public prometheus::Collectable {
 public:
  explicit FunctionCollectable(MetricsExporter::Collect f) : f_(std::move(f)) {}
  std::vector<prometheus::MetricFamily> Collect() const override { return f_(); }

 private:
  MetricsExporter::Collect f_;
};

prometheus::MetricFamily family(std::string name, std::string help, prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

void sample(prometheus::MetricFamily& f, double value, std::vector<prometheus::ClientMetric::Label> labels = {}) {
  auto& m = f.metric.emplace_back();
  m.label = std::move(labels);
  if (f.type == prometheus::MetricType::Gauge)
    m.gauge.value = value;
  else
    m.counter.value = value;
}

double v(const std::atomic<std::uint64_t>& c) { return static_cast<double>(c.load(std::memory_order_relaxed)); }

prometheus::MetricFamily counter(std::string name, std::string help, const std::atomic<std::uint64_t>& c) {
  auto f = family(std::move(name), std::move(help), prometheus::MetricType::Counter);
  sample(f, v(c));
  return f;
}

}  // namespace

MetricsExporter::MetricsExporter(std::string version) : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::BuildGauge()
      .Name("dsproxy_build_info")
      .Help("dsproxy's version; always 1")
      .Register(*registry_)
      .Add({{"version", std::move(version)}})
      .Set(1);
  collectables_.push_back(registry_);
}

void MetricsExporter::add(Collect collect) {
  collectables_.push_back(std::make_shared<FunctionCollectable>(std::move(collect)));
}

std::string MetricsExporter::render() const {
  std::vector<prometheus::MetricFamily> all;
  for (const auto& c : collectables_) {
    auto part = c->Collect();
    all.insert(all.end(), std::make_move_iterator(part.begin()), std::make_move_iterator(part.end()));
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, all);
  return out.str();
}

std::vector<prometheus::MetricFamily> proxy_stats_families(const proxy::ProxyStats& s) {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  auto accepted = family("dsproxy_connections_accepted_total", "Connections accepted, by listener direction",
                         MetricType::Counter);
  sample(accepted, v(s.outbound_accepted), {{"direction", "outbound"}});
  sample(accepted, v(s.inbound_accepted), {{"direction", "inbound"}});
  out.push_back(std::move(accepted));
  auto active = family("dsproxy_active_connections", "Connections open now", MetricType::Gauge);
  sample(active, v(s.active_connections));
  out.push_back(std::move(active));
  out.push_back(counter("dsproxy_family_fallbacks_total",
                        "Connections served by an endpoint of the other family than the ClusterIP dialled",
                        s.family_fallbacks));
  out.push_back(counter("dsproxy_happy_eyeballs_other_family_total",
                        "Connections where the second family's Happy Eyeballs attempt connected first",
                        s.happy_eyeballs_other_family));
  out.push_back(counter("dsproxy_connect_retries_total", "Backends tried after a connection's first",
                        s.connect_retries));
  out.push_back(counter("dsproxy_outlier_ejections_total", "Endpoints ejected by passive outlier detection",
                        s.outlier_ejections));
  out.push_back(counter("dsproxy_local_errors_total",
                        "Upstream sockets or accepts that failed for this node's own resources", s.local_errors));
  out.push_back(counter("dsproxy_accept_shed_total", "Connections reset out of the accept queue (no descriptor)",
                        s.accept_shed));
  out.push_back(counter("dsproxy_worker_faults_total",
                        "Exceptions on a worker's loop (each cost at most its own connection)", s.worker_faults));
  auto refused = family("dsproxy_connections_refused_total", "Connections reset at once because a limit was reached",
                        MetricType::Counter);
  sample(refused, v(s.rejected_worker_connection_limit), {{"limit", "connections_per_worker"}});
  sample(refused, v(s.rejected_pending_connect_limit), {{"limit", "pending_connects_per_worker"}});
  sample(refused, v(s.rejected_pending_handshake_limit), {{"limit", "pending_handshakes_per_worker"}});
  out.push_back(std::move(refused));
  return out;
}

std::vector<prometheus::MetricFamily> dns_stats_families(const resolver::DnsStats& s) {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  auto queries = family("dsproxy_dns_queries_total", "DNS queries received, by transport", MetricType::Counter);
  sample(queries, v(s.queries_udp), {{"transport", "udp"}});
  sample(queries, v(s.queries_tcp), {{"transport", "tcp"}});
  out.push_back(std::move(queries));
  // One query has one answer type: a cluster name (NOERROR or NXDOMAIN), from the cache, forwarded
  // upstream (or joined one in flight), or an error; dropped ones get none.
  auto answers = family("dsproxy_dns_answers_total", "DNS queries by how they were answered", MetricType::Counter);
  const auto cluster = s.answered_cluster.load(std::memory_order_relaxed);
  const auto nx = s.cluster_nxdomain.load(std::memory_order_relaxed);
  sample(answers, static_cast<double>(cluster >= nx ? cluster - nx : 0), {{"type", "cluster"}});
  sample(answers, static_cast<double>(nx), {{"type", "cluster_nxdomain"}});
  sample(answers, v(s.cache_hits), {{"type", "cache"}});
  sample(answers, v(s.forwarded), {{"type", "forwarded"}});
  sample(answers, v(s.coalesced), {{"type", "coalesced"}});
  sample(answers, v(s.upstream_failures), {{"type", "servfail"}});
  sample(answers, v(s.overloaded), {{"type", "overloaded"}});
  sample(answers, v(s.formerr), {{"type", "formerr"}});
  sample(answers, v(s.notimp), {{"type", "notimp"}});
  out.push_back(std::move(answers));
  auto dropped = family("dsproxy_dns_dropped_total", "DNS queries dropped or refused, by why", MetricType::Counter);
  sample(dropped, v(s.dropped), {{"reason", "malformed"}});
  sample(dropped, v(s.dropped_direct), {{"reason", "direct"}});
  sample(dropped, v(s.dropped_not_node_pod), {{"reason", "not_node_pod"}});
  sample(dropped, v(s.tcp_limit), {{"reason", "tcp_limit"}});
  sample(dropped, v(s.tcp_client_limit), {{"reason", "tcp_client_limit"}});
  out.push_back(std::move(dropped));
  return out;
}

std::vector<prometheus::MetricFamily> config_families(std::uint64_t builds, std::uint64_t failures) {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  auto b = family("dsproxy_config_reloads_total", "Routing snapshots built from the sources (reloads)",
                  MetricType::Counter);
  sample(b, static_cast<double>(builds));
  out.push_back(std::move(b));
  auto f = family("dsproxy_config_reload_failures_total",
                  "Reloads that failed (the last good snapshot stayed in force)", MetricType::Counter);
  sample(f, static_cast<double>(failures));
  out.push_back(std::move(f));
  return out;
}

}  // namespace dsproxy::admin
