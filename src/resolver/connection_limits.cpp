#include "resolver/connection_limits.hpp"

namespace dsproxy::resolver {

ConnectionLimits::Verdict ConnectionLimits::acquire(const net::IpAddress& client) {
  if (total_ >= max_total_) return Verdict::over_total;
  auto [it, inserted] = per_client_.try_emplace(client, 0);
  if (it->second >= max_per_client_) {
    if (inserted) per_client_.erase(it);  // a cap of 0: keep no entry for a refused client
    return Verdict::over_client;
  }
  ++it->second;
  ++total_;
  return Verdict::accepted;
}

void ConnectionLimits::release(const net::IpAddress& client) {
  auto it = per_client_.find(client);
  if (it == per_client_.end()) return;
  if (--it->second == 0) per_client_.erase(it);
  --total_;
}

std::size_t ConnectionLimits::of(const net::IpAddress& client) const {
  auto it = per_client_.find(client);
  return it == per_client_.end() ? 0 : it->second;
}

}  // namespace dsproxy::resolver
