#include "proxy/mesh.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "hbone/authority.hpp"
#include "hbone/stream_relay.hpp"
#include "hbone/tls_stream.hpp"
#include "identity/identity_manager.hpp"
#include "identity/tls_contexts.hpp"
#include "net/io/transparent_socket.hpp"
#include "authz/policy_index.hpp"
#include "identity/spiffe_id.hpp"
#include "proxy/authz_connections.hpp"
#include "proxy/connect_scheduler.hpp"
#include "proxy/connection.hpp"
#include "proxy/connection_result.hpp"
#include "proxy/gauge_guard.hpp"
#include "proxy/workload_index.hpp"
#include "proxy/log_throttle.hpp"
#include "proxy/proxy_options.hpp"
#include "proxy/proxy_stats.hpp"
#include "proxy/upstream_connector.hpp"

namespace dsproxy::proxy {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using boost::system::error_code;
using snapshot::WorkloadProtocol;

namespace {

LogThrottle& tunnel_log() {
  static LogThrottle throttle;
  return throttle;
}

// Connects `socket` to `targets` (one address, or a pod's two: Happy Eyeballs between them) with
// the proxy's connect code.
awaitable<std::error_code> connect_to(tcp::socket& socket, BackendTargets targets, const ProxyOptions& options,
                                      const net::UpstreamSocketOptions& socket_options) {
  bool given = false;
  ConnectScheduler scheduler({options.attempt_delay, options.connect_timeout, 1}, [&]() -> std::optional<BackendTargets> {
    if (given) return std::nullopt;
    given = true;
    return targets;
  });
  const auto outcome = co_await connect_upstream(socket, scheduler, socket_options, {});
  co_return outcome.winner < 0 ? (outcome.error ? outcome.error : std::make_error_code(std::errc::host_unreachable))
                               : std::error_code{};
}

// An inbound stream's relay completion: the counters, the record (emitted when this goes: after
// it ran, or uncalled at the worker's teardown, then `shutdown`), and the stream's place in the
// worker's live list (left when this goes).
class InboundEnd {
 public:
  InboundEnd(ProxyStats& stats, ConnectionResult result, AuthzRegistration authz,
             GaugeGuard<std::atomic<std::uint64_t>> connection)
      : authz_(std::move(authz)),
        stats_(&stats),
        active_(&stats.active_connections),
        connection_(std::move(connection)),
        result_(std::move(result)) {}

  void operator()(hbone::StreamRelayResult r) {
    ProxyStats::add(stats_->bytes_to_upstream, r.bytes_to_socket);
    ProxyStats::add(stats_->bytes_to_downstream, r.bytes_to_stream);
    if (r.idle_timeout) ProxyStats::add(stats_->idle_timeouts);
    else if (r.reset) ProxyStats::add(stats_->resets_propagated);
    if (!result_.active()) return;
    auto& record = result_.record();
    // Towards the pod is the request direction: the tunnel's bytes.
    record.bytes_to_upstream = r.bytes_to_socket;
    record.bytes_to_downstream = r.bytes_to_stream;
    // The peer's reset (or its connection's end) is the client's; anything else on the socket
    // side is the pod's.
    result_.finish(r.revoked        ? EndReason::denied_by_policy
                   : r.idle_timeout ? EndReason::idle_timeout
                   : r.reset        ? (r.stream_reset_by_peer ? EndReason::client_reset : EndReason::upstream_reset)
                                    : EndReason::completed);
    if (r.revoked && record.policy.empty()) record.policy = std::string(authz_.revoked_by());
  }

 private:
  AuthzRegistration authz_;
  ProxyStats* stats_;
  GaugeGuard<ProxyStats::Counter> active_;
  GaugeGuard<std::atomic<std::uint64_t>> connection_;  // the worker's connection slot, held until the relay ends
  ConnectionResult result_;
};

// Baggage values become metric labels: only what a Kubernetes name or label value could be
// (no spaces, quotes or control bytes; at most 63 bytes) is taken, so a peer cannot put
// arbitrary text into them.
bool label_safe(const std::string& v) {
  if (v.size() > 63) return false;
  for (char c : v)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  return true;
}

constexpr std::size_t kMaxInterned = 1024;  // per worker, per table

LogThrottle& limit_log() {
  static LogThrottle throttle;
  return throttle;
}

}  // namespace

std::optional<TunnelPlan> plan_tunnel(const snapshot::ClusterSnapshot& snapshot, const net::IpAddress& client,
                                      const net::SocketAddress& target) {
  const snapshot::Workload* source = snapshot.workload(client);
  if (!source || !source->local || source->protocol != WorkloadProtocol::HBONE) return std::nullopt;
  const snapshot::Workload* destination = snapshot.workload(target.ip);
  if (!destination || destination->local || destination->protocol != WorkloadProtocol::HBONE) return std::nullopt;
  const std::string& td = snapshot.options().trust_domain;
  return TunnelPlan{source->identity(td), destination->identity(td), target, target.ip};
}

hbone::ConnectionPool::Hooks identity_pool_hooks(identity::IdentityManager& identities) {
  hbone::ConnectionPool::Hooks hooks;
  hooks.context_for = [&identities](const hbone::PoolKey& key) -> std::shared_ptr<SSL_CTX> {
    const auto id = identity::SpiffeId::parse(key.source_identity);
    if (!id) return nullptr;
    const auto contexts = identities.contexts(*id);
    if (!contexts) {
      identities.refresh_soon();  // a pod new to this node: its certificate is on its way
      return nullptr;
    }
    return contexts->client();
  };
  // The handshake itself fails for a server that is not the destination workload, so not a byte
  // of a tunnel goes to the wrong one; verify checks again after it, before first use.
  hooks.before_handshake = [](const hbone::PoolKey& key, SSL* ssl) {
    const auto expected = identity::SpiffeId::parse(key.destination_identity);
    return expected && identity::expect_peer_identity(ssl, *expected);
  };
  hooks.verify = [&identities](const hbone::PoolKey& key, SSL* ssl) {
    const auto expected = identity::SpiffeId::parse(key.destination_identity);
    const auto error = expected ? identity::check_peer_identity(ssl, *expected) : identity::PeerError::wrong_identity;
    if (error == identity::PeerError::none) {
      identity::report_handshake(*identities.stats(), identity::Side::client);
      return true;
    }
    identity::report_refusal(*identities.stats(), identity::Side::client, error,
                             key.destination.address().to_string(), ssl);
    return false;
  };
  // Most refusals of a server happen here, in the handshake (expect_peer_identity above makes a
  // wrong identity one of them): without this hook they were neither counted nor logged with
  // their reason.
  hooks.on_handshake_failure = [&identities](const hbone::PoolKey& key, SSL* ssl, boost::system::error_code ec) {
    const unsigned long openssl_error = ec.category() == asio::error::get_ssl_category() ? ec.value() : 0;
    identity::report_refusal(*identities.stats(), identity::Side::client,
                             identity::handshake_failure(ssl, openssl_error), key.destination.address().to_string(),
                             ssl);
  };
  return hooks;
}

MeshWorker::MeshWorker(asio::any_io_executor executor, const MeshOptions& mesh, const ProxyOptions& proxy,
                       const snapshot::SnapshotStore& store, ProxyStats& stats, WorkerLoad& load)
    : executor_(std::move(executor)), mesh_(mesh), proxy_(proxy), store_(store), stats_(stats), load_(load) {
  if (!enabled()) return;
  hbone::ConnectionPool::Hooks hooks = identity_pool_hooks(*mesh_.identities);
  hooks.dial = [this](const hbone::PoolKey& key, hbone::ConnectionPool::DialHandler handler) {
    dial(key, std::move(handler));
  };
  pool_ = hbone::ConnectionPool::create(executor_, mesh_.pool, std::move(hooks));
}

MeshWorker::~MeshWorker() {
  if (pool_) pool_->close();
  for (auto& weak : sessions_)
    if (auto session = weak.lock()) session->close();
}

std::shared_ptr<const std::string> MeshWorker::principal(const std::string& uri) {
  if (auto it = principals_.find(uri); it != principals_.end()) return it->second;
  auto shared = std::make_shared<const std::string>(uri);
  // Identities are the cluster's service accounts; past the bound a fresh string still labels
  // right, it only misses the series cache.
  if (principals_.size() < kMaxInterned) principals_.emplace(uri, shared);
  return shared;
}

std::shared_ptr<const WorkloadInfo> MeshWorker::baggage_source(const std::string& value) {
  const hbone::Baggage b = hbone::parse_baggage(value);
  if (b.ns.empty() || !label_safe(b.ns) || !label_safe(b.workload_name) || !label_safe(b.service_name) ||
      !label_safe(b.service_version))
    return nullptr;
  // Keyed by the parsed names (at most 4 x 63 bytes), never by the raw header a peer chose (up
  // to the header limit): the cache holds at most kMaxInterned small keys, and a value that does
  // not parse is never kept.
  std::string key = b.ns + '/' + b.workload_name + '/' + b.service_name + '/' + b.service_version;
  if (auto it = baggage_sources_.find(key); it != baggage_sources_.end()) return it->second;
  const std::string& workload = b.workload_name.empty() ? b.service_name : b.workload_name;
  auto info = std::make_shared<const WorkloadInfo>(
      WorkloadInfo{"", b.ns, workload.empty() ? "unknown" : workload,
                   b.service_name.empty() ? (workload.empty() ? "unknown" : workload) : b.service_name,
                   b.service_version.empty() ? "latest" : b.service_version});
  // Past the bound a fresh object still labels right; it only misses the series cache.
  if (baggage_sources_.size() < kMaxInterned) baggage_sources_.emplace(std::move(key), info);
  return info;
}

// ztunnel's baggage for the source workload: its cluster, namespace, workload (as a
// "deployment": dsproxy does not know the owner's kind, and ztunnel's own parser reads
// deployment, pod, job and cronjob), canonical service and revision.
std::string MeshWorker::baggage_for(const net::IpAddress& client) {
  if (!names_) return {};
  names_->refresh(store_.current());
  const auto w = names_->pod(client);
  if (!w) return {};
  return hbone::format_baggage(hbone::Baggage{.cluster = "Kubernetes",
                                              .ns = w->ns,
                                              .workload_type = "deployment",
                                              .workload_name = w->workload,
                                              .service_name = w->app,
                                              .service_version = w->version,
                                              .region = {},
                                              .zone = {}});
}

void MeshWorker::shutdown() {
  if (pool_) pool_->shutdown();
}

// The outer connection: from the node's own address (never captured: SO_MARK), to the pod's
// address of the key's family, racing its other-family address when that one does not answer.
void MeshWorker::dial(const hbone::PoolKey& key, hbone::ConnectionPool::DialHandler handler) {
  const net::SocketAddress primary = net::to_socket_address(key.destination);
  BackendTargets targets{{primary}, -1};
  if (const auto* w = store_.current()->workload(primary.ip))
    if (const auto alt = w->address(net::other(primary.ip.family())))
      targets.addresses.push_back(net::SocketAddress{*alt, primary.port});
  auto socket = std::make_shared<tcp::socket>(executor_);
  asio::co_spawn(
      executor_,
      [this, socket, targets]() -> awaitable<std::error_code> {
        net::UpstreamSocketOptions options;
        options.mark = proxy_.upstream_mark;
        co_return co_await connect_to(*socket, targets, proxy_, options);
      },
      [socket, handler = std::move(handler)](std::exception_ptr e, std::error_code ec) mutable {
        if (e) ec = std::make_error_code(std::errc::not_enough_memory);
        handler(error_code(ec), std::move(*socket));
      });
}

awaitable<std::shared_ptr<hbone::Stream>> MeshWorker::open_tunnel(const TunnelPlan& plan,
                                                                  const net::SocketAddress& client,
                                                                  std::string_view service_host) {
  hbone::PoolKey key{plan.source_identity, plan.destination_identity,
                     net::to_endpoint({plan.outer, mesh_.hbone_port})};
  hbone::Headers headers{{"forwarded", hbone::format_forwarded(net::to_endpoint(client), service_host)}};
  if (std::string baggage = baggage_for(client.ip); !baggage.empty())
    headers.push_back({"baggage", std::move(baggage)});
  const std::string authority = hbone::format_authority(net::to_endpoint(plan.target));
  auto token = asio::as_tuple(use_awaitable);
  auto [ec, status, stream] =
      co_await asio::async_initiate<decltype(token), void(error_code, int, std::shared_ptr<hbone::Stream>)>(
          [&](auto handler) { pool_->open_stream(key, authority, std::move(headers), std::move(handler)); }, token);
  if (ec || !stream) {
    ProxyStats::add(stats_.tunnel_failures);
    if (const auto held = tunnel_log().admit(std::chrono::steady_clock::now()))
      spdlog::warn("hbone: {} -> {} via {}: no tunnel: {}{} ({} similar not logged)", client.to_string(), authority,
                   plan.destination_identity, ec ? ec.message() : "no stream",
                   status ? " (HTTP " + std::to_string(status) + ")" : "", *held);
    co_return nullptr;
  }
  ProxyStats::add(stats_.tunnels_outbound);
  co_return stream;
}

awaitable<void> MeshWorker::serve_hbone(tcp::socket socket, tcp::endpoint peer) {
  // Counted from accept: the accept loop checked both limits just before spawning this.
  auto connection = std::make_shared<GaugeGuard<std::atomic<std::uint64_t>>>(&load_.connections);
  GaugeGuard<std::atomic<std::uint64_t>> handshaking(&load_.handshaking);
  ProxyStats::add(stats_.hbone_accepted);
  error_code ec;
  const auto local = socket.local_endpoint(ec);
  if (ec) co_return;
  const net::SocketAddress destination = net::to_socket_address(local);
  const auto snapshot = store_.current();
  const snapshot::Workload* pod = snapshot->workload(destination.ip);
  // Only this node's mesh pods have a certificate here; anything else is not ours to answer.
  if (!pod || !pod->local || pod->protocol != WorkloadProtocol::HBONE) {
    ProxyStats::add(stats_.tunnels_refused);
    net::reset_connection(socket);
    co_return;
  }
  const auto id = identity::SpiffeId::make(snapshot->options().trust_domain, pod->ns, pod->service_account);
  const auto contexts = id ? mesh_.identities->contexts(*id) : nullptr;
  if (!contexts) {
    mesh_.identities->refresh_soon();
    ProxyStats::add(stats_.tunnels_refused);
    net::reset_connection(socket);
    co_return;
  }
  std::unique_ptr<hbone::TlsStream> io = hbone::make_tls_stream(std::move(socket), contexts->server(), false);
  if (!io) co_return;
  // A peer that connects and says nothing must not hold a descriptor forever.
  asio::steady_timer deadline(executor_);
  deadline.expires_after(mesh_.pool.session.handshake_timeout);
  // The expiry may already be queued when the handshake completes (cancel() does not recall a
  // queued handler), and the stream may be gone by the time it runs: the handler touches the
  // socket only while the handshake is still pending, which the shared flag says.
  auto pending = std::make_shared<bool>(true);
  auto* raw = &io->next_layer();
  deadline.async_wait([raw, pending](error_code e) {
    if (!e && *pending) {
      error_code ignored;
      raw->close(ignored);
    }
  });
  auto [hs] = co_await io->async_handshake(asio::ssl::stream_base::server, asio::as_tuple(use_awaitable));
  *pending = false;
  deadline.cancel();
  handshaking.release();
  SSL* ssl = io->native_handle();
  auto& tls_stats = *mesh_.identities->stats();
  if (hs) {
    const unsigned long openssl_error = hs.category() == asio::error::get_ssl_category() ? hs.value() : 0;
    identity::report_refusal(tls_stats, identity::Side::server, identity::handshake_failure(ssl, openssl_error),
                             peer.address().to_string() + ":" + std::to_string(peer.port()), ssl);
    ProxyStats::add(stats_.tunnels_refused);
    co_return;
  }
  const auto peer_id = identity::peer_identity(ssl);
  if (!peer_id || !hbone::negotiated_h2(ssl)) {
    identity::report_refusal(tls_stats, identity::Side::server,
                             peer_id ? identity::PeerError::protocol : identity::PeerError::no_identity,
                             peer.address().to_string(), ssl);
    ProxyStats::add(stats_.tunnels_refused);
    co_return;
  }
  identity::report_handshake(tls_stats, identity::Side::server);
  hbone::ConnectionInfo info{peer_id->uri(), local, peer};
  // A connection with no stream is closed after the relays' idle timeout (never sooner than
  // the pool's, so a conforming client closes its idle connections first: no GOAWAY race).
  hbone::SessionOptions session_options = mesh_.pool.session;
  session_options.idle_timeout = std::max(proxy_.idle_timeout, mesh_.pool.idle_timeout);
  auto session = hbone::Session::make_server(
      std::move(io), std::move(info), session_options,
      [this, destination](std::shared_ptr<hbone::IncomingRequest> request) {
        asio::co_spawn(executor_, handle_request(std::move(request), destination), asio::detached);
      });
  // The session answers a non-CONNECT request (400) and ends a protocol violation itself (and logs
  // them); they are counted here with the listener's other refusals.
  ProxyStats* stats = &stats_;
  session->set_refusal_observer([stats](hbone::SessionRefusal r) {
    ProxyStats::add(r == hbone::SessionRefusal::bad_request ? stats->tunnels_refused : stats->hbone_protocol_errors);
  });
  session->hold_until_closed(std::move(connection));
  session->start();
  // Expired entries are dropped whenever the list has doubled since: amortised O(1) per session.
  if (sessions_.size() >= 2 * sessions_kept_) {
    std::erase_if(sessions_, [](const auto& w) { return w.expired(); });
    sessions_kept_ = std::max<std::size_t>(sessions_.size(), 16);
  }
  sessions_.push_back(session);
}

awaitable<void> MeshWorker::handle_request(std::shared_ptr<hbone::IncomingRequest> request,
                                           net::SocketAddress outer_destination) {
  const auto snapshot = store_.current();
  const net::SocketAddress target = net::to_socket_address(request->target());
  const snapshot::Workload* pod = snapshot->workload(target.ip);
  const snapshot::Workload* addressed = snapshot->workload(outer_destination.ip);
  const std::string& trust_domain = snapshot->options().trust_domain;
  // The client the peer names in `forwarded` (else the outer connection's peer, for the record).
  std::optional<net::SocketAddress> forwarded;
  if (const std::string* f = hbone::find_header(request->headers(), "forwarded"))
    if (const auto ep = hbone::parse_forwarded_for(*f)) forwarded = net::to_socket_address(*ep);
  const net::SocketAddress claimed = forwarded ? *forwarded : net::to_socket_address(request->connection().remote);

  // The stream's record from here, whatever answer it gets: ztunnel's reporter=destination view
  // (dst.addr is the pod's address and port the tunnel leads to).
  ConnectionResult result(sink_, Direction::inbound, claimed, target);
  if (result.active()) {
    auto& r = result.record();
    r.protocol = RequestProtocol::hbone;
    r.security = SecurityPolicy::mutual_tls;  // the peer's identity was proven by the handshake
    r.source_principal = principal(request->connection().peer_identity);
    if (pod && pod->local) r.destination_principal = principal(pod->identity(trust_domain));
    if (names_ && result.wants_names()) {
      names_->refresh(snapshot);
      r.source_workload = names_->pod(claimed.ip);
      r.destination_workload = names_->pod(target.ip);
      // Only a source that is no workload of ours is named by what the peer says of itself.
      if (!r.source_workload)
        if (const std::string* b = hbone::find_header(request->headers(), "baggage")) r.source_workload = baggage_source(*b);
    }
  }

  // The tunnel leads to the pod the connection was addressed to, and nowhere else: never an
  // open relay to another address, not even another pod of this node.
  if (!pod || !pod->local || pod != addressed) {
    ProxyStats::add(stats_.tunnels_refused);
    result.finish(EndReason::rejected_forbidden_destination);
    request->reject(400);
    co_return;
  }
  // The pod is dialled from the original client's address, which the peer names in `forwarded`.
  // That is a claim, so it must name a workload whose identity is the one the peer proved in
  // the handshake: anything else (no header, a node, ClusterIP or outside address, another
  // workload) would let a peer choose the source the pod and its NetworkPolicy see.
  const snapshot::Workload* from = forwarded ? snapshot->workload(forwarded->ip) : nullptr;
  if (!from || from->identity(trust_domain) != request->connection().peer_identity) {
    ProxyStats::add(stats_.tunnels_refused);
    result.finish(EndReason::rejected_source_identity);
    request->reject(401);
    co_return;
  }
  // The client's own address of the target's family (the Service's policy chose the family; a
  // client dialling the other family's ClusterIP is the same pod).
  const std::optional<net::IpAddress> client = from->address(target.ip.family());
  if (!client) {
    ProxyStats::add(stats_.tunnel_failures);
    result.finish(EndReason::rejected_no_endpoint_for_family);
    request->reject(503);
    co_return;
  }
  // AuthorizationPolicy, with the principal the peer proved (ztunnel enforces here, at the
  // destination's node).
  std::optional<authz::ConnectionAttributes> authorized;
  if (const authz::Workload* w = snapshot->authz().workload(target.ip)) {
    const auto id = identity::SpiffeId::parse(request->connection().peer_identity);
    authz::ConnectionAttributes c{*client, target.ip, target.port, std::nullopt};
    if (id) c.source_identity = authz::SourceIdentity{id->trust_domain, id->ns, id->service_account};
    const authz::Decision d = authz::decide(*w, c);
    if (d.denied()) {
      log_authz_denial(Direction::inbound, c, *w, d, "answered 401");
      ProxyStats::add(stats_.tunnels_refused);
      result.finish(EndReason::denied_by_policy);
      if (result.active() && d.policy) result.record().policy = d.policy->key;
      request->reject(401);
      co_return;
    }
    log_authz_notes(Direction::inbound, c, *w, d);
    authorized = c;
  }
  // The stream holds an upstream socket: it is one more connection of this worker, and while it
  // connects one more pending connect, under the same limits as plaintext connections. Past
  // them: 503 at once, counted (the peer's pool may retry elsewhere), never queued.
  if (const auto full = load_.full(proxy_.limits, {WorkerLimit::connections, WorkerLimit::pending_connects})) {
    count_refusal(*full, proxy_.limits, stats_, &limit_log(), "tunnelled HBONE streams are answered 503",
                  request->connection().remote.address());
    result.finish(EndReason::rejected_overload);
    request->reject(503);
    co_return;
  }
  GaugeGuard<std::atomic<std::uint64_t>> connection(&load_.connections);
  std::optional<GaugeGuard<std::atomic<std::uint64_t>>> connecting(std::in_place, &load_.connecting);
  tcp::socket upstream(executor_);
  net::UpstreamSocketOptions options;
  options.mark = proxy_.upstream_mark;
  options.source = *client;
  // Named, not a temporary in the co_await expression (GCC 12 miscompiles brace-initialised
  // aggregates there: "array used as initializer").
  BackendTargets targets;
  targets.addresses.push_back(target);
  const auto ec = co_await connect_to(upstream, std::move(targets), proxy_, options);
  connecting.reset();
  if (request->cancelled()) {
    net::reset_connection(upstream);  // the pod must not read a clean, complete connection
    result.finish(EndReason::client_reset);
    co_return;
  }
  if (ec) {
    ProxyStats::add(stats_.tunnel_failures);
    result.finish(ec == std::errc::timed_out ? EndReason::connect_timeout : EndReason::connect_failed);
    request->reject(503);
    co_return;
  }
  auto stream = request->accept();
  if (!stream) {
    net::reset_connection(upstream);
    result.finish(EndReason::client_reset);
    co_return;
  }
  ProxyStats::add(stats_.tunnels_inbound);
  if (result.active()) {
    result.record().connected = true;
    result.record().endpoint = target;
    result.mark_opened();
  }
  // A stream to a pod with policies joins the worker's live list: a policy change re-decides it
  // and, when now denied, resets it through the handle (RST_STREAM to the peer, RST to the pod).
  AuthzRegistration registration;
  std::shared_ptr<hbone::StreamRelayHandle> handle;
  std::uint64_t authz_id = 0;
  if (authorized && authz_) {
    handle = std::make_shared<hbone::StreamRelayHandle>();
    authz_id = authz_->add({*authorized, Direction::inbound, nullptr, handle, {}});
    registration = AuthzRegistration(*authz_, authz_id);
  }
  hbone::StreamRelayOptions relay_options;
  relay_options.idle_timeout = proxy_.idle_timeout;
  hbone::start_stream_relay(std::move(upstream), std::move(stream), relay_options,
                            InboundEnd(stats_, std::move(result), std::move(registration), std::move(connection)),
                            handle);
  // A policy change published while this stream was being connected: the walk it caused may
  // have missed it, so it is decided once more against the current index.
  if (authz_id != 0) {
    const auto now = store_.current();
    if (now->authz_index() != snapshot->authz_index()) authz_->reevaluate_one(authz_id, now->authz());
  }
}

}  // namespace dsproxy::proxy
