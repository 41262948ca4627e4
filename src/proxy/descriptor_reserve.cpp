#include "proxy/descriptor_reserve.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace dsproxy::proxy {

DescriptorReserve::DescriptorReserve() { replenish(); }

DescriptorReserve::~DescriptorReserve() {
  if (fd_ >= 0) ::close(fd_);
}

void DescriptorReserve::replenish() {
  if (fd_ < 0) fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
}

std::size_t DescriptorReserve::shed(int listener_fd, std::size_t max) {
  replenish();
  if (fd_ < 0) return 0;
  ::close(fd_);
  fd_ = -1;
  std::size_t shed = 0;
  while (shed < max) {
    // Never block the worker on an empty queue, whatever the listener's O_NONBLOCK says.
    pollfd pfd{listener_fd, POLLIN, 0};
    if (::poll(&pfd, 1, 0) != 1 || !(pfd.revents & POLLIN)) break;
    const int fd = ::accept4(listener_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) break;  // queue empty, or the freed slot went to another thread first
    // SO_LINGER {1, 0}: close() sends RST, and the slot is free again for the next one.
    const linger reset{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    ::close(fd);
    ++shed;
  }
  replenish();
  return shed;
}

}  // namespace dsproxy::proxy
