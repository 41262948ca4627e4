#pragma once
// IP addresses and socket addresses as plain values.
//
// Deliberately free of Boost.Asio: the config model, the router and the rule generator all speak
// addresses, and keeping asio out of this widely included header keeps builds fast.

#include <array>
#include <compare>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace dsproxy::net {

enum class Family : std::uint8_t { v4, v6 };

// What an address can reach by its kind alone (RFC 6890's special-purpose blocks that matter to a
// proxy). Only `global` may ever be dialled on a pod's behalf from a Service's endpoints: the
// others reach the node itself (loopback, unspecified), one link only (link-local), many hosts
// (multicast, broadcast), or nothing the kernel would route for a pod (0.0.0.0/8, ::a.b.c.d).
enum class AddressScope : std::uint8_t {
  global,
  loopback,       // 127.0.0.0/8, ::1
  unspecified,    // 0.0.0.0, ::
  this_network,   // 0.0.0.0/8 other than 0.0.0.0 ("this host on this network", RFC 1122)
  link_local,     // 169.254.0.0/16, fe80::/10
  multicast,      // 224.0.0.0/4, ff00::/8
  broadcast,      // 255.255.255.255
  v4_compatible,  // ::a.b.c.d (deprecated; a tunnel could turn ::127.0.0.1 into 127.0.0.1)
};
std::string_view to_string(AddressScope s);

std::string_view to_string(Family f);  // "IPv4" / "IPv6", as Kubernetes spells ipFamilies
Family other(Family f);

class IpAddress {
 public:
  // Parses dotted IPv4 or textual IPv6. A v4-mapped IPv6 address (::ffff:a.b.c.d) is returned as
  // the IPv4 address it carries: the kernel hands those out on dual-stack sockets, but for routing
  // and family policy the client dialled IPv4.
  static std::optional<IpAddress> parse(std::string_view text);
  static IpAddress v4(const std::array<std::uint8_t, 4>& b);
  static IpAddress v6(const std::array<std::uint8_t, 16>& b);  // canonicalises v4-mapped input

  Family family() const { return family_; }
  bool is_v4() const { return family_ == Family::v4; }
  // Network byte order; IPv4 uses the first 4 bytes, the rest are zero.
  const std::array<std::uint8_t, 16>& bytes() const { return bytes_; }
  std::string to_string() const;
  // 0.0.0.0 or ::, the wildcard a listener binds to.
  bool is_unspecified() const {
    for (auto b : bytes_)
      if (b != 0) return false;
    return true;
  }
  AddressScope scope() const;
  // Prefix length for a single host: 32 or 128.
  int host_prefix() const { return is_v4() ? 32 : 128; }

  auto operator<=>(const IpAddress&) const = default;

 private:
  Family family_ = Family::v4;
  std::array<std::uint8_t, 16> bytes_{};
};

struct SocketAddress {
  IpAddress ip;
  std::uint16_t port = 0;

  // "10.0.0.1:80" / "[fd00::1]:80": unambiguous, what logs and errors use.
  std::string to_string() const;
  // "fd00::1:80": the ambiguous form istioctl prints in its endpoints table; only for display.
  std::string to_istio_string() const;

  // The to_string() forms: "10.0.0.1:80" or "[fd00::1]:80", port 1-65535 (0 with allow_zero_port).
  static std::optional<SocketAddress> parse(std::string_view text, bool allow_zero_port = false);

  auto operator<=>(const SocketAddress&) const = default;
};

struct IpAddressHash {
  std::size_t operator()(const IpAddress& a) const noexcept;
};
struct SocketAddressHash {
  std::size_t operator()(const SocketAddress& a) const noexcept;
};

}  // namespace dsproxy::net
