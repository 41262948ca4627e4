#pragma once
// The cluster's own names, answered from the Kubernetes objects the way kube-dns/CoreDNS's
// kubernetes plugin answers them, but family-correct:
//
//   <svc>.<ns>.svc.<domain>   A for the Service's IPv4 ClusterIPs, AAAA for its IPv6 ones, and
//                             only for families in its spec.ipFamilies (an IPv4-only Service has
//                             no AAAA, the bug of ztunnel#1152); a headless Service gives the
//                             ready endpoint addresses of each of its families; an ExternalName
//                             Service gives a CNAME to its externalName
//   a name that exists, but not with the asked type (AAAA of an IPv4-only Service, the empty
//   non-terminals <ns>.svc.<domain>, svc.<domain>, <domain>)
//                             NOERROR with no answer and the zone's SOA in authority (RFC 2308),
//                             never NXDOMAIN, or the client would give up on the name's other family
//   any other name in <domain>  NXDOMAIN with the SOA: the stub resolver moves on in its search
//                             list ("tcp-echo.dual-stack.default.svc.cluster.local" fails, then
//                             "tcp-echo.dual-stack.svc.cluster.local" answers)
//   <reversed ClusterIP>.in-addr.arpa / .ip6.arpa  PTR to the Service's name
//
// Built once per config generation from ClusterObjects; immutable after, lookups are map finds.

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "config/k8s_objects.hpp"
#include "resolver/dns_message.hpp"

namespace dsproxy::resolver {

struct ClusterDnsOptions {
  std::string domain = "cluster.local";
  std::chrono::seconds ttl{30};  // of every record we make, and the SOA's negative TTL
};

// The search list a pod in namespace `ns` gets from kubelet: <ns>.svc.<domain>, svc.<domain>,
// <domain>. With ndots:5 a stub resolver tries `name + "." + each` in order before `name` itself.
std::vector<std::string> pod_search_list(const std::string& ns, const std::string& domain);

class ClusterDns {
 public:
  static std::shared_ptr<const ClusterDns> build(const config::ClusterObjects& objects,
                                                 const ClusterDnsOptions& options);

  // True when dsproxy answers `name_key` (a Name::key()) itself: the cluster domain and below,
  // and reverse names of ClusterIPs. Everything else is forwarded upstream.
  bool authoritative_for(const std::string& name_key) const;
  // The answer for a question authoritative_for() accepted.
  ResponseSpec answer(const Question& question) const;

  const ClusterDnsOptions& options() const { return options_; }

 private:
  struct Node {
    std::vector<net::IpAddress> v4;
    std::vector<net::IpAddress> v6;
    std::optional<Name> cname;
    std::optional<Name> ptr;
  };

  Record soa() const;

  ClusterDnsOptions options_;
  Name zone_;
  std::string zone_key_;
  std::unordered_map<std::string, Node> nodes_;     // by name key
  std::unordered_set<std::string> empty_nonterminals_;
};

// The in-addr.arpa / ip6.arpa name of an address, as a Name::key().
std::string reverse_name(const net::IpAddress& ip);

}  // namespace dsproxy::resolver
