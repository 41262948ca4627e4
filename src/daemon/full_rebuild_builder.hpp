#pragma once
// A stand-in for snapshot::SnapshotBuilder (the incremental builder, issue 10) with the same
// shape: upsert/erase/replace_all, then build(). It keeps the objects and builds the whole
// ClusterSnapshot from them on every build(), as `dsproxy run` always did; the control plane
// names it through one alias (control_plane.hpp), so switching to the incremental builder is
// that one line.
//
// Objects keep the order they were first seen in (a file's order), so a file source builds
// exactly the snapshot it built before the sources existed.

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/k8s_objects.hpp"
#include "snapshot/cluster_snapshot.hpp"
#include "sources/config_source.hpp"

namespace dsproxy::daemon {

class FullRebuildBuilder {
 public:
  // Endpoint runtime state is the proxy's (proxy/endpoint_states.hpp): snapshots hold none.
  explicit FullRebuildBuilder(snapshot::ClusterSnapshot::Options options);

  void upsert(config::Service object);
  void upsert(config::Pod object);
  void upsert(config::EndpointSlice object);  // addressType FQDN ones are kept apart, as the decoder does
  void upsert(config::Node object);
  void erase(sources::ObjectKind kind, const std::string& ns, const std::string& name);
  // The whole set: what is not in `objects` is gone. Its warnings are kept for /config_dump.
  void replace_all(config::ClusterObjects objects);
  // Throws config::ConfigError (a bad dsproxy.io/ annotation); the objects stay as they are.
  std::shared_ptr<const snapshot::ClusterSnapshot> build();

  std::size_t size() const;

 private:
  // Insertion-ordered, keyed by "namespace/name"; erased slots are compacted once they
  // outnumber the live ones.
  template <typename T>
  struct Table {
    std::vector<std::optional<T>> slots;
    std::unordered_map<std::string, std::size_t> index;
    std::size_t live = 0;

    void upsert(T object);
    void erase(const std::string& key);
    void clear();
    void compact();
  };

  snapshot::ClusterSnapshot::Options options_;
  Table<config::Service> services_;
  Table<config::Pod> pods_;
  Table<config::EndpointSlice> slices_;  // FQDN ones included
  Table<config::Node> nodes_;
  std::vector<std::string> warnings_;
};

}  // namespace dsproxy::daemon
