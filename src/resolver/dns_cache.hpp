#pragma once
// A cache of upstream answers, keyed by (name, type, class, DO bit), aged by TTL.
//
// Positive answers live for their smallest answer TTL, negative ones (NXDOMAIN, NODATA) for the
// RFC 2308 TTL of their SOA; both are capped. SERVFAIL, truncated and TTL-0 answers are never
// kept. A hit is the stored message with the asker's ID and question bytes, and every TTL
// lowered by the time it spent here. The clock is a parameter, so tests move time by hand.

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>

#include "resolver/dns_message.hpp"

namespace dsproxy::resolver {

using Clock = std::function<std::chrono::steady_clock::time_point()>;
Clock system_clock();  // std::chrono::steady_clock::now

struct CacheOptions {
  std::size_t max_entries = 10000;
  std::chrono::seconds max_ttl{3600};
  std::chrono::seconds max_negative_ttl{60};
};

// (name key, type, class, DO): the identity of an upstream question.
std::string cache_key(const Query& query);

class DnsCache {
 public:
  DnsCache(CacheOptions options, Clock clock);

  // The cached answer for `query` (raw bytes `raw`) adapted to it, or nullopt.
  std::optional<Bytes> lookup(const std::string& key, const Query& query, ByteView raw, std::size_t max_size);
  // Keeps `response` if it is cacheable; returns whether it did.
  bool store(const std::string& key, Bytes response);

  std::size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    Bytes response;
    MessageInfo info;
    std::chrono::steady_clock::time_point stored;
    std::chrono::steady_clock::time_point expires;
  };
  void make_room(std::chrono::steady_clock::time_point now);

  CacheOptions options_;
  Clock clock_;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace dsproxy::resolver
