#include "resolver/hostname_table.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

namespace dsproxy::resolver {

namespace {

bool annotated(const config::Service& svc) {
  auto it = svc.annotations.find(kResolveAnnotation);
  return it != svc.annotations.end() && it->second == "true";
}

const config::Service* service_of(const config::ClusterObjects& objects, const config::EndpointSlice& slice) {
  for (const auto& svc : objects.services)
    if (svc.ns == slice.ns && svc.name == slice.service_name) return &svc;
  return nullptr;
}

std::string key_of(const std::string& hostname) {
  auto name = Name::from_text(hostname);
  return name ? name->key() : std::string();
}

}  // namespace

HostnameTable::HostnameTable(Upstream& upstream, Clock clock, HostnameOptions options)
    : upstream_(upstream), clock_(std::move(clock)), options_(options) {}

std::vector<std::string> HostnameTable::wanted(const config::ClusterObjects& objects) {
  std::vector<std::string> out;
  for (const auto& svc : objects.services)
    if (annotated(svc) && svc.type == "ExternalName" && !svc.external_name.empty()) out.push_back(svc.external_name);
  for (const auto& slice : objects.fqdn_slices) {
    const auto* svc = service_of(objects, slice);
    if (!svc || !annotated(*svc)) continue;
    for (const auto& e : slice.endpoints) out.insert(out.end(), e.hostnames.begin(), e.hostnames.end());
  }
  return out;
}

void HostnameTable::update(const config::ClusterObjects& objects) {
  std::set<std::string> keep;
  std::vector<std::string> fresh;
  for (const auto& hostname : wanted(objects)) {
    const std::string key = key_of(hostname);
    if (key.empty() || !keep.insert(key).second) continue;
    if (!entries_.count(key)) {
      entries_[key].hostname = hostname;
      fresh.push_back(key);
    }
  }
  std::erase_if(entries_, [&](const auto& kv) { return !keep.count(kv.first); });
  for (const auto& key : fresh) {
    spdlog::info("dns: resolving hostname endpoint {}", entries_[key].hostname);
    resolve(key, net::Family::v4);
    if (entries_.count(key)) resolve(key, net::Family::v6);
  }
}

void HostnameTable::tick() {
  const auto now = clock_();
  std::vector<std::pair<std::string, net::Family>> due;
  for (const auto& [key, e] : entries_) {
    if (!e.v4.in_flight && now >= e.v4.due) due.emplace_back(key, net::Family::v4);
    if (!e.v6.in_flight && now >= e.v6.due) due.emplace_back(key, net::Family::v6);
  }
  for (const auto& [key, family] : due)
    if (entries_.count(key)) resolve(key, family);
}

void HostnameTable::resolve(const std::string& key, net::Family family) {
  Entry& e = entries_.at(key);
  FamilyState& f = family == net::Family::v4 ? e.v4 : e.v6;
  const auto name = Name::from_text(e.hostname);
  if (!name) return;
  f.in_flight = true;
  f.generation = next_generation_++;
  const std::uint64_t generation = f.generation;
  upstream_.send(build_query(next_id_++, *name, family == net::Family::v4 ? rrtype::A : rrtype::AAAA),
                 [this, key, family, generation](Upstream::Result result) {
                   answered(key, family, generation, std::move(result));
                 });
}

void HostnameTable::answered(const std::string& key, net::Family family, std::uint64_t generation,
                             Upstream::Result result) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return;  // forgotten meanwhile
  FamilyState& f = family == net::Family::v4 ? it->second.v4 : it->second.v6;
  if (f.generation != generation) return;
  f.in_flight = false;
  const auto now = clock_();
  std::optional<MessageInfo> info;
  if (result.ok) info = parse_message(result.response).info;
  const bool usable = info && info->header.qr() &&
                      (info->header.rcode() == static_cast<int>(Rcode::NoError) ||
                       info->header.rcode() == static_cast<int>(Rcode::NxDomain));
  if (!usable) {
    spdlog::warn("dns: resolving {} ({}) failed: {}; keeping {} address(es), retry in {} s", it->second.hostname,
                 net::to_string(family), result.ok ? "unusable answer" : result.error, f.addresses.size(),
                 options_.retry.count());
    f.due = now + options_.retry;
    return;
  }
  std::vector<net::IpAddress> addresses;
  for (const auto& a : info->addresses)
    if (a.family() == family && std::find(addresses.begin(), addresses.end(), a) == addresses.end())
      addresses.push_back(a);
  std::sort(addresses.begin(), addresses.end());
  // Empty (NXDOMAIN, NODATA): retry soon; else at TTL expiry, within bounds.
  std::chrono::seconds ttl = options_.retry;
  if (!addresses.empty())
    ttl = std::clamp(std::chrono::seconds(info->min_answer_ttl.value_or(0)), options_.min_ttl, options_.max_ttl);
  f.due = now + ttl;
  if (addresses == f.addresses) return;
  spdlog::info("dns: hostname endpoint {} {} -> {} address(es), next in {} s", it->second.hostname,
               net::to_string(family), addresses.size(), ttl.count());
  f.addresses = std::move(addresses);
  if (on_change_) on_change_();
}

void HostnameTable::augment(config::ClusterObjects& objects) const {
  std::vector<config::EndpointSlice> added;
  // An annotated ExternalName Service: its target's addresses, for the DNS answer after the CNAME.
  for (const auto& svc : objects.services) {
    if (!annotated(svc) || svc.type != "ExternalName") continue;
    auto it = entries_.find(key_of(svc.external_name));
    if (it == entries_.end()) continue;
    for (const FamilyState* f : {&it->second.v4, &it->second.v6}) {
      if (f->addresses.empty()) continue;
      config::EndpointSlice out;
      out.ns = svc.ns;
      out.service_name = svc.name;
      out.address_type = f->addresses.front().is_v4() ? config::AddressType::IPv4 : config::AddressType::IPv6;
      out.name = svc.name + (out.address_type == config::AddressType::IPv4 ? "-resolved-ipv4" : "-resolved-ipv6");
      for (const auto& a : f->addresses) {
        config::SliceEndpoint se;
        se.addresses = {a};
        out.endpoints.push_back(std::move(se));
      }
      added.push_back(std::move(out));
    }
  }
  for (const auto& slice : objects.fqdn_slices) {
    const auto* svc = service_of(objects, slice);
    if (!svc || !annotated(*svc)) continue;
    for (net::Family family : {net::Family::v4, net::Family::v6}) {
      config::EndpointSlice out;
      out.name = slice.name + (family == net::Family::v4 ? "-resolved-ipv4" : "-resolved-ipv6");
      out.ns = slice.ns;
      out.service_name = slice.service_name;
      out.address_type = family == net::Family::v4 ? config::AddressType::IPv4 : config::AddressType::IPv6;
      out.ports = slice.ports;
      for (const auto& e : slice.endpoints) {
        for (const auto& hostname : e.hostnames) {
          auto it = entries_.find(key_of(hostname));
          if (it == entries_.end()) continue;
          const FamilyState& f = family == net::Family::v4 ? it->second.v4 : it->second.v6;
          for (const auto& a : f.addresses) {
            config::SliceEndpoint se;
            se.addresses = {a};
            se.ready = e.ready;
            se.node_name = e.node_name;
            out.endpoints.push_back(std::move(se));
          }
        }
      }
      added.push_back(std::move(out));
    }
  }
  objects.endpoint_slices.insert(objects.endpoint_slices.end(), std::make_move_iterator(added.begin()),
                                 std::make_move_iterator(added.end()));
}

std::optional<std::vector<net::IpAddress>> HostnameTable::addresses(const std::string& hostname) const {
  auto it = entries_.find(key_of(hostname));
  if (it == entries_.end()) return std::nullopt;
  std::vector<net::IpAddress> out = it->second.v4.addresses;
  out.insert(out.end(), it->second.v6.addresses.begin(), it->second.v6.addresses.end());
  return out;
}

}  // namespace dsproxy::resolver
