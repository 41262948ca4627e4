#include "proxy/connection.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "proxy/relay.hpp"
#include "proxy/router.hpp"

namespace dsproxy::proxy {

namespace {

using boost::asio::awaitable;
using boost::asio::use_awaitable;

// Keeps the active-connection gauge right on every exit path, including frame destruction when
// the io_context is torn down with the coroutine suspended.
struct ActiveGuard {
  ProxyStats& stats;
  explicit ActiveGuard(ProxyStats& s) : stats(s) { ProxyStats::add(stats.active_connections); }
  ~ActiveGuard() { stats.active_connections.fetch_sub(1, std::memory_order_relaxed); }
};

// Connects within the timeout. The client's first bytes stay in its socket's receive queue
// meanwhile (we do not read before the upstream exists), so none are lost.
awaitable<std::error_code> connect_with_timeout(tcp::socket& upstream, const tcp::endpoint& target,
                                                std::chrono::milliseconds timeout, bool& timed_out) {
  boost::asio::steady_timer timer(upstream.get_executor(), timeout);
  auto [order, connect_ec, timer_ec] =
      co_await boost::asio::experimental::make_parallel_group(upstream.async_connect(target, boost::asio::deferred),
                                                              timer.async_wait(boost::asio::deferred))
          .async_wait(boost::asio::experimental::wait_for_one(), use_awaitable);
  timed_out = order[0] == 1;
  if (timed_out) co_return std::make_error_code(std::errc::timed_out);
  co_return connect_ec;
}

}  // namespace

awaitable<void> serve_connection(tcp::socket client, Direction direction, ConnectionContext ctx) {
  ActiveGuard active(ctx.stats);
  ProxyStats::add(direction == Direction::outbound ? ctx.stats.outbound_accepted : ctx.stats.inbound_accepted);

  boost::system::error_code ec;
  const auto local = client.local_endpoint(ec);
  const auto peer = ec ? tcp::endpoint{} : client.remote_endpoint(ec);
  if (ec) co_return;  // the client vanished between accept and now
  // With TPROXY the accepted socket's local address is the destination the client dialled.
  const net::SocketAddress destination = to_socket_address(local);
  const net::SocketAddress source = to_socket_address(peer);

  // One snapshot reference for the whole decision: a concurrent reload cannot change it.
  const auto snapshot = ctx.store.current();
  const RouteDecision decision = route(*snapshot, direction, destination, ctx.options.ports);
  const std::string_view cluster_name = decision.cluster ? std::string_view(decision.cluster->cluster_name) : "-";

  if (decision.kind == RouteKind::reject) {
    switch (decision.reason) {
      case RejectReason::no_endpoint_for_family: ProxyStats::add(ctx.stats.rejected_no_endpoint_for_family); break;
      case RejectReason::unknown_service_port: ProxyStats::add(ctx.stats.rejected_unknown_service_port); break;
      default: ProxyStats::add(ctx.stats.rejected_loop); break;
    }
    spdlog::warn("{} {} -> {} rejected: {} (cluster {})", to_string(direction), source.to_string(),
                 destination.to_string(), to_string(decision.reason), cluster_name);
    reset_connection(client);
    co_return;
  }
  ProxyStats::add(decision.kind == RouteKind::service ? ctx.stats.routed_to_service : ctx.stats.passthrough);

  tcp::socket upstream(client.get_executor());
  UpstreamSocketOptions upstream_options{.mark = ctx.options.upstream_mark, .source = std::nullopt};
  if (ctx.options.transparent) upstream_options.source = source.ip;  // keep the client's address
  std::error_code connect_ec = prepare_upstream(upstream, decision.upstream.ip.family(), upstream_options);
  bool timed_out = false;
  if (!connect_ec)
    connect_ec = co_await connect_with_timeout(upstream, to_endpoint(decision.upstream), ctx.options.connect_timeout,
                                               timed_out);
  if (connect_ec) {
    ProxyStats::add(timed_out ? ctx.stats.upstream_connect_timeout : ctx.stats.upstream_connect_failed);
    spdlog::warn("{} {} -> {} via {}: upstream connect failed: {} (cluster {})", to_string(direction),
                 source.to_string(), destination.to_string(), decision.upstream.to_string(), connect_ec.message(),
                 cluster_name);
    reset_connection(client);
    co_return;
  }

  // Small interactive writes should not wait for Nagle on either leg.
  client.set_option(tcp::no_delay(true), ec);
  upstream.set_option(tcp::no_delay(true), ec);

  spdlog::debug("{} {} -> {} via {} (cluster {})", to_string(direction), source.to_string(), destination.to_string(),
                decision.upstream.to_string(), cluster_name);
  const RelayResult result = co_await relay(client, upstream, RelayOptions{ctx.options.idle_timeout});
  ProxyStats::add(ctx.stats.bytes_to_upstream, result.bytes_to_upstream);
  ProxyStats::add(ctx.stats.bytes_to_downstream, result.bytes_to_downstream);
  if (result.idle_timeout) ProxyStats::add(ctx.stats.idle_timeouts);
  if (result.reset) ProxyStats::add(ctx.stats.resets_propagated);
  spdlog::debug("{} {} -> {} closed: {} B up, {} B down{}{}", to_string(direction), source.to_string(),
                destination.to_string(), result.bytes_to_upstream, result.bytes_to_downstream,
                result.idle_timeout ? ", idle timeout" : "", result.reset ? ", reset" : "");
}

}  // namespace dsproxy::proxy
