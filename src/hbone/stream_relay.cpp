#include "hbone/stream_relay.hpp"

#include <sys/socket.h>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <memory>

namespace dsproxy::hbone {

namespace asio = boost::asio;
using boost::system::error_code;
using tcp = asio::ip::tcp;

namespace {

// Per direction, a tunnel starts with 64 KiB (most tunnels are short: a request, a response)
// and grows to 256 KiB once a read fills the buffer (a bulk transfer). A relayed chunk becomes
// one DATA frame and one batch of TLS records, written with one send() and read by the peer
// node with one recv(): the larger the chunk, the fewer syscalls per MB on both nodes.
constexpr std::size_t kChunk = 64 * 1024;
constexpr std::size_t kBulkChunk = 256 * 1024;

// A relay buffer, left uninitialised (new char[], not vector::resize): zeroing 2 x 64 KiB was
// more than half of a tunnelled connection's instructions on each node, and every byte is
// written before it is read.
struct ChunkBuffer {
  std::unique_ptr<char[]> data{new char[kChunk]};
  std::size_t size = kChunk;
  // After a read of n bytes, which are no longer needed (already relayed).
  void grow_if_full(std::size_t n) {
    if (n < size || size >= kBulkChunk) return;
    data.reset(new char[kBulkChunk]);
    size = kBulkChunk;
  }
};

class StreamRelay : public std::enable_shared_from_this<StreamRelay> {
 public:
  StreamRelay(tcp::socket socket, std::shared_ptr<Stream> stream, const StreamRelayOptions& options,
              asio::any_completion_handler<void(StreamRelayResult)> handler, std::shared_ptr<StreamRelayHandle> handle)
      : socket_(std::move(socket)),
        stream_(std::move(stream)),
        handler_(std::move(handler)),
        handle_(std::move(handle)),
        idle_timeout_(options.idle_timeout),
        idle_timer_(socket_.get_executor()) {
    if (handle_) {
      handle_->target_ = this;
      handle_->reset_ = &StreamRelay::revoke;
    }
  }
  // Destroyed unfinished (its io_context going away): the handle must not point here any more.
  ~StreamRelay() { release_handle(); }

  void start() {
    error_code ignored;
    socket_.set_option(tcp::no_delay(true), ignored);
    read_socket();
    read_stream();
    if (idle_timeout_.count() > 0) arm_idle();
  }

 private:
  // One timer per tunnel (a tunnel already holds two 64 KiB buffers): at each tick, a relay
  // whose byte counters have not moved since the previous tick has been idle for at least one
  // whole period. A peer that opens a stream and never sends must not hold the upstream socket
  // (and the stream's slot) for ever.
  void arm_idle() {
    idle_timer_.expires_after(idle_timeout_);
    idle_timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (ec || self->finished_) return;
      const std::uint64_t moved = self->result_.bytes_to_stream + self->result_.bytes_to_socket + self->reads_;
      if (moved == self->idle_seen_) return self->expire();
      self->idle_seen_ = moved;
      self->arm_idle();
    });
  }

  void expire() {
    result_.idle_timeout = true;
    if (!stream_->closed()) stream_->reset();
    error_code ignored;
    socket_.set_option(asio::socket_base::linger(true, 0), ignored);
    finish();
  }

  // socket -> stream
  void read_socket() {
    socket_.async_read_some(asio::buffer(up_.data.get(), up_.size), [self = shared_from_this()](error_code ec, std::size_t n) {
      if (self->finished_) return;
      ++self->reads_;
      if (ec == asio::error::eof) {
        self->stream_->shutdown_send();
        self->up_done_ = true;
        self->maybe_finish();
        return;
      }
      if (ec) return self->abort(true);
      self->stream_->async_write(asio::buffer(self->up_.data.get(), n), [self, n](error_code ec) {
        if (self->finished_) return;
        if (ec) return self->abort(false);
        self->result_.bytes_to_stream += n;
        self->up_.grow_if_full(n);
        self->read_socket();
      });
    });
  }

  // stream -> socket
  void read_stream() {
    stream_->async_read_some(asio::buffer(down_.data.get(), down_.size), [self = shared_from_this()](error_code ec, std::size_t n) {
      if (self->finished_) return;
      ++self->reads_;
      if (ec == asio::error::eof) {
        error_code ignored;
        self->socket_.shutdown(tcp::socket::shutdown_send, ignored);
        self->down_done_ = true;
        self->maybe_finish();
        return;
      }
      if (ec) return self->abort(false);
      asio::async_write(self->socket_, asio::buffer(self->down_.data.get(), n), [self](error_code ec, std::size_t n) {
        if (self->finished_) return;
        if (ec) return self->abort(true);
        self->result_.bytes_to_socket += n;
        self->down_.grow_if_full(n);
        self->read_stream();
      });
    });
  }

  // From the handle, on the relay's thread (the owner's policy walk runs there).
  static void revoke(void* self) {
    auto* r = static_cast<StreamRelay*>(self);
    if (r->finished_) return;
    r->result_.revoked = true;
    r->abort(true);  // RST_STREAM to the peer, RST to the socket
  }

  void release_handle() {
    if (handle_) *handle_ = StreamRelayHandle{};
    handle_.reset();
  }

  // A reset or error on one side: the other side is reset too.
  void abort(bool socket_side) {
    result_.reset = true;
    result_.stream_reset_by_peer = stream_->reset_by_peer();
    if (socket_side) stream_->reset();
    // RST to the pod rather than FIN, so it does not take a broken tunnel for a clean end.
    error_code ignored;
    socket_.set_option(asio::socket_base::linger(true, 0), ignored);
    if (!socket_side && !stream_->closed()) stream_->reset();
    finish();
  }

  void maybe_finish() {
    if (up_done_ && down_done_) finish();
  }

  void finish() {
    if (finished_) return;
    finished_ = true;
    release_handle();
    error_code ignored;
    idle_timer_.cancel();
    socket_.close(ignored);
    auto executor = socket_.get_executor();
    asio::post(executor, [h = std::move(handler_), r = result_]() mutable { std::move(h)(r); });
  }

  tcp::socket socket_;
  std::shared_ptr<Stream> stream_;
  asio::any_completion_handler<void(StreamRelayResult)> handler_;
  std::shared_ptr<StreamRelayHandle> handle_;
  ChunkBuffer up_, down_;
  StreamRelayResult result_;
  bool up_done_ = false, down_done_ = false, finished_ = false;
  std::chrono::milliseconds idle_timeout_;
  asio::steady_timer idle_timer_;
  std::uint64_t reads_ = 0;      // completed reads either way (an EOF is activity too)
  std::uint64_t idle_seen_ = 0;  // bytes + reads at the previous tick
};

}  // namespace

void start_stream_relay(tcp::socket socket, std::shared_ptr<Stream> stream, const StreamRelayOptions& options,
                        asio::any_completion_handler<void(StreamRelayResult)> handler,
                        std::shared_ptr<StreamRelayHandle> handle) {
  std::make_shared<StreamRelay>(std::move(socket), std::move(stream), options, std::move(handler), std::move(handle))
      ->start();
}

void start_stream_relay(tcp::socket socket, std::shared_ptr<Stream> stream,
                        asio::any_completion_handler<void(StreamRelayResult)> handler) {
  start_stream_relay(std::move(socket), std::move(stream), StreamRelayOptions{}, std::move(handler));
}

}  // namespace dsproxy::hbone
