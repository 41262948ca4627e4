#include "resolver/io/ares_upstream.hpp"

#include <sys/random.h>

#include <ares.h>
#include <arpa/inet.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <random>
#include <stdexcept>
#include <unordered_map>

namespace dsproxy::resolver {

namespace asio = boost::asio;

namespace {

void library_init() {
  static std::once_flag once;
  std::call_once(once, [] { ares_library_init(ARES_LIB_INIT_ALL); });
}

bool readable_now(int fd, short events) {
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (events | POLLERR | POLLHUP));
}

}  // namespace

struct AresUpstream::Impl : std::enable_shared_from_this<Impl> {
  struct Watch {
    explicit Watch(asio::io_context& io, int fd) : descriptor(io, fd), fd(fd) {}
    asio::posix::stream_descriptor descriptor;
    int fd;
    bool want_read = false;
    bool want_write = false;
    bool reading = false;
    bool writing = false;
    bool alive = true;
  };

  struct Pending {
    std::weak_ptr<Impl> owner;
    Done done;
  };

  Impl(asio::io_context& io, AresOptions options) : io(io), options(std::move(options)), timer(io) {}

  asio::io_context& io;
  AresOptions options;
  ares_channel channel = nullptr;
  asio::steady_timer timer;
  std::unordered_map<int, std::shared_ptr<Watch>> watches;
  bool stopped = false;

  static void on_sock_state(void* data, ares_socket_t fd, int readable, int writable) {
    static_cast<Impl*>(data)->sock_state(fd, readable != 0, writable != 0);
  }

  static int on_socket_created(ares_socket_t fd, int type, void* data) {
    const auto* self = static_cast<Impl*>(data);
    if (self->options.mark == 0) return 0;
    const int mark = static_cast<int>(self->options.mark);
    if (::setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
      spdlog::warn("dns: SO_MARK {:#x} on an upstream socket failed: {}", self->options.mark, std::strerror(errno));
      return -1;  // unmarked, our own queries could be captured again: refuse the socket
    }
    return 0;
  }

  static void on_answer(void* arg, int status, int timeouts, unsigned char* abuf, int alen) {
    std::unique_ptr<Pending> pending(static_cast<Pending*>(arg));
    Result result;
    if (status == ARES_SUCCESS && abuf && alen > 0) {
      result.ok = true;
      result.response.assign(abuf, abuf + alen);
    } else {
      result.error = ares_strerror(status);
      if (timeouts > 0) result.error += " (" + std::to_string(timeouts) + " timeout(s))";
    }
    pending->done(std::move(result));
  }

  void sock_state(int fd, bool readable, bool writable) {
    if (!readable && !writable) {
      // c-ares is about to close the socket: stop watching first, without closing it.
      if (auto it = watches.find(fd); it != watches.end()) {
        it->second->alive = false;
        boost::system::error_code ignored;
        it->second->descriptor.cancel(ignored);
        it->second->descriptor.release();
        watches.erase(it);
      }
      return;
    }
    auto& w = watches[fd];
    if (!w) w = std::make_shared<Watch>(io, fd);
    w->want_read = readable;
    w->want_write = writable;
    arm(w);
  }

  void arm(const std::shared_ptr<Watch>& w) {
    if (!w->alive || stopped) return;
    if (w->want_read && !w->reading) wait(w, true);
    if (w->want_write && !w->writing) wait(w, false);
  }

  void wait(const std::shared_ptr<Watch>& w, bool read) {
    (read ? w->reading : w->writing) = true;
    auto self = shared_from_this();
    auto ready = [self, w, read](boost::system::error_code ec) {
      (read ? w->reading : w->writing) = false;
      if (ec || !w->alive || self->stopped) return;
      if (read)
        ares_process_fd(self->channel, w->fd, ARES_SOCKET_BAD);
      else
        ares_process_fd(self->channel, ARES_SOCKET_BAD, w->fd);
      self->arm(w);
      self->schedule_timeout();
    };
    // asio's epoll reactor is edge-triggered and a wait started after the edge would sleep
    // until the next one; poll() first so data that is already there is never missed.
    if (readable_now(w->fd, read ? POLLIN : POLLOUT)) {
      asio::post(io, [ready] { ready({}); });
      return;
    }
    w->descriptor.async_wait(read ? asio::posix::stream_descriptor::wait_read
                                  : asio::posix::stream_descriptor::wait_write,
                             ready);
  }

  void schedule_timeout() {
    if (stopped || !channel) return;
    timeval tv{};
    if (!ares_timeout(channel, nullptr, &tv)) {
      timer.cancel();
      return;
    }
    timer.expires_after(std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec));
    auto self = shared_from_this();
    timer.async_wait([self](boost::system::error_code ec) {
      if (ec || self->stopped) return;
      ares_process_fd(self->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
      self->schedule_timeout();
    });
  }

  void shutdown() {
    if (!channel) return;
    // ares_destroy fails every query (their callbacks run now, on this thread) and closes the
    // sockets through sock_state, which releases the descriptors.
    ares_channel c = channel;
    ares_destroy(c);
    channel = nullptr;
    stopped = true;
    timer.cancel();
    for (auto& [fd, w] : watches) {
      w->alive = false;
      boost::system::error_code ignored;
      w->descriptor.cancel(ignored);
      w->descriptor.release();
    }
    watches.clear();
  }
};

AresUpstream::AresUpstream(asio::io_context& io, AresOptions options)
    : impl_(std::make_shared<Impl>(io, std::move(options))) {
  library_init();
  ares_options opts{};
  int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS;
  opts.sock_state_cb = &Impl::on_sock_state;
  opts.sock_state_cb_data = impl_.get();
  opts.timeout = static_cast<int>(impl_->options.timeout.count());
  opts.tries = impl_->options.tries;
  opts.flags = ARES_FLAG_STAYOPEN;  // keep the upstream sockets between queries
  std::string resolv_conf = impl_->options.resolv_conf;
  if (impl_->options.servers.empty() && !resolv_conf.empty()) {
    mask |= ARES_OPT_RESOLVCONF;
    opts.resolvconf_path = resolv_conf.data();
  }
  if (int rc = ares_init_options(&impl_->channel, &opts, mask); rc != ARES_SUCCESS)
    throw std::runtime_error(std::string("dns: c-ares init failed: ") + ares_strerror(rc));
  ares_set_socket_callback(impl_->channel, &Impl::on_socket_created, impl_.get());
  if (!impl_->options.servers.empty()) {
    std::string csv;
    for (const auto& s : impl_->options.servers) {
      if (!csv.empty()) csv += ',';
      // A bare IPv6 address with a port would be ambiguous; c-ares wants [addr]:port.
      csv += s;
    }
    if (int rc = ares_set_servers_ports_csv(impl_->channel, csv.c_str()); rc != ARES_SUCCESS) {
      ares_destroy(impl_->channel);
      impl_->channel = nullptr;
      throw std::runtime_error("dns: bad upstream server list \"" + csv + "\": " + ares_strerror(rc));
    }
  }
  if (servers().empty()) {
    impl_->shutdown();
    throw std::runtime_error("dns: no upstream nameserver (none in " + resolv_conf + " and no --dns-upstream)");
  }
}

AresUpstream::~AresUpstream() { shutdown(); }

void AresUpstream::shutdown() { impl_->shutdown(); }

void AresUpstream::send(Bytes query, Done done) {
  if (!impl_->channel) {
    done({false, {}, "upstream resolver is shut down"});
    return;
  }
  // c-ares 1.18's ares_send keeps whatever ID the buffer carries, and that ID came from a pod (or
  // from a counter): predictable IDs on a long-lived upstream socket make cache poisoning easy.
  // A random one is used upstream; the handler puts the asker's own ID back into the answer.
  if (query.size() >= 2) {
    std::uint16_t id = 0;
    if (::getrandom(&id, sizeof id, 0) != sizeof id) id = static_cast<std::uint16_t>(std::random_device{}());
    query[0] = static_cast<std::uint8_t>(id >> 8);
    query[1] = static_cast<std::uint8_t>(id & 0xff);
  }
  auto* pending = new Impl::Pending{impl_, std::move(done)};
  ares_send(impl_->channel, query.data(), static_cast<int>(query.size()), &Impl::on_answer, pending);
  impl_->schedule_timeout();
}

std::vector<std::string> AresUpstream::servers() const {
  std::vector<std::string> out;
  if (!impl_->channel) return out;
  ares_addr_port_node* list = nullptr;
  if (ares_get_servers_ports(impl_->channel, &list) != ARES_SUCCESS) return out;
  for (auto* n = list; n; n = n->next) {
    char text[INET6_ADDRSTRLEN] = {};
    ::inet_ntop(n->family, &n->addr, text, sizeof text);
    const int port = n->udp_port ? n->udp_port : 53;
    out.push_back(n->family == AF_INET6 ? "[" + std::string(text) + "]:" + std::to_string(port)
                                        : std::string(text) + ":" + std::to_string(port));
  }
  ares_free_data(list);
  return out;
}

}  // namespace dsproxy::resolver
