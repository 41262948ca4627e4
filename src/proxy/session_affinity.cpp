#include "proxy/session_affinity.hpp"

#include <algorithm>
#include <functional>
#include <string>

namespace dsproxy::proxy {

SessionAffinityTable::SessionAffinityTable(std::size_t capacity)
    : capacity_per_shard_(std::max<std::size_t>(1, (capacity + kShards - 1) / kShards)) {}

std::size_t SessionAffinityTable::KeyHash::operator()(const Key& k) const noexcept {
  return static_cast<std::size_t>(k.cluster * 0x9e3779b97f4a7c15ULL) ^ net::IpAddressHash{}(k.client);
}

SessionAffinityTable::Key SessionAffinityTable::key(std::string_view cluster, const net::IpAddress& client) const {
  return Key{std::hash<std::string_view>{}(cluster), client};
}

std::optional<net::SocketAddress> SessionAffinityTable::lookup(std::string_view cluster, const net::IpAddress& client,
                                                               Clock::time_point now) {
  const Key k = key(cluster, client);
  Shard& s = shard_of(k);
  std::lock_guard lock(s.mutex);
  auto it = s.index.find(k);
  if (it == s.index.end()) return std::nullopt;
  if (it->second->expires <= now) {
    s.lru.erase(it->second);
    s.index.erase(it);
    return std::nullopt;
  }
  return it->second->endpoint;
}

void SessionAffinityTable::remember(std::string_view cluster, const net::IpAddress& client,
                                    const net::SocketAddress& endpoint, std::chrono::seconds timeout,
                                    Clock::time_point now) {
  const Key k = key(cluster, client);
  Shard& s = shard_of(k);
  std::lock_guard lock(s.mutex);
  if (auto it = s.index.find(k); it != s.index.end()) {
    it->second->endpoint = endpoint;
    it->second->expires = now + timeout;
    s.lru.splice(s.lru.begin(), s.lru, it->second);
    return;
  }
  // Expired entries at the cold end go first; then, if still full, the least recently used.
  while (!s.lru.empty() && (s.lru.back().expires <= now || s.index.size() >= capacity_per_shard_)) {
    s.index.erase(s.lru.back().key);
    s.lru.pop_back();
  }
  s.lru.push_front(Entry{k, endpoint, now + timeout});
  s.index.emplace(k, s.lru.begin());
}

std::size_t SessionAffinityTable::size() const {
  std::size_t n = 0;
  for (const Shard& s : shards_) {
    std::lock_guard lock(s.mutex);
    n += s.index.size();
  }
  return n;
}

}  // namespace dsproxy::proxy
