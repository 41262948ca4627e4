#pragma once
// Where the cluster's objects come from: a config file (file_source.hpp) or the Kubernetes API
// (kubernetes/kubernetes_source.hpp). Every source is one ConfigSource feeding one ObjectSink,
// the daemon's control plane, which turns what it is given into snapshots.
//
// Threading: a source runs entirely on the control-plane io_context it is given at
// construction: start(), stop(), resync() and every sink call happen on that thread, so neither
// a source nor the sink locks anything. synced() and status() may be called from any thread
// (the front thread reads them for readiness and /config_dump).

#include <boost/json/object.hpp>
#include <string>
#include <string_view>

#include "config/k8s_objects.hpp"

namespace dsproxy::sources {

enum class ObjectKind { service, pod, endpoint_slice, node, namespace_, authorization_policy };
std::string_view to_string(ObjectKind kind);

class ConfigSource;

// What a source delivers to. Calls come on the control-plane thread.
class ObjectSink {
 public:
  virtual ~ObjectSink() = default;
  // The whole set (a file): the sink applies the difference with what it holds.
  virtual void replace_all(const ConfigSource& from, config::ClusterObjects objects) = 0;
  // One object added or changed; an object with the kind, namespace and name of one already held
  // replaces it. Nodes have no namespace ("").
  virtual void upsert(const ConfigSource& from, config::Service object) = 0;
  virtual void upsert(const ConfigSource& from, config::Pod object) = 0;
  virtual void upsert(const ConfigSource& from, config::EndpointSlice object) = 0;
  virtual void upsert(const ConfigSource& from, config::Node object) = 0;
  virtual void upsert(const ConfigSource& from, config::Namespace object) = 0;

  // security.istio.io AuthorizationPolicy; sinks that do not enforce policies ignore it.
  virtual void upsert(const ConfigSource& from, config::AuthorizationPolicy object) {}
  virtual void erase(const ConfigSource& from, ObjectKind kind, const std::string& ns, const std::string& name) = 0;
  // A run of changes that belong together is arriving (a LIST streaming in page by page): the
  // sink may hold its build until end_batch, so a relist of 10,000 objects is one build. A
  // batch left open (a LIST that failed midway) must not freeze the sink: it holds for a bounded
  // time only.
  virtual void begin_batch(const ConfigSource& from) {}
  virtual void end_batch(const ConfigSource& from) {}
  // Said once per source, after its first complete state was delivered. The sink builds
  // nothing (and readiness stays false) until every source said it.
  virtual void synced(const ConfigSource& from) = 0;
  // The source cannot go on (the file source's first load failed: `dsproxy run` must not start
  // with no configuration at all). The daemon exits with `exit_code`.
  virtual void failed(const ConfigSource& from, const std::string& why, int exit_code) = 0;
};

class ConfigSource {
 public:
  virtual ~ConfigSource() = default;
  // For logs and /config_dump: "file /etc/dsproxy/cluster.yaml", "kubernetes https://...".
  virtual std::string name() const = 0;
  // Begins delivering; on the control-plane thread.
  virtual void start() = 0;
  // No sink call happens after stop() returns; on the control-plane thread.
  virtual void stop() = 0;
  // SIGHUP: read everything again now, even when nothing seems to have changed.
  virtual void resync(std::string_view why) = 0;
  // Any thread.
  virtual bool synced() const = 0;
  // Any thread: what /config_dump shows under "sources" (no secrets).
  virtual boost::json::object status() const = 0;
};

}  // namespace dsproxy::sources
