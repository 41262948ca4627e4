#include "identity/trust_bundle.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include "identity/identity_error.hpp"
#include "identity/workload_certificate.hpp"

namespace dsproxy::identity {

namespace {

std::string name_of(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) return "";
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string sha256_hex(X509* x) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (!X509_digest(x, EVP_sha256(), md, &n)) return "";
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out += digits[md[i] >> 4];
    out += digits[md[i] & 0xf];
  }
  return out;
}

}  // namespace

std::shared_ptr<const TrustBundle> TrustBundle::from_pem(std::string_view pem, std::string origin) {
  std::shared_ptr<TrustBundle> b(new TrustBundle());
  b->origin_ = std::move(origin);
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) throw IdentityError(b->origin_ + ": out of memory");
  ERR_clear_error();
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) b->roots_.emplace_back(x);
  const unsigned long e = ERR_peek_last_error();
  const bool clean_end = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
  if (e && !clean_end) throw IdentityError(b->origin_ + ": a certificate does not parse (" + openssl_errors() + ")");
  ERR_clear_error();
  if (b->roots_.empty()) throw IdentityError(b->origin_ + ": no certificate in the trust bundle");

  b->store_.reset(X509_STORE_new());
  if (!b->store_) throw IdentityError(b->origin_ + ": out of memory");
  for (const auto& root : b->roots_) {
    // Only CAs: a leaf in the bundle would be trusted as an anchor for itself.
    if (X509_check_ca(root.get()) < 1)
      throw IdentityError(b->origin_ + ": " + name_of(X509_get_subject_name(root.get())) +
                          " is not a CA certificate (basicConstraints CA:TRUE)");
    if (!X509_STORE_add_cert(b->store_.get(), root.get())) {
      // The same root twice (an old and a new bundle concatenated) is harmless.
      const unsigned long err = ERR_peek_last_error();
      if (ERR_GET_REASON(err) != X509_R_CERT_ALREADY_IN_HASH_TABLE)
        throw IdentityError(b->origin_ + ": cannot add a root (" + openssl_errors() + ")");
      ERR_clear_error();
    }
  }
  // A bundle entry is a trust anchor even when it is an intermediate (SPIFFE bundles are sets of
  // anchors); verification still needs a chain to one of them.
  X509_STORE_set_flags(b->store_.get(), X509_V_FLAG_PARTIAL_CHAIN);
  return b;
}

std::shared_ptr<const TrustBundle> TrustBundle::load(const std::filesystem::path& path) {
  return from_pem(read_text_file(path), path.string());
}

boost::json::array TrustBundle::describe() const {
  boost::json::array out;
  for (const auto& root : roots_)
    out.push_back(boost::json::object{{"subject", name_of(X509_get_subject_name(root.get()))},
                                      {"fingerprintSha256", sha256_hex(root.get())},
                                      {"notBefore", format_utc(to_time_point(X509_get0_notBefore(root.get())))},
                                      {"notAfter", format_utc(to_time_point(X509_get0_notAfter(root.get())))}});
  return out;
}

TrustBundleFile::TrustBundleFile(std::filesystem::path path) : path_(std::move(path)) {
  stamp_ = stamp_of(path_);
  content_ = read_text_file(path_);
  current_ = TrustBundle::from_pem(content_, path_.string());
}

bool TrustBundleFile::reload() {
  const auto stamp = stamp_of(path_);
  if (!stamp) {
    // Gone (mid-swap of a volume's symlink, or deleted): keep the bundle we have.
    return false;
  }
  if (stamp == stamp_) return false;
  stamp_ = stamp;  // a bad file is reported once per change, not once per poll
  std::string content = read_text_file(path_);
  if (content == content_) return false;
  auto bundle = TrustBundle::from_pem(content, path_.string());
  content_ = std::move(content);
  current_ = std::move(bundle);
  return true;
}

std::optional<TrustBundleFile::Stamp> TrustBundleFile::stamp_of(const std::filesystem::path& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return Stamp{static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
               static_cast<std::uintmax_t>(st.st_size), static_cast<std::uint64_t>(st.st_ino)};
}

}  // namespace dsproxy::identity
