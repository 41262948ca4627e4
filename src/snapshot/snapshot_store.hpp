#pragma once
// Holds the current ClusterSnapshot for every thread.
//
// Workers load the pointer once per accepted connection and keep their own reference for the
// connection's routing decision, so a reload that publishes a new snapshot never waits for, or
// changes, a decision in progress; the old snapshot dies with its last reader.

#include <atomic>
#include <cstdint>
#include <memory>

#include "snapshot/cluster_snapshot.hpp"

namespace dsproxy::snapshot {

class SnapshotStore {
 public:
  std::shared_ptr<const ClusterSnapshot> current() const { return current_.load(std::memory_order_acquire); }
  std::uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

  void publish(std::shared_ptr<const ClusterSnapshot> snapshot) {
    current_.store(std::move(snapshot), std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }

 private:
  std::atomic<std::shared_ptr<const ClusterSnapshot>> current_;
  std::atomic<std::uint64_t> generation_{0};
};

}  // namespace dsproxy::snapshot
