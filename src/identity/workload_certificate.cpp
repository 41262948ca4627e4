#include "identity/workload_certificate.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include "identity/identity_error.hpp"

namespace dsproxy::identity {

namespace {

std::string hex(const unsigned char* data, std::size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (std::size_t i = 0; i < n; ++i) {
    out += digits[data[i] >> 4];
    out += digits[data[i] & 0xf];
  }
  return out;
}

std::string one_line_name(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) return "";
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

// A passphrase callback that gives none: an encrypted key fails to load instead of OpenSSL's
// default callback prompting on a terminal the daemon does not have.
int no_passphrase(char*, int, int, void*) { return 0; }

}  // namespace

SensitiveText& SensitiveText::operator=(SensitiveText&& other) noexcept {
  if (this != &other) {
    wipe();
    text_ = std::move(other.text_);
    other.wipe();
  }
  return *this;
}

void SensitiveText::wipe() {
  if (!text_.empty()) OPENSSL_cleanse(text_.data(), text_.size());
  text_.clear();
}

SystemClock::time_point to_time_point(const ASN1_TIME* t) {
  std::tm tm{};
  if (!t || !ASN1_TIME_to_tm(t, &tm)) return {};
  return SystemClock::from_time_t(timegm(&tm));
}

std::string format_utc(SystemClock::time_point t) {
  const std::time_t tt = SystemClock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::vector<std::string> uri_sans(X509* cert) {
  std::vector<std::string> out;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (!names) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    if (name->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
    out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                     static_cast<std::size_t>(ASN1_STRING_length(uri)));
  }
  GENERAL_NAMES_free(names);
  return out;
}

std::optional<SpiffeId> spiffe_id_of(X509* cert) {
  // X.509-SVID: exactly one URI SAN. Two would make "which identity is this" ambiguous.
  const auto uris = uri_sans(cert);
  if (uris.size() != 1) return std::nullopt;
  return SpiffeId::parse(uris.front());
}

std::shared_ptr<const WorkloadCertificate> WorkloadCertificate::make(std::vector<X509Ptr> chain, EvpPkeyPtr key,
                                                                     std::string origin) {
  if (chain.empty()) throw IdentityError(origin + ": no certificate");
  if (!key) throw IdentityError(origin + ": no private key");
  X509* leaf = chain.front().get();
  auto id = spiffe_id_of(leaf);
  if (!id) {
    const auto uris = uri_sans(leaf);
    std::string presented;
    for (const auto& u : uris) presented += (presented.empty() ? "" : ", ") + u;
    throw IdentityError(origin + ": the certificate does not carry exactly one valid SPIFFE id (URI SANs: " +
                        (presented.empty() ? "none" : presented) + ")");
  }
  if (X509_check_private_key(leaf, key.get()) != 1) {
    ERR_clear_error();
    throw IdentityError(origin + ": the private key does not belong to the certificate");
  }
  std::shared_ptr<WorkloadCertificate> c(new WorkloadCertificate());
  c->id_ = std::move(*id);
  c->not_before_ = to_time_point(X509_get0_notBefore(leaf));
  c->not_after_ = to_time_point(X509_get0_notAfter(leaf));
  if (BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), nullptr)) {
    if (char* h = BN_bn2hex(bn)) {
      c->serial_ = h;
      OPENSSL_free(h);
    }
    BN_free(bn);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (X509_digest(leaf, EVP_sha256(), md, &md_len)) c->fingerprint_ = hex(md, md_len);
  c->issuer_ = one_line_name(X509_get_issuer_name(leaf));
  c->origin_ = std::move(origin);
  c->chain_ = std::move(chain);
  c->key_ = std::move(key);
  return c;
}

std::shared_ptr<const WorkloadCertificate> WorkloadCertificate::from_pem(std::string_view chain_pem,
                                                                         std::string_view key_pem,
                                                                         std::string origin) {
  std::vector<X509Ptr> chain;
  {
    BioPtr bio(BIO_new_mem_buf(chain_pem.data(), static_cast<int>(chain_pem.size())));
    if (!bio) throw IdentityError(origin + ": out of memory");
    ERR_clear_error();
    while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, no_passphrase, nullptr)) chain.emplace_back(x);
    // The loop ends on "no start line" at the end of the text; anything else is a broken block.
    const unsigned long e = ERR_peek_last_error();
    const bool clean_end = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
    if (e && (!clean_end || chain.empty())) {
      const auto why = openssl_errors();
      throw IdentityError(origin + ": " + (chain.empty() ? "no certificate" : "a certificate does not parse") +
                          (clean_end ? "" : " (" + why + ")"));
    }
    ERR_clear_error();
  }
  EvpPkeyPtr key;
  {
    BioPtr bio(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
    if (!bio) throw IdentityError(origin + ": out of memory");
    key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
    if (!key) {
      // Only OpenSSL's reason strings: never a byte of the input.
      const auto why = openssl_errors();
      throw IdentityError(origin + ": the private key does not parse (want an unencrypted PEM key" +
                          (why.empty() ? "" : "; " + why) + ")");
    }
  }
  return make(std::move(chain), std::move(key), std::move(origin));
}

std::vector<X509*> WorkloadCertificate::intermediates() const {
  std::vector<X509*> out;
  for (std::size_t i = 1; i < chain_.size(); ++i) out.push_back(chain_[i].get());
  return out;
}

std::string WorkloadCertificate::chain_pem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  for (const auto& x : chain_) PEM_write_bio_X509(bio.get(), x.get());
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

boost::json::object WorkloadCertificate::describe() const {
  return boost::json::object{{"identity", id_.uri()},
                             {"serial", serial_},
                             {"fingerprintSha256", fingerprint_},
                             {"notBefore", format_utc(not_before_)},
                             {"notAfter", format_utc(not_after_)},
                             {"renewAt", format_utc(renew_at())},
                             {"issuer", issuer_},
                             {"chainLength", chain_.size()},
                             {"origin", origin_}};
}

SensitiveText read_private_key_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) throw IdentityError("private key " + path.string() + ": " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st{};
  if (::fstat(fd, &st) != 0) throw IdentityError("private key " + path.string() + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw IdentityError("private key " + path.string() + ": not a regular file");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    throw IdentityError("private key " + path.string() + " is readable by group or others (mode " + mode +
                        "); refusing to use it: make it 0600 or 0400 (a Secret volume: defaultMode: 0400)");
  }
  if (st.st_size > 1 << 20) throw IdentityError("private key " + path.string() + ": larger than 1 MiB");
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      SensitiveText wipe(std::move(text));
      throw IdentityError("private key " + path.string() + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  text.resize(got);
  return SensitiveText(std::move(text));
}

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IdentityError(path.string() + ": " + std::strerror(errno));
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) throw IdentityError(path.string() + ": read error");
  return out.str();
}

}  // namespace dsproxy::identity
