#include "daemon/handoff.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <istream>
#include <thread>

namespace dsproxy::daemon {

namespace asio = boost::asio;
using local = asio::local::stream_protocol;

namespace {

// The kernel's word for who is at the other end (SO_PEERCRED: for an accepted socket, the
// connecting process at connect(); for a connected one, the listening process at listen()).
std::optional<ucred> peer_of(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return std::nullopt;
  return cred;
}
bool same_user(int fd) {
  const auto cred = peer_of(fd);
  return cred && cred->uid == ::geteuid();
}
bool same_user(local::socket& socket) { return same_user(socket.native_handle()); }

}  // namespace

namespace {

// sockaddr_un for an abstract name: sun_path starts with NUL and the length counts only the
// bytes used (no terminator), as the kernel compares abstract names byte for byte.
socklen_t abstract_address(const std::string& address, sockaddr_un& sa) {
  std::memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  const std::size_t n = std::min(address.size(), sizeof sa.sun_path);
  std::memcpy(sa.sun_path, address.data(), n);
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n);
}

std::string line_of(asio::streambuf& buffer) {
  std::istream in(&buffer);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace

Handoff::Handoff(asio::io_context& io, std::string name, Callbacks callbacks)
    : io_(io), address_(std::string(1, '\0') + std::move(name)), callbacks_(std::move(callbacks)), timer_(io) {}

Handoff::~Handoff() { close(); }

bool Handoff::bind_name() {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un sa{};
  const socklen_t len = abstract_address(address_, sa);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0 || ::listen(fd, 4) != 0) {
    ::close(fd);
    return false;
  }
  acceptor_.emplace(io_, local(), fd);
  role_ = Role::owner;
  accept_next();
  return true;
}

Handoff::Role Handoff::acquire() {
  const std::string pid = std::to_string(::getpid());
  // Bounded: an owner that is between closing the name and exiting, or a name held by a
  // process that does not answer, must not stop the start.
  for (int attempt = 0; attempt < 100; ++attempt) {
    if (bind_name()) {
      spdlog::info("handoff: owner of the node's capture rules (no other dsproxy in this network namespace)");
      return role_;
    }
    // Non-blocking: connect(2) to a unix listener whose backlog is full blocks without a time
    // limit, and a holder of the name (anyone in the network namespace) could keep it full.
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) break;
    sockaddr_un sa{};
    const socklen_t len = abstract_address(address_, sa);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), len) == 0) {
      if (!same_user(fd)) {
        // Anyone in the network namespace can bind an abstract name first. A holder of another
        // user is no dsproxy of ours: it learns nothing from us and gets no say over the rules
        // (we would otherwise wait for its "released", and at exit leave the rules to it).
        const auto cred = peer_of(fd);
        spdlog::error("handoff: the handoff name is held by a process of another user (uid {}, pid {}); not "
                      "talking to it, acting as owner of the capture rules",
                      cred ? static_cast<long>(cred->uid) : -1L, cred ? static_cast<long>(cred->pid) : -1L);
        ::close(fd);
        foreign_holder_ = true;
        role_ = Role::owner;
        return role_;
      }
      const std::string hello = "hello " + pid + "\n";
      if (::send(fd, hello.data(), hello.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(hello.size())) {
        owner_.emplace(io_, local(), fd);
        role_ = Role::successor;
        spdlog::info("handoff: another dsproxy owns the node's capture rules; taking over once serving");
        return role_;
      }
    }
    ::close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  spdlog::warn("handoff: could neither claim nor reach the owner of the capture rules; acting as owner");
  role_ = Role::owner;
  return role_;
}

void Handoff::accept_next() {
  if (!acceptor_ || !acceptor_->is_open()) return;
  acceptor_->async_accept([this](boost::system::error_code ec, local::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_ || !acceptor_->is_open()) return;
    if (!ec && !same_user(socket)) {
      // An abstract socket has no permissions: anyone in the network namespace (a hostNetwork
      // pod) can connect. Only a process of our own user may ask for the rules.
      spdlog::warn("handoff: refused a connection from a process of another user");
      boost::system::error_code ignored;
      socket.close(ignored);
    } else if (!ec) {
      if (successor_) {
        // One successor at a time; another one retries (it sees EOF and binds or reconnects later).
        boost::system::error_code ignored;
        socket.close(ignored);
      } else {
        successor_ = std::make_shared<local::socket>(std::move(socket));
        read_from_successor(successor_);
      }
    }
    accept_next();
  });
}

void Handoff::read_from_successor(std::shared_ptr<local::socket> peer, std::shared_ptr<asio::streambuf> buffer) {
  // One buffer per peer for its whole life: bytes past the first newline stay for the next read.
  if (!buffer) buffer = std::make_shared<asio::streambuf>();
  asio::async_read_until(*peer, *buffer, '\n', [this, peer, buffer](boost::system::error_code ec, std::size_t) {
    if (peer != successor_) return;  // closed meanwhile
    if (ec) {
      if (!superseded_) {
        spdlog::info("handoff: the successor went away before taking over; carrying on");
        if (callbacks_.successor_pending) callbacks_.successor_pending(false);
      }
      successor_.reset();
      return;
    }
    const std::string line = line_of(*buffer);
    if (line.rfind("hello ", 0) == 0) {
      spdlog::info("handoff: successor (pid {}) is starting", line.substr(6));
      if (callbacks_.successor_pending) callbacks_.successor_pending(true);
      auto reply = std::make_shared<std::string>("hello " + std::to_string(::getpid()) + "\n");
      asio::async_write(*peer, asio::buffer(*reply), [reply](boost::system::error_code, std::size_t) {});
      read_from_successor(peer, buffer);
      return;
    }
    if (line == "takeover") {
      spdlog::info("handoff: the successor is serving and takes over the capture rules");
      auto released = [this, peer] {
        // The name first: the successor binds it as soon as it reads the answer.
        if (acceptor_) {
          boost::system::error_code ignored;
          acceptor_->close(ignored);
          acceptor_.reset();
        }
        superseded_ = true;
        auto reply = std::make_shared<std::string>("released\n");
        asio::async_write(*peer, asio::buffer(*reply), [this, peer, reply](boost::system::error_code, std::size_t) {
          boost::system::error_code ignored;
          peer->close(ignored);
          if (successor_ == peer) successor_.reset();
        });
        spdlog::info("handoff: superseded; the capture rules belong to the successor now");
      };
      if (callbacks_.takeover_requested) callbacks_.takeover_requested(std::move(released));
      else released();
      return;
    }
    read_from_successor(peer, buffer);  // unknown line: ignored
  });
}

void Handoff::take_over(std::chrono::milliseconds timeout, std::function<void(bool)> done) {
  take_over_done_ = std::move(done);
  if (role_ != Role::successor || !owner_) return finish_take_over(false);
  static const std::string request = "takeover\n";
  boost::system::error_code ec;
  asio::write(*owner_, asio::buffer(request), ec);
  if (ec) return finish_take_over(false);
  timer_.expires_after(timeout);
  timer_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    spdlog::warn("handoff: the owner did not release the capture rules in time; taking them anyway");
    finish_take_over(false);
  });
  // Read until "released" (skipping the owner's "hello"), EOF (the owner is gone) or an error.
  // The loop holds itself only through its pending read: capturing a strong pointer to itself
  // would be a cycle that outlives the handoff (LeakSanitizer reports it).
  auto read = std::make_shared<std::function<void()>>();
  *read = [this, weak = std::weak_ptr<std::function<void()>>(read)] {
    auto self = weak.lock();
    if (!self || !owner_) return;
    asio::async_read_until(*owner_, owner_buffer_, '\n', [this, self](boost::system::error_code ec, std::size_t) {
      if (!take_over_done_) return;  // timed out already
      if (ec) return finish_take_over(false);
      if (line_of(owner_buffer_) == "released") return finish_take_over(true);
      (*self)();
    });
  };
  (*read)();
}

void Handoff::finish_take_over(bool released) {
  if (!take_over_done_) return;
  timer_.cancel();
  if (owner_) {
    boost::system::error_code ignored;
    owner_->close(ignored);
    owner_.reset();
  }
  // The owner closed the name before answering; an owner that died released it with its life.
  // Still bounded: a hung owner that holds it keeps it (and we serve without being asked by
  // the next successor, which then finds no owner and takes the rules anyway).
  bool bound = false;
  for (int attempt = 0; attempt < 50 && !(bound = bind_name()); ++attempt)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (!bound) spdlog::warn("handoff: could not claim the handoff name; a later successor will not find us");
  role_ = Role::owner;
  spdlog::info("handoff: {} the capture rules", released ? "took over" : "taking over (without an answer)");
  auto done = std::move(take_over_done_);
  take_over_done_ = nullptr;
  done(released);
}

bool Handoff::claim_if_unowned() {
  if (acceptor_ && acceptor_->is_open()) return true;
  if (bind_name()) return true;
  // Held: by a live dsproxy of ours (its rules now), or by a process of another user, which
  // owns nothing of ours: then we are the last one out.
  // Non-blocking, as in acquire(): this runs at exit, which a full backlog must not hold up. A
  // holder that cannot be reached (EAGAIN) is left the rules, as a live dsproxy of ours would be.
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return false;
  sockaddr_un sa{};
  const socklen_t len = abstract_address(address_, sa);
  const bool connected = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), len) == 0;
  if (!connected && errno == EAGAIN)
    spdlog::warn("handoff: the holder of the handoff name does not accept connections; leaving the rules to it");
  const bool foreign = connected && !same_user(fd);
  ::close(fd);
  return foreign;
}

void Handoff::close() {
  boost::system::error_code ignored;
  timer_.cancel();
  if (acceptor_) acceptor_->close(ignored);
  acceptor_.reset();
  if (successor_) successor_->close(ignored);
  successor_.reset();
  if (owner_) owner_->close(ignored);
  owner_.reset();
}

}  // namespace dsproxy::daemon
