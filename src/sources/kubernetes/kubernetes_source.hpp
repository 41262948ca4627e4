#pragma once
// The Kubernetes API as a source (`dsproxy run --kubernetes` / `--kubeconfig`): four reflectors
// (LIST + WATCH, reflector.hpp) whose objects are decoded one by one with the file source's
// decoder (config::decode_object) and delivered to the control plane as upserts and erases.
//
// What is watched, and why only that:
//   - v1 Services and discovery.k8s.io/v1 EndpointSlices, cluster-wide: every ClusterIP of the
//     cluster can be dialled from this node, and slices are where its endpoints are.
//   - v1 Pods with fieldSelector spec.nodeName=<node>: only this node's pods are captured, and
//     only they are clients whose own addresses (both families) the proxy binds to. Pods of
//     other nodes are not watched (on a 5,000-node cluster they are most of the API's traffic).
//     What that loses: the pod-matched endpoints of a Service that has no EndpointSlices (the
//     EndpointSlice controller writes slices for every selector Service, so only hand-made
//     Services lack them), and the other-family address of a pod on another node when it is
//     not in any slice (Happy Eyeballs for a passthrough connection to such a pod stays in the
//     dialled family); the other-family addresses of remote endpoints come from their slices.
//   - the v1 Node named <node> (fieldSelector metadata.name=<node>), for its zone label.
//
// A list or event whose object does not decode is logged (rate-limited) and skipped: the watch
// goes on, and the last good version of that object (if any) stays, as does everything else.
// A relist's end_list erases exactly what the relist did not list (a bad object that was
// listed is kept at its last good version). Synced (readiness) once all four resources had a
// first complete LIST. While a LIST streams in, the control plane holds its build
// (begin_batch/end_batch), so a relist of 10,000 objects is one build.

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "proxy/log_throttle.hpp"
#include "sources/config_source.hpp"
#include "sources/kubernetes/api_server_config.hpp"
#include "sources/kubernetes/reflector.hpp"

namespace dsproxy::sources::kubernetes {

struct KubernetesSourceOptions {
  ApiServerConfig server;
  std::string node_name;
  ReflectorOptions reflector{};
};

class KubernetesSource final : public ConfigSource, private ReflectorSink {
 public:
  // Throws KubernetesConfigError when the TLS configuration cannot be loaded.
  KubernetesSource(boost::asio::io_context& io, KubernetesSourceOptions options, ObjectSink& sink);
  // What is kept of another node's pod (public for tests).
  static void compact(config::Pod& pod);
  ~KubernetesSource() override;

  std::string name() const override { return "kubernetes " + options_.server.url(); }
  void start() override;
  void stop() override;
  // The watches keep everything current; SIGHUP has nothing to re-read.
  void resync(std::string_view why) override;
  bool synced() const override { return synced_.load(std::memory_order_acquire); }
  boost::json::object status() const override;

 private:
  struct PerResource {
    ObjectKind kind;
    std::unique_ptr<Reflector> reflector;
    std::set<std::pair<std::string, std::string>> known;    // (ns, name) delivered to the sink
    std::set<std::pair<std::string, std::string>> listing;  // listed since begin_list
    bool list_open = false;
    bool synced = false;
  };

  // ReflectorSink, on the control-plane thread.
  void begin_list(const Resource& resource) override;
  void listed(const Resource& resource, const boost::json::object& item) override;
  void end_list(const Resource& resource) override;
  void event(const Resource& resource, WatchEventType type, const boost::json::object& object) override;

  PerResource& of(const Resource& resource);
  // Decodes and upserts; false (logged, counted) when the object does not decode.
  bool deliver(PerResource& r, const Resource& resource, const boost::json::object& object);
  void decode_failed(const Resource& resource, const std::string& what);

  boost::asio::io_context& io_;
  KubernetesSourceOptions options_;
  ObjectSink& sink_;
  std::map<std::string, PerResource> resources_;  // by Resource::plural
  std::atomic<bool> synced_{false};
  proxy::LogThrottle decode_log_;

  mutable std::mutex status_mutex_;
  std::uint64_t decode_errors_ = 0;
  std::string last_decode_error_;
};

}  // namespace dsproxy::sources::kubernetes
