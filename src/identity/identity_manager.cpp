#include "identity/identity_manager.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include "identity/cert_dir.hpp"
#include "identity/identity_error.hpp"
#include "identity/local_issuer.hpp"

namespace dsproxy::identity {

namespace asio = boost::asio;

namespace {

std::unique_ptr<CertificateProvider> make_provider(const IdentityOptions& options) {
  if (const auto problem = options.validate(); !problem.empty()) throw IdentityError(problem);
  if (!options.cert_dir.empty())
    return std::make_unique<CertDir>(CertDirOptions{options.cert_dir, options.trust_domain, options.poll});
  LocalIssuerOptions issuer;
  issuer.ca_cert = options.ca_cert;
  issuer.ca_key = options.ca_key;
  issuer.trust_domain = options.trust_domain;
  issuer.lifetime = options.cert_lifetime;
  return std::make_unique<LocalIssuer>(std::move(issuer));
}

}  // namespace

IdentityManager::IdentityManager(const IdentityOptions& options, WantedIdentities wanted)
    : IdentityManager(make_provider(options), options.trust_bundle.empty() ? options.ca_cert : options.trust_bundle,
                      options.trust_domain, std::move(wanted), options.poll) {}

IdentityManager::IdentityManager(std::unique_ptr<CertificateProvider> provider, std::filesystem::path bundle_file,
                                 std::string trust_domain, WantedIdentities wanted, std::chrono::milliseconds poll)
    : provider_(std::move(provider)),
      bundle_file_(std::make_unique<TrustBundleFile>(std::move(bundle_file))),
      trust_domain_(std::move(trust_domain)),
      wanted_(std::move(wanted)),
      poll_(poll) {
  bundle_.store(bundle_file_->current(), std::memory_order_release);
  contexts_.store(std::make_shared<const ContextMap>(), std::memory_order_release);
  provider_description_ = provider_->describe();
  const boost::json::value* source = provider_description_.if_contains("directory");
  if (!source) source = provider_description_.if_contains("caCertificate");
  spdlog::info("mTLS on: {} ({}), trust bundle {} with {} root(s), trust domain {}", provider_->kind(),
               source && source->is_string() ? std::string(source->as_string()) : std::string("-"),
               bundle_file_->path().string(), bundle_file_->current()->roots().size(), trust_domain_);
}

IdentityManager::~IdentityManager() { stop(); }

void IdentityManager::start() {
  if (started_) return;
  refresh_now();
  started_ = true;
  thread_ = std::thread([this] { run_thread(); });
}

void IdentityManager::stop() {
  if (!started_) return;
  io_.stop();
  if (thread_.joinable()) thread_.join();
  started_ = false;
}

void IdentityManager::run_thread() {
  auto guard = asio::make_work_guard(io_);
  arm_timer(poll_);
  try {
    io_.run();
  } catch (const std::exception& e) {
    // Nothing here is expected to throw (refresh catches per identity); if it does, the
    // published contexts stay as they are and keep serving until they expire.
    spdlog::critical("identity thread failed: {}; certificates are no longer renewed", e.what());
  }
}

void IdentityManager::arm_timer(std::chrono::milliseconds after) {
  timer_.expires_after(after);
  timer_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    refresh_now();
    arm_timer(poll_);
  });
}

void IdentityManager::refresh_soon() {
  if (refresh_pending_.exchange(true, std::memory_order_acq_rel)) return;
  asio::post(io_, [this] {
    refresh_pending_.store(false, std::memory_order_release);
    refresh_now();
  });
}

void IdentityManager::refresh_now(SystemClock::time_point now) {
  bool bundle_changed = false;
  try {
    bundle_changed = bundle_file_->reload();
    if (bundle_changed) {
      bundle_.store(bundle_file_->current(), std::memory_order_release);
      spdlog::info("identity: trust bundle {} reloaded: {} root(s)", bundle_file_->path().string(),
                   bundle_file_->current()->roots().size());
    }
    std::lock_guard lock(status_mutex_);
    bundle_error_.clear();
  } catch (const IdentityError& e) {
    spdlog::error("identity: trust bundle not reloaded, keeping the previous one: {}", e.what());
    std::lock_guard lock(status_mutex_);
    bundle_error_ = e.what();
  }
  std::set<SpiffeId> wanted = wanted_ ? wanted_() : std::set<SpiffeId>{};
  const RefreshResult result = provider_->refresh(wanted, now);
  publish_changes(result, bundle_changed);
}

void IdentityManager::publish_changes(const RefreshResult& result, bool bundle_changed) {
  const auto before = contexts_.load(std::memory_order_acquire);
  std::map<SpiffeId, std::string> errors;
  for (const auto& [id, why] : result.errors) errors[id] = why;

  std::set<SpiffeId> rebuild(result.changed.begin(), result.changed.end());
  if (bundle_changed)
    for (const auto& [id, ctx] : *before) rebuild.insert(id);
  bool changed = !result.removed.empty();
  auto next = std::make_shared<ContextMap>(*before);
  for (const auto& id : result.removed) {
    next->erase(id);
    spdlog::info("identity: {} dropped (no longer a local pod's identity, or its files are gone)", id.uri());
  }
  const auto bundle = bundle_file_->current();
  for (const auto& id : rebuild) {
    auto cert = provider_->certificate(id);
    if (!cert) {
      changed |= next->erase(id) > 0;
      continue;
    }
    try {
      (*next)[id] = TlsContexts::make(cert, bundle, trust_domain_, stats_);
      changed = true;
      if (std::find(result.changed.begin(), result.changed.end(), id) != result.changed.end())
        spdlog::info("identity: certificate for {} from {}: serial {}, valid until {}", id.uri(), cert->origin(),
                     cert->serial(), format_utc(cert->not_after()));
    } catch (const IdentityError& e) {
      errors[id] = e.what();
    }
  }
  if (changed) {
    contexts_.store(std::shared_ptr<const ContextMap>(std::move(next)), std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }

  std::lock_guard lock(status_mutex_);
  // One line per new or changed problem, not one per poll.
  for (const auto& [id, why] : errors) {
    const auto it = errors_.find(id);
    if (it == errors_.end() || it->second != why) spdlog::warn("identity: no certificate for {}: {}", id.uri(), why);
  }
  for (const auto& [id, why] : errors_)
    if (!errors.count(id) && contexts(id)) spdlog::info("identity: {} has a certificate again", id.uri());
  errors_ = std::move(errors);
  provider_description_ = provider_->describe();
}

std::shared_ptr<const TlsContexts> IdentityManager::contexts(const SpiffeId& id) const {
  const auto map = contexts_.load(std::memory_order_acquire);
  const auto it = map->find(id);
  return it == map->end() ? nullptr : it->second;
}

boost::json::object IdentityManager::describe() const {
  boost::json::object out;
  out["trustDomain"] = trust_domain_;
  boost::json::array identities;
  for (const auto& [id, ctx] : *all_contexts()) identities.push_back(ctx->certificate().describe());
  out["certificates"] = std::move(identities);
  const auto bundle = trust_bundle();
  boost::json::object bundle_json{{"file", bundle->origin()}, {"roots", bundle->describe()}};
  std::lock_guard lock(status_mutex_);
  if (!bundle_error_.empty()) bundle_json["error"] = bundle_error_;
  out["trustBundle"] = std::move(bundle_json);
  out["provider"] = provider_description_;
  boost::json::array errors;
  for (const auto& [id, why] : errors_) errors.push_back(boost::json::object{{"identity", id.uri()}, {"error", why}});
  out["errors"] = std::move(errors);
  out["handshakes"] = stats_->to_json();
  return out;
}

}  // namespace dsproxy::identity
