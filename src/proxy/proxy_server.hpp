#pragma once
// The data plane: worker threads, their listeners, and drain.
//
// Each worker owns one io_context and its own SO_REUSEPORT listeners for outbound (15001) and
// inbound (15006) on 0.0.0.0 and [::]; a connection stays on the worker that accepted it for its
// whole life, so nothing on the data path is shared between threads except the snapshot pointer
// and the outcome counters.

#include <chrono>
#include <memory>
#include <mutex>
#include <vector>

#include "snapshot/snapshot_store.hpp"
#include "proxy/endpoint_states.hpp"
#include "proxy/outlier_detector.hpp"
#include "proxy/proxy_options.hpp"
#include "proxy/proxy_stats.hpp"
#include "proxy/session_affinity.hpp"

namespace dsproxy::proxy {

class Worker;

class ProxyServer {
 public:
  ProxyServer(ProxyOptions options, const snapshot::SnapshotStore& store, ProxyStats& stats);
  ~ProxyServer();
  ProxyServer(const ProxyServer&) = delete;
  ProxyServer& operator=(const ProxyServer&) = delete;

  // Binds every listener on the calling thread, so a bind failure (port in use, missing
  // CAP_NET_ADMIN) surfaces here as std::system_error before any thread starts.
  void start();
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
  // The --forward listeners as bound (port 0 replaced by the kernel's choice), after start().
  const std::vector<Forward>& forwards() const { return options_.forwards; }
  bool running() const { return started_ && !stopped_; }
  // The endpoints' runtime states. The control thread calls endpoint_states().sync(snapshot) after
  // each publish so that no worker has to; the admin dump reads them.
  EndpointStates& endpoint_states() { return endpoint_states_; }
  const EndpointStates& endpoint_states() const { return endpoint_states_; }

 private:
  ProxyOptions options_;
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
};

}  // namespace dsproxy::proxy
