#include "resolver/dns_cache.hpp"

#include <algorithm>

namespace dsproxy::resolver {

Clock system_clock() {
  return [] { return std::chrono::steady_clock::now(); };
}

std::string cache_key(const Query& q) {
  std::string key = q.question.name.key();
  key += '|';
  key += std::to_string(q.question.type);
  key += '|';
  key += std::to_string(q.question.klass);
  if (q.dnssec_ok) key += "|do";
  if (q.header.cd()) key += "|cd";
  return key;
}

DnsCache::DnsCache(CacheOptions options, Clock clock) : options_(options), clock_(std::move(clock)) {}

std::optional<Bytes> DnsCache::lookup(const std::string& key, const Query& query, ByteView raw, std::size_t max_size) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return std::nullopt;
  const auto now = clock_();
  if (now >= it->second.expires) {
    entries_.erase(it);
    return std::nullopt;
  }
  const auto age = std::chrono::duration_cast<std::chrono::seconds>(now - it->second.stored).count();
  return adapt_response(it->second.response, it->second.info, raw, query, static_cast<std::uint32_t>(age),
                        max_size);
}

bool DnsCache::store(const std::string& key, Bytes response) {
  auto parsed = parse_message(response);
  if (!parsed.info) return false;
  const MessageInfo& info = *parsed.info;
  const auto rcode = static_cast<Rcode>(info.header.rcode());
  if (info.header.tc()) return false;
  std::optional<std::uint32_t> ttl;
  std::uint32_t cap = static_cast<std::uint32_t>(options_.max_ttl.count());
  if (rcode == Rcode::NoError && info.min_answer_ttl) {
    ttl = info.min_answer_ttl;
  } else if (rcode == Rcode::NxDomain || (rcode == Rcode::NoError && info.header.ancount == 0)) {
    ttl = info.negative_ttl;  // no SOA: not cacheable (RFC 2308 section 5)
    cap = static_cast<std::uint32_t>(options_.max_negative_ttl.count());
  }
  if (!ttl || *ttl == 0 || options_.max_entries == 0) return false;
  const auto now = clock_();
  if (!entries_.count(key)) make_room(now);
  Entry entry{std::move(response), std::move(parsed.info).value(), now, now + std::chrono::seconds(std::min(*ttl, cap))};
  entries_.insert_or_assign(key, std::move(entry));
  return true;
}

void DnsCache::make_room(std::chrono::steady_clock::time_point now) {
  if (entries_.size() < options_.max_entries) return;
  std::erase_if(entries_, [&](const auto& kv) { return now >= kv.second.expires; });
  if (entries_.size() < options_.max_entries) return;
  // Still full of live answers: drop the one closest to expiry.
  auto victim = std::min_element(entries_.begin(), entries_.end(),
                                 [](const auto& a, const auto& b) { return a.second.expires < b.second.expires; });
  entries_.erase(victim);
}

}  // namespace dsproxy::resolver
