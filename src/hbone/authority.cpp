#include "hbone/authority.hpp"

#include <charconv>
#include <vector>

namespace dsproxy::hbone {

namespace ip = boost::asio::ip;

namespace {

std::optional<std::uint16_t> parse_port(std::string_view text) {
  if (text.empty() || text.size() > 5) return std::nullopt;
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || value == 0 || value > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(value);
}

std::optional<ip::tcp::endpoint> parse_socket_address(std::string_view text) {
  boost::system::error_code ec;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') return std::nullopt;
    auto host = text.substr(1, close - 1);
    if (host.find('%') != std::string_view::npos) return std::nullopt;  // no zone ids
    auto address = ip::make_address_v6(std::string(host), ec);
    auto port = parse_port(text.substr(close + 2));
    if (ec || !port) return std::nullopt;
    // An IPv4-mapped address names an IPv4 pod: tunnel to it as IPv4.
    if (address.is_v4_mapped()) return ip::tcp::endpoint(ip::make_address_v4(ip::v4_mapped, address), *port);
    return ip::tcp::endpoint(address, *port);
  }
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos) return std::nullopt;
  auto address = ip::make_address_v4(std::string(text.substr(0, colon)), ec);
  auto port = parse_port(text.substr(colon + 1));
  if (ec || !port) return std::nullopt;
  return ip::tcp::endpoint(address, *port);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::optional<ip::tcp::endpoint> parse_authority(std::string_view authority) {
  return parse_socket_address(authority);
}

std::string format_authority(const ip::tcp::endpoint& endpoint) {
  auto address = endpoint.address();
  if (address.is_v6() && address.to_v6().is_v4_mapped())
    address = ip::make_address_v4(ip::v4_mapped, address.to_v6());
  std::string out;
  if (address.is_v4()) {
    // By hand: inet_ntop (address::to_string) formats IPv4 with sprintf, and this runs twice
    // for every tunnelled connection (:authority and forwarded), about 3,000 instructions each.
    char buf[sizeof "255.255.255.255:65535"];
    char* p = buf;
    const auto bytes = address.to_v4().to_bytes();
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      if (i) *p++ = '.';
      p = std::to_chars(p, buf + sizeof buf, static_cast<unsigned>(bytes[i])).ptr;
    }
    *p++ = ':';
    p = std::to_chars(p, buf + sizeof buf, static_cast<unsigned>(endpoint.port())).ptr;
    return std::string(buf, p);
  }
  if (address.is_v6()) {
    out += '[';
    out += address.to_string();
    out += ']';
  } else {
    out += address.to_string();
  }
  out += ':';
  out += std::to_string(endpoint.port());
  return out;
}

std::string format_forwarded(const ip::tcp::endpoint& client, std::string_view service_host) {
  std::string out = "for=\"" + format_authority(client) + "\"";
  if (!service_host.empty()) {
    out += ";host=";
    out += service_host;
  }
  return out;
}

std::optional<ip::tcp::endpoint> parse_forwarded_for(std::string_view value) {
  // Only the first element (the hop nearest the original client), then its for= pair.
  value = value.substr(0, value.find(','));
  while (!value.empty()) {
    auto semi = value.find(';');
    auto pair = trim(value.substr(0, semi));
    value = semi == std::string_view::npos ? std::string_view{} : value.substr(semi + 1);
    if (pair.size() < 4) continue;
    auto key = pair.substr(0, 4);
    if (!(key[0] == 'f' || key[0] == 'F') || !(key[1] == 'o' || key[1] == 'O') || !(key[2] == 'r' || key[2] == 'R') ||
        key[3] != '=')
      continue;
    auto v = pair.substr(4);
    if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
    return parse_socket_address(v);
  }
  return std::nullopt;
}

std::string format_baggage(const Baggage& b) {
  std::string out;
  auto add = [&](std::string_view key, const std::string& value) {
    if (value.empty()) return;
    if (!out.empty()) out += ',';
    out += key;
    out += '=';
    out += value;
  };
  add("k8s.cluster.name", b.cluster);
  add("k8s.namespace.name", b.ns);
  if (!b.workload_type.empty()) add("k8s." + b.workload_type + ".name", b.workload_name);
  add("service.name", b.service_name);
  add("service.version", b.service_version);
  add("cloud.region", b.region);
  add("cloud.availability_zone", b.zone);
  return out;
}

Baggage parse_baggage(std::string_view value) {
  Baggage b;
  while (!value.empty()) {
    auto comma = value.find(',');
    auto member = trim(value.substr(0, comma));
    value = comma == std::string_view::npos ? std::string_view{} : value.substr(comma + 1);
    // W3C baggage members may carry ";property" suffixes; the value ends before them.
    member = member.substr(0, member.find(';'));
    auto eq = member.find('=');
    if (eq == std::string_view::npos) continue;
    auto key = trim(member.substr(0, eq));
    std::string v(trim(member.substr(eq + 1)));
    if (key == "k8s.cluster.name") b.cluster = v;
    else if (key == "k8s.namespace.name") b.ns = v;
    else if (key == "service.name") b.service_name = v;
    else if (key == "service.version") b.service_version = v;
    else if (key == "cloud.region") b.region = v;
    else if (key == "cloud.availability_zone") b.zone = v;
    else {
      for (std::string_view type : {"deployment", "pod", "job", "cronjob", "statefulset", "daemonset", "replicaset"}) {
        if (key.size() == type.size() + 9 && key.substr(0, 4) == "k8s." && key.substr(4, type.size()) == type &&
            key.substr(4 + type.size()) == ".name") {
          b.workload_type = type;
          b.workload_name = v;
        }
      }
    }
  }
  return b;
}

}  // namespace dsproxy::hbone
