#include "daemon/control_plane.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include "config/k8s_decoder.hpp"
#include "resolver/hostname_table.hpp"

namespace dsproxy::daemon {

namespace asio = boost::asio;

std::vector<redirect::VipOpenPorts> vip_open_ports(const snapshot::ClusterSnapshot& snapshot) {
  std::vector<redirect::VipOpenPorts> out;
  for (auto& v : snapshot.vip_ports()) out.push_back({v.vip, std::move(v.open_ports)});
  return out;
}

std::vector<net::IpAddress> node_pod_ips(const snapshot::ClusterSnapshot& snapshot) {
  std::vector<net::IpAddress> ips;
  for (const auto& pod : snapshot.node_pods()) ips.insert(ips.end(), pod.ips.begin(), pod.ips.end());
  return ips;
}

namespace {

// The sources' kinds and the builder's are the same four; kept apart so sources/ does not
// depend on the snapshot's headers.
snapshot::ObjectKind to_builder_kind(sources::ObjectKind kind) {
  switch (kind) {
    case sources::ObjectKind::service: return snapshot::ObjectKind::service;
    case sources::ObjectKind::pod: return snapshot::ObjectKind::pod;
    case sources::ObjectKind::endpoint_slice: return snapshot::ObjectKind::endpoint_slice;
    case sources::ObjectKind::node: return snapshot::ObjectKind::node;
    case sources::ObjectKind::namespace_: return snapshot::ObjectKind::namespace_;

    case sources::ObjectKind::authorization_policy: return snapshot::ObjectKind::authorization_policy;
  }
  return snapshot::ObjectKind::service;  // unreachable: every kind is listed above
}

std::string key_of(const std::string& ns, const std::string& name) { return ns + '/' + name; }

}  // namespace

ControlPlane::ControlPlane(ControlPlaneOptions options, snapshot::SnapshotStore& store,
                           redirect::CommandRunner& runner, Callbacks callbacks)
    : options_(std::move(options)),
      store_(store),
      runner_(runner),
      callbacks_(std::move(callbacks)),
      builder_(options_.snapshot) {
  if (options_.hostnames) {
    // Its c-ares channel and timers live on this io_context: created here, before the thread
    // runs, and used only from the thread afterwards (c-ares channels are single-threaded).
    try {
      hostnames_ = std::make_unique<resolver::HostnameEndpoints>(io_, *options_.hostnames, [this] {
        refresh_hostnames();
        schedule_build("hostname endpoints");
      });
    } catch (const std::exception& e) {
      spdlog::warn("hostname endpoints (dsproxy.io/resolve) disabled: {}", e.what());
    }
  }
}

ControlPlane::~ControlPlane() { stop(); }

void ControlPlane::add_source(std::unique_ptr<sources::ConfigSource> source) { sources_.push_back(std::move(source)); }

void ControlPlane::start() {
  thread_ = std::thread([this] { run_thread(); });
}

void ControlPlane::run_thread() {
  auto guard = asio::make_work_guard(io_);
  asio::post(io_, [this] {
    if (sources_.empty()) {
      spdlog::error("cannot start: no config source");
      if (callbacks_.fatal) callbacks_.fatal(2);
      return;
    }
    for (auto& s : sources_) {
      if (stopping_) return;
      s->start();
    }
  });
  try {
    io_.run();
  } catch (const std::exception& e) {
    // Realistically bad_alloc in a build. The daemon stops in order (rules removed, exit 5):
    // a control plane that is gone would leave the rules frozen while the cluster moves on.
    spdlog::critical("control plane failed: {}; stopping", e.what());
    if (callbacks_.fatal) callbacks_.fatal(5);
  }
}

void ControlPlane::resync(std::string_view why) {
  asio::post(io_, [this, why = std::string(why)] {
    if (stopping_) return;
    for (auto& s : sources_) s->resync(why);
    // A resync that delivers nothing new still rebuilds, so SIGHUP always ends in a new
    // generation (the e2e suites wait for one).
    schedule_build(why);
  });
}

void ControlPlane::stop() {
  if (stopping_.exchange(true)) {
    if (thread_.joinable()) thread_.join();
    return;
  }
  auto shutdown = [this] {
    for (auto& s : sources_) s->stop();
    if (hostnames_) hostnames_->stop();
    build_timer_.cancel();
  };
  if (thread_.joinable()) {
    asio::post(io_, [this, shutdown] {
      shutdown();
      io_.stop();
    });
    thread_.join();
  }
  // Not started, or the thread ended on an exception before the post ran: nothing runs the
  // io_context any more, so this thread may touch what it owns.
  shutdown();
}

void ControlPlane::replace_all(const sources::ConfigSource& from, config::ClusterObjects objects) {
  if (hostnames_) {
    hostnames_->update(objects);
    const std::size_t before = objects.endpoint_slices.size();
    hostnames_->augment(objects);
    resolve_services_.clear();
    fqdn_slices_.clear();
    resolved_slices_.clear();
    for (const auto& s : objects.services)
      if (hostname_relevant(s)) resolve_services_.emplace(key_of(s.ns, s.name), s);
    for (const auto& s : objects.fqdn_slices) fqdn_slices_.emplace(key_of(s.ns, s.name), s);
    for (std::size_t i = before; i < objects.endpoint_slices.size(); ++i)
      resolved_slices_.emplace(objects.endpoint_slices[i].ns, objects.endpoint_slices[i].name);
  }
  // The incremental builder checks a whole file before it changes anything (a bad dsproxy.io/
  // annotation throws here, not at build time): the file is refused whole and the last good
  // state stays, as a failed build does; at start there is none, and dsproxy cannot start.
  try {
    builder_.replace_all(std::move(objects));
  } catch (const std::exception& e) {
    if (!first_published_) {
      spdlog::error("cannot start: {}", e.what());
      if (callbacks_.fatal) callbacks_.fatal(2);
      return;
    }
    build_failures_.fetch_add(1, std::memory_order_relaxed);
    spdlog::error("config reload ({}) failed, keeping generation {}: {}", from.name(), store_.generation(), e.what());
    return;
  }
  schedule_build(from.name());
}

void ControlPlane::upsert(const sources::ConfigSource& from, config::Service object) {
  const auto key = key_of(object.ns, object.name);
  // A Service the snapshot would refuse (a bad dsproxy.io/ annotation) must not fail every
  // build from now on: it is checked alone, and skipped (its last good version stays) if bad.
  // A file is refused whole instead (replace_all), as it always was.
  try {
    config::ClusterObjects alone;
    alone.services.push_back(object);
    snapshot::ClusterSnapshot::build(std::move(alone), options_.snapshot);
  } catch (const std::exception& e) {
    spdlog::error("{}: skipping Service {}, keeping its last good version: {}", from.name(), key, e.what());
    return;
  }
  const bool relevant = hostnames_ && (hostname_relevant(object) || resolve_services_.contains(key));
  if (relevant) {
    if (hostname_relevant(object))
      resolve_services_.insert_or_assign(key, object);
    else
      resolve_services_.erase(key);
  }
  builder_.upsert(std::move(object));
  if (relevant) refresh_hostnames();
  schedule_build(from.name());
}

void ControlPlane::upsert(const sources::ConfigSource& from, config::Pod object) {
  builder_.upsert(std::move(object));
  schedule_build(from.name());
}

void ControlPlane::upsert(const sources::ConfigSource& from, config::EndpointSlice object) {
  const auto key = key_of(object.ns, object.name);
  const bool fqdn = object.address_type == config::AddressType::FQDN;
  const bool relevant = hostnames_ && (fqdn || fqdn_slices_.contains(key));
  if (relevant) {
    if (fqdn)
      fqdn_slices_.insert_or_assign(key, object);
    else
      fqdn_slices_.erase(key);
  }
  builder_.upsert(std::move(object));
  if (relevant) refresh_hostnames();
  schedule_build(from.name());
}

void ControlPlane::upsert(const sources::ConfigSource& from, config::Node object) {
  builder_.upsert(std::move(object));
  schedule_build(from.name());
}

void ControlPlane::upsert(const sources::ConfigSource& from, config::Namespace object) {
  builder_.upsert(std::move(object));
  schedule_build(from.name());
}

void ControlPlane::upsert(const sources::ConfigSource& from, config::AuthorizationPolicy object) {
  builder_.upsert(std::move(object));
  schedule_build(from.name());
}

void ControlPlane::erase(const sources::ConfigSource& from, sources::ObjectKind kind, const std::string& ns,
                         const std::string& name) {
  builder_.erase(to_builder_kind(kind), ns, name);
  bool relevant = false;
  if (hostnames_ && kind == sources::ObjectKind::service) relevant = resolve_services_.erase(key_of(ns, name)) > 0;
  if (hostnames_ && kind == sources::ObjectKind::endpoint_slice) relevant = fqdn_slices_.erase(key_of(ns, name)) > 0;
  if (relevant) refresh_hostnames();
  schedule_build(from.name());
}

void ControlPlane::synced(const sources::ConfigSource& from) {
  spdlog::info("{}: synced", from.name());
  for (const auto& s : sources_)
    if (!s->synced()) return;
  first_publish();
}

void ControlPlane::failed(const sources::ConfigSource& from, const std::string& why, int exit_code) {
  spdlog::error("cannot start: {}", why.empty() ? from.name() + " failed" : why);
  if (callbacks_.fatal) callbacks_.fatal(exit_code);
}

bool ControlPlane::hostname_relevant(const config::Service& service) const {
  return service.annotations.contains(resolver::kResolveAnnotation);
}

void ControlPlane::refresh_hostnames() {
  if (!hostnames_) return;
  config::ClusterObjects view;
  for (const auto& [key, s] : resolve_services_) view.services.push_back(s);
  for (const auto& [key, s] : fqdn_slices_) view.fqdn_slices.push_back(s);
  hostnames_->update(view);
  hostnames_->augment(view);
  std::set<std::pair<std::string, std::string>> now;
  for (auto& slice : view.endpoint_slices) {
    now.emplace(slice.ns, slice.name);
    builder_.upsert(std::move(slice));
  }
  for (const auto& [ns, name] : resolved_slices_)
    if (!now.contains({ns, name})) builder_.erase(snapshot::ObjectKind::endpoint_slice, ns, name);
  resolved_slices_ = std::move(now);
}

void ControlPlane::schedule_build(std::string_view why) {
  // Before the first publish the builder only collects: a half-synced set is never served.
  if (!first_published_ || stopping_) return;
  if (build_pending_) return;
  build_pending_ = true;
  pending_since_ = std::chrono::steady_clock::now();
  pending_why_ = std::string(why);
  arm_build_timer(options_.coalesce);
}

void ControlPlane::arm_build_timer(std::chrono::milliseconds after) {
  build_timer_.expires_after(after);
  build_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec || stopping_ || !build_pending_) return;
    if (open_batches_ > 0 && std::chrono::steady_clock::now() - pending_since_ < options_.max_batch_hold) {
      arm_build_timer(options_.coalesce);  // end_batch re-arms it sooner
      return;
    }
    build_pending_ = false;
    build_and_publish();
  });
}

void ControlPlane::begin_batch(const sources::ConfigSource&) { ++open_batches_; }

void ControlPlane::end_batch(const sources::ConfigSource&) {
  if (open_batches_ > 0) --open_batches_;
  if (open_batches_ == 0 && build_pending_) arm_build_timer(options_.coalesce);
}

void ControlPlane::first_publish() {
  // Stopping (SIGTERM during the start): install nothing that would only be removed again.
  if (first_published_ || stopping_) return;
  std::shared_ptr<const snapshot::ClusterSnapshot> first;
  try {
    first = builder_.build();
  } catch (const std::exception& e) {
    spdlog::error("cannot start: {}", e.what());
    if (callbacks_.fatal) callbacks_.fatal(2);
    return;
  }
  store_.publish(first);
  if (callbacks_.published) callbacks_.published();
  builds_.fetch_add(1, std::memory_order_relaxed);
  first_published_ = true;
  // Listening before the rules: a captured SYN that finds no listening socket is dropped by
  // TPROXY (the client retries after a second). And not before the first snapshot: a successor
  // in the SO_REUSEPORT groups would route with an empty configuration.
  if (callbacks_.serving && !callbacks_.serving()) return;
  if (options_.redirect && !relinquished_) {
    try {
      redirector_.emplace(options_.redirect_options, runner_);
      refusals_.emplace(options_.redirect_options, runner_);
      installed_pods_ = node_pod_ips(*first);
      redirector_->install(installed_pods_);
      refusals_->apply(vip_open_ports(*first));
    } catch (const std::exception& e) {
      spdlog::error("cannot install redirect rules: {}", e.what());
      if (callbacks_.fatal) callbacks_.fatal(3);
      return;
    }
  }
  synced_.store(true, std::memory_order_release);
  spdlog::info("dsproxy ready: node {}, {} service port(s), {} local pod(s)", options_.snapshot.node_name,
               first->cluster_count(), first->node_pods().size());
  if (callbacks_.ready) callbacks_.ready();
}

void ControlPlane::build_and_publish() {
  const std::string why = std::move(pending_why_);
  if (options_.test_build_delay.count() > 0) {
    spdlog::info("test hook: build ({}) sleeps {} ms", why, options_.test_build_delay.count());
    std::this_thread::sleep_for(options_.test_build_delay);
  }
  std::shared_ptr<const snapshot::ClusterSnapshot> next;
  try {
    next = builder_.build();
  } catch (const std::exception& e) {
    // The last good snapshot stays in force; traffic never notices a bad edit.
    build_failures_.fetch_add(1, std::memory_order_relaxed);
    spdlog::error("config reload ({}) failed, keeping generation {}: {}", why, store_.generation(), e.what());
    return;
  }
  store_.publish(next);
  if (callbacks_.published) callbacks_.published();
  builds_.fetch_add(1, std::memory_order_relaxed);
  spdlog::info("config reloaded ({}): generation {}, {} service port(s), {} local pod(s), {} AuthorizationPolicy(ies)",
               why, store_.generation(), next->cluster_count(), next->node_pods().size(),
               next->authz().policy_count());
  apply_rules(*next);
}

void ControlPlane::apply_rules(const snapshot::ClusterSnapshot& snapshot) {
  if (!redirector_ || relinquished_) return;
  auto pods = node_pod_ips(snapshot);
  if (pods != installed_pods_) {
    try {
      redirector_->update_pods(pods);
      installed_pods_ = std::move(pods);
    } catch (const std::exception& e) {
      spdlog::error("redirect update failed, capture still uses the previous pod list: {}", e.what());
    }
  }
  try {
    refusals_->apply(vip_open_ports(snapshot));
  } catch (const std::exception& e) {
    spdlog::error("refusal rules update failed, the previous ones stay: {}", e.what());
  }
}

void ControlPlane::relinquish_rules(std::function<void()> done) {
  // Forgetting them is enough: nothing calls the redirector again, and remove_rules() finds
  // nothing to remove.
  auto relinquish = [this, done = std::move(done)] {
    relinquished_ = true;
    refusals_.reset();
    redirector_.reset();
    if (done) done();
  };
  // Stopped (the drain released the capture, then a successor asked): nothing runs io_ any more,
  // so a post would never run, the successor would never hear "released", and we would remove
  // its rules at exit. stop() has joined the thread (it and this call both run on the daemon's
  // front thread), so the rule state is ours to touch here.
  if (stopping_.load(std::memory_order_acquire)) return relinquish();
  asio::post(io_, std::move(relinquish));
}

// The rules of an instance that never wrote them (a relinquished or superseded one whose owner
// is gone): handles to them, so it can take them down. False when they cannot be had.
bool ControlPlane::adopt_node_rules() {
  if (!options_.redirect || redirector_) return true;
  try {
    redirector_.emplace(options_.redirect_options, runner_);
    refusals_.emplace(options_.redirect_options, runner_);
    return true;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return false;
  }
}

bool ControlPlane::release_capture(bool owner_of_node_rules) {
  if (removed_ || released_ || (relinquished_ && !owner_of_node_rules)) return true;
  released_ = true;
  if (owner_of_node_rules && !adopt_node_rules()) return false;
  // The capture first, then the conntrack exemption is narrowed to the connections the proxy
  // holds (VipRefusals::release), only in the families whose capture is gone: a family still
  // captured keeps the wide exemption its captured SYNs need. In between, for the one iptables
  // call, a new connection to a ClusterIP is neither captured nor tracked (its SYN is lost and
  // retried after a second); the other order would, for as long, let captured SYNs be tracked
  // and DNATed before the proxy accepts them, losing the ClusterIP.
  std::vector<net::Family> released = {net::Family::v4, net::Family::v6};
  bool complete = true;
  if (redirector_) {
    released = redirector_->release_capture();
    for (auto family : redirect::families(options_.redirect_options))
      if (std::find(released.begin(), released.end(), family) == released.end()) complete = false;
  }
  if (refusals_) {
    try {
      if (!refusals_->release(released)) complete = false;
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      complete = false;
    }
  }
  return complete;
}

void ControlPlane::remove_rules(bool owner_of_node_rules) {
  // Relinquished rules are removed only on the word of the daemon that nobody owns them now.
  if (removed_ || (relinquished_ && !owner_of_node_rules)) return;
  removed_ = true;  // once: a drain that removed them early must not run the removal again at exit
  if (owner_of_node_rules) adopt_node_rules();
  if (refusals_) {
    try {
      refusals_->uninstall();
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
    }
    refusals_.reset();
  }
  if (!redirector_) return;
  try {
    redirector_->uninstall();
  } catch (const std::exception& e) {
    spdlog::error("redirect uninstall incomplete: {}", e.what());
  }
  redirector_.reset();
}

boost::json::array ControlPlane::sources_status() const {
  boost::json::array out;
  for (const auto& s : sources_) {
    auto status = s->status();
    status["name"] = s->name();
    out.push_back(std::move(status));
  }
  return out;
}

}  // namespace dsproxy::daemon
