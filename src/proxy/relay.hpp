#pragma once
// The byte relay between a client (downstream) and its upstream.

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <chrono>
#include <cstdint>
#include <memory>

#include "net/io/transparent_socket.hpp"

namespace dsproxy::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// Lets the owner of a connection end its relay from outside: an AuthorizationPolicy change that
// now denies the connection. Cleared by the relay when it ends, so a handle never points at a
// dead relay (or at a descriptor number reused since). Both the relay and the caller run on the
// worker's thread: no lock.
struct RelayHandle {
  // Resets both sides (SO_LINGER 0) if the relay still runs; the relay then finishes as usual.
  void reset() {
    if (reset_) reset_(target_);
  }
  bool running() const { return target_ != nullptr; }
  void* target_ = nullptr;
  void (*reset_)(void*) = nullptr;
};

struct RelayOptions {
  // A connection with no byte in either direction for this long is reset on both sides.
  // Checked once per period, so it fires between 1x and 2x this value.
  std::chrono::milliseconds idle_timeout{std::chrono::hours(1)};
  // Tests only (run --test-fault relay:N): the relay's Nth turn of moving bytes throws
  // std::bad_alloc, to show that a fault costs this one connection and nothing else. Turn 1 runs
  // inside start_relay (the client's direction; the upstream's starts with a wait); later ones in
  // callbacks. Zero: never.
  int test_fault_at_move = 0;

  std::shared_ptr<RelayHandle> handle{};  // optional
};

struct RelayResult {
  std::uint64_t bytes_to_upstream = 0;
  std::uint64_t bytes_to_downstream = 0;
  bool idle_timeout = false;
  bool reset = false;  // a reset or I/O error on one side was propagated to the other
  // One of the relay's callbacks threw (realistically std::bad_alloc): both sides were reset and
  // the relay ended as any other would, so its gauges and counters stay right.
  bool fault = false;
  bool upstream_reset = false;  // ... and that side was the upstream (else the client)

  bool revoked = false;  // ended through RelayHandle::reset
};

// Copies both directions at once until both have ended. A FIN from one side becomes a
// shutdown(SHUT_WR) towards the other while the opposite direction keeps flowing (half-close);
// a reset or write error on one side resets the other. Never fails for I/O errors: they are
// values here, and a misbehaving peer only ends its own connection. An exception thrown inside
// one of its callbacks is contained the same way: both sides are reset (never a clean FIN, which
// would pass a truncated stream off as complete) and the handler gets `fault`.
//
// The relay takes both sockets: from here on it owns the connection, closes both sockets when it
// ends and then posts `handler` with the result. No coroutine frame stays alive while a proxied
// connection waits for bytes; what an idle connection costs is this object and its two pending
// waits. If the io_context is destroyed first, its relays are destroyed with it (sockets closed,
// handler destroyed without being called). Throws only if the relay cannot be made at all
// (std::bad_alloc), after resetting both sockets.
void start_relay(tcp::socket downstream, tcp::socket upstream, const RelayOptions& options,
                 boost::asio::any_completion_handler<void(RelayResult)> handler);

// The asynchronous-operation form of start_relay, e.g. `co_await async_relay(std::move(a),
// std::move(b), o, use_awaitable)`.
template <typename CompletionToken>
auto async_relay(tcp::socket downstream, tcp::socket upstream, const RelayOptions& options, CompletionToken&& token) {
  return boost::asio::async_initiate<CompletionToken, void(RelayResult)>(
      [options](auto handler, tcp::socket down, tcp::socket up) {
        start_relay(std::move(down), std::move(up), options, std::move(handler));
      },
      token, std::move(downstream), std::move(upstream));
}

}  // namespace dsproxy::proxy
