#include "resolver/dns_proxy.hpp"

#include <netinet/in.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <system_error>

#include "proxy/transparent_socket.hpp"
#include "resolver/io/ares_upstream.hpp"

namespace dsproxy::resolver {

namespace asio = boost::asio;
using asio::ip::tcp;
using asio::ip::udp;

namespace {

// Datagrams read per readiness event before yielding to the other sockets.
constexpr int kUdpBatch = 64;
constexpr std::size_t kMaxReplySockets = 64;

struct SockAddr {
  sockaddr_storage storage{};
  socklen_t length = 0;
};

SockAddr to_sockaddr(const net::SocketAddress& a) {
  SockAddr out;
  if (a.ip.is_v4()) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&out.storage);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(a.port);
    std::memcpy(&sin->sin_addr, a.ip.bytes().data(), 4);
    out.length = sizeof(sockaddr_in);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(a.port);
    std::memcpy(&sin6->sin6_addr, a.ip.bytes().data(), 16);
    out.length = sizeof(sockaddr_in6);
  }
  return out;
}

std::optional<net::SocketAddress> from_sockaddr(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(sa);
    std::array<std::uint8_t, 4> b;
    std::memcpy(b.data(), &sin->sin_addr, 4);
    return net::SocketAddress{net::IpAddress::v4(b), ntohs(sin->sin_port)};
  }
  if (sa->sa_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(sa);
    std::array<std::uint8_t, 16> b;
    std::memcpy(b.data(), &sin6->sin6_addr, 16);
    return net::SocketAddress{net::IpAddress::v6(b), ntohs(sin6->sin6_port)};
  }
  return std::nullopt;
}

void set_option(int fd, int level, int name, int value, const std::string& what, const char* option) {
  if (::setsockopt(fd, level, name, &value, sizeof value) != 0)
    throw std::system_error(errno, std::generic_category(), what + ": " + option);
}

// A UDP socket bound to `at`, non-blocking. `listener`: asks for the original destination of
// every datagram; otherwise it is a reply socket bound to a foreign address.
int open_udp(const net::SocketAddress& at, bool transparent, bool listener, std::uint32_t mark) {
  const bool v4 = at.ip.is_v4();
  const std::string what = std::string(listener ? "dns listener udp " : "dns reply socket ") + at.to_string();
  const int fd = ::socket(v4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), what + ": socket");
  try {
    if (!v4) set_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1, what, "IPV6_V6ONLY");
    set_option(fd, SOL_SOCKET, SO_REUSEADDR, 1, what, "SO_REUSEADDR");
    if (transparent)
      set_option(fd, v4 ? SOL_IP : SOL_IPV6, v4 ? IP_TRANSPARENT : IPV6_TRANSPARENT, 1, what,
                 "IP_TRANSPARENT (needs CAP_NET_ADMIN)");
    if (listener) set_option(fd, v4 ? SOL_IP : SOL_IPV6, v4 ? IP_RECVORIGDSTADDR : IPV6_RECVORIGDSTADDR, 1, what,
                             "IP_RECVORIGDSTADDR");
    if (!listener && mark != 0) set_option(fd, SOL_SOCKET, SO_MARK, static_cast<int>(mark), what, "SO_MARK");
    const SockAddr sa = to_sockaddr(at);
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&sa.storage), sa.length) != 0)
      throw std::system_error(errno, std::generic_category(), what + ": bind");
  } catch (...) {
    ::close(fd);
    throw;
  }
  return fd;
}

std::uint16_t local_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  auto a = from_sockaddr(reinterpret_cast<const sockaddr*>(&ss));
  return a ? a->port : 0;
}

}  // namespace

struct DnsProxy::Impl : std::enable_shared_from_this<Impl> {
  struct UdpListener {
    explicit UdpListener(asio::io_context& io) : socket(io) {}
    udp::socket socket;
    net::SocketAddress bound;
  };

  struct TcpConnection : std::enable_shared_from_this<TcpConnection> {
    TcpConnection(std::shared_ptr<Impl> owner, tcp::socket s)
        : owner(std::move(owner)), socket(std::move(s)), idle(socket.get_executor()) {}
    std::shared_ptr<Impl> owner;
    tcp::socket socket;
    asio::steady_timer idle;
    std::array<std::uint8_t, 2> length{};
    Bytes message;
    Bytes out;

    void read_next() {
      auto self = shared_from_this();
      idle.expires_after(owner->options.tcp_idle_timeout);
      idle.async_wait([self](boost::system::error_code ec) {
        if (!ec) self->close();
      });
      asio::async_read(socket, asio::buffer(length), [self](boost::system::error_code ec, std::size_t) {
        if (ec) return self->close();
        const std::size_t n = (std::size_t{self->length[0]} << 8) | self->length[1];
        if (n == 0) return self->close();
        self->message.resize(n);
        asio::async_read(self->socket, asio::buffer(self->message), [self](boost::system::error_code ec, std::size_t) {
          if (ec) return self->close();
          self->idle.cancel();
          // What the handler would drop (no header, or a response) gets no answer ever: end
          // the connection rather than wait for one.
          if (self->message.size() < kHeaderSize || (self->message[2] & 0x80)) return self->close();
          // One question at a time per connection: the next is read once this one is answered
          // (the handler always answers a query, with SERVFAIL at worst, within the upstream timeout).
          self->owner->handler->handle(self->message, Transport::tcp,
                                       [self](Bytes answer) { self->write(std::move(answer)); });
        });
      });
    }

    void write(Bytes answer) {
      if (!socket.is_open()) return;
      out.clear();
      out.push_back(static_cast<std::uint8_t>(answer.size() >> 8));
      out.push_back(static_cast<std::uint8_t>(answer.size()));
      out.insert(out.end(), answer.begin(), answer.end());
      auto self = shared_from_this();
      asio::async_write(socket, asio::buffer(out), [self](boost::system::error_code ec, std::size_t) {
        if (ec) return self->close();
        self->read_next();
      });
    }

    void close() {
      boost::system::error_code ignored;
      idle.cancel();
      socket.close(ignored);
      owner->connections.erase(this);
    }
  };

  Impl(asio::io_context& io, DnsProxyOptions options, const config::SnapshotStore& store)
      : io(io), options(std::move(options)), store(store) {}

  asio::io_context& io;
  DnsProxyOptions options;
  const config::SnapshotStore& store;
  std::unique_ptr<AresUpstream> upstream;
  std::unique_ptr<DnsHandler> handler;
  std::vector<std::unique_ptr<UdpListener>> udp_listeners;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  std::map<net::SocketAddress, int> reply_sockets;
  std::set<TcpConnection*> connections;
  std::uint16_t port = 0;
  bool running = false;

  void start() {
    DnsHandlerOptions handler_options;
    handler_options.cluster.domain = options.cluster_domain;
    handler_options.cluster.ttl = options.ttl;
    handler_options.cache.max_entries = options.cache_entries;
    AresOptions ares;
    ares.servers = options.upstreams;
    ares.resolv_conf = options.resolv_conf;
    ares.mark = options.mark;
    ares.timeout = options.upstream_timeout;
    ares.tries = options.upstream_tries;
    upstream = std::make_unique<AresUpstream>(io, ares);
    handler = std::make_unique<DnsHandler>(store, handler_options, *upstream);

    port = options.port;
    for (const auto& text : options.bind) {
      auto ip = net::IpAddress::parse(text);
      if (!ip) throw std::runtime_error("dns: bad bind address \"" + text + "\"");
      const net::SocketAddress at{*ip, port};
      auto listener = std::make_unique<UdpListener>(io);
      const int fd = open_udp(at, options.transparent, true, 0);
      listener->socket.assign(ip->is_v4() ? udp::v4() : udp::v6(), fd);
      if (port == 0) port = local_port(fd);
      listener->bound = {*ip, port};
      udp_listeners.push_back(std::move(listener));

      proxy::ListenerSocketOptions tcp_options;
      tcp_options.transparent = options.transparent;
      tcp_options.reuse_port = false;
      tcp_options.backlog = 128;
      acceptors.push_back(std::make_unique<tcp::acceptor>(proxy::open_listener(io.get_executor(), {*ip, port}, tcp_options)));
    }
    running = true;
    for (auto& l : udp_listeners) receive(*l);
    for (auto& a : acceptors) accept(*a);
    spdlog::info("dns: listening on port {} (udp, tcp) for domain {}, upstream {}", port, options.cluster_domain,
                 fmt::join(upstream->servers(), ", "));
  }

  void stop() {
    if (!running) return;
    // Shut the upstream down while still running: its SERVFAILs to whoever still waits are only
    // sent while `running` holds, and the sockets are still open.
    if (upstream) upstream->shutdown();
    running = false;
    boost::system::error_code ignored;
    for (auto& l : udp_listeners) l->socket.close(ignored);
    for (auto& a : acceptors) a->close(ignored);
    for (auto& [at, fd] : reply_sockets) ::close(fd);
    reply_sockets.clear();
    auto open = connections;
    for (auto* c : open) c->close();
  }

  void receive(UdpListener& l) {
    if (!running) return;
    auto self = shared_from_this();
    l.socket.async_wait(udp::socket::wait_read, [self, &l](boost::system::error_code ec) {
      if (ec || !self->running) return;
      int n = 0;
      for (; n < kUdpBatch; ++n)
        if (!self->receive_one(l)) break;
      if (n == kUdpBatch)
        asio::post(self->io, [self, &l] { self->receive(l); });  // more may wait: yield, then go on
      else
        self->receive(l);
    });
  }

  // One datagram; false when there was none (EAGAIN) or the socket failed.
  bool receive_one(UdpListener& l) {
    std::array<std::uint8_t, 65535> buffer;
    sockaddr_storage from{};
    alignas(cmsghdr) std::array<char, 256> control{};
    iovec iov{buffer.data(), buffer.size()};
    msghdr msg{};
    msg.msg_name = &from;
    msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    const ssize_t n = ::recvmsg(l.socket.native_handle(), &msg, MSG_DONTWAIT);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        spdlog::warn("dns: recvmsg on {}: {}", l.bound.to_string(), std::strerror(errno));
      return errno == EINTR;
    }
    auto client = from_sockaddr(reinterpret_cast<const sockaddr*>(&from));
    if (!client) return true;
    std::optional<net::SocketAddress> original;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if ((c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR) ||
          (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_ORIGDSTADDR)) {
        sockaddr_storage dst{};
        std::memcpy(&dst, CMSG_DATA(c), std::min<std::size_t>(c->cmsg_len - CMSG_LEN(0), sizeof dst));
        original = from_sockaddr(reinterpret_cast<const sockaddr*>(&dst));
      }
    }
    // Asked at our own port (not redirected): answer from the listener. Redirected: answer from
    // the address the pod sent to.
    const bool redirected = original && original->port != port;
    const int listener_fd = l.socket.native_handle();
    auto self = shared_from_this();
    const net::SocketAddress to = *client;
    const std::optional<net::SocketAddress> from_address = redirected ? original : std::nullopt;
    handler->handle(ByteView(buffer.data(), static_cast<std::size_t>(n)), Transport::udp,
                    [self, to, from_address, listener_fd](Bytes answer) {
                      if (!self->running) return;
                      self->send_udp(answer, to, from_address, listener_fd);
                    });
    return true;
  }

  void send_udp(const Bytes& answer, const net::SocketAddress& to, const std::optional<net::SocketAddress>& from,
                int listener_fd) {
    int fd = listener_fd;
    if (from) {
      fd = reply_socket(*from);
      if (fd < 0) return;
    }
    const SockAddr sa = to_sockaddr(to);
    if (::sendto(fd, answer.data(), answer.size(), MSG_DONTWAIT, reinterpret_cast<const sockaddr*>(&sa.storage),
                 sa.length) < 0)
      spdlog::debug("dns: reply to {} from {} failed: {}", to.to_string(), from ? from->to_string() : "listener",
                    std::strerror(errno));
  }

  // A transparent socket bound to `from` (e.g. 10.96.0.10:53), kept for the next answers.
  int reply_socket(const net::SocketAddress& from) {
    if (auto it = reply_sockets.find(from); it != reply_sockets.end()) return it->second;
    if (reply_sockets.size() >= kMaxReplySockets) {
      for (auto& [at, fd] : reply_sockets) ::close(fd);
      reply_sockets.clear();
    }
    try {
      const int fd = open_udp(from, true, false, options.mark);
      int small = 1;  // it never reads; keep what might queue on it tiny
      ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
      reply_sockets.emplace(from, fd);
      return fd;
    } catch (const std::exception& e) {
      spdlog::warn("dns: cannot answer from {}: {}", from.to_string(), e.what());
      return -1;
    }
  }

  void accept(tcp::acceptor& acceptor) {
    if (!running) return;
    auto self = shared_from_this();
    acceptor.async_accept([self, &acceptor](boost::system::error_code ec, tcp::socket socket) {
      if (!self->running) return;
      if (!ec) {
        if (self->connections.size() >= self->options.max_tcp_connections) {
          spdlog::warn("dns: {} TCP connections open, refusing another", self->connections.size());
          proxy::reset_connection(socket);
        } else {
          auto connection = std::make_shared<TcpConnection>(self, std::move(socket));
          self->connections.insert(connection.get());
          connection->read_next();
        }
      }
      if (ec && ec != asio::error::operation_aborted) {
        // Out of descriptors (EMFILE) and the like: retrying at once would spin the control
        // thread; the pending connection waits in the kernel's queue meanwhile.
        auto pause = std::make_shared<asio::steady_timer>(acceptor.get_executor(), std::chrono::milliseconds(50));
        pause->async_wait([self, &acceptor, pause](boost::system::error_code) { self->accept(acceptor); });
        return;
      }
      self->accept(acceptor);
    });
  }
};

DnsProxy::DnsProxy(asio::io_context& io, DnsProxyOptions options, const config::SnapshotStore& store)
    : impl_(std::make_shared<Impl>(io, std::move(options), store)) {}

DnsProxy::~DnsProxy() { stop(); }

void DnsProxy::start() {
  try {
    impl_->start();
  } catch (...) {
    impl_->running = true;
    impl_->stop();
    throw;
  }
}

void DnsProxy::stop() { impl_->stop(); }

std::uint16_t DnsProxy::bound_port() const { return impl_->port; }

const DnsStats& DnsProxy::stats() const {
  static const DnsStats none;
  return impl_->handler ? impl_->handler->stats() : none;
}

std::vector<std::string> DnsProxy::upstream_servers() const {
  return impl_->upstream ? impl_->upstream->servers() : std::vector<std::string>{};
}

}  // namespace dsproxy::resolver
