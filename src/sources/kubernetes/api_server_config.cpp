#include "sources/kubernetes/api_server_config.hpp"

#include <arpa/inet.h>
#include <yaml-cpp/yaml.h>

#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace dsproxy::sources::kubernetes {

namespace {

// Kubeconfigs with a few embedded certificates are tens of KB; a CA bundle a few hundred.
constexpr std::uintmax_t kMaxFileBytes = 16 * 1024 * 1024;

const char* lookup(const EnvLookup& env, const char* name) { return env ? env(name) : std::getenv(name); }

std::string read_file(const std::filesystem::path& path, std::string_view what) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw KubernetesConfigError(std::string(what) + " " + path.string() + ": " + ec.message());
  if (size > kMaxFileBytes) throw KubernetesConfigError(std::string(what) + " " + path.string() + ": larger than 16 MiB");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw KubernetesConfigError(std::string(what) + " " + path.string() + ": cannot be opened");
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

bool is_ipv6_literal(std::string_view host) {
  in6_addr addr{};
  return inet_pton(AF_INET6, std::string(host).c_str(), &addr) == 1;
}

std::uint16_t parse_port(std::string_view text, std::string_view where) {
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value == 0 || value > 65535)
    throw KubernetesConfigError(std::string(where) + ": port \"" + std::string(text) + "\" is not 1-65535");
  return static_cast<std::uint16_t>(value);
}

// Standard base64 (RFC 4648) as kubeconfig *-data fields carry it; whitespace is skipped.
std::string base64_decode(std::string_view in, std::string_view where) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(in.size() * 3 / 4);
  std::uint32_t bits = 0;
  int nbits = 0;
  bool padding = false;
  for (char c : in) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      padding = true;
      continue;
    }
    const int v = value(c);
    if (v < 0 || padding) throw KubernetesConfigError(std::string(where) + ": not valid base64");
    bits = (bits << 6) | static_cast<std::uint32_t>(v);
    nbits += 6;
    if (nbits >= 8) {
      nbits -= 8;
      out.push_back(static_cast<char>((bits >> nbits) & 0xff));
    }
  }
  if (nbits >= 6) throw KubernetesConfigError(std::string(where) + ": not valid base64");
  return out;
}

// A field of the wrong shape; kubeconfig_config() adds the file and context to the message.
struct FieldShapeError {
  std::string key;
};

std::string scalar(const YAML::Node& map, const char* key) {
  const YAML::Node node = map[key];
  if (!node || node.IsNull()) return {};
  if (!node.IsScalar()) throw FieldShapeError{key};
  return node.Scalar();
}

// Finds `name` in a kubeconfig list of {name:, <field>: {...}} entries and returns <field>.
YAML::Node named_entry(const YAML::Node& root, const char* list, const char* field, const std::string& name,
                       const std::string& where) {
  const YAML::Node entries = root[list];
  if (entries && entries.IsSequence()) {
    for (const auto& entry : entries) {
      if (entry.IsMap() && entry["name"] && entry["name"].IsScalar() && entry["name"].Scalar() == name) {
        const YAML::Node value = entry[field];
        if (!value || !value.IsMap())
          throw KubernetesConfigError(where + ": " + list + " entry \"" + name + "\" has no " + field);
        return value;
      }
    }
  }
  throw KubernetesConfigError(where + ": no " + field + " named \"" + name + "\" in " + list);
}

std::filesystem::path resolve(const std::filesystem::path& base_dir, const std::string& file) {
  const std::filesystem::path p(file);
  return p.is_absolute() ? p : base_dir / p;
}

// PEM from `<key>-data` (base64) or `<key>` (a file); empty if neither is set.
std::string pem_field(const YAML::Node& map, const std::string& key, const std::filesystem::path& base_dir,
                      const std::string& where) {
  try {
    const std::string data = scalar(map, (key + "-data").c_str());
    if (!data.empty()) return base64_decode(data, where + ": " + key + "-data");
    const std::string file = scalar(map, key.c_str());
    if (!file.empty()) return read_file(resolve(base_dir, file), where + ": " + key);
  } catch (const FieldShapeError& e) {
    throw KubernetesConfigError(where + ": " + e.key + " is not a string");
  }
  return {};
}

}  // namespace

std::string ApiServerConfig::authority() const {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string ApiServerConfig::url() const { return "https://" + authority() + base_path; }

std::string ApiServerConfig::describe() const {
  std::string auth;
  if (token) auth = token->file_backed() ? "bearer token from " + token->path() : "bearer token from the kubeconfig";
  if (!client_cert_pem.empty()) auth += std::string(auth.empty() ? "" : " and ") + "client certificate";
  if (auth.empty()) auth = "no credentials";
  std::string line = url() + " (" + origin + "; " + auth + "; CA: " + (ca_pem.empty() ? "system trust store" : "configured");
  if (!tls_server_name.empty()) line += "; verifying the name " + tls_server_name;
  return line + ")";
}

void parse_server_url(std::string_view url, std::string_view where, ApiServerConfig& config) {
  const std::string w(where);
  constexpr std::string_view kScheme = "https://";
  if (url.size() < kScheme.size() || std::string(url.substr(0, kScheme.size())) != kScheme) {
    if (url.substr(0, 7) == "http://")
      throw KubernetesConfigError(w + ": server \"" + std::string(url) + "\" is plain http; dsproxy only talks to the API server over verified TLS");
    throw KubernetesConfigError(w + ": server \"" + std::string(url) + "\" is not an https:// URL");
  }
  std::string_view rest = url.substr(kScheme.size());
  if (rest.find_first_of("?#") != std::string_view::npos)
    throw KubernetesConfigError(w + ": server URL must not have a query or fragment");
  const auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash);
  if (authority.find('@') != std::string_view::npos)
    throw KubernetesConfigError(w + ": server URL must not carry credentials");
  std::string_view host;
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) throw KubernetesConfigError(w + ": server URL has an unterminated [IPv6] literal");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') throw KubernetesConfigError(w + ": server URL has junk after the [IPv6] literal");
      port = after.substr(1);
    }
    if (!is_ipv6_literal(host)) throw KubernetesConfigError(w + ": server URL's [" + std::string(host) + "] is not an IPv6 address");
  } else {
    const auto colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
    if (port.find(':') != std::string_view::npos)
      throw KubernetesConfigError(w + ": server URL's IPv6 address must be in brackets");
  }
  if (host.empty()) throw KubernetesConfigError(w + ": server URL has no host");
  config.host = std::string(host);
  config.port = port.empty() ? 443 : parse_port(port, w + ": server URL");
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  config.base_path = std::string(path);
}

bool running_in_cluster(const EnvLookup& env) {
  const char* host = lookup(env, "KUBERNETES_SERVICE_HOST");
  return host != nullptr && *host != '\0';
}

ApiServerConfig in_cluster_config(std::string_view service_account_dir, const EnvLookup& env) {
  const char* host = lookup(env, "KUBERNETES_SERVICE_HOST");
  const char* port = lookup(env, "KUBERNETES_SERVICE_PORT");
  if (host == nullptr || *host == '\0' || port == nullptr || *port == '\0')
    throw KubernetesConfigError(
        "in-cluster configuration needs KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT (set by the kubelet in "
        "every pod); outside a cluster use --kubeconfig");
  ApiServerConfig config;
  std::string_view h(host);
  // The kubelet writes the bare address ("fd00:10:96::1"); tolerate a bracketed one too.
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  config.host = std::string(h);
  config.port = parse_port(port, "KUBERNETES_SERVICE_PORT");
  const std::filesystem::path dir(service_account_dir);
  config.ca_pem = read_file(dir / "ca.crt", "in-cluster CA");
  config.token = BearerToken::from_file((dir / "token").string());
  std::error_code ec;
  if (std::filesystem::exists(dir / "namespace", ec)) {
    std::string ns = read_file(dir / "namespace", "in-cluster namespace");
    while (!ns.empty() && (ns.back() == '\n' || ns.back() == ' ' || ns.back() == '\r')) ns.pop_back();
    config.default_namespace = std::move(ns);
  }
  config.origin = "in-cluster, service account " + dir.string();
  return config;
}

ApiServerConfig kubeconfig_config(const std::string& path, std::string_view context_override) {
  const std::string text = read_file(path, "kubeconfig");
  const std::filesystem::path base_dir = std::filesystem::absolute(std::filesystem::path(path)).parent_path();
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw KubernetesConfigError("kubeconfig " + path + ": not valid YAML: " + e.what());
  }
  if (!root.IsMap()) throw KubernetesConfigError("kubeconfig " + path + ": not a YAML mapping");
  try {
    std::string context_name(context_override);
    if (context_name.empty()) context_name = scalar(root, "current-context");
    if (context_name.empty())
      throw KubernetesConfigError("kubeconfig " + path + ": no current-context (set one with kubectl config use-context)");
    const std::string where = "kubeconfig " + path + ", context " + context_name;
    const YAML::Node context = named_entry(root, "contexts", "context", context_name, "kubeconfig " + path);
    const std::string cluster_name = scalar(context, "cluster");
    const std::string user_name = scalar(context, "user");
    if (cluster_name.empty()) throw KubernetesConfigError(where + ": the context names no cluster");

    ApiServerConfig config;
    config.origin = where;
    config.default_namespace = scalar(context, "namespace");

    const YAML::Node cluster = named_entry(root, "clusters", "cluster", cluster_name, "kubeconfig " + path);
    const std::string cluster_where = where + ", cluster " + cluster_name;
    if (const YAML::Node skip = cluster["insecure-skip-tls-verify"]; skip && skip.IsScalar() && skip.as<bool>(false))
      throw KubernetesConfigError(cluster_where +
                                  ": insecure-skip-tls-verify is set; dsproxy always verifies the API server's "
                                  "certificate (give certificate-authority or certificate-authority-data)");
    if (!scalar(cluster, "proxy-url").empty())
      throw KubernetesConfigError(cluster_where + ": proxy-url is not supported");
    const std::string server = scalar(cluster, "server");
    if (server.empty()) throw KubernetesConfigError(cluster_where + ": no server");
    parse_server_url(server, cluster_where, config);
    config.tls_server_name = scalar(cluster, "tls-server-name");
    config.ca_pem = pem_field(cluster, "certificate-authority", base_dir, cluster_where);

    if (!user_name.empty()) {
      const YAML::Node user = named_entry(root, "users", "user", user_name, "kubeconfig " + path);
      const std::string user_where = where + ", user " + user_name;
      if (user["exec"] || user["auth-provider"])
        throw KubernetesConfigError(user_where +
                                    ": exec and auth-provider credential plugins are not supported; use a token, "
                                    "tokenFile or a client certificate");
      if (!scalar(user, "username").empty() || !scalar(user, "password").empty())
        throw KubernetesConfigError(user_where + ": basic authentication is not supported");
      const std::string token = scalar(user, "token");
      const std::string token_file = scalar(user, "tokenFile");
      if (!token.empty()) {
        config.token = BearerToken::fixed(token);
      } else if (!token_file.empty()) {
        config.token = BearerToken::from_file(resolve(base_dir, token_file).string());
      }
      config.client_cert_pem = pem_field(user, "client-certificate", base_dir, user_where);
      config.client_key_pem = pem_field(user, "client-key", base_dir, user_where);
      if (config.client_cert_pem.empty() != config.client_key_pem.empty())
        throw KubernetesConfigError(user_where + ": a client certificate needs both client-certificate and client-key");
    }
    return config;
  } catch (const FieldShapeError& e) {
    throw KubernetesConfigError("kubeconfig " + path + ": " + e.key + " is not a string");
  } catch (const YAML::Exception& e) {
    // A field of the wrong shape (a map where a string belongs); the message is yaml-cpp's, which
    // quotes positions, not values.
    throw KubernetesConfigError("kubeconfig " + path + ": " + e.what());
  }
}

}  // namespace dsproxy::sources::kubernetes
