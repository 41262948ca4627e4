#include "proxy/upstream_connector.hpp"

#include <sys/socket.h>

#include <algorithm>
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
  struct Result {
    int id;
    std::error_code error;
    bool local;  // AttemptResult::local_error
  };
  std::deque<Result> results;
  boost::asio::steady_timer wake;
  int running = 0;
};

std::error_code pending_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  return {err, std::generic_category()};
}

// connect() again on a socket whose non-blocking connect() is under way: what it says of the
// handshake (see start_attempt). EISCONN, which Linux gives once the first success has been
// reported, is a success too.
std::error_code confirm_connect(int fd, const tcp::endpoint& endpoint) {
  for (;;) {
    if (::connect(fd, endpoint.data(), static_cast<socklen_t>(endpoint.size())) == 0) return {};
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EISCONN) return {};
    return {err, std::generic_category()};
  }
}

// For an attempt whose handshake did not finish inside connect(): waits until the socket is
// writable (connected or failed), or closed by a cancel.
awaitable<void> await_attempt(Race& race, int id) {
  tcp::socket& socket = race.sockets[static_cast<std::size_t>(id)];
  auto [wait_ec] = co_await socket.async_wait(tcp::socket::wait_write, as_values);
  std::error_code ec = wait_ec;
  if (!ec) ec = pending_error(socket.native_handle());
  race.results.push_back({id, ec, is_local_error(ec)});
  --race.running;
  race.wake.cancel();  // the driver is parked on this timer: wake it to look at the result
}

// Opens the attempt's socket and calls connect() itself instead of asio's async_connect, which
// always goes through the reactor. Towards a local destination (loopback, or a pod behind a
// veth on this node) the kernel runs the whole handshake in softirq before connect() returns;
// a second connect() sees that and the result is known at once: no epoll round trip, no timer
// armed, no coroutine. Only a handshake still in flight is left to await_attempt.
//
// Whatever fails before connect() (socket, options, the source bind) is the node's own trouble:
// no SYN has left, so the endpoint cannot have had a part in it.
void start_attempt(Race& race, int id, const net::SocketAddress& address, const net::UpstreamSocketOptions& options,
                   const boost::asio::any_io_executor& executor) {
  tcp::socket& socket = race.sockets[static_cast<std::size_t>(id)];
  std::error_code ec = net::prepare_upstream(socket, address.ip.family(), options);
  if (!ec) {
    boost::system::error_code bec;
    socket.non_blocking(true, bec);  // the relay relies on it too
    ec = bec;
  }
  if (ec) {
    race.results.push_back({id, ec, true});
    return;
  }
  const tcp::endpoint endpoint = net::to_endpoint(address);
  const int fd = socket.native_handle();
  if (::connect(fd, endpoint.data(), static_cast<socklen_t>(endpoint.size())) != 0) {
    const int err = errno;
    if (err != EINPROGRESS && err != EINTR) {
      ec = {err, std::generic_category()};
    } else {
      // A non-blocking connect() returns EINPROGRESS once the SYN is out, even when the
      // SYN-ACK was processed before the call returned (it waits in the socket's backlog, which
      // the kernel drains as connect() releases the socket). A second connect() reports the
      // state in one system call, where poll(0) + getsockopt(SO_ERROR) took two: 0 (or EISCONN)
      // connected, EALREADY/EINPROGRESS still in flight, anything else the handshake's error
      // (which it also clears, as SO_ERROR would).
      ec = confirm_connect(fd, endpoint);
      if (ec == std::errc::operation_in_progress || ec == std::errc::connection_already_in_progress) {
        ++race.running;
        boost::asio::co_spawn(executor, await_attempt(race, id), boost::asio::detached);
        return;
      }
    }
  }
  race.results.push_back({id, ec, is_local_error(ec)});
}

}  // namespace

bool is_exhaustion_error(const std::error_code& ec) {
  if (ec.category() != std::generic_category() && ec.category() != std::system_category()) return false;
  const int e = ec.value();
  return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

bool is_local_error(const std::error_code& ec) {
  if (ec.category() != std::generic_category() && ec.category() != std::system_category()) return false;
  switch (ec.value()) {
    case EMFILE:
    case ENFILE:
    case ENOBUFS:
    case ENOMEM:
    // From connect(): no free local port for this source address and destination
    // (IP_BIND_ADDRESS_NO_PORT defers the choice to connect()).
    case EADDRNOTAVAIL:
    case EADDRINUSE:
      return true;
    default:
      return false;
  }
}

awaitable<ConnectOutcome> connect_upstream(tcp::socket& upstream, ConnectScheduler& scheduler,
                                           const net::UpstreamSocketOptions& socket_options,
                                           const AttemptObserver& observer) {
  const auto executor = upstream.get_executor();
  Race race(executor);
  ConnectOutcome outcome;
  std::error_code last_error;
  bool last_error_local = false;

  auto apply = [&](const std::vector<ConnectScheduler::Action>& actions) {
    for (const auto& action : actions) {
      const auto& attempts = scheduler.attempts();
      switch (action.kind) {
        case ConnectScheduler::ActionKind::start: {
          race.sockets.emplace_back(executor);
          start_attempt(race, action.attempt, attempts[action.attempt].address, socket_options, executor);
          break;
        }
        case ConnectScheduler::ActionKind::abandon:
          if (observer) observer(attempts[action.attempt], AttemptResult::failed);
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
          if (scheduler.timed_out() || !last_error) {
            outcome.error = std::make_error_code(std::errc::timed_out);
          } else {
            outcome.error = last_error;
            outcome.local_error = last_error_local;
          }
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
      const auto [id, ec, local] = race.results.front();
      race.results.pop_front();
      const bool counted = scheduler.attempts()[static_cast<std::size_t>(id)].state ==
                           ConnectScheduler::AttemptState::running;
      if (counted) {
        if (ec) {
          last_error = ec;
          last_error_local = local;
        }
        const auto result = !ec ? AttemptResult::connected : local ? AttemptResult::local_error : AttemptResult::failed;
        if (observer) observer(scheduler.attempts()[static_cast<std::size_t>(id)], result);
      }
      // `counted` means this attempt is still running; anything else running is in flight and
      // may yet connect, so it is left to finish.
      const auto running = std::count_if(scheduler.attempts().begin(), scheduler.attempts().end(), [](const auto& a) {
        return a.state == ConnectScheduler::AttemptState::running;
      });
      const bool others_running = running > 1;
      if (counted && local && is_exhaustion_error(ec) && !others_running)
        apply(scheduler.give_up(id));
      else
        apply(scheduler.on_result(id, !ec, std::chrono::steady_clock::now()));
    }
    if (!scheduler.finished()) apply(scheduler.on_timer(std::chrono::steady_clock::now()));
  }
  co_return outcome;
}

}  // namespace dsproxy::proxy
