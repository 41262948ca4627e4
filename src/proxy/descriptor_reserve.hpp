#pragma once
// One descriptor held back for the moment the process runs out of them (EMFILE). accept() then
// fails, the connection stays in the kernel's accept queue, and its client, whose handshake the
// kernel already completed, waits for an answer that may never come. Giving the reserve up lets
// accept() take the waiting connections off the queue just to reset them, so their clients learn
// at once that they were refused and can retry elsewhere; then the reserve is taken again.
// One per worker thread (not thread-safe).

#include <cstddef>

namespace dsproxy::proxy {

class DescriptorReserve {
 public:
  DescriptorReserve();  // takes the reserve now, while descriptors are plentiful
  ~DescriptorReserve();
  DescriptorReserve(const DescriptorReserve&) = delete;
  DescriptorReserve& operator=(const DescriptorReserve&) = delete;

  bool held() const { return fd_ >= 0; }
  // Takes the reserve if it is not held (after a shed lost it to another thread). Cheap when held.
  void replenish();
  // Resets up to `max` connections waiting on the non-blocking listener `listener_fd`, using the
  // reserve's slot; returns how many. 0 when the reserve is not held or nothing was waiting.
  std::size_t shed(int listener_fd, std::size_t max);

 private:
  int fd_ = -1;
};

}  // namespace dsproxy::proxy
