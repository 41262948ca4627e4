// dsproxy: a transparent dual-stack L4 node proxy. This file only parses the command line and
// hands over: `run` to the daemon (src/daemon/), the one-shot commands to src/cli/.

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <functional>
#include <iostream>

#include "cli/admin_client.hpp"
#include "cli/identity_flags.hpp"
#include "cli/proxy_config_view.hpp"
#include "snapshot/cluster_snapshot.hpp"
#include "config/k8s_decoder.hpp"
#include "daemon/control_plane.hpp"
#include "daemon/daemon.hpp"
#include "sources/kubernetes/api_server_config.hpp"
#include "redirect/command_runner.hpp"
#include "redirect/iptables_backend.hpp"
#include "redirect/node_families.hpp"
#include "redirect/redirector.hpp"
#include "redirect/vip_refusals.hpp"

namespace {

using namespace dsproxy;

void add_redirect_flags(CLI::App& cmd, redirect::RedirectOptions& r) {
  cmd.add_option("--outbound-port", r.outbound_port, "Outbound capture listener port")->capture_default_str();
  cmd.add_option("--inbound-port", r.inbound_port, "Inbound capture listener port")->capture_default_str();
  cmd.add_option("--route-table", r.route_table, "Policy routing table for diverted packets")->capture_default_str();
  cmd.add_option("--rule-priority", r.rule_priority, "Priority of the fwmark ip rule")->capture_default_str();
  cmd.add_option_function<std::string>(
         "--iptables-backend",
         [&r](const std::string& value) { r.iptables_backend = *redirect::parse_iptables_backend(value); },
         "auto (the one the node's kubelet/kube-proxy rules are in), nft or legacy")
      ->check(CLI::IsMember({"auto", "nft", "legacy"}))
      ->default_str("auto");
}

// DNS capture is on unless --no-dns-capture, in `run` and `redirect` alike.
void add_dns_capture_flags(CLI::App& cmd, bool& no_dns_capture, redirect::RedirectOptions& r) {
  cmd.add_flag("--no-dns-capture", no_dns_capture,
               "Leave the pods' DNS (UDP/TCP port 53) alone: no capture rules and, for run, no DNS proxy");
  cmd.add_option("--dns-port", r.dns_port, "DNS proxy port (UDP and TCP, both families)")->capture_default_str();
}

std::shared_ptr<const snapshot::ClusterSnapshot> load_snapshot(const std::string& path, const std::string& node,
                                                             const std::string& domain) {
  auto objects = config::load_objects_file(path);
  for (const auto& w : objects.warnings) spdlog::warn("config: {}", w);
  return snapshot::ClusterSnapshot::build(std::move(objects), {node, domain});
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_default_logger(spdlog::stderr_color_mt("dsproxy"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %v", spdlog::pattern_time_type::utc);

  CLI::App app{"dsproxy: transparent dual-stack (IPv4 + IPv6) L4 node proxy for Kubernetes"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();

  // run
  daemon::DaemonOptions run;
  auto* run_cmd = app.add_subcommand("run", "Run the proxy in this (the node's) network namespace");
  auto* config_opt =
      run_cmd->add_option("--config", run.config_path, "Kubernetes objects (YAML or JSON); reloaded when it changes");
  auto* kubernetes_opt = run_cmd->add_flag(
      "--kubernetes", run.kubernetes,
      "Watch the Kubernetes API (in-cluster service account; the default when KUBERNETES_SERVICE_HOST is set and "
      "--config is not given)");
  auto* kubeconfig_opt = run_cmd->add_option("--kubeconfig", run.kubeconfig,
                                             "Watch the API server of this kubeconfig's current context instead");
  auto* sa_dir_opt = run_cmd->add_option(
      "--service-account-dir", run.service_account_dir,
      "Where the in-cluster service account is mounted (token, ca.crt, namespace; default "
      "/var/run/secrets/kubernetes.io/serviceaccount)");
  config_opt->excludes(kubernetes_opt)->excludes(kubeconfig_opt)->excludes(sa_dir_opt);
  kubeconfig_opt->excludes(sa_dir_opt);
  run_cmd->add_option("--node", run.node, "This node's name (pods with spec.nodeName == NAME are local)")->required();
  run_cmd->add_option("--zone", run.zone,
                      "This node's topology zone for EndpointSlice zone hints (default: the topology.kubernetes.io/zone "
                      "label of the Node object named --node, if the config has one)");
  run_cmd->add_flag("--redirect", run.redirect, "Install the capture rules at start, keep them current, remove at exit");
  run_cmd->add_option("--workers", run.proxy.workers, "Worker threads (one io_context each)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  run_cmd->add_option("--cluster-domain", run.cluster_domain)->capture_default_str();
  run_cmd->add_option("--authz-root-namespace", run.authz_root_namespace,
                      "AuthorizationPolicies in this namespace apply to the whole mesh (Istio's root namespace)")
      ->capture_default_str();
  run_cmd->add_option("--admin-port", run.admin_port, "Admin API on 127.0.0.1 and [::1]")->capture_default_str();
  run_cmd->add_option("--readiness-port", run.readiness_port, "GET /healthz/ready on 0.0.0.0 and [::]")
      ->capture_default_str();
  run_cmd->add_option("--metrics-port", run.metrics_port,
                      "Prometheus GET /metrics (and /stats/prometheus) on 0.0.0.0 and [::]; 0: no metrics")
      ->capture_default_str();
  run_cmd
      ->add_option("--metrics-bind", run.metrics_bind,
                   "Where the metrics port listens: any (0.0.0.0 and [::], for a Prometheus outside the node), "
                   "loopback (127.0.0.1 and [::1]), or one IP address of the node")
      ->capture_default_str()
      ->check([](const std::string& v) -> std::string {
        if (v == "any" || v == "loopback" || net::IpAddress::parse(v)) return {};
        return "expected any, loopback or an IP address";
      });
  std::int64_t series_expiry_s = 600;
  run_cmd
      ->add_option("--metrics-series-expiry-s", series_expiry_s,
                   "Drop a metrics label set that no open connection holds and that has not changed for this "
                   "long (frees its place under the 4,096 per worker); 0: never")
      ->capture_default_str()
      ->check(CLI::Range(0, 30 * 86400));
  run_cmd
      ->add_option_function<std::string>(
          "--access-log",
          [&run](const std::string& v) { run.access_log = *proxy::parse_access_log_format(v); },
          "One line per connection at close: off, text or json (default text, at info)")
      ->check(CLI::IsMember({"off", "text", "json"}));
  std::int64_t connect_timeout_ms = 10000, idle_timeout_s = 3600, drain_ms = 5000;
  run_cmd->add_option("--connect-timeout-ms", connect_timeout_ms)->capture_default_str()->check(CLI::Range(1, 600000));
  run_cmd->add_option("--idle-timeout-s", idle_timeout_s, "Reset connections idle this long")
      ->capture_default_str()
      ->check(CLI::Range(1, 7 * 86400));
  run_cmd->add_option("--drain-grace-ms", drain_ms, "On SIGTERM, let connections finish this long (then they are reset); without a successor, "
                      "new connections are served meanwhile")
      ->capture_default_str()
      ->check(CLI::Range(0, 600000));
  std::string family_fallback = "policy";
  run_cmd
      ->add_option("--family-fallback", family_fallback,
                   "Default for Services without the dsproxy.io/family-fallback annotation: policy (other family "
                   "for Prefer/RequireDualStack, never for SingleStack), never, or other")
      ->check(CLI::IsMember({"policy", "never", "other"}))
      ->capture_default_str();
  std::int64_t attempt_delay_ms = 250;
  run_cmd->add_option("--attempt-delay-ms", attempt_delay_ms, "Happy Eyeballs Connection Attempt Delay (RFC 8305)")
      ->capture_default_str()
      ->check(CLI::Range(10, 2000));
  run_cmd->add_option("--max-connect-attempts", run.proxy.max_connect_attempts,
                      "Endpoints tried per connection (first try plus retries), within --connect-timeout-ms")
      ->capture_default_str()
      ->check(CLI::Range(1, 10));
  run_cmd->add_option("--outlier-consecutive-failures", run.proxy.outlier.consecutive_failures,
                      "Connect failures in a row that eject an endpoint")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  std::int64_t base_ejection_ms = 30000;
  run_cmd->add_option("--outlier-base-ejection-ms", base_ejection_ms,
                      "First ejection time; each further ejection lasts one more multiple (max 10x)")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600000));
  std::vector<std::string> forward_specs;
  run_cmd->add_option("--forward", forward_specs,
                      "LISTEN=TARGET (each IP:PORT or [IPv6]:PORT; repeatable): an explicitly addressed listener whose "
                      "connections are routed as if captured on their way to TARGET, from the node's own address");
  add_redirect_flags(*run_cmd, run.redirect_options);
  bool run_no_dns_capture = false;
  std::int64_t dns_ttl_s = 30;
  add_dns_capture_flags(*run_cmd, run_no_dns_capture, run.redirect_options);
  run_cmd->add_option("--dns-upstream", run.dns.upstreams,
                      "Upstream nameserver for names outside the cluster (ip, ip:port, [ip6]:port; repeatable); "
                      "default: the nameservers of --dns-resolv-conf");
  run_cmd->add_option("--dns-resolv-conf", run.dns.resolv_conf, "Where the node's nameservers are read from")
      ->capture_default_str();
  run_cmd->add_option("--dns-ttl-s", dns_ttl_s, "TTL of the cluster DNS answers")
      ->capture_default_str()
      ->check(CLI::Range(0, 86400));
  // Limits: past each, a new connection is reset at once and counted (see "Limits" in the README).
  run_cmd->add_option("--max-connections-per-worker", run.proxy.limits.connections_per_worker,
                      "Connections one worker holds at once; more are reset at accept")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000000));
  run_cmd->add_option("--max-pending-connects-per-worker", run.proxy.limits.pending_connects_per_worker,
                      "Connections one worker routes or connects upstream at once; more are reset")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000000));
  run_cmd->add_option("--max-pending-handshakes-per-worker", run.proxy.limits.pending_handshakes_per_worker,
                      "HBONE connections one worker has in their TLS handshake at once; more are reset")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000000));
  run_cmd->add_option("--max-admin-sessions", run.max_admin_sessions, "Admin API sessions at once; more are reset")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  run_cmd->add_option("--max-readiness-sessions", run.max_readiness_sessions,
                      "Readiness/liveness port sessions at once; more are reset")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  run_cmd->add_option("--dns-tcp-max-connections", run.dns.max_tcp_connections,
                      "DNS-over-TCP connections at once; more are reset")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  run_cmd->add_option("--dns-tcp-max-per-client", run.dns.max_tcp_connections_per_client,
                      "DNS-over-TCP connections at once from one client address; more are reset")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  std::int64_t dns_tcp_message_timeout_ms = 2000;
  run_cmd->add_option("--dns-tcp-message-timeout-ms", dns_tcp_message_timeout_ms,
                      "A DNS-over-TCP message must arrive whole (and its answer be taken) within this")
      ->capture_default_str()
      ->check(CLI::Range(100, 60000));
  std::int64_t liveness_worker_stall_ms = 10000, liveness_control_stall_ms = 120000;
  run_cmd->add_option("--liveness-worker-stall-ms", liveness_worker_stall_ms,
                      "/healthz/live fails once a worker's loop has not run a heartbeat for this long")
      ->capture_default_str()
      ->check(CLI::Range(1000, 600000));
  run_cmd->add_option("--liveness-control-stall-ms", liveness_control_stall_ms,
                      "The same for the control plane's loop (snapshot builds and rule updates block it)")
      ->capture_default_str()
      ->check(CLI::Range(1000, 3600000));
  // Tests only, hence not in --help: faults injected on the workers (relay:N, connection:N: every
  // Nth connection of a worker meets a std::bad_alloc there; stall-worker:MS: worker 0's loop
  // blocks MS after start). Repeatable.
  std::vector<std::string> test_faults;
  run_cmd->add_option("--test-fault", test_faults)->group("");
  // Tests only, hence not in --help: every snapshot build after the first sleeps this long, to
  // show that DNS and readiness keep answering while the control plane is busy.
  std::int64_t test_build_delay_ms = 0;
  run_cmd->add_option("--test-build-delay-ms", test_build_delay_ms)->group("")->check(CLI::Range(0, 60000));
  cli::add_identity_flags(*run_cmd, run.identity, run.hbone_port);

  // redirect
  redirect::RedirectOptions redirect_options;
  bool redirect_no_dns_capture = false;
  std::string redirect_config, redirect_node;
  auto* redirect_cmd = app.add_subcommand("redirect", "Install, remove or print the TPROXY capture rules");
  redirect_cmd->require_subcommand(1);
  for (const char* name : {"install", "uninstall", "print"}) {
    auto* sub = redirect_cmd->add_subcommand(name);
    sub->add_option("--config", redirect_config, "Kubernetes objects (YAML or JSON)")->required(std::string(name) != "uninstall");
    sub->add_option("--node", redirect_node, "This node's name")->required(std::string(name) != "uninstall");
    add_redirect_flags(*sub, redirect_options);
    add_dns_capture_flags(*sub, redirect_no_dns_capture, redirect_options);
  }

  // proxy-config
  std::string admin = "127.0.0.1:15000", output = "short";
  std::optional<std::uint16_t> port;
  auto* pc_cmd = app.add_subcommand("proxy-config", "Show a running dsproxy's configuration, like istioctl");
  pc_cmd->require_subcommand(1);
  for (const char* name : {"listeners", "endpoints", "authz"}) {
    auto* sub = pc_cmd->add_subcommand(name);
    sub->add_option("--port", port, "Only this port");
    sub->add_option("-o,--output", output, "short or json")->check(CLI::IsMember({"short", "json"}))->capture_default_str();
    sub->add_option("--admin", admin, "Admin API address")->capture_default_str();
  }
  {
    auto* sub = pc_cmd->add_subcommand("workloads", "Pods, their identity and protocol (TCP or HBONE)");
    sub->add_option("-o,--output", output, "short or json")->check(CLI::IsMember({"short", "json"}))->capture_default_str();
    sub->add_option("--admin", admin, "Admin API address")->capture_default_str();
  }

  // validate
  std::string validate_config, validate_node = "";
  auto* validate_cmd = app.add_subcommand("validate", "Check a config file and summarise what dsproxy derives from it");
  validate_cmd->add_option("--config", validate_config)->required();
  validate_cmd->add_option("--node", validate_node, "Node whose pods to list");

  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(log_level));

  try {
    if (run_cmd->parsed()) {
      // Where the objects come from: --config, else the API (--kubeconfig and
      // --service-account-dir imply --kubernetes, and in a pod it is the default).
      if (!run.kubeconfig.empty() || !run.service_account_dir.empty()) run.kubernetes = true;
      if (run.config_path.empty() && !run.kubernetes) {
        if (!sources::kubernetes::running_in_cluster())
          throw std::invalid_argument(
              "run: no source of objects: give --config FILE, or --kubernetes / --kubeconfig PATH");
        run.kubernetes = true;
      }
      cli::check_identity_flags(run.identity);
      run.proxy.ports = {run.redirect_options.outbound_port, run.redirect_options.inbound_port};
      for (const auto& spec : forward_specs) {
        const auto eq = spec.find('=');
        const auto listen = net::SocketAddress::parse(std::string_view(spec).substr(0, eq));
        const auto target = eq == std::string::npos ? std::nullopt
                                                    : net::SocketAddress::parse(std::string_view(spec).substr(eq + 1));
        if (!listen || !target)
          throw std::invalid_argument("--forward '" + spec +
                                      "': want LISTEN=TARGET, each IP:PORT or [IPv6]:PORT with a port 1-65535");
        // The operator chose TARGET, but whoever reaches LISTEN reaches TARGET: a node-local
        // target (loopback, link-local, ...) is only allowed behind a listener on loopback too.
        if (target->ip.scope() != net::AddressScope::global && listen->ip.scope() != net::AddressScope::loopback)
          throw std::invalid_argument("--forward '" + spec + "': a " + std::string(net::to_string(target->ip.scope())) +
                                      " target is only allowed from a loopback listener (anything that reaches " +
                                      listen->to_string() + " would reach the node's " + target->ip.to_string() + ")");
        run.proxy.forwards.push_back({*listen, *target});
      }
      run.proxy.connect_timeout = std::chrono::milliseconds(connect_timeout_ms);
      run.proxy.idle_timeout = std::chrono::seconds(idle_timeout_s);
      run.proxy.upstream_mark = run.redirect_options.proxy_mark;
      run.drain_grace = std::chrono::milliseconds(drain_ms);
      run.metrics_series_expiry = std::chrono::seconds(series_expiry_s);
      run.proxy.attempt_delay = std::chrono::milliseconds(attempt_delay_ms);
      run.proxy.outlier.base_ejection = std::chrono::milliseconds(base_ejection_ms);
      run.proxy.outlier.max_ejection = 10 * run.proxy.outlier.base_ejection;
      run.fallback_default = family_fallback == "never"   ? snapshot::FallbackDefault::never
                             : family_fallback == "other" ? snapshot::FallbackDefault::other
                                                          : snapshot::FallbackDefault::policy;
      // Passthrough has no Service to ask: only an explicit node-wide "never" stops it crossing.
      run.proxy.passthrough_happy_eyeballs = family_fallback != "never";
      run.redirect_options.dns_capture = !run_no_dns_capture;
      run.dns.enabled = !run_no_dns_capture;
      run.dns.port = run.redirect_options.dns_port;
      run.dns.cluster_domain = run.cluster_domain;
      run.dns.ttl = std::chrono::seconds(dns_ttl_s);
      run.dns.mark = run.redirect_options.proxy_mark;
      run.test_build_delay = std::chrono::milliseconds(test_build_delay_ms);
      run.dns.tcp_message_timeout = std::chrono::milliseconds(dns_tcp_message_timeout_ms);
      run.liveness_worker_stall = std::chrono::milliseconds(liveness_worker_stall_ms);
      run.liveness_control_stall = std::chrono::milliseconds(liveness_control_stall_ms);
      for (const auto& spec : test_faults) {
        const auto colon = spec.find(':');
        const std::string kind = spec.substr(0, colon);
        const long value = colon == std::string::npos ? 0 : std::strtol(spec.c_str() + colon + 1, nullptr, 10);
        if (value <= 0 || value > 1000000 || (kind != "relay" && kind != "connection" && kind != "stall-worker"))
          throw std::invalid_argument("--test-fault '" + spec + "': want relay:N, connection:N or stall-worker:MS");
        spdlog::warn("test hook: --test-fault {} (never use this outside tests)", spec);
        if (kind == "relay") run.proxy.test_faults.relay_every = static_cast<std::uint32_t>(value);
        if (kind == "connection") run.proxy.test_faults.connection_every = static_cast<std::uint32_t>(value);
        if (kind == "stall-worker") run.proxy.test_faults.stall_worker_after = std::chrono::milliseconds(value);
      }
      return daemon::run_daemon(run);
    }
    if (redirect_cmd->parsed()) {
      redirect_options.dns_capture = !redirect_no_dns_capture;
      // As `run --redirect` does: rules only for the families this node has (said once).
      const auto families = redirect::detect_node_families();
      if (const auto off = redirect::describe_off_families(families); !off.empty()) spdlog::warn("{}", off);
      redirect_options.ipv4 = families.has(net::Family::v4);
      redirect_options.ipv6 = families.has(net::Family::v6);
      redirect::ProcessRunner runner;
      spdlog::info("{}", redirect::resolve_iptables_backend(redirect_options, runner));
      redirect::Redirector redirector(redirect_options, runner);
      redirect::VipRefusals refusals(redirect_options, runner);
      if (redirect_cmd->got_subcommand("uninstall")) {
        // Both, even if the first reports a failure: leave as little behind as possible.
        std::string errors;
        for (auto step : {std::function<void()>([&] { refusals.uninstall(); }), std::function<void()>([&] {
                            redirector.uninstall();
                          })}) {
          try {
            step();
          } catch (const std::exception& e) {
            errors += std::string(errors.empty() ? "" : "\n") + e.what();
          }
        }
        if (!errors.empty()) throw std::runtime_error(errors);
        return 0;
      }
      const auto snapshot = load_snapshot(redirect_config, redirect_node, "cluster.local");
      const auto pods = daemon::node_pod_ips(*snapshot);
      const auto vips = daemon::vip_open_ports(*snapshot);
      if (redirect_cmd->got_subcommand("print")) {
        std::cout << redirector.print(pods) << redirect::render_refusals_script(vips, redirect_options);
        return 0;
      }
      redirector.install(pods);
      refusals.apply(vips);
      return 0;
    }
    if (pc_cmd->parsed()) {
      const std::string dump = cli::admin_get(admin, "/config_dump");
      const bool json = output == "json";
      if (pc_cmd->got_subcommand("listeners"))
        std::cout << (json ? cli::listeners_json(dump, port) : cli::listeners_table(dump, port));
      else if (pc_cmd->got_subcommand("workloads"))
        std::cout << (json ? cli::workloads_json(dump) : cli::workloads_table(dump));

      else if (pc_cmd->got_subcommand("authz"))
        std::cout << (json ? cli::authz_json(dump) : cli::authz_table(dump));
      else
        std::cout << (json ? cli::endpoints_json(dump, port) : cli::endpoints_table(dump, port));
      return 0;
    }
    if (validate_cmd->parsed()) {
      auto objects = config::load_objects_file(validate_config);
      for (const auto& w : objects.warnings) spdlog::warn("config: {}", w);
      const std::size_t services = objects.services.size(), pods = objects.pods.size(),
                        slices = objects.endpoint_slices.size();
      const auto snapshot = snapshot::ClusterSnapshot::build(std::move(objects), {validate_node, "cluster.local"});
      std::cout << "ok: " << services << " service(s), " << pods << " pod(s), " << slices << " endpoint slice(s)\n";
      for (const snapshot::ServiceCluster& c : snapshot->clusters()) {
        std::cout << "  " << c.cluster_name << " (" << config::to_string(c.ip_family_policy) << "):";
        for (const auto& ip : c.cluster_ips) std::cout << ' ' << ip.to_string();
        std::cout << " -> " << c.endpoints.size() << " endpoint(s)\n";
      }
      if (!validate_node.empty()) std::cout << "  " << snapshot->node_pods().size() << " pod(s) on " << validate_node << "\n";
      return 0;
    }
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}
