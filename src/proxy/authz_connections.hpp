#pragma once
// One worker's established connections to this node's workloads, with what authorization
// decided them on, so that a policy change can close those it now denies.
//
// Everything here runs on the worker's own thread (the connection registers when its relay
// starts and leaves when the relay's completion runs; the walk is posted to the worker when a
// snapshot with a new authorization index is published): no lock, nothing per packet.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "authz/policy_index.hpp"
#include "hbone/stream_relay.hpp"
#include "proxy/relay.hpp"
#include "proxy/router.hpp"

namespace dsproxy::proxy {

class AuthzConnections {
 public:
  struct Entry {
    authz::ConnectionAttributes attributes;
    Direction direction = Direction::inbound;
    std::shared_ptr<RelayHandle> relay;  // a plaintext connection's relay, or
    std::shared_ptr<hbone::StreamRelayHandle> tunnel;  // an inbound HBONE stream's relay
    // Set when a policy change closed it: the denying policy's "ns/name" ("" when no ALLOW
    // matched), for the connection's record, which is written later by the relay's completion.
    std::string revoked_by;
  };

  std::uint64_t add(Entry entry) {
    const std::uint64_t id = next_++;
    live_.emplace(id, std::move(entry));
    return id;
  }
  void remove(std::uint64_t id) { live_.erase(id); }
  // The policy that closed connection `id` (see Entry::revoked_by); "" if none or unknown.
  std::string_view revoked_by(std::uint64_t id) const {
    auto it = live_.find(id);
    return it == live_.end() ? std::string_view() : std::string_view(it->second.revoked_by);
  }
  std::size_t size() const { return live_.size(); }

  // Decides every live connection again with `index` and resets those now denied (logging the
  // policy). Returns how many were closed. A connection whose workload is gone from this node
  // is left alone: deleting a pod is not a policy decision.
  std::size_t reevaluate(const authz::PolicyIndex& index);
  // The same for one connection (one registered just after a policy change).
  bool reevaluate_one(std::uint64_t id, const authz::PolicyIndex& index);

 private:
  bool revoke_if_denied(Entry& e, const authz::PolicyIndex& index);

  std::unordered_map<std::uint64_t, Entry> live_;
  std::uint64_t next_ = 1;
};

// Deregisters on destruction (moved along with the relay's completion handler).
class AuthzRegistration {
 public:
  AuthzRegistration() = default;
  AuthzRegistration(AuthzConnections& registry, std::uint64_t id) : registry_(&registry), id_(id) {}
  AuthzRegistration(AuthzRegistration&& o) noexcept
      : registry_(std::exchange(o.registry_, nullptr)), id_(o.id_) {}
  AuthzRegistration& operator=(AuthzRegistration&& o) noexcept {
    if (this != &o) {
      if (registry_) registry_->remove(id_);
      registry_ = std::exchange(o.registry_, nullptr);
      id_ = o.id_;
    }
    return *this;
  }
  ~AuthzRegistration() {
    if (registry_) registry_->remove(id_);
  }
  std::string_view revoked_by() const { return registry_ ? registry_->revoked_by(id_) : std::string_view(); }

 private:
  AuthzConnections* registry_ = nullptr;
  std::uint64_t id_ = 0;
};

// Logs a denial (throttled: one line per 100 ms for all workers, naming what was held back).
void log_authz_denial(Direction direction, const authz::ConnectionAttributes& c, const authz::Workload& w,
                      const authz::Decision& d, std::string_view what);
// Logs what is worth logging of an allowing decision (AUDIT, dry-run), if anything.
void log_authz_notes(Direction direction, const authz::ConnectionAttributes& c, const authz::Workload& w,
                     const authz::Decision& d);

}  // namespace dsproxy::proxy
