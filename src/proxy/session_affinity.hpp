#pragma once
// ClientIP session affinity (spec.sessionAffinity: ClientIP): which endpoint a client address was
// last sent to, per Service port, for sessionAffinityConfig.clientIP.timeoutSeconds after its
// last connection (kube-proxy's `recent` match has the same refresh-on-use meaning).
//
// Runtime state, not part of the immutable snapshot: it must survive reloads, and every worker
// thread reads and writes it, because one client's connections land on different workers
// (SO_REUSEPORT hashes the 4-tuple). Touched once per new connection, never per packet: a
// sharded table, each shard behind its own mutex.
//
// Bounded: at most `capacity` entries; a full shard evicts its least recently used entry (which
// is also the first to expire unless timeouts differ between Services). Expired entries are
// dropped when met, and the least recently used ones are the first to go.

#include <array>
#include <chrono>
#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "net/ip_address.hpp"

namespace dsproxy::proxy {

class SessionAffinityTable {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::size_t kDefaultCapacity = 65536;

  explicit SessionAffinityTable(std::size_t capacity = kDefaultCapacity);

  // The endpoint `client` was last sent to for `cluster` (a ServiceCluster's cluster_name), if
  // that was within its timeout.
  std::optional<net::SocketAddress> lookup(std::string_view cluster, const net::IpAddress& client,
                                           Clock::time_point now);
  // Records (or refreshes) the client's endpoint, expiring `timeout` after `now`.
  void remember(std::string_view cluster, const net::IpAddress& client, const net::SocketAddress& endpoint,
                std::chrono::seconds timeout, Clock::time_point now);

  std::size_t size() const;
  std::size_t capacity() const { return capacity_per_shard_ * kShards; }

 private:
  // The cluster is kept as a 64-bit hash of its name: a collision can only offer a pinned address
  // that is not an endpoint of the other cluster, which the picker then ignores.
  struct Key {
    std::uint64_t cluster;
    net::IpAddress client;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    std::size_t operator()(const Key& k) const noexcept;
  };
  struct Entry {
    Key key;
    net::SocketAddress endpoint;
    Clock::time_point expires;
  };
  struct Shard {
    mutable std::mutex mutex;
    std::list<Entry> lru;  // most recently used first
    std::unordered_map<Key, std::list<Entry>::iterator, KeyHash> index;
  };
  static constexpr std::size_t kShards = 16;

  Key key(std::string_view cluster, const net::IpAddress& client) const;
  Shard& shard_of(const Key& k) { return shards_[KeyHash{}(k) % kShards]; }

  std::size_t capacity_per_shard_;
  std::array<Shard, kShards> shards_;
};

}  // namespace dsproxy::proxy
