#pragma once
// Hostname endpoints: the FQDN EndpointSlices (and the ExternalName) of Services annotated
// dsproxy.io/resolve: "true", resolved through an Upstream (c-ares in the process) into
// addresses the data path can use.
//
// Every hostname gets one A and one AAAA query of its own, so a slow AAAA never holds the A
// answer back; each family is re-resolved when its TTL runs out (bounded to [min_ttl, max_ttl];
// a failure or an empty answer is retried after `retry` and keeps the last addresses). The
// resolved addresses become ordinary IPv4 and IPv6 EndpointSlices of the Service (augment()),
// so the snapshot's family policy, Happy Eyeballs and outlier detection apply to them unchanged.
//
// Single-threaded, like the DNS handler: calls and Upstream completions on one thread.

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "config/k8s_objects.hpp"
#include "resolver/dns_cache.hpp"
#include "resolver/dns_handler.hpp"

namespace dsproxy::resolver {

constexpr const char* kResolveAnnotation = "dsproxy.io/resolve";

struct HostnameOptions {
  std::chrono::seconds min_ttl{5};
  std::chrono::seconds max_ttl{300};
  std::chrono::seconds retry{5};
};

class HostnameTable {
 public:
  HostnameTable(Upstream& upstream, Clock clock = system_clock(), HostnameOptions options = {});

  // The hostnames `objects` asks for: starts resolving new ones, forgets the others.
  void update(const config::ClusterObjects& objects);
  // Re-resolves every family whose TTL ran out; call about once a second.
  void tick();
  // Adds, for each FQDN slice of an annotated Service, an IPv4 and an IPv6 slice with the
  // addresses resolved so far (ready as the FQDN endpoint is).
  void augment(config::ClusterObjects& objects) const;
  // Called when a hostname's addresses change (not for a re-resolution with the same answer).
  void on_change(std::function<void()> callback) { on_change_ = std::move(callback); }

  // The addresses of `hostname` so far (both families, IPv4 first), nullopt for an unknown one.
  std::optional<std::vector<net::IpAddress>> addresses(const std::string& hostname) const;
  std::size_t size() const { return entries_.size(); }

 private:
  struct FamilyState {
    std::vector<net::IpAddress> addresses;
    std::chrono::steady_clock::time_point due{};
    bool in_flight = false;
    std::uint64_t generation = 0;  // answers for an older query are dropped
  };
  struct Entry {
    std::string hostname;  // as written
    FamilyState v4, v6;
  };

  void resolve(const std::string& key, net::Family family);
  void answered(const std::string& key, net::Family family, std::uint64_t generation, Upstream::Result result);
  static std::vector<std::string> wanted(const config::ClusterObjects& objects);

  Upstream& upstream_;
  Clock clock_;
  HostnameOptions options_;
  std::map<std::string, Entry> entries_;  // by Name::key()
  std::function<void()> on_change_;
  std::uint16_t next_id_ = 1;
  std::uint64_t next_generation_ = 1;
};

}  // namespace dsproxy::resolver
