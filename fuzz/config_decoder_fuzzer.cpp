// libFuzzer target for the config decoder: YAML and JSON Kubernetes objects (JSON is YAML to
// yaml-cpp, so one entry point reads both) through decode_objects and on into
// ClusterSnapshot::build, the path a reload takes. Build and run: fuzz/run_fuzz.sh config_decoder.
//
// The contract checked, besides "no crash, no sanitizer report, no hang" (-timeout): bad input
// fails only with ConfigError (any other exception escapes and is a finding), the message names
// the source, and what decodes holds the invariants the decoder promises its users.

#include <spdlog/spdlog.h>

#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "snapshot/cluster_snapshot.hpp"
#include "config/k8s_decoder.hpp"

using namespace dsproxy;
using namespace dsproxy::config;

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

// At most one address per family, and families match the declared order.
void check_service(const Service& s) {
  require(!s.name.empty() && !s.ns.empty());
  require(s.cluster_ips.size() <= 2);
  if (s.cluster_ips.size() == 2) require(s.cluster_ips[0].family() != s.cluster_ips[1].family());
  if (s.headless) require(s.cluster_ips.empty());
  require(s.ip_families.size() <= 2);
  if (s.ip_families.size() == 2) require(s.ip_families[0] != s.ip_families[1]);
  require(s.cluster_ips.size() <= s.ip_families.size() || s.ip_families.empty());
  for (std::size_t i = 0; i < s.cluster_ips.size() && i < s.ip_families.size(); ++i)
    require(s.cluster_ips[i].family() == s.ip_families[i]);
  if (s.ip_family_policy == IpFamilyPolicy::SingleStack) require(s.ip_families.size() <= 1);
  std::set<std::pair<std::uint16_t, std::string>> seen;
  for (const ServicePort& p : s.ports) {
    require(p.port != 0);
    require(p.protocol == "TCP" || p.protocol == "UDP" || p.protocol == "SCTP");
    require(seen.emplace(p.port, p.protocol).second);
    if (s.ports.size() > 1) require(!p.name.empty());
    if (const auto* n = std::get_if<std::uint16_t>(&p.target_port)) require(*n != 0);
    else require(!std::get<std::string>(p.target_port).empty());
  }
}

void check_objects(const ClusterObjects& o) {
  for (const Service& s : o.services) check_service(s);
  for (const Pod& p : o.pods) {
    require(!p.name.empty());
    require(p.pod_ips.size() <= 2);
    if (p.pod_ips.size() == 2) require(p.pod_ips[0].family() != p.pod_ips[1].family());
    for (const ContainerPort& c : p.container_ports) require(c.port != 0);
  }
  for (const EndpointSlice& es : o.endpoint_slices) {
    require(es.address_type != AddressType::FQDN);
    const net::Family f = es.address_type == AddressType::IPv4 ? net::Family::v4 : net::Family::v6;
    for (const SliceEndpoint& e : es.endpoints)
      for (const net::IpAddress& a : e.addresses) require(a.family() == f);
    for (const EndpointSlicePort& p : es.ports) require(!p.port || *p.port != 0);
  }
  for (const EndpointSlice& es : o.fqdn_slices) require(es.address_type == AddressType::FQDN);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  ClusterObjects objects;
  try {
    objects = decode_objects(text, "fuzz.yaml");
  } catch (const ConfigError& e) {
    require(std::string_view(e.what()).starts_with("fuzz.yaml: "));
    return 0;
  }
  check_objects(objects);
  try {
    const auto snapshot = dsproxy::snapshot::ClusterSnapshot::build(std::move(objects), {"node-a", "cluster.local"});
    require(snapshot != nullptr);
    (void)snapshot->vip_ports();
  } catch (const ConfigError&) {
    // A bad dsproxy.io/ annotation: the snapshot refuses the config as a reload would.
  }
  return 0;
}
