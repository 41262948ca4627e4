#pragma once
// One HBONE tunnel: an HTTP/2 CONNECT stream seen as a byte stream, for the relay.

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/system/error_code.hpp>
#include <cstdint>
#include <memory>
#include <vector>

namespace dsproxy::hbone {

class Session;

// Lives on its session's io_context thread; every method must be called there, and every
// handler is posted (never called inline). At most one read and one write may be pending.
//
// Flow control: bytes received on the stream are credited back to the peer (WINDOW_UPDATE) only
// as async_read_some hands them out, so a reader that stops reading (its socket does not drain)
// stops its own stream at the peer after one window, and no other stream of the connection.
// (Handlers are stored with swap, never move-assigned: Boost 1.81's any_completion_handler move
// assignment wraps the source in a new handler, recursively, until the stack overflows.)
class Stream : public std::enable_shared_from_this<Stream> {
 public:
  using ReadHandler = boost::asio::any_completion_handler<void(boost::system::error_code, std::size_t)>;
  using WriteHandler = boost::asio::any_completion_handler<void(boost::system::error_code)>;

  Stream(std::shared_ptr<Session> session, std::int32_t id);
  // Bytes still buffered (a stream closed cleanly that nobody read to the end) leave the
  // session's accounting here at the latest.
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Completes with bytes, or asio::error::eof once the peer sent END_STREAM and everything before
  // it was read, or asio::error::connection_reset when the stream was reset (RST_STREAM either
  // way) or its connection ended.
  void async_read_some(boost::asio::mutable_buffer buffer, ReadHandler handler);
  // Sends all of `buffer` (which must stay valid until the handler runs) as DATA, as fast as the
  // peer's stream and connection windows allow. Completes once every byte is framed.
  void async_write(boost::asio::const_buffer buffer, WriteHandler handler);
  // Half-close: END_STREAM after what was written; reading goes on.
  void shutdown_send();
  // RST_STREAM with `error_code` (CANCEL by default); pending operations complete with
  // connection_reset. Idempotent. On a stream that already closed cleanly: drops what it still
  // buffers (the caller gives up reading it).
  void reset(std::uint32_t h2_error_code = 0x8);

  std::int32_t id() const { return id_; }
  bool closed() const { return closed_; }
  // A refused request's stream: whatever DATA still arrives is dropped, never buffered, and what
  // was buffered before the answer is dropped now.
  void discard_incoming();
  bool discarding() const { return discard_incoming_; }
  // The HTTP/2 error code the stream was reset with (0 when it closed cleanly or is open).
  std::uint32_t reset_code() const { return reset_code_; }
  // Whether the peer reset the stream (as opposed to us or a closing connection).
  bool reset_by_peer() const { return reset_by_peer_; }

 private:
  friend class Session;

  // Called by the session from nghttp2's callbacks (never re-entering nghttp2 from them).
  void on_data(const std::uint8_t* data, std::size_t size);
  void on_remote_end();
  void on_closed(std::uint32_t h2_error_code, bool by_peer);
  // The data provider: how many pending write bytes (up to `length`) the next DATA frame carries
  // (flagged NO_COPY), or EOF / deferred.
  long read_for_send(std::size_t length, std::uint32_t* data_flags);
  // nghttp2 sends that frame now: its `length` payload bytes are appended to `out`.
  void take_for_send(std::vector<std::uint8_t>& out, std::size_t length);
  void complete_read();
  // Drops the received bytes nobody will read, giving their share of the session's buffer and
  // connection credit back.
  void drop_buffered();
  std::size_t buffered() const { return recv_.size() - recv_offset_; }

  std::shared_ptr<Session> session_;
  std::int32_t id_;
  std::vector<std::uint8_t> recv_;
  std::size_t recv_offset_ = 0;
  // Received bytes whose connection-level credit was held back (the connection was over its
  // buffer limit); returned when they are read or dropped.
  std::size_t connection_debt_ = 0;
  bool remote_ended_ = false;
  bool closed_ = false;
  bool discard_incoming_ = false;
  bool reset_by_peer_ = false;
  bool local_reset_ = false;
  std::uint32_t reset_code_ = 0;

  boost::asio::mutable_buffer read_buffer_;
  ReadHandler read_handler_;

  boost::asio::const_buffer write_buffer_;
  WriteHandler write_handler_;
  bool send_shutdown_ = false;
  bool send_deferred_ = false;  // nghttp2 holds the stream's data provider as deferred
  bool send_attached_ = false;  // a data provider was submitted (response 200 / request)
};

}  // namespace dsproxy::hbone
