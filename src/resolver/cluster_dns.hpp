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
// A view over one ClusterSnapshot: building it copies and indexes nothing (the snapshot's
// per-Service views and its ClusterIP index answer every name), so a snapshot published for one
// API event costs the DNS side nothing, and an answer is a few map finds.

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/k8s_objects.hpp"
#include "resolver/dns_message.hpp"
#include "snapshot/cluster_snapshot.hpp"

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
  // `snapshot` may be null (no configuration yet: only the zone's empty names exist).
  static std::shared_ptr<const ClusterDns> build(std::shared_ptr<const snapshot::ClusterSnapshot> snapshot,
                                                 const ClusterDnsOptions& options);
  // Over a snapshot built from `objects` with options.domain (tests and tools).
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
  // The records owned by `key` (a Name::key()), if the name exists with any.
  std::optional<Node> node(const std::string& key) const;
  bool empty_nonterminal(const std::string& key) const;

  ClusterDnsOptions options_;
  Name zone_;
  std::string zone_key_;
  std::shared_ptr<const snapshot::ClusterSnapshot> snapshot_;
};

// The in-addr.arpa / ip6.arpa name of an address, as a Name::key().
std::string reverse_name(const net::IpAddress& ip);

}  // namespace dsproxy::resolver
