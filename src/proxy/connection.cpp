#include "proxy/connection.hpp"

#include <spdlog/spdlog.h>

#include <optional>
#include <utility>

#include <boost/asio/use_awaitable.hpp>

#include "hbone/stream_relay.hpp"
#include "proxy/connect_scheduler.hpp"
#include "proxy/gauge_guard.hpp"
#include "proxy/mesh.hpp"
#include "proxy/log_throttle.hpp"
#include "proxy/relay.hpp"
#include "proxy/router.hpp"
#include "proxy/upstream_connector.hpp"

namespace dsproxy::proxy {

namespace {

using boost::asio::awaitable;

// What is left of a connection while it relays: the counters to update when it ends, and the
// gauges it holds (active connections; outstanding connections of its endpoint, which feed
// least-outstanding picking). Destroying it releases the gauges, also when the relay is
// destroyed without completing (its io_context going away).
class RelayEnd {
 public:
  RelayEnd(ProxyStats& stats, GaugeGuard<ProxyStats::Counter> active,
           GaugeGuard<std::atomic<std::uint64_t>> on_worker, std::shared_ptr<EndpointState> endpoint,
           Direction direction, const net::SocketAddress& source, const net::SocketAddress& destination,
           ConnectionResult result, AuthzRegistration authz = {})
      : authz_(std::move(authz)),
        stats_(&stats),
        endpoint_(std::move(endpoint)),
        active_(std::move(active)),
        on_worker_(std::move(on_worker)),
        outstanding_(endpoint_ ? &endpoint_->active : nullptr),
        direction_(direction),
        source_(source),
        destination_(destination),
        result_(std::move(result)) {}

  // A tunnelled connection: the client socket is the relay's upstream side.
  void operator()(hbone::StreamRelayResult result) {
    RelayResult r;
    r.bytes_to_upstream = result.bytes_to_stream;
    r.bytes_to_downstream = result.bytes_to_socket;
    r.reset = result.reset;
    r.idle_timeout = result.idle_timeout;
    (*this)(r);
  }

  void operator()(RelayResult result) {
    ProxyStats::add(stats_->bytes_to_upstream, result.bytes_to_upstream);
    ProxyStats::add(stats_->bytes_to_downstream, result.bytes_to_downstream);
    if (result.idle_timeout) ProxyStats::add(stats_->idle_timeouts);
    if (result.reset) ProxyStats::add(stats_->resets_propagated);
    if (result.fault) ProxyStats::add(stats_->worker_faults);
    if (result_.active()) {
      auto& r = result_.record();
      r.bytes_to_upstream = result.bytes_to_upstream;
      r.bytes_to_downstream = result.bytes_to_downstream;
      if (result.revoked) r.policy = std::string(authz_.revoked_by());  // the access log names it
      result_.finish(result.fault          ? EndReason::fault
                     : result.revoked      ? EndReason::denied_by_policy  // a policy change closed it
                     : result.idle_timeout ? EndReason::idle_timeout
                     : result.reset        ? (result.upstream_reset ? EndReason::upstream_reset : EndReason::client_reset)
                                           : EndReason::completed);
    }
    if (spdlog::should_log(spdlog::level::debug))
      spdlog::debug("{} {} -> {} closed: {} B up, {} B down{}{}", to_string(direction_), source_.to_string(),
                    destination_.to_string(), result.bytes_to_upstream, result.bytes_to_downstream,
                    result.idle_timeout ? ", idle timeout" : "", result.reset ? ", reset" : "");
  }

 private:
  AuthzRegistration authz_;  // leaves the worker's live list when the relay's completion is destroyed
  ProxyStats* stats_;
  // Declared before the guards: the endpoint state outlives the gauge that points into it.
  std::shared_ptr<EndpointState> endpoint_;
  GaugeGuard<ProxyStats::Counter> active_;
  GaugeGuard<std::atomic<std::uint64_t>> on_worker_;  // WorkerLoad::connections
  GaugeGuard<std::atomic<std::uint32_t>> outstanding_;
  Direction direction_;
  net::SocketAddress source_;
  net::SocketAddress destination_;
  // Emitted when the relay's handler is destroyed: after it ran, or unrun when the worker's
  // io_context is torn down (then the reason stays `shutdown`).
  ConnectionResult result_;
};

// Local errors come in floods (every connection fails the same way while descriptors are short):
// one line a second for all workers, saying how many were held back.
LogThrottle& local_error_log() {
  static LogThrottle throttle;
  return throttle;
}

void count_reject(ProxyStats& stats, RejectReason reason) {
  switch (reason) {
    case RejectReason::no_endpoint_for_family: ProxyStats::add(stats.rejected_no_endpoint_for_family); break;
    case RejectReason::unknown_service_port: ProxyStats::add(stats.rejected_unknown_service_port); break;
    case RejectReason::forbidden_destination: ProxyStats::add(stats.rejected_forbidden_destination); break;
    default: ProxyStats::add(stats.rejected_loop); break;
  }
}

// The backends a connection may use, in the order the scheduler asks for them, and the endpoint
// behind every address it is given (for outlier detection and load accounting).
class BackendSource {
 public:
  // `other_family_allowed`: false when the connection could only reach the other family from the
  // node's own address (a captured client with no address of that family); such addresses are
  // never offered.
  BackendSource(const ConnectionContext& ctx, const RouteDecision& decision, const snapshot::ClusterSnapshot& snapshot,
                const ClusterStates* states, net::Family dialled, bool other_family_allowed,
                const net::IpAddress& client)
      : ctx_(ctx),
        decision_(decision),
        snapshot_(snapshot),
        states_(states),
        dialled_(dialled),
        other_family_allowed_(other_family_allowed),
        client_(client) {}

  std::optional<BackendTargets> next() {
    if (decision_.kind == RouteKind::passthrough) {
      if (passthrough_given_) return std::nullopt;  // one destination: nowhere else to retry
      passthrough_given_ = true;
      BackendTargets t{{decision_.upstream}, -1};
      // A dual-stack pod dialled directly: race its other family too (preferred: the dialled one).
      if (ctx_.options.passthrough_happy_eyeballs && other_family_allowed_)
        if (auto other = snapshot_.other_family_address(decision_.upstream.ip))
          t.addresses.push_back({*other, decision_.upstream.port});
      return t;
    }
    for (;;) {
      auto pick = ctx_.picker.pick(*decision_.cluster, states_, dialled_, Clock::now(), tried_, client_);
      if (!pick) return std::nullopt;
      tried_.push_back(pick->backend);
      BackendTargets t{{}, static_cast<int>(picks_.size())};
      for (int i = 0; i < pick->count; ++i) {
        const auto& address = pick->endpoints[static_cast<std::size_t>(i)]->address;
        if (other_family_allowed_ || address.ip.family() == dialled_) t.addresses.push_back(address);
      }
      if (t.addresses.empty()) continue;  // this backend has only the family we may not use
      picks_.push_back(*pick);
      return t;
    }
  }

  // The runtime state of the endpoint an attempt dialled; null for passthrough (and for a
  // cluster the state index did not cover yet).
  std::shared_ptr<EndpointState> state_of(const ConnectScheduler::Attempt& a) const {
    if (a.tag < 0 || !states_) return nullptr;
    const auto& pick = picks_[static_cast<std::size_t>(a.tag)];
    for (std::size_t i = 0; i < static_cast<std::size_t>(pick.count); ++i)
      if (pick.endpoints[i]->address == a.address) return states_->share(static_cast<std::size_t>(pick.indices[i]));
    return nullptr;
  }

 private:
  const ConnectionContext& ctx_;
  const RouteDecision& decision_;
  const snapshot::ClusterSnapshot& snapshot_;
  const ClusterStates* states_;
  net::Family dialled_;
  bool other_family_allowed_;
  net::IpAddress client_;  // the session-affinity key
  std::vector<int> tried_;
  std::vector<BackendPick> picks_;
  bool passthrough_given_ = false;
};

struct ConnectedUpstream {
  net::SocketAddress address;
  std::shared_ptr<EndpointState> endpoint;  // null for passthrough
  std::shared_ptr<hbone::Stream> tunnel;    // set: an HBONE stream stands for the upstream socket
};

awaitable<std::optional<ConnectedUpstream>> establish_upstream(const ConnectionContext& ctx,
                                                               const RouteDecision& decision,
                                                               const snapshot::ClusterSnapshot& snapshot,
                                                               const ClusterStates* states,
                                                               const net::SocketAddress& source,
                                                               const net::SocketAddress& destination,
                                                               bool transparent, tcp::socket& upstream,
                                                               ConnectionResult& result) {
  const std::string_view cluster_name = decision.cluster ? std::string_view(decision.cluster->cluster_name) : "-";
  // The client's first bytes wait in its socket's receive queue until an upstream is connected
  // (we do not read before), so retries and Happy Eyeballs lose none of them.
  net::UpstreamSocketOptions upstream_options{.mark = ctx.options.upstream_mark, .source = std::nullopt, .other_family_source = std::nullopt};
  // The client's own address where the family allows it, and its own address of the other family
  // for cross-family attempts (a captured client without one gets none: see route()).
  if (transparent) {
    upstream_options.source = source.ip;
    upstream_options.other_family_source = snapshot.other_family_address(source.ip);
  }
  BackendSource backends(ctx, decision, snapshot, states, destination.ip.family(),
                         !transparent || upstream_options.other_family_source.has_value(), source.ip);
  // The first backend decides whether the connection is tunnelled: its preferred address (the
  // family the Service's policy chose) is the CONNECT's authority; the outer connection races
  // the pod's two addresses itself (MeshWorker::dial).
  std::optional<BackendTargets> first = backends.next();
  if (first && transparent && ctx.mesh && ctx.mesh->enabled()) {
    if (const auto plan = plan_tunnel(snapshot, source.ip, first->addresses.front())) {
      const std::string_view host = decision.cluster ? std::string_view(decision.cluster->hostname) : std::string_view{};
      // ztunnel's reporter=source view of a tunnel: our workload's identity and the one the
      // destination proved (the pool checked it before first use).
      if (result.active()) {
        result.record().source_principal = ctx.mesh->principal(plan->source_identity);
        result.record().destination_principal = ctx.mesh->principal(plan->destination_identity);
      }
      auto stream = co_await ctx.mesh->open_tunnel(*plan, source, host);
      if (!stream) {
        result.finish(EndReason::connect_failed);  // no tunnel (refused, unreachable, no certificate yet)
        co_return std::nullopt;
      }
      co_return ConnectedUpstream{plan->target, nullptr, std::move(stream)};
    }
  }
  bool first_given = false;
  ConnectScheduler scheduler(
      {ctx.options.attempt_delay, ctx.options.connect_timeout, std::max(1, ctx.options.max_connect_attempts)},
      [&backends, &first, &first_given]() -> std::optional<BackendTargets> {
        if (!first_given) {
          first_given = true;
          return std::move(first);
        }
        return backends.next();
      });
  const ConnectOutcome outcome = co_await connect_upstream(
      upstream, scheduler, upstream_options, [&](const ConnectScheduler::Attempt& attempt, AttemptResult result) {
        // The node's own trouble (no descriptor, no buffer, no source port) says nothing about
        // the endpoint: counted apart, never against it, so exhaustion cannot eject healthy pods.
        if (result == AttemptResult::local_error) {
          ProxyStats::add(ctx.stats.local_errors);
          return;
        }
        const auto state = backends.state_of(attempt);
        if (!state) return;
        if (result == AttemptResult::connected) {
          ctx.outliers.record_success(*state);
        } else if (ctx.outliers.record_failure(*state, Clock::now())) {
          ProxyStats::add(ctx.stats.outlier_ejections);
          spdlog::warn("outlier: ejecting {} of {} after {} consecutive connect failures (ejection #{})",
                       attempt.address.to_string(), cluster_name, ctx.outliers.options().consecutive_failures,
                       state->ejections.load(std::memory_order_relaxed));
        }
      });
  if (scheduler.backends_tried() > 1) ProxyStats::add(ctx.stats.connect_retries, scheduler.backends_tried() - 1);
  result.record().retries = scheduler.backends_tried() > 1 ? static_cast<std::uint32_t>(scheduler.backends_tried() - 1) : 0;

  if (outcome.winner < 0) {
    if (outcome.local_error) {
      if (const auto suppressed = local_error_log().admit(std::chrono::steady_clock::now()))
        spdlog::warn("{} -> {}: no upstream socket: {} (this node's own resources, not the endpoint's; "
                     "{} similar failure(s) not logged; see local_errors)",
                     source.to_string(), destination.to_string(), outcome.error.message(), *suppressed);
      result.finish(EndReason::local_error);
      co_return std::nullopt;
    }
    const bool timed_out = outcome.error == std::errc::timed_out;
    ProxyStats::add(timed_out ? ctx.stats.upstream_connect_timeout : ctx.stats.upstream_connect_failed);
    result.finish(timed_out ? EndReason::connect_timeout : EndReason::connect_failed);
    spdlog::warn("{} -> {}: no upstream after {} attempt(s) on {} backend(s): {} (cluster {})", source.to_string(),
                 destination.to_string(), scheduler.attempts().size(), scheduler.backends_tried(),
                 outcome.error.message(), cluster_name);
    co_return std::nullopt;
  }
  const auto& winner = scheduler.attempts()[static_cast<std::size_t>(outcome.winner)];
  if (winner.address.ip.family() != destination.ip.family()) ProxyStats::add(ctx.stats.family_fallbacks);
  if (winner.second_family) ProxyStats::add(ctx.stats.happy_eyeballs_other_family);
  result.record().fell_back = winner.address.ip.family() != destination.ip.family();
  result.record().second_family_won = winner.second_family;
  co_return ConnectedUpstream{winner.address, backends.state_of(winner), nullptr};
}

// What the relay phase keeps of the connect phase.
struct Connected {
  net::SocketAddress address;
  std::shared_ptr<EndpointState> endpoint;  // null for passthrough
  std::shared_ptr<hbone::Stream> tunnel;
  // Set when the connection reaches one of this node's workloads: what it was authorized on,
  // and the index that decided (to catch a policy change that lands before it is registered).
  std::optional<authz::ConnectionAttributes> authz;
  std::shared_ptr<const authz::PolicyIndex> authz_index;
};

// AuthorizationPolicy at the destination's node, for plaintext connections (no peer identity):
// false when a policy denies `c` (logged). ztunnel enforces at the receiving side; here that is
// the node whose pod is the destination, whichever listener caught the connection.
bool authorize(Direction direction, const authz::Workload& w, const authz::ConnectionAttributes& c,
               ConnectionResult& result) {
  const authz::Decision d = authz::decide(w, c);
  if (d.denied()) {
    log_authz_denial(direction, c, w, d, "connection reset");
    result.finish(EndReason::denied_by_policy);
    if (result.active() && d.policy) result.record().policy = d.policy->key;
    return false;
  }
  log_authz_notes(direction, c, w, d);
  return true;
}

awaitable<std::optional<Connected>> route_and_connect(const ConnectionContext& ctx, Direction direction,
                                                      const net::SocketAddress& source,
                                                      const net::SocketAddress& destination, bool transparent,
                                                      tcp::socket& upstream, ConnectionResult& result) {
  // One snapshot reference for the whole decision: a concurrent reload cannot change it or free
  // the endpoints it points to.
  const auto snapshot = ctx.store.current();
  const RouteDecision decision =
      route(*snapshot, direction, destination, ctx.options.ports, ctx.local_addresses, transparent, source.ip);
  // The endpoints' runtime states, looked up once per connection; the index is kept with the
  // snapshot for the whole decision.
  std::shared_ptr<const EndpointStateIndex> state_index;
  const ClusterStates* states = nullptr;
  if (decision.cluster) {
    state_index = ctx.endpoint_states.index_for(snapshot);
    states = state_index->find(*decision.cluster);
  }
  const std::string_view cluster_name = decision.cluster ? std::string_view(decision.cluster->cluster_name) : "-";
  // Names only when a sink wants them (metrics or the access log on): one hash lookup each.
  const bool names = ctx.names && result.wants_names();
  if (names) {
    ctx.names->refresh(snapshot);
    result.record().source_workload = ctx.names->pod(source.ip);
    if (decision.cluster) result.record().service = ctx.names->service(*decision.cluster);
  }
  // A destination that is one of this node's pods (inbound, or a pod dialled directly by a pod
  // of this node) is authorized before anything is dialled.
  const authz::Workload* workload =
      transparent && decision.kind == RouteKind::passthrough ? snapshot->authz().workload(destination.ip) : nullptr;
  std::optional<authz::ConnectionAttributes> authorized;
  if (workload) {
    authorized = authz::ConnectionAttributes{source.ip, destination.ip, destination.port, std::nullopt};
    if (!authorize(direction, *workload, *authorized, result)) co_return std::nullopt;
  }
  if (decision.kind == RouteKind::reject) {
    result.finish(reason_for(decision.reason));
    count_reject(ctx.stats, decision.reason);
    spdlog::warn("{} {} -> {} rejected: {} (cluster {})", to_string(direction), source.to_string(),
                 destination.to_string(), to_string(decision.reason), cluster_name);
    co_return std::nullopt;
  }
  ProxyStats::add(decision.kind == RouteKind::service ? ctx.stats.routed_to_service : ctx.stats.passthrough);
  const auto connected =
      co_await establish_upstream(ctx, decision, *snapshot, states, source, destination, transparent, upstream,
                                  result);
  if (!connected) co_return std::nullopt;
  // A Service endpoint on this node is known only once connected (the pick, retries and Happy
  // Eyeballs choose it): decided then, and a denial resets both sides before any byte moves. So
  // is a passthrough that Happy Eyeballs took to the pod's other-family address. (A tunnelled
  // connection goes to another node, which decides.)
  const bool decided_this = authorized && authorized->destination_ip == connected->address.ip &&
                            authorized->destination_port == connected->address.port;
  if (!decided_this && transparent && !connected->tunnel)
    if (const authz::Workload* w = snapshot->authz().workload(connected->address.ip)) {
      authorized = authz::ConnectionAttributes{source.ip, connected->address.ip, connected->address.port, std::nullopt};
      if (!authorize(direction, *w, *authorized, result)) {
        net::reset_connection(upstream);
        co_return std::nullopt;
      }
    }
  result.record().connected = true;
  result.record().endpoint = connected->address;
  if (names) result.record().destination_workload = ctx.names->pod(connected->address.ip);
  result.mark_opened();
  // Guarded: the arguments would be formatted (inet_ntop, allocations) even with debug off, and
  // that cost per connection showed up in profiles.
  if (spdlog::should_log(spdlog::level::debug))
    spdlog::debug("{} {} -> {} via {}{} (cluster {})", to_string(direction), source.to_string(),
                  destination.to_string(), connected->address.to_string(), connected->tunnel ? " (HBONE)" : "",
                  cluster_name);
  co_return Connected{connected->address, connected->endpoint, connected->tunnel, authorized,
                      authorized ? snapshot->authz_index() : nullptr};
}

// A fault (an exception from anything a connection calls; the data path itself uses error
// codes, so in practice std::bad_alloc) is one connection's problem: the client is reset, the
// worker goes on. One line a second for all workers.
LogThrottle& fault_log() {
  static LogThrottle throttle;
  return throttle;
}

// Tests only (ProxyOptions::test_faults): is this worker's next connection the Nth?
bool inject(std::uint32_t every, WorkerLoad& load) {
  return every != 0 && ++load.test_faults_seen % every == 0;
}

}  // namespace

awaitable<void> serve_connection(tcp::socket client, tcp::endpoint peer, Direction direction,
                                 ConnectionContext ctx, std::optional<net::SocketAddress> forward_to) {
  GaugeGuard<ProxyStats::Counter> active(&ctx.stats.active_connections);
  GaugeGuard<std::atomic<std::uint64_t>> on_worker(&ctx.load.connections);
  ProxyStats::add(direction == Direction::outbound ? ctx.stats.outbound_accepted : ctx.stats.inbound_accepted);
  // A frame destroyed while still routing or connecting (a stop, a drain whose grace ran out)
  // resets its client: asio's socket destructor would send a FIN, a clean end of stream. A no-op
  // once the relay has the socket (moved from) or a path below has closed it.
  struct ResetOnDestroy {
    tcp::socket& socket;
    ~ResetOnDestroy() { net::reset_connection(socket); }
  } reset_on_destroy{client};
  const net::SocketAddress source = net::to_socket_address(peer);
  // Emitted when this frame goes, whatever path it takes (a frame torn down at the end of a drain
  // records `shutdown`), unless the relay took it over.
  ConnectionResult result(ctx.sink, direction, source, {});
  try {
    // With TPROXY the accepted socket's local address is the destination the client dialled.
    net::SocketAddress destination;
    if (forward_to) {
      destination = *forward_to;
    } else {
      boost::system::error_code ec;
      const auto local = client.local_endpoint(ec);
      if (ec) {
        result.finish(EndReason::client_gone);  // the client vanished between accept and now
        co_return;
      }
      destination = net::to_socket_address(local);
    }
    result.record().destination = destination;

    // Routing and connecting run in their own coroutine: their state (the snapshot reference,
    // scheduler, candidate lists, attempt sockets) is freed before the relay starts, so an old
    // snapshot is not kept alive by long-lived connections after a reload.
    tcp::socket upstream(client.get_executor());
    const bool transparent = ctx.options.transparent && !forward_to;
    // Connections still routing or connecting are bounded per worker: past the limit (an
    // upstream black hole holding every attempt for the whole connect timeout) new clients are
    // reset at once rather than piling up behind it.
    if (ctx.load.full(ctx.options.limits, {WorkerLimit::pending_connects})) {
      count_refusal(WorkerLimit::pending_connects, ctx.options.limits, ctx.stats, nullptr,
                    "new connections are reset");
      result.finish(EndReason::rejected_overload);
      net::reset_connection(client);
      co_return;
    }
    std::optional<Connected> connected;
    {
      GaugeGuard<std::atomic<std::uint64_t>> connecting(&ctx.load.connecting);
      if (inject(ctx.options.test_faults.connection_every, ctx.load)) throw std::bad_alloc();
      connected = co_await route_and_connect(ctx, direction, source, destination, transparent, upstream, result);
    }
    if (!connected) {
      net::reset_connection(client);
      co_return;
    }
    if (connected->tunnel) {
      // The peer's identity was proven in the handshake (the pool checks it before first use).
      result.record().protocol = RequestProtocol::hbone;
      result.record().security = SecurityPolicy::mutual_tls;
      hbone::StreamRelayOptions tunnel_options;
      tunnel_options.idle_timeout = ctx.options.idle_timeout;
      hbone::start_stream_relay(std::move(client), connected->tunnel, tunnel_options,
                                RelayEnd(ctx.stats, std::move(active), std::move(on_worker), connected->endpoint,
                                         direction, source, destination, std::move(result)));
      co_return;
    }
    // The relay takes the connection over; this coroutine ends here and its frame is freed, so
    // an idle proxied connection costs only the relay and what RelayEnd keeps.
    RelayOptions relay_options{ctx.options.idle_timeout};
    if (inject(ctx.options.test_faults.relay_every, ctx.load)) relay_options.test_fault_at_move = 1;
    // A connection to a local workload joins the worker's live list, so that a policy change
    // re-decides it (and resets it through the handle when it is now denied).
    AuthzRegistration registration;
    std::uint64_t authz_id = 0;
    if (connected->authz && ctx.authz_connections) {
      relay_options.handle = std::make_shared<RelayHandle>();
      authz_id = ctx.authz_connections->add({*connected->authz, direction, relay_options.handle});
      registration = AuthzRegistration(*ctx.authz_connections, authz_id);
    }
    start_relay(std::move(client), std::move(upstream), relay_options,
                RelayEnd(ctx.stats, std::move(active), std::move(on_worker), connected->endpoint, direction, source,
                         destination, std::move(result), std::move(registration)));
    // A policy change published while this connection was connecting: the walk it caused may have
    // missed it, so it is decided once more against the current index.
    if (authz_id != 0) {
      const auto now = ctx.store.current();
      if (now->authz_index() != connected->authz_index) ctx.authz_connections->reevaluate_one(authz_id, now->authz());
    }
  } catch (const std::exception& e) {
    // Whatever was not handed to the relay yet is closed with this frame; the client learns of
    // it by a reset, never by a clean end of stream.
    ProxyStats::add(ctx.stats.worker_faults);
    if (result.active()) result.finish(EndReason::fault);
    net::reset_connection(client);
    if (const auto suppressed = fault_log().admit(std::chrono::steady_clock::now()))
      spdlog::error("connection: {} ({} similar fault(s) not logged; see worker_faults); the client is reset, the "
                    "worker goes on",
                    e.what(), *suppressed);
  }
}

}  // namespace dsproxy::proxy
