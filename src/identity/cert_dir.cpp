#include "identity/cert_dir.hpp"

#include <sys/stat.h>

#include "identity/identity_error.hpp"

namespace dsproxy::identity {

namespace {

// (certificate, key) file names in the order they are looked for: cert-manager's, then
// spiffe-helper's defaults.
constexpr std::pair<const char*, const char*> kFileNames[] = {{"tls.crt", "tls.key"}, {"svid.pem", "svid_key.pem"}};

}  // namespace

CertDir::CertDir(CertDirOptions options) : options_(std::move(options)) {
  std::error_code ec;
  if (!std::filesystem::is_directory(options_.dir, ec))
    throw IdentityError("--cert-dir " + options_.dir.string() + ": not a directory");
}

std::filesystem::path CertDir::directory_of(const SpiffeId& id) const {
  return options_.dir / id.ns / id.service_account;
}

RefreshResult CertDir::refresh(const std::set<SpiffeId>& wanted, SystemClock::time_point now) {
  RefreshResult result;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (wanted.count(it->first)) {
      ++it;
      continue;
    }
    if (it->second.cert) result.removed.push_back(it->first);
    it = entries_.erase(it);
  }
  auto stamp = [](const std::filesystem::path& p) -> std::optional<FileStamp> {
    struct stat st{};
    if (::stat(p.c_str(), &st) != 0) return std::nullopt;
    return FileStamp{static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                     static_cast<std::uintmax_t>(st.st_size), static_cast<std::uint64_t>(st.st_ino)};
  };
  for (const auto& id : wanted) {
    Entry& entry = entries_[id];
    if (id.trust_domain != options_.trust_domain) {
      entry.error = "not of trust domain " + options_.trust_domain;
      result.errors.emplace_back(id, entry.error);
      continue;
    }
    const auto dir = directory_of(id);
    std::optional<std::pair<FileStamp, FileStamp>> stamps;
    std::filesystem::path cert_path, key_path;
    for (const auto& [cert_name, key_name] : kFileNames) {
      const auto c = stamp(dir / cert_name), k = stamp(dir / key_name);
      if (c && k) {
        stamps.emplace(*c, *k);
        cert_path = dir / cert_name;
        key_path = dir / key_name;
        break;
      }
    }
    if (!stamps) {
      entry.stamps.reset();
      entry.error = "no tls.crt and tls.key (or svid.pem and svid_key.pem) in " + dir.string();
      if (entry.cert) {
        entry.cert.reset();
        result.removed.push_back(id);
      }
      result.errors.emplace_back(id, entry.error);
      continue;
    }
    if (stamps == entry.stamps) {
      if (!entry.error.empty()) result.errors.emplace_back(id, entry.error);
      continue;
    }
    // Read once per change of either file, whatever the outcome: a broken pair is reported
    // once, and read again when the writer finishes (which changes a stamp).
    entry.stamps = stamps;
    try {
      const std::string chain = read_text_file(cert_path);
      const SensitiveText key = read_private_key_file(key_path);
      auto cert = WorkloadCertificate::from_pem(chain, key.view(), cert_path.string());
      if (cert->id() != id)
        throw IdentityError(cert_path.string() + ": carries " + cert->id().uri() + ", but its directory is for " +
                            id.uri());
      if (cert->not_after() <= now)
        throw IdentityError(cert_path.string() + ": expired at " + format_utc(cert->not_after()));
      if (entry.cert && entry.cert->fingerprint() == cert->fingerprint()) {
        entry.error.clear();
        continue;  // rewritten with the same content
      }
      entry.cert = std::move(cert);
      entry.error.clear();
      result.changed.push_back(id);
    } catch (const IdentityError& e) {
      // Keep the previous certificate while it is valid: a half-written pair must not take a
      // workload's identity away.
      entry.error = e.what();
      if (entry.cert && entry.cert->not_after() <= now) {
        entry.cert.reset();
        result.removed.push_back(id);
      }
      result.errors.emplace_back(id, entry.error);
    }
  }
  return result;
}

std::shared_ptr<const WorkloadCertificate> CertDir::certificate(const SpiffeId& id) const {
  const auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : it->second.cert;
}

SystemClock::time_point CertDir::next_due(SystemClock::time_point now) const {
  return now + std::chrono::duration_cast<SystemClock::duration>(options_.poll);
}

boost::json::object CertDir::describe() const {
  return boost::json::object{{"kind", "cert-dir"},
                             {"directory", options_.dir.string()},
                             {"layout", "<namespace>/<service account>/tls.crt,tls.key (or svid.pem,svid_key.pem)"},
                             {"pollMs", options_.poll.count()}};
}

}  // namespace dsproxy::identity
