#include "proxy/upstream_connector.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <deque>

namespace dsproxy::proxy {

namespace {

using boost::asio::awaitable;
constexpr auto as_values = boost::asio::as_tuple(boost::asio::use_awaitable);

// Lives in connect_upstream()'s frame, which waits for every attempt coroutine before it ends;
// all on one io_context thread, so plain fields.
struct Race {
  explicit Race(const boost::asio::any_io_executor& ex) : wake(ex) {}
  std::deque<tcp::socket> sockets;  // deque: stable references while attempts are added
  std::deque<std::pair<int, std::error_code>> results;
  boost::asio::steady_timer wake;
  int running = 0;
};

awaitable<void> run_attempt(Race& race, int id, net::SocketAddress address, UpstreamSocketOptions options) {
  tcp::socket& socket = race.sockets[static_cast<std::size_t>(id)];
  std::error_code ec = prepare_upstream(socket, address.ip.family(), options);
  if (!ec) {
    auto [connect_ec] = co_await socket.async_connect(to_endpoint(address), as_values);
    ec = connect_ec;
  }
  race.results.emplace_back(id, ec);
  --race.running;
  race.wake.cancel();  // the driver is parked on this timer: wake it to look at the result
}

}  // namespace

awaitable<ConnectOutcome> connect_upstream(tcp::socket& upstream, ConnectScheduler& scheduler,
                                           const UpstreamSocketOptions& socket_options,
                                           const AttemptObserver& observer) {
  const auto executor = upstream.get_executor();
  Race race(executor);
  ConnectOutcome outcome;
  std::error_code last_error;

  auto apply = [&](const std::vector<ConnectScheduler::Action>& actions) {
    for (const auto& action : actions) {
      const auto& attempts = scheduler.attempts();
      switch (action.kind) {
        case ConnectScheduler::ActionKind::start: {
          race.sockets.emplace_back(executor);
          ++race.running;
          boost::asio::co_spawn(executor,
                                run_attempt(race, action.attempt, attempts[action.attempt].address, socket_options),
                                boost::asio::detached);
          break;
        }
        case ConnectScheduler::ActionKind::abandon:
          if (observer) observer(attempts[action.attempt], false);
          [[fallthrough]];
        case ConnectScheduler::ActionKind::cancel: {
          // Closing aborts the pending connect; the attempt coroutine then reports and exits.
          boost::system::error_code ignored;
          race.sockets[static_cast<std::size_t>(action.attempt)].close(ignored);
          break;
        }
        case ConnectScheduler::ActionKind::succeed:
          outcome.winner = action.attempt;
          upstream = std::move(race.sockets[static_cast<std::size_t>(action.attempt)]);
          break;
        case ConnectScheduler::ActionKind::fail:
          outcome.error = scheduler.timed_out() || !last_error ? std::make_error_code(std::errc::timed_out) : last_error;
          break;
      }
    }
  };

  apply(scheduler.start(std::chrono::steady_clock::now()));
  while (!scheduler.finished() || race.running > 0) {
    if (race.results.empty()) {
      race.wake.expires_at(scheduler.finished() ? std::chrono::steady_clock::time_point::max()
                                                : scheduler.next_deadline());
      co_await race.wake.async_wait(as_values);
    }
    while (!race.results.empty()) {
      auto [id, ec] = race.results.front();
      race.results.pop_front();
      const bool counted = scheduler.attempts()[static_cast<std::size_t>(id)].state ==
                           ConnectScheduler::AttemptState::running;
      if (counted) {
        if (ec) last_error = ec;
        if (observer) observer(scheduler.attempts()[static_cast<std::size_t>(id)], !ec);
      }
      apply(scheduler.on_result(id, !ec, std::chrono::steady_clock::now()));
    }
    if (!scheduler.finished()) apply(scheduler.on_timer(std::chrono::steady_clock::now()));
  }
  co_return outcome;
}

}  // namespace dsproxy::proxy
