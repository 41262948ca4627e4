#pragma once
// The data plane: worker threads, their listeners, and drain.
//
// Each worker owns one io_context and its own SO_REUSEPORT listeners for outbound (15001) and
// inbound (15006) on 0.0.0.0 and [::]; a connection stays on the worker that accepted it for its
// whole life, so nothing on the data path is shared between threads except the snapshot pointer
// and the outcome counters.

#include <boost/asio/any_io_executor.hpp>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "snapshot/snapshot_store.hpp"
#include "proxy/connection_result.hpp"
#include "proxy/endpoint_states.hpp"
#include "proxy/mesh.hpp"
#include "proxy/outlier_detector.hpp"
#include "proxy/proxy_options.hpp"
#include "proxy/proxy_stats.hpp"
#include "proxy/session_affinity.hpp"

namespace dsproxy::proxy {

class Worker;

class ProxyServer {
 public:
  ProxyServer(ProxyOptions options, const snapshot::SnapshotStore& store, ProxyStats& stats,
              MeshOptions mesh = {});
  ~ProxyServer();
  ProxyServer(const ProxyServer&) = delete;
  ProxyServer& operator=(const ProxyServer&) = delete;

  // Binds every listener on the calling thread, so a bind failure (port in use, missing
  // CAP_NET_ADMIN) surfaces here as std::system_error before any thread starts. With
  // `listen_now` false the sockets are bound but take no connection (they join no SO_REUSEPORT
  // group) until start_listening(): a successor that has not synced its configuration yet must
  // not take a share of the connections the running instance serves.
  void start(bool listen_now = true);
  // After start(false), any thread: listen(2) on every socket and start accepting. Throws
  // std::system_error. Idempotent.
  void start_listening();
  // Before start(): the sink of worker i's connection records (it must outlive this server and is
  // called on that worker's thread only). Without: connections are counted in ProxyStats only.
  void set_connection_sinks(std::function<ConnectionSink*(int worker)> sinks) { sinks_ = std::move(sinks); }
  // Stops accepting, lets open connections finish for up to `grace`, then stops the workers;
  // connections still open then are closed when their coroutine frames are destroyed.
  void drain(std::chrono::milliseconds grace);
  // The two halves of drain() for a caller that waits asynchronously (the control loop keeps
  // answering the admin API meanwhile).
  void stop_accepting();
  void stop();
  // The control plane published a snapshot: each worker re-decides its established connections
  // to this node's workloads if the AuthorizationPolicies (or the pods) changed, closing those
  // now denied. Any thread; returns at once (the work is posted to the workers).
  void snapshot_published();
  // The ports actually bound (useful when the options asked for port 0 in tests).
  CapturePorts bound_ports() const { return bound_; }
  // The HBONE listener's port as bound (port 0 replaced by the kernel's choice), after start().
  std::uint16_t hbone_port() const { return mesh_.hbone_port; }
  // The --forward listeners as bound (port 0 replaced by the kernel's choice), after start().
  const std::vector<Forward>& forwards() const { return options_.forwards; }
  bool running() const { return started_ && !stopped_; }
  // Each worker's io_context, after start(): the liveness check posts a heartbeat to each. Valid
  // until stop().
  std::vector<boost::asio::any_io_executor> worker_executors();
  // Each worker's load against ProxyOptions::limits, for the admin API (relaxed reads).
  struct WorkerLoadView {
    std::uint64_t connections = 0;
    std::uint64_t connecting = 0;
  };
  std::vector<WorkerLoadView> worker_loads() const;
  // The endpoints' runtime states. The control thread calls endpoint_states().sync(snapshot) after
  // each publish so that no worker has to; the admin dump reads them.
  EndpointStates& endpoint_states() { return endpoint_states_; }
  const EndpointStates& endpoint_states() const { return endpoint_states_; }

 private:
  ProxyOptions options_;
  MeshOptions mesh_;
  const snapshot::SnapshotStore& store_;
  ProxyStats& stats_;
  OutlierDetector outliers_;
  EndpointStates endpoint_states_;
  SessionAffinityTable affinity_;  // shared by every worker: a client's connections land on any of them
  CapturePorts bound_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::mutex workers_mutex_;  // snapshot_published (control thread) against stop (front thread)
  bool started_ = false;
  bool stopped_ = false;
  std::atomic<bool> listening_{false};
  std::function<ConnectionSink*(int)> sinks_;
};

}  // namespace dsproxy::proxy
