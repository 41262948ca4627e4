#include "fake_apiserver/tls_material.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <stdexcept>

namespace dsproxy::fake_api {

namespace {

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
};
template <typename T>
using Owned = std::unique_ptr<T, Free>;

[[noreturn]] void fail(const char* what) {
  char detail[256] = "";
  ERR_error_string_n(ERR_get_error(), detail, sizeof detail);
  ERR_clear_error();
  throw std::runtime_error(std::string("fake apiserver TLS: ") + what + " failed: " + detail);
}

void check(int ok, const char* what) {
  if (ok <= 0) fail(what);
}

struct KeyAndCert {
  Owned<EVP_PKEY> key;
  Owned<X509> cert;
};

void add_extension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, issuer, cert, nullptr, nullptr, 0);
  Owned<X509_EXTENSION> extension(X509V3_EXT_nconf_nid(nullptr, &context, nid, value.c_str()));
  if (!extension) fail("X509V3_EXT_nconf_nid");
  check(X509_add_ext(cert, extension.get(), -1), "X509_add_ext");
}

// issuer == nullptr: self-signed (a CA).
KeyAndCert make_certificate(const std::string& common_name, const KeyAndCert* issuer, const std::string& san) {
  KeyAndCert result;
  result.key.reset(EVP_EC_gen("P-256"));
  if (!result.key) fail("EVP_EC_gen");
  result.cert.reset(X509_new());
  if (!result.cert) fail("X509_new");
  X509* cert = result.cert.get();
  check(X509_set_version(cert, 2), "X509_set_version");
  // Random serials: two CAs generated in the same second must never look like the same one.
  Owned<BIGNUM> serial(BN_new());
  check(serial && BN_rand(serial.get(), 64, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY), "BN_rand");
  check(BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert)) != nullptr, "BN_to_ASN1_INTEGER");
  // Valid from an hour ago (clock skew between test processes does not matter) for a week.
  check(X509_gmtime_adj(X509_getm_notBefore(cert), -3600) != nullptr, "X509_gmtime_adj");
  check(X509_gmtime_adj(X509_getm_notAfter(cert), 7 * 24 * 3600) != nullptr, "X509_gmtime_adj");
  check(X509_set_pubkey(cert, result.key.get()), "X509_set_pubkey");
  X509_NAME* name = X509_get_subject_name(cert);
  check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0),
        "X509_NAME_add_entry_by_txt");
  X509* issuer_cert = issuer ? issuer->cert.get() : cert;
  check(X509_set_issuer_name(cert, X509_get_subject_name(issuer_cert)), "X509_set_issuer_name");
  add_extension(cert, issuer_cert, NID_subject_key_identifier, "hash");
  add_extension(cert, issuer_cert, NID_authority_key_identifier, "keyid:always");
  if (!issuer) {
    add_extension(cert, cert, NID_basic_constraints, "critical,CA:TRUE");
    add_extension(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_extension(cert, issuer_cert, NID_basic_constraints, "critical,CA:FALSE");
    add_extension(cert, issuer_cert, NID_key_usage, "critical,digitalSignature,keyEncipherment");
    add_extension(cert, issuer_cert, NID_ext_key_usage, "serverAuth");
    add_extension(cert, issuer_cert, NID_subject_alt_name, san);
  }
  EVP_PKEY* signing_key = issuer ? issuer->key.get() : result.key.get();
  check(X509_sign(cert, signing_key, EVP_sha256()), "X509_sign");
  return result;
}

CertifiedKey to_pem(const KeyAndCert& kc) {
  CertifiedKey out;
  {
    Owned<BIO> bio(BIO_new(BIO_s_mem()));
    check(bio && PEM_write_bio_X509(bio.get(), kc.cert.get()), "PEM_write_bio_X509");
    char* data = nullptr;
    long size = BIO_get_mem_data(bio.get(), &data);
    out.certificate_pem.assign(data, static_cast<std::size_t>(size));
  }
  {
    Owned<BIO> bio(BIO_new(BIO_s_mem()));
    check(bio && PEM_write_bio_PrivateKey(bio.get(), kc.key.get(), nullptr, nullptr, 0, nullptr, nullptr),
          "PEM_write_bio_PrivateKey");
    char* data = nullptr;
    long size = BIO_get_mem_data(bio.get(), &data);
    out.private_key_pem.assign(data, static_cast<std::size_t>(size));
  }
  return out;
}

}  // namespace

TlsMaterial generate_tls_material(const std::vector<std::string>& ip_addresses) {
  std::string san = "DNS:localhost";
  for (const auto& ip : ip_addresses) san += ",IP:" + ip;
  KeyAndCert ca = make_certificate("dsproxy fake apiserver CA", nullptr, {});
  KeyAndCert server = make_certificate("kube-apiserver", &ca, san);
  KeyAndCert wrong_ca = make_certificate("dsproxy fake apiserver WRONG CA", nullptr, {});
  KeyAndCert wrong_server = make_certificate("kube-apiserver", &wrong_ca, san);
  return {to_pem(ca), to_pem(server), to_pem(wrong_ca), to_pem(wrong_server)};
}

}  // namespace dsproxy::fake_api
