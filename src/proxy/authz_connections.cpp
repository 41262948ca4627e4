#include "proxy/authz_connections.hpp"

#include <spdlog/spdlog.h>

#include "proxy/log_throttle.hpp"

namespace dsproxy::proxy {

namespace {

// Denials that name no policy (no ALLOW matched) share one throttle; each policy has its own.
LogThrottle& denial_log() {
  static LogThrottle throttle(std::chrono::milliseconds(100));
  return throttle;
}

constexpr std::int64_t kPolicyLogIntervalNs = 100'000'000;  // one line per policy per 100 ms

std::optional<std::uint64_t> admit(const authz::Decision& d) {
  if (!d.policy) return denial_log().admit(LogThrottle::Clock::now());
  auto& s = *d.policy->stats;
  const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               LogThrottle::Clock::now().time_since_epoch()).count();
  std::int64_t next = s.log_next_ns.load(std::memory_order_relaxed);
  if (now < next || !s.log_next_ns.compare_exchange_strong(next, now + kPolicyLogIntervalNs, std::memory_order_relaxed)) {
    s.log_suppressed.fetch_add(1, std::memory_order_relaxed);
    return std::nullopt;
  }
  return s.log_suppressed.exchange(0, std::memory_order_relaxed);
}

std::string endpoint(const net::IpAddress& ip, std::uint16_t port) { return net::SocketAddress{ip, port}.to_string(); }

}  // namespace

void log_authz_denial(Direction direction, const authz::ConnectionAttributes& c, const authz::Workload& w,
                      const authz::Decision& d, std::string_view what) {
  const auto suppressed = admit(d);
  if (!suppressed) return;
  spdlog::info("authz: {} {} -> {} ({}/{}, {}): {}; {}{}", to_string(direction), c.source_ip.to_string(),
               endpoint(c.destination_ip, c.destination_port), w.ns, w.name,
               c.source_identity ? "spiffe://" + c.source_identity->principal() : std::string("plaintext"),
               authz::describe(d, w), what,
               *suppressed ? " (" + std::to_string(*suppressed) + " similar line(s) not logged)" : "");
}

void log_authz_notes(Direction direction, const authz::ConnectionAttributes& c, const authz::Workload& w,
                     const authz::Decision& d) {
  if (!d.audit && !d.dry_run_match && !d.dry_run_would_deny) return;
  spdlog::info("authz: {} {} -> {} ({}/{}): {}", to_string(direction), c.source_ip.to_string(),
               endpoint(c.destination_ip, c.destination_port), w.ns, w.name, authz::describe(d, w));
}

bool AuthzConnections::revoke_if_denied(Entry& e, const authz::PolicyIndex& index) {
  const bool running = (e.relay && e.relay->running()) || (e.tunnel && e.tunnel->running());
  if (!running) return false;
  const authz::Workload* w = index.workload(e.attributes.destination_ip);
  if (!w) return false;
  const authz::Decision d = authz::decide(*w, e.attributes);
  if (!d.denied()) return false;
  log_authz_denial(e.direction, e.attributes, *w, d, "established connection closed after a policy change");
  authz::totals().revoked.fetch_add(1, std::memory_order_relaxed);
  e.revoked_by = std::string(d.policy_key());
  // Resetting runs the relay's completion only later (posted), so `e` stays valid here.
  if (e.relay && e.relay->running()) e.relay->reset();
  if (e.tunnel && e.tunnel->running()) e.tunnel->reset();
  return true;
}

std::size_t AuthzConnections::reevaluate(const authz::PolicyIndex& index) {
  std::size_t closed = 0;
  // reset() only marks the relay's waits aborted; the entries leave when their completions run
  // later, so iterating is safe.
  for (auto& [id, e] : live_)
    if (revoke_if_denied(e, index)) ++closed;
  return closed;
}

bool AuthzConnections::reevaluate_one(std::uint64_t id, const authz::PolicyIndex& index) {
  auto it = live_.find(id);
  return it != live_.end() && revoke_if_denied(it->second, index);
}

}  // namespace dsproxy::proxy
