#pragma once
// The roots peer certificates are verified against: one PEM file with one or several CA
// certificates (several while a CA is rotated: the old root keeps verifying peers not yet
// renewed, the new one the renewed ones).
//
// A TrustBundle is immutable and owns its X509_STORE; TLS contexts take their own reference to
// the store (SSL_CTX_set1_verify_cert_store), so a reload builds a new bundle and new contexts
// and never changes what an established connection verified against.

#include <boost/json/array.hpp>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "identity/openssl_handles.hpp"

namespace dsproxy::identity {

class TrustBundle {
 public:
  // Throws IdentityError: no certificate in the text, a block that does not parse, or a
  // certificate that is not a CA (basicConstraints CA:TRUE).
  static std::shared_ptr<const TrustBundle> from_pem(std::string_view pem, std::string origin);
  static std::shared_ptr<const TrustBundle> load(const std::filesystem::path& path);

  X509_STORE* store() const { return store_.get(); }
  const std::vector<X509Ptr>& roots() const { return roots_; }
  const std::string& origin() const { return origin_; }
  // Each root's subject, SHA-256 fingerprint and validity, for /config_dump.
  boost::json::array describe() const;

  TrustBundle(const TrustBundle&) = delete;
  TrustBundle& operator=(const TrustBundle&) = delete;

 private:
  TrustBundle() = default;
  X509StorePtr store_;
  std::vector<X509Ptr> roots_;
  std::string origin_;
};

// The bundle file as the identity thread watches it: reload() re-reads the file when its
// mtime, size or inode changed (a Kubernetes Secret/ConfigMap volume swaps a symlink, so the
// inode changes even when the size does not) and its content differs. A file that fails to
// parse keeps the previous bundle (logged by the caller) rather than leaving no roots at all.
class TrustBundleFile {
 public:
  explicit TrustBundleFile(std::filesystem::path path);  // loads now; throws IdentityError
  const std::shared_ptr<const TrustBundle>& current() const { return current_; }
  // true: a new bundle is current. Throws IdentityError if the changed file is unusable (the
  // previous bundle stays current).
  bool reload();
  const std::filesystem::path& path() const { return path_; }

 private:
  struct Stamp {
    std::int64_t mtime_ns = 0;
    std::uintmax_t size = 0;
    std::uint64_t inode = 0;
    bool operator==(const Stamp&) const = default;
  };
  static std::optional<Stamp> stamp_of(const std::filesystem::path& path);
  std::filesystem::path path_;
  std::optional<Stamp> stamp_;
  std::string content_;
  std::shared_ptr<const TrustBundle> current_;
};

}  // namespace dsproxy::identity
