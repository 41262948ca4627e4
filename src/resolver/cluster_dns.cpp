#include "resolver/cluster_dns.hpp"

#include <algorithm>
#include <map>

namespace dsproxy::resolver {

namespace {

bool has_family(const std::vector<net::Family>& families, net::Family f) {
  // A Service decoded without ipFamilies (and without ClusterIPs: headless) allows both.
  return families.empty() || std::find(families.begin(), families.end(), f) != families.end();
}

bool selects(const config::Labels& selector, const config::Labels& labels) {
  for (const auto& [k, v] : selector) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
}

void add_unique(std::vector<net::IpAddress>& to, const net::IpAddress& ip) {
  if (std::find(to.begin(), to.end(), ip) == to.end()) to.push_back(ip);
}

// Ready endpoint addresses of a headless Service: its EndpointSlices when it has any (they also
// carry selector-less, hand-managed endpoints), else the ready pods its selector matches (a pod
// being deleted is not ready, as the EndpointSlice controller writes it). With
// publishNotReadyAddresses every endpoint is answered, ready or not, as CoreDNS does (the
// controller then marks them all ready).
std::vector<net::IpAddress> headless_addresses(const config::Service& svc, const config::ClusterObjects& objs) {
  std::vector<net::IpAddress> out;
  bool sliced = false;
  for (const auto& slice : objs.endpoint_slices) {
    if (slice.ns != svc.ns || slice.service_name != svc.name) continue;
    sliced = true;
    if (slice.address_type == config::AddressType::FQDN) continue;
    for (const auto& e : slice.endpoints)
      if (e.ready || svc.publish_not_ready_addresses)
        for (const auto& a : e.addresses)
          if (has_family(svc.ip_families, a.family())) add_unique(out, a);
  }
  if (sliced || !svc.selector || svc.selector->empty()) return out;
  for (const auto& pod : objs.pods) {
    const bool ready = pod.ready && !pod.terminating;
    if (pod.ns != svc.ns || (!ready && !svc.publish_not_ready_addresses) || pod.host_network ||
        !selects(*svc.selector, pod.labels))
      continue;
    for (const auto& a : pod.pod_ips)
      if (has_family(svc.ip_families, a.family())) add_unique(out, a);
  }
  return out;
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

std::shared_ptr<const ClusterDns> ClusterDns::build(const config::ClusterObjects& objects,
                                                    const ClusterDnsOptions& options) {
  auto dns = std::make_shared<ClusterDns>();
  dns->options_ = options;
  dns->zone_ = Name::from_text(options.domain).value_or(Name{});
  dns->zone_key_ = dns->zone_.key();

  auto add_ents = [&](const std::string& key) {
    // Every ancestor between the name and the zone exists, as an empty non-terminal.
    std::string k = key;
    for (;;) {
      const auto dot = k.find('.');
      if (dot == std::string::npos) break;
      k = k.substr(dot + 1);
      if (!in_zone(k, dns->zone_key_)) break;
      dns->empty_nonterminals_.insert(k);
      if (k == dns->zone_key_) break;
    }
  };
  dns->empty_nonterminals_.insert(dns->zone_key_);
  dns->empty_nonterminals_.insert("svc." + dns->zone_key_);

  for (const auto& svc : objects.services) {
    auto name = Name::from_text(svc.name + "." + svc.ns + ".svc." + options.domain);
    if (!name) continue;  // not a valid DNS name; nothing could ask for it
    const std::string key = name->key();
    Node& node = dns->nodes_[key];
    add_ents(key);
    if (svc.type == "ExternalName") {
      if (auto target = Name::from_text(svc.external_name)) node.cname = std::move(*target);
      // Resolved by dsproxy (dsproxy.io/resolve): the target's addresses follow the CNAME.
      for (const auto& ip : headless_addresses(svc, objects)) add_unique(ip.is_v4() ? node.v4 : node.v6, ip);
      continue;
    }
    const std::vector<net::IpAddress> addresses =
        svc.headless || svc.cluster_ips.empty() ? headless_addresses(svc, objects) : svc.cluster_ips;
    for (const auto& ip : addresses) {
      if (!has_family(svc.ip_families, ip.family())) continue;
      add_unique(ip.is_v4() ? node.v4 : node.v6, ip);
    }
    if (!svc.headless)
      for (const auto& ip : svc.cluster_ips) dns->nodes_[reverse_name(ip)].ptr = *name;
  }
  // Deterministic answer order: sorted addresses.
  for (auto& [key, node] : dns->nodes_) {
    std::sort(node.v4.begin(), node.v4.end());
    std::sort(node.v6.begin(), node.v6.end());
  }
  return dns;
}

bool ClusterDns::authoritative_for(const std::string& key) const {
  if (in_zone(key, zone_key_)) return true;
  auto it = nodes_.find(key);
  return it != nodes_.end() && it->second.ptr.has_value();
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
  auto it = nodes_.find(key);
  if (it == nodes_.end()) {
    if (key == zone_key_ && (q.type == rrtype::SOA || q.type == rrtype::ANY)) {
      spec.answers.push_back(soa());
      return spec;
    }
    if (!empty_nonterminals_.count(key)) spec.rcode = Rcode::NxDomain;
    spec.authority.push_back(soa());
    return spec;
  }
  const Node& node = it->second;
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
