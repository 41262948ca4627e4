#pragma once
// Tunables of the HBONE transport, with ztunnel's defaults so both ends size windows alike.

#include <chrono>
#include <cstdint>

namespace dsproxy::hbone {

struct SessionOptions {
  // ztunnel's HTTP2_STREAM_WINDOW_SIZE / HTTP2_CONNECTION_WINDOW_SIZE. The connection window is
  // 4x the stream window so that a few stalled streams cannot use up the whole connection's
  // credit (see Session's receive accounting for how a stalled stream is kept from holding it).
  std::uint32_t stream_window = 4 * 1024 * 1024;
  std::uint32_t connection_window = 16 * 1024 * 1024;
  // What we advertise as SETTINGS_MAX_FRAME_SIZE and the largest DATA frame we send when the peer
  // allows it: fewer, larger frames mean fewer TLS records and callbacks per byte. ztunnel uses
  // 1 MiB; 16 KiB is the protocol's default, and what Node and Go peers advertise.
  std::uint32_t max_frame_size = 1024 * 1024;
  // SETTINGS_MAX_CONCURRENT_STREAMS a server advertises; a client never opens more than
  // min(this, what the peer advertises) on one connection (ztunnel's pool default, also Go's).
  std::uint32_t max_concurrent_streams = 100;
  // Bytes of received, not yet relayed DATA the connection buffers (over all its streams) before
  // it stops returning connection-level credit; bounds memory per connection.
  std::uint32_t connection_buffer_limit = 64 * 1024 * 1024;
  // A peer that does not complete the HTTP/2 preface/SETTINGS exchange in time is dropped; also
  // the time a connection sent GOAWAY for idleness gets to finish (a peer that does not read
  // it, or keeps refused streams half open, is cut off then).
  std::chrono::milliseconds handshake_timeout{10'000};
  // Server only: a connection with no stream open or being opened (refused streams the peer
  // has not closed yet do not count) for this long is sent GOAWAY(NO_ERROR) and closed, so a
  // peer cannot hold descriptors with sessions it does not use. Zero: never. The proxy uses
  // its relays' idle timeout (--idle-timeout-s), at least the pool's, so a conforming client
  // (ours and ztunnel's close after 5 minutes) always closes first. A client's connections
  // are closed by its pool (PoolOptions::idle_timeout).
  std::chrono::milliseconds idle_timeout{0};
};

struct PoolOptions {
  SessionOptions session;
  // ztunnel's POOL_UNUSED_RELEASE_TIMEOUT is 5 minutes; a connection with no stream for this long
  // is closed (GOAWAY, then the socket).
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(5)};
  // TCP connect + TLS handshake + HTTP/2 SETTINGS of a new pooled connection.
  std::chrono::milliseconds connect_timeout{10'000};
};

}  // namespace dsproxy::hbone
