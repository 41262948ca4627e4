#include "net/cidr.hpp"

#include <charconv>

namespace dsproxy::net {

namespace {

// Clears every bit past `prefix` (of the family's width) in `bytes`.
std::array<std::uint8_t, 16> masked(std::array<std::uint8_t, 16> bytes, int prefix, int width) {
  for (int bit = prefix; bit < width; ++bit) bytes[static_cast<std::size_t>(bit / 8)] &= static_cast<std::uint8_t>(~(0x80u >> (bit % 8)));
  return bytes;
}

bool is_v4_mapped_text(std::string_view address) {
  // IpAddress::parse unmaps ::ffff:a.b.c.d on its own; only the prefix needs adjusting then.
  return address.find(':') != std::string_view::npos;
}

}  // namespace

std::optional<Cidr> Cidr::parse(std::string_view text) {
  const auto slash = text.find('/');
  const std::string_view address = text.substr(0, slash);
  const auto ip = IpAddress::parse(address);
  if (!ip) return std::nullopt;
  // Written as IPv6 but canonicalised to IPv4: a v4-mapped block.
  const bool mapped = ip->is_v4() && is_v4_mapped_text(address);
  int prefix = mapped ? 128 : ip->host_prefix();
  if (slash != std::string_view::npos) {
    const std::string_view digits = text.substr(slash + 1);
    int n = -1;
    auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
    if (digits.empty() || ec != std::errc{} || ptr != digits.data() + digits.size()) return std::nullopt;
    prefix = n;
  }
  if (mapped) {
    if (prefix < 96 || prefix > 128) return std::nullopt;  // wider than the mapped range: not one family
    prefix -= 96;
  }
  if (prefix < 0 || prefix > ip->host_prefix()) return std::nullopt;
  Cidr c;
  const auto bytes = masked(ip->bytes(), prefix, ip->host_prefix());
  c.network_ = ip->is_v4() ? IpAddress::v4({bytes[0], bytes[1], bytes[2], bytes[3]}) : IpAddress::v6(bytes);
  c.prefix_ = prefix;
  return c;
}

bool Cidr::contains(const IpAddress& ip) const {
  if (ip.family() != network_.family()) return false;
  const auto& a = ip.bytes();
  const auto& n = network_.bytes();
  const int full = prefix_ / 8;
  for (int i = 0; i < full; ++i)
    if (a[static_cast<std::size_t>(i)] != n[static_cast<std::size_t>(i)]) return false;
  if (const int rest = prefix_ % 8; rest != 0) {
    const auto mask = static_cast<std::uint8_t>(0xffu << (8 - rest));
    if ((a[static_cast<std::size_t>(full)] & mask) != n[static_cast<std::size_t>(full)]) return false;
  }
  return true;
}

std::string Cidr::to_string() const { return network_.to_string() + "/" + std::to_string(prefix_); }

}  // namespace dsproxy::net
