#include "proxy/log_text.hpp"

namespace dsproxy::proxy {

std::string log_text(std::string_view text, std::size_t max) {
  static constexpr char kHex[] = "0123456789abcdef";
  const std::string_view shown = text.substr(0, max);
  std::string out;
  out.reserve(shown.size() + 24);
  for (const char c : shown) {
    const auto b = static_cast<unsigned char>(c);
    if (b >= 0x20 && b <= 0x7e) {
      out += c;
    } else {
      out += "\\x";
      out += kHex[b >> 4];
      out += kHex[b & 0xf];
    }
  }
  if (text.size() > shown.size()) out += "\u2026(" + std::to_string(text.size()) + " bytes)";
  return out;
}

std::string log_list(const std::vector<std::string>& items, std::size_t max_items) {
  std::string out;
  for (std::size_t i = 0; i < items.size() && i < max_items; ++i) {
    if (i) out += ' ';
    out += log_text(items[i]);
  }
  if (items.size() > max_items) out += " and " + std::to_string(items.size() - max_items) + " more";
  return out;
}

}  // namespace dsproxy::proxy
