#include "admin/config_dump.hpp"

#include <boost/json.hpp>
#include <chrono>

namespace dsproxy::admin {

namespace json = boost::json;

namespace {

json::object socket_address(const std::string& address, std::uint16_t port) {
  return {{"socketAddress", json::object{{"address", address}, {"portValue", port}}}};
}

json::object listener(const std::string& name, const std::string& direction, const std::string& address,
                      std::uint16_t port, const std::vector<std::string>& additional) {
  json::object l{{"name", name}, {"address", socket_address(address, port)}, {"trafficDirection", direction}};
  // Present only when there is something in it, as Envoy prints it: single-stack listeners have
  // no `additionalAddresses` key at all.
  if (!additional.empty()) {
    json::array extra;
    for (const auto& a : additional) extra.push_back(json::object{{"address", socket_address(a, port)}});
    l["additionalAddresses"] = std::move(extra);
  }
  return l;
}

json::array listeners(const DumpContext& ctx) {
  json::array out;
  const auto& p = ctx.proxy;
  // An empty bind address is a family that is off on this node: no listener, so not shown.
  std::vector<std::string> binds;
  for (const auto* b : {&p.bind_v4, &p.bind_v6})
    if (!b->empty()) binds.push_back(*b);
  if (!binds.empty()) {
    const std::vector<std::string> extra(binds.begin() + 1, binds.end());
    out.push_back(listener("virtualOutbound", "OUTBOUND", binds.front(), p.ports.outbound, extra));
    out.push_back(listener("virtualInbound", "INBOUND", binds.front(), p.ports.inbound, extra));
  }
  for (const auto& f : p.forwards) {
    auto l = listener("forward_" + f.listen.to_string(), "OUTBOUND", f.listen.ip.to_string(), f.listen.port, {});
    l["forwardTo"] = f.target.to_string();
    out.push_back(std::move(l));
  }
  for (const snapshot::ServiceCluster& c : ctx.snapshot.clusters()) {
    if (c.cluster_ips.empty()) continue;
    const std::string primary = c.cluster_ips.front().to_string();
    std::vector<std::string> additional;
    for (std::size_t i = 1; i < c.cluster_ips.size(); ++i) additional.push_back(c.cluster_ips[i].to_string());
    auto l = listener(primary + "_" + std::to_string(c.port), "OUTBOUND", primary, c.port, additional);
    l["defaultCluster"] = c.cluster_name;
    l["ipFamilyPolicy"] = std::string(config::to_string(c.ip_family_policy));
    out.push_back(std::move(l));
  }
  return out;
}

json::array endpoints(const DumpContext& ctx) {
  json::array out;
  const auto now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  const auto index = ctx.endpoint_states ? ctx.endpoint_states->current() : nullptr;
  const proxy::EndpointState fresh;
  for (const snapshot::ServiceCluster& c : ctx.snapshot.clusters()) {
    json::array eps;
    const proxy::ClusterStates* states = index ? index->find(c) : nullptr;
    for (std::size_t i = 0; i < c.endpoints.size(); ++i) {
      const auto& e = c.endpoints[i];
      const proxy::EndpointState& st = states && states->size() == c.endpoints.size() ? (*states)[i] : fresh;
      const bool ejected = st.ejected_until_ns.load(std::memory_order_relaxed) > now_ns;
      json::object ep{{"address", socket_address(e.address.ip.to_string(), e.address.port)},
                      {"healthStatus", e.health()},
                      {"ready", e.ready},
                      {"serving", e.serving},
                      {"terminating", e.terminating},
                      // Whether the Service's rules (conditions, traffic policy, topology) leave it
                      // to be picked: a HEALTHY endpoint on another node of a Local Service is not.
                      {"eligible", e.eligible},
                      {"outlierCheck", ejected ? "FAILED" : "OK"},
                      {"activeConnections", st.active.load(std::memory_order_relaxed)},
                      {"connections", st.picks.load(std::memory_order_relaxed)},
                      {"consecutiveFailures", st.consecutive_failures.load(std::memory_order_relaxed)},
                      {"ejections", st.ejections.load(std::memory_order_relaxed)}};
      if (!e.pod.empty()) ep["pod"] = e.pod.str();
      if (!e.node_name.empty()) ep["nodeName"] = e.node_name.str();
      if (!e.zone.empty()) ep["zone"] = e.zone.str();
      if (!e.zone_hints.empty()) {
        json::array hints;
        for (const auto& z : e.zone_hints) hints.push_back(json::string(z.str()));
        ep["zoneHints"] = std::move(hints);
      }
      eps.push_back(std::move(ep));
    }
    json::object cluster{{"clusterName", c.cluster_name},
                         {"familyFallback", std::string(snapshot::to_string(c.family_fallback))},
                         {"internalTrafficPolicy", std::string(config::to_string(c.internal_traffic_policy))},
                         {"sessionAffinity", std::string(config::to_string(c.session_affinity))},
                         {"endpoints", std::move(eps)}};
    if (c.session_affinity == config::SessionAffinity::ClientIP)
      cluster["sessionAffinityTimeoutSeconds"] = c.affinity_timeout_s;
    if (!c.traffic_distribution.empty()) cluster["trafficDistribution"] = c.traffic_distribution;
    if (!c.app_protocol.empty()) cluster["appProtocol"] = c.app_protocol;
    out.push_back(std::move(cluster));
  }
  return out;
}

// As ztunnel's config_dump names a workload's fields (workloadIps, serviceAccount, protocol), plus
// the SPIFFE identity its certificate carries.
json::array workloads(const DumpContext& ctx) {
  json::array out;
  const std::string& td = ctx.snapshot.options().trust_domain;
  for (const auto& w : ctx.snapshot.workloads()) {
    json::array ips;
    for (const auto& ip : w->ips) ips.push_back(json::string(ip.to_string()));
    out.push_back(json::object{{"name", w->name},
                               {"namespace", w->ns},
                               {"serviceAccount", w->service_account},
                               {"identity", w->identity(td)},
                               {"node", w->node.str()},
                               {"workloadIps", std::move(ips)},
                               {"protocol", snapshot::to_string(w->protocol)},
                               {"local", w->local}});
  }
  return out;
}

json::object counters(const proxy::ProxyStats& s) {
  auto v = [](const proxy::ProxyStats::Counter& c) { return c.load(std::memory_order_relaxed); };
  return {{"outbound_accepted", v(s.outbound_accepted)},
          {"inbound_accepted", v(s.inbound_accepted)},
          {"active_connections", v(s.active_connections)},
          {"routed_to_service", v(s.routed_to_service)},
          {"passthrough", v(s.passthrough)},
          {"rejected_no_endpoint_for_family", v(s.rejected_no_endpoint_for_family)},
          {"rejected_unknown_service_port", v(s.rejected_unknown_service_port)},
          {"rejected_loop", v(s.rejected_loop)},
          {"rejected_forbidden_destination", v(s.rejected_forbidden_destination)},
          {"upstream_connect_failed", v(s.upstream_connect_failed)},
          {"family_fallbacks", v(s.family_fallbacks)},
          {"happy_eyeballs_other_family", v(s.happy_eyeballs_other_family)},
          {"connect_retries", v(s.connect_retries)},
          {"outlier_ejections", v(s.outlier_ejections)},
          {"local_errors", v(s.local_errors)},
          {"accept_shed", v(s.accept_shed)},
          {"worker_faults", v(s.worker_faults)},
          {"rejected_worker_connection_limit", v(s.rejected_worker_connection_limit)},
          {"rejected_pending_connect_limit", v(s.rejected_pending_connect_limit)},
          {"rejected_pending_handshake_limit", v(s.rejected_pending_handshake_limit)},
          {"upstream_connect_timeout", v(s.upstream_connect_timeout)},
          {"idle_timeouts", v(s.idle_timeouts)},
          {"resets_propagated", v(s.resets_propagated)},
          {"hbone_accepted", v(s.hbone_accepted)},
          {"tunnels_outbound", v(s.tunnels_outbound)},
          {"tunnels_inbound", v(s.tunnels_inbound)},
          {"tunnels_refused", v(s.tunnels_refused)},
          {"tunnel_failures", v(s.tunnel_failures)},
          {"hbone_protocol_errors", v(s.hbone_protocol_errors)},
          {"bytes_to_upstream", v(s.bytes_to_upstream)},
          {"bytes_to_downstream", v(s.bytes_to_downstream)}};
}

json::object dns_counters(const resolver::DnsStats& s) {
  auto v = [](const std::atomic<std::uint64_t>& c) { return c.load(std::memory_order_relaxed); };
  return {{"queries_udp", v(s.queries_udp)},         {"queries_tcp", v(s.queries_tcp)},
          {"answered_cluster", v(s.answered_cluster)}, {"cluster_nxdomain", v(s.cluster_nxdomain)},
          {"forwarded", v(s.forwarded)},             {"coalesced", v(s.coalesced)},
          {"cache_hits", v(s.cache_hits)},           {"upstream_failures", v(s.upstream_failures)},
          {"formerr", v(s.formerr)},                 {"notimp", v(s.notimp)},
          {"dropped", v(s.dropped)},                 {"truncated", v(s.truncated)},
          {"overloaded", v(s.overloaded)},           {"dropped_direct", v(s.dropped_direct)},
          {"dropped_not_node_pod", v(s.dropped_not_node_pod)},
          {"reply_failures", v(s.reply_failures)},   {"reply_strays", v(s.reply_strays)},
          {"tcp_limit", v(s.tcp_limit)},             {"tcp_client_limit", v(s.tcp_client_limit)},
          {"tcp_message_timeouts", v(s.tcp_message_timeouts)}};
}

json::object authz_counters(const authz::PolicyIndex& index) {
  const auto& t = authz::totals();
  json::array policies;
  for (const auto& [ns, named] : index.policies())
    for (const auto& [name, p] : named)
      policies.push_back(json::object{{"policy", p->key},
                                      {"action", config::to_string(p->action)},
                                      {"dryRun", p->dry_run},
                                      {"allowed", p->stats->allowed.load(std::memory_order_relaxed)},
                                      {"denied", p->stats->denied.load(std::memory_order_relaxed)},
                                      {"audited", p->stats->audited.load(std::memory_order_relaxed)},
                                      {"dryRunMatched", p->stats->dry_run.load(std::memory_order_relaxed)}});
  return json::object{{"allowed", t.allowed.load(std::memory_order_relaxed)},
                      {"denied", t.denied.load(std::memory_order_relaxed)},
                      {"deniedNoAllowMatch", t.denied_no_allow_match.load(std::memory_order_relaxed)},
                      {"revoked", t.revoked.load(std::memory_order_relaxed)},
                      {"policies", std::move(policies)}};
}

json::object all_counters(const proxy::ProxyStats& stats, const resolver::DnsStats* dns,
                          const authz::PolicyIndex* authz = nullptr) {
  json::object out = counters(stats);
  if (dns) out["dns"] = dns_counters(*dns);
  if (authz) out["authz"] = authz_counters(*authz);
  return out;
}

json::object policy_summary(const authz::Policy& p) {
  json::object o{{"name", p.name},
                 {"namespace", p.ns},
                 {"action", config::to_string(p.action)},
                 {"scope", authz::to_string(p.scope)},
                 {"dryRun", p.dry_run},
                 {"rules", p.rules.size()}};
  if (p.selector) {
    json::object sel;
    for (const auto& [k, v] : *p.selector) sel[k] = v;
    o["selector"] = std::move(sel);
  }
  if (!p.l7_fields.empty()) {
    json::array l7;
    for (const auto& f : p.l7_fields) l7.push_back(json::string(f));
    o["l7Fields"] = std::move(l7);
  }
  if (!p.ignored.empty()) o["ignored"] = p.ignored;
  return o;
}

}  // namespace

std::string render_config_dump(const DumpContext& ctx) {
  json::object dump{{"node", ctx.snapshot.options().node_name},
                    {"zone", ctx.snapshot.zone()},
                    {"generation", ctx.generation},
                    {"listeners", listeners(ctx)},
                    {"endpoints", endpoints(ctx)},
                    {"workloads", workloads(ctx)},
                    {"stats", all_counters(ctx.stats, ctx.dns, &ctx.snapshot.authz())},
                    {"authz", authz_dump(ctx.snapshot.authz())}};
  json::array warnings;
  for (const auto& w : ctx.snapshot.warnings()) warnings.push_back(json::string(w));
  dump["warnings"] = std::move(warnings);
  // Endpoints the snapshot refused to route to (loopback, link-local, multicast, ClusterIPs, ...):
  // what an operator looks for when a Service has fewer endpoints than its slices list.
  json::array dropped;
  for (const auto& d : ctx.snapshot.dropped_endpoints())
    dropped.push_back(json::object{{"cluster", d.cluster_name}, {"address", d.address.to_string()}, {"reason", d.reason}});
  dump["droppedEndpoints"] = std::move(dropped);
  if (!ctx.control_plane.is_null()) dump["controlPlane"] = ctx.control_plane;
  dump["identity"] = ctx.identity.is_null() ? boost::json::value(boost::json::object{{"mtls", false}}) : ctx.identity;

  if (!ctx.limits.is_null()) dump["limits"] = ctx.limits;
  return json::serialize(dump);
}

std::string render_stats(const proxy::ProxyStats& stats, const resolver::DnsStats* dns, const json::value& limits,
                         const authz::PolicyIndex* authz) {
  json::object out = all_counters(stats, dns, authz);
  if (!limits.is_null()) out["limits"] = limits;
  return json::serialize(out);
}

json::object authz_dump(const authz::PolicyIndex& index) {
  json::array policies;
  for (const auto& [ns, named] : index.policies())
    for (const auto& [name, p] : named) policies.push_back(policy_summary(*p));
  json::array workloads;
  for (const auto& w : index.workloads()) {
    json::array ips;
    for (const auto& ip : w.ips) ips.push_back(json::string(ip.to_string()));
    json::array applied;
    for (const auto* list : {&w.deny, &w.allow, &w.audit, &w.dry_run})
      for (const auto& p : *list) applied.push_back(policy_summary(*p));
    workloads.push_back(json::object{{"name", w.name},
                                     {"namespace", w.ns},
                                     {"serviceAccount", w.service_account},
                                     {"addresses", std::move(ips)},
                                     {"policies", std::move(applied)}});
  }
  return json::object{{"rootNamespace", index.root_namespace()},
                      {"policyCount", index.policy_count()},
                      {"policies", std::move(policies)},
                      {"workloads", std::move(workloads)}};
}

}  // namespace dsproxy::admin
