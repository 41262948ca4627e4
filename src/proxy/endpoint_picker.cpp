#include "proxy/endpoint_picker.hpp"

#include <algorithm>

namespace dsproxy::proxy {

namespace {

const snapshot::Endpoint* endpoint_of(const snapshot::ServiceCluster& c, const snapshot::Backend& b, net::Family f) {
  const int i = b.index(f);
  if (i < 0) return nullptr;
  const auto& e = c.endpoints[static_cast<std::size_t>(i)];
  return e.eligible ? &e : nullptr;
}

// Candidates live on the stack up to this many backends; larger Services sample from the full
// list by index instead of materialising it (the common case stays allocation-free).
constexpr std::size_t kInline = 64;

}  // namespace

std::optional<BackendPick> EndpointPicker::pick(const snapshot::ServiceCluster& cluster, const ClusterStates* states,
                                                net::Family dialled, Clock::time_point now, std::span<const int> tried,
                                                std::optional<net::IpAddress> client) {
  // A cluster whose states the index does not have yet (see EndpointStateIndex::find) is picked
  // from as if every endpoint were fresh.
  if (states && states->size() != cluster.endpoints.size()) states = nullptr;
  auto state_of = [&](const snapshot::Endpoint* e) -> EndpointState* {
    return states ? &(*states)[static_cast<std::size_t>(e - cluster.endpoints.data())] : nullptr;
  };
  auto ejected = [&](const snapshot::Endpoint* e) {
    const EndpointState* st = state_of(e);
    return st && outliers_.is_ejected(*st, now);
  };
  const bool may_cross = cluster.family_fallback == snapshot::FamilyFallback::other;
  // The backend this client is pinned to, if any and still in the snapshot (-1 otherwise).
  const bool affine = affinity_ && client && cluster.session_affinity == config::SessionAffinity::ClientIP;
  int pinned = -1;
  if (affine)
    if (const auto address = affinity_->lookup(cluster.cluster_name, *client, now))
      for (std::size_t b = 0; b < cluster.backends.size() && pinned < 0; ++b)
        for (const net::Family f : {net::Family::v4, net::Family::v6})
          if (const int i = cluster.backends[b].index(f); i >= 0 && cluster.endpoints[static_cast<std::size_t>(i)].address == *address)
            pinned = static_cast<int>(b);
  auto usable = [&](std::size_t b, net::Family f, bool allow_ejected) {
    if (std::find(tried.begin(), tried.end(), static_cast<int>(b)) != tried.end()) return false;
    const auto* e = endpoint_of(cluster, cluster.backends[b], f);
    return e && (allow_ejected || !ejected(e));
  };

  // Healthy before ejected ("skipped while others remain", of either family), and within each,
  // the dialled family before the other one.
  for (const bool allow_ejected : {false, true}) {
    for (const net::Family family : {dialled, net::other(dialled)}) {
      if (family != dialled && !may_cross) break;
      std::array<int, kInline> inline_candidates;
      std::vector<int> heap_candidates;
      std::size_t n = 0;
      for (std::size_t b = 0; b < cluster.backends.size(); ++b) {
        if (!usable(b, family, allow_ejected)) continue;
        if (n < kInline) inline_candidates[n] = static_cast<int>(b);
        else {
          if (heap_candidates.empty()) heap_candidates.assign(inline_candidates.begin(), inline_candidates.end());
          heap_candidates.push_back(static_cast<int>(b));
        }
        ++n;
      }
      if (n == 0) continue;
      auto candidate = [&](std::size_t i) { return n <= kInline ? inline_candidates[i] : heap_candidates[i]; };

      int chosen = candidate(0);
      bool pinned_usable = false;
      if (pinned >= 0)
        for (std::size_t i = 0; i < n && !pinned_usable; ++i) pinned_usable = candidate(i) == pinned;
      if (pinned_usable) {
        chosen = pinned;
      } else if (n > 1) {
        const std::size_t i = rng_() % n;
        const std::size_t j = (i + 1 + rng_() % (n - 1)) % n;  // distinct from i
        const auto* a = endpoint_of(cluster, cluster.backends[candidate(i)], family);
        const auto* b = endpoint_of(cluster, cluster.backends[candidate(j)], family);
        auto load = [&](const snapshot::Endpoint* e) {
          const EndpointState* st = state_of(e);
          return st ? std::pair(st->active.load(std::memory_order_relaxed), st->picks.load(std::memory_order_relaxed))
                    : std::pair(std::uint32_t{0}, std::uint64_t{0});
        };
        chosen = load(b) < load(a) ? candidate(j) : candidate(i);
      }

      const auto& backend = cluster.backends[static_cast<std::size_t>(chosen)];
      BackendPick pick;
      pick.backend = chosen;
      pick.fallback = family != dialled;
      pick.endpoints[pick.count++] = endpoint_of(cluster, backend, family);
      if (EndpointState* st = state_of(pick.endpoints[0])) st->picks.fetch_add(1, std::memory_order_relaxed);
      // Refreshes the pin's timeout, or moves it: the last pick of a connection is the backend it
      // ends up on unless every attempt fails.
      if (affine)
        affinity_->remember(cluster.cluster_name, *client, pick.endpoints[0]->address,
                            std::chrono::seconds(cluster.affinity_timeout_s), now);
      // Happy Eyeballs partner: only when crossing families is allowed, and never towards the
      // dialled family after a fallback (it has no ready endpoint, or we would not be here).
      if (may_cross && !pick.fallback)
        if (const auto* other = endpoint_of(cluster, backend, net::other(family));
            other && !ejected(other))
          pick.endpoints[pick.count++] = other;
      for (int i = 0; i < pick.count; ++i)
        pick.indices[static_cast<std::size_t>(i)] =
            static_cast<int>(pick.endpoints[static_cast<std::size_t>(i)] - cluster.endpoints.data());
      return pick;
    }
  }
  return std::nullopt;
}

}  // namespace dsproxy::proxy
