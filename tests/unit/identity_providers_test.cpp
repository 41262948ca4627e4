// Trust bundle, key files, the local issuer and the cert-dir provider.

#include <gtest/gtest.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include "identity/cert_dir.hpp"
#include "identity/identity_error.hpp"
#include "identity/local_issuer.hpp"
#include "identity/trust_bundle.hpp"
#include "support/test_pki.hpp"
#include "support/tls_memory_pair.hpp"

namespace identity_providers_test {  // named: unity builds put several test files in one translation unit

using namespace dsproxy::identity;
using dsproxy::testing::TestPki;
using dsproxy::testing::TlsMemoryPair;
using dsproxy::testing::write_file;
namespace fs = std::filesystem;
using std::chrono::hours;
using std::chrono::seconds;

constexpr auto kKeyMode = fs::perms::owner_read | fs::perms::owner_write;
constexpr auto kOpenMode = kKeyMode | fs::perms::group_read | fs::perms::others_read;

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("dsproxy-identity-" + std::to_string(::getpid()) + "-" +
                                        std::to_string(counter()++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static int& counter() {
    static int n = 0;
    return n;
  }
};

// The base64 body lines of a PEM key: none of them may ever show up in a message.
std::vector<std::string> key_lines(EVP_PKEY* key) {
  std::vector<std::string> out;
  std::istringstream in(TestPki::key_pem(key));
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && line.find("-----") == std::string::npos) out.push_back(line.substr(0, 24));
  return out;
}

void expect_no_key(const std::string& text, EVP_PKEY* key) {
  EXPECT_EQ(text.find("PRIVATE KEY"), std::string::npos) << text;
  for (const auto& line : key_lines(key)) EXPECT_EQ(text.find(line), std::string::npos) << text;
}

TEST(TrustBundle, LoadsSeveralRootsAndRefusesWhatIsNotARoot) {
  TestPki a("cluster.local", "root a"), b("cluster.local", "root b");
  auto bundle = TrustBundle::from_pem(a.root_pem() + "\n" + b.root_pem(), "two roots");
  EXPECT_EQ(bundle->roots().size(), 2u);
  EXPECT_EQ(bundle->describe().size(), 2u);
  EXPECT_THROW(TrustBundle::from_pem("", "empty"), IdentityError);
  EXPECT_THROW(TrustBundle::from_pem("not a certificate", "garbage"), IdentityError);
  auto leaf = a.leaf(a.id("x", "y"));
  try {
    TrustBundle::from_pem(leaf->chain_pem(), "a leaf");
    ADD_FAILURE() << "a leaf was accepted as a root";
  } catch (const IdentityError& e) {
    EXPECT_NE(std::string(e.what()).find("not a CA"), std::string::npos) << e.what();
  }
}

TEST(TrustBundle, FileReloadsWhenItChangesAndKeepsTheOldOneWhenBroken) {
  TempDir dir;
  TestPki a("cluster.local", "root a"), b("cluster.local", "root b");
  const auto file = dir.path / "bundle.pem";
  write_file(file, a.root_pem(), kOpenMode);
  TrustBundleFile watched(file);
  EXPECT_EQ(watched.current()->roots().size(), 1u);
  EXPECT_FALSE(watched.reload());
  write_file(file, a.root_pem() + b.root_pem(), kOpenMode);
  EXPECT_TRUE(watched.reload());
  EXPECT_EQ(watched.current()->roots().size(), 2u);
  write_file(file, "garbage", kOpenMode);
  EXPECT_THROW(watched.reload(), IdentityError);
  EXPECT_EQ(watched.current()->roots().size(), 2u);
  EXPECT_FALSE(watched.reload());  // reported once per change, not once per poll
}

TEST(KeyFile, RefusesGroupOrWorldReadableKeysWithAClearErrorAndNoKeyText) {
  TempDir dir;
  TestPki pki;
  auto leaf = pki.leaf(pki.id("a", "b"));
  for (const auto mode : {kOpenMode, kKeyMode | fs::perms::group_read, kKeyMode | fs::perms::others_read}) {
    TestPki::write_leaf(*leaf, dir.path / "tls.crt", dir.path / "tls.key", mode);
    try {
      read_private_key_file(dir.path / "tls.key");
      ADD_FAILURE() << "mode accepted";
    } catch (const IdentityError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("readable by group or others"), std::string::npos) << what;
      EXPECT_NE(what.find((dir.path / "tls.key").string()), std::string::npos) << what;
      expect_no_key(what, leaf->key());
    }
  }
  TestPki::write_leaf(*leaf, dir.path / "tls.crt", dir.path / "tls.key", fs::perms::owner_read);
  EXPECT_NE(read_private_key_file(dir.path / "tls.key").view().find("PRIVATE KEY"), std::string_view::npos);
  EXPECT_THROW(read_private_key_file(dir.path / "missing.key"), IdentityError);
  EXPECT_THROW(read_private_key_file(dir.path), IdentityError);  // not a regular file
}

TEST(KeyFile, AKeyThatDoesNotParseIsReportedWithoutItsText) {
  TestPki pki;
  auto leaf = pki.leaf(pki.id("a", "b"));
  std::string broken = TestPki::key_pem(leaf->key());
  broken[broken.size() / 2] = '!';
  try {
    WorkloadCertificate::from_pem(leaf->chain_pem(), broken, "broken.key");
    ADD_FAILURE();
  } catch (const IdentityError& e) {
    expect_no_key(e.what(), leaf->key());
  }
}

struct Issuer : ::testing::Test {
  TestPki pki;
  SpiffeId local = pki.id("default", "sleep");
  SpiffeId remote = pki.id("other", "httpbin");
  SystemClock::time_point now = SystemClock::now();
  LocalIssuer issuer{pki.ca_chain(), dsproxy::identity::share(pki.ca_key()), "cluster.local", seconds(3600)};
};

TEST_F(Issuer, IssuesShortLivedP256LeavesForWantedIdentities) {
  const auto r = issuer.refresh({local}, now);
  ASSERT_EQ(r.changed, std::vector<SpiffeId>{local});
  EXPECT_TRUE(r.errors.empty());
  auto cert = issuer.certificate(local);
  ASSERT_TRUE(cert);
  EXPECT_EQ(cert->id(), local);
  EXPECT_EQ(uri_sans(cert->leaf()), std::vector<std::string>{local.uri()});
  EXPECT_EQ(EVP_PKEY_get_base_id(cert->key()), EVP_PKEY_EC);
  char group[32] = {};
  EVP_PKEY_get_group_name(cert->key(), group, sizeof group, nullptr);
  EXPECT_STREQ(group, "prime256v1");
  // X.509 times are whole seconds.
  EXPECT_NEAR(std::chrono::duration_cast<seconds>(cert->not_after() - now).count(), 3600, 1);
  EXPECT_EQ(cert->chain_pem().find("PRIVATE"), std::string::npos);
  // It verifies as a peer against the CA.
  auto server = pki.contexts(pki.leaf(remote));
  auto p = TlsMemoryPair::connect(pki.contexts(cert)->client().get(), server->server().get(), remote);
  EXPECT_TRUE(p.server_ok && p.client_ok);
  EXPECT_EQ(peer_identity(p.server.get()), local);
}

TEST_F(Issuer, RenewsAtHalfLife) {
  issuer.refresh({local}, now);
  const auto first = issuer.certificate(local);
  EXPECT_TRUE(issuer.refresh({local}, now + seconds(1700)).changed.empty());
  EXPECT_EQ(issuer.certificate(local), first);
  // Half of 3600 s from issuance, whatever the backdated notBefore says (with a 60 s lifetime and
  // a 60 s backdate the leaf would otherwise be due the moment it is issued).
  const auto r = issuer.refresh({local}, now + seconds(1801));
  EXPECT_EQ(r.changed, std::vector<SpiffeId>{local});
  EXPECT_NE(issuer.certificate(local)->fingerprint(), first->fingerprint());
  EXPECT_EQ(issuer.issued(), 2u);
}

TEST_F(Issuer, AShortLifetimeIsNotRenewedAtOnce) {
  LocalIssuer quick{pki.ca_chain(), dsproxy::identity::share(pki.ca_key()), "cluster.local", seconds(60)};
  quick.refresh({local}, now);
  EXPECT_TRUE(quick.refresh({local}, now + seconds(1)).changed.empty());
  EXPECT_TRUE(quick.refresh({local}, now + seconds(29)).changed.empty());
  EXPECT_EQ(quick.refresh({local}, now + seconds(31)).changed.size(), 1u);
}

TEST_F(Issuer, RefusesIdentitiesOfPodsNotOnThisNode) {
  issuer.refresh({local}, now);
  EXPECT_NO_THROW(issuer.issue(local, now));
  try {
    issuer.issue(remote, now);
    ADD_FAILURE() << "issued a certificate for a pod of another node";
  } catch (const IdentityError& e) {
    EXPECT_NE(std::string(e.what()).find("not the service account of a pod on this node"), std::string::npos);
  }
  EXPECT_EQ(issuer.certificate(remote), nullptr);
  EXPECT_EQ(issuer.refused(), 1u);
  // The pod left: its identity goes and cannot be issued any more.
  const auto r = issuer.refresh({}, now);
  EXPECT_EQ(r.removed, std::vector<SpiffeId>{local});
  EXPECT_EQ(issuer.certificate(local), nullptr);
  EXPECT_THROW(issuer.issue(local, now), IdentityError);
}

TEST_F(Issuer, RefusesAnotherTrustDomain) {
  const SpiffeId foreign{"example.org", "default", "sleep"};
  const auto r = issuer.refresh({foreign}, now);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(issuer.certificate(foreign), nullptr);
}

TEST_F(Issuer, IntermediateCaSendsItsCertificateWithTheLeaf) {
  TestPki sub = pki.intermediate("node intermediate");
  LocalIssuer node(sub.ca_chain(), dsproxy::identity::share(sub.ca_key()), "cluster.local", hours(1));
  node.refresh({local}, now);
  auto cert = node.certificate(local);
  ASSERT_TRUE(cert);
  EXPECT_EQ(cert->intermediates().size(), 1u);
  auto server = pki.contexts(pki.leaf(remote));  // trusts the root only
  auto p = TlsMemoryPair::connect(pki.contexts(cert)->client().get(), server->server().get(), remote);
  EXPECT_TRUE(p.server_ok) << to_string(p.server_error);
}

TEST(LocalIssuerFiles, LoadsTheCaAndRefusesAnOpenKeyOrAMismatch) {
  TempDir dir;
  TestPki pki;
  auto [cert, key] = pki.write_ca(dir.path);
  LocalIssuerOptions options{cert, key};
  EXPECT_NO_THROW(LocalIssuer{options});
  fs::permissions(key, kOpenMode);
  try {
    LocalIssuer refused(options);
    ADD_FAILURE();
  } catch (const IdentityError& e) {
    EXPECT_NE(std::string(e.what()).find("mode 0644"), std::string::npos) << e.what();
    expect_no_key(e.what(), pki.ca_key());
  }
  TestPki other;
  write_file(key, TestPki::key_pem(other.ca_key()));
  try {
    LocalIssuer mismatch(options);
    ADD_FAILURE();
  } catch (const IdentityError& e) {
    EXPECT_NE(std::string(e.what()).find("does not belong"), std::string::npos) << e.what();
    expect_no_key(e.what(), other.ca_key());
  }
  // A leaf is not a CA.
  auto leaf = pki.leaf(pki.id("a", "b"));
  TestPki::write_leaf(*leaf, cert, key);
  EXPECT_THROW(LocalIssuer{options}, IdentityError);
}

struct CertDirTest : ::testing::Test {
  TempDir dir;
  TestPki pki;
  SpiffeId a = pki.id("default", "sleep");
  SpiffeId b = pki.id("other", "httpbin");
  CertDir certs{CertDirOptions{dir.path, "cluster.local"}};
  SystemClock::time_point now = SystemClock::now();
  fs::path cert_of(const SpiffeId& id) { return dir.path / id.ns / id.service_account / "tls.crt"; }
  fs::path key_of(const SpiffeId& id) { return dir.path / id.ns / id.service_account / "tls.key"; }
};

TEST_F(CertDirTest, ReadsOnlyWantedIdentitiesAndReloadsWhenTheFilesChange) {
  auto first = pki.leaf(a);
  TestPki::write_leaf(*first, cert_of(a), key_of(a));
  TestPki::write_leaf(*pki.leaf(b), cert_of(b), key_of(b));
  auto r = certs.refresh({a}, now);
  EXPECT_EQ(r.changed, std::vector<SpiffeId>{a});
  EXPECT_EQ(certs.certificate(a)->fingerprint(), first->fingerprint());
  EXPECT_EQ(certs.certificate(b), nullptr);  // not this node's
  EXPECT_TRUE(certs.refresh({a}, now).changed.empty());

  auto second = pki.leaf(a);
  TestPki::write_leaf(*second, cert_of(a), key_of(a));
  r = certs.refresh({a}, now);
  EXPECT_EQ(r.changed, std::vector<SpiffeId>{a});
  EXPECT_EQ(certs.certificate(a)->fingerprint(), second->fingerprint());

  fs::remove(cert_of(a));
  r = certs.refresh({a}, now);
  EXPECT_EQ(r.removed, std::vector<SpiffeId>{a});
  EXPECT_EQ(certs.certificate(a), nullptr);
}

TEST_F(CertDirTest, AcceptsSpiffeHelperNames) {
  auto leaf = pki.leaf(a);
  TestPki::write_leaf(*leaf, dir.path / "default/sleep/svid.pem", dir.path / "default/sleep/svid_key.pem");
  EXPECT_EQ(certs.refresh({a}, now).changed, std::vector<SpiffeId>{a});
}

TEST_F(CertDirTest, RefusesAnOpenKeyAFileInTheWrongDirectoryAndKeepsTheLastGoodPair) {
  auto good = pki.leaf(a);
  TestPki::write_leaf(*good, cert_of(a), key_of(a));
  certs.refresh({a}, now);

  auto next = pki.leaf(a);
  TestPki::write_leaf(*next, cert_of(a), key_of(a), kOpenMode);
  auto r = certs.refresh({a}, now);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].second.find("readable by group or others"), std::string::npos) << r.errors[0].second;
  expect_no_key(r.errors[0].second, next->key());
  EXPECT_EQ(certs.certificate(a)->fingerprint(), good->fingerprint());

  // Half-written: the new certificate with the old key.
  write_file(cert_of(a), next->chain_pem(), kOpenMode);
  write_file(key_of(a), TestPki::key_pem(good->key()));
  r = certs.refresh({a}, now);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].second.find("does not belong"), std::string::npos) << r.errors[0].second;
  EXPECT_EQ(certs.certificate(a)->fingerprint(), good->fingerprint());
  // The writer finishes: picked up.
  write_file(key_of(a), TestPki::key_pem(next->key()));
  r = certs.refresh({a}, now);
  EXPECT_EQ(r.changed, std::vector<SpiffeId>{a});
  EXPECT_EQ(certs.certificate(a)->fingerprint(), next->fingerprint());

  // b's certificate in a's directory.
  TestPki::write_leaf(*pki.leaf(b), cert_of(a), key_of(a));
  r = certs.refresh({a}, now);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].second.find("its directory is for"), std::string::npos) << r.errors[0].second;
  EXPECT_EQ(certs.certificate(a)->fingerprint(), next->fingerprint());
}

TEST_F(CertDirTest, RefusesAnExpiredCertificate) {
  TestPki::write_leaf(*pki.expired_leaf(a), cert_of(a), key_of(a));
  auto r = certs.refresh({a}, now);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].second.find("expired"), std::string::npos);
  EXPECT_EQ(certs.certificate(a), nullptr);
}

}  // namespace identity_providers_test
