#include "proxy/proxy_server.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <csignal>
#include <random>
#include <thread>

#include "proxy/connection.hpp"
#include "proxy/descriptor_reserve.hpp"
#include "proxy/mesh.hpp"
#include "proxy/log_throttle.hpp"
#include "net/io/transparent_socket.hpp"

namespace dsproxy::proxy {

namespace {

using boost::asio::awaitable;
using boost::asio::use_awaitable;

// accept() failures are this process's own (descriptors, memory): they come in floods, so one
// line a second for all listeners.
LogThrottle& accept_error_log() {
  static LogThrottle throttle;
  return throttle;
}

// Connections refused by a worker's limits come in floods too.
LogThrottle& limit_log() {
  static LogThrottle throttle;
  return throttle;
}

awaitable<void> accept_loop(tcp::acceptor& acceptor, Direction direction, ConnectionContext context,
                            std::optional<net::SocketAddress> forward_to, DescriptorReserve& reserve,
                            MeshWorker* hbone = nullptr) {
  const auto executor = co_await boost::asio::this_coro::executor;
  boost::asio::steady_timer backoff(executor);
  tcp::endpoint peer;  // filled by accept() itself: no getpeername per connection
  for (;;) {
    bool back_off = false;
    // A listener must outlive anything one connection can do: an exception here (bad_alloc)
    // would otherwise end this loop silently, leaving the socket in the SO_REUSEPORT group with
    // nobody accepting its share of connections.
    try {
      auto [ec, socket] = co_await acceptor.async_accept(peer, boost::asio::as_tuple(use_awaitable));
      if (ec == boost::asio::error::operation_aborted || !acceptor.is_open()) co_return;  // draining
      if (ec) {
        ProxyStats::add(context.stats.local_errors);
        // Out of descriptors: the waiting clients are reset at once through the reserve rather
        // than left in the accept queue. Then the queue is empty and the next accept waits for
        // a new connection, so there is no spin. Anything else (ENOBUFS, ENOMEM), or a reserve
        // that could not be used: a short pause, the connections stay queued for later.
        std::size_t shed = 0;
        if (ec == boost::asio::error::no_descriptors || ec.value() == ENFILE)
          shed = reserve.shed(acceptor.native_handle(), 256);
        ProxyStats::add(context.stats.accept_shed, shed);
        back_off = shed == 0;
        if (const auto suppressed = accept_error_log().admit(std::chrono::steady_clock::now())) {
          boost::system::error_code ignored;
          spdlog::warn("accept on port {} failed: {}; {} waiting connection(s) reset{} ({} similar event(s) not "
                       "logged; see local_errors, accept_shed)",
                       acceptor.local_endpoint(ignored).port(), ec.message(), shed,
                       back_off ? ", pausing 50 ms" : "", *suppressed);
        }
      } else if (const auto full =
                     hbone ? context.load.full(context.options.limits,
                                               {WorkerLimit::connections, WorkerLimit::pending_handshakes})
                           : context.load.full(context.options.limits, {WorkerLimit::connections})) {
        // Full: a reset now tells the client at once, where leaving it in the accept queue
        // would let it time out (and the queue hold SYNs nobody will serve soon). Handshakes are
        // bounded too: in a ClientHello flood (or peers that connect and stall mid-handshake)
        // each costs CPU and state before the peer has proved anything, so only so many at once.
        count_refusal(*full, context.options.limits, context.stats, &limit_log(),
                      hbone ? "new HBONE connections are reset" : "new connections are reset");
        net::reset_connection(socket);
      } else {
        if (!reserve.held()) reserve.replenish();  // lost to another thread during a shed
        if (hbone)
          boost::asio::co_spawn(executor, hbone->serve_hbone(std::move(socket), peer), boost::asio::detached);
        else
          boost::asio::co_spawn(executor, serve_connection(std::move(socket), peer, direction, context, forward_to),
                                boost::asio::detached);
      }
    } catch (const std::exception& e) {
      ProxyStats::add(context.stats.worker_faults);
      spdlog::error("accept loop: {}", e.what());
      back_off = true;
    }
    if (back_off) {
      backoff.expires_after(std::chrono::milliseconds(50));
      co_await backoff.async_wait(boost::asio::as_tuple(use_awaitable));
    }
  }
}

// True when `ip` is one of this host's addresses (or a wildcard): binding a throwaway socket to
// it succeeds only then (no IP_FREEBIND, no IP_TRANSPARENT).
bool is_local_address(const net::IpAddress& ip) {
  const tcp::endpoint endpoint = net::to_endpoint({ip, 0});
  const int fd = ::socket(ip.is_v4() ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool bound = ::bind(fd, endpoint.data(), static_cast<socklen_t>(endpoint.size())) == 0;
  ::close(fd);
  return bound;
}

// Would a connection to `to` land on a listener bound to `listener`?
bool reaches(const net::SocketAddress& listener, const net::SocketAddress& to) {
  if (listener.port != to.port || listener.ip.family() != to.ip.family()) return false;
  return listener.ip == to.ip || listener.ip.is_unspecified();
}

// --forward mistakes that would otherwise show up only as traffic going astray: listeners that
// share a port join one SO_REUSEPORT group (the kernel would split their connections, including
// captured ones if the port is a capture port), and a target that is one of our own forward
// listeners makes the proxy dial itself until it runs out of descriptors.
void validate_forwards(const ProxyOptions& options) {
  const auto& forwards = options.forwards;
  for (std::size_t i = 0; i < forwards.size(); ++i) {
    const auto& f = forwards[i];
    const std::string what = "--forward " + f.listen.to_string() + "=" + f.target.to_string() + ": ";
    if (f.listen.port == 0) continue;  // the kernel picks a free port: it can collide with nothing
    if (f.listen.port == options.ports.outbound || f.listen.port == options.ports.inbound)
      throw std::invalid_argument(what + "the listen port is a capture port");
    for (std::size_t j = 0; j < i; ++j)
      if (reaches(forwards[j].listen, f.listen) || reaches(f.listen, forwards[j].listen))
        throw std::invalid_argument(what + "its listen address overlaps --forward " + forwards[j].listen.to_string());
    for (const auto& other : forwards)
      if (reaches(other.listen, f.target) && is_local_address(f.target.ip))
        throw std::invalid_argument(what + "the target is our own listener " + other.listen.to_string() +
                                    " (the proxy would dial itself)");
  }
}

}  // namespace

class Worker {
 public:
  Worker(const ProxyOptions& options, const snapshot::SnapshotStore& store, ProxyStats& stats,
         const OutlierDetector& outliers, EndpointStates& endpoint_states, SessionAffinityTable& affinity,
         std::uint64_t seed, int index, ConnectionSink* sink, const MeshOptions& mesh)
      : index_(index),
        store_(store),
        picker_(outliers, seed, &affinity),
        local_addresses_(options.upstream_mark),
        context_{options, store, stats, outliers, endpoint_states, picker_, local_addresses_, load_, sink, &names_},
        mesh_(io_.get_executor(), mesh, options, store, stats, load_) {
    context_.mesh = &mesh_;
    context_.authz_connections = &authz_connections_;
    // Inbound HBONE streams are connections like the others: same records, names and live list.
    mesh_.attach(sink, &names_, &authz_connections_);
  }

  // A snapshot was published (any thread): this worker re-decides its live connections to local
  // workloads, on its own thread, if the authorization index changed since it last looked.
  void snapshot_published() {
    boost::asio::post(io_, [this] {
      const auto snapshot = store_.current();
      if (snapshot->authz_index() == authz_seen_) return;
      authz_seen_ = snapshot->authz_index();
      if (authz_connections_.size() == 0) return;
      const std::size_t closed = authz_connections_.reevaluate(snapshot->authz());
      if (closed > 0)
        spdlog::info("authz: policy change closed {} of this worker's {} connection(s) to local workloads", closed,
                     authz_connections_.size());
    });
  }

  void listen(const net::SocketAddress& address, Direction direction, const net::ListenerSocketOptions& options,
              std::optional<net::SocketAddress> forward_to = std::nullopt, bool hbone = false) {
    acceptors_.push_back({net::open_listener(io_.get_executor(), address, options), direction, forward_to, hbone});
  }
  std::uint16_t port_of(std::size_t i) const { return acceptors_.at(i).acceptor.local_endpoint().port(); }

  // listen(2) on every socket of this worker (on the calling thread: a failure is the caller's),
  // then the accept loops start on the worker's thread.
  void start_listening(int backlog) {
    for (auto& l : acceptors_) net::start_listening(l.acceptor, backlog);
    boost::asio::post(io_, [this] { spawn_accept_loops(); });
  }

  void start(bool listening) {
    if (listening) spawn_accept_loops();
    // Until stop(): without accept loops yet (start_listening comes later) run() would find no
    // work and return at once, and the loops posted then would never run.
    work_.emplace(io_.get_executor());
    if (const auto stall = context_.options.test_faults.stall_worker_after; stall.count() > 0 && index_ == 0) {
      // Tests only: this worker's loop stops answering (a handler that never returns), as a
      // deadlock would; the liveness check must see it. It gives way to stop() only.
      stall_timer_.expires_after(stall);
      stall_timer_.async_wait([this](boost::system::error_code ec) {
        if (ec) return;
        spdlog::warn("test hook: worker {} stalls its loop until it is stopped", index_);
        while (!io_.stopped()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      });
    }
    thread_ = std::thread([this] {
      // Connections contain their own faults (serve_connection, the relay); what reaches here
      // came from elsewhere on the loop (a timer, the accept machinery), realistically
      // std::bad_alloc. asio leaves the io_context consistent after a handler throws and run()
      // resumes where it stopped, so the worker goes on: a dead worker would leave its share of
      // the SO_REUSEPORT group, and the capture rules, with nobody serving them.
      for (;;) {
        try {
          io_.run();
          return;
        } catch (const std::exception& e) {
          ProxyStats::add(context_.stats.worker_faults);
          spdlog::error("worker: a handler threw ({}); the worker goes on", e.what());
        }
      }
    });
  }

  boost::asio::any_io_executor executor() { return io_.get_executor(); }
  const WorkerLoad& load() const { return load_; }

  // Closing the acceptors ends the accept loops; established connections keep running.
  void stop_accepting() {
    boost::asio::post(io_, [this] {
      for (auto& l : acceptors_) {
        boost::system::error_code ignored;
        l.acceptor.close(ignored);
      }
      mesh_.shutdown();  // GOAWAY: pooled tunnels finish their streams, take no new ones
    });
  }

  void stop() {
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void spawn_accept_loops() {
    for (auto& l : acceptors_)
      if (l.acceptor.is_open())  // a stop_accepting() may have come first
        boost::asio::co_spawn(io_,
                              accept_loop(l.acceptor, l.direction, context_, l.forward_to, reserve_,
                                          l.hbone ? &mesh_ : nullptr),
                              boost::asio::detached);
  }

  struct Listener {
    tcp::acceptor acceptor;
    Direction direction;
    std::optional<net::SocketAddress> forward_to;  // a --forward listener's target
    bool hbone = false;                            // the HBONE (15008) listener
  };
  int index_;
  WorkerLoad load_;
  const snapshot::SnapshotStore& store_;
  AuthzConnections authz_connections_;  // this thread's connections to local workloads
  std::shared_ptr<const authz::PolicyIndex> authz_seen_;  // the index its connections were last decided on
  EndpointPicker picker_;  // this thread's random state for power-of-two choices
  KernelLocalAddressCheck local_addresses_;  // this thread's netlink socket for the loop guard
  DescriptorReserve reserve_;  // shared by this thread's accept loops, which never run at once
  WorkloadIndex names_;        // this thread's names for the connection records
  ConnectionContext context_;
  // Declared before the acceptors so it is destroyed after them; destroying it destroys the
  // connections still open: coroutines still connecting (their frames own their sockets) and
  // relays (destroyed by the relay's per-worker sweeper service).
  // Each socket of this worker is only ever touched by this worker's thread, so the reactor's
  // per-descriptor locks are pure cost; the scheduler keeps its lock because the control thread
  // posts (stop_accepting) and stops it.
  boost::asio::io_context io_{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
  // After io_: its pool's connections live on io_ and are closed before io_ goes.
  MeshWorker mesh_;
  std::vector<Listener> acceptors_;
  boost::asio::steady_timer stall_timer_{io_};  // TestFaults::stall_worker_after
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  std::thread thread_;
};

ProxyServer::ProxyServer(ProxyOptions options, const snapshot::SnapshotStore& store, ProxyStats& stats,
                         MeshOptions mesh)
    : options_(std::move(options)), mesh_(std::move(mesh)), store_(store), stats_(stats), outliers_(options_.outlier) {}

ProxyServer::~ProxyServer() { stop(); }

void ProxyServer::start(bool listen_now) {
  // splice(2) into a socket whose peer has gone raises SIGPIPE (it has no MSG_NOSIGNAL); the
  // relay handles EPIPE as a value, so the signal must never kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  // spdlog creates its registry and default logger on first use. Make that first use happen here,
  // before any worker exists: otherwise the first workers to log race the construction (safe by
  // the C++ static-init guard, but inside the uninstrumented libspdlog, so ThreadSanitizer
  // reports it; dsproxy's main() installs its logger first anyway, tests do not).
  spdlog::default_logger_raw();
  // An empty bind address: that family is off on this node, no listener of it.
  std::vector<net::IpAddress> binds;
  for (const auto* text : {&options_.bind_v4, &options_.bind_v6}) {
    if (text->empty()) continue;
    const auto ip = net::IpAddress::parse(*text);
    const bool v4_slot = text == &options_.bind_v4;
    if (!ip || ip->is_v4() != v4_slot)
      throw std::invalid_argument("bind address '" + *text + "' is not " + (v4_slot ? "IPv4" : "IPv6"));
    binds.push_back(*ip);
  }
  if (binds.empty()) throw std::invalid_argument("no bind address: neither IPv4 nor IPv6 is on");
  const net::ListenerSocketOptions socket_options{.transparent = options_.transparent, .listen = listen_now};
  validate_forwards(options_);

  // With port 0 (tests), the first worker's kernel-chosen ports are reused by the others so that
  // SO_REUSEPORT groups them as it does fixed ports.
  CapturePorts ports = options_.ports;
  std::vector<Forward> forwards = options_.forwards;
  for (int i = 0; i < std::max(1, options_.workers); ++i) {
    auto worker = std::make_unique<Worker>(options_, store_, stats_, outliers_, endpoint_states_, affinity_,
                                           std::random_device{}() + i, i, sinks_ ? sinks_(i) : nullptr, mesh_);
    std::size_t opened = 0;
    for (const auto& ip : binds) {
      worker->listen({ip, ports.outbound}, Direction::outbound, socket_options);
      if (ports.outbound == 0) ports.outbound = worker->port_of(opened);
      ++opened;
    }
    for (const auto& ip : binds) {
      worker->listen({ip, ports.inbound}, Direction::inbound, socket_options);
      if (ports.inbound == 0) ports.inbound = worker->port_of(opened);
      ++opened;
    }
    // HBONE: transparent like the capture listeners (its connections are captured to local pods'
    // port 15008; the accepted socket's local address names the pod).
    if (mesh_.identities) {
      for (const auto& ip : binds) {
        worker->listen({ip, mesh_.hbone_port}, Direction::inbound, socket_options, std::nullopt, true);
        if (mesh_.hbone_port == 0) mesh_.hbone_port = worker->port_of(opened);
        ++opened;
      }
    }
    // Explicitly addressed: plain listeners, no IP_TRANSPARENT needed or wanted.
    for (std::size_t f = 0; f < forwards.size(); ++f) {
      worker->listen(forwards[f].listen, Direction::outbound, {.transparent = false, .listen = listen_now},
                     forwards[f].target);
      if (forwards[f].listen.port == 0) forwards[f].listen.port = worker->port_of(opened);
      ++opened;
    }
    workers_.push_back(std::move(worker));
  }
  bound_ = ports;
  options_.forwards = forwards;
  // Loop protection compares destinations with the ports really bound.
  options_.ports = ports;
  for (auto& w : workers_) w->start(listen_now);
  started_ = true;
  listening_ = listen_now;
  std::string outbound, inbound;
  for (const auto& ip : binds) {
    outbound += (outbound.empty() ? "" : " and ") + net::SocketAddress{ip, ports.outbound}.to_string();
    inbound += (inbound.empty() ? "" : " and ") + net::SocketAddress{ip, ports.inbound}.to_string();
  }
  spdlog::info("proxy {}: outbound {}, inbound {}, {} worker(s)", listen_now ? "listening" : "bound", outbound,
               inbound, workers_.size());
  if (mesh_.identities)
    spdlog::info("HBONE: mTLS tunnels to other nodes' mesh pods; listening on port {} (both families)",
                 mesh_.hbone_port);
  else
    spdlog::info("HBONE: off (no --ca-cert/--ca-key or --cert-dir): traffic between nodes goes in plaintext");
  for (const auto& f : options_.forwards)
    spdlog::info("forwarding {} -> {} (explicit address, upstream from the node's own address)",
                 f.listen.to_string(), f.target.to_string());
}

void ProxyServer::start_listening() {
  if (!started_ || stopped_ || listening_.exchange(true)) return;
  for (auto& w : workers_) w->start_listening(net::ListenerSocketOptions{}.backlog);
  spdlog::info("proxy listening on ports {} and {}", bound_.outbound, bound_.inbound);
}

void ProxyServer::drain(std::chrono::milliseconds grace) {
  if (!started_ || stopped_) return;
  stop_accepting();
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (stats_.active_connections.load(std::memory_order_relaxed) > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const auto left = stats_.active_connections.load(std::memory_order_relaxed);
  if (left > 0) spdlog::info("drain: closing {} connection(s) still open after {} ms", left, grace.count());
  stop();
}

std::vector<boost::asio::any_io_executor> ProxyServer::worker_executors() {
  std::vector<boost::asio::any_io_executor> out;
  for (auto& w : workers_) out.push_back(w->executor());
  return out;
}

std::vector<ProxyServer::WorkerLoadView> ProxyServer::worker_loads() const {
  std::vector<WorkerLoadView> out;
  for (const auto& w : workers_)
    out.push_back({w->load().connections.load(std::memory_order_relaxed),
                   w->load().connecting.load(std::memory_order_relaxed)});
  return out;
}

void ProxyServer::snapshot_published() {
  // The control thread calls this while the front thread may be stopping the workers (drain).
  std::lock_guard lock(workers_mutex_);
  if (stopped_) return;
  for (auto& w : workers_) w->snapshot_published();
}

void ProxyServer::stop_accepting() {
  for (auto& w : workers_) w->stop_accepting();
}

void ProxyServer::stop() {
  std::lock_guard lock(workers_mutex_);
  if (stopped_) return;
  stopped_ = true;
  for (auto& w : workers_) w->stop();
  // Destroying the workers destroys their io_contexts and with them every suspended connection.
  workers_.clear();
}

}  // namespace dsproxy::proxy
