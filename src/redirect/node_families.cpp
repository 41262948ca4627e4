#include "redirect/node_families.hpp"

#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace dsproxy::redirect {

namespace {

// socket() failing for lack of memory or descriptors says nothing about the family: the
// listeners would fail the same way, and loudly, a moment later.
bool resource_shortage(int err) {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

bool says_one(const std::optional<std::string>& value) {
  if (!value) return false;
  std::string v = *value;
  while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
  return v == "1";
}

std::optional<std::string> read_small_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string text;
  std::getline(in, text);
  if (in.bad()) return std::nullopt;
  return text;
}

}  // namespace

FamilyAvailability judge(net::Family family, const FamilyProbe& p) {
  const bool v6 = family == net::Family::v6;
  if (p.socket_errno != 0 && !resource_shortage(p.socket_errno)) {
    if (p.socket_errno == EAFNOSUPPORT)
      return {false, v6 ? "the kernel has no IPv6: booted with ipv6.disable=1?" : "the kernel has no IPv4"};
    return {false, fmt::format("{} sockets cannot be created: {}", v6 ? "AF_INET6" : "AF_INET",
                               std::strerror(p.socket_errno))};
  }
  if (!v6) return {};
  if (says_one(p.all_disable_ipv6)) return {false, "net.ipv6.conf.all.disable_ipv6=1"};
  if (says_one(p.lo_disable_ipv6))
    return {false, "net.ipv6.conf.lo.disable_ipv6=1, so the capture route `local ::/0 dev lo` cannot exist"};
  return {};
}

FamilyProbe probe(net::Family family, const std::string& proc_sys_net) {
  FamilyProbe p;
  const int fd = ::socket(family == net::Family::v4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    p.socket_errno = errno;
  else
    ::close(fd);
  if (family == net::Family::v6) {
    p.all_disable_ipv6 = read_small_file(proc_sys_net + "/ipv6/conf/all/disable_ipv6");
    p.lo_disable_ipv6 = read_small_file(proc_sys_net + "/ipv6/conf/lo/disable_ipv6");
  }
  return p;
}

NodeFamilies detect_node_families(const std::string& proc_sys_net) {
  return NodeFamilies{judge(net::Family::v4, probe(net::Family::v4, proc_sys_net)),
                      judge(net::Family::v6, probe(net::Family::v6, proc_sys_net))};
}

std::string describe_off_families(const NodeFamilies& f) {
  if (f.v4.on && f.v6.on) return {};
  if (!f.v4.on && !f.v6.on)
    return fmt::format("neither IPv4 ({}) nor IPv6 ({}) is usable on this node: nothing can be served",
                       f.v4.reason, f.v6.reason);
  const auto& off = f.v4.on ? f.v6 : f.v4;
  const std::string_view off_name = f.v4.on ? "IPv6" : "IPv4";
  const std::string_view on_name = f.v4.on ? "IPv4" : "IPv6";
  return fmt::format(
      "{} is off on this node ({}): serving {} only; no {} capture rules, listeners or DNS sockets. "
      "Restart dsproxy after turning {} on.",
      off_name, off.reason, on_name, off_name, off_name);
}

}  // namespace dsproxy::redirect
