#pragma once
// An address block (CIDR) of either family, as AuthorizationPolicy ipBlocks and `when` values
// write them: "10.0.0.0/8", "fd00::/8", or a bare address meaning that one host.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "net/ip_address.hpp"

namespace dsproxy::net {

class Cidr {
 public:
  // "a.b.c.d[/n]" or "ipv6[/n]". Host bits past the prefix are cleared, as a block means the
  // network (Istio's netip.ParsePrefix keeps them, but matching only looks at the prefix). A
  // v4-mapped block (::ffff:a.b.c.d/n with n >= 96) is the IPv4 block it maps, so it matches the
  // IPv4 addresses the kernel hands out for such clients once canonicalised.
  static std::optional<Cidr> parse(std::string_view text);

  // Addresses are compared canonically: an IPv4-mapped IPv6 address was already turned into its
  // IPv4 address by IpAddress, so it falls in the IPv4 block. Never matches across families.
  bool contains(const IpAddress& ip) const;

  const IpAddress& network() const { return network_; }
  int prefix() const { return prefix_; }
  std::string to_string() const;  // "10.0.0.0/8"
  friend bool operator==(const Cidr&, const Cidr&) = default;

 private:
  IpAddress network_;
  int prefix_ = 0;
};

}  // namespace dsproxy::net
