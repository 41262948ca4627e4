#pragma once
// Is the process still doing its work? (`GET /healthz/live`, the DaemonSet's livenessProbe.)
//
// Readiness says whether traffic should be sent here; liveness says whether the process should be
// restarted. A hung dsproxy (a deadlock, a handler stuck in a loop) keeps its capture rules, so
// every pod connection that meets the stuck worker's listeners waits in vain: nothing but a
// restart helps, and only the kubelet can do it. Answering the probe alone proves nothing: the
// front thread that answers it is not the one that may be stuck.
//
// So every event loop is asked to prove it still runs handlers: each `interval`, a heartbeat (a
// handler that records the time it was sent) is posted to every loop that has none in flight. A
// loop is stuck when its heartbeat has waited longer than its `stall` bound. At most one
// heartbeat per loop is ever queued, so a stuck loop does not accumulate them. The front loop,
// which runs this monitor and answers the probe, is proven by the probe being answered at all.
//
// Lock-free: the loops write one atomic each, the probe reads them.

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dsproxy::daemon {

class LivenessMonitor {
 public:
  using Clock = std::chrono::steady_clock;

  LivenessMonitor(boost::asio::any_io_executor front, std::chrono::milliseconds interval);
  ~LivenessMonitor();
  LivenessMonitor(const LivenessMonitor&) = delete;
  LivenessMonitor& operator=(const LivenessMonitor&) = delete;

  // Before start(): a loop to watch, named for the probe's answer ("worker 0", "control plane").
  void watch(std::string name, boost::asio::any_io_executor loop, std::chrono::milliseconds stall);
  void start();
  // Stops sending heartbeats (a heartbeat still queued on a loop runs harmlessly or is destroyed
  // with its loop). Call on the front thread.
  void stop();

  struct Verdict {
    bool live = true;
    std::string detail;  // one line per stuck loop, or "live"
  };
  Verdict check(Clock::time_point now = Clock::now()) const;

 private:
  // Shared with the heartbeats in flight, which may outlive the monitor on a loop that is
  // destroyed later.
  struct Target {
    std::string name;
    boost::asio::any_io_executor loop;
    std::chrono::nanoseconds stall{};
    std::atomic<std::int64_t> sent_ns{0};      // when the heartbeat in flight was posted
    std::atomic<std::int64_t> answered_ns{0};  // the sent_ns of the last heartbeat that ran
  };
  void beat();

  boost::asio::steady_timer timer_;
  std::chrono::milliseconds interval_;
  std::vector<std::shared_ptr<Target>> targets_;
  bool stopped_ = false;
};

}  // namespace dsproxy::daemon
