#include "admin/limits_status.hpp"

namespace dsproxy::admin {

namespace json = boost::json;

json::object limits_status(const LimitsContext& c) {
  auto count = [](const std::atomic<std::uint64_t>& v) { return v.load(std::memory_order_relaxed); };
  auto session = [&](const SessionLimit* l) {
    if (!l) return json::object{};
    return json::object{{"limit", l->max}, {"active", count(l->active)}, {"refused", count(l->refused)}};
  };
  json::array workers;
  for (const auto& w : c.workers) workers.push_back(json::object{{"connections", w.connections}, {"connecting", w.connecting}});
  json::object out{
      {"connectionsPerWorker",
       json::object{{"limit", c.proxy.connections_per_worker}, {"refused", count(c.stats.rejected_worker_connection_limit)}}},
      {"pendingConnectsPerWorker",
       json::object{{"limit", c.proxy.pending_connects_per_worker},
                    {"refused", count(c.stats.rejected_pending_connect_limit)}}},
      {"pendingHandshakesPerWorker",
       json::object{{"limit", c.proxy.pending_handshakes_per_worker},
                    {"refused", count(c.stats.rejected_pending_handshake_limit)}}},
      {"workers", std::move(workers)},
      {"adminSessions", session(c.admin_sessions)},
      {"readinessSessions", session(c.readiness_sessions)}};
  if (c.dns && c.dns_stats) {
    out["dnsTcpConnections"] = json::object{{"limit", c.dns->max_tcp_connections}, {"refused", count(c.dns_stats->tcp_limit)}};
    out["dnsTcpConnectionsPerClient"] =
        json::object{{"limit", c.dns->max_tcp_connections_per_client}, {"refused", count(c.dns_stats->tcp_client_limit)}};
    out["dnsTcpMessageDeadlineMs"] =
        json::object{{"limit", c.dns->tcp_message_timeout.count()}, {"expired", count(c.dns_stats->tcp_message_timeouts)}};
  }
  return out;
}

}  // namespace dsproxy::admin
