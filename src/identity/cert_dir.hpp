#pragma once
// Certificates written by an external issuer into a directory (--cert-dir DIR), one
// sub-directory per identity:
//
//   DIR/<namespace>/<service account>/tls.crt   leaf first, then intermediates (PEM)
//   DIR/<namespace>/<service account>/tls.key   its private key (PEM, mode 0600 or stricter)
//
// tls.crt/tls.key are the names cert-manager (its Secrets and csi-driver-spiffe's volumes) writes;
// SPIRE's spiffe-helper's default names svid.pem/svid_key.pem are read when tls.crt is absent. The
// leaf must carry exactly the SPIFFE id its directory names (a file copied into the wrong
// directory is refused, not served under the wrong name).
//
// Polled (every --cert-poll-ms, default 1 s): a pair is re-read when the mtime, size or inode of
// either file changed (writers that swap a symlink, as Kubernetes volumes do, change the inode).
// A pair that is half-written (key and certificate do not match), unreadable or too openly
// readable keeps the previous certificate, if it is still valid, and is reported. Only wanted
// identities (this node's pods) are read.

#include <filesystem>
#include <map>
#include <optional>

#include "identity/certificate_provider.hpp"

namespace dsproxy::identity {

struct CertDirOptions {
  std::filesystem::path dir;
  std::string trust_domain = "cluster.local";
  std::chrono::milliseconds poll{1000};
};

class CertDir final : public CertificateProvider {
 public:
  explicit CertDir(CertDirOptions options);  // throws IdentityError if dir is not a directory

  std::string_view kind() const override { return "cert-dir"; }
  RefreshResult refresh(const std::set<SpiffeId>& wanted, SystemClock::time_point now) override;
  std::shared_ptr<const WorkloadCertificate> certificate(const SpiffeId& id) const override;
  SystemClock::time_point next_due(SystemClock::time_point now) const override;
  boost::json::object describe() const override;

  // Where `id`'s files are expected (the directory; the file names are above).
  std::filesystem::path directory_of(const SpiffeId& id) const;

 private:
  struct FileStamp {
    std::int64_t mtime_ns = 0;
    std::uintmax_t size = 0;
    std::uint64_t inode = 0;
    bool operator==(const FileStamp&) const = default;
  };
  struct Entry {
    std::optional<std::pair<FileStamp, FileStamp>> stamps;  // (cert, key) as last read
    std::shared_ptr<const WorkloadCertificate> cert;
    std::string error;  // the last read's failure, "" if none
  };
  CertDirOptions options_;
  std::map<SpiffeId, Entry> entries_;
};

}  // namespace dsproxy::identity
