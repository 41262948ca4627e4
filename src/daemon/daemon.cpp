#include "daemon/daemon.hpp"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <optional>

#include "admin/admin_server.hpp"
#include "admin/config_dump.hpp"
#include "daemon/control_plane.hpp"
#include "identity/identity_error.hpp"
#include "identity/identity_manager.hpp"
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

class Daemon {
 public:
  explicit Daemon(DaemonOptions options) : options_(std::move(options)) {}

  int run() {
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

    // Signal handling exists before any rule can be installed (the control plane installs them
    // once its sources are synced): a SIGTERM from here on is held by asio until the front loop
    // runs, and then drains and removes whatever was installed. Before this line nothing exists
    // that would need cleaning up.
    asio::signal_set signals(front_, SIGINT, SIGTERM, SIGHUP);
    wait_for_signal(signals);

    // Readers (workers, DNS, admin) always find a snapshot: an empty one until the first sync.
    const snapshot::ClusterSnapshot::Options snapshot_options{options_.node, options_.cluster_domain,
                                                              options_.fallback_default, options_.zone,
                                                              options_.authz_root_namespace};
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
                               .fatal = [this](int code) { asio::post(front_, [this, code] { on_fatal(code); }); },
                               // server_ is set before the control plane starts and the control
                               // plane is joined before the server goes.
                               .published = [this] { if (server_) server_->snapshot_published(); },
                           });
    try {
      add_sources();
      start_identities();
    } catch (const std::exception& e) {
      spdlog::error("cannot start: {}", e.what());
      return 2;
    }

    proxy::ProxyServer server(options_.proxy, store_, stats_);
    admin::AdminServer admin(front_.get_executor());
    server_ = &server;
    try {
      server.start();
      serve_admin(admin);
      if (options_.dns.enabled) {
        dns_.emplace(front_, options_.dns, store_);
        dns_->start();
      }
    } catch (const std::exception& e) {
      spdlog::error("cannot start: {}", e.what());
      exit_code_ = 4;
      shutdown(server, admin);
      return exit_code_;
    }

    control_plane_->start();
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
    // and the rules can be removed whatever moment of its start it was stopped in.
    control_plane_->stop();
    if (identity_) identity_->stop();
    server.stop();
    stop_dns();
    admin.close();
    control_plane_->remove_rules();
    server_ = nullptr;
    spdlog::info("dsproxy stopped");
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
      if (draining_) {
        wait_for_signal(signals);
        return;
      }
      spdlog::info("signal {}: draining for up to {} ms", signo, options_.drain_grace.count());
      draining_ = true;
      ready_.store(false, std::memory_order_release);  // readiness fails first so nothing new is sent our way
      if (server_) server_->stop_accepting();
      drain_deadline_ = std::chrono::steady_clock::now() + options_.drain_grace;
      wait_for_drain();
    });
  }

  // Polls the active-connection gauge on the front loop, so the admin API still answers
  // (readiness says 503) while connections finish.
  void wait_for_drain() {
    const auto active = stats_.active_connections.load(std::memory_order_relaxed);
    if (active == 0 || std::chrono::steady_clock::now() >= drain_deadline_) {
      if (active > 0) spdlog::info("drain: closing {} connection(s) still open", active);
      if (server_) server_->stop();
      front_.stop();
      return;
    }
    drain_timer_.expires_after(std::chrono::milliseconds(50));
    drain_timer_.async_wait([this](boost::system::error_code ec) {
      if (!ec) wait_for_drain();
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
        context.control_plane = boost::json::object{{"synced", control_plane_->synced()},
                                                    {"builds", control_plane_->builds()},
                                                    {"buildFailures", control_plane_->build_failures()},
                                                    {"sources", control_plane_->sources_status()}};
        if (identity_) context.identity = identity_->describe();
        return {200, "application/json", admin::render_config_dump(context)};
      }
      if (path == "/stats") {
        const auto snapshot = store_.current();  // kept alive while its policies' counters are read
        return {200, "application/json", admin::render_stats(stats_, dns_stats(), &snapshot->authz())};
      }
      if (path == "/healthz/ready") return readiness();
      return {404, "text/plain", "unknown path; try /config_dump, /stats, /healthz/ready\n"};
    };
    auto probe = [this](std::string_view path) -> admin::AdminResponse {
      if (path == "/healthz/ready") return readiness();
      return {404, "text/plain", "not found\n"};
    };
    const auto loopback4 = *net::IpAddress::parse("127.0.0.1");
    const auto loopback6 = *net::IpAddress::parse("::1");
    // A family that is off has no listener here. With both on, the IPv6 ones only warn when
    // they cannot bind (a half-configured lo must not stop the proxy); the only family there is
    // must bind.
    if (options_.admin_v4) {
      admin.listen({loopback4, options_.admin_port}, api);
      admin.listen({*net::IpAddress::parse("0.0.0.0"), options_.readiness_port}, probe);
    }
    if (options_.admin_v6 && options_.admin_v4) {
      listen_optional(admin, {loopback6, options_.admin_port}, api);
      listen_optional(admin, {*net::IpAddress::parse("::"), options_.readiness_port}, probe);
    } else if (options_.admin_v6) {
      admin.listen({loopback6, options_.admin_port}, api);
      admin.listen({*net::IpAddress::parse("::"), options_.readiness_port}, probe);
    }
  }

  // With IPv4 serving, a missing IPv6 admin listener is worth a warning, not a failed start.
  static void listen_optional(admin::AdminServer& admin, const net::SocketAddress& at, admin::AdminHandler h) {
    try {
      admin.listen(at, std::move(h));
    } catch (const std::exception& e) {
      spdlog::warn("admin: {} (continuing without it)", e.what());
    }
  }

  const resolver::DnsStats* dns_stats() const { return dns_ ? &dns_->stats() : nullptr; }

  // Reads one atomic: never waits for the control plane, however long its build takes.
  admin::AdminResponse readiness() const {
    if (ready_.load(std::memory_order_acquire)) return {200, "text/plain", "ready\n"};
    return {503, "text/plain", "not ready\n"};
  }

  void stop_dns() {
    if (!dns_) return;
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
  redirect::ProcessRunner runner_;
  std::atomic<bool> ready_{false};
  bool draining_ = false;
  int exit_code_ = 0;
  proxy::ProxyServer* server_ = nullptr;
  asio::steady_timer drain_timer_{front_};
  std::chrono::steady_clock::time_point drain_deadline_;
  std::optional<ControlPlane> control_plane_;  // after store_ and runner_: stopped before they go
  std::optional<identity::IdentityManager> identity_;  // after store_: its thread reads the snapshot
  std::optional<resolver::DnsProxy> dns_;      // last: torn down before front_ and store_
};

}  // namespace

int run_daemon(const DaemonOptions& options) {
  Daemon daemon(options);
  return daemon.run();
}

}  // namespace dsproxy::daemon
