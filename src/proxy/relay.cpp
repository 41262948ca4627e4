#include "proxy/relay.hpp"

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

namespace dsproxy::proxy {

namespace {

using boost::asio::awaitable;
using boost::asio::use_awaitable;
constexpr auto as_values = boost::asio::as_tuple(use_awaitable);

// 16 KiB per direction lives in each pump's coroutine frame: one allocation per direction per
// connection, freed when the direction ends.
constexpr std::size_t kChunk = 16 * 1024;

// Shared by the two pumps and the idle watchdog. Lives in relay()'s frame, which outlives all
// three because relay() awaits them; everything runs on one io_context thread, so plain fields.
struct RelayState {
  tcp::socket& downstream;
  tcp::socket& upstream;
  boost::asio::steady_timer idle_timer;
  std::uint64_t activity = 0;  // bumped per successful read; the watchdog compares snapshots
  int running_pumps = 2;
  RelayResult result;

  // Ends both directions abruptly: reset `victim` (the side that still looks healthy) and close
  // `culprit` (already broken). Pending operations on both complete with operation_aborted.
  void abort(tcp::socket& culprit, tcp::socket& victim) {
    result.reset = true;
    reset_connection(victim);
    boost::system::error_code ignored;
    culprit.close(ignored);
  }
};

awaitable<void> pump(RelayState& state, tcp::socket& from, tcp::socket& to, std::uint64_t& bytes) {
  std::array<char, kChunk> buffer;
  for (;;) {
    auto [read_ec, n] = co_await from.async_read_some(boost::asio::buffer(buffer), as_values);
    if (n > 0) {
      ++state.activity;
      auto [write_ec, written] = co_await boost::asio::async_write(to, boost::asio::buffer(buffer.data(), n), as_values);
      bytes += written;
      if (write_ec) {
        if (write_ec != boost::asio::error::operation_aborted) state.abort(to, from);
        break;
      }
    }
    if (!read_ec) continue;
    if (read_ec == boost::asio::error::eof) {
      // Half-close: forward the FIN and keep the other direction flowing.
      boost::system::error_code ignored;
      to.shutdown(tcp::socket::shutdown_send, ignored);
    } else if (read_ec != boost::asio::error::operation_aborted) {
      state.abort(from, to);
    }
    break;
  }
  if (--state.running_pumps == 0) state.idle_timer.cancel();
}

awaitable<void> watchdog(RelayState& state, std::chrono::milliseconds idle_timeout) {
  std::uint64_t seen = state.activity;
  // The check before each wait matters: if both pumps ended before this coroutine first ran,
  // their cancel() found no pending wait and we must not start one.
  while (state.running_pumps > 0) {
    state.idle_timer.expires_after(idle_timeout);
    auto [ec] = co_await state.idle_timer.async_wait(as_values);
    if (ec || state.running_pumps == 0) break;
    if (state.activity == seen) {
      state.result.idle_timeout = true;
      reset_connection(state.downstream);
      reset_connection(state.upstream);
      break;
    }
    seen = state.activity;
  }
}

}  // namespace

awaitable<RelayResult> relay(tcp::socket& downstream, tcp::socket& upstream, const RelayOptions& options) {
  using namespace boost::asio::experimental::awaitable_operators;
  RelayState state{downstream, upstream, boost::asio::steady_timer(downstream.get_executor()), 0, 2, {}};
  // `&&` runs the three concurrently and waits for all of them; none of them throws for I/O
  // errors, so no branch is cancelled early by the operator itself.
  co_await (pump(state, downstream, upstream, state.result.bytes_to_upstream) &&
            pump(state, upstream, downstream, state.result.bytes_to_downstream) &&
            watchdog(state, options.idle_timeout));
  co_return state.result;
}

}  // namespace dsproxy::proxy
