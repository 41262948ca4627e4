#pragma once
// Everything `dsproxy run` is told on its command line, as the daemon uses it.

#include <chrono>
#include <cstdint>
#include <string>

#include "identity/identity_options.hpp"
#include "proxy/connection_telemetry.hpp"
#include "proxy/proxy_options.hpp"
#include "redirect/redirect_options.hpp"
#include "resolver/dns_proxy.hpp"
#include "snapshot/cluster_snapshot.hpp"

namespace dsproxy::daemon {

struct DaemonOptions {
  // Sources: a config file (--config), or the Kubernetes API (--kubernetes: in-cluster, from
  // the service account mounted at service_account_dir; or --kubeconfig PATH). One of the two.
  std::string config_path;
  std::chrono::milliseconds config_poll{1000};
  bool kubernetes = false;
  std::string kubeconfig;           // non-empty: this file instead of the in-cluster config
  std::string service_account_dir;  // empty: /var/run/secrets/kubernetes.io/serviceaccount

  std::string node;
  std::string zone;  // --zone: this node's topology zone (else the Node object's label)
  std::string cluster_domain = "cluster.local";
  // AuthorizationPolicies in this namespace apply mesh-wide (Istio's root namespace).
  std::string authz_root_namespace = "istio-system";
  snapshot::FallbackDefault fallback_default = snapshot::FallbackDefault::policy;
  bool redirect = false;  // install the capture rules at start, keep them current, remove at exit
  proxy::ProxyOptions proxy;
  redirect::RedirectOptions redirect_options;
  resolver::DnsProxyOptions dns;  // the DNS proxy on :15053, unless dns.enabled is false
  std::uint16_t admin_port = 15000;     // 127.0.0.1 and [::1]
  std::uint16_t readiness_port = 15021;  // 0.0.0.0 and [::]: kubelet probes it from the node
  // Prometheus (/metrics, /stats/prometheus) on 0.0.0.0 and [::]: scraped from outside the node,
  // Istio's merged-metrics port. 0: no endpoint and no per-connection metrics.
  std::uint16_t metrics_port = 15020;
  // --metrics-bind: "any" (0.0.0.0 and [::]), "loopback" (127.0.0.1 and [::1]) or one address.
  std::string metrics_bind = "any";
  // --metrics-series-expiry-s: ConnectionTelemetry::Options::series_expiry; 0: never.
  std::chrono::seconds metrics_series_expiry{600};
  proxy::AccessLogFormat access_log = proxy::AccessLogFormat::text;
  // The admin API and readiness listeners per family; restrict_to_families clears the one that is off.
  bool admin_v4 = true;
  bool admin_v6 = true;
  std::chrono::milliseconds drain_grace{5000};
  // mTLS (issue 11): where workload certificates come from; !identity.enabled(): plaintext only.
  identity::IdentityOptions identity;
  std::uint16_t hbone_port = 15008;  // HBONE listener (0.0.0.0 and [::]), for the hbone data path

  // Sessions at once on the admin API (127.0.0.1/[::1]:15000) and on readiness/liveness
  // (0.0.0.0/[::]:15021); past them a new connection is reset (admin::SessionLimit).
  std::uint64_t max_admin_sessions = 32;
  std::uint64_t max_readiness_sessions = 64;
  // /healthz/live fails when a worker's loop, or the control plane's, has not run a heartbeat
  // for this long (daemon/liveness.hpp).
  std::chrono::milliseconds liveness_worker_stall{10000};
  std::chrono::milliseconds liveness_control_stall{120000};
  // Tests only (--test-build-delay-ms): every snapshot build after the first sleeps this long.
  std::chrono::milliseconds test_build_delay{0};
};

}  // namespace dsproxy::daemon
