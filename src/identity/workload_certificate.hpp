#pragma once
// One workload's certificate: its leaf (carrying exactly one SPIFFE URI SAN), the intermediates
// that chain it to a root of the trust bundle, and its private key. Immutable once built and
// shared by every TLS context made from it.
//
// The private key is reachable only as an EVP_PKEY* for SSL_CTX_use_PrivateKey: this class has
// no way to print, serialise or describe it, and describe() (what /config_dump shows) lists the
// public parts only.

#include <boost/json/object.hpp>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "identity/openssl_handles.hpp"
#include "identity/spiffe_id.hpp"

namespace dsproxy::identity {

using SystemClock = std::chrono::system_clock;

class WorkloadCertificate {
 public:
  // `chain[0]` is the leaf. Throws IdentityError if the leaf has not exactly one URI SAN that is
  // a valid SpiffeId, or if `key` is not the leaf's key. `origin` names where it came from in
  // error messages and logs ("local issuer", a file path).
  static std::shared_ptr<const WorkloadCertificate> make(std::vector<X509Ptr> chain, EvpPkeyPtr key,
                                                         std::string origin);
  // From PEM text: `chain_pem` holds the leaf first, then any intermediates; `key_pem` one
  // private key (PKCS#8 or traditional, unencrypted). Parse errors never quote the input.
  static std::shared_ptr<const WorkloadCertificate> from_pem(std::string_view chain_pem, std::string_view key_pem,
                                                             std::string origin);

  const SpiffeId& id() const { return id_; }
  X509* leaf() const { return chain_.front().get(); }
  // Intermediates, leaf excluded (what SSL_CTX_add1_chain_cert gets).
  std::vector<X509*> intermediates() const;
  EVP_PKEY* key() const { return key_.get(); }
  SystemClock::time_point not_before() const { return not_before_; }
  SystemClock::time_point not_after() const { return not_after_; }
  // Half-way through its validity: when the local issuer renews it.
  SystemClock::time_point renew_at() const { return not_before_ + (not_after_ - not_before_) / 2; }
  const std::string& serial() const { return serial_; }            // hex
  const std::string& fingerprint() const { return fingerprint_; }  // SHA-256 of the leaf's DER, hex
  const std::string& origin() const { return origin_; }
  // The leaf and intermediates as PEM (public; tests and the cert-dir writer use it).
  std::string chain_pem() const;
  // Public facts only: identity, serial, fingerprint, validity, issuer, origin.
  boost::json::object describe() const;

  WorkloadCertificate(const WorkloadCertificate&) = delete;
  WorkloadCertificate& operator=(const WorkloadCertificate&) = delete;

 private:
  WorkloadCertificate() = default;
  SpiffeId id_;
  std::vector<X509Ptr> chain_;
  EvpPkeyPtr key_;
  SystemClock::time_point not_before_, not_after_;
  std::string serial_, fingerprint_, origin_, issuer_;
};

// X509 time -> system_clock (UTC).
SystemClock::time_point to_time_point(const ASN1_TIME* t);
// "2026-12-07T17:46:30Z"
std::string format_utc(SystemClock::time_point t);

// Every URI SAN of `cert`, in order (for diagnostics: "presented spiffe://.../sa/x").
std::vector<std::string> uri_sans(X509* cert);
// The SpiffeId of a leaf: exactly one URI SAN, and it parses. nullopt otherwise.
std::optional<SpiffeId> spiffe_id_of(X509* cert);

// Text that held key material: wiped (OPENSSL_cleanse) when it goes, so a key read from a file
// does not linger in freed heap memory. Not printable on purpose: no operator<<, no formatter.
class SensitiveText {
 public:
  SensitiveText() = default;
  explicit SensitiveText(std::string text) : text_(std::move(text)) {}
  SensitiveText(SensitiveText&& other) noexcept : text_(std::move(other.text_)) { other.wipe(); }
  SensitiveText& operator=(SensitiveText&& other) noexcept;
  SensitiveText(const SensitiveText&) = delete;
  SensitiveText& operator=(const SensitiveText&) = delete;
  ~SensitiveText() { wipe(); }
  std::string_view view() const { return text_; }

 private:
  void wipe();
  std::string text_;
};

// Reads a private key file, refusing one that is group- or world-accessible (mode & 077) or not
// a regular file: a key that others on the node can read is no longer private, and a missing
// check would let a mis-deployed Secret go unnoticed. Symlinks are followed (Kubernetes volumes
// are symlinks into ..data/); the mode checked is that of the file actually opened (fstat on the
// open descriptor, so it cannot be swapped between check and read). Throws IdentityError naming
// the path and the mode, never the contents.
SensitiveText read_private_key_file(const std::filesystem::path& path);
// A whole (public) file; throws IdentityError naming the path.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace dsproxy::identity
