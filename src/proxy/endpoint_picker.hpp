#pragma once
// Chooses the backend (pod) for a connection to a Service, per the family policy:
//   1. an eligible endpoint of the dialled family F, if any;
//   2. else, when the Service allows fallback, an eligible endpoint of the other family G;
// "eligible" is what the Service's rules leave (Endpoint::eligible: ready, else
// serving-terminating; internalTrafficPolicy; topology hints), decided when the snapshot is built.
// With sessionAffinity ClientIP, the client's pinned backend is taken whenever it is among the
// candidates step 1 or 2 would choose from (eligible, healthy, not yet tried);
// among the candidates, ejected outliers are skipped while any other remains, and the choice is
// least-outstanding-connections over two random candidates (power of two choices), ties going to
// the one picked less often. One picker per worker thread: its random state is not shared.

#include <array>
#include <cstdint>
#include <optional>
#include <random>
#include <span>

#include "snapshot/cluster_snapshot.hpp"
#include "proxy/outlier_detector.hpp"
#include "proxy/session_affinity.hpp"

namespace dsproxy::proxy {

struct BackendPick {
  int backend = -1;  // index into ServiceCluster::backends
  // Endpoints to race, preferred first: the chosen family's, then (Happy Eyeballs) the same
  // pod's other-family endpoint when it is ready, healthy and the Service allows crossing.
  std::array<const snapshot::Endpoint*, 2> endpoints{nullptr, nullptr};
  std::array<int, 2> indices{-1, -1};  // of those endpoints in ServiceCluster::endpoints (and ClusterStates)
  int count = 0;
  bool fallback = false;  // the preferred endpoint is of the other family than the dialled one
};

class EndpointPicker {
 public:
  // `affinity` is shared by every worker's picker (nullptr: sessionAffinity is ignored).
  EndpointPicker(const OutlierDetector& outliers, std::uint64_t seed, SessionAffinityTable* affinity = nullptr)
      : outliers_(outliers), affinity_(affinity), rng_(seed) {}

  // `states` are the runtime states of the cluster's endpoints (EndpointStateIndex::find); null
  // picks without outlier or load information (and records no pick). `tried` are backends this
  // connection already failed on (retries go elsewhere). `client` is the connection's source
  // address, the key of ClientIP session affinity.
  std::optional<BackendPick> pick(const snapshot::ServiceCluster& cluster, const ClusterStates* states,
                                  net::Family dialled, Clock::time_point now, std::span<const int> tried = {},
                                  std::optional<net::IpAddress> client = std::nullopt);

 private:
  const OutlierDetector& outliers_;
  SessionAffinityTable* affinity_;
  std::minstd_rand rng_;
};

}  // namespace dsproxy::proxy
