#pragma once
// Is a destination this node itself? The question behind the loop guard: a connection whose
// original destination is one of our capture ports on a local address was made straight to our
// listener (not redirected to it), and passing it through would dial ourselves. The same port on
// a pod's address belongs to an application and must pass.

#include <cstdint>
#include <optional>

#include "net/ip_address.hpp"

namespace dsproxy::proxy {

class LocalAddressCheck {
 public:
  virtual ~LocalAddressCheck() = default;
  // True when the kernel delivers `ip` to this node's own sockets. Asked only for destinations on
  // a capture port, never on the common path.
  virtual bool is_local(const net::IpAddress& ip) = 0;
};

// Asks the kernel's routing tables (RTM_GETROUTE over rtnetlink) the question our own upstream
// connect() would ask, with the upstream mark: local means a route of type RTN_LOCAL. That covers
// the node's addresses, all of 127.0.0.0/8, ::1 and `local` routes (AnyIP ranges), which an
// interface-address list (getifaddrs) misses, and it is never stale. The kernel answers inside
// send(), so the lookup never blocks. When no answer can be had (no descriptor, no memory) the
// address counts as local: refusing one connection is better than a loop that eats descriptors.
// Not thread-safe: one per worker.
class KernelLocalAddressCheck final : public LocalAddressCheck {
 public:
  explicit KernelLocalAddressCheck(std::uint32_t mark = 0);
  ~KernelLocalAddressCheck() override;
  KernelLocalAddressCheck(const KernelLocalAddressCheck&) = delete;
  KernelLocalAddressCheck& operator=(const KernelLocalAddressCheck&) = delete;

  bool is_local(const net::IpAddress& ip) override;
  // The kernel's answer, or nullopt when it could not be asked.
  std::optional<bool> lookup(const net::IpAddress& ip);

 private:
  bool open_socket();

  int fd_ = -1;
  std::uint32_t seq_ = 0;
  std::uint32_t mark_;
};

}  // namespace dsproxy::proxy
