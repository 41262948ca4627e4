#include "daemon/full_rebuild_builder.hpp"

namespace dsproxy::daemon {

namespace {

std::string key_of(const std::string& ns, const std::string& name) { return ns + '/' + name; }
template <typename T>
std::string key_of(const T& object) {
  return key_of(object.ns, object.name);
}
// Nodes are cluster-scoped: no namespace.
std::string key_of(const config::Node& node) { return key_of("", node.name); }

}  // namespace

template <typename T>
void FullRebuildBuilder::Table<T>::upsert(T object) {
  auto key = key_of(object);
  if (auto it = index.find(key); it != index.end()) {
    slots[it->second] = std::move(object);
    return;
  }
  index.emplace(std::move(key), slots.size());
  slots.emplace_back(std::move(object));
  ++live;
}

template <typename T>
void FullRebuildBuilder::Table<T>::erase(const std::string& key) {
  auto it = index.find(key);
  if (it == index.end()) return;
  slots[it->second].reset();
  index.erase(it);
  --live;
  if (slots.size() > 64 && live < slots.size() / 2) compact();
}

template <typename T>
void FullRebuildBuilder::Table<T>::clear() {
  slots.clear();
  index.clear();
  live = 0;
}

template <typename T>
void FullRebuildBuilder::Table<T>::compact() {
  std::vector<std::optional<T>> kept;
  kept.reserve(live);
  index.clear();
  for (auto& s : slots) {
    if (!s) continue;
    index.emplace(key_of(*s), kept.size());
    kept.push_back(std::move(s));
  }
  slots = std::move(kept);
}

FullRebuildBuilder::FullRebuildBuilder(snapshot::ClusterSnapshot::Options options) : options_(std::move(options)) {}

void FullRebuildBuilder::upsert(config::Service object) { services_.upsert(std::move(object)); }
void FullRebuildBuilder::upsert(config::Pod object) { pods_.upsert(std::move(object)); }
void FullRebuildBuilder::upsert(config::EndpointSlice object) { slices_.upsert(std::move(object)); }

void FullRebuildBuilder::upsert(config::Node object) { nodes_.upsert(std::move(object)); }

void FullRebuildBuilder::erase(sources::ObjectKind kind, const std::string& ns, const std::string& name) {
  switch (kind) {
    case sources::ObjectKind::service: services_.erase(key_of(ns, name)); return;
    case sources::ObjectKind::pod: pods_.erase(key_of(ns, name)); return;
    case sources::ObjectKind::endpoint_slice: slices_.erase(key_of(ns, name)); return;
    case sources::ObjectKind::node: nodes_.erase(key_of("", name)); return;
  }
}

void FullRebuildBuilder::replace_all(config::ClusterObjects objects) {
  services_.clear();
  pods_.clear();
  slices_.clear();
  nodes_.clear();
  for (auto& o : objects.services) upsert(std::move(o));
  for (auto& o : objects.pods) upsert(std::move(o));
  for (auto& o : objects.endpoint_slices) upsert(std::move(o));
  for (auto& o : objects.fqdn_slices) upsert(std::move(o));
  for (auto& o : objects.nodes) upsert(std::move(o));
  warnings_ = std::move(objects.warnings);
}

std::shared_ptr<const snapshot::ClusterSnapshot> FullRebuildBuilder::build() {
  config::ClusterObjects objects;
  objects.services.reserve(services_.live);
  for (const auto& s : services_.slots)
    if (s) objects.services.push_back(*s);
  objects.pods.reserve(pods_.live);
  for (const auto& s : pods_.slots)
    if (s) objects.pods.push_back(*s);
  objects.endpoint_slices.reserve(slices_.live);
  for (const auto& s : slices_.slots) {
    if (!s) continue;
    (s->address_type == config::AddressType::FQDN ? objects.fqdn_slices : objects.endpoint_slices).push_back(*s);
  }
  for (const auto& s : nodes_.slots)
    if (s) objects.nodes.push_back(*s);
  objects.warnings = warnings_;
  return snapshot::ClusterSnapshot::build(std::move(objects), options_);
}

std::size_t FullRebuildBuilder::size() const { return services_.live + pods_.live + slices_.live + nodes_.live; }

}  // namespace dsproxy::daemon
