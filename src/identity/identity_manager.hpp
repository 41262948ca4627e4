#pragma once
// The node's identities at run time: owns the certificate provider and the trust bundle, runs a
// small thread of its own ("identity") that keeps them current, and publishes the TLS contexts
// of every local identity for the workers to read.
//
//   identity thread, every poll (1 s) or when refresh_soon() is called:
//     wanted = WantedIdentities()          (the service accounts of this node's pods)
//     bundle file changed?  -> reload       (a bad file keeps the old bundle, logged)
//     provider.refresh(wanted, now)         (issue/renew at half life, or re-read cert files)
//     rebuild the TlsContexts that changed  (all of them when the bundle changed)
//     publish a new immutable map           (one atomic store)
//
//   workers: contexts(id) -> one atomic load and a map lookup, never a lock, never waits for an
//   issuance. An identity whose certificate is not there yet has no contexts (nullptr): the
//   caller decides (the hbone helper: refuse/fall back) and refresh_soon() hurries it.
//
// Issuance is milliseconds (one P-256 key and signature), but it runs here and not on the
// control-plane thread so that a slow external issuer's files or a big node never delay a
// snapshot build, and never on a worker.

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json/object.hpp>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "identity/certificate_provider.hpp"
#include "identity/identity_options.hpp"
#include "identity/tls_contexts.hpp"
#include "identity/trust_bundle.hpp"

namespace dsproxy::identity {

class IdentityManager {
 public:
  // Called on the identity thread: which identities this node needs now.
  using WantedIdentities = std::function<std::set<SpiffeId>()>;
  using ContextMap = std::map<SpiffeId, std::shared_ptr<const TlsContexts>>;

  // Loads the bundle and the CA / checks the directory. Throws IdentityError (the daemon exits
  // with 2: a configuration that cannot work stops the start).
  IdentityManager(const IdentityOptions& options, WantedIdentities wanted);
  // Tests: a provider and bundle file of their own.
  IdentityManager(std::unique_ptr<CertificateProvider> provider, std::filesystem::path bundle_file,
                  std::string trust_domain, WantedIdentities wanted,
                  std::chrono::milliseconds poll = std::chrono::milliseconds(1000));
  ~IdentityManager();
  IdentityManager(const IdentityManager&) = delete;
  IdentityManager& operator=(const IdentityManager&) = delete;

  // Runs the first refresh on the calling thread (so the contexts of the pods known now exist
  // when start() returns), then starts the identity thread.
  void start();
  void stop();  // joins; idempotent

  // Any thread, lock-free: the current contexts of a local identity, nullptr if none.
  std::shared_ptr<const TlsContexts> contexts(const SpiffeId& id) const;
  // Any thread: every identity's current contexts (one consistent map).
  std::shared_ptr<const ContextMap> all_contexts() const { return contexts_.load(std::memory_order_acquire); }
  // Any thread, never waits: the identity thread refreshes as soon as it can (a new local pod).
  void refresh_soon();
  // One refresh pass on the calling thread — only when the identity thread is not running
  // (tests drive time through `now`).
  void refresh_now(SystemClock::time_point now = SystemClock::now());

  const std::string& trust_domain() const { return trust_domain_; }
  const std::shared_ptr<TlsStats>& stats() const { return stats_; }
  std::shared_ptr<const TrustBundle> trust_bundle() const { return bundle_.load(std::memory_order_acquire); }
  std::uint64_t generation() const { return generation_.load(std::memory_order_acquire); }
  // For /config_dump: provider, trust bundle roots, each identity's certificate (public facts),
  // the identities that have none and why, and the handshake counters. Never a key.
  boost::json::object describe() const;

 private:
  void run_thread();
  void arm_timer(std::chrono::milliseconds after);
  void publish_changes(const RefreshResult& result, bool bundle_changed);

  std::unique_ptr<CertificateProvider> provider_;
  std::unique_ptr<TrustBundleFile> bundle_file_;
  std::string trust_domain_;
  WantedIdentities wanted_;
  std::chrono::milliseconds poll_;
  std::shared_ptr<TlsStats> stats_ = std::make_shared<TlsStats>();

  std::atomic<std::shared_ptr<const ContextMap>> contexts_;
  std::atomic<std::shared_ptr<const TrustBundle>> bundle_;
  std::atomic<std::uint64_t> generation_{0};

  mutable std::mutex status_mutex_;  // guards the fields below (admin thread reads them)
  std::map<SpiffeId, std::string> errors_;
  std::string bundle_error_;
  boost::json::object provider_description_;  // the provider itself is the identity thread's

  boost::asio::io_context io_{1};
  boost::asio::steady_timer timer_{io_};
  std::thread thread_;
  std::atomic<bool> refresh_pending_{false};
  bool started_ = false;
};

}  // namespace dsproxy::identity
