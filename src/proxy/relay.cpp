#include "proxy/relay.hpp"

#include <fcntl.h>

#include <array>
#include <memory>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "proxy/pipe_pool.hpp"

namespace dsproxy::proxy {

namespace {

using boost::asio::awaitable;
using boost::asio::use_awaitable;
constexpr auto as_values = boost::asio::as_tuple(use_awaitable);

// The copy fallback's buffer, allocated only if splice is impossible (the pipe cap is reached, no
// descriptors are left for a pipe, or a socket type splice rejects) and freed with the direction.
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

enum class Step { more, copy, eof, stop };

// One read-then-write round through a user-space buffer, for when splice cannot be used.
awaitable<Step> copy_once(RelayState& state, tcp::socket& from, tcp::socket& to, std::uint64_t& bytes,
                          std::unique_ptr<char[]>& buffer) {
  if (!buffer) buffer = std::make_unique<char[]>(kChunk);
  auto [read_ec, n] = co_await from.async_read_some(boost::asio::buffer(buffer.get(), kChunk), as_values);
  if (n > 0) {
    ++state.activity;
    auto [write_ec, written] = co_await boost::asio::async_write(to, boost::asio::buffer(buffer.get(), n), as_values);
    bytes += written;
    if (write_ec) {
      if (write_ec != boost::asio::error::operation_aborted) state.abort(to, from);
      co_return Step::stop;
    }
  }
  if (!read_ec) co_return Step::more;
  if (read_ec == boost::asio::error::eof) co_return Step::eof;
  if (read_ec != boost::asio::error::operation_aborted) state.abort(from, to);
  co_return Step::stop;
}

// Moves what `from` has readable right now into `to` through a pipe, waiting for `to` to drain
// when it pushes back. Waits for readability only after the socket said EAGAIN: asio's reactor
// is edge-triggered, so a wait started while data is already queued might never complete.
// File descriptors are re-read from the sockets after every suspension: the other direction may
// have closed one, and a cached number could by then belong to another connection.
awaitable<Step> splice_once(RelayState& state, tcp::socket& from, tcp::socket& to, std::uint64_t& bytes,
                            bool& splice_unsupported) {
  PipePool& pool = PipePool::for_this_thread();
  Pipe pipe = pool.acquire();
  if (!pipe.valid()) co_return Step::copy;  // pipes exhausted: one round through a buffer
  const ssize_t n = ::splice(from.native_handle(), nullptr, pipe.write_fd, nullptr, pool.pipe_size(),
                             SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (n <= 0) {
    const int err = errno;
    pool.release(pipe);
    if (n == 0) co_return Step::eof;
    if (err == EINTR) co_return Step::more;
    if (err == EINVAL) {
      splice_unsupported = true;
      co_return Step::more;
    }
    if (err != EAGAIN && err != EWOULDBLOCK) {
      state.abort(from, to);  // ECONNRESET and friends
      co_return Step::stop;
    }
    auto [ec] = co_await from.async_wait(tcp::socket::wait_read, as_values);
    if (!ec && from.is_open() && to.is_open()) co_return Step::more;
    co_return Step::stop;  // aborted: the other direction ended the connection
  }
  ++state.activity;
  auto pending = static_cast<std::size_t>(n);
  while (pending > 0) {
    const ssize_t m =
        ::splice(pipe.read_fd, nullptr, to.native_handle(), nullptr, pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (m > 0) {
      pending -= static_cast<std::size_t>(m);
      bytes += static_cast<std::uint64_t>(m);
      continue;
    }
    const int err = errno;
    if (m < 0 && err == EINTR) continue;
    if (m < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
      auto [ec] = co_await to.async_wait(tcp::socket::wait_write, as_values);
      if (!ec && from.is_open() && to.is_open()) continue;
      pool.release(pipe, false);  // holds undelivered bytes: never reuse it
      co_return Step::stop;
    }
    pool.release(pipe, false);
    state.abort(to, from);  // EPIPE / ECONNRESET: the receiver is gone
    co_return Step::stop;
  }
  pool.release(pipe);
  co_return Step::more;
}

awaitable<void> pump(RelayState& state, tcp::socket& from, tcp::socket& to, std::uint64_t& bytes) {
  boost::system::error_code ignored;
  bool splice_unsupported = false;
  std::unique_ptr<char[]> buffer;
  for (;;) {
    Step step = splice_unsupported ? Step::copy : co_await splice_once(state, from, to, bytes, splice_unsupported);
    if (step == Step::copy) step = co_await copy_once(state, from, to, bytes, buffer);
    if (step == Step::more) continue;
    if (step == Step::eof) {
      // Half-close: forward the FIN and keep the other direction flowing.
      to.shutdown(tcp::socket::shutdown_send, ignored);
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
  // The pumps' own splice calls must never block the worker thread: O_NONBLOCK once per socket.
  boost::system::error_code ignored;
  downstream.non_blocking(true, ignored);
  upstream.non_blocking(true, ignored);
  RelayState state{downstream, upstream, boost::asio::steady_timer(downstream.get_executor()), 0, 2, {}};
  // `&&` runs the three concurrently and waits for all of them; none of them throws for I/O
  // errors, so no branch is cancelled early by the operator itself.
  co_await (pump(state, downstream, upstream, state.result.bytes_to_upstream) &&
            pump(state, upstream, downstream, state.result.bytes_to_downstream) &&
            watchdog(state, options.idle_timeout));
  co_return state.result;
}

}  // namespace dsproxy::proxy
