#include "cli/proxy_config_view.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "net/ip_address.hpp"

namespace dsproxy::cli {

namespace json = boost::json;

namespace {

json::object parse_dump(std::string_view text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) throw std::runtime_error("admin API returned something that is not a config dump");
  return std::move(v.as_object());
}

const json::array& array_field(const json::object& o, std::string_view key) {
  const auto* v = o.if_contains(key);
  if (!v || !v->is_array()) throw std::runtime_error("config dump lacks '" + std::string(key) + "'");
  return v->as_array();
}

std::string str(const json::value& v) { return v.is_string() ? std::string(v.as_string()) : json::serialize(v); }

std::uint16_t port_of(const json::value& address) {
  return static_cast<std::uint16_t>(address.at("socketAddress").at("portValue").to_number<std::int64_t>());
}

// Column layout like Go's tabwriter as istioctl configures it: each column as wide as its widest
// cell plus padding, last column unpadded.
std::string table(const std::vector<std::vector<std::string>>& rows) {
  constexpr std::size_t kPadding = 5;
  std::vector<std::size_t> width;
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], r[i].size());
    }
  std::ostringstream out;
  for (const auto& r : rows) {
    for (std::size_t i = 0; i < r.size(); ++i) {
      out << r[i];
      if (i + 1 < r.size()) out << std::string(width[i] - r[i].size() + kPadding, ' ');
    }
    out << '\n';
  }
  return out.str();
}

std::vector<const json::object*> matching_listeners(const json::object& dump, std::optional<std::uint16_t> port) {
  std::vector<const json::object*> out;
  for (const auto& l : array_field(dump, "listeners"))
    if (!port || port_of(l.at("address")) == *port) out.push_back(&l.as_object());
  return out;
}

struct EndpointRow {
  net::SocketAddress address;
  std::string text, status, outlier, cluster, node, zone;
};

// A field of the dump, or "-" when absent: an empty cell would shift the columns of a table
// read with awk.
std::string optional_str(const json::value& o, std::string_view key) {
  const auto* v = o.as_object().if_contains(key);
  return v && v->is_string() && !v->as_string().empty() ? std::string(v->as_string()) : "-";
}

std::vector<EndpointRow> matching_endpoints(const json::object& dump, std::optional<std::uint16_t> port) {
  std::vector<EndpointRow> rows;
  for (const auto& c : array_field(dump, "endpoints")) {
    const std::string cluster = str(c.at("clusterName"));
    for (const auto& e : c.at("endpoints").as_array()) {
      const auto& sa = e.at("address").at("socketAddress");
      const auto ip = net::IpAddress::parse(str(sa.at("address")));
      if (!ip) continue;
      const net::SocketAddress addr{*ip, port_of(e.at("address"))};
      if (port && addr.port != *port) continue;
      rows.push_back({addr, addr.to_istio_string(), str(e.at("healthStatus")), str(e.at("outlierCheck")), cluster,
                      optional_str(e, "nodeName"), optional_str(e, "zone")});
    }
  }
  // IPv4 first, then by address bytes: stable and readable, unlike a plain string sort.
  std::sort(rows.begin(), rows.end(), [](const EndpointRow& a, const EndpointRow& b) {
    return std::tie(a.address, a.cluster) < std::tie(b.address, b.cluster);
  });
  return rows;
}

}  // namespace

std::string listeners_table(std::string_view config_dump, std::optional<std::uint16_t> port) {
  const auto dump = parse_dump(config_dump);
  std::vector<std::vector<std::string>> rows{{"ADDRESSES", "PORT", "MATCH", "DESTINATION"}};
  for (const auto* l : matching_listeners(dump, port)) {
    std::string addresses = str(l->at("address").at("socketAddress").at("address"));
    if (const auto* extra = l->if_contains("additionalAddresses"))
      for (const auto& a : extra->as_array()) {
        addresses += ',';
        addresses += str(a.at("address").at("socketAddress").at("address"));
      }
    std::string destination;
    if (const auto* c = l->if_contains("defaultCluster")) destination.append("Cluster: ").append(str(*c));
    else destination = str(l->at("name")) == "virtualInbound" ? "Inbound: passthrough to this node's pods"
                                                                : "Outbound: Services, else passthrough";
    rows.push_back({addresses, std::to_string(port_of(l->at("address"))), "ALL", destination});
  }
  return table(rows);
}

std::string listeners_json(std::string_view config_dump, std::optional<std::uint16_t> port) {
  const auto dump = parse_dump(config_dump);
  json::array out;
  for (const auto* l : matching_listeners(dump, port)) out.push_back(*l);
  // Indented like istioctl's -o json, one field per line, so users can grep it.
  std::string s;
  int depth = 0;
  bool in_string = false;
  const std::string flat = json::serialize(out);
  for (std::size_t i = 0; i < flat.size(); ++i) {
    const char ch = flat[i];
    if (in_string) {
      s += ch;
      if (ch == '\\' && i + 1 < flat.size()) s += flat[++i];
      else if (ch == '"') in_string = false;
      continue;
    }
    switch (ch) {
      case '"': in_string = true; s += ch; break;
      case '{': case '[':
        s += ch;
        s += '\n' + std::string(static_cast<std::size_t>(2 * ++depth), ' ');
        break;
      case '}': case ']':
        s += '\n' + std::string(static_cast<std::size_t>(2 * --depth), ' ') + ch;
        break;
      case ',': s += ",\n" + std::string(static_cast<std::size_t>(2 * depth), ' '); break;
      case ':': s += ": "; break;
      default: s += ch;
    }
  }
  return s + "\n";
}

std::string endpoints_table(std::string_view config_dump, std::optional<std::uint16_t> port) {
  const auto dump = parse_dump(config_dump);
  // CLUSTER stays last (scripts read it as the last field); NODE and ZONE go before it.
  std::vector<std::vector<std::string>> rows{{"ENDPOINT", "STATUS", "OUTLIER CHECK", "NODE", "ZONE", "CLUSTER"}};
  for (auto& r : matching_endpoints(dump, port)) rows.push_back({r.text, r.status, r.outlier, r.node, r.zone, r.cluster});
  return table(rows);
}

std::string endpoints_json(std::string_view config_dump, std::optional<std::uint16_t> port) {
  const auto dump = parse_dump(config_dump);
  json::array out;
  for (auto& r : matching_endpoints(dump, port))
    out.push_back(json::object{{"endpoint", r.text}, {"status", r.status}, {"outlierCheck", r.outlier},
                               {"node", r.node}, {"zone", r.zone}, {"cluster", r.cluster}});
  return json::serialize(out) + "\n";
}

namespace {

struct WorkloadRow {
  std::string ns, name, address, node, protocol, identity;
};

std::vector<WorkloadRow> workload_rows(const json::object& dump) {
  std::vector<WorkloadRow> rows;
  for (const auto& w : array_field(dump, "workloads")) {
    const auto& o = w.as_object();
    WorkloadRow r{optional_str(w, "namespace"), optional_str(w, "name"), "", optional_str(w, "node"),
                  optional_str(w, "protocol"), optional_str(w, "identity")};
    if (const auto* ips = o.if_contains("workloadIps"); ips && ips->is_array())
      for (const auto& ip : ips->as_array()) r.address += (r.address.empty() ? "" : ",") + str(ip);
    if (r.node.empty()) r.node = "-";
    rows.push_back(std::move(r));
  }
  return rows;
}

const json::object& authz_object(const json::object& dump) {
  const auto* v = dump.if_contains("authz");
  if (!v || !v->is_object()) throw std::runtime_error("config dump lacks 'authz' (a dsproxy without AuthorizationPolicy support?)");
  return v->as_object();
}

}  // namespace

std::string workloads_table(std::string_view config_dump) {
  const auto dump = parse_dump(config_dump);
  // istioctl ztunnel-config workloads' columns; WAYPOINT is always None (dsproxy is L4 only).
  std::vector<std::vector<std::string>> rows{{"NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"}};
  for (auto& r : workload_rows(dump)) rows.push_back({r.ns, r.name, r.address, r.node, "None", r.protocol});
  return table(rows);
}

std::string workloads_json(std::string_view config_dump) {
  const auto dump = parse_dump(config_dump);
  json::array out;
  for (auto& r : workload_rows(dump))
    out.push_back(json::object{{"namespace", r.ns}, {"name", r.name}, {"address", r.address}, {"node", r.node},
                               {"waypoint", "None"}, {"protocol", r.protocol}, {"identity", r.identity}});
  return json::serialize(out) + "\n";
}

std::string authz_table(std::string_view config_dump) {
  const auto dump = parse_dump(config_dump);
  const auto& authz = authz_object(dump);
  std::vector<std::vector<std::string>> rows{
      {"NAMESPACE", "WORKLOAD", "ADDRESSES", "POLICY", "ACTION", "SCOPE", "RULES", "NOTES"}};
  for (const auto& wv : array_field(authz, "workloads")) {
    const auto& w = wv.as_object();
    std::string addresses;
    for (const auto& a : array_field(w, "addresses")) addresses += (addresses.empty() ? "" : ",") + str(a);
    const auto& policies = array_field(w, "policies");
    if (policies.empty()) {
      rows.push_back({str(w.at("namespace")), str(w.at("name")), addresses, "-", "-", "-", "-",
                      "no policy: every connection allowed"});
      continue;
    }
    for (const auto& pv : policies) {
      const auto& p = pv.as_object();
      std::string notes;
      if (p.at("dryRun").as_bool()) notes = "dry-run (logged only)";
      if (const auto* l7 = p.if_contains("l7Fields")) {
        std::string fields;
        for (const auto& f : l7->as_array()) fields += (fields.empty() ? "" : ",") + str(f);
        notes += std::string(notes.empty() ? "" : "; ") + "L7 not enforceable: " + fields;
      }
      rows.push_back({str(w.at("namespace")), str(w.at("name")), addresses,
                      str(p.at("namespace")) + "/" + str(p.at("name")), str(p.at("action")), str(p.at("scope")),
                      str(p.at("rules")), notes.empty() ? "-" : notes});
    }
  }
  std::string out = table(rows);
  std::size_t ignored = 0;
  for (const auto& pv : array_field(authz, "policies"))
    if (const auto* why = pv.as_object().if_contains("ignored")) {
      if (ignored++ == 0) out += "\nNot enforced here:\n";
      out += "  " + str(pv.at("namespace")) + "/" + str(pv.at("name")) + ": " + str(*why) + "\n";
    }
  out += "\n" + str(authz.at("policyCount")) + " AuthorizationPolicy(ies) in the cluster; root namespace " +
         str(authz.at("rootNamespace")) + "\n";
  return out;
}

std::string authz_json(std::string_view config_dump) {
  const auto dump = parse_dump(config_dump);
  return json::serialize(authz_object(dump)) + "\n";
}

}  // namespace dsproxy::cli
