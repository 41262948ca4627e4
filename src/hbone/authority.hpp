#pragma once
// The HBONE request's addressing: the CONNECT :authority ("<ip>:<port>", an IPv6 address in
// brackets, as ztunnel writes a Rust SocketAddr) and the headers ztunnel sends with it.

#include <boost/asio/ip/tcp.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace dsproxy::hbone {

// "10.0.0.1:8080" or "[fd00::1]:8080". Rejects host names, zone ids, missing or zero ports,
// unbracketed IPv6 and trailing garbage: the server only tunnels to literal pod addresses.
std::optional<boost::asio::ip::tcp::endpoint> parse_authority(std::string_view authority);
std::string format_authority(const boost::asio::ip::tcp::endpoint& endpoint);

// ztunnel's `forwarded` value: for="<client ip:port>" (quoted: an IPv6 socket address contains
// ':' and brackets, which RFC 7239 only allows inside a quoted string), with ";host=<service
// hostname>" when the client addressed a Service.
std::string format_forwarded(const boost::asio::ip::tcp::endpoint& client, std::string_view service_host = {});
// The client endpoint of a `forwarded` header written as above (the first for= element).
std::optional<boost::asio::ip::tcp::endpoint> parse_forwarded_for(std::string_view value);

// The source workload's attributes in ztunnel's `baggage` header: comma-separated key=value with
// OpenTelemetry's k8s.* keys; empty fields are left out.
struct Baggage {
  std::string cluster;        // k8s.cluster.name
  std::string ns;             // k8s.namespace.name
  std::string workload_type;  // "deployment", "pod", "job", "cronjob": the key k8s.<type>.name
  std::string workload_name;
  std::string service_name;     // service.name (the app label)
  std::string service_version;  // service.version
  std::string region;           // cloud.region
  std::string zone;             // cloud.availability_zone
  bool operator==(const Baggage&) const = default;
};
std::string format_baggage(const Baggage& baggage);
Baggage parse_baggage(std::string_view value);

}  // namespace dsproxy::hbone
