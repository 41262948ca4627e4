#include "proxy/local_address_check.hpp"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace dsproxy::proxy {

namespace {

struct RouteRequest {
  nlmsghdr header;
  rtmsg route;
  std::array<char, 64> attributes;  // RTA_DST (16 bytes) and RTA_MARK (4), each with its header
};

void add_attribute(RouteRequest& request, unsigned short type, const void* data, std::size_t size) {
  auto* attr = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(&request) + NLMSG_ALIGN(request.header.nlmsg_len));
  attr->rta_type = type;
  attr->rta_len = static_cast<unsigned short>(RTA_LENGTH(size));
  std::memcpy(RTA_DATA(attr), data, size);
  request.header.nlmsg_len = NLMSG_ALIGN(request.header.nlmsg_len) + RTA_ALIGN(attr->rta_len);
}

// Route lookups that failed because the kernel has no way to deliver the address here (no route,
// unreachable, prohibit, blackhole, no such family): a definite "not local".
bool is_route_error(int err) {
  return err == ENETUNREACH || err == EHOSTUNREACH || err == EACCES || err == EINVAL || err == EAFNOSUPPORT;
}

}  // namespace

KernelLocalAddressCheck::KernelLocalAddressCheck(std::uint32_t mark) : mark_(mark) {
  // Opened now, while descriptors are plentiful; reopened on demand if this fails.
  open_socket();
}

KernelLocalAddressCheck::~KernelLocalAddressCheck() {
  if (fd_ >= 0) ::close(fd_);
}

bool KernelLocalAddressCheck::open_socket() {
  if (fd_ >= 0) return true;
  fd_ = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE);
  return fd_ >= 0;
}

bool KernelLocalAddressCheck::is_local(const net::IpAddress& ip) {
  // connect() to 0.0.0.0 or :: reaches the local host: no need to ask.
  if (ip.is_unspecified()) return true;
  return lookup(ip).value_or(true);
}

std::optional<bool> KernelLocalAddressCheck::lookup(const net::IpAddress& ip) {
  if (!open_socket()) return std::nullopt;
  RouteRequest request{};
  request.header.nlmsg_len = NLMSG_LENGTH(sizeof(rtmsg));
  request.header.nlmsg_type = RTM_GETROUTE;
  request.header.nlmsg_flags = NLM_F_REQUEST;
  request.header.nlmsg_seq = ++seq_;
  request.route.rtm_family = ip.is_v4() ? AF_INET : AF_INET6;
  request.route.rtm_dst_len = static_cast<unsigned char>(ip.host_prefix());
  add_attribute(request, RTA_DST, ip.bytes().data(), ip.is_v4() ? 4 : 16);
  // Policy rules may select on the mark; ask with the one our upstream sockets carry.
  if (mark_ != 0) add_attribute(request, RTA_MARK, &mark_, sizeof mark_);
  if (::send(fd_, &request, request.header.nlmsg_len, 0) < 0) return std::nullopt;

  // rtnetlink handles the request inside send() and queues the answer before it returns, so a
  // non-blocking read finds it. A reply to an earlier request that was given up on (it cannot
  // happen with synchronous answers, but costs nothing to survive) is skipped by its sequence.
  alignas(nlmsghdr) std::array<char, 4096> buffer;
  for (int round = 0; round < 4; ++round) {
    const ssize_t n = ::recv(fd_, buffer.data(), buffer.size(), MSG_DONTWAIT);
    if (n < 0) {
      // ENOBUFS: the socket overflowed and lost messages; start afresh on the next lookup.
      if (errno == ENOBUFS) {
        ::close(fd_);
        fd_ = -1;
      }
      return std::nullopt;
    }
    auto len = static_cast<std::uint32_t>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buffer.data()); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_seq != seq_) continue;
      if (h->nlmsg_type == NLMSG_ERROR) {
        const auto* e = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) return std::nullopt;
        if (is_route_error(-e->error)) return false;
        return std::nullopt;
      }
      if (h->nlmsg_type == RTM_NEWROUTE && h->nlmsg_len >= NLMSG_LENGTH(sizeof(rtmsg))) {
        const auto* r = static_cast<const rtmsg*>(NLMSG_DATA(h));
        return r->rtm_type == RTN_LOCAL;
      }
      return std::nullopt;
    }
  }
  return std::nullopt;
}

}  // namespace dsproxy::proxy
