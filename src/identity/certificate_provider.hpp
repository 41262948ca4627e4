#pragma once
// Where workload certificates come from, behind one interface (issue 11): the local issuer
// (local_issuer.hpp: a CA certificate and key given to dsproxy) or a directory an external
// issuer writes (cert_dir.hpp: cert-manager's csi-driver-spiffe, SPIRE's spiffe-helper).
//
// A provider is driven by IdentityManager on the identity thread only (not thread-safe): the
// manager tells it which identities this node needs (its own pods' service accounts) and asks it
// to refresh when due. The data path never calls a provider; it reads the TLS contexts the
// manager publishes.

#include <boost/json/object.hpp>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "identity/spiffe_id.hpp"
#include "identity/workload_certificate.hpp"

namespace dsproxy::identity {

struct RefreshResult {
  std::vector<SpiffeId> changed;   // a new certificate is current (issued, renewed, reloaded)
  std::vector<SpiffeId> removed;   // no longer wanted, or its files are gone
  // Identities that have no usable certificate after this refresh, with why (never key text).
  std::vector<std::pair<SpiffeId, std::string>> errors;
};

class CertificateProvider {
 public:
  virtual ~CertificateProvider() = default;
  // "local-issuer" or "cert-dir", for logs and /config_dump.
  virtual std::string_view kind() const = 0;
  // Brings the certificates of `wanted` up to date at `now`: issues or renews what is due,
  // re-reads files that changed, forgets identities not in `wanted`. One identity's failure
  // never stops the others (it is listed in errors). Identities of another trust domain than the
  // provider's are refused (errors).
  virtual RefreshResult refresh(const std::set<SpiffeId>& wanted, SystemClock::time_point now) = 0;
  // The current certificate of `id`, or nullptr.
  virtual std::shared_ptr<const WorkloadCertificate> certificate(const SpiffeId& id) const = 0;
  // When refresh() has something to do next (the earliest renewal; for files, the next poll).
  virtual SystemClock::time_point next_due(SystemClock::time_point now) const = 0;
  // Provider-specific facts for /config_dump (paths, CA subject; never a key).
  virtual boost::json::object describe() const = 0;
};

}  // namespace dsproxy::identity
