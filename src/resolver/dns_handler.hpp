#pragma once
// What the DNS listener does with one message, without any I/O: parse, answer cluster names from
// the current snapshot, answer the rest from the cache or forward it upstream (one upstream query
// for any number of identical questions in flight), and SERVFAIL when upstream fails.
//
// Single-threaded: every call, and every Upstream completion, happens on one thread (the DNS
// server's io_context). The upstream is an interface so tests drive it by hand.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "snapshot/snapshot_store.hpp"
#include "resolver/cluster_dns.hpp"
#include "resolver/dns_cache.hpp"
#include "resolver/dns_message.hpp"

namespace dsproxy::resolver {

class Upstream {
 public:
  struct Result {
    bool ok = false;
    Bytes response;     // the upstream's answer when ok
    std::string error;  // why not, when !ok
  };
  using Done = std::function<void(Result)>;
  virtual ~Upstream() = default;
  // Sends a query (its ID may be replaced) and calls `done` exactly once, possibly before
  // returning.
  virtual void send(Bytes query, Done done) = 0;
};

enum class Transport { udp, tcp };

struct DnsStats {
  std::atomic<std::uint64_t> queries_udp{0};
  std::atomic<std::uint64_t> queries_tcp{0};
  std::atomic<std::uint64_t> answered_cluster{0};  // from the cluster model (NXDOMAIN included)
  std::atomic<std::uint64_t> cluster_nxdomain{0};
  std::atomic<std::uint64_t> forwarded{0};         // upstream queries sent
  std::atomic<std::uint64_t> coalesced{0};         // questions that joined one in flight
  std::atomic<std::uint64_t> cache_hits{0};
  std::atomic<std::uint64_t> upstream_failures{0};  // answered SERVFAIL
  std::atomic<std::uint64_t> formerr{0};
  std::atomic<std::uint64_t> notimp{0};
  std::atomic<std::uint64_t> dropped{0};
  std::atomic<std::uint64_t> truncated{0};  // UDP answers sent with TC set
  std::atomic<std::uint64_t> overloaded{0};  // SERVFAIL because too many questions were in flight
  // Counted by the DNS proxy (io/dns_proxy.cpp), before or after the handler:
  std::atomic<std::uint64_t> dropped_direct{0};        // sent straight to :15053 from off the node's loopback
  std::atomic<std::uint64_t> dropped_not_node_pod{0};  // captured, but not from one of this node's pods
  std::atomic<std::uint64_t> reply_failures{0};        // UDP answers that could not leave from the original destination
  std::atomic<std::uint64_t> reply_strays{0};          // others' datagrams read off a reply socket, dropped
  std::atomic<std::uint64_t> tcp_limit{0};             // TCP connections reset: all connections in use
  std::atomic<std::uint64_t> tcp_client_limit{0};      // TCP connections reset: the client has its share open
  std::atomic<std::uint64_t> tcp_message_timeouts{0};  // TCP connections closed mid-message (message deadline)
};

struct DnsHandlerOptions {
  ClusterDnsOptions cluster;
  CacheOptions cache;
  std::uint16_t max_udp_size = 4096;  // upper bound on the EDNS size we honour
  // Bounds on questions waiting for the upstream, so a pod flooding unique names (or one name
  // while the upstream is slow) cannot grow memory without limit: past them, SERVFAIL at once.
  std::size_t max_inflight = 4096;
  std::size_t max_waiters_per_question = 64;
};

class DnsHandler {
 public:
  // Called once with the answer; never called for messages that are dropped.
  using Reply = std::function<void(Bytes)>;

  DnsHandler(const snapshot::SnapshotStore& store, DnsHandlerOptions options, Upstream& upstream,
             Clock clock = system_clock());

  void handle(ByteView raw, Transport transport, Reply reply);

  DnsStats& stats() { return stats_; }
  const DnsCache& cache() const { return cache_; }
  std::size_t in_flight() const { return inflight_.size(); }
  // The cluster table for the store's current generation (rebuilt when it changes).
  std::shared_ptr<const ClusterDns> cluster();

 private:
  struct Waiter {
    Bytes raw;
    Query query;
    std::size_t max_size;
    Reply reply;
  };
  void forward(ByteView raw, const Query& query, std::size_t max_size, Reply reply);
  void complete(const std::string& key, Upstream::Result result);

  const snapshot::SnapshotStore& store_;
  DnsHandlerOptions options_;
  Upstream& upstream_;
  DnsCache cache_;
  DnsStats stats_;
  std::shared_ptr<const ClusterDns> cluster_;
  std::uint64_t cluster_generation_ = ~std::uint64_t{0};
  std::unordered_map<std::string, std::vector<Waiter>> inflight_;
};

}  // namespace dsproxy::resolver
