#include "resolver/dns_handler.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace dsproxy::resolver {

namespace {

void count(std::atomic<std::uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

std::size_t udp_limit(const Query& q, std::uint16_t cap) {
  if (!q.edns) return kClassicUdpSize;
  return std::min<std::size_t>(q.udp_size, std::max<std::uint16_t>(cap, kClassicUdpSize));
}

bool is_truncated(const Bytes& b) { return b.size() >= kHeaderSize && (b[2] & 0x02); }

}  // namespace

DnsHandler::DnsHandler(const snapshot::SnapshotStore& store, DnsHandlerOptions options, Upstream& upstream, Clock clock)
    : store_(store), options_(std::move(options)), upstream_(upstream), cache_(options_.cache, std::move(clock)) {}

std::shared_ptr<const ClusterDns> DnsHandler::cluster() {
  const std::uint64_t generation = store_.generation();
  if (!cluster_ || generation != cluster_generation_) {
    // A view over the snapshot: nothing is indexed here, so a snapshot per API event costs the
    // DNS thread nothing.
    cluster_ = ClusterDns::build(store_.current(), options_.cluster);
    cluster_generation_ = generation;
  }
  return cluster_;
}

void DnsHandler::handle(ByteView raw, Transport transport, Reply reply) {
  count(transport == Transport::udp ? stats_.queries_udp : stats_.queries_tcp);
  ParsedQuery parsed = parse_query(raw);
  switch (parsed.status) {
    case QueryStatus::drop:
      count(stats_.dropped);
      spdlog::debug("dns: dropped a {}-octet message: {}", raw.size(), parsed.error);
      return;
    case QueryStatus::formerr:
      count(stats_.formerr);
      spdlog::debug("dns: FORMERR for a {}-octet query: {}", raw.size(), parsed.error);
      reply(build_error(raw, Rcode::FormErr));
      return;
    case QueryStatus::notimp:
      count(stats_.notimp);
      reply(build_error(raw, Rcode::NotImp));
      return;
    case QueryStatus::ok:
      break;
  }
  const Query& query = parsed.query;
  const std::size_t max_size = transport == Transport::udp ? udp_limit(query, options_.max_udp_size) : 65535;
  const auto table = cluster();
  const std::string key = query.question.name.key();
  if (table->authoritative_for(key)) {
    count(stats_.answered_cluster);
    ResponseSpec spec = table->answer(query.question);
    if (spec.rcode == Rcode::NxDomain) count(stats_.cluster_nxdomain);
    Bytes answer = build_response(query, raw, spec, max_size);
    if (is_truncated(answer)) count(stats_.truncated);
    spdlog::debug("dns: {} type {} -> {} with {} answer(s) (cluster)", query.question.name.to_text(),
                  query.question.type, to_string(spec.rcode), spec.answers.size());
    reply(std::move(answer));
    return;
  }
  forward(raw, query, max_size, std::move(reply));
}

void DnsHandler::forward(ByteView raw, const Query& query, std::size_t max_size, Reply reply) {
  const std::string key = cache_key(query);
  if (auto hit = cache_.lookup(key, query, raw, max_size)) {
    count(stats_.cache_hits);
    if (is_truncated(*hit)) count(stats_.truncated);
    reply(std::move(*hit));
    return;
  }
  auto it = inflight_.find(key);
  if ((it == inflight_.end() && inflight_.size() >= options_.max_inflight) ||
      (it != inflight_.end() && it->second.size() >= options_.max_waiters_per_question)) {
    count(stats_.overloaded);
    reply(build_error(raw, Rcode::ServFail, query.question_end));
    return;
  }
  Waiter waiter{Bytes(raw.begin(), raw.end()), query, max_size, std::move(reply)};
  if (it != inflight_.end()) {
    count(stats_.coalesced);
    it->second.push_back(std::move(waiter));
    return;
  }
  Bytes upstream_query = waiter.raw;
  inflight_[key].push_back(std::move(waiter));
  count(stats_.forwarded);
  spdlog::debug("dns: {} type {} -> upstream", query.question.name.to_text(), query.question.type);
  upstream_.send(std::move(upstream_query), [this, key](Upstream::Result result) { complete(key, std::move(result)); });
}

void DnsHandler::complete(const std::string& key, Upstream::Result result) {
  auto it = inflight_.find(key);
  if (it == inflight_.end()) return;
  std::vector<Waiter> waiters = std::move(it->second);
  inflight_.erase(it);

  std::optional<MessageInfo> info;
  if (result.ok) {
    auto parsed = parse_message(result.response);
    if (parsed.info && parsed.info->header.qr()) {
      info = std::move(parsed.info);
    } else {
      result.ok = false;
      result.error = "malformed upstream answer: " + (parsed.info ? std::string("not a response") : parsed.error);
    }
  }
  if (!result.ok) {
    stats_.upstream_failures.fetch_add(waiters.size(), std::memory_order_relaxed);
    spdlog::warn("dns: upstream failed for {}: {}; SERVFAIL to {} client(s)", key, result.error, waiters.size());
    for (auto& w : waiters) w.reply(build_error(w.raw, Rcode::ServFail, w.query.question_end));
    return;
  }
  for (auto& w : waiters) {
    Bytes answer = adapt_response(result.response, *info, w.raw, w.query, 0, w.max_size);
    if (is_truncated(answer)) count(stats_.truncated);
    w.reply(std::move(answer));
  }
  cache_.store(key, std::move(result.response));
}

}  // namespace dsproxy::resolver
