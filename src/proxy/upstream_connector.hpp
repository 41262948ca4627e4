#pragma once
// Carries out a ConnectScheduler's plan with real sockets: connect() on each attempt's socket (a
// handshake the kernel finished inside the call is taken at once; one still in flight is awaited
// by a small coroutine), a single timer for the scheduler's deadlines, and cancellation of the
// losers.

#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <functional>
#include <system_error>

#include "proxy/connect_scheduler.hpp"
#include "net/io/transparent_socket.hpp"

namespace dsproxy::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// How an attempt ended, for the endpoint's record. `local_error`: the attempt failed on this
// node's own resources before or while sending its SYN (see is_local_error); it says nothing
// about the endpoint and must not count against it.
enum class AttemptResult : std::uint8_t { connected, failed, local_error };

// errno values that are the proxy's own trouble, whichever syscall returned them: out of
// descriptors (EMFILE, ENFILE), socket buffers or memory (ENOBUFS, ENOMEM), or local ports for
// the source address (EADDRNOTAVAIL, EADDRINUSE).
bool is_local_error(const std::error_code& ec);
// The subset that every further attempt would meet too (EMFILE, ENFILE, ENOBUFS, ENOMEM): with
// no other attempt in flight, the connect gives up at once instead of trying the other family
// and more backends for nothing.
bool is_exhaustion_error(const std::error_code& ec);

struct ConnectOutcome {
  std::error_code error;     // of the last failed attempt, or timed_out; empty on success
  int winner = -1;           // index into scheduler.attempts()
  bool local_error = false;  // `error` is the node's own (AttemptResult::local_error)
};

// Called once per attempt that ended on its own merits: connected, failed (or abandoned for
// taking too long), or failed locally. Cancelled losers are not reported: the race, not the
// endpoint, decided them.
using AttemptObserver = std::function<void(const ConnectScheduler::Attempt&, AttemptResult result)>;

// On success the winning connection is moved into `upstream`. Every attempt socket is closed and
// every attempt coroutine has finished before this returns, so nothing outlives the call.
boost::asio::awaitable<ConnectOutcome> connect_upstream(tcp::socket& upstream, ConnectScheduler& scheduler,
                                                        const net::UpstreamSocketOptions& socket_options,
                                                        const AttemptObserver& observer);

}  // namespace dsproxy::proxy
