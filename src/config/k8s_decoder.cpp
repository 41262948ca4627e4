#include "config/k8s_decoder.hpp"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace dsproxy::config {
namespace {

// Scalars are read as text and interpreted by the field's type, so `name: 123` is a name and
// `port: "80"` a port, whichever way the YAML or JSON writer quoted them. Structure is strict: a
// mapping or list where a scalar belongs is an error, never silently stringified.

bool is_set(const YAML::Node& n) {
  // Kubernetes treats an explicit null like an absent field (JSON `"field": null`).
  return n.IsDefined() && !n.IsNull();
}

std::string quote(std::string_view s) {
  // A value pasted into the wrong field can be huge; the message only needs enough to spot it.
  constexpr std::size_t kMax = 64;
  std::string out = "\"";
  if (s.size() > kMax) {
    out.append(s.substr(0, kMax - 3));
    out += "...";
  } else {
    out.append(s);
  }
  return out + "\"";
}

std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return quote(n.Scalar());
    case YAML::NodeType::Null: return "null";
    case YAML::NodeType::Undefined: break;
  }
  return "nothing";
}

std::optional<std::uint16_t> parse_port(std::string_view text) {
  unsigned long v = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc{} || ptr != end || v < 1 || v > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(v);
}

// True for text an IntOrString holds as a number: "9000", "-1", "+80". Such text is validated as
// a port number, so "-1" or "70000" is a range error rather than a port name nothing matches.
bool looks_numeric(std::string_view text) {
  if (!text.empty() && (text.front() == '-' || text.front() == '+')) text.remove_prefix(1);
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string index_path(const std::string& path, std::size_t i) { return path + "[" + std::to_string(i) + "]"; }

// "metadata.labels.app", but "metadata.labels[kubernetes.io/service-name]": a key with dots in
// it would read as more path.
std::string key_path(const std::string& path, const std::string& key) {
  const bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
  if (path.empty()) return key;
  return plain ? path + "." + key : path + "[" + key + "]";
}

const std::set<std::string> kServiceTypes = {"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"};

// Where the object being decoded is, as error messages name it.
struct Location {
  std::string source;
  std::size_t document = 0;  // 1-based
  std::size_t item = 0;      // 1-based within a List; 0 outside one
  std::string kind;          // set once the kind is known to be one we decode
  std::string ns;
  std::string name;

  std::string where() const {
    std::string s = "document " + std::to_string(document);
    if (item != 0) s += " item " + std::to_string(item);
    return s;
  }
  std::string prefix() const {
    std::string s = source + ": " + where();
    if (!kind.empty()) {
      s += " (" + kind;
      if (!name.empty()) s += " " + ns + "/" + name;
      s += ")";
    }
    return s;
  }
};

class StreamDecoder {
 public:
  explicit StreamDecoder(std::string_view source) : source_(source) {}

  void document(const YAML::Node& doc, std::size_t index) {
    loc_ = Location{source_, index, 0, {}, {}, {}};
    if (!is_set(doc)) return;  // `---` with nothing after it, or a bare `null`
    if (!doc.IsMap()) fail("", "expected a mapping (a Kubernetes object), got " + describe(doc));
    object(doc, "", "");
  }

  ClusterObjects take() { return std::move(out_); }

 private:
  [[noreturn]] void fail(const std::string& path, const std::string& message) const {
    throw ConfigError(loc_.prefix() + ": " + (path.empty() ? "" : path + ": ") + message);
  }
  void warn(const std::string& message) { out_.warnings.push_back(loc_.prefix() + ": " + message); }

  // ---- typed field access; every accessor treats an absent or null field as unset ----

  static YAML::Node get(const YAML::Node& parent, const char* key) {
    return parent.IsMap() ? parent[key] : YAML::Node();
  }

  YAML::Node mapping(const YAML::Node& parent, const char* key, const std::string& path) const {
    YAML::Node n = get(parent, key);
    if (!is_set(n)) return YAML::Node();
    if (!n.IsMap()) fail(path, "expected a mapping, got " + describe(n));
    return n;
  }

  YAML::Node sequence(const YAML::Node& parent, const char* key, const std::string& path) const {
    YAML::Node n = get(parent, key);
    if (!is_set(n)) return YAML::Node();
    if (!n.IsSequence()) fail(path, "expected a list, got " + describe(n));
    return n;
  }

  // Calls f(element, path) for each element of a list field, requiring each to be a mapping.
  template <typename F>
  void each_mapping(const YAML::Node& parent, const char* key, const std::string& path, F&& f) const {
    YAML::Node seq = sequence(parent, key, path);
    for (std::size_t i = 0; i < seq.size(); ++i) {
      const YAML::Node item = seq[i];
      const std::string p = index_path(path, i);
      if (!item.IsMap()) fail(p, "expected a mapping, got " + describe(item));
      f(item, p);
    }
  }

  std::string text(const YAML::Node& n, const std::string& path) const {
    if (!n.IsScalar()) fail(path, "expected a string, got " + describe(n));
    return n.Scalar();
  }

  std::optional<std::string> string(const YAML::Node& parent, const char* key, const std::string& path) const {
    YAML::Node n = get(parent, key);
    if (!is_set(n)) return std::nullopt;
    return text(n, path);
  }

  std::uint16_t port(const YAML::Node& n, const std::string& path) const {
    if (n.IsScalar())
      if (auto p = parse_port(n.Scalar())) return *p;
    fail(path, "expected an integer 1-65535, got " + describe(n));
  }

  std::uint16_t required_port(const YAML::Node& parent, const char* key, const std::string& path) const {
    YAML::Node n = get(parent, key);
    if (!is_set(n)) fail(path, "required");
    return port(n, path);
  }

  std::optional<bool> boolean(const YAML::Node& parent, const char* key, const std::string& path) const {
    YAML::Node n = get(parent, key);
    if (!is_set(n)) return std::nullopt;
    if (n.IsScalar()) {
      const std::string& s = n.Scalar();
      if (s == "true" || s == "True" || s == "TRUE") return true;
      if (s == "false" || s == "False" || s == "FALSE") return false;
    }
    fail(path, "expected true or false, got " + describe(n));
  }

  std::string protocol(const YAML::Node& parent, const std::string& path) const {
    std::string p = string(parent, "protocol", path + ".protocol").value_or("TCP");
    if (p != "TCP" && p != "UDP" && p != "SCTP") fail(path + ".protocol", "expected TCP, UDP or SCTP, got " + quote(p));
    return p;
  }

  // labels, annotations, selector: string to string. A null value is "", as in Kubernetes JSON.
  Labels string_map(const YAML::Node& parent, const char* key, const std::string& path) const {
    Labels out;
    YAML::Node m = mapping(parent, key, path);
    for (const auto& kv : m) {
      const std::string k = text(kv.first, path);
      const std::string p = key_path(path, k);
      out[k] = kv.second.IsNull() ? std::string() : text(kv.second, p);
    }
    return out;
  }

  net::IpAddress ip(const std::string& s, const std::string& path) const {
    auto a = net::IpAddress::parse(s);
    if (!a) fail(path, "expected an IP address, got " + quote(s));
    return *a;
  }

  // yaml-cpp keeps both entries of a repeated key and lookups see only the first; kubectl rejects
  // such input, and silently using half of it would hide the mistake.
  void check_duplicate_keys(const YAML::Node& n, const std::string& path) const {
    if (n.IsMap()) {
      std::set<std::string> seen;
      for (const auto& kv : n) {
        if (!kv.first.IsScalar()) continue;
        const std::string& k = kv.first.Scalar();
        const std::string p = key_path(path, k);
        if (!seen.insert(k).second) fail(p, "duplicate key");
        check_duplicate_keys(kv.second, p);
      }
    } else if (n.IsSequence()) {
      for (std::size_t i = 0; i < n.size(); ++i) check_duplicate_keys(n[i], index_path(path, i));
    }
  }

  // ---- objects ----

  // `inherited_*` come from a typed list (ServiceList, ...), whose items the API server sends
  // without kind and apiVersion.
  void object(const YAML::Node& node, const std::string& inherited_kind, const std::string& inherited_api) {
    const std::string kind = string(node, "kind", "kind").value_or(inherited_kind);
    if (kind.empty()) fail("kind", "required");
    const std::string api = string(node, "apiVersion", "apiVersion").value_or(inherited_api);

    if (loc_.item == 0 && kind == "List") {
      list(node, "", "");
      return;
    }
    if (loc_.item == 0 && kind.size() > 4 && kind.ends_with("List") && get(node, "items").IsSequence()) {
      list(node, kind.substr(0, kind.size() - 4), api);
      return;
    }

    const bool known = kind == "Service" || kind == "Pod" || kind == "EndpointSlice" || kind == "Node";
    if (!known) return;
    loc_.kind = kind;
    const std::string_view want_api = kind == "EndpointSlice" ? "discovery.k8s.io/v1" : "v1";
    if (!api.empty() && api != want_api) {
      // Most likely another API group's kind of the same name (a Knative Service); but a typo'd
      // core object would otherwise vanish without a trace.
      warn("apiVersion " + quote(api) + " is not " + std::string(want_api) + "; object ignored");
      return;
    }

    const YAML::Node meta = mapping(node, "metadata", "metadata");
    loc_.name = string(meta, "name", "metadata.name").value_or("");
    loc_.ns = string(meta, "namespace", "metadata.namespace").value_or("");
    if (loc_.ns.empty()) loc_.ns = "default";
    check_duplicate_keys(node, "");
    // Kubernetes has one object per kind/namespace/name; a second copy (the same dump pasted
    // twice, an edited copy left behind) would make which one wins an accident of ordering.
    if (!loc_.name.empty()) {
      auto [it, inserted] = seen_.emplace(std::tuple{loc_.kind, loc_.ns, loc_.name}, loc_.where());
      if (!inserted) fail("metadata.name", "the same " + kind + " is already defined in " + it->second);
    }

    if (kind == "Service") service(node, meta);
    else if (kind == "Pod") pod(node, meta);
    else if (kind == "Node") out_.nodes.push_back({loc_.name, string_map(meta, "labels", "metadata.labels")});
    else endpoint_slice(node, meta);
  }

  void list(const YAML::Node& node, const std::string& item_kind, const std::string& item_api) {
    const YAML::Node items = sequence(node, "items", "items");
    for (std::size_t i = 0; i < items.size(); ++i) {
      loc_ = Location{source_, loc_.document, i + 1, {}, {}, {}};
      const YAML::Node item = items[i];
      if (!is_set(item)) continue;
      if (!item.IsMap()) fail("", "expected a mapping (a Kubernetes object), got " + describe(item));
      object(item, item_kind, item_api);
    }
  }

  void service(const YAML::Node& node, const YAML::Node& meta) {
    Service s;
    s.name = loc_.name;
    s.ns = loc_.ns;
    if (s.name.empty()) fail("metadata.name", "required");
    s.labels = string_map(meta, "labels", "metadata.labels");
    s.annotations = string_map(meta, "annotations", "metadata.annotations");

    const YAML::Node spec = mapping(node, "spec", "spec");
    s.type = string(spec, "type", "spec.type").value_or("ClusterIP");
    if (!kServiceTypes.count(s.type))
      fail("spec.type", "expected one of ClusterIP, NodePort, LoadBalancer, ExternalName, got " + quote(s.type));
    s.external_name = string(spec, "externalName", "spec.externalName").value_or("");
    if (s.type == "ExternalName" && s.external_name.empty()) fail("spec.externalName", "required for type ExternalName");
    if (is_set(get(spec, "selector"))) s.selector = string_map(spec, "selector", "spec.selector");

    const std::vector<std::string> ip_paths = cluster_ips(spec, s);
    ip_families(spec, s, ip_paths);
    service_ports(spec, s);
    service_policies(spec, s);
    check_vips_unique(s, ip_paths);
    out_.services.push_back(std::move(s));
  }

  // Fills cluster_ips/headless; returns the field path of each cluster IP for later messages.
  std::vector<std::string> cluster_ips(const YAML::Node& spec, Service& s) const {
    std::vector<std::pair<std::string, std::string>> entries;  // text, path
    const YAML::Node list = sequence(spec, "clusterIPs", "spec.clusterIPs");
    for (std::size_t i = 0; i < list.size(); ++i) {
      const std::string p = index_path("spec.clusterIPs", i);
      entries.emplace_back(text(list[i], p), p);
    }
    // "" is how an object asks for an allocation; in a snapshot of a cluster it means none yet.
    const std::optional<std::string> single = string(spec, "clusterIP", "spec.clusterIP");
    const bool has_single = single && !single->empty();
    if (entries.empty() && has_single) entries.emplace_back(*single, "spec.clusterIP");

    for (const auto& [t, p] : entries) {
      if (t != "None") continue;
      if (entries.size() != 1) fail(p, "\"None\" (headless) must be the only cluster IP");
      if (has_single && *single != "None") fail("spec.clusterIP", quote(*single) + " differs from spec.clusterIPs[0] \"None\"");
      s.headless = true;
      return {};
    }
    if (entries.size() > 2)
      fail("spec.clusterIPs", "expected at most 2 addresses, one per IP family, got " + std::to_string(entries.size()));

    std::vector<std::string> paths;
    for (const auto& [t, p] : entries) {
      s.cluster_ips.push_back(ip(t, p));
      paths.push_back(p);
    }
    if (has_single && paths[0] != "spec.clusterIP" && ip(*single, "spec.clusterIP") != s.cluster_ips[0])
      fail("spec.clusterIP", quote(*single) + " differs from spec.clusterIPs[0] " + quote(entries[0].first));
    if (s.cluster_ips.size() == 2 && s.cluster_ips[0].family() == s.cluster_ips[1].family())
      fail(paths[1], "same IP family as " + paths[0] + "; a dual-stack service has one cluster IP per family");
    return paths;
  }

  void ip_families(const YAML::Node& spec, Service& s, const std::vector<std::string>& ip_paths) const {
    const YAML::Node fams = sequence(spec, "ipFamilies", "spec.ipFamilies");
    std::vector<net::Family> families;
    for (std::size_t i = 0; i < fams.size(); ++i) {
      const std::string p = index_path("spec.ipFamilies", i);
      const std::string t = text(fams[i], p);
      net::Family f;
      if (t == "IPv4") f = net::Family::v4;
      else if (t == "IPv6") f = net::Family::v6;
      else fail(p, "expected IPv4 or IPv6, got " + quote(t));
      if (std::find(families.begin(), families.end(), f) != families.end()) fail(p, t + " is listed twice");
      families.push_back(f);
    }

    const std::string policy = string(spec, "ipFamilyPolicy", "spec.ipFamilyPolicy").value_or("SingleStack");
    if (policy == "SingleStack") s.ip_family_policy = IpFamilyPolicy::SingleStack;
    else if (policy == "PreferDualStack") s.ip_family_policy = IpFamilyPolicy::PreferDualStack;
    else if (policy == "RequireDualStack") s.ip_family_policy = IpFamilyPolicy::RequireDualStack;
    else fail("spec.ipFamilyPolicy", "expected SingleStack, PreferDualStack or RequireDualStack, got " + quote(policy));

    if (fams.size() > 0) {
      // The API server allocates clusterIPs[i] from the family ipFamilies[i]; an object where
      // they disagree was not read from a cluster and would route by the wrong family.
      if (s.cluster_ips.size() > families.size())
        fail("spec.ipFamilies", "lists " + std::to_string(families.size()) + " IP family but there are " +
                                    std::to_string(s.cluster_ips.size()) + " cluster IPs");
      for (std::size_t i = 0; i < s.cluster_ips.size(); ++i)
        if (s.cluster_ips[i].family() != families[i])
          fail(ip_paths[i], "is an " + std::string(net::to_string(s.cluster_ips[i].family())) +
                                " address but spec.ipFamilies[" + std::to_string(i) + "] is " +
                                std::string(net::to_string(families[i])));
      s.ip_families = std::move(families);
    } else {
      for (const auto& a : s.cluster_ips) s.ip_families.push_back(a.family());
    }

    if (s.ip_family_policy == IpFamilyPolicy::SingleStack && s.ip_families.size() > 1)
      fail("spec.ipFamilyPolicy", "SingleStack (also the default) allows one IP family, but the service has 2; "
                                  "use PreferDualStack or RequireDualStack");
    const bool allocates_ips = !s.headless && s.type != "ExternalName";
    if (s.ip_family_policy == IpFamilyPolicy::RequireDualStack && allocates_ips && s.cluster_ips.size() < 2)
      fail("spec.clusterIPs", "RequireDualStack needs an IPv4 and an IPv6 cluster IP, got " +
                                  std::to_string(s.cluster_ips.size()));
  }

  void service_ports(const YAML::Node& spec, Service& s) const {
    const std::size_t count = sequence(spec, "ports", "spec.ports").size();
    // Indexes of the ports seen so far: comparing each port with every earlier one was quadratic,
    // minutes of CPU for a service with 60,000 ports.
    std::map<std::pair<std::uint16_t, std::string>, std::size_t> by_port;  // port, protocol -> index
    std::map<std::string, std::size_t> by_name;
    each_mapping(spec, "ports", "spec.ports", [&](const YAML::Node& n, const std::string& p) {
      ServicePort sp;
      sp.name = string(n, "name", p + ".name").value_or("");
      // EndpointSlice ports are matched to service ports by name, so names must tell them apart.
      if (count > 1 && sp.name.empty()) fail(p + ".name", "required when a service has more than one port");
      sp.port = required_port(n, "port", p + ".port");
      sp.protocol = protocol(n, p);
      sp.app_protocol = string(n, "appProtocol", p + ".appProtocol").value_or("");
      sp.target_port = sp.port;
      const YAML::Node tp = get(n, "targetPort");
      if (is_set(tp)) {
        if (!tp.IsScalar() || tp.Scalar().empty())
          fail(p + ".targetPort", "expected a port number 1-65535 or a port name, got " + describe(tp));
        if (looks_numeric(tp.Scalar()))
          sp.target_port = port(tp, p + ".targetPort");
        else
          sp.target_port = tp.Scalar();
      }
      const std::size_t index = s.ports.size();
      if (auto [it, fresh] = by_port.emplace(std::pair{sp.port, sp.protocol}, index); !fresh)
        fail(p + ".port", std::to_string(sp.port) + "/" + sp.protocol + " is already " + index_path("spec.ports", it->second));
      if (!sp.name.empty())
        if (auto [it, fresh] = by_name.emplace(sp.name, index); !fresh)
          fail(p + ".name", quote(sp.name) + " is already " + index_path("spec.ports", it->second) + ".name");
      s.ports.push_back(std::move(sp));
    });
  }

  // The kube-proxy semantics fields. Values the API server would reject are errors here too: a
  // typo'd policy silently meaning "Cluster" would send traffic where the user said it must not go.
  void service_policies(const YAML::Node& spec, Service& s) const {
    const std::string itp = string(spec, "internalTrafficPolicy", "spec.internalTrafficPolicy").value_or("Cluster");
    if (itp == "Cluster") s.internal_traffic_policy = TrafficPolicy::Cluster;
    else if (itp == "Local") s.internal_traffic_policy = TrafficPolicy::Local;
    else fail("spec.internalTrafficPolicy", "expected Cluster or Local, got " + quote(itp));

    const std::string sa = string(spec, "sessionAffinity", "spec.sessionAffinity").value_or("None");
    if (sa == "None") s.session_affinity = SessionAffinity::None;
    else if (sa == "ClientIP") s.session_affinity = SessionAffinity::ClientIP;
    else fail("spec.sessionAffinity", "expected None or ClientIP, got " + quote(sa));
    const YAML::Node cfg = mapping(spec, "sessionAffinityConfig", "spec.sessionAffinityConfig");
    const YAML::Node client = mapping(cfg, "clientIP", "spec.sessionAffinityConfig.clientIP");
    const std::string tp = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
    if (const YAML::Node t = get(client, "timeoutSeconds"); is_set(t)) {
      unsigned long v = 0;
      const std::string txt = t.IsScalar() ? t.Scalar() : std::string();
      auto [ptr, ec] = std::from_chars(txt.data(), txt.data() + txt.size(), v);
      if (!t.IsScalar() || ec != std::errc{} || ptr != txt.data() + txt.size() || v < 1 || v > 86400)
        fail(tp, "expected an integer 1-86400, got " + describe(t));
      s.affinity_timeout_s = static_cast<std::uint32_t>(v);
    }

    s.traffic_distribution = string(spec, "trafficDistribution", "spec.trafficDistribution").value_or("");
    // The API server's values. PreferSameNode validates, but node hints (hints.forNodes) are not
    // implemented: only its slices' zone hints apply.
    if (const auto& td = s.traffic_distribution;
        !td.empty() && td != "PreferClose" && td != "PreferSameZone" && td != "PreferSameNode")
      fail("spec.trafficDistribution", "expected PreferClose, PreferSameZone or PreferSameNode, got " + quote(td));
    s.publish_not_ready_addresses =
        boolean(spec, "publishNotReadyAddresses", "spec.publishNotReadyAddresses").value_or(false);
  }

  // Two services with one ClusterIP would make a VIP lookup ambiguous; a real cluster's
  // allocator never does it, so it is a mistake in hand-written input.
  void check_vips_unique(const Service& s, const std::vector<std::string>& ip_paths) {
    for (std::size_t i = 0; i < s.cluster_ips.size(); ++i) {
      auto [it, inserted] = vip_owner_.emplace(s.cluster_ips[i], s.ns + "/" + s.name + " (" + loc_.where() + ")");
      if (!inserted)
        fail(ip_paths[i], s.cluster_ips[i].to_string() + " is already the cluster IP of Service " + it->second);
    }
  }

  void pod(const YAML::Node& node, const YAML::Node& meta) {
    Pod p;
    p.name = loc_.name;
    p.ns = loc_.ns;
    if (p.name.empty()) fail("metadata.name", "required");
    p.labels = string_map(meta, "labels", "metadata.labels");
    // Set when deletion has begun: the pod is terminating (it may still serve through a preStop delay).
    p.terminating = string(meta, "deletionTimestamp", "metadata.deletionTimestamp").has_value();

    const YAML::Node spec = mapping(node, "spec", "spec");
    p.node_name = string(spec, "nodeName", "spec.nodeName").value_or("");
    // serviceAccount is the deprecated spelling older objects still carry.
    std::string sa = string(spec, "serviceAccountName", "spec.serviceAccountName").value_or("");
    if (sa.empty()) sa = string(spec, "serviceAccount", "spec.serviceAccount").value_or("");
    if (!sa.empty()) p.service_account = sa;
    p.host_network = boolean(spec, "hostNetwork", "spec.hostNetwork").value_or(false);
    each_mapping(spec, "containers", "spec.containers", [&](const YAML::Node& c, const std::string& cp) {
      each_mapping(c, "ports", cp + ".ports", [&](const YAML::Node& n, const std::string& pp) {
        ContainerPort port;
        port.name = string(n, "name", pp + ".name").value_or("");
        port.port = required_port(n, "containerPort", pp + ".containerPort");
        port.protocol = protocol(n, pp);
        p.container_ports.push_back(std::move(port));
      });
    });

    const YAML::Node status = mapping(node, "status", "status");
    each_mapping(status, "podIPs", "status.podIPs", [&](const YAML::Node& n, const std::string& ipp) {
      const auto t = string(n, "ip", ipp + ".ip");
      if (!t) fail(ipp + ".ip", "required");
      const net::IpAddress a = ip(*t, ipp + ".ip");
      for (const auto& prev : p.pod_ips)
        if (prev.family() == a.family()) fail(ipp + ".ip", "a pod has at most one address per IP family");
      p.pod_ips.push_back(a);
    });
    if (p.pod_ips.empty())
      if (auto t = string(status, "podIP", "status.podIP"); t && !t->empty()) p.pod_ips.push_back(ip(*t, "status.podIP"));
    each_mapping(status, "conditions", "status.conditions", [&](const YAML::Node& n, const std::string& cp) {
      if (string(n, "type", cp + ".type") == "Ready") p.ready = string(n, "status", cp + ".status") == "True";
    });
    out_.pods.push_back(std::move(p));
  }

  void endpoint_slice(const YAML::Node& node, const YAML::Node& meta) {
    EndpointSlice es;
    es.name = loc_.name;
    es.ns = loc_.ns;
    const Labels labels = string_map(meta, "labels", "metadata.labels");
    if (auto it = labels.find("kubernetes.io/service-name"); it != labels.end()) es.service_name = it->second;

    const auto type = string(node, "addressType", "addressType");
    if (!type) fail("addressType", "required");
    if (*type == "IPv4") es.address_type = AddressType::IPv4;
    else if (*type == "IPv6") es.address_type = AddressType::IPv6;
    else if (*type == "FQDN") {
      warn("addressType FQDN is not routed as is (a proxy for ClusterIPs needs addresses); its hostnames are "
           "resolved only for a Service annotated dsproxy.io/resolve: \"true\"");
      fqdn_slice(node, std::move(es));
      return;
    } else fail("addressType", "expected IPv4, IPv6 or FQDN, got " + quote(*type));
    const net::Family family = es.address_type == AddressType::IPv4 ? net::Family::v4 : net::Family::v6;

    each_mapping(node, "endpoints", "endpoints", [&](const YAML::Node& n, const std::string& ep) {
      SliceEndpoint e;
      const YAML::Node addrs = sequence(n, "addresses", ep + ".addresses");
      for (std::size_t i = 0; i < addrs.size(); ++i) {
        const std::string ap = index_path(ep + ".addresses", i);
        const net::IpAddress a = ip(text(addrs[i], ap), ap);
        if (a.family() != family)
          fail(ap, "expected an " + std::string(to_string(es.address_type)) + " address (the slice's addressType), got " +
                       quote(addrs[i].Scalar()));
        e.addresses.push_back(a);
      }
      const YAML::Node cond = mapping(n, "conditions", ep + ".conditions");
      e.ready = boolean(cond, "ready", ep + ".conditions.ready").value_or(true);
      e.serving = boolean(cond, "serving", ep + ".conditions.serving").value_or(e.ready);
      e.terminating = boolean(cond, "terminating", ep + ".conditions.terminating").value_or(false);
      e.node_name = string(n, "nodeName", ep + ".nodeName").value_or("");
      e.zone = string(n, "zone", ep + ".zone").value_or("");
      const YAML::Node hints = mapping(n, "hints", ep + ".hints");
      each_mapping(hints, "forZones", ep + ".hints.forZones", [&](const YAML::Node& z, const std::string& zp) {
        const auto name = string(z, "name", zp + ".name");
        if (!name || name->empty()) fail(zp + ".name", "required");
        e.zone_hints.push_back(*name);
      });
      const YAML::Node ref = mapping(n, "targetRef", ep + ".targetRef");
      if (string(ref, "kind", ep + ".targetRef.kind") == "Pod")
        e.target_pod = string(ref, "name", ep + ".targetRef.name").value_or("");
      es.endpoints.push_back(std::move(e));
    });

    each_mapping(node, "ports", "ports", [&](const YAML::Node& n, const std::string& pp) {
      EndpointSlicePort port;
      port.name = string(n, "name", pp + ".name");
      // A null port is legal: it means "all ports", which only selector-less services use.
      if (const YAML::Node pn = get(n, "port"); is_set(pn)) port.port = this->port(pn, pp + ".port");
      port.protocol = protocol(n, pp);
      es.ports.push_back(std::move(port));
    });
    out_.endpoint_slices.push_back(std::move(es));
  }

  // An FQDN slice: hostnames instead of addresses, kept in fqdn_slices.
  void fqdn_slice(const YAML::Node& node, EndpointSlice es) {
    es.address_type = AddressType::FQDN;
    each_mapping(node, "endpoints", "endpoints", [&](const YAML::Node& n, const std::string& ep) {
      SliceEndpoint e;
      const YAML::Node addrs = sequence(n, "addresses", ep + ".addresses");
      for (std::size_t i = 0; i < addrs.size(); ++i) {
        const std::string ap = index_path(ep + ".addresses", i);
        std::string host = text(addrs[i], ap);
        if (host.empty() || host.size() > 253 || host.find_first_not_of("abcdefghijklmnopqrstuvwxyz"
                                                                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") !=
                                                     std::string::npos)
          fail(ap, "expected a hostname (letters, digits, '-' and '.'), got " + quote(host));
        e.hostnames.push_back(std::move(host));
      }
      const YAML::Node cond = mapping(n, "conditions", ep + ".conditions");
      e.ready = boolean(cond, "ready", ep + ".conditions.ready").value_or(true);
      e.node_name = string(n, "nodeName", ep + ".nodeName").value_or("");
      es.endpoints.push_back(std::move(e));
    });
    each_mapping(node, "ports", "ports", [&](const YAML::Node& n, const std::string& pp) {
      EndpointSlicePort port;
      port.name = string(n, "name", pp + ".name");
      if (const YAML::Node pn = get(n, "port"); is_set(pn)) port.port = this->port(pn, pp + ".port");
      port.protocol = protocol(n, pp);
      es.ports.push_back(std::move(port));
    });
    out_.fqdn_slices.push_back(std::move(es));
  }

  std::string source_;
  Location loc_;
  ClusterObjects out_;
  std::map<std::tuple<std::string, std::string, std::string>, std::string> seen_;  // kind, ns, name -> where
  std::map<net::IpAddress, std::string> vip_owner_;                                // cluster IP -> "ns/name (where)"
};

std::string syntax_error(std::string_view source, const YAML::Exception& e) {
  std::string s(source);
  if (!e.mark.is_null())
    s += ": line " + std::to_string(e.mark.line + 1) + ", column " + std::to_string(e.mark.column + 1);
  return s + ": invalid YAML: " + e.msg;
}

// A pass over the parser's events before any node is built: yaml-cpp's node builder would
// allocate every node (memory) and the decoder walks alias targets once per alias (CPU, and
// forever for a cycle), so the limits must hold before either runs. Counting is linear in the
// input: each anchored node's expanded size is remembered, and an alias adds that size instead
// of walking it again. Sizes saturate, so 9^100 nodes cannot overflow the counters.
class LimitGuard final : public YAML::EventHandler {
 public:
  LimitGuard(std::string_view source, const DecodeLimits& limits) : source_(source), limits_(limits) {}

  void OnDocumentStart(const YAML::Mark& mark) override {
    // yaml-cpp 0.7 can stop consuming input after some malformed flow collections and then
    // report empty documents at the same place forever (found by the config fuzzer: 381 bytes
    // of broken JSON, endless CPU and memory). Every real document starts past the last one.
    ++document_;
    if (document_ > 1 && mark.pos == last_start_)
      fail(mark, "invalid YAML: the parser stopped advancing here (check the brackets and quotes before this point)");
    last_start_ = mark.pos;
    // Anchors are scoped to their document (yaml-cpp numbers them afresh in each).
    anchors_.clear();
    open_.clear();
  }
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override { leaf(mark, anchor); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor, const std::string&) override {
    leaf(mark, anchor);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    open(mark, anchor);
  }
  void OnSequenceEnd() override { close(); }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    open(mark, anchor);
  }
  void OnMapEnd() override { close(); }

  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    // yaml-cpp rejects an alias to an undefined anchor, so one not yet complete is an alias to a
    // mapping or list that contains it: a cycle, which no Kubernetes object has.
    const auto it = anchors_.find(anchor);
    if (it == anchors_.end()) fail(mark, "an alias refers to a mapping or list that contains it (a cycle)");
    alias_nodes_ = saturating_add(alias_nodes_, it->second);
    if (alias_nodes_ > limits_.max_alias_nodes)
      fail(mark, "aliases repeat more than " + std::to_string(limits_.max_alias_nodes) +
                     " nodes in total (the config alias-expansion limit)");
    add_to_parent(it->second);
  }

 private:
  struct Open {
    YAML::anchor_t anchor;
    std::size_t nodes;  // expanded size so far, the collection itself included
  };

  static std::size_t saturating_add(std::size_t a, std::size_t b) {
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
  }

  [[noreturn]] void fail(const YAML::Mark& mark, const std::string& message) const {
    std::string s(source_);
    s += ": document " + std::to_string(document_);
    if (!mark.is_null()) s += ": line " + std::to_string(mark.line + 1) + ", column " + std::to_string(mark.column + 1);
    throw ConfigError(s + ": " + message);
  }

  void count_node(const YAML::Mark& mark) {
    if (++nodes_ > limits_.max_nodes)
      fail(mark, "more than " + std::to_string(limits_.max_nodes) + " nodes (the config node limit)");
  }
  void add_to_parent(std::size_t n) {
    if (!open_.empty()) open_.back().nodes = saturating_add(open_.back().nodes, n);
  }
  void leaf(const YAML::Mark& mark, YAML::anchor_t anchor) {
    count_node(mark);
    if (anchor != YAML::NullAnchor) anchors_[anchor] = 1;
    add_to_parent(1);
  }
  void open(const YAML::Mark& mark, YAML::anchor_t anchor) {
    count_node(mark);
    if (open_.size() >= limits_.max_depth)
      fail(mark, "nested deeper than " + std::to_string(limits_.max_depth) + " levels (the config nesting limit)");
    open_.push_back({anchor, 1});
  }
  void close() {
    const Open done = open_.back();
    open_.pop_back();
    if (done.anchor != YAML::NullAnchor) anchors_[done.anchor] = done.nodes;
    add_to_parent(done.nodes);
  }

  std::string_view source_;
  const DecodeLimits& limits_;
  std::size_t document_ = 0;
  int last_start_ = 0;           // where the last document started (YAML::Mark::pos)
  std::size_t nodes_ = 0;        // nodes yaml-cpp will build, over all documents
  std::size_t alias_nodes_ = 0;  // nodes the decoder would walk again through aliases, over all documents
  std::unordered_map<YAML::anchor_t, std::size_t> anchors_;  // complete anchored node -> expanded size
  std::vector<Open> open_;
};

void check_limits(std::string_view text, std::string_view source, const DecodeLimits& limits) {
  if (text.size() > limits.max_bytes)
    throw ConfigError(std::string(source) + ": " + std::to_string(text.size()) + " bytes, more than " +
                      std::to_string(limits.max_bytes) + " (the config size limit)");
  std::istringstream in{std::string(text)};
  YAML::Parser parser(in);
  LimitGuard guard(source, limits);
  while (parser.HandleNextDocument(guard)) {
  }
}

}  // namespace

ClusterObjects decode_objects(std::string_view text, std::string_view source, const DecodeLimits& limits) {
  std::vector<YAML::Node> docs;
  try {
    check_limits(text, source, limits);
    docs = YAML::LoadAll(std::string(text));
  } catch (const YAML::Exception& e) {
    throw ConfigError(syntax_error(source, e));
  }
  StreamDecoder decoder(source);
  try {
    for (std::size_t i = 0; i < docs.size(); ++i) decoder.document(docs[i], i + 1);
  } catch (const YAML::Exception& e) {
    // The accessors check node types first, so this is a yaml-cpp surprise; still the user's input.
    throw ConfigError(syntax_error(source, e));
  }
  return decoder.take();
}

ClusterObjects load_objects_file(const std::string& path, const DecodeLimits& limits) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw ConfigError(path + ": is a directory, expected a YAML or JSON file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot open: " + std::strerror(errno));
  // Read one byte past the limit, never the whole of an oversized file (or an endless one: a
  // FIFO or /dev/zero named by mistake); decode_objects reports the size.
  std::string text;
  std::array<char, 64 * 1024> chunk;
  while (text.size() <= limits.max_bytes) {
    in.read(chunk.data(), chunk.size());
    const auto got = static_cast<std::size_t>(in.gcount());
    if (got == 0) break;
    text.append(chunk.data(), std::min(got, limits.max_bytes + 1 - text.size()));
  }
  if (in.bad()) throw ConfigError(path + ": read failed: " + std::strerror(errno));
  if (text.size() > limits.max_bytes)
    throw ConfigError(path + ": more than " + std::to_string(limits.max_bytes) + " bytes (the config size limit)");
  return decode_objects(text, path, limits);
}

}  // namespace dsproxy::config
