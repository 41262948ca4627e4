#include "sources/kubernetes/kubernetes_source.hpp"

#include <spdlog/spdlog.h>

#include <variant>

#include "config/k8s_decoder.hpp"

namespace dsproxy::sources::kubernetes {

namespace json = boost::json;

namespace {

std::string string_at(const json::object& o, std::string_view key) {
  const auto* v = o.if_contains(key);
  return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

// (namespace, name) from metadata: enough to erase, without decoding the rest.
std::pair<std::string, std::string> key_of(const json::object& object) {
  const auto* m = object.if_contains("metadata");
  if (!m || !m->is_object()) return {};
  return {string_at(m->get_object(), "namespace"), string_at(m->get_object(), "name")};
}

ObjectKind kind_of(const Resource& resource) {
  if (resource.kind == "Service") return ObjectKind::service;
  if (resource.kind == "Pod") return ObjectKind::pod;
  if (resource.kind == "EndpointSlice") return ObjectKind::endpoint_slice;
  if (resource.kind == "Namespace") return ObjectKind::namespace_;

  if (resource.kind == "AuthorizationPolicy") return ObjectKind::authorization_policy;
  return ObjectKind::node;
}

}  // namespace

KubernetesSource::KubernetesSource(boost::asio::io_context& io, KubernetesSourceOptions options, ObjectSink& sink)
    : io_(io), options_(std::move(options)), sink_(sink), decode_log_(std::chrono::seconds(10)) {
  Resource node = resources::nodes();
  node.field_selector = "metadata.name=" + options_.node_name;
  // Every pod, not only this node's: the client side of an HBONE tunnel must know the destination
  // pod's identity and whether it is in the mesh. Other nodes' pods are kept compact (compact()).
  for (Resource r : {resources::services(), resources::endpoint_slices(), resources::pods(""), node,
                     resources::namespaces(), resources::authorization_policies()}) {
    PerResource per{kind_of(r), nullptr, {}, {}, false, false};
    const std::string plural = r.plural;
    per.reflector =
        std::make_unique<Reflector>(io_.get_executor(), options_.server, std::move(r),
                                     static_cast<ReflectorSink&>(*this), options_.reflector);
    resources_.emplace(plural, std::move(per));
  }
}

KubernetesSource::~KubernetesSource() { stop(); }

void KubernetesSource::start() {
  spdlog::info("kubernetes: {}; watching services, endpointslices, namespaces, authorizationpolicies, pods (all "
               "nodes; {}'s in full) and node {}",
               options_.server.describe(), options_.node_name, options_.node_name);
  for (auto& [plural, r] : resources_) r.reflector->start();
}

void KubernetesSource::stop() {
  for (auto& [plural, r] : resources_)
    if (r.reflector) r.reflector->stop();
}

void KubernetesSource::resync(std::string_view why) {
  spdlog::info("kubernetes: {}: nothing to re-read, the watches keep the objects current", why);
}

KubernetesSource::PerResource& KubernetesSource::of(const Resource& resource) { return resources_.at(resource.plural); }

void KubernetesSource::begin_list(const Resource& resource) {
  auto& r = of(resource);
  r.listing.clear();
  if (!r.list_open) {
    r.list_open = true;
    sink_.begin_batch(*this);
  }
}

void KubernetesSource::listed(const Resource& resource, const json::object& item) {
  auto& r = of(resource);
  // Listed even when it does not decode: end_list must not erase the last good version of an
  // object that still exists.
  r.listing.insert(key_of(item));
  deliver(r, resource, item);
}

void KubernetesSource::end_list(const Resource& resource) {
  auto& r = of(resource);
  for (auto it = r.known.begin(); it != r.known.end();) {
    if (r.listing.contains(*it)) {
      ++it;
      continue;
    }
    sink_.erase(*this, r.kind, it->first, it->second);
    it = r.known.erase(it);
  }
  r.listing.clear();
  if (r.list_open) {
    r.list_open = false;
    sink_.end_batch(*this);
  }
  if (!r.synced) {
    r.synced = true;
    spdlog::info("kubernetes: {} synced ({} object(s))", resource.display_name(), r.known.size());
    for (const auto& [plural, other] : resources_)
      if (!other.synced) return;
    synced_.store(true, std::memory_order_release);
    sink_.synced(*this);
  }
}

void KubernetesSource::event(const Resource& resource, WatchEventType type, const json::object& object) {
  auto& r = of(resource);
  if (type == WatchEventType::deleted) {
    const auto key = key_of(object);
    if (r.known.erase(key) > 0) sink_.erase(*this, r.kind, key.first, key.second);
    return;
  }
  deliver(r, resource, object);
}

// Another node's pod matters only as a tunnel destination and as a Happy Eyeballs partner: its
// addresses, identity, node and mesh label. Dropping the rest (other labels, container ports)
// keeps 100,000 pods affordable, and keeps the API mode's rule that a Service without
// EndpointSlices gets this node's selector-matched pods only (remote pods no longer match).
void KubernetesSource::compact(config::Pod& pod) {
  config::Labels kept;
  if (auto it = pod.labels.find(std::string(config::kDataplaneModeLabel)); it != pod.labels.end())
    kept.insert(std::move(*it));
  pod.labels = std::move(kept);
  pod.container_ports.clear();
  pod.container_ports.shrink_to_fit();
  pod.pod_ips.shrink_to_fit();
}

bool KubernetesSource::deliver(PerResource& r, const Resource& resource, const json::object& object) {
  const auto key = key_of(object);
  std::optional<config::DecodedObject> decoded;
  try {
    decoded = config::decode_object(resource.kind, object, resource.display_name());
  } catch (const std::exception& e) {
    decode_failed(resource, e.what());
    return false;
  }
  if (!decoded) return false;  // a kind or API group dsproxy ignores
  if (auto* pod = std::get_if<config::Pod>(&*decoded); pod && pod->node_name != options_.node_name) compact(*pod);
  std::visit([&](auto&& o) { sink_.upsert(*this, std::move(o)); }, std::move(*decoded));
  r.known.insert(key);
  return true;
}

void KubernetesSource::decode_failed(const Resource& resource, const std::string& what) {
  {
    std::lock_guard lock(status_mutex_);
    ++decode_errors_;
    last_decode_error_ = what;
  }
  if (const auto held = decode_log_.admit(proxy::LogThrottle::Clock::now()))
    spdlog::error("kubernetes: skipping an object that does not decode, keeping its last good version: {}{}", what,
                  *held ? " (" + std::to_string(*held) + " more not logged)" : "");
}

json::object KubernetesSource::status() const {
  json::array reflectors;
  for (const auto& [plural, r] : resources_) reflectors.push_back(r.reflector->status().to_json());
  std::lock_guard lock(status_mutex_);
  return json::object{{"type", "kubernetes"},
                      {"server", options_.server.url()},
                      {"origin", options_.server.origin},
                      {"node", options_.node_name},
                      {"synced", synced()},
                      {"decodeErrors", decode_errors_},
                      {"lastDecodeError", last_decode_error_},
                      {"reflectors", std::move(reflectors)}};
}

}  // namespace dsproxy::sources::kubernetes
