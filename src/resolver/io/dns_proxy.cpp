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
#include <optional>
#include <set>
#include <system_error>

#include "net/io/transparent_socket.hpp"
#include "resolver/connection_limits.hpp"
#include "resolver/dns_admission.hpp"
#include "resolver/io/ares_upstream.hpp"
#include "resolver/io/origin_reply.hpp"
#include "resolver/io/socket_address_conversion.hpp"

namespace dsproxy::resolver {

namespace asio = boost::asio;
using asio::ip::tcp;
using asio::ip::udp;

namespace {

// Datagrams read per readiness event before yielding to the other sockets.
constexpr int kUdpBatch = 64;

void count(std::atomic<std::uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

void set_option(int fd, int level, int name, int value, const std::string& what, const char* option) {
  if (::setsockopt(fd, level, name, &value, sizeof value) != 0)
    throw std::system_error(errno, std::generic_category(), what + ": " + option);
}

// The UDP listener bound to `at`, non-blocking, asking for every datagram's original destination.
int open_udp_listener(const net::SocketAddress& at, bool transparent, bool reuse_port) {
  const bool v4 = at.ip.is_v4();
  const std::string what = "dns listener udp " + at.to_string();
  const int fd = ::socket(v4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), what + ": socket");
  try {
    if (!v4) set_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1, what, "IPV6_V6ONLY");
    set_option(fd, SOL_SOCKET, SO_REUSEADDR, 1, what, "SO_REUSEADDR");
    // A successor dsproxy binds the same port while this one still runs (handoff.hpp); the
    // kernel spreads the datagrams over both until this socket closes.
    if (reuse_port) set_option(fd, SOL_SOCKET, SO_REUSEPORT, 1, what, "SO_REUSEPORT");
    if (transparent)
      set_option(fd, v4 ? SOL_IP : SOL_IPV6, v4 ? IP_TRANSPARENT : IPV6_TRANSPARENT, 1, what,
                 "IP_TRANSPARENT (needs CAP_NET_ADMIN)");
    set_option(fd, v4 ? SOL_IP : SOL_IPV6, v4 ? IP_RECVORIGDSTADDR : IPV6_RECVORIGDSTADDR, 1, what,
               "IP_RECVORIGDSTADDR");
    const SockAddr sa = to_sockaddr(at);
    if (::bind(fd, sa.get(), sa.length) != 0) throw std::system_error(errno, std::generic_category(), what + ": bind");
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

  // One accepted TCP DNS connection. Its timer is either the idle timeout (waiting for the first
  // octet of the next message), the message deadline (reading the rest of a message, or writing
  // an answer), or off (the handler is answering: it always does within the upstream timeout).
  struct TcpConnection : std::enable_shared_from_this<TcpConnection> {
    TcpConnection(std::shared_ptr<Impl> owner, tcp::socket s, net::IpAddress client)
        : owner(std::move(owner)), socket(std::move(s)), client(client), timer(socket.get_executor()) {}
    // close() releases the client's slot and the registry entry; a connection dropped without
    // it (a reply callback that was never called) must not leak its slot for good nor leave a
    // dangling pointer for stop().
    ~TcpConnection() {
      if (closed) return;
      owner->limits.release(client);
      owner->connections.erase(this);
    }
    std::shared_ptr<Impl> owner;
    tcp::socket socket;
    net::IpAddress client;
    asio::steady_timer timer;
    // Bumped whenever the timer is re-armed or disarmed: a wait that completed (successfully)
    // just before being replaced is recognised as stale and ignored.
    std::uint64_t armed = 0;
    bool closed = false;
    std::array<std::uint8_t, 2> length{};
    Bytes message;
    Bytes out;

    template <class Duration>
    void arm(Duration after, bool message_deadline) {
      timer.expires_after(after);
      const std::uint64_t mine = ++armed;
      timer.async_wait([self = shared_from_this(), mine, message_deadline](boost::system::error_code ec) {
        if (ec || mine != self->armed || self->closed) return;
        if (message_deadline) count(self->owner->handler->stats().tcp_message_timeouts);
        self->close();
      });
    }
    void disarm() {
      ++armed;
      timer.cancel();
    }

    void read_next() {
      auto self = shared_from_this();
      arm(owner->options.tcp_idle_timeout, false);
      // Readable: the next message's first octet is here (or EOF, which the read reports).
      socket.async_wait(tcp::socket::wait_read, [self](boost::system::error_code ec) {
        if (ec || self->closed) return self->close();
        self->arm(self->owner->options.tcp_message_timeout, true);
        asio::async_read(self->socket, asio::buffer(self->length), [self](boost::system::error_code ec, std::size_t) {
          if (ec) return self->close();
          const std::size_t n = (std::size_t{self->length[0]} << 8) | self->length[1];
          if (n == 0) return self->close();
          self->message.resize(n);
          asio::async_read(self->socket, asio::buffer(self->message),
                           [self](boost::system::error_code ec, std::size_t) {
                             if (ec) return self->close();
                             self->disarm();
                             // What the handler would drop (no header, or a response) gets no
                             // answer ever: end the connection rather than wait for one.
                             if (self->message.size() < kHeaderSize || (self->message[2] & 0x80))
                               return self->close();
                             // One question at a time per connection: the next is read once this
                             // one is answered (the handler always answers a query, with SERVFAIL
                             // at worst, within the upstream timeout).
                             self->owner->handler->handle(self->message, Transport::tcp,
                                                          [self](Bytes answer) { self->write(std::move(answer)); });
                           });
        });
      });
    }

    void write(Bytes answer) {
      if (closed || !socket.is_open()) return;
      out.clear();
      out.push_back(static_cast<std::uint8_t>(answer.size() >> 8));
      out.push_back(static_cast<std::uint8_t>(answer.size()));
      out.insert(out.end(), answer.begin(), answer.end());
      auto self = shared_from_this();
      arm(owner->options.tcp_message_timeout, true);  // a client that never reads its answer
      asio::async_write(socket, asio::buffer(out), [self](boost::system::error_code ec, std::size_t) {
        if (ec) return self->close();
        self->read_next();
      });
    }

    void close() {
      if (closed) return;
      closed = true;
      disarm();
      boost::system::error_code ignored;
      socket.close(ignored);
      owner->limits.release(client);
      owner->connections.erase(this);
    }
  };

  Impl(asio::io_context& io, DnsProxyOptions options, const snapshot::SnapshotStore& store)
      : io(io),
        options(std::move(options)),
        store(store),
        limits(this->options.max_tcp_connections, this->options.max_tcp_connections_per_client) {}

  asio::io_context& io;
  DnsProxyOptions options;
  const snapshot::SnapshotStore& store;
  std::unique_ptr<AresUpstream> upstream;
  std::unique_ptr<DnsHandler> handler;
  std::vector<std::unique_ptr<UdpListener>> udp_listeners;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  std::set<TcpConnection*> connections;
  ConnectionLimits limits;
  NodePodAddresses pods;
  std::uint64_t pods_generation = ~std::uint64_t{0};
  std::uint16_t port = 0;
  bool running = false;
  // Warn once per kind of trouble a hostile or misconfigured peer can repeat at will; the
  // counters tell the rest.
  bool warned_reply = false;
  bool warned_refused = false;
  bool warned_tcp_limit = false;

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

    // Port 0 (tests): the kernel picks the first UDP port, and the same number must then be free
    // for TCP and for the other family, where another socket of the process may already hold
    // it. Pick again, a bounded number of times, rather than fail at random.
    for (int attempt = 0;; ++attempt) {
      try {
        bind_listeners();
        break;
      } catch (const std::system_error& e) {
        if (options.port != 0 || e.code().value() != EADDRINUSE || attempt == 20) throw;
        udp_listeners.clear();
        acceptors.clear();
      }
    }
    running = true;
    for (auto& l : udp_listeners) receive(*l);
    for (auto& a : acceptors) accept(*a);
    spdlog::info("dns: listening on port {} (udp, tcp) for domain {}, upstream {}; answering captured queries from "
                 "this node's pods and the node's own on loopback",
                 port, options.cluster_domain, fmt::join(upstream->servers(), ", "));
  }

  void bind_listeners() {
    port = options.port;
    for (const auto& text : options.bind) {
      auto ip = net::IpAddress::parse(text);
      if (!ip) throw std::runtime_error("dns: bad bind address \"" + text + "\"");
      const net::SocketAddress at{*ip, port};
      auto listener = std::make_unique<UdpListener>(io);
      // A fixed port only: with port 0 (tests) a kernel-chosen number must not join a group of
      // some other socket of ours that happens to hold it.
      const bool reuse_port = options.port != 0;
      const int fd = open_udp_listener(at, options.transparent, reuse_port);
      listener->socket.assign(ip->is_v4() ? udp::v4() : udp::v6(), fd);
      if (port == 0) port = local_port(fd);
      listener->bound = {*ip, port};
      udp_listeners.push_back(std::move(listener));

      net::ListenerSocketOptions tcp_options;
      tcp_options.transparent = options.transparent;
      tcp_options.reuse_port = reuse_port;
      tcp_options.backlog = 128;
      acceptors.push_back(std::make_unique<tcp::acceptor>(net::open_listener(io.get_executor(), {*ip, port}, tcp_options)));
    }
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
    auto open = connections;
    for (auto* c : open) c->close();
  }

  // This node's pod addresses for the store's current generation (rebuilt when it changes).
  const NodePodAddresses& node_pods() {
    const std::uint64_t generation = store.generation();
    if (generation != pods_generation) {
      const auto snapshot = store.current();
      pods = snapshot ? NodePodAddresses(*snapshot) : NodePodAddresses();
      pods_generation = generation;
    }
    return pods;
  }

  // Counts a query that is not answered; false for those that are.
  bool refuse(const net::SocketAddress& client, const std::optional<net::SocketAddress>& destination,
              const char* transport) {
    const Admission admission = admit_query(client, destination, node_pods());
    if (admission == Admission::answer) return false;
    count(admission == Admission::direct ? handler->stats().dropped_direct : handler->stats().dropped_not_node_pod);
    const std::string dst = destination ? destination->to_string() : std::string("?");
    if (!warned_refused) {
      warned_refused = true;
      spdlog::warn("dns: not answering {} query from {} to {} ({}): only captured queries from this node's pods "
                   "are answered (further ones are only counted: dns.dropped_direct, dns.dropped_not_node_pod)",
                   transport, client.to_string(), dst, to_string(admission));
    } else {
      spdlog::debug("dns: not answering {} query from {} to {} ({})", transport, client.to_string(), dst,
                    to_string(admission));
    }
    return true;
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
    answer_udp(ByteView(buffer.data(), static_cast<std::size_t>(n)), *client, original,
               l.socket.native_handle());
    return true;
  }

  void answer_udp(ByteView query, const net::SocketAddress& client, const std::optional<net::SocketAddress>& original,
                  int listener_fd) {
    if (refuse(client, original, "udp")) return;
    // Asked at our own port (the node itself): answer from the listener. Captured: answer from
    // the address and port the pod sent to.
    const std::optional<net::SocketAddress> origin =
        original && original->port != port ? original : std::nullopt;
    auto self = shared_from_this();
    handler->handle(query, Transport::udp, [self, client, origin, listener_fd](Bytes answer) {
      if (!self->running) return;
      self->send_udp(answer, client, origin, listener_fd);
    });
  }

  void send_udp(const Bytes& answer, const net::SocketAddress& to, const std::optional<net::SocketAddress>& origin,
                int listener_fd) {
    if (!origin) {
      const SockAddr sa = to_sockaddr(to);
      if (::sendto(listener_fd, answer.data(), answer.size(), MSG_DONTWAIT, sa.get(), sa.length) < 0)
        spdlog::debug("dns: reply to {} failed: {}", to.to_string(), std::strerror(errno));
      return;
    }
    OriginReplyResult result =
        send_from_origin(*origin, to, answer, OriginReplyOptions{options.transparent, options.mark});
    if (!result.sent()) {
      count(handler->stats().reply_failures);
      const std::string why = fmt::format("{} {}: {}", result.step, origin->to_string(), std::strerror(result.error));
      if (!warned_reply && result.error == EADDRINUSE) {
        warned_reply = true;
        spdlog::warn("dns: cannot answer {} from {}: {} (a process on the node holds that port without "
                     "SO_REUSEADDR; such answers are lost and counted in dns.reply_failures)",
                     to.to_string(), origin->to_string(), why);
      } else if (!warned_reply) {
        warned_reply = true;
        spdlog::warn("dns: cannot answer {} from {}: {} (further failures are counted in dns.reply_failures)",
                     to.to_string(), origin->to_string(), why);
      } else {
        spdlog::debug("dns: cannot answer {}: {}", to.to_string(), why);
      }
    }
    if (result.strays > 0) handler->stats().reply_strays.fetch_add(result.strays, std::memory_order_relaxed);
    // Queries the client sent while the reply socket existed reached it instead of the listener:
    // answer them like any other, after this one (never recursively from inside a reply).
    for (auto& late : result.late_queries) {
      auto self = shared_from_this();
      asio::post(io, [self, late = std::move(late), client = to, original = *origin] {
        if (self->running) self->answer_udp(late, client, original, -1);
      });
    }
  }

  void accept(tcp::acceptor& acceptor) {
    if (!running) return;
    auto self = shared_from_this();
    acceptor.async_accept([self, &acceptor](boost::system::error_code ec, tcp::socket socket) {
      if (!self->running) return;
      if (!ec) self->admit_tcp(std::move(socket));
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

  void admit_tcp(tcp::socket socket) {
    boost::system::error_code ec_remote, ec_local;
    const auto remote = socket.remote_endpoint(ec_remote);
    const auto local = socket.local_endpoint(ec_local);
    if (ec_remote || ec_local) {  // reset by the peer already
      boost::system::error_code ignored;
      socket.close(ignored);
      return;
    }
    const net::SocketAddress client = net::to_socket_address(remote);
    // The accepted socket's local address is the original destination (TPROXY keeps it).
    if (refuse(client, net::to_socket_address(local), "tcp")) return net::reset_connection(socket);
    switch (limits.acquire(client.ip)) {
      case ConnectionLimits::Verdict::accepted: {
        auto connection = std::make_shared<TcpConnection>(shared_from_this(), std::move(socket), client.ip);
        connections.insert(connection.get());
        connection->read_next();
        return;
      }
      case ConnectionLimits::Verdict::over_total:
        count(handler->stats().tcp_limit);
        break;
      case ConnectionLimits::Verdict::over_client:
        count(handler->stats().tcp_client_limit);
        break;
    }
    if (!warned_tcp_limit) {
      warned_tcp_limit = true;
      spdlog::warn("dns: refusing a TCP connection from {}: {} open in all, {} from it (caps {} and {} per client; "
                   "further refusals are counted in dns.tcp_limit and dns.tcp_client_limit)",
                   client.to_string(), limits.total(), limits.of(client.ip), options.max_tcp_connections,
                   options.max_tcp_connections_per_client);
    }
    net::reset_connection(socket);
  }
};

DnsProxy::DnsProxy(asio::io_context& io, DnsProxyOptions options, const snapshot::SnapshotStore& store)
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
