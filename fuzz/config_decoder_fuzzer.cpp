// libFuzzer target for the config decoder: YAML and JSON Kubernetes objects through both of its
// transports. decode_objects reads the text (JSON, by Boost.JSON's parser, when it starts with
// `{` or `[`; YAML, by yaml-cpp's events, otherwise or when it is not JSON after all) and goes on
// into ClusterSnapshot::build, the path a reload takes; decode_object reads the text parsed as
// one JSON object, the path of the API watch. Build and run: fuzz/run_fuzz.sh config_decoder.
//
// The contract checked, besides "no crash, no sanitizer report, no hang" (-timeout): bad input
// fails only with ConfigError (any other exception escapes and is a finding), the message names
// the source, what decodes holds the invariants the decoder promises its users, and the two
// transports agree: an object the file path accepts on its own, the watch path accepts too.

#include <spdlog/spdlog.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <type_traits>
#include <variant>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include <boost/json/parse.hpp>

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

void check_slice(const EndpointSlice& es) {
  if (es.address_type == AddressType::FQDN) {
    for (const SliceEndpoint& e : es.endpoints) require(e.addresses.empty());
    return;
  }
  const net::Family f = es.address_type == AddressType::IPv4 ? net::Family::v4 : net::Family::v6;
  for (const SliceEndpoint& e : es.endpoints) {
    require(e.hostnames.empty());
    for (const net::IpAddress& a : e.addresses) require(a.family() == f);
  }
  for (const EndpointSlicePort& p : es.ports) require(!p.port || *p.port != 0);
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
    check_slice(es);
  }
  for (const EndpointSlice& es : o.fqdn_slices) {
    require(es.address_type == AddressType::FQDN);
    check_slice(es);
  }
}

std::size_t count(const ClusterObjects& o) {
  return o.services.size() + o.pods.size() + o.endpoint_slices.size() + o.nodes.size() + o.fqdn_slices.size();
}

// The watch's path: the same text as one Boost.JSON object (what the API client parses).
void watch_path(std::string_view text, const ClusterObjects* from_file) {
  boost::json::error_code ec;
  const boost::json::value v = boost::json::parse(text, ec);
  if (ec || !v.is_object()) return;
  const boost::json::object& object = v.get_object();
  std::optional<DecodedObject> decoded;
  bool failed = false;
  try {
    decoded = decode_object(object, "watch");
  } catch (const ConfigError& e) {
    require(std::string_view(e.what()).starts_with("watch"));
    failed = true;
  }
  if (decoded) {
    std::visit(
        [](const auto& o) {
          using T = std::decay_t<decltype(o)>;
          if constexpr (std::is_same_v<T, Service>) check_service(o);
          else if constexpr (std::is_same_v<T, EndpointSlice>) check_slice(o);
          else if constexpr (std::is_same_v<T, Pod>) require(!o.name.empty() && o.pod_ips.size() <= 2);
        },
        *decoded);
  }
  // One object the file path took, not a List: the watch path takes it too. (The reverse need
  // not hold: the file path also refuses repeated keys, which Boost.JSON's parse folds.)
  if (from_file && count(*from_file) == 1) {
    const auto* kind = object.if_contains("kind");
    if (kind && kind->is_string() && !std::string_view(kind->get_string()).ends_with("List")) require(!failed && decoded);
  }
  // Each kind given explicitly, as a LIST item without "kind" comes: no crash, ConfigError only.
  for (const char* kind : {"Service", "Pod", "EndpointSlice", "Node"}) {
    try {
      if (!object.contains("kind")) (void)decode_object(kind, object, "watch");
    } catch (const ConfigError&) {
    }
  }
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
    watch_path(text, nullptr);
    return 0;
  }
  check_objects(objects);
  watch_path(text, &objects);
  try {
    const auto snapshot = dsproxy::snapshot::ClusterSnapshot::build(std::move(objects), {"node-a", "cluster.local"});
    require(snapshot != nullptr);
    (void)snapshot->vip_ports();
  } catch (const ConfigError&) {
    // A bad dsproxy.io/ annotation: the snapshot refuses the config as a reload would.
  }
  return 0;
}
