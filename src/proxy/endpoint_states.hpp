#pragma once
// Runtime state of the endpoints the proxy dials: outlier detection (failure streaks, ejections)
// and load (outstanding connections, picks). It belongs to the proxy, not to the routing view:
// a ClusterSnapshot is immutable and holds none of it.
//
// State is keyed by endpoint address (ip:port): two Services, or two ports of one, that send to
// the same pod port share it, and a rebuilt ServiceCluster (an endpoint flipped ready somewhere
// in its Service) finds the states of its unchanged addresses again, so neither a reload nor an
// API event forgets an ejection or resets outstanding-connection counts.
//
// The data path never looks an address up. The index (EndpointStateIndex) maps each ServiceCluster
// of a snapshot to the states of its endpoints in ServiceCluster::endpoints order; a connection
// looks its cluster up once (one hash probe in immutable memory) and then indexes by endpoint.
// The index is rebuilt by sync() for each new snapshot, for the clusters that changed only
// (consecutive snapshots share the ServiceClusters that did not), and published with an atomic
// pointer swap, like the snapshot itself: readers take no lock.
//
// Lifetime: an EndpointState lives while a cluster in the index lists its address or a relayed
// connection holds it (RelayEnd keeps a shared_ptr for its outstanding-connection gauge). The
// address registry counts, per address, the clusters in the index that list it, and holds the
// state weakly; when the count drops to zero the entry is erased at the next sync once nothing
// holds the state (rechecked at each sync while a relay does). A cluster that left the snapshot
// stays in the index for one more sync, so a connection that loaded the previous snapshot just
// before a publish still finds its states.

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "net/ip_address.hpp"
#include "snapshot/cluster_snapshot.hpp"
#include "snapshot/persistent_map.hpp"

namespace dsproxy::proxy {

// Plain relaxed atomics: written by whichever worker saw the outcome, once per connection, never
// per packet.
struct EndpointState {
  std::atomic<std::uint32_t> consecutive_failures{0};
  std::atomic<std::uint32_t> ejections{0};
  std::atomic<std::int64_t> ejected_until_ns{0};  // steady_clock time since epoch; 0 = never
  std::atomic<std::uint32_t> active{0};           // connections currently relayed to it
  std::atomic<std::uint64_t> picks{0};            // connections ever sent to it
};

// The states of one ServiceCluster's endpoints, parallel to ServiceCluster::endpoints.
class ClusterStates {
 public:
  explicit ClusterStates(std::vector<std::shared_ptr<EndpointState>> states) : states_(std::move(states)) {}
  EndpointState& operator[](std::size_t endpoint) const { return *states_[endpoint]; }
  // The state of `endpoint` (an element of the cluster's endpoints), shared: for a connection that
  // outlives its routing decision.
  std::shared_ptr<EndpointState> share(std::size_t endpoint) const { return states_[endpoint]; }
  std::size_t size() const { return states_.size(); }

 private:
  std::vector<std::shared_ptr<EndpointState>> states_;
};

// Immutable once published.
class EndpointStateIndex {
 public:
  // The states of `cluster`'s endpoints, or nullptr when this index does not cover that cluster
  // (a connection that loaded a snapshot older than the previous one: it runs without state).
  const ClusterStates* find(const snapshot::ServiceCluster& cluster) const;

 private:
  friend class EndpointStates;
  struct Entry {
    std::shared_ptr<const snapshot::ServiceCluster> cluster;  // keeps the key's address unique
    std::shared_ptr<const ClusterStates> states;
  };
  std::uint64_t serial_ = 0;  // the ClusterSnapshot::serial() it covers
  // Shares its structure with the previous index: a sync copies the paths of changed clusters only.
  snapshot::PersistentMap<const snapshot::ServiceCluster*, Entry> clusters_;
  std::vector<const snapshot::ServiceCluster*> retired_;  // kept until the next sync
};

class EndpointStates {
 public:
  EndpointStates();

  // Makes the index cover `snapshot`. Any thread; cheap when it already covers it (or a newer
  // one). The control thread calls it after publishing a snapshot, so the data path never pays.
  void sync(const std::shared_ptr<const snapshot::ClusterSnapshot>& snapshot);
  // Data path, once per connection: the index covering `snapshot`. Syncs first when `snapshot`
  // is newer than the index and no other thread is syncing (a worker never waits here: it
  // takes the current index, which may lack the newest clusters, instead).
  std::shared_ptr<const EndpointStateIndex> index_for(const std::shared_ptr<const snapshot::ClusterSnapshot>& snapshot);
  std::shared_ptr<const EndpointStateIndex> current() const { return index_.load(std::memory_order_acquire); }

  // Addresses with a state (for tests and the bench: shows that states of gone endpoints are freed).
  std::size_t tracked_addresses() const;

 private:
  void sync_locked(const std::shared_ptr<const snapshot::ClusterSnapshot>& snapshot);
  std::shared_ptr<const ClusterStates> states_of(const snapshot::ServiceCluster& cluster);

  mutable std::mutex sync_mutex_;  // writers only; readers go through index_
  std::atomic<std::shared_ptr<const EndpointStateIndex>> index_;
  std::shared_ptr<const snapshot::ClusterSnapshot> synced_;  // what index_ covers (sync_mutex_)
  struct Registered {
    std::weak_ptr<EndpointState> state;
    std::uint32_t listings = 0;  // clusters in the index that list the address
  };
  // A PersistentMap for its compact leaves (no node per address); never shared, so changed in place.
  snapshot::PersistentMap<net::SocketAddress, Registered, net::SocketAddressHash> by_address_;
  std::vector<net::SocketAddress> unlisted_;  // addresses whose last cluster left the index
};

}  // namespace dsproxy::proxy
