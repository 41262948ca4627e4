#include "net/ip_address.hpp"

#include <arpa/inet.h>

#include <cstring>

namespace dsproxy::net {

std::string_view to_string(Family f) { return f == Family::v4 ? "IPv4" : "IPv6"; }
Family other(Family f) { return f == Family::v4 ? Family::v6 : Family::v4; }

std::string_view to_string(AddressScope s) {
  switch (s) {
    case AddressScope::global: return "global";
    case AddressScope::loopback: return "loopback";
    case AddressScope::unspecified: return "unspecified";
    case AddressScope::this_network: return "this-network";
    case AddressScope::link_local: return "link-local";
    case AddressScope::multicast: return "multicast";
    case AddressScope::broadcast: return "broadcast";
    case AddressScope::v4_compatible: return "IPv4-compatible";
  }
  return "unknown";
}

AddressScope IpAddress::scope() const {
  const auto& b = bytes_;
  if (is_unspecified()) return AddressScope::unspecified;
  if (is_v4()) {
    if (b[0] == 127) return AddressScope::loopback;
    if (b[0] == 0) return AddressScope::this_network;
    if (b[0] == 169 && b[1] == 254) return AddressScope::link_local;
    if ((b[0] & 0xf0) == 224) return AddressScope::multicast;
    if (b[0] == 255 && b[1] == 255 && b[2] == 255 && b[3] == 255) return AddressScope::broadcast;
    return AddressScope::global;
  }
  bool first_twelve_zero = true;
  for (int i = 0; i < 12; ++i)
    if (b[i] != 0) first_twelve_zero = false;
  if (first_twelve_zero) {
    if (b[12] == 0 && b[13] == 0 && b[14] == 0 && b[15] == 1) return AddressScope::loopback;
    return AddressScope::v4_compatible;  // v4-mapped never gets here: v6() unmaps it
  }
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return AddressScope::link_local;
  if (b[0] == 0xff) return AddressScope::multicast;
  return AddressScope::global;
}

namespace {
bool is_v4_mapped(const std::array<std::uint8_t, 16>& b) {
  for (int i = 0; i < 10; ++i)
    if (b[i] != 0) return false;
  return b[10] == 0xff && b[11] == 0xff;
}
}  // namespace

IpAddress IpAddress::v4(const std::array<std::uint8_t, 4>& b) {
  IpAddress a;
  a.family_ = Family::v4;
  std::memcpy(a.bytes_.data(), b.data(), 4);
  return a;
}

IpAddress IpAddress::v6(const std::array<std::uint8_t, 16>& b) {
  if (is_v4_mapped(b)) return v4({b[12], b[13], b[14], b[15]});
  IpAddress a;
  a.family_ = Family::v6;
  a.bytes_ = b;
  return a;
}

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  // inet_pton needs a NUL-terminated string; addresses are short, so a stack copy suffices.
  char buf[INET6_ADDRSTRLEN + 1];
  if (text.empty() || text.size() >= sizeof buf) return std::nullopt;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  std::array<std::uint8_t, 16> b{};
  if (text.find(':') == std::string_view::npos) {
    if (inet_pton(AF_INET, buf, b.data()) != 1) return std::nullopt;
    return v4({b[0], b[1], b[2], b[3]});
  }
  if (inet_pton(AF_INET6, buf, b.data()) != 1) return std::nullopt;
  return v6(b);
}

std::string IpAddress::to_string() const {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(is_v4() ? AF_INET : AF_INET6, bytes_.data(), buf, sizeof buf);
  return buf;
}

std::optional<SocketAddress> SocketAddress::parse(std::string_view text, bool allow_zero_port) {
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') return std::nullopt;
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    if (host.find(':') == std::string_view::npos) return std::nullopt;  // brackets are for IPv6 only
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos || text.find(':') != colon) return std::nullopt;  // bare IPv6: ambiguous
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  const auto ip = IpAddress::parse(host);
  if (!ip || port.empty() || port.size() > 5) return std::nullopt;
  unsigned value = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value > 65535 || (value == 0 && !allow_zero_port)) return std::nullopt;
  return SocketAddress{*ip, static_cast<std::uint16_t>(value)};
}

// Built by appending rather than with operator+ chains: GCC 12 reports a spurious -Wrestrict
// inside libstdc++ for `"[" + str`.
std::string SocketAddress::to_string() const {
  std::string out;
  out.reserve(INET6_ADDRSTRLEN + 8);
  if (!ip.is_v4()) out += '[';
  out += ip.to_string();
  out += ip.is_v4() ? ":" : "]:";
  out += std::to_string(port);
  return out;
}

std::string SocketAddress::to_istio_string() const {
  return ip.to_string() + ":" + std::to_string(port);
}

std::size_t IpAddressHash::operator()(const IpAddress& a) const noexcept {
  // FNV-1a over the bytes: addresses are short and this is not on the per-packet path.
  std::size_t h = 1469598103934665603ull ^ static_cast<std::size_t>(a.family());
  for (auto byte : a.bytes()) h = (h ^ byte) * 1099511628211ull;
  return h;
}

std::size_t SocketAddressHash::operator()(const SocketAddress& a) const noexcept {
  return IpAddressHash{}(a.ip) * 31 + a.port;
}

}  // namespace dsproxy::net
