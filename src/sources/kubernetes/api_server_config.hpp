#pragma once
// Where the Kubernetes API server is and how dsproxy proves who it is: built from the in-cluster
// environment (a pod of the DaemonSet) or from a kubeconfig file (a standalone host, tests).
//
// TLS is always verified: against the configured CA, or the system trust store when a kubeconfig
// names none. `insecure-skip-tls-verify: true` is refused, not honoured: a proxy that routes every
// pod's traffic by what the API server says must not believe a server it cannot authenticate.
//
// Secrets (the token, the client key) are held here but never appear in describe(), logs or the
// text of any exception.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "sources/kubernetes/bearer_token.hpp"

namespace dsproxy::sources::kubernetes {

// A configuration that cannot work (missing file, unsupported kubeconfig field, bad URL). The
// message names the file and the field, never a secret.
class KubernetesConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ApiServerConfig {
  // DNS name or IP literal, IPv6 without brackets ("fd00::1").
  std::string host;
  std::uint16_t port = 443;
  // A path prefix of the server URL ("https://rancher/k8s/clusters/c-1" → "/k8s/clusters/c-1"),
  // without a trailing slash; usually empty.
  std::string base_path;
  // The name the server certificate must carry when it differs from `host` (kubeconfig
  // `tls-server-name`); empty: `host` itself (a DNS name, or an IP SAN for an IP literal).
  std::string tls_server_name;
  // PEM certificates to trust; empty: the system trust store.
  std::string ca_pem;
  // Client certificate and key (PEM), both or neither.
  std::string client_cert_pem;
  std::string client_key_pem;
  // null: no Authorization header (client certificate only).
  std::shared_ptr<BearerToken> token;
  // The pod's namespace in-cluster, the context's namespace in a kubeconfig ("" if unset).
  std::string default_namespace;
  // Where this came from, for logs: "in-cluster (/var/run/secrets/...)" or
  // "kubeconfig /root/.kube/config, context kind-dual".
  std::string origin;

  // "host:port", IPv6 literals bracketed: the Host header and the URL's authority.
  std::string authority() const;
  // "https://authority/base_path", for logs and /config_dump (nothing secret in it).
  std::string url() const;
  // One line for logs: url, origin, how it authenticates ("bearer token from FILE", "client
  // certificate"), never the secret itself.
  std::string describe() const;
};

inline constexpr std::string_view kDefaultServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount";

// Reads an environment variable; nullptr if unset. Tests pass their own.
using EnvLookup = std::function<const char*(const char*)>;

// In-cluster: KUBERNETES_SERVICE_HOST (an IPv4 or IPv6 literal or a name) and
// KUBERNETES_SERVICE_PORT, `dir`/ca.crt (required), `dir`/token (required, re-read on rotation),
// `dir`/namespace (optional). Throws KubernetesConfigError naming what is missing.
ApiServerConfig in_cluster_config(std::string_view service_account_dir = kDefaultServiceAccountDir,
                                  const EnvLookup& env = nullptr);

// True when KUBERNETES_SERVICE_HOST is set, i.e. dsproxy runs in a pod (the CLI's default mode).
bool running_in_cluster(const EnvLookup& env = nullptr);

// A kubeconfig file: `context` (empty: current-context) → its cluster (server,
// certificate-authority or certificate-authority-data, tls-server-name) and user (token or
// tokenFile, client-certificate(-data) and client-key(-data)). Relative file paths are relative to
// the kubeconfig's directory, as kubectl resolves them. exec and auth-provider plugins, basic
// auth, proxy-url and insecure-skip-tls-verify are refused with a KubernetesConfigError saying
// so. Only this one file is read (no KUBECONFIG merging).
ApiServerConfig kubeconfig_config(const std::string& path, std::string_view context = {});

// Parses "https://host[:port][/path]" into host, port and base_path of `config`. http:// is
// refused (TLS is always used). Throws KubernetesConfigError mentioning `where`.
void parse_server_url(std::string_view url, std::string_view where, ApiServerConfig& config);

}  // namespace dsproxy::sources::kubernetes
