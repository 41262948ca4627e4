#include "hbone/stream.hpp"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cstring>

#include "hbone/session.hpp"

namespace dsproxy::hbone {

namespace asio = boost::asio;
using boost::system::error_code;

Stream::Stream(std::shared_ptr<Session> session, std::int32_t id) : session_(std::move(session)), id_(id) {}

Stream::~Stream() {
  if (buffered() == 0 && connection_debt_ == 0) return;
  drop_buffered();
  // The credit just returned goes out with the session's next write; make sure there is one.
  // Posted: a destructor may run inside one of nghttp2's callbacks, or while the io_context is
  // torn down (then the handler is destroyed unrun, and the session with it).
  if (!session_->closed())
    asio::post(session_->get_executor(), [weak = std::weak_ptr<Session>(session_)] {
      if (auto session = weak.lock()) session->do_write();
    });
}

void Stream::drop_buffered() {
  session_->stream_release(*this);
  recv_.clear();
  recv_offset_ = 0;
}

void Stream::discard_incoming() {
  discard_incoming_ = true;
  // DATA that arrived before the refusal (the peer need not wait for the answer) is not kept
  // either: nobody reads a refused stream.
  if (buffered() > 0 || connection_debt_ > 0) {
    drop_buffered();
    session_->do_write();
  }
}

void Stream::async_read_some(asio::mutable_buffer buffer, ReadHandler handler) {
  read_buffer_ = buffer;
  ReadHandler(std::move(handler)).swap(read_handler_);
  complete_read();
}

void Stream::complete_read() {
  if (!read_handler_) return;
  error_code ec;
  std::size_t n = 0;
  if (buffered() > 0 && !(closed_ && reset_code_)) {
    n = std::min(buffered(), read_buffer_.size());
    std::memcpy(read_buffer_.data(), recv_.data() + recv_offset_, n);
    recv_offset_ += n;
    if (recv_offset_ == recv_.size()) {
      recv_.clear();
      recv_offset_ = 0;
    } else if (recv_offset_ > 256 * 1024 && recv_offset_ * 2 > recv_.size()) {
      recv_.erase(recv_.begin(), recv_.begin() + static_cast<std::ptrdiff_t>(recv_offset_));
      recv_offset_ = 0;
    }
    // The bytes leave the tunnel's buffer for the relay's socket: only now does the peer get
    // their window back (see the class comment).
    session_->stream_consumed(*this, n);
  } else if (closed_ && reset_code_) {
    ec = asio::error::connection_reset;
  } else if (remote_ended_) {
    ec = asio::error::eof;
  } else if (closed_) {
    ec = asio::error::connection_reset;
  } else {
    return;  // wait for DATA
  }
  asio::post(session_->get_executor(),
             [h = std::move(read_handler_), ec, n]() mutable { std::move(h)(ec, n); });
  read_handler_ = nullptr;
}

void Stream::async_write(asio::const_buffer buffer, WriteHandler handler) {
  if (closed_ || send_shutdown_) {
    asio::post(session_->get_executor(), [h = std::move(handler)]() mutable {
      std::move(h)(asio::error::connection_reset);
    });
    return;
  }
  if (buffer.size() == 0) {
    asio::post(session_->get_executor(), [h = std::move(handler)]() mutable { std::move(h)(error_code{}); });
    return;
  }
  write_buffer_ = buffer;
  WriteHandler(std::move(handler)).swap(write_handler_);
  session_->stream_resume(*this);
}

void Stream::shutdown_send() {
  if (closed_ || send_shutdown_) return;
  send_shutdown_ = true;
  session_->stream_resume(*this);
}

void Stream::reset(std::uint32_t h2_error_code) {
  if (closed_) {
    // Closed cleanly already, and now abandoned (a relay whose socket failed): whatever it
    // still buffers will never be read.
    if (buffered() > 0 || connection_debt_ > 0) {
      drop_buffered();
      session_->do_write();
    }
    return;
  }
  local_reset_ = true;
  session_->stream_reset(*this, h2_error_code);
  // Pending operations end now; on_closed follows once the RST_STREAM is on its way.
  on_closed(h2_error_code ? h2_error_code : std::uint32_t{NGHTTP2_CANCEL}, false);
}

void Stream::on_data(const std::uint8_t* data, std::size_t size) {
  // A reader already waiting on an empty buffer gets the bytes straight from nghttp2's chunk (one
  // copy instead of two on a bulk stream); only what does not fit is buffered.
  if (read_handler_ && buffered() == 0 && read_buffer_.size() > 0 && !closed_) {
    const auto n = std::min(size, read_buffer_.size());
    std::memcpy(read_buffer_.data(), data, n);
    recv_.insert(recv_.end(), data + n, data + size);
    session_->stream_consumed(*this, n);
    asio::post(session_->get_executor(), [h = std::move(read_handler_), n]() mutable { std::move(h)(error_code{}, n); });
    read_handler_ = nullptr;
    return;
  }
  recv_.insert(recv_.end(), data, data + size);
  complete_read();
}

void Stream::on_remote_end() {
  remote_ended_ = true;
  complete_read();
}

void Stream::on_closed(std::uint32_t h2_error_code, bool by_peer) {
  if (closed_) return;
  closed_ = true;
  if (h2_error_code) {
    reset_code_ = h2_error_code;
    reset_by_peer_ = by_peer;
    // Received bytes are dropped with the reset.
    drop_buffered();
  } else {
    // A clean close: both sides sent END_STREAM; what is buffered is still read out, by a
    // reader that may never come (a relay whose socket failed, a handler that dropped the
    // stream): the destructor gives back whatever is left, so a peer cannot leak the
    // session's buffer budget stream by stream. A refused stream's bytes are not read at all.
    remote_ended_ = true;
    if (discard_incoming_) drop_buffered();
  }
  complete_read();
  if (write_handler_) {
    asio::post(session_->get_executor(), [h = std::move(write_handler_)]() mutable {
      std::move(h)(asio::error::connection_reset);
    });
    write_handler_ = nullptr;
  }
}

long Stream::read_for_send(std::size_t length, std::uint32_t* data_flags) {
  if (write_buffer_.size() > 0) {
    // NO_COPY: nghttp2 does not copy the payload into its own frame buffer; the session appends
    // it from write_buffer_ straight to its output batch (take_for_send), one copy instead of two.
    *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    return static_cast<long>(std::min(length, write_buffer_.size()));
  }
  if (send_shutdown_) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return 0;
  }
  send_deferred_ = true;
  return NGHTTP2_ERR_DEFERRED;
}

void Stream::take_for_send(std::vector<std::uint8_t>& out, std::size_t length) {
  const auto n = std::min(length, write_buffer_.size());
  const auto* data = static_cast<const std::uint8_t*>(write_buffer_.data());
  out.insert(out.end(), data, data + n);
  write_buffer_ += n;
  if (write_buffer_.size() == 0 && write_handler_) {
    asio::post(session_->get_executor(), [h = std::move(write_handler_)]() mutable { std::move(h)(error_code{}); });
    write_handler_ = nullptr;
  }
}

}  // namespace dsproxy::hbone
