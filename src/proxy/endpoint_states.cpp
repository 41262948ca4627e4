#include "proxy/endpoint_states.hpp"

namespace dsproxy::proxy {

const ClusterStates* EndpointStateIndex::find(const snapshot::ServiceCluster& cluster) const {
  const Entry* entry = clusters_.find(&cluster);
  return entry ? entry->states.get() : nullptr;
}

EndpointStates::EndpointStates() { index_.store(std::make_shared<const EndpointStateIndex>()); }

std::shared_ptr<const EndpointStateIndex> EndpointStates::index_for(
    const std::shared_ptr<const snapshot::ClusterSnapshot>& snapshot) {
  auto index = index_.load(std::memory_order_acquire);
  if (!snapshot || index->serial_ >= snapshot->serial()) return index;
  std::unique_lock lock(sync_mutex_, std::try_to_lock);
  if (!lock.owns_lock()) return index;
  sync_locked(snapshot);
  return index_.load(std::memory_order_acquire);
}

void EndpointStates::sync(const std::shared_ptr<const snapshot::ClusterSnapshot>& snapshot) {
  if (!snapshot) return;
  std::lock_guard lock(sync_mutex_);
  sync_locked(snapshot);
}

std::size_t EndpointStates::tracked_addresses() const {
  std::lock_guard lock(sync_mutex_);
  return by_address_.size();
}

std::shared_ptr<const ClusterStates> EndpointStates::states_of(const snapshot::ServiceCluster& cluster) {
  std::vector<std::shared_ptr<EndpointState>> states;
  states.reserve(cluster.endpoints.size());
  for (const auto& e : cluster.endpoints) {
    if (!by_address_.contains(e.address)) by_address_.set(e.address, {});
    std::shared_ptr<EndpointState> state;
    by_address_.update(e.address, [&](Registered& registered) {
      ++registered.listings;
      state = registered.state.lock();
      if (!state) {
        state = std::make_shared<EndpointState>();
        registered.state = state;
      }
    });
    states.push_back(std::move(state));
  }
  return std::make_shared<const ClusterStates>(std::move(states));
}

void EndpointStates::sync_locked(const std::shared_ptr<const snapshot::ClusterSnapshot>& snapshot) {
  const auto old = index_.load(std::memory_order_acquire);
  if (old->serial_ >= snapshot->serial()) return;  // covered already (or a newer one is)
  // Registry entries whose state nothing holds any more: checked one sync after their last
  // cluster left the index, when the readers of that index are most likely gone.
  std::vector<net::SocketAddress> still_held;
  for (const auto& address : unlisted_) {
    const Registered* registered = by_address_.find(address);
    if (!registered || registered->listings > 0) continue;  // listed again: it stays
    if (registered->state.expired()) by_address_.erase(address);
    else still_held.push_back(address);  // a relayed connection still counts on it: look later
  }
  unlisted_ = std::move(still_held);

  auto next = std::make_shared<EndpointStateIndex>();
  next->serial_ = snapshot->serial();
  next->clusters_ = old->clusters_;
  // What the previous sync retired has had its one sync of grace.
  for (const auto* gone : old->retired_) {
    const auto* entry = next->clusters_.find(gone);
    if (!entry) continue;
    for (const auto& e : entry->cluster->endpoints) {
      if (!by_address_.contains(e.address)) continue;
      by_address_.update(e.address, [&](Registered& r) {
        if (--r.listings == 0) unlisted_.push_back(e.address);
      });
    }
    next->clusters_.erase(gone);
  }
  // Clusters the new snapshot shares with the old one keep their states as they are; changed or
  // new ones look their addresses up in the registry, so an address that stays finds its state.
  snapshot->for_each_cluster_change(
      synced_.get(), [&](const snapshot::ServiceCluster& removed) { next->retired_.push_back(&removed); },
      [&](const std::shared_ptr<const snapshot::ServiceCluster>& added) {
        next->clusters_.set(added.get(), EndpointStateIndex::Entry{added, states_of(*added)});
      });
  synced_ = snapshot;
  index_.store(std::shared_ptr<const EndpointStateIndex>(std::move(next)), std::memory_order_release);
}

}  // namespace dsproxy::proxy
