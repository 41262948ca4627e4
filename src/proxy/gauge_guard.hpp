#pragma once
// One unit of a gauge (the active-connections counter, a WorkerLoad limit, an endpoint's
// outstanding connections), given back when the guard is destroyed: whichever path ends the
// connection, including a coroutine frame or a relay completion destroyed unrun when the
// worker's io_context is torn down. A null gauge counts nothing.

#include <atomic>
#include <utility>

namespace dsproxy::proxy {

template <typename Counter>
class GaugeGuard {
 public:
  explicit GaugeGuard(Counter* gauge) : gauge_(gauge) {
    if (gauge_) gauge_->fetch_add(1, std::memory_order_relaxed);
  }
  GaugeGuard(GaugeGuard&& other) noexcept : gauge_(std::exchange(other.gauge_, nullptr)) {}
  GaugeGuard(const GaugeGuard&) = delete;
  GaugeGuard& operator=(const GaugeGuard&) = delete;
  GaugeGuard& operator=(GaugeGuard&&) = delete;
  ~GaugeGuard() { release(); }

  // Gives the unit back now (a stage that ends before the connection does).
  void release() {
    if (gauge_) std::exchange(gauge_, nullptr)->fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  Counter* gauge_;
};

}  // namespace dsproxy::proxy
