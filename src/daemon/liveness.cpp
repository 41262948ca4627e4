#include "daemon/liveness.hpp"

#include <boost/asio/post.hpp>

#include <cstdio>

namespace dsproxy::daemon {

namespace {

std::int64_t to_ns(LivenessMonitor::Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace

LivenessMonitor::LivenessMonitor(boost::asio::any_io_executor front, std::chrono::milliseconds interval)
    : timer_(std::move(front)), interval_(interval) {}

LivenessMonitor::~LivenessMonitor() { stop(); }

void LivenessMonitor::watch(std::string name, boost::asio::any_io_executor loop, std::chrono::milliseconds stall) {
  auto target = std::make_shared<Target>();
  target->name = std::move(name);
  target->loop = std::move(loop);
  target->stall = stall;
  targets_.push_back(std::move(target));
}

void LivenessMonitor::start() {
  stopped_ = false;
  beat();
}

void LivenessMonitor::stop() {
  stopped_ = true;
  timer_.cancel();
}

void LivenessMonitor::beat() {
  if (stopped_) return;
  const std::int64_t now = to_ns(Clock::now());
  for (const auto& t : targets_) {
    // Still waiting for the last one: the loop is slow or stuck; queueing another would only
    // pile up handlers on a loop that does not run them.
    if (t->answered_ns.load(std::memory_order_acquire) != t->sent_ns.load(std::memory_order_relaxed)) continue;
    t->sent_ns.store(now, std::memory_order_relaxed);
    boost::asio::post(t->loop, [t, now] { t->answered_ns.store(now, std::memory_order_release); });
  }
  timer_.expires_after(interval_);
  timer_.async_wait([this](boost::system::error_code ec) {
    if (!ec) beat();
  });
}

LivenessMonitor::Verdict LivenessMonitor::check(Clock::time_point now) const {
  Verdict v;
  const std::int64_t now_ns = to_ns(now);
  for (const auto& t : targets_) {
    const std::int64_t sent = t->sent_ns.load(std::memory_order_relaxed);
    if (t->answered_ns.load(std::memory_order_acquire) == sent) continue;
    const std::int64_t waited = now_ns - sent;
    if (waited <= t->stall.count()) continue;
    v.live = false;
    char line[160];
    std::snprintf(line, sizeof line, "%s has not run a heartbeat for %.1f s (bound %.1f s)\n", t->name.c_str(),
                  static_cast<double>(waited) / 1e9, static_cast<double>(t->stall.count()) / 1e9);
    v.detail += line;
  }
  if (v.live) v.detail = "live\n";
  return v;
}

}  // namespace dsproxy::daemon
