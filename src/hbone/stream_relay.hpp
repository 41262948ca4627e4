#pragma once
// The byte relay between a pod's TCP socket and an HBONE stream (both ends of the tunnel use it).

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <memory>

#include "hbone/stream.hpp"

namespace dsproxy::hbone {

struct StreamRelayResult {
  std::uint64_t bytes_to_stream = 0;  // socket -> tunnel
  std::uint64_t bytes_to_socket = 0;  // tunnel -> socket
  bool reset = false;                 // a reset or error on one side was propagated to the other
  bool stream_reset_by_peer = false;
  bool revoked = false;  // ended through StreamRelayHandle::reset (a policy change)
  bool idle_timeout = false;  // no byte either way for StreamRelayOptions::idle_timeout: both reset
};

// Lets the relay's owner end it from outside (an AuthorizationPolicy change): reset() sends
// RST_STREAM(CANCEL) to the peer and RST (SO_LINGER 0) to the socket, and the relay finishes as on
// any reset, with `revoked` set. running() turns false once the relay has finished (or was
// destroyed): a reset after that is a no-op, never a touch of a closed descriptor.
struct StreamRelayHandle {
  void reset() {
    if (reset_) reset_(target_);
  }
  bool running() const { return target_ != nullptr; }
  void* target_ = nullptr;
  void (*reset_)(void*) = nullptr;
};

struct StreamRelayOptions {
  // A tunnel with no byte in either direction for this long is reset on both sides (RST_STREAM
  // CANCEL and a TCP reset), as a plaintext relay is (the proxy passes --idle-timeout-s).
  // Checked once per period, so it fires between 1x and 2x this value. Zero: never.
  std::chrono::milliseconds idle_timeout{0};
};

// Copies both ways until both have ended. FIN from the socket becomes END_STREAM and END_STREAM
// becomes shutdown(SHUT_WR) while the other direction flows on; a reset or error on the socket
// becomes RST_STREAM(CANCEL), and RST_STREAM (or the connection's end) resets the socket (RST,
// SO_LINGER 0). One read is in flight per direction, and the tunnel's receive window is
// returned only as the socket takes the bytes (Stream's flow control), so a socket that does not
// drain holds back its own stream only.
//
// Takes the socket and the stream; closes the socket when done and then posts `handler`.
void start_stream_relay(boost::asio::ip::tcp::socket socket, std::shared_ptr<Stream> stream,
                        const StreamRelayOptions& options,
                        boost::asio::any_completion_handler<void(StreamRelayResult)> handler,
                        std::shared_ptr<StreamRelayHandle> handle = nullptr);
// Without an idle timeout (tests).
void start_stream_relay(boost::asio::ip::tcp::socket socket, std::shared_ptr<Stream> stream,
                        boost::asio::any_completion_handler<void(StreamRelayResult)> handler);

}  // namespace dsproxy::hbone
