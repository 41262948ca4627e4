#include "config/k8s_decoder.hpp"

#include <boost/json/value.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <istream>
#include <map>
#include <set>
#include <streambuf>
#include <unordered_map>
#include <utility>
#include <vector>

#include "config/field_path.hpp"
#include "config/json_reader.hpp"
#include "config/json_tree_builder.hpp"
#include "config/yaml_reader.hpp"

namespace dsproxy::config {
namespace {

namespace json = boost::json;

// A field's path, rendered only when a message needs it: decoding 100,000 endpoints builds no
// path strings at all.
class Path {
 public:
  Path() = default;
  explicit Path(std::string_view text) : text_(text) {}
  Path(const Path& parent, std::string_view key) : parent_(&parent), text_(key) {}
  Path(const Path& parent, std::size_t index) : parent_(&parent), index_(index), is_index_(true) {}
  std::string str() const {
    if (!parent_) return std::string(text_);
    return is_index_ ? index_path(parent_->str(), index_) : key_path(parent_->str(), text_);
  }

 private:
  const Path* parent_ = nullptr;
  std::string_view text_;
  std::size_t index_ = 0;
  bool is_index_ = false;
};

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

bool is_set(const json::value* v) {
  // Kubernetes treats an explicit null like an absent field (JSON `"field": null`).
  return v && !v->is_null();
}

bool is_scalar(const json::value& v) { return v.is_string() || v.is_number() || v.is_bool(); }

// A number or boolean as text. The readers keep every scalar that would not print back as
// written as a string, so this is the input's own text; only objects from elsewhere (the API
// watch) can hold other doubles, printed shortest.
std::string render(const json::value& v) {
  char buf[64];
  std::to_chars_result r{};
  switch (v.kind()) {
    case json::kind::int64: r = std::to_chars(buf, buf + sizeof buf, v.get_int64()); break;
    case json::kind::uint64: r = std::to_chars(buf, buf + sizeof buf, v.get_uint64()); break;
    case json::kind::double_: r = std::to_chars(buf, buf + sizeof buf, v.get_double()); break;
    case json::kind::bool_: return v.get_bool() ? "true" : "false";
    case json::kind::string: return std::string(v.get_string());
    default: return {};
  }
  return std::string(buf, r.ptr);
}

std::string describe(const json::value& v) {
  switch (v.kind()) {
    case json::kind::object: return "a mapping";
    case json::kind::array: return "a list";
    case json::kind::null: return "null";
    case json::kind::string: return quote(v.get_string());
    default: return quote(render(v));
  }
}

std::optional<std::uint16_t> parse_port(std::string_view text) {
  unsigned long v = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc{} || ptr != end || v < 1 || v > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(v);
}

// An integer field given as a number or as text of digits (`"80"`), in [lo, hi].
std::optional<std::uint64_t> integer_in(const json::value& v, std::uint64_t lo, std::uint64_t hi) {
  std::uint64_t n = 0;
  if (v.is_int64()) {
    if (v.get_int64() < 0) return std::nullopt;
    n = static_cast<std::uint64_t>(v.get_int64());
  } else if (v.is_uint64()) {
    n = v.get_uint64();
  } else if (v.is_string()) {
    const json::string& s = v.get_string();
    unsigned long long parsed = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), parsed);
    if (ec != std::errc{} || ptr != s.data() + s.size()) return std::nullopt;
    n = parsed;
  } else {
    return std::nullopt;
  }
  if (n < lo || n > hi) return std::nullopt;
  return n;
}

// True for text an IntOrString holds as a number: "9000", "-1", "+80". Such text is validated as
// a port number, so "-1" or "70000" is a range error rather than a port name nothing matches.
bool looks_numeric(std::string_view text) {
  if (!text.empty() && (text.front() == '-' || text.front() == '+')) text.remove_prefix(1);
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool is_known_kind(std::string_view kind) {
  return kind == "Service" || kind == "Pod" || kind == "EndpointSlice" || kind == "Node" ||
         kind == "Namespace" || kind == "AuthorizationPolicy";
}

// Istio serves AuthorizationPolicy as v1 (since 1.22) and v1beta1, the same schema.
bool is_authz_api(std::string_view api) { return api == "security.istio.io/v1" || api == "security.istio.io/v1beta1"; }

const std::set<std::string, std::less<>> kServiceTypes = {"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"};

// A copy of the whole object as last applied by `kubectl apply`: often the largest thing in a
// Service, and nothing dsproxy reads.
constexpr std::string_view kLastApplied = "kubectl.kubernetes.io/last-applied-configuration";

// Decodes one object; knows nothing of other objects. Every accessor treats an absent or null
// field as unset.
class ObjectDecoder {
 public:
  explicit ObjectDecoder(std::string where) : where_(std::move(where)) {}

  std::string prefix() const {
    std::string s = where_;
    if (!kind_.empty()) {
      s += " (" + kind_;
      if (!name_.empty()) s += " " + ns_ + "/" + name_;
      s += ")";
    }
    return s;
  }

  [[noreturn]] void fail(const std::string& path, const std::string& message) const {
    throw ConfigError(prefix() + ": " + (path.empty() ? "" : path + ": ") + message);
  }
  [[noreturn]] void fail(const Path& path, const std::string& message) const { fail(path.str(), message); }

  // The kind and apiVersion of `node`, those of its typed list if it has none.
  std::pair<std::string, std::string> resolve(const json::object& node, std::string_view inherited_kind,
                                              std::string_view inherited_api) const {
    std::string kind = string(&node, "kind", Path("kind")).value_or(std::string(inherited_kind));
    if (kind.empty()) fail("kind", "required");
    std::string api = string(&node, "apiVersion", Path("apiVersion")).value_or(std::string(inherited_api));
    return {std::move(kind), std::move(api)};
  }

  // nullopt: a kind dsproxy ignores, or another API group's kind of the same name (warned).
  std::optional<DecodedObject> decode(const std::string& kind, std::string_view api, const json::object& node,
                                      const std::optional<std::string>& duplicate) {
    if (!is_known_kind(kind)) return std::nullopt;
    kind_ = kind;
    const bool authz = kind == "AuthorizationPolicy";
    const std::string_view want_api =
        kind == "EndpointSlice" ? "discovery.k8s.io/v1" : authz ? "security.istio.io/v1" : "v1";
    if (!api.empty() && api != want_api && !(authz && is_authz_api(api))) {
      // Most likely another API group's kind of the same name (a Knative Service); but a typo'd
      // core object would otherwise vanish without a trace.
      warn("apiVersion " + quote(api) + " is not " + std::string(want_api) + "; object ignored");
      return std::nullopt;
    }

    const Path meta_path("metadata");
    const json::object* meta = mapping(&node, "metadata", meta_path);
    name_ = string(meta, "name", Path(meta_path, "name")).value_or("");
    ns_ = string(meta, "namespace", Path(meta_path, "namespace")).value_or("");
    if (ns_.empty()) ns_ = "default";
    // The readers keep a repeated key's first value and name the first repetition: kubectl
    // rejects such input, and silently using half of it would hide the mistake.
    if (duplicate) fail(*duplicate, "duplicate key");
    past_identity_ = true;

    if (kind == "Service") return service(node, meta);
    if (kind == "Pod") return pod(node, meta);
    if (kind == "Node") return Node{name_, string_map(meta, "labels", Path(meta_path, "labels"))};
    if (kind == "Namespace") return Namespace{name_, string_map(meta, "labels", Path(meta_path, "labels"))};

    if (authz) return authorization_policy(node, meta, api.empty() ? want_api : api);
    return endpoint_slice(node, meta);
  }

  std::vector<std::string> warnings;
  bool ips_from_list = false;  // a Service's cluster IPs came from spec.clusterIPs (their paths in messages)
  bool past_identity() const { return past_identity_; }
  const std::string& kind() const { return kind_; }
  const std::string& ns() const { return ns_; }
  const std::string& name() const { return name_; }

 private:
  void warn(const std::string& message) { warnings.push_back(prefix() + ": " + message); }

  // ---- typed field access ----

  static const json::value* get(const json::object* parent, std::string_view key) {
    return parent ? parent->if_contains(key) : nullptr;
  }

  const json::object* mapping(const json::object* parent, std::string_view key, const Path& path) const {
    const json::value* n = get(parent, key);
    if (!is_set(n)) return nullptr;
    if (!n->is_object()) fail(path, "expected a mapping, got " + describe(*n));
    return &n->get_object();
  }

  const json::array* sequence(const json::object* parent, std::string_view key, const Path& path) const {
    const json::value* n = get(parent, key);
    if (!is_set(n)) return nullptr;
    if (!n->is_array()) fail(path, "expected a list, got " + describe(*n));
    return &n->get_array();
  }

  // Calls f(element, path) for each element of a list field, requiring each to be a mapping.
  template <typename F>
  void each_mapping(const json::object* parent, std::string_view key, const Path& path, F&& f) const {
    const json::array* seq = sequence(parent, key, path);
    if (!seq) return;
    for (std::size_t i = 0; i < seq->size(); ++i) {
      const json::value& item = (*seq)[i];
      const Path p(path, i);
      if (!item.is_object()) fail(p, "expected a mapping, got " + describe(item));
      f(item.get_object(), p);
    }
  }

  std::string text(const json::value& n, const Path& path) const {
    if (n.is_string()) return std::string(n.get_string());
    if (!is_scalar(n)) fail(path, "expected a string, got " + describe(n));
    return render(n);
  }

  std::optional<std::string> string(const json::object* parent, std::string_view key, const Path& path) const {
    const json::value* n = get(parent, key);
    if (!is_set(n)) return std::nullopt;
    return text(*n, path);
  }

  // A field compared with a few keywords: no copy when it is a string, as nearly all are.
  std::optional<std::string_view> word(const json::object* parent, std::string_view key, const Path& path) {
    const json::value* n = get(parent, key);
    if (!is_set(n)) return std::nullopt;
    if (n->is_string()) return std::string_view(n->get_string());
    return rendered_.emplace_back(text(*n, path));
  }

  std::uint16_t port(const json::value& n, const Path& path) const {
    if (n.is_string()) {
      if (auto p = parse_port(n.get_string())) return *p;
    } else if (auto p = integer_in(n, 1, 65535)) {
      return static_cast<std::uint16_t>(*p);
    }
    fail(path, "expected an integer 1-65535, got " + describe(n));
  }

  std::uint16_t required_port(const json::object* parent, std::string_view key, const Path& path) const {
    const json::value* n = get(parent, key);
    if (!is_set(n)) fail(path, "required");
    return port(*n, path);
  }

  std::optional<bool> boolean(const json::object* parent, std::string_view key, const Path& path) const {
    const json::value* n = get(parent, key);
    if (!is_set(n)) return std::nullopt;
    if (n->is_bool()) return n->get_bool();
    if (n->is_string()) {
      const std::string_view s = n->get_string();
      if (s == "true" || s == "True" || s == "TRUE") return true;
      if (s == "false" || s == "False" || s == "FALSE") return false;
    }
    fail(path, "expected true or false, got " + describe(*n));
  }

  std::string protocol(const json::object& parent, const Path& path) {
    const Path p(path, "protocol");
    const std::string_view proto = word(&parent, "protocol", p).value_or("TCP");
    if (proto != "TCP" && proto != "UDP" && proto != "SCTP") fail(p, "expected TCP, UDP or SCTP, got " + quote(proto));
    return std::string(proto);
  }

  // labels, annotations, selector: string to string. A null value is "", as in Kubernetes JSON.
  Labels string_map(const json::object* parent, std::string_view key, const Path& path,
                    std::string_view skip = {}) const {
    Labels out;
    const json::object* m = mapping(parent, key, path);
    if (!m) return out;
    for (const auto& kv : *m) {
      const std::string_view k = kv.key();
      const Path p(path, k);
      std::string v = kv.value().is_null() ? std::string() : text(kv.value(), p);
      if (!skip.empty() && k == skip) continue;
      out.emplace_hint(out.end(), std::string(k), std::move(v));
    }
    return out;
  }

  // One value of a string map, the rest only checked: an EndpointSlice needs one label.
  std::optional<std::string> string_map_value(const json::object* parent, std::string_view key, const Path& path,
                                              std::string_view wanted) const {
    std::optional<std::string> found;
    const json::object* m = mapping(parent, key, path);
    if (!m) return found;
    for (const auto& kv : *m) {
      if (kv.value().is_null()) {
        if (kv.key() == wanted) found.emplace();
      } else if (kv.value().is_string()) {
        if (kv.key() == wanted) found.emplace(kv.value().get_string());
      } else {
        std::string v = text(kv.value(), Path(path, kv.key()));
        if (kv.key() == wanted) found = std::move(v);
      }
    }
    return found;
  }

  net::IpAddress ip(std::string_view s, const Path& path) const {
    auto a = net::IpAddress::parse(s);
    if (!a) fail(path, "expected an IP address, got " + quote(s));
    return *a;
  }

  // ---- objects ----

  Service service(const json::object& node, const json::object* meta) {
    Service s;
    s.name = name_;
    s.ns = ns_;
    const Path meta_path("metadata");
    if (s.name.empty()) fail(Path(meta_path, "name"), "required");
    s.labels = string_map(meta, "labels", Path(meta_path, "labels"));
    s.annotations = string_map(meta, "annotations", Path(meta_path, "annotations"), kLastApplied);

    const Path spec_path("spec");
    const json::object* spec = mapping(&node, "spec", spec_path);
    s.type = string(spec, "type", Path(spec_path, "type")).value_or("ClusterIP");
    if (!kServiceTypes.count(s.type))
      fail("spec.type", "expected one of ClusterIP, NodePort, LoadBalancer, ExternalName, got " + quote(s.type));
    s.external_name = string(spec, "externalName", Path(spec_path, "externalName")).value_or("");
    if (s.type == "ExternalName" && s.external_name.empty()) fail("spec.externalName", "required for type ExternalName");
    if (is_set(get(spec, "selector"))) s.selector = string_map(spec, "selector", Path(spec_path, "selector"));

    const std::vector<std::string> ip_paths = cluster_ips(spec, s);
    ip_families(spec, s, ip_paths);
    service_ports(spec, s);
    service_policies(spec, s);
    return s;
  }

  // Fills cluster_ips/headless; returns the field path of each cluster IP for later messages.
  std::vector<std::string> cluster_ips(const json::object* spec, Service& s) {
    std::vector<std::pair<std::string, std::string>> entries;  // text, path
    const Path list_path("spec.clusterIPs");
    if (const json::array* list = sequence(spec, "clusterIPs", list_path))
      for (std::size_t i = 0; i < list->size(); ++i) {
        const Path p(list_path, i);
        entries.emplace_back(text((*list)[i], p), p.str());
      }
    ips_from_list = !entries.empty();
    // "" is how an object asks for an allocation; in a snapshot of a cluster it means none yet.
    const std::optional<std::string> single = string(spec, "clusterIP", Path("spec.clusterIP"));
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
    for (auto& [t, p] : entries) {
      s.cluster_ips.push_back(ip(t, Path(p)));
      paths.push_back(std::move(p));
    }
    if (has_single && paths[0] != "spec.clusterIP" && ip(*single, Path("spec.clusterIP")) != s.cluster_ips[0])
      fail("spec.clusterIP", quote(*single) + " differs from spec.clusterIPs[0] " + quote(entries[0].first));
    if (s.cluster_ips.size() == 2 && s.cluster_ips[0].family() == s.cluster_ips[1].family())
      fail(paths[1], "same IP family as " + paths[0] + "; a dual-stack service has one cluster IP per family");
    return paths;
  }

  void ip_families(const json::object* spec, Service& s, const std::vector<std::string>& ip_paths) {
    const Path fams_path("spec.ipFamilies");
    const json::array* fams = sequence(spec, "ipFamilies", fams_path);
    std::vector<net::Family> families;
    if (fams)
      for (std::size_t i = 0; i < fams->size(); ++i) {
        const Path p(fams_path, i);
        const std::string t = text((*fams)[i], p);
        net::Family f;
        if (t == "IPv4") f = net::Family::v4;
        else if (t == "IPv6") f = net::Family::v6;
        else fail(p, "expected IPv4 or IPv6, got " + quote(t));
        if (std::find(families.begin(), families.end(), f) != families.end()) fail(p, t + " is listed twice");
        families.push_back(f);
      }

    const std::string_view policy = word(spec, "ipFamilyPolicy", Path("spec.ipFamilyPolicy")).value_or("SingleStack");
    if (policy == "SingleStack") s.ip_family_policy = IpFamilyPolicy::SingleStack;
    else if (policy == "PreferDualStack") s.ip_family_policy = IpFamilyPolicy::PreferDualStack;
    else if (policy == "RequireDualStack") s.ip_family_policy = IpFamilyPolicy::RequireDualStack;
    else fail("spec.ipFamilyPolicy", "expected SingleStack, PreferDualStack or RequireDualStack, got " + quote(policy));

    if (fams && !fams->empty()) {
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

  void service_ports(const json::object* spec, Service& s) {
    const Path ports_path("spec.ports");
    const json::array* list = sequence(spec, "ports", ports_path);
    const std::size_t count = list ? list->size() : 0;
    s.ports.reserve(count);
    // Indexes of the ports seen so far: comparing each port with every earlier one was quadratic,
    // minutes of CPU for a service with 60,000 ports.
    std::map<std::pair<std::uint16_t, std::string>, std::size_t> by_port;  // port, protocol -> index
    std::map<std::string, std::size_t, std::less<>> by_name;
    each_mapping(spec, "ports", ports_path, [&](const json::object& n, const Path& p) {
      ServicePort sp;
      sp.name = string(&n, "name", Path(p, "name")).value_or("");
      // EndpointSlice ports are matched to service ports by name, so names must tell them apart.
      if (count > 1 && sp.name.empty()) fail(Path(p, "name"), "required when a service has more than one port");
      sp.port = required_port(&n, "port", Path(p, "port"));
      sp.protocol = protocol(n, p);
      sp.app_protocol = string(&n, "appProtocol", Path(p, "appProtocol")).value_or("");
      sp.target_port = sp.port;
      if (const json::value* tp = get(&n, "targetPort"); is_set(tp)) {
        const Path tpp(p, "targetPort");
        const std::string t = is_scalar(*tp) ? render(*tp) : std::string();
        if (t.empty()) fail(tpp, "expected a port number 1-65535 or a port name, got " + describe(*tp));
        if (looks_numeric(t))
          sp.target_port = port(*tp, tpp);
        else
          sp.target_port = t;
      }
      const std::size_t index = s.ports.size();
      if (auto [it, fresh] = by_port.emplace(std::pair{sp.port, sp.protocol}, index); !fresh)
        fail(Path(p, "port"), std::to_string(sp.port) + "/" + sp.protocol + " is already " + index_path("spec.ports", it->second));
      if (!sp.name.empty())
        if (auto [it, fresh] = by_name.emplace(sp.name, index); !fresh)
          fail(Path(p, "name"), quote(sp.name) + " is already " + index_path("spec.ports", it->second) + ".name");
      s.ports.push_back(std::move(sp));
    });
  }

  // The kube-proxy semantics fields. Values the API server would reject are errors here too: a
  // typo'd policy silently meaning "Cluster" would send traffic where the user said it must not go.
  void service_policies(const json::object* spec, Service& s) {
    const std::string_view itp =
        word(spec, "internalTrafficPolicy", Path("spec.internalTrafficPolicy")).value_or("Cluster");
    if (itp == "Cluster") s.internal_traffic_policy = TrafficPolicy::Cluster;
    else if (itp == "Local") s.internal_traffic_policy = TrafficPolicy::Local;
    else fail("spec.internalTrafficPolicy", "expected Cluster or Local, got " + quote(itp));

    const std::string_view sa = word(spec, "sessionAffinity", Path("spec.sessionAffinity")).value_or("None");
    if (sa == "None") s.session_affinity = SessionAffinity::None;
    else if (sa == "ClientIP") s.session_affinity = SessionAffinity::ClientIP;
    else fail("spec.sessionAffinity", "expected None or ClientIP, got " + quote(sa));
    const json::object* cfg = mapping(spec, "sessionAffinityConfig", Path("spec.sessionAffinityConfig"));
    const json::object* client = mapping(cfg, "clientIP", Path("spec.sessionAffinityConfig.clientIP"));
    const std::string tp = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
    if (const json::value* t = get(client, "timeoutSeconds"); is_set(t)) {
      const auto v = integer_in(*t, 1, 86400);
      if (!v) fail(tp, "expected an integer 1-86400, got " + describe(*t));
      s.affinity_timeout_s = static_cast<std::uint32_t>(*v);
    }

    s.traffic_distribution = string(spec, "trafficDistribution", Path("spec.trafficDistribution")).value_or("");
    // The API server's values. PreferSameNode validates, but node hints (hints.forNodes) are not
    // implemented: only its slices' zone hints apply.
    if (const auto& td = s.traffic_distribution;
        !td.empty() && td != "PreferClose" && td != "PreferSameZone" && td != "PreferSameNode")
      fail("spec.trafficDistribution", "expected PreferClose, PreferSameZone or PreferSameNode, got " + quote(td));
    s.publish_not_ready_addresses =
        boolean(spec, "publishNotReadyAddresses", Path("spec.publishNotReadyAddresses")).value_or(false);
  }

  Pod pod(const json::object& node, const json::object* meta) {
    Pod p;
    p.name = name_;
    p.ns = ns_;
    const Path meta_path("metadata");
    if (p.name.empty()) fail("metadata.name", "required");
    p.labels = string_map(meta, "labels", Path(meta_path, "labels"));
    // Set when deletion has begun: the pod is terminating (it may still serve through a preStop delay).
    p.terminating = string(meta, "deletionTimestamp", Path(meta_path, "deletionTimestamp")).has_value();

    const Path spec_path("spec");
    const json::object* spec = mapping(&node, "spec", spec_path);
    p.node_name = string(spec, "nodeName", Path(spec_path, "nodeName")).value_or("");
    // serviceAccount is the deprecated spelling older objects still carry.
    std::string sa = string(spec, "serviceAccountName", Path(spec_path, "serviceAccountName")).value_or("");
    if (sa.empty()) sa = string(spec, "serviceAccount", Path(spec_path, "serviceAccount")).value_or("");
    if (!sa.empty()) p.service_account = std::move(sa);
    p.host_network = boolean(spec, "hostNetwork", Path(spec_path, "hostNetwork")).value_or(false);
    each_mapping(spec, "containers", Path(spec_path, "containers"), [&](const json::object& c, const Path& cp) {
      each_mapping(&c, "ports", Path(cp, "ports"), [&](const json::object& n, const Path& pp) {
        ContainerPort port;
        port.name = string(&n, "name", Path(pp, "name")).value_or("");
        port.port = required_port(&n, "containerPort", Path(pp, "containerPort"));
        port.protocol = protocol(n, pp);
        p.container_ports.push_back(std::move(port));
      });
    });

    const Path status_path("status");
    const json::object* status = mapping(&node, "status", status_path);
    each_mapping(status, "podIPs", Path(status_path, "podIPs"), [&](const json::object& n, const Path& ipp) {
      const Path ip_path(ipp, "ip");
      const auto t = string(&n, "ip", ip_path);
      if (!t) fail(ip_path, "required");
      const net::IpAddress a = ip(*t, ip_path);
      for (const auto& prev : p.pod_ips)
        if (prev.family() == a.family()) fail(ip_path, "a pod has at most one address per IP family");
      p.pod_ips.push_back(a);
    });
    if (p.pod_ips.empty())
      if (auto t = string(status, "podIP", Path(status_path, "podIP")); t && !t->empty())
        p.pod_ips.push_back(ip(*t, Path(status_path, "podIP")));
    each_mapping(status, "conditions", Path(status_path, "conditions"), [&](const json::object& n, const Path& cp) {
      if (word(&n, "type", Path(cp, "type")) == "Ready") p.ready = word(&n, "status", Path(cp, "status")) == "True";
    });
    return p;
  }

  void slice_ports(const json::object& node, EndpointSlice& es) {
    each_mapping(&node, "ports", Path("ports"), [&](const json::object& n, const Path& pp) {
      EndpointSlicePort port;
      port.name = string(&n, "name", Path(pp, "name"));
      // A null port is legal: it means "all ports", which only selector-less services use.
      if (const json::value* pn = get(&n, "port"); is_set(pn)) port.port = this->port(*pn, Path(pp, "port"));
      port.protocol = protocol(n, pp);
      es.ports.push_back(std::move(port));
    });
  }

  EndpointSlice endpoint_slice(const json::object& node, const json::object* meta) {
    EndpointSlice es;
    es.name = name_;
    es.ns = ns_;
    es.service_name =
        string_map_value(meta, "labels", Path(Path("metadata"), "labels"), "kubernetes.io/service-name").value_or("");

    const auto type = word(&node, "addressType", Path("addressType"));
    if (!type) fail("addressType", "required");
    if (*type == "IPv4") es.address_type = AddressType::IPv4;
    else if (*type == "IPv6") es.address_type = AddressType::IPv6;
    else if (*type == "FQDN") {
      warn("addressType FQDN is not routed as is (a proxy for ClusterIPs needs addresses); its hostnames are "
           "resolved only for a Service annotated dsproxy.io/resolve: \"true\"");
      return fqdn_slice(node, std::move(es));
    } else fail("addressType", "expected IPv4, IPv6 or FQDN, got " + quote(*type));
    const net::Family family = es.address_type == AddressType::IPv4 ? net::Family::v4 : net::Family::v6;

    const Path eps_path("endpoints");
    if (const json::array* eps = sequence(&node, "endpoints", eps_path)) es.endpoints.reserve(eps->size());
    each_mapping(&node, "endpoints", eps_path, [&](const json::object& n, const Path& ep) {
      SliceEndpoint e;
      const Path addrs_path(ep, "addresses");
      if (const json::array* addrs = sequence(&n, "addresses", addrs_path)) {
        e.addresses.reserve(addrs->size());
        for (std::size_t i = 0; i < addrs->size(); ++i) {
          const Path ap(addrs_path, i);
          const json::value& av = (*addrs)[i];
          const net::IpAddress a = av.is_string() ? ip(av.get_string(), ap) : ip(text(av, ap), ap);
          if (a.family() != family)
            fail(ap, "expected an " + std::string(to_string(es.address_type)) +
                         " address (the slice's addressType), got " + quote(render(av)));
          e.addresses.push_back(a);
        }
      }
      const Path cond_path(ep, "conditions");
      const json::object* cond = mapping(&n, "conditions", cond_path);
      e.ready = boolean(cond, "ready", Path(cond_path, "ready")).value_or(true);
      e.serving = boolean(cond, "serving", Path(cond_path, "serving")).value_or(e.ready);
      e.terminating = boolean(cond, "terminating", Path(cond_path, "terminating")).value_or(false);
      e.node_name = string(&n, "nodeName", Path(ep, "nodeName")).value_or("");
      e.zone = string(&n, "zone", Path(ep, "zone")).value_or("");
      const Path hints_path(ep, "hints");
      const json::object* hints = mapping(&n, "hints", hints_path);
      each_mapping(hints, "forZones", Path(hints_path, "forZones"), [&](const json::object& z, const Path& zp) {
        const auto name = string(&z, "name", Path(zp, "name"));
        if (!name || name->empty()) fail(Path(zp, "name"), "required");
        e.zone_hints.push_back(*name);
      });
      const Path ref_path(ep, "targetRef");
      const json::object* ref = mapping(&n, "targetRef", ref_path);
      if (word(ref, "kind", Path(ref_path, "kind")) == "Pod")
        e.target_pod = string(ref, "name", Path(ref_path, "name")).value_or("");
      es.endpoints.push_back(std::move(e));
    });
    slice_ports(node, es);
    return es;
  }

  // An FQDN slice: hostnames instead of addresses.
  EndpointSlice fqdn_slice(const json::object& node, EndpointSlice es) {
    es.address_type = AddressType::FQDN;
    each_mapping(&node, "endpoints", Path("endpoints"), [&](const json::object& n, const Path& ep) {
      SliceEndpoint e;
      const Path addrs_path(ep, "addresses");
      if (const json::array* addrs = sequence(&n, "addresses", addrs_path))
        for (std::size_t i = 0; i < addrs->size(); ++i) {
          const Path ap(addrs_path, i);
          std::string host = text((*addrs)[i], ap);
          if (host.empty() || host.size() > 253 ||
              host.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") !=
                  std::string::npos)
            fail(ap, "expected a hostname (letters, digits, '-' and '.'), got " + quote(host));
          e.hostnames.push_back(std::move(host));
        }
      const Path cond_path(ep, "conditions");
      const json::object* cond = mapping(&n, "conditions", cond_path);
      e.ready = boolean(cond, "ready", Path(cond_path, "ready")).value_or(true);
      e.node_name = string(&n, "nodeName", Path(ep, "nodeName")).value_or("");
      es.endpoints.push_back(std::move(e));
    });
    slice_ports(node, es);
    return es;
  }

  // ---- AuthorizationPolicy ----

  // A list of strings (principals, namespaces, ...): scalars only.
  std::vector<std::string> strings(const json::object* parent, std::string_view key, const Path& path) const {
    std::vector<std::string> out;
    const json::array* seq = sequence(parent, key, path);
    if (!seq) return out;
    out.reserve(seq->size());
    for (std::size_t i = 0; i < seq->size(); ++i) out.push_back(text((*seq)[i], Path(path, i)));
    return out;
  }

  // ipBlocks and the ip `when` values: an address or CIDR of either family. Istio's validation
  // refuses anything else, and so do we: dropping a bad entry would widen the rule.
  std::vector<net::Cidr> cidrs(const std::vector<std::string>& texts, const Path& path) const {
    std::vector<net::Cidr> out;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      auto c = net::Cidr::parse(texts[i]);
      if (!c) fail(Path(path, i), "expected an IP address or CIDR block, got " + quote(texts[i]));
      out.push_back(*c);
    }
    return out;
  }

  std::vector<std::uint16_t> ports(const std::vector<std::string>& texts, const Path& path) const {
    std::vector<std::uint16_t> out;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      auto p = parse_port(texts[i]);
      if (!p) fail(Path(path, i), "expected a port 1-65535, got " + quote(texts[i]));
      out.push_back(*p);
    }
    return out;
  }

  // Records the L7 fields a source or operation sets: their presence is all that matters.
  void l7_fields(const json::object* parent, std::initializer_list<std::string_view> keys, const Path& path,
                 std::vector<std::string>& found) const {
    for (std::string_view k : keys)
      if (!strings(parent, k, Path(path, k)).empty()) found.emplace_back(k);
  }

  AuthorizationPolicy authorization_policy(const json::object& node, const json::object* meta, std::string_view api) {
    AuthorizationPolicy ap;
    ap.name = name_;
    ap.ns = ns_;
    ap.api_version = std::string(api);
    const Path meta_path("metadata");
    if (ap.name.empty()) fail(Path(meta_path, "name"), "required");
    const Labels annotations = string_map(meta, "annotations", Path(meta_path, "annotations"), kLastApplied);
    if (auto it = annotations.find("istio.io/dry-run"); it != annotations.end()) {
      // Istio parses it with Go's strconv.ParseBool.
      const std::string& v = it->second;
      if (v == "true" || v == "True" || v == "TRUE" || v == "1" || v == "t" || v == "T") ap.dry_run = true;
      else if (!(v == "false" || v == "False" || v == "FALSE" || v == "0" || v == "f" || v == "F" || v.empty()))
        fail("metadata.annotations.istio.io/dry-run", "expected true or false, got " + quote(v));
    }

    const Path spec_path("spec");
    const json::object* spec = mapping(&node, "spec", spec_path);
    const Path sel_path(spec_path, "selector");
    if (const json::object* sel = mapping(spec, "selector", sel_path))
      if (is_set(get(sel, "matchLabels"))) ap.selector = string_map(sel, "matchLabels", Path(sel_path, "matchLabels"));
    if (ap.selector && ap.selector->empty()) ap.selector.reset();
    ap.has_target_refs = is_set(get(spec, "targetRef")) ||
                         (sequence(spec, "targetRefs", Path(spec_path, "targetRefs")) &&
                          !sequence(spec, "targetRefs", Path(spec_path, "targetRefs"))->empty());

    const std::string_view action = word(spec, "action", Path(spec_path, "action")).value_or("ALLOW");
    if (action == "ALLOW") ap.action = AuthzAction::allow;
    else if (action == "DENY") ap.action = AuthzAction::deny;
    else if (action == "AUDIT") ap.action = AuthzAction::audit;
    else if (action == "CUSTOM") ap.action = AuthzAction::custom;
    else fail("spec.action", "expected ALLOW, DENY, AUDIT or CUSTOM, got " + quote(action));

    each_mapping(spec, "rules", Path(spec_path, "rules"), [&](const json::object& r, const Path& rp) {
      AuthzRule rule;
      each_mapping(&r, "from", Path(rp, "from"), [&](const json::object& f, const Path& fp) {
        const Path sp(fp, "source");
        const json::object* s = mapping(&f, "source", sp);
        AuthzSource src;
        src.principals = strings(s, "principals", Path(sp, "principals"));
        src.not_principals = strings(s, "notPrincipals", Path(sp, "notPrincipals"));
        src.namespaces = strings(s, "namespaces", Path(sp, "namespaces"));
        src.not_namespaces = strings(s, "notNamespaces", Path(sp, "notNamespaces"));
        src.service_accounts = strings(s, "serviceAccounts", Path(sp, "serviceAccounts"));
        src.not_service_accounts = strings(s, "notServiceAccounts", Path(sp, "notServiceAccounts"));
        src.ip_blocks = cidrs(strings(s, "ipBlocks", Path(sp, "ipBlocks")), Path(sp, "ipBlocks"));
        src.not_ip_blocks = cidrs(strings(s, "notIpBlocks", Path(sp, "notIpBlocks")), Path(sp, "notIpBlocks"));
        l7_fields(s, {"requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks"}, sp,
                  src.l7);
        rule.from.push_back(std::move(src));
      });
      each_mapping(&r, "to", Path(rp, "to"), [&](const json::object& t, const Path& tp) {
        const Path op(tp, "operation");
        const json::object* o = mapping(&t, "operation", op);
        AuthzOperation oper;
        oper.ports = ports(strings(o, "ports", Path(op, "ports")), Path(op, "ports"));
        oper.not_ports = ports(strings(o, "notPorts", Path(op, "notPorts")), Path(op, "notPorts"));
        l7_fields(o, {"hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"}, op, oper.l7);
        rule.to.push_back(std::move(oper));
      });
      each_mapping(&r, "when", Path(rp, "when"), [&](const json::object& w, const Path& wp) {
        AuthzCondition c;
        c.key = string(&w, "key", Path(wp, "key")).value_or("");
        if (c.key.empty()) fail(Path(wp, "key"), "required");
        c.values = strings(&w, "values", Path(wp, "values"));
        c.not_values = strings(&w, "notValues", Path(wp, "notValues"));
        if (c.key == "source.ip" || c.key == "destination.ip") {
          c.cidr_values = cidrs(c.values, Path(wp, "values"));
          c.cidr_not_values = cidrs(c.not_values, Path(wp, "notValues"));
        } else if (c.key == "destination.port") {
          c.port_values = ports(c.values, Path(wp, "values"));
          c.port_not_values = ports(c.not_values, Path(wp, "notValues"));
        }
        rule.when.push_back(std::move(c));
      });
      ap.rules.push_back(std::move(rule));
    });
    return ap;
  }

  std::string where_;
  std::string kind_;  // set once the kind is known to be one we decode
  std::string ns_;
  std::string name_;
  bool past_identity_ = false;
  std::deque<std::string> rendered_;  // text of non-string scalars read by word()
};

// ---- streams of objects: documents, Lists, the checks across objects ----

// What decoding one object gave.
struct Outcome {
  std::size_t item = 0;  // 1-based within a List; 0 for the document itself
  std::optional<DecodedObject> object;
  bool ips_from_list = false;
  std::vector<std::string> warnings;
  std::optional<std::string> error;
  bool past_identity = false;  // the error came after kind, namespace and name were read
  std::string kind, ns, name;
};

class StreamDecoder final : public TreeSink {
 public:
  StreamDecoder(std::string_view source, const DecodeLimits& limits) : source_(source), limits_(limits) {}

  // The first decode error is kept and thrown once the whole input has been read: a syntax
  // error or a limit anywhere in the input is reported first, as when the input was parsed
  // whole before decoding.
  ClusterObjects take() {
    if (error_) throw ConfigError(*error_);
    return std::move(out_);
  }

  void item(std::size_t document, std::size_t index, json::value&& v, std::size_t nodes,
            const std::optional<std::string>& duplicate, const json::object& root) override {
    if (error_) return;
    start(document);
    const std::size_t item_no = index + 1;
    try {
      const json::value* kind = root.if_contains("kind");
      const json::value* api = root.if_contains("apiVersion");
      const bool kind_known = kind && kind->is_string();
      const std::string_view k = kind_known ? std::string_view(kind->get_string()) : std::string_view();
      if (kind_known && k == "List") {
        apply(evaluate(item_no, v, duplicate, "", ""));
        return;
      }
      if (kind_known && !(k.size() > 4 && k.ends_with("List"))) return;  // an "items" field of some object
      if (kind_known && api && api->is_string()) {
        apply(evaluate(item_no, v, duplicate, k.substr(0, k.size() - 4), api->get_string()));
        return;
      }
      speculate(item_no, v, nodes, duplicate);
    } catch (const ConfigError& e) {
      error_ = e.what();
    }
  }

  void document(std::size_t index, json::value&& root, const std::optional<std::string>& duplicate) override {
    start(index);
    if (!error_) {
      try {
        if (is_set(&root)) document_object(root, duplicate);
        else rollback();
      } catch (const ConfigError& e) {
        error_ = e.what();
      }
    }
    spec_ = Speculation{};
    document_ = 0;
  }

 private:
  // The items of a document whose kind is not known yet (kubectl sorts keys: "items" before
  // "kind"). An item that names its own kind and apiVersion decodes the same in any List, so it
  // is decoded and kept right away, with what it added to the checks across objects noted to be
  // taken back if the document turns out not to be a List after all. From the first item that
  // does not name them, items wait whole for the document's end, in order.
  struct Speculation {
    std::size_t services = 0, pods = 0, slices = 0, nodes = 0, namespaces = 0, fqdn_slices = 0, warnings = 0;
    std::vector<const std::string*> seen;  // keys added to seen_
    std::vector<net::IpAddress> vips;      // keys added to vip_owner_
    std::optional<std::string> error;      // the first failure; later items do not matter
    struct Waiting {
      std::size_t item;
      json::value value;
      std::optional<std::string> duplicate;
    };
    std::vector<Waiting> waiting;
    std::size_t waiting_nodes = 0;
  };

  void start(std::size_t document) {
    if (document_ == document) return;
    document_ = document;
    spec_ = Speculation{};
    spec_.services = out_.services.size();
    spec_.pods = out_.pods.size();
    spec_.slices = out_.endpoint_slices.size();
    spec_.nodes = out_.nodes.size();
    spec_.namespaces = out_.namespaces.size();
    spec_.fqdn_slices = out_.fqdn_slices.size();
    spec_.warnings = out_.warnings.size();
  }

  void speculate(std::size_t item_no, const json::value& v, std::size_t nodes,
                 const std::optional<std::string>& duplicate) {
    if (spec_.error || !is_set(&v)) return;
    const json::object* o = v.if_object();
    const json::value* own_kind = o ? o->if_contains("kind") : nullptr;
    const json::value* own_api = o ? o->if_contains("apiVersion") : nullptr;
    const bool self_described = !o || (own_kind && own_kind->is_string() && own_api && own_api->is_string());
    if (spec_.waiting.empty() && self_described) {
      speculating_ = true;
      try {
        apply(evaluate(item_no, v, duplicate, "", ""));
      } catch (const ConfigError& e) {
        spec_.error = e.what();
      }
      speculating_ = false;
      return;
    }
    // Kept whole, so bounded like one object's tree.
    spec_.waiting_nodes += nodes;
    if (spec_.waiting_nodes > limits_.max_object_nodes)
      throw InputLimitError("the items of a List whose kind comes after them, and that do not name their own kind "
                            "and apiVersion, hold more than " + std::to_string(limits_.max_object_nodes) +
                            " nodes (the config object-size limit)");
    spec_.waiting.push_back({item_no, json::value(v, json::storage_ptr()), duplicate});
  }

  // The document is not a List: what its "items" gave is taken back.
  void rollback() {
    out_.services.resize(spec_.services);
    out_.pods.resize(spec_.pods);
    out_.endpoint_slices.resize(spec_.slices);
    out_.nodes.resize(spec_.nodes);
    out_.namespaces.resize(spec_.namespaces);
    out_.fqdn_slices.resize(spec_.fqdn_slices);
    out_.warnings.resize(spec_.warnings);
    for (const std::string* key : spec_.seen) seen_.erase(std::string(*key));
    for (const net::IpAddress& vip : spec_.vips) vip_owner_.erase(vip);
    spec_ = Speculation{};
  }

  std::string where(std::size_t item) const {
    std::string s = "document " + std::to_string(document_);
    if (item != 0) s += " item " + std::to_string(item);
    return s;
  }

  void document_object(const json::value& root, const std::optional<std::string>& duplicate) {
    ObjectDecoder d(source_ + ": " + where(0));
    if (!root.is_object()) d.fail("", "expected a mapping (a Kubernetes object), got " + describe(root));
    const json::object& node = root.get_object();
    auto [kind, api] = d.resolve(node, "", "");
    const json::value* items = node.if_contains("items");
    if (kind == "List" || (kind.size() > 4 && kind.ends_with("List") && items && items->is_array())) {
      const std::string item_kind = kind == "List" ? "" : kind.substr(0, kind.size() - 4);
      const std::string item_api = kind == "List" ? "" : api;
      if (kind == "List" && is_set(items) && !items->is_array())
        d.fail("items", "expected a list, got " + describe(*items));
      if (spec_.error) throw ConfigError(*spec_.error);
      for (auto& w : spec_.waiting) apply(evaluate(w.item, w.value, w.duplicate, item_kind, item_api));
      return;
    }
    rollback();
    apply(decode(d, 0, kind, api, node, duplicate));
  }

  Outcome evaluate(std::size_t item, const json::value& v, const std::optional<std::string>& duplicate,
                   std::string_view item_kind, std::string_view item_api) {
    Outcome o;
    o.item = item;
    if (!is_set(&v)) return o;
    ObjectDecoder d(source_ + ": " + where(item));
    try {
      if (!v.is_object()) d.fail("", "expected a mapping (a Kubernetes object), got " + describe(v));
      auto [kind, api] = d.resolve(v.get_object(), item_kind, item_api);
      return decode(d, item, kind, api, v.get_object(), duplicate);
    } catch (const ConfigError& e) {
      o.error = e.what();
      return o;
    }
  }

  static Outcome decode(ObjectDecoder& d, std::size_t item, const std::string& kind, const std::string& api,
                        const json::object& node, const std::optional<std::string>& duplicate) {
    Outcome o;
    o.item = item;
    try {
      o.object = d.decode(kind, api, node, duplicate);
      o.ips_from_list = d.ips_from_list;
    } catch (const ConfigError& e) {
      o.error = e.what();
      o.past_identity = d.past_identity();
    }
    o.kind = d.kind();
    o.ns = d.ns();
    o.name = d.name();
    o.warnings = std::move(d.warnings);
    return o;
  }

  static std::string identity(std::string_view kind, std::string_view ns, std::string_view name) {
    std::string k(kind);
    k += '\0';
    k.append(ns);
    k += '\0';
    k.append(name);
    return k;
  }

  // Kubernetes has one object per kind/namespace/name; a second copy (the same dump pasted
  // twice, an edited copy left behind) would make which one wins an accident of ordering.
  void check_unique(std::size_t item, const std::string& kind, const std::string& ns, const std::string& name) {
    if (name.empty()) return;
    auto [it, inserted] = seen_.emplace(identity(kind, ns, name), std::pair{document_, item});
    if (inserted) {
      if (speculating_) spec_.seen.push_back(&it->first);
      return;
    }
    std::string where_then = "document " + std::to_string(it->second.first);
    if (it->second.second != 0) where_then += " item " + std::to_string(it->second.second);
    throw ConfigError(source_ + ": " + where(item) + " (" + kind + " " + ns + "/" + name +
                      "): metadata.name: the same " + kind + " is already defined in " + where_then);
  }

  void apply(Outcome&& o) {
    if (o.error) {
      if (o.past_identity) check_unique(o.item, o.kind, o.ns, o.name);
      throw ConfigError(*o.error);
    }
    for (auto& w : o.warnings) out_.warnings.push_back(std::move(w));
    if (!o.object) return;
    check_unique(o.item, o.kind, o.ns, o.name);
    std::visit(
        [&](auto& obj) {
          using T = std::decay_t<decltype(obj)>;
          if constexpr (std::is_same_v<T, Service>) {
            check_vips_unique(o.item, obj, o.ips_from_list);
            out_.services.push_back(std::move(obj));
          } else if constexpr (std::is_same_v<T, Pod>) {
            out_.pods.push_back(std::move(obj));
          } else if constexpr (std::is_same_v<T, EndpointSlice>) {
            if (obj.address_type == AddressType::FQDN) out_.fqdn_slices.push_back(std::move(obj));
            else out_.endpoint_slices.push_back(std::move(obj));
          } else if constexpr (std::is_same_v<T, Namespace>) {
            out_.namespaces.push_back(std::move(obj));

          } else if constexpr (std::is_same_v<T, AuthorizationPolicy>) {
            out_.authorization_policies.push_back(std::move(obj));
          } else {
            out_.nodes.push_back(std::move(obj));
          }
        },
        *o.object);
  }

  // Two services with one ClusterIP would make a VIP lookup ambiguous; a real cluster's
  // allocator never does it, so it is a mistake in hand-written input.
  void check_vips_unique(std::size_t item, const Service& s, bool ips_from_list) {
    for (std::size_t i = 0; i < s.cluster_ips.size(); ++i) {
      auto [it, inserted] = vip_owner_.emplace(s.cluster_ips[i], Owner{out_.services.size(), document_, item});
      if (inserted) {
        if (speculating_) spec_.vips.push_back(s.cluster_ips[i]);
        continue;
      }
      const Service& other = out_.services[it->second.service];
      std::string where_then = "document " + std::to_string(it->second.document);
      if (it->second.item != 0) where_then += " item " + std::to_string(it->second.item);
      const std::string path = ips_from_list ? index_path("spec.clusterIPs", i) : "spec.clusterIP";
      throw ConfigError(source_ + ": " + where(item) + " (Service " + s.ns + "/" + s.name + "): " + path + ": " +
                        s.cluster_ips[i].to_string() + " is already the cluster IP of Service " + other.ns + "/" +
                        other.name + " (" + where_then + ")");
    }
  }

  struct Owner {
    std::size_t service;  // index in out_.services
    std::size_t document;
    std::size_t item;
  };

  std::string source_;
  const DecodeLimits& limits_;
  std::size_t document_ = 0;
  ClusterObjects out_;
  std::optional<std::string> error_;
  Speculation spec_;
  bool speculating_ = false;
  std::unordered_map<std::string, std::pair<std::size_t, std::size_t>> seen_;  // kind\0ns\0name -> document, item
  std::map<net::IpAddress, Owner> vip_owner_;
};

bool looks_like_json(std::string_view text) {
  const std::size_t at = text.find_first_not_of(" \t\r\n");
  return at != std::string_view::npos && (text[at] == '{' || text[at] == '[');
}

// An istream over text the caller holds, without copying it (yaml-cpp reads from a stream).
class ViewBuffer : public std::streambuf {
 public:
  explicit ViewBuffer(std::string_view text) {
    char* p = const_cast<char*>(text.data());
    setg(p, p, p + text.size());
  }
};

ClusterObjects decode_yaml(std::istream& in, std::string_view source, const DecodeLimits& limits) {
  StreamDecoder decoder(source, limits);
  JsonTreeBuilder builder(decoder, limits);
  read_yaml(in, builder, source, limits);
  return decoder.take();
}

ClusterObjects decode_yaml_text(std::string_view text, std::string_view source, const DecodeLimits& limits) {
  ViewBuffer buffer(text);
  std::istream in(&buffer);
  return decode_yaml(in, source, limits);
}

// A file read in chunks, never past the byte limit (nor forever: a FIFO or /dev/zero named by
// mistake); `exceeded` says the limit stopped it. The first chunk is read ahead (prime) to tell
// JSON from YAML without seeking, which a FIFO cannot.
class FileBuffer : public std::streambuf {
 public:
  FileBuffer(std::ifstream& in, std::size_t limit) : in_(in), limit_(limit) {}
  bool exceeded() const { return exceeded_; }
  bool failed() const { return in_.bad(); }

  std::string_view prime() {
    primed_ = read();
    return primed_;
  }

  // The next chunk, or empty at the end.
  std::string_view next() {
    if (!primed_.empty()) return std::exchange(primed_, std::string_view());
    return read();
  }

 protected:
  int_type underflow() override {
    const std::string_view c = next();
    if (c.empty()) return traits_type::eof();
    char* p = const_cast<char*>(c.data());
    setg(p, p, p + c.size());
    return traits_type::to_int_type(c[0]);
  }

 private:
  std::string_view read() {
    if (exceeded_ || !in_) return {};
    in_.read(chunk_.data(), static_cast<std::streamsize>(chunk_.size()));
    const auto got = static_cast<std::size_t>(in_.gcount());
    total_ += got;
    if (total_ > limit_) {
      exceeded_ = true;
      return {};
    }
    return {chunk_.data(), got};
  }

  std::ifstream& in_;
  std::size_t limit_;
  std::size_t total_ = 0;
  bool exceeded_ = false;
  std::string_view primed_;
  std::array<char, 64 * 1024> chunk_;
};

}  // namespace

ClusterObjects decode_objects(std::string_view text, std::string_view source, const DecodeLimits& limits) {
  if (text.size() > limits.max_bytes)
    throw ConfigError(std::string(source) + ": " + std::to_string(text.size()) + " bytes, more than " +
                      std::to_string(limits.max_bytes) + " (the config size limit)");
  if (!looks_like_json(text)) return decode_yaml_text(text, source, limits);
  try {
    StreamDecoder decoder(source, limits);
    JsonTreeBuilder builder(decoder, limits);
    JsonReader reader(builder, source, limits);
    reader.write(text);
    reader.finish();
    return decoder.take();
  } catch (const JsonSyntaxError& json_error) {
    // Flow-style YAML looks like JSON too.
    try {
      return decode_yaml_text(text, source, limits);
    } catch (const ConfigError&) {
      throw ConfigError(json_error.what());
    }
  }
}

ClusterObjects load_objects_file(const std::string& path, const DecodeLimits& limits) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw ConfigError(path + ": is a directory, expected a YAML or JSON file");
  const auto open = [&] {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw ConfigError(path + ": cannot open: " + std::strerror(errno));
    return in;
  };
  const auto too_big = [&] {
    return ConfigError(path + ": more than " + std::to_string(limits.max_bytes) + " bytes (the config size limit)");
  };
  const auto read_failed = [&] { return ConfigError(path + ": read failed: " + std::strerror(errno)); };
  const auto as_yaml = [&](FileBuffer& buffer) {
    std::istream stream(&buffer);
    try {
      ClusterObjects o = decode_yaml(stream, path, limits);
      if (buffer.exceeded()) throw too_big();
      if (buffer.failed()) throw read_failed();
      return o;
    } catch (const ConfigError&) {
      // Input cut at the limit is not the user's syntax error.
      if (buffer.exceeded()) throw too_big();
      if (buffer.failed()) throw read_failed();
      throw;
    }
  };

  std::ifstream in = open();
  FileBuffer buffer(in, limits.max_bytes);
  // The first chunk says which format: a file that starts with `{` or `[` is read as JSON.
  const std::string_view first = buffer.prime();
  if (buffer.failed()) throw read_failed();
  if (!looks_like_json(first)) return as_yaml(buffer);
  try {
    StreamDecoder decoder(path, limits);
    JsonTreeBuilder builder(decoder, limits);
    JsonReader reader(builder, path, limits);
    for (std::string_view chunk = buffer.next(); !chunk.empty(); chunk = buffer.next()) reader.write(chunk);
    if (buffer.exceeded()) throw too_big();
    if (buffer.failed()) throw read_failed();
    reader.finish();
    return decoder.take();
  } catch (const JsonSyntaxError& json_error) {
    // Flow-style YAML looks like JSON too; read again, if the file can be read again.
    if (!std::filesystem::is_regular_file(path, ec)) throw;
    try {
      std::ifstream again = open();
      FileBuffer yaml_buffer(again, limits.max_bytes);
      return as_yaml(yaml_buffer);
    } catch (const ConfigError&) {
      throw ConfigError(json_error.what());
    }
  }
}

// ---- one object at a time ----

std::optional<DecodedObject> decode_object(std::string_view kind, const json::object& object, std::string_view where,
                                           std::vector<std::string>* warnings) {
  ObjectDecoder d{std::string(where)};
  auto [own_kind, api] = d.resolve(object, kind, "");
  if (own_kind != kind) d.fail("kind", "expected " + quote(kind) + " (the resource's kind), got " + quote(own_kind));
  auto result = d.decode(own_kind, api, object, std::nullopt);
  if (warnings)
    for (auto& w : d.warnings) warnings->push_back(std::move(w));
  return result;
}

std::optional<DecodedObject> decode_object(const json::object& object, std::string_view where,
                                           std::vector<std::string>* warnings) {
  ObjectDecoder d{std::string(where)};
  const std::string kind = d.resolve(object, "", "").first;
  return decode_object(kind, object, where, warnings);
}

}  // namespace dsproxy::config
