#include "daemon/daemon.hpp"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>

#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <fstream>
#include <future>
#include <optional>

#include "admin/admin_server.hpp"
#include "admin/config_dump.hpp"
#include "admin/limits_status.hpp"
#include "admin/metrics_exporter.hpp"
#include "proxy/connection_telemetry.hpp"
#include "daemon/control_plane.hpp"
#include "daemon/handoff.hpp"
#include "identity/identity_error.hpp"
#include "identity/identity_manager.hpp"

#include "daemon/liveness.hpp"
#include "proxy/proxy_server.hpp"
#include "redirect/command_runner.hpp"
#include "redirect/iptables_backend.hpp"
#include "resolver/dns_proxy.hpp"
#include "snapshot/snapshot_store.hpp"
#include "sources/file_source.hpp"
#include "sources/kubernetes/api_server_config.hpp"
#include "sources/kubernetes/kubernetes_source.hpp"

namespace dsproxy::daemon {

DaemonOptions restrict_to_families(DaemonOptions options, const redirect::NodeFamilies& families) {
  using net::Family;
  options.redirect_options.ipv4 = families.has(Family::v4);
  options.redirect_options.ipv6 = families.has(Family::v6);
  if (!families.has(Family::v4)) options.proxy.bind_v4.clear();
  if (!families.has(Family::v6)) options.proxy.bind_v6.clear();
  std::erase_if(options.dns.bind, [&](const std::string& text) {
    const auto ip = net::IpAddress::parse(text);
    return ip && !families.has(ip->family());
  });
  options.admin_v4 = families.has(Family::v4);
  options.admin_v6 = families.has(Family::v6);
  return options;
}

namespace {

namespace asio = boost::asio;

// Every relayed connection costs two descriptors (plus two per pipe while bytes move); a shell's
// default soft limit of 1024 would cap the proxy at a few hundred connections.
void raise_descriptor_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
  const auto before = limit.rlim_cur;
  limit.rlim_cur = limit.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &limit) == 0)
    spdlog::info("descriptor limit raised from {} to {}", before, limit.rlim_cur);
}

// A listener that closes hands the connections in its accept queue (and the handshakes in
// flight) to another listener of its SO_REUSEPORT group only with net.ipv4.tcp_migrate_req=1
// (Linux 5.14+; it covers IPv6 too); otherwise the kernel resets them. That is the one moment of
// a handoff where a client could see a failure: measured across a listener swap, 0 failures in
// 10,600 connections with it, 1 reset without. Per network namespace; a container usually sees
// /proc/sys read-only, so the node must set it (deploy/daemonset.yaml says how): a warning then.
void enable_request_migration() {
  const char* path = "/proc/sys/net/ipv4/tcp_migrate_req";
  std::string value;
  if (std::ifstream in(path); !(in >> value)) {
    spdlog::warn("{} is missing (kernel older than 5.14?): a handoff to a successor may reset the connections "
                 "queued on the old listeners", path);
    return;
  }
  if (value == "1") return;
  if (std::ofstream out(path); out << "1\n" << std::flush) {
    spdlog::info("net.ipv4.tcp_migrate_req set to 1: queued connections move to a successor's listeners");
    return;
  }
  spdlog::warn("net.ipv4.tcp_migrate_req is {} and cannot be set here ({}): set it to 1 on the node, or a "
               "handoff to a successor may reset the connections queued on the old listeners",
               value, std::strerror(errno));
}

class Daemon {
 public:
  explicit Daemon(DaemonOptions options) : options_(std::move(options)) {}

  int run() {
    // Signal handling first, before anything that runs a program or could install a rule: a
    // signal from here on is held by asio until the front loop runs, and then stops the start or
    // drains, and removes whatever was installed. Also first because a SIGINT or SIGHUP that came
    // earlier would be lost rather than fatal when the parent left it ignored (a shell's
    // background job ignores SIGINT), and the start would carry on as if nothing happened.
    asio::signal_set signals(front_, SIGINT, SIGTERM, SIGHUP);
    wait_for_signal(signals);

    // Once, before anything binds or installs: a family that is off is left out everywhere,
    // said in one line here and nowhere else. Picked up again only by a restart.
    const auto families = redirect::detect_node_families();
    if (const auto off = redirect::describe_off_families(families); !off.empty()) {
      if (!families.v4.on && !families.v6.on) {
        spdlog::error("cannot start: {}", off);
        return 2;
      }
      spdlog::warn("{}", off);
    }
    options_ = restrict_to_families(std::move(options_), families);
    // Also once, read-only: the rules go to the iptables backend the node's rules are in.
    if (options_.redirect) spdlog::info("{}", redirect::resolve_iptables_backend(options_.redirect_options, runner_));
    raise_descriptor_limit();
    if (options_.redirect) enable_request_migration();

    // Before any rule: who owns them on this node (handoff.hpp). The name carries the chain
    // prefix, so instances managing different rule sets never meet.
    handoff_.emplace(front_, "dsproxy-" + options_.redirect_options.chain_prefix + "-handoff",
                     Handoff::Callbacks{
                         .successor_pending = [this](bool pending) { successor_pending_ = pending; },
                         .takeover_requested = [this](std::function<void()> released) { on_takeover(std::move(released)); },
                     });
    handoff_->acquire();

    // Readers (workers, DNS, admin) always find a snapshot: an empty one until the first sync.
    const snapshot::ClusterSnapshot::Options snapshot_options{options_.node, options_.cluster_domain,
                                                              options_.fallback_default, options_.zone,
                                                              options_.identity.trust_domain,
                                                              options_.authz_root_namespace};
    // With mTLS, TCP to this node's pods' HBONE port is captured to our HBONE listener.
    if (options_.identity.enabled()) options_.redirect_options.hbone_port = options_.hbone_port;
    store_.publish(snapshot::ClusterSnapshot::build({}, snapshot_options));

    ControlPlaneOptions cp;
    cp.snapshot = snapshot_options;
    cp.redirect = options_.redirect;
    cp.redirect_options = options_.redirect_options;
    cp.test_build_delay = options_.test_build_delay;
    // Hostname endpoints resolve through the node's nameservers (or --dns-upstream) whether or
    // not the pods' DNS is captured.
    resolver::AresOptions ares;
    ares.servers = options_.dns.upstreams;
    ares.resolv_conf = options_.dns.resolv_conf;
    ares.mark = options_.dns.mark;
    cp.hostnames = ares;
    control_plane_.emplace(std::move(cp), store_, runner_,
                           ControlPlane::Callbacks{
                               .ready = [this] { asio::post(front_, [this] { on_ready(); }); },
                               .published =
                                   [this] {
                                     // A new local pod wants its certificate now, not at the
                                     // identity thread's next poll.
                                     if (identity_) identity_->refresh_soon();
                                     // Workers re-decide their connections to local pods (posted).
                                     // server_ is set before the control plane starts and the
                                     // control plane is joined before the server goes.
                                     if (server_) server_->snapshot_published();
                                   },
                               .fatal = [this](int code) { asio::post(front_, [this, code] { on_fatal(code); }); },
                               .serving = [this] { return serving(); },
                           });
    try {
      add_sources();
      start_identities();
    } catch (const std::exception& e) {
      spdlog::error("cannot start: {}", e.what());
      return 2;
    }

    proxy::ProxyServer server(options_.proxy, store_, stats_,
                              proxy::MeshOptions{.identities = identity_ ? &*identity_ : nullptr,
                                                 .hbone_port = options_.hbone_port});
    server.set_connection_sinks([this](int worker) { return telemetry_.sink(worker); });
    admin::AdminServer admin(front_.get_executor());
    server_ = &server;
    admin_ = &admin;
    try {
      // Bound now (a port that cannot be had stops the start here), listening only once the
      // first snapshot is published (serving()).
      server.start(/*listen_now=*/false);
      serve_admin(admin);
    } catch (const std::exception& e) {
      spdlog::error("cannot start: {}", e.what());
      exit_code_ = 4;
      shutdown(server, admin);
      return exit_code_;
    }

    control_plane_->start();
    start_liveness(server);
    expire_metric_series();
    try {
      front_.run();
    } catch (const std::exception& e) {
      // Only the front loop's plain callbacks (DNS, admin) can throw here, realistically
      // bad_alloc. Whatever it was, the capture rules must not outlive us: a node whose traffic
      // is diverted to a dead proxy is black-holed.
      spdlog::critical("front loop failed: {}; removing the capture rules and exiting", e.what());
      exit_code_ = 5;
    }
    shutdown(server, admin);
    return exit_code_;
  }

 private:
  // Before any listener or rule: a configuration that cannot work stops the start here.
  void add_sources() {
    if (!options_.config_path.empty())
      control_plane_->add_source(std::make_unique<sources::FileSource>(
          control_plane_->io(), sources::FileSourceOptions{options_.config_path, options_.config_poll},
          *control_plane_));
    if (options_.kubernetes) {
      namespace k8s = sources::kubernetes;
      k8s::KubernetesSourceOptions k;
      k.server = !options_.kubeconfig.empty()
                     ? k8s::kubeconfig_config(options_.kubeconfig)
                     : k8s::in_cluster_config(options_.service_account_dir.empty() ? k8s::kDefaultServiceAccountDir
                                                                                   : options_.service_account_dir);
      k.node_name = options_.node;
      control_plane_->add_source(
          std::make_unique<k8s::KubernetesSource>(control_plane_->io(), std::move(k), *control_plane_));
    }
  }

  // mTLS: the identity thread issues (or reads) the certificates of this node's pods and keeps
  // them and the trust bundle current. Which pods are local comes from the published snapshot,
  // read once per poll; until the first sync it is empty, and the identities follow within a
  // poll of it. Without a certificate source nothing changes: plaintext as before.
  void start_identities() {
    if (!options_.identity.enabled()) {
      spdlog::info("mTLS off: no certificates configured (give --ca-cert/--ca-key or --cert-dir)");
      return;
    }
    const std::string trust_domain = options_.identity.trust_domain;
    identity_.emplace(options_.identity, [this, trust_domain] {
      std::set<identity::SpiffeId> wanted;
      for (const auto& pod : store_.current()->node_pods())
        if (auto id = identity::SpiffeId::make(trust_domain, pod.ns, pod.service_account)) wanted.insert(*id);
      return wanted;
    });
    identity_->start();
  }

  void shutdown(proxy::ProxyServer& server, admin::AdminServer& admin) {
    // The control plane first: once it is joined nothing installs or updates a rule any more,
    // and the rules can be removed whatever moment of its start it was stopped in. The rules go
    // before the listeners: a captured SYN that finds no listener is dropped, and its client
    // would wait a second for the retry; without the rules it goes straight to its destination.
    // Superseded, there is nothing to remove (the successor owns the rules).
    control_plane_->stop();
    if (identity_) identity_->stop();
    if (liveness_) liveness_->stop();
    control_plane_->remove_rules(owns_node_rules());
    server.stop();
    stop_dns();
    admin.close();
    if (handoff_) handoff_->close();
    server_ = nullptr;
    admin_ = nullptr;
    spdlog::info("dsproxy stopped");
  }

  // The owner removes the node's rules at exit, also those it had no time to install itself; a
  // successor that has not taken over yet, or an instance that was superseded, removes nothing.
  // Superseded (or a successor stopped in the middle of its takeover): only if no live instance
  // holds the ownership name any more, i.e. the successor died; then the last one out cleans up
  // rather than leave rules that divert to nobody.
  bool owns_node_rules() {
    if (!handoff_) return false;
    if (handoff_->role() == Handoff::Role::owner && !superseded_) return serving_;
    const bool orphaned = handoff_->claim_if_unowned();
    if (orphaned) spdlog::warn("handoff: no live dsproxy owns the capture rules any more; removing them");
    return orphaned;
  }

  // On the control-plane thread, between the first publish and the rule install: listen, and as a
  // successor have the owner let go of the rules. Waits for the front thread, but gives up as
  // soon as the control plane is stopping (SIGTERM during the start): the front thread then
  // joins it and would otherwise wait for us forever.
  bool serving() {
    auto result = std::make_shared<std::promise<bool>>();
    auto future = result->get_future();
    asio::post(front_, [this, result] { begin_serving([result](bool ok) { result->set_value(ok); }); });
    while (future.wait_for(std::chrono::milliseconds(50)) == std::future_status::timeout)
      if (control_plane_->stopping()) return false;
    return future.get();
  }

  void begin_serving(std::function<void(bool)> done) {
    if (draining_ || !server_) return done(false);
    try {
      server_->start_listening();
      if (options_.dns.enabled && !dns_) {
        dns_.emplace(front_, options_.dns, store_);
        dns_->start();
      }
    } catch (const std::exception& e) {
      spdlog::error("cannot start: {}", e.what());
      on_fatal(4);
      return done(false);
    }
    serving_ = true;
    if (handoff_ && handoff_->role() == Handoff::Role::successor) {
      // Long enough for an owner whose control plane is in the middle of a slow build.
      handoff_->take_over(std::chrono::seconds(15), [done = std::move(done)](bool) { done(true); });
      return;
    }
    done(true);
  }

  // Owner, front thread: a successor is serving and wants the rules.
  void on_takeover(std::function<void()> released) {
    control_plane_->relinquish_rules([this, released = std::move(released)]() mutable {
      // dispatch: after the capture release the control plane answers at once, here on the front
      // thread; a post could then be overtaken by a drain step that stops the front loop, and we
      // would exit still the owner, removing the successor's rules.
      asio::dispatch(front_, [this, released = std::move(released)] {
        superseded_ = true;
        successor_pending_ = false;
        // The kubelet's probes (and admin requests) on the shared ports go to the successor only.
        if (admin_) admin_->close();
        released();
        if (draining_) drain_step();
      });
    });
  }

  void on_ready() {
    if (draining_) return;
    ready_.store(true, std::memory_order_release);
  }

  void on_fatal(int code) {
    if (exit_code_ == 0) exit_code_ = code;
    ready_.store(false, std::memory_order_release);
    front_.stop();
  }

  void wait_for_signal(asio::signal_set& signals) {
    signals.async_wait([this, &signals](boost::system::error_code ec, int signo) {
      if (ec) return;
      if (signo == SIGHUP) {
        if (control_plane_) control_plane_->resync("SIGHUP");
        wait_for_signal(signals);
        return;
      }
      wait_for_signal(signals);
      if (draining_) return;
      draining_ = true;
      ready_.store(false, std::memory_order_release);  // readiness fails first so nothing new is sent our way
      drain_deadline_ = std::chrono::steady_clock::now() + options_.drain_grace;
      if (!serving_) {
        // Still starting: nothing listens, nothing of ours is installed (or the control plane is
        // installing it right now and shutdown() removes it once joined).
        spdlog::info("signal {} during the start: stopping", signo);
        front_.stop();
        return;
      }
      spdlog::info("signal {}: draining for up to {} ms ({})", signo, options_.drain_grace.count(),
                   superseded_ ? "a successor serves new connections"
                               : "serving new connections until the connections end, the grace runs out or a "
                                 "successor takes over");
      drain_step();
    });
  }

  // The drain, one step per 50 ms on the front loop (the admin API keeps answering, readiness 503):
  //   superseded (a successor listens and owns the rules): stop accepting at once (the kernel moves
  //     the queued connections to the successor's listeners), let the open ones finish;
  //   owner with no successor: keep capturing and serving new connections, so none is stalled or
  //     black-holed, until the open connections have ended (or the grace runs out; or a
  //     successor takes over); then remove the capture first, so new connections go straight to
  //     their destination, and stop accepting after that;
  //   owner with a successor starting: keep serving and wait for it to take over.
  // When the grace runs out, what is still open is reset (SO_LINGER 0), never closed with a FIN.
  void drain_step() {
    drain_timer_.cancel();
    const auto now = std::chrono::steady_clock::now();
    const auto active = stats_.active_connections.load(std::memory_order_relaxed);
    if (superseded_ || released_capture_) {
      if (!accepting_stopped_ && now >= accept_until_) {
        accepting_stopped_ = true;
        if (server_) server_->stop_accepting();
        stop_dns();
      }
      if (accepting_stopped_ && (active == 0 || now >= drain_deadline_)) {
        if (active > 0) spdlog::info("drain: the grace ran out; resetting {} connection(s) still open", active);
        if (server_) server_->stop();
        front_.stop();
        return;
      }
    } else if (now >= drain_deadline_ || (active == 0 && !successor_pending_)) {
      // No successor: a staged removal (the control plane is stopped first so that nothing
      // reinstalls the rules). The capture of new connections goes first, so new SYNs go
      // straight to their destination; the socket divert and the policy routing stay, so a
      // handshake that straddles the release (SYN captured, the client's ACK not yet) still
      // reaches our half-open socket (without the divert its ACK is early-demuxed to that socket
      // and ip_forward drops it: a lost connection). The listeners keep accepting for
      // kReleaseSettle, long enough for such a handshake to complete and be accepted, then
      // close; what they accepted is served until it ends (or the grace, extended to cover the
      // settle, runs out); the rest of the rules goes at exit (shutdown()), after the last
      // connection, since the divert is what carries its packets.
      spdlog::info("drain: {}; releasing the capture", active == 0 ? "no connection left" : "the grace ran out");
      control_plane_->stop();
      if (!control_plane_->release_capture(owns_node_rules())) {
        // A family still captured (nothing would listen for its SYNs once the listeners close)
        // or still exempt from conntrack with no capture (its new ClusterIP connections would go
        // nowhere): the staged release cannot be trusted. Remove every rule now, before the
        // listeners close (shutdown() does both in that order): what is lost is what the drain
        // was about to lose anyway (nothing open, or the grace ran out), plus a handshake
        // straddling this moment, whose client retries.
        spdlog::error("drain: the staged capture release failed; removing every rule now");
        front_.stop();
        return;
      }
      released_capture_ = true;
      // The settle counts from the end of the release (stop() and the iptables calls may take a
      // while): that is when the last captured SYN can have arrived.
      accept_until_ = std::chrono::steady_clock::now() + kReleaseSettle;
      drain_deadline_ = std::max(drain_deadline_, accept_until_ + kReleaseSettle);
      drain_step();
      return;
    }
    drain_timer_.expires_after(std::chrono::milliseconds(50));
    drain_timer_.async_wait([this](boost::system::error_code ec) {
      if (!ec) drain_step();
    });
  }

  void serve_admin(admin::AdminServer& admin) {
    auto api = [this](std::string_view path) -> admin::AdminResponse {
      if (path == "/config_dump") {
        const auto snapshot = store_.current();
        // The endpoints' runtime states for exactly this snapshot (a no-op when a worker synced
        // them already; O(changed) otherwise).
        if (server_) server_->endpoint_states().sync(snapshot);
        admin::DumpContext context{*snapshot, options_.proxy, stats_, store_.generation(), dns_stats()};
        context.endpoint_states = server_ ? &server_->endpoint_states() : nullptr;
        context.limits = limits_status();
        context.control_plane = boost::json::object{{"synced", control_plane_->synced()},
                                                    {"builds", control_plane_->builds()},
                                                    {"buildFailures", control_plane_->build_failures()},
                                                    {"sources", control_plane_->sources_status()}};
        if (identity_) context.identity = identity_->describe();
        return {200, "application/json", admin::render_config_dump(context)};
      }
      if (path == "/stats") {
        const auto snapshot = store_.current();  // kept alive while its policies' counters are read
        return {200, "application/json",
                admin::render_stats(stats_, dns_stats(), limits_status(), &snapshot->authz())};
      }
      if (path == "/healthz/ready") return readiness();
      if (path == "/healthz/live") return liveness();
      return {404, "text/plain", "unknown path; try /config_dump, /stats, /healthz/ready, /healthz/live\n"};
    };
    auto probe = [this](std::string_view path) -> admin::AdminResponse {
      if (path == "/healthz/ready") return readiness();
      if (path == "/healthz/live") return liveness();
      return {404, "text/plain", "not found\n"};
    };
    // Each kind of listener has its own budget: a flood on the readiness port (reachable from
    // the network) cannot lock the operator out of the loopback admin API.
    admin_sessions_ = std::make_shared<admin::SessionLimit>(options_.max_admin_sessions);
    probe_sessions_ = std::make_shared<admin::SessionLimit>(options_.max_readiness_sessions);
    const auto loopback4 = *net::IpAddress::parse("127.0.0.1");
    const auto loopback6 = *net::IpAddress::parse("::1");
    // A family that is off has no listener here. With both on, the IPv6 ones only warn when
    // they cannot bind (a half-configured lo must not stop the proxy); the only family there is
    // must bind.
    if (options_.admin_v4) {
      admin.listen({loopback4, options_.admin_port}, api, admin_sessions_);
      admin.listen({*net::IpAddress::parse("0.0.0.0"), options_.readiness_port}, probe, probe_sessions_);
    }
    if (options_.admin_v6 && options_.admin_v4) {
      listen_optional(admin, {loopback6, options_.admin_port}, api, admin_sessions_);
      listen_optional(admin, {*net::IpAddress::parse("::"), options_.readiness_port}, probe, probe_sessions_);
    } else if (options_.admin_v6) {
      admin.listen({loopback6, options_.admin_port}, api, admin_sessions_);
      admin.listen({*net::IpAddress::parse("::"), options_.readiness_port}, probe, probe_sessions_);
    }
    serve_metrics(admin);
  }

  // Once a second on the front thread. (The access log is written by the telemetry's own writer
  // thread: a blocked stderr must stall neither the workers nor DNS and readiness here.)
  void expire_metric_series() {
    // Every 10 s, each worker drops its metrics series idle for the expiry, on its own loop (the
    // series maps are that worker's only). Resolution: the expiry plus up to 10 s.
    if (server_ && server_->running() && options_.metrics_port != 0 && options_.metrics_series_expiry.count() > 0 &&
        ++expiry_ticks_ % 10 == 0) {
      const auto executors = server_->worker_executors();
      for (std::size_t i = 0; i < executors.size(); ++i)
        asio::post(executors[i], [this, i] { telemetry_.expire_idle(static_cast<int>(i)); });
    }
    series_expiry_timer_.expires_after(std::chrono::seconds(1));
    series_expiry_timer_.async_wait([this](boost::system::error_code ec) {
      if (!ec) expire_metric_series();
    });
  }

  // Prometheus on both families, like readiness: it is scraped from outside the node.
  void serve_metrics(admin::AdminServer& admin) {
    if (options_.metrics_port == 0) return;
    exporter_.add([this] { return telemetry_.collect(); });
    exporter_.add([this] { return admin::proxy_stats_families(stats_); });
    exporter_.add([this] {
      return admin::config_families(control_plane_->builds(), control_plane_->build_failures());
    });
    exporter_.add([this] {
      // The DNS proxy starts after the listeners; a scrape before it has nothing to say yet.
      return dns_ ? admin::dns_stats_families(dns_->stats()) : std::vector<prometheus::MetricFamily>{};
    });
    auto metrics = [this](std::string_view path) -> admin::AdminResponse {
      if (path == "/metrics" || path == "/stats/prometheus")
        return {200, "text/plain; version=0.0.4; charset=utf-8", exporter_.render()};
      return {404, "text/plain", "not found; try /metrics\n"};
    };
    // Its own session budget (the readiness one's size): the network can reach it, and a flood of
    // scrapes must not starve the kubelet's probes nor the reverse.
    metrics_sessions_ = std::make_shared<admin::SessionLimit>(options_.max_readiness_sessions);
    // --metrics-bind: one address, or a pair (the families that are on), as for readiness.
    if (auto one = net::IpAddress::parse(options_.metrics_bind)) {
      admin.listen({*one, options_.metrics_port}, metrics, metrics_sessions_);
      return;
    }
    const bool loopback = options_.metrics_bind == "loopback";
    const auto v4 = *net::IpAddress::parse(loopback ? "127.0.0.1" : "0.0.0.0");
    const auto v6 = *net::IpAddress::parse(loopback ? "::1" : "::");
    if (options_.admin_v4) admin.listen({v4, options_.metrics_port}, metrics, metrics_sessions_);
    if (options_.admin_v6 && options_.admin_v4)
      listen_optional(admin, {v6, options_.metrics_port}, metrics, metrics_sessions_);
    else if (options_.admin_v6)
      admin.listen({v6, options_.metrics_port}, metrics, metrics_sessions_);
  }

  // With IPv4 serving, a missing IPv6 admin listener is worth a warning, not a failed start.
  static void listen_optional(admin::AdminServer& admin, const net::SocketAddress& at, admin::AdminHandler h,
                              std::shared_ptr<admin::SessionLimit> limit) {
    try {
      admin.listen(at, std::move(h), std::move(limit));
    } catch (const std::exception& e) {
      spdlog::warn("admin: {} (continuing without it)", e.what());
    }
  }

  const resolver::DnsStats* dns_stats() const { return dns_ ? &dns_->stats() : nullptr; }

  // Reads one atomic: never waits for the control plane, however long its build takes.
  admin::AdminResponse readiness() const {
    // A successor starting or serving answers for the node: a probe on the shared port may reach
    // either process, and the old one must not call the new pod ready before it is.
    if (successor_pending_ || superseded_) return {503, "text/plain", "not ready: handing over to a successor\n"};
    if (ready_.load(std::memory_order_acquire)) return {200, "text/plain", "ready\n"};
    return {503, "text/plain", "not ready\n"};
  }

  // Every event loop that does the node's work must keep running handlers: the workers within
  // --liveness-worker-stall-ms, the control plane (whose loop legitimately blocks for a
  // snapshot build or an iptables-restore) within --liveness-control-stall-ms.
  void start_liveness(proxy::ProxyServer& server) {
    liveness_.emplace(front_.get_executor(), std::chrono::milliseconds(500));
    int i = 0;
    for (auto& executor : server.worker_executors())
      liveness_->watch("worker " + std::to_string(i++), executor, options_.liveness_worker_stall);
    liveness_->watch("control plane", control_plane_->io().get_executor(), options_.liveness_control_stall);
    liveness_->start();
  }

  admin::AdminResponse liveness() const {
    if (!liveness_) return {200, "text/plain", "live\n"};
    auto verdict = liveness_->check();
    return {verdict.live ? 200 : 503, "text/plain", std::move(verdict.detail)};
  }

  // The limits in force and how often each was hit, under "limits" in /stats and /config_dump.
  boost::json::object limits_status() const {
    admin::LimitsContext c{.proxy = options_.proxy.limits, .stats = stats_};
    if (server_) c.workers = server_->worker_loads();
    c.admin_sessions = admin_sessions_.get();
    c.readiness_sessions = probe_sessions_.get();
    c.dns = dns_ ? &options_.dns : nullptr;
    c.dns_stats = dns_stats();
    return admin::limits_status(c);
  }

  void stop_dns() {
    if (!dns_ || dns_stopped_) return;
    dns_stopped_ = true;
    dns_->stop();
    const auto& s = dns_->stats();
    spdlog::info("dns: {} udp + {} tcp queries, {} cluster answers ({} NXDOMAIN), {} forwarded, {} cache hits, "
                 "{} coalesced, {} SERVFAIL, {} FORMERR",
                 s.queries_udp.load(), s.queries_tcp.load(), s.answered_cluster.load(), s.cluster_nxdomain.load(),
                 s.forwarded.load(), s.cache_hits.load(), s.coalesced.load(), s.upstream_failures.load(),
                 s.formerr.load());
  }

  DaemonOptions options_;  // as restricted to the node's families at start
  asio::io_context front_{1};
  snapshot::SnapshotStore store_;
  proxy::ProxyStats stats_;
  // Outlives the ProxyServer (run()'s local): the workers' sinks live here.
  proxy::ConnectionTelemetry telemetry_{
      options_.proxy.workers,
      {.access_log = options_.access_log,
       .metrics = options_.metrics_port != 0,
       .series_expiry = std::chrono::duration_cast<std::chrono::milliseconds>(options_.metrics_series_expiry)}};
  admin::MetricsExporter exporter_;
  asio::steady_timer series_expiry_timer_{front_};
  std::uint64_t expiry_ticks_ = 0;
  redirect::ProcessRunner runner_;
  std::atomic<bool> ready_{false};
  bool draining_ = false;
  int exit_code_ = 0;
  proxy::ProxyServer* server_ = nullptr;
  admin::AdminServer* admin_ = nullptr;
  // Front thread only.
  bool serving_ = false;            // listening (the first snapshot is published)
  bool successor_pending_ = false;  // a successor said hello and has not taken over yet
  bool superseded_ = false;         // a successor took the rules over
  bool released_capture_ = false;   // draining without a successor: the rules are removed
  bool accepting_stopped_ = false;
  bool dns_stopped_ = false;
  std::optional<Handoff> handoff_;
  asio::steady_timer drain_timer_{front_};
  std::chrono::steady_clock::time_point drain_deadline_;
  // Draining without a successor: the listeners accept until then after the capture release.
  std::chrono::steady_clock::time_point accept_until_{};
  // A handshake in flight at the release completes in a round trip on the node (sub-millisecond
  // on a veth); a quarter of a second also covers a loaded node's scheduling delays.
  static constexpr std::chrono::milliseconds kReleaseSettle{250};
  std::optional<ControlPlane> control_plane_;  // after store_ and runner_: stopped before they go
  std::optional<identity::IdentityManager> identity_;  // after store_: its thread reads the snapshot
  std::optional<resolver::DnsProxy> dns_;      // last: torn down before front_ and store_
  std::shared_ptr<admin::SessionLimit> admin_sessions_;  // --max-admin-sessions
  std::shared_ptr<admin::SessionLimit> probe_sessions_;  // --max-readiness-sessions
  std::shared_ptr<admin::SessionLimit> metrics_sessions_;  // :15020, as many as readiness
  std::optional<LivenessMonitor> liveness_;  // its timer is on front_
};

}  // namespace

int run_daemon(const DaemonOptions& options) {
  Daemon daemon(options);
  return daemon.run();
}

}  // namespace dsproxy::daemon
