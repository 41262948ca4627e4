#include "resolver/cluster_dns.hpp"

#include <algorithm>
#include <optional>
#include <utility>

namespace dsproxy::resolver {

namespace {

bool has_family(const std::vector<net::Family>& families, net::Family f) {
  // A Service decoded without ipFamilies (and without ClusterIPs: headless) allows both.
  return families.empty() || std::find(families.begin(), families.end(), f) != families.end();
}

void add_unique(std::vector<net::IpAddress>& to, const net::IpAddress& ip) {
  if (std::find(to.begin(), to.end(), ip) == to.end()) to.push_back(ip);
}

// The address a reverse name (as reverse_name() writes it) stands for.
std::optional<net::IpAddress> reverse_address(const std::string& key) {
  static const std::string v4_suffix = ".in-addr.arpa";
  static const std::string v6_suffix = ".ip6.arpa";
  auto ends_with = [&](const std::string& suffix) {
    return key.size() > suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  std::optional<net::IpAddress> ip;
  if (ends_with(v4_suffix)) {
    std::vector<std::string> labels;
    std::string label;
    for (char c : key.substr(0, key.size() - v4_suffix.size())) {
      if (c == '.') labels.push_back(std::exchange(label, {}));
      else label += c;
    }
    labels.push_back(label);
    if (labels.size() != 4) return std::nullopt;
    ip = net::IpAddress::parse(labels[3] + "." + labels[2] + "." + labels[1] + "." + labels[0]);
  } else if (ends_with(v6_suffix)) {
    const std::string nibbles = key.substr(0, key.size() - v6_suffix.size());
    if (nibbles.size() != 63) return std::nullopt;
    std::string text;
    for (int i = 31; i >= 0; --i) {
      text += nibbles[static_cast<std::size_t>(i) * 2];
      if (i % 4 == 0 && i != 0) text += ':';
    }
    ip = net::IpAddress::parse(text);
  }
  // Only the canonical spelling names the address (no leading zeros, lower-case nibbles).
  if (!ip || reverse_name(*ip) != key) return std::nullopt;
  return ip;
}

}  // namespace

std::vector<std::string> pod_search_list(const std::string& ns, const std::string& domain) {
  return {ns + ".svc." + domain, "svc." + domain, domain};
}

std::string reverse_name(const net::IpAddress& ip) {
  static const char* hex = "0123456789abcdef";
  const auto& b = ip.bytes();
  std::string out;
  if (ip.is_v4()) {
    for (int i = 3; i >= 0; --i) out += std::to_string(b[static_cast<std::size_t>(i)]) + ".";
    return out + "in-addr.arpa";
  }
  for (int i = 15; i >= 0; --i) {
    out += hex[b[static_cast<std::size_t>(i)] & 0xf];
    out += '.';
    out += hex[b[static_cast<std::size_t>(i)] >> 4];
    out += '.';
  }
  return out + "ip6.arpa";
}

std::shared_ptr<const ClusterDns> ClusterDns::build(std::shared_ptr<const snapshot::ClusterSnapshot> snapshot,
                                                    const ClusterDnsOptions& options) {
  auto dns = std::make_shared<ClusterDns>();
  dns->options_ = options;
  dns->zone_ = Name::from_text(options.domain).value_or(Name{});
  dns->zone_key_ = dns->zone_.key();
  dns->snapshot_ = std::move(snapshot);
  return dns;
}

std::shared_ptr<const ClusterDns> ClusterDns::build(const config::ClusterObjects& objects,
                                                    const ClusterDnsOptions& options) {
  snapshot::ClusterSnapshot::Options snapshot_options;
  snapshot_options.cluster_domain = options.domain;
  return build(snapshot::ClusterSnapshot::build(objects, snapshot_options), options);
}

std::optional<ClusterDns::Node> ClusterDns::node(const std::string& key) const {
  if (!snapshot_) return std::nullopt;
  if (!in_zone(key, zone_key_)) {
    // A reverse name: the PTR of a ClusterIP names its Service (never a headless one's: it has none).
    const auto ip = reverse_address(key);
    if (!ip) return std::nullopt;
    const auto* view = snapshot_->cluster_ip_owner(*ip);
    if (!view || view->headless) return std::nullopt;
    auto name = Name::from_text(view->name + "." + view->ns + ".svc." + options_.domain);
    if (!name) return std::nullopt;
    Node node;
    node.ptr = std::move(*name);
    return node;
  }
  if (key.size() <= zone_key_.size() || key.find('\\') != std::string::npos) return std::nullopt;
  // <name>.<ns>.svc.<zone>, and nothing else below the zone, is a Service's name.
  const std::string rest = key.substr(0, key.size() - zone_key_.size() - 1);
  const auto first = rest.find('.');
  if (first == std::string::npos) return std::nullopt;
  const auto second = rest.find('.', first + 1);
  if (second == std::string::npos || rest.compare(second, std::string::npos, ".svc") != 0) return std::nullopt;
  const auto* view =
      snapshot_->service(std::string_view(rest).substr(first + 1, second - first - 1), std::string_view(rest).substr(0, first));
  if (!view) return std::nullopt;
  Node node;
  if (view->type == "ExternalName") {
    if (auto target = Name::from_text(view->external_name)) node.cname = std::move(*target);
    // Resolved by dsproxy (dsproxy.io/resolve): the target's addresses follow the CNAME.
    for (const auto& ip : view->dns_addresses) add_unique(ip.is_v4() ? node.v4 : node.v6, ip);
  } else {
    const auto& addresses = view->headless || view->cluster_ips.empty() ? view->dns_addresses : view->cluster_ips;
    for (const auto& ip : addresses)
      if (has_family(view->ip_families, ip.family())) add_unique(ip.is_v4() ? node.v4 : node.v6, ip);
  }
  // Deterministic answer order: sorted addresses.
  std::sort(node.v4.begin(), node.v4.end());
  std::sort(node.v6.begin(), node.v6.end());
  return node;
}

bool ClusterDns::empty_nonterminal(const std::string& key) const {
  // Every ancestor between a Service's name and the zone exists: the zone, svc.<zone> and
  // <ns>.svc.<zone> of each namespace with a Service.
  if (key == zone_key_ || key == "svc." + zone_key_) return true;
  const std::string suffix = ".svc." + zone_key_;
  if (!snapshot_ || key.size() <= suffix.size() || key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0)
    return false;
  const std::string ns = key.substr(0, key.size() - suffix.size());
  return ns.find('.') == std::string::npos && snapshot_->has_namespace(ns);
}

bool ClusterDns::authoritative_for(const std::string& key) const {
  if (in_zone(key, zone_key_)) return true;
  const auto found = node(key);
  return found && found->ptr.has_value();
}

Record ClusterDns::soa() const {
  const auto ttl = static_cast<std::uint32_t>(options_.ttl.count());
  SoaData soa;
  soa.mname = Name::from_text("ns.dns." + options_.domain).value_or(zone_);
  soa.rname = Name::from_text("hostmaster." + options_.domain).value_or(zone_);
  soa.minimum = ttl;
  return Record{zone_, rrtype::SOA, ttl, soa};
}

ResponseSpec ClusterDns::answer(const Question& q) const {
  ResponseSpec spec;
  spec.authoritative = true;
  if (q.klass != kClassIN) {
    spec.rcode = Rcode::Refused;
    spec.authoritative = false;
    return spec;
  }
  const std::string key = q.name.key();
  const auto ttl = static_cast<std::uint32_t>(options_.ttl.count());
  const auto found = node(key);
  if (!found) {
    if (key == zone_key_ && (q.type == rrtype::SOA || q.type == rrtype::ANY)) {
      spec.answers.push_back(soa());
      return spec;
    }
    if (!empty_nonterminal(key)) spec.rcode = Rcode::NxDomain;
    spec.authority.push_back(soa());
    return spec;
  }
  const Node& node = *found;
  if (node.cname) {
    // A CNAME owns the name for every type (RFC 1034 3.6.2); the client follows it, unless
    // dsproxy resolved the target itself (then its addresses come along, as CoreDNS does).
    spec.answers.push_back(Record{q.name, rrtype::CNAME, ttl, *node.cname});
    if (q.type == rrtype::A || q.type == rrtype::ANY)
      for (const auto& ip : node.v4) spec.answers.push_back(Record{*node.cname, rrtype::A, ttl, ip});
    if (q.type == rrtype::AAAA || q.type == rrtype::ANY)
      for (const auto& ip : node.v6) spec.answers.push_back(Record{*node.cname, rrtype::AAAA, ttl, ip});
    return spec;
  }
  const bool any = q.type == rrtype::ANY;
  if (q.type == rrtype::A || any)
    for (const auto& ip : node.v4) spec.answers.push_back(Record{q.name, rrtype::A, ttl, ip});
  if (q.type == rrtype::AAAA || any)
    for (const auto& ip : node.v6) spec.answers.push_back(Record{q.name, rrtype::AAAA, ttl, ip});
  if (node.ptr && (q.type == rrtype::PTR || any)) spec.answers.push_back(Record{q.name, rrtype::PTR, ttl, *node.ptr});
  if (spec.answers.empty()) spec.authority.push_back(soa());
  return spec;
}

}  // namespace dsproxy::resolver
