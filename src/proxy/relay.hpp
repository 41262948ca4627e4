#pragma once
// The byte relay between a client (downstream) and its upstream.

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <chrono>
#include <cstdint>

#include "proxy/transparent_socket.hpp"

namespace dsproxy::proxy {

struct RelayOptions {
  // A connection with no byte in either direction for this long is reset on both sides.
  // Checked once per period, so it fires between 1x and 2x this value.
  std::chrono::milliseconds idle_timeout{std::chrono::hours(1)};
};

struct RelayResult {
  std::uint64_t bytes_to_upstream = 0;
  std::uint64_t bytes_to_downstream = 0;
  bool idle_timeout = false;
  bool reset = false;  // a reset or I/O error on one side was propagated to the other
};

// Copies both directions at once until both have ended. A FIN from one side becomes a
// shutdown(SHUT_WR) towards the other while the opposite direction keeps flowing (half-close);
// a reset or write error on one side resets the other. Never fails for I/O errors: they are
// values here, and a misbehaving peer only ends its own connection. Both sockets must stay alive
// until the operation completes (they live in the caller's coroutine frame); the relay touches
// them no more once it has completed.
void start_relay(tcp::socket& downstream, tcp::socket& upstream, const RelayOptions& options,
                 boost::asio::any_completion_handler<void(RelayResult)> handler);

// The asynchronous-operation form of start_relay, e.g. `co_await async_relay(a, b, o, use_awaitable)`.
// No coroutine of its own: the awaiting frame is resumed directly when the relay ends.
template <typename CompletionToken>
auto async_relay(tcp::socket& downstream, tcp::socket& upstream, const RelayOptions& options,
                 CompletionToken&& token) {
  return boost::asio::async_initiate<CompletionToken, void(RelayResult)>(
      [&downstream, &upstream, options](auto handler) {
        start_relay(downstream, upstream, options, std::move(handler));
      },
      token);
}

}  // namespace dsproxy::proxy
