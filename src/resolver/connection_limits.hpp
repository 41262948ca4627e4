#pragma once
// Caps on concurrent TCP DNS connections: one for all, one per client address (issue 14,
// finding 7). Without the second, one pod opening connections that never finish a message locks
// every other pod out of TCP DNS until they time out; with it, that pod only locks itself out.
//
// Pure bookkeeping, single-threaded (the DNS proxy's io thread).

#include <cstddef>
#include <unordered_map>

#include "net/ip_address.hpp"

namespace dsproxy::resolver {

class ConnectionLimits {
 public:
  enum class Verdict { accepted, over_total, over_client };

  ConnectionLimits(std::size_t max_total, std::size_t max_per_client)
      : max_total_(max_total), max_per_client_(max_per_client) {}

  // Counts a new connection from `client` when both caps allow it. Every accepted connection
  // must be released exactly once.
  Verdict acquire(const net::IpAddress& client);
  void release(const net::IpAddress& client);

  std::size_t total() const { return total_; }
  std::size_t of(const net::IpAddress& client) const;
  std::size_t clients() const { return per_client_.size(); }  // entries die with their last connection

 private:
  std::size_t max_total_;
  std::size_t max_per_client_;
  std::size_t total_ = 0;
  std::unordered_map<net::IpAddress, std::size_t, net::IpAddressHash> per_client_;
};

}  // namespace dsproxy::resolver
