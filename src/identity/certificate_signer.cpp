#include "identity/certificate_signer.hpp"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "identity/identity_error.hpp"

namespace dsproxy::identity {

namespace {

[[noreturn]] void fail(const std::string& what) {
  const auto why = openssl_errors();
  throw IdentityError(what + (why.empty() ? "" : ": " + why));
}

void add_conf_extension(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, ctx, nid, value);
  if (!ext) fail(std::string("cannot build extension ") + OBJ_nid2sn(nid));
  const int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  if (!ok) fail(std::string("cannot add extension ") + OBJ_nid2sn(nid));
}

void set_time(ASN1_TIME* field, std::chrono::system_clock::time_point t) {
  if (!ASN1_TIME_set(field, std::chrono::system_clock::to_time_t(t))) fail("cannot set the validity");
}

}  // namespace

EvpPkeyPtr generate_p256_key() {
  EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) fail("cannot generate a P-256 key");
  return key;
}

X509Ptr sign_certificate(const CertificateSpec& spec, EVP_PKEY* subject_key, X509* issuer, EVP_PKEY* issuer_key) {
  if (!issuer) issuer_key = subject_key;
  X509Ptr cert(X509_new());
  if (!cert || !X509_set_version(cert.get(), X509_VERSION_3)) fail("cannot allocate a certificate");

  // 127 random bits: positive, unique in practice (RFC 5280 allows up to 20 octets).
  std::unique_ptr<BIGNUM, decltype(&BN_free)> serial(BN_new(), BN_free);
  if (!serial || !BN_rand(serial.get(), 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
      !BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())))
    fail("cannot make a serial number");

  set_time(X509_getm_notBefore(cert.get()), spec.not_before);
  set_time(X509_getm_notAfter(cert.get()), spec.not_after);

  X509_NAME* subject = X509_get_subject_name(cert.get());
  if (!spec.common_name.empty() &&
      !X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8,
                                  reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1, -1, 0))
    fail("cannot set the subject");
  if (!X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : subject))
    fail("cannot set the issuer");
  if (!X509_set_pubkey(cert.get(), subject_key)) fail("cannot set the public key");

  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
  if (spec.is_ca) {
    add_conf_extension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE");
    add_conf_extension(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_conf_extension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
    // digitalSignature: TLS 1.3 CertificateVerify with an EC key. Both EKUs: one workload
    // certificate serves as the tunnel's client and server alike.
    add_conf_extension(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature,keyAgreement");
    add_conf_extension(cert.get(), &ctx, NID_ext_key_usage, "serverAuth,clientAuth");
  }
  add_conf_extension(cert.get(), &ctx, NID_subject_key_identifier, "hash");
  // The authority key id lets a verifier pick the right issuer among same-named CAs (a rotated
  // root keeps its name): without it a foreign CA with our CA's name would read as a bad
  // signature rather than an unknown CA.
  add_conf_extension(cert.get(), &ctx, NID_authority_key_identifier, issuer ? "keyid:always" : "keyid");

  if (!spec.uri_sans.empty()) {
    GENERAL_NAMES* names = sk_GENERAL_NAME_new_null();
    if (!names) fail("cannot allocate the SAN list");
    for (const auto& uri : spec.uri_sans) {
      GENERAL_NAME* name = GENERAL_NAME_new();
      ASN1_IA5STRING* text = ASN1_IA5STRING_new();
      if (!name || !text || !ASN1_STRING_set(text, uri.data(), static_cast<int>(uri.size()))) {
        GENERAL_NAME_free(name);
        ASN1_IA5STRING_free(text);
        GENERAL_NAMES_free(names);
        fail("cannot build a URI SAN");
      }
      GENERAL_NAME_set0_value(name, GEN_URI, text);
      sk_GENERAL_NAME_push(names, name);
    }
    // Critical when the subject is empty (RFC 5280 4.2.1.6).
    const int critical = spec.common_name.empty() ? 1 : 0;
    const int ok = X509_add1_ext_i2d(cert.get(), NID_subject_alt_name, names, critical, X509V3_ADD_DEFAULT);
    GENERAL_NAMES_free(names);
    if (!ok) fail("cannot add the subjectAltName");
  }

  if (!X509_sign(cert.get(), issuer_key, EVP_sha256())) fail("cannot sign the certificate");
  return cert;
}

}  // namespace dsproxy::identity
