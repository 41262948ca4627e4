#pragma once
// Test certificates for the HBONE tests, made with the openssl CLI once per test process: a CA,
// SPIFFE leaf certificates (URI SAN only, as istiod and ztunnel issue them) and a foreign CA.

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <unistd.h>

namespace dsproxy::hbone::test {

class TestPki {
 public:
  static const TestPki& get() {
    static TestPki pki;
    return pki;
  }
  std::string dir;
  std::string path(const std::string& name) const { return dir + "/" + name; }

  static std::string spiffe(const std::string& sa) { return "spiffe://cluster.local/ns/default/sa/" + sa; }

  // TLS 1.3 only, ALPN h2, the peer's certificate required and verified against `ca`.
  std::shared_ptr<SSL_CTX> server_context(const std::string& leaf, const std::string& ca = "ca") const {
    auto ctx = base(leaf, ca, TLS_server_method());
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    SSL_CTX_set_alpn_select_cb(
        ctx.get(),
        [](SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
           void*) -> int {
          static const unsigned char h2[] = {2, 'h', '2'};
          unsigned char* selected = nullptr;
          if (SSL_select_next_proto(&selected, outlen, h2, sizeof h2, in, inlen) != OPENSSL_NPN_NEGOTIATED)
            return SSL_TLSEXT_ERR_ALERT_FATAL;
          *out = selected;
          return SSL_TLSEXT_ERR_OK;
        },
        nullptr);
    return ctx;
  }
  std::shared_ptr<SSL_CTX> client_context(const std::string& leaf, const std::string& ca = "ca") const {
    auto ctx = base(leaf, ca, TLS_client_method());
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    static const unsigned char h2[] = {2, 'h', '2'};
    SSL_CTX_set_alpn_protos(ctx.get(), h2, sizeof h2);
    return ctx;
  }

  // The URI SAN of the verified peer certificate.
  static std::optional<std::string> peer_uri(SSL* ssl) {
    if (SSL_get_verify_result(ssl) != X509_V_OK) return std::nullopt;
    X509* cert = SSL_get0_peer_certificate(ssl);
    if (!cert) return std::nullopt;
    auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
    std::optional<std::string> uri;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); ++i) {
      auto* name = sk_GENERAL_NAME_value(names, i);
      if (name->type == GEN_URI) {
        auto* s = name->d.uniformResourceIdentifier;
        uri = std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), ASN1_STRING_length(s));
      }
    }
    GENERAL_NAMES_free(names);
    return uri;
  }

 private:
  TestPki() {
    char tmpl[] = "/tmp/dsproxy-hbone-pki-XXXXXX";
    if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp");
    dir = tmpl;
    make_ca("ca");
    make_ca("foreign-ca");
    for (const char* sa : {"server", "client", "other"}) make_leaf(sa, "ca", spiffe(sa));
    make_leaf("foreign-client", "foreign-ca", spiffe("client"));
  }
  ~TestPki() { std::filesystem::remove_all(dir); }

  void run(const std::string& command) const {
    if (std::system((command + " >/dev/null 2>&1").c_str()) != 0) throw std::runtime_error("failed: " + command);
  }
  void make_ca(const std::string& name) const {
    run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /O=" + name +
        " -keyout " + path(name + ".key") + " -out " + path(name + ".pem"));
  }
  void make_leaf(const std::string& name, const std::string& ca, const std::string& uri) const {
    std::ofstream(path(name + ".ext")) << "subjectAltName=critical,URI:" << uri
                                       << "\nbasicConstraints=critical,CA:FALSE\n"
                                          "keyUsage=critical,digitalSignature,keyEncipherment\n"
                                          "extendedKeyUsage=serverAuth,clientAuth\n";
    run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /O=cluster.local -keyout " +
        path(name + ".key") + " -out " + path(name + ".csr"));
    run("openssl x509 -req -in " + path(name + ".csr") + " -CA " + path(ca + ".pem") + " -CAkey " +
        path(ca + ".key") + " -CAcreateserial -days 1 -extfile " + path(name + ".ext") + " -out " +
        path(name + ".pem"));
  }
  std::shared_ptr<SSL_CTX> base(const std::string& leaf, const std::string& ca, const SSL_METHOD* method) const {
    std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(method), SSL_CTX_free);
    SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), path(leaf + ".pem").c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx.get(), path(leaf + ".key").c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_load_verify_locations(ctx.get(), path(ca + ".pem").c_str(), nullptr) != 1)
      throw std::runtime_error("TLS context for " + leaf);
    return ctx;
  }
};

}  // namespace dsproxy::hbone::test
