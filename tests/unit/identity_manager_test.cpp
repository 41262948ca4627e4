// The identity manager: local identities get contexts, renewal publishes new ones atomically,
// bundle changes rebuild everything, and no key material reaches a log line or /config_dump.

#include <gtest/gtest.h>
#include <boost/json/serialize.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <sstream>
#include <thread>

#include "identity/cert_dir.hpp"
#include "identity/identity_error.hpp"
#include "identity/identity_manager.hpp"
#include "identity/local_issuer.hpp"
#include "support/test_pki.hpp"
#include "support/tls_memory_pair.hpp"

namespace identity_manager_test {  // named: unity builds put several test files in one translation unit

using namespace dsproxy::identity;
using dsproxy::testing::TestPki;
using dsproxy::testing::TlsMemoryPair;
namespace fs = std::filesystem;
using std::chrono::seconds;

struct ManagerTest : ::testing::Test {
  fs::path dir = fs::temp_directory_path() / ("dsproxy-identity-manager-" + std::to_string(::getpid()));
  TestPki pki;
  SpiffeId sleep = pki.id("default", "sleep");
  SpiffeId httpbin = pki.id("default", "httpbin");
  std::mutex mutex;
  std::set<SpiffeId> local{sleep};
  std::ostringstream log;
  std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();

  ManagerTest() {
    fs::remove_all(dir);
    fs::create_directories(dir);
    spdlog::set_default_logger(
        std::make_shared<spdlog::logger>("capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(log)));
  }
  ~ManagerTest() override {
    spdlog::set_default_logger(previous);
    fs::remove_all(dir);
  }
  IdentityManager::WantedIdentities wanted() {
    return [this] {
      std::lock_guard lock(mutex);
      return local;
    };
  }
  IdentityOptions local_issuer_options() {
    auto [cert, key] = pki.write_ca(dir);
    IdentityOptions o;
    o.ca_cert = cert;
    o.ca_key = key;
    o.cert_lifetime = seconds(600);
    return o;
  }
  void expect_no_key_text(const std::string& text, EVP_PKEY* key) {
    EXPECT_EQ(text.find("PRIVATE KEY"), std::string::npos);
    std::istringstream in(TestPki::key_pem(key));
    for (std::string line; std::getline(in, line);)
      if (line.find("-----") == std::string::npos && line.size() > 16)
        EXPECT_EQ(text.find(line.substr(0, 16)), std::string::npos) << "key text found in: " << text;
  }
};

TEST_F(ManagerTest, LocalIdentitiesGetContextsOthersDoNot) {
  IdentityManager manager(local_issuer_options(), wanted());
  manager.refresh_now();
  auto ctx = manager.contexts(sleep);
  ASSERT_TRUE(ctx);
  EXPECT_EQ(ctx->identity(), sleep);
  EXPECT_EQ(manager.contexts(httpbin), nullptr);
  auto peer = pki.contexts(pki.leaf(httpbin));
  auto p = TlsMemoryPair::connect(ctx->client().get(), peer->server().get(), httpbin);
  EXPECT_TRUE(p.client_ok && p.server_ok);
  EXPECT_NE(log.str().find("certificate for spiffe://cluster.local/ns/default/sa/sleep"), std::string::npos)
      << log.str();
}

TEST_F(ManagerTest, RenewalPublishesNewContextsAndOldConnectionsKeepWorking) {
  IdentityManager manager(local_issuer_options(), wanted());
  // Issued 400 s ago (of 600 s), so that the renewal is due now and both leaves are valid in
  // real time, which is what the handshakes check.
  const auto start = SystemClock::now() - seconds(400);
  manager.refresh_now(start);
  const auto before = manager.contexts(sleep);
  const auto generation = manager.generation();
  auto peer = pki.contexts(pki.leaf(httpbin));
  auto old_connection = TlsMemoryPair::connect(peer->client().get(), before->server().get(), sleep);
  ASSERT_TRUE(old_connection.server_ok);

  manager.refresh_now(start + seconds(100));  // before half life: nothing
  EXPECT_EQ(manager.contexts(sleep), before);
  manager.refresh_now(start + seconds(400));  // past half of 600 s: now
  const auto after = manager.contexts(sleep);
  ASSERT_TRUE(after);
  EXPECT_NE(after, before);
  EXPECT_GT(manager.generation(), generation);
  EXPECT_NE(after->certificate().fingerprint(), before->certificate().fingerprint());
  EXPECT_TRUE(old_connection.exchange("established before the rotation"));
  auto new_connection = TlsMemoryPair::connect(peer->client().get(), after->server().get(), sleep);
  EXPECT_TRUE(new_connection.server_ok);
}

TEST_F(ManagerTest, APodLeavingDropsItsIdentityAndANewOneGetsOne) {
  IdentityManager manager(local_issuer_options(), wanted());
  manager.refresh_now();
  {
    std::lock_guard lock(mutex);
    local = {httpbin};
  }
  manager.refresh_now();
  EXPECT_EQ(manager.contexts(sleep), nullptr);
  EXPECT_TRUE(manager.contexts(httpbin));
}

TEST_F(ManagerTest, BundleChangeRebuildsEveryContext) {
  auto options = local_issuer_options();
  const auto bundle = pki.write_bundle(dir / "bundle.pem");
  options.trust_bundle = bundle;
  IdentityManager manager(options, wanted());
  manager.refresh_now();
  const auto before = manager.contexts(sleep);
  TestPki next("cluster.local", "next root");
  dsproxy::testing::write_file(bundle, pki.root_pem() + next.root_pem(),
                               fs::perms::owner_read | fs::perms::owner_write);
  manager.refresh_now();
  const auto after = manager.contexts(sleep);
  ASSERT_TRUE(after);
  EXPECT_NE(after, before);
  EXPECT_EQ(after->bundle().roots().size(), 2u);
  EXPECT_EQ(after->certificate().fingerprint(), before->certificate().fingerprint());  // same leaf
  // A peer of the new root is accepted now.
  auto peer = next.contexts(next.leaf(httpbin), after->bundle().roots().size() ? manager.trust_bundle() : nullptr);
  auto p = TlsMemoryPair::connect(peer->client().get(), after->server().get(), sleep);
  EXPECT_TRUE(p.server_ok) << to_string(p.server_error);
  // A broken bundle keeps the last good one.
  dsproxy::testing::write_file(bundle, "broken", fs::perms::owner_read | fs::perms::owner_write);
  manager.refresh_now();
  EXPECT_EQ(manager.contexts(sleep), after);
  EXPECT_NE(log.str().find("trust bundle not reloaded"), std::string::npos) << log.str();
}

TEST_F(ManagerTest, CertDirIdentitiesFollowTheirFilesAndNoKeyReachesLogsOrTheDump) {
  IdentityOptions options;
  options.cert_dir = dir / "certs";
  fs::create_directories(options.cert_dir);
  options.trust_bundle = pki.write_bundle(dir / "bundle.pem");
  auto leaf = pki.leaf(sleep);
  const auto sleep_dir = options.cert_dir / "default" / "sleep";
  // First an open key: refused, reported.
  TestPki::write_leaf(*leaf, sleep_dir / "tls.crt", sleep_dir / "tls.key",
                      fs::perms::owner_read | fs::perms::owner_write | fs::perms::others_read);
  IdentityManager manager(options, wanted());
  manager.refresh_now();
  EXPECT_EQ(manager.contexts(sleep), nullptr);
  EXPECT_NE(log.str().find("readable by group or others"), std::string::npos) << log.str();
  // Fixed: picked up on the next poll.
  TestPki::write_leaf(*leaf, sleep_dir / "tls.crt", sleep_dir / "tls.key");
  manager.refresh_now();
  ASSERT_TRUE(manager.contexts(sleep));
  EXPECT_EQ(manager.contexts(sleep)->certificate().fingerprint(), leaf->fingerprint());

  const std::string dump = boost::json::serialize(manager.describe());
  EXPECT_NE(dump.find(leaf->fingerprint()), std::string::npos);
  expect_no_key_text(dump, leaf->key());
  expect_no_key_text(log.str(), leaf->key());
}

TEST_F(ManagerTest, NoKeyMaterialInLogsOrErrorsOfTheLocalIssuer) {
  auto options = local_issuer_options();
  {
    IdentityManager manager(options, wanted());
    manager.refresh_now();
    expect_no_key_text(boost::json::serialize(manager.describe()), manager.contexts(sleep)->certificate().key());
    expect_no_key_text(log.str(), manager.contexts(sleep)->certificate().key());
  }
  fs::permissions(options.ca_key, fs::perms::owner_read | fs::perms::group_read);
  try {
    IdentityManager refused(options, wanted());
    ADD_FAILURE();
  } catch (const IdentityError& e) {
    expect_no_key_text(e.what(), pki.ca_key());
  }
  expect_no_key_text(log.str(), pki.ca_key());
}

TEST_F(ManagerTest, ThreadRefreshesOnItsOwnAndOnRequest) {
  auto options = local_issuer_options();
  options.poll = std::chrono::milliseconds(20);
  IdentityManager manager(options, wanted());
  manager.start();
  ASSERT_TRUE(manager.contexts(sleep));  // the first refresh ran in start()
  {
    std::lock_guard lock(mutex);
    local.insert(httpbin);
  }
  manager.refresh_soon();
  bool appeared = false;
  for (int i = 0; i < 200 && !appeared; ++i) {  // bounded: 2 s
    appeared = manager.contexts(httpbin) != nullptr;
    if (!appeared) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(appeared);
  // Readers on other threads meanwhile: one atomic load each.
  std::thread reader([&] {
    for (int i = 0; i < 1000; ++i) ASSERT_TRUE(manager.contexts(sleep));
  });
  reader.join();
  manager.stop();
  manager.stop();  // idempotent
}

TEST(IdentityOptions, ValidateSaysWhatIsWrong) {
  IdentityOptions o;
  EXPECT_EQ(o.validate(), "");
  EXPECT_FALSE(o.enabled());
  o.ca_cert = "/ca.crt";
  EXPECT_NE(o.validate().find("--ca-key"), std::string::npos);
  o.ca_key = "/ca.key";
  EXPECT_EQ(o.validate(), "");
  o.cert_dir = "/certs";
  EXPECT_NE(o.validate().find("exclude"), std::string::npos);
  o.ca_cert.clear();
  o.ca_key.clear();
  EXPECT_NE(o.validate().find("--trust-bundle"), std::string::npos);
  o.trust_bundle = "/bundle.pem";
  EXPECT_EQ(o.validate(), "");
  o.trust_domain = "Bad:Domain";
  EXPECT_NE(o.validate().find("--trust-domain"), std::string::npos);
}

}  // namespace identity_manager_test
