#include "cli/run_command.hpp"

#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <optional>

#include "admin/admin_server.hpp"
#include "admin/config_dump.hpp"
#include "config/k8s_decoder.hpp"
#include "snapshot/snapshot_store.hpp"
#include "proxy/proxy_server.hpp"
#include "redirect/command_runner.hpp"
#include "redirect/redirector.hpp"
#include "resolver/dns_proxy.hpp"
#include "resolver/io/hostname_endpoints.hpp"

namespace dsproxy::cli {

namespace {

std::vector<net::IpAddress> node_pod_ips(const snapshot::ClusterSnapshot& snapshot) {
  std::vector<net::IpAddress> ips;
  for (const auto& pod : snapshot.node_pods()) ips.insert(ips.end(), pod.ips.begin(), pod.ips.end());
  return ips;
}

}  // namespace

std::vector<redirect::VipOpenPorts> vip_open_ports(const snapshot::ClusterSnapshot& snapshot) {
  std::vector<redirect::VipOpenPorts> out;
  for (auto& v : snapshot.vip_ports()) out.push_back({v.vip, std::move(v.open_ports)});
  return out;
}

RunOptions restrict_to_families(RunOptions options, const redirect::NodeFamilies& families) {
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

struct FileStamp {
  timespec mtime{};
  off_t size = -1;
  ino_t inode = 0;
  bool operator==(const FileStamp& o) const {
    return mtime.tv_sec == o.mtime.tv_sec && mtime.tv_nsec == o.mtime.tv_nsec && size == o.size && inode == o.inode;
  }
};

std::optional<FileStamp> stamp_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileStamp{st.st_mtim, st.st_size, st.st_ino};
}

// Everything `run` owns on the control thread. Reloads happen here, never on a worker: a new
// snapshot is built off the data path and published with one atomic store.
class ProxyProcess {
 public:
  explicit ProxyProcess(RunOptions options) : options_(std::move(options)) {}

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
    raise_descriptor_limit();
    start_hostnames();
    std::shared_ptr<const snapshot::ClusterSnapshot> first;
    try {
      first = load();
    } catch (const std::exception& e) {
      spdlog::error("cannot start: {}", e.what());
      return 2;
    }
    store_.publish(first);
    stamp_ = stamp_of(options_.config_path);

    if (options_.redirect) {
      try {
        redirector_.emplace(options_.redirect_options, runner_);
        refusals_.emplace(options_.redirect_options, runner_);
        installed_pods_ = node_pod_ips(*first);
        redirector_->install(installed_pods_);
        refusals_->apply(vip_open_ports(*first));
      } catch (const std::exception& e) {
        spdlog::error("cannot install redirect rules: {}", e.what());
        remove_redirect();
        return 3;
      }
    }

    proxy::ProxyServer server(options_.proxy, store_, stats_);
    admin::AdminServer admin(io_.get_executor());
    try {
      server.start();
      serve_admin(admin, server);
      if (options_.dns.enabled) {
        dns_.emplace(io_, options_.dns, store_);
        dns_->start();
      }
    } catch (const std::exception& e) {
      spdlog::error("cannot start: {}", e.what());
      remove_redirect();
      return 4;
    }
    ready_ = true;
    spdlog::info("dsproxy ready: node {}, {} service port(s), {} local pod(s)", options_.node,
                 first->clusters().size(), first->node_pods().size());

    boost::asio::signal_set signals(io_, SIGINT, SIGTERM, SIGHUP);
    wait_for_signal(signals, server);
    boost::asio::steady_timer poll(io_);
    watch_config(poll);

    int exit_code = 0;
    try {
      io_.run();
    } catch (const std::exception& e) {
      // Only the control loop's plain callbacks (DNS, reload, admin) can throw here, realistically
      // bad_alloc. Whatever it was, the capture rules must not outlive us: a node whose traffic
      // is diverted to a dead proxy is black-holed.
      spdlog::critical("control loop failed: {}; removing the capture rules and exiting", e.what());
      exit_code = 5;
    }

    server.stop();
    stop_dns();
    admin.close();
    remove_redirect();
    spdlog::info("dsproxy stopped");
    return exit_code;
  }

 private:
  std::shared_ptr<const snapshot::ClusterSnapshot> load() {
    auto objects = config::load_objects_file(options_.config_path);
    for (const auto& w : objects.warnings) spdlog::warn("config: {}", w);
    if (hostnames_) {  // FQDN endpoints of dsproxy.io/resolve Services, as resolved so far
      hostnames_->update(objects);
      hostnames_->augment(objects);
    }
    return snapshot::ClusterSnapshot::build(std::move(objects),
                                          {options_.node, options_.cluster_domain, options_.fallback_default, options_.zone},
                                          &endpoint_states_);
  }

  void reload(const char* why) {
    // Whatever triggered it, this reload reads the file as it is now: the poll must not read the
    // same contents again.
    stamp_ = stamp_of(options_.config_path);
    std::shared_ptr<const snapshot::ClusterSnapshot> next;
    try {
      next = load();
    } catch (const std::exception& e) {
      // The last good snapshot stays in force; traffic never notices a bad edit.
      spdlog::error("config reload ({}) failed, keeping generation {}: {}", why, store_.generation(), e.what());
      return;
    }
    store_.publish(next);
    spdlog::info("config reloaded ({}): generation {}, {} service port(s), {} local pod(s)", why, store_.generation(),
                 next->clusters().size(), next->node_pods().size());
    if (redirector_) {
      auto pods = node_pod_ips(*next);
      if (pods != installed_pods_) {
        try {
          redirector_->update_pods(pods);
          installed_pods_ = std::move(pods);
        } catch (const std::exception& e) {
          spdlog::error("redirect update failed, capture still uses the previous pod list: {}", e.what());
        }
      }
      try {
        refusals_->apply(vip_open_ports(*next));
      } catch (const std::exception& e) {
        spdlog::error("refusal rules update failed, the previous ones stay: {}", e.what());
      }
    }
  }

  void watch_config(boost::asio::steady_timer& timer) {
    timer.expires_after(options_.config_poll);
    timer.async_wait([this, &timer](boost::system::error_code ec) {
      if (ec) return;
      if (auto now = stamp_of(options_.config_path); now && !(stamp_ && *now == *stamp_)) reload("file changed");
      watch_config(timer);
    });
  }

  void wait_for_signal(boost::asio::signal_set& signals, proxy::ProxyServer& server) {
    signals.async_wait([this, &signals, &server](boost::system::error_code ec, int signo) {
      if (ec) return;
      if (signo == SIGHUP) {
        reload("SIGHUP");
        wait_for_signal(signals, server);
        return;
      }
      spdlog::info("signal {}: draining for up to {} ms", signo, options_.drain_grace.count());
      ready_ = false;  // readiness fails first so nothing new is sent our way
      server.stop_accepting();
      drain_deadline_ = std::chrono::steady_clock::now() + options_.drain_grace;
      wait_for_drain(server);
    });
  }

  // Polls the active-connection gauge on the control loop, so the admin API still answers
  // (readiness says 503) while connections finish.
  void wait_for_drain(proxy::ProxyServer& server) {
    const auto active = stats_.active_connections.load(std::memory_order_relaxed);
    if (active == 0 || std::chrono::steady_clock::now() >= drain_deadline_) {
      if (active > 0) spdlog::info("drain: closing {} connection(s) still open", active);
      server.stop();
      io_.stop();
      return;
    }
    drain_timer_.expires_after(std::chrono::milliseconds(50));
    drain_timer_.async_wait([this, &server](boost::system::error_code ec) {
      if (!ec) wait_for_drain(server);
    });
  }

  void serve_admin(admin::AdminServer& admin, const proxy::ProxyServer& server) {
    auto api = [this](std::string_view path) -> admin::AdminResponse {
      if (path == "/config_dump") {
        const auto snapshot = store_.current();
        return {200, "application/json",
                admin::render_config_dump({*snapshot, options_.proxy, stats_, store_.generation(), dns_stats()})};
      }
      if (path == "/stats") return {200, "application/json", admin::render_stats(stats_, dns_stats())};
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
    // they cannot bind (as before: a half-configured lo must not stop the proxy); the only
    // family there is must bind.
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

  admin::AdminResponse readiness() const {
    if (ready_) return {200, "text/plain", "ready\n"};
    return {503, "text/plain", "not ready\n"};
  }

  // Every relayed connection costs two descriptors (plus two per pipe while bytes move); a shell's
  // default soft limit of 1024 would cap the proxy at a few hundred connections.
  static void raise_descriptor_limit() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
    const auto before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &limit) == 0)
      spdlog::info("descriptor limit raised from {} to {}", before, limit.rlim_cur);
  }

  // Hostname endpoints resolve through the node's nameservers (or --dns-upstream) whether or not
  // the pods' DNS is captured; a change of addresses rebuilds the snapshot like a file change.
  void start_hostnames() {
    resolver::AresOptions ares;
    ares.servers = options_.dns.upstreams;
    ares.resolv_conf = options_.dns.resolv_conf;
    ares.mark = options_.dns.mark;
    try {
      hostnames_ = std::make_unique<resolver::HostnameEndpoints>(io_, ares, [this] { reload("hostname endpoints"); });
    } catch (const std::exception& e) {
      spdlog::warn("hostname endpoints (dsproxy.io/resolve) disabled: {}", e.what());
    }
  }

  void stop_dns() {
    if (hostnames_) hostnames_->stop();
    if (!dns_) return;
    dns_->stop();
    const auto& s = dns_->stats();
    spdlog::info("dns: {} udp + {} tcp queries, {} cluster answers ({} NXDOMAIN), {} forwarded, {} cache hits, "
                 "{} coalesced, {} SERVFAIL, {} FORMERR",
                 s.queries_udp.load(), s.queries_tcp.load(), s.answered_cluster.load(), s.cluster_nxdomain.load(),
                 s.forwarded.load(), s.cache_hits.load(), s.coalesced.load(), s.upstream_failures.load(),
                 s.formerr.load());
  }

  void remove_redirect() {
    if (refusals_) {
      try {
        refusals_->uninstall();
      } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
      }
      refusals_.reset();
    }
    if (!redirector_) return;
    try {
      redirector_->uninstall();
    } catch (const std::exception& e) {
      spdlog::error("redirect uninstall incomplete: {}", e.what());
    }
    redirector_.reset();
  }

  RunOptions options_;  // as restricted to the node's families at start
  boost::asio::io_context io_{1};
  snapshot::SnapshotStore store_;
  proxy::ProxyStats stats_;
  redirect::ProcessRunner runner_;
  snapshot::EndpointStateRegistry endpoint_states_;  // outlier and load state, kept across reloads
  std::optional<redirect::Redirector> redirector_;
  std::optional<redirect::VipRefusals> refusals_;
  std::vector<net::IpAddress> installed_pods_;
  std::optional<FileStamp> stamp_;
  bool ready_ = false;
  boost::asio::steady_timer drain_timer_{io_};
  std::chrono::steady_clock::time_point drain_deadline_;
  std::optional<resolver::DnsProxy> dns_;  // last: torn down before io_ and store_
  std::unique_ptr<resolver::HostnameEndpoints> hostnames_;
};

}  // namespace

int run_proxy(const RunOptions& options) {
  ProxyProcess process(options);
  return process.run();
}

}  // namespace dsproxy::cli
