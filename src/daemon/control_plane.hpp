#pragma once
// The control plane: sources → snapshot builder → SnapshotStore::publish → capture and refusal
// rule updates, all on one thread of its own (its own io_context).
//
//   FileSource / KubernetesSource ──upsert/erase/replace_all──► builder ──build()──► store.publish
//                 (control-plane thread)                          │ coalesced     │
//   HostnameEndpoints (c-ares) ──resolved slices──────────────────┘               ▼
//                                                                  Redirector::update_pods,
//                                                                  VipRefusals::apply (iptables-restore)
//
// Nothing here runs on the front thread (DNS, admin, readiness, signals) or on a worker: they
// only read the SnapshotStore (one atomic shared_ptr) and the atomic flags below, so a build that
// takes seconds, or an iptables-restore that hangs until its timeout, never delays a DNS answer
// or a readiness probe.
//
// Start-up: nothing is built until every source has said synced (a Kubernetes source that has
// listed Services but not yet EndpointSlices would otherwise refuse every ClusterIP); then the
// first snapshot is published, the capture rules are installed (--redirect) and on_ready runs.
// After that, every change schedules one build `coalesce` later: changes arriving meanwhile
// (a relist of 10,000 objects, a burst of watch events) share that build.

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json/array.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "redirect/command_runner.hpp"
#include "redirect/redirect_options.hpp"
#include "redirect/redirector.hpp"
#include "redirect/vip_refusals.hpp"
#include "resolver/io/ares_upstream.hpp"
#include "resolver/io/hostname_endpoints.hpp"
#include "snapshot/cluster_snapshot.hpp"
#include "snapshot/snapshot_builder.hpp"
#include "snapshot/snapshot_store.hpp"
#include "sources/config_source.hpp"

namespace dsproxy::daemon {

// The incremental builder: an event rebuilds only the Services it touches, and consecutive
// snapshots share the rest.
using snapshot::SnapshotBuilder;

// What the refusal rules need from a snapshot: every ClusterIP with its servable ports.
std::vector<redirect::VipOpenPorts> vip_open_ports(const snapshot::ClusterSnapshot& snapshot);
// What the capture rules need: every address of this node's pods.
std::vector<net::IpAddress> node_pod_ips(const snapshot::ClusterSnapshot& snapshot);

struct ControlPlaneOptions {
  snapshot::ClusterSnapshot::Options snapshot;
  bool redirect = false;  // keep the capture and refusal rules current
  redirect::RedirectOptions redirect_options;
  // Hostname endpoints (dsproxy.io/resolve); nullopt: off.
  std::optional<resolver::AresOptions> hostnames;
  // How long a change waits for more before the build it triggers.
  std::chrono::milliseconds coalesce{5};
  // How long an open batch (a LIST streaming in) may hold a build back; past this the build
  // happens anyway (a LIST that failed midway must not freeze the routing view).
  std::chrono::milliseconds max_batch_hold{2000};
  // Tests only (--test-build-delay-ms): every build after the first sleeps this long first, to
  // show that DNS and readiness do not wait for a slow build.
  std::chrono::milliseconds test_build_delay{0};
};

class ControlPlane final : public sources::ObjectSink {
 public:
  struct Callbacks {
    // The first snapshot is live and the rules are installed. On the control-plane thread.
    std::function<void()> ready;
    // A snapshot was published (every one, the first included). On the control-plane thread;
    // must not block (the identity thread is hurried, the workers re-decide AuthorizationPolicy
    // for their connections: both by posting).
    std::function<void()> published{};
    // Start-up cannot complete (a bad first config file, rules that cannot be installed): the
    // daemon exits with `exit_code`. On the control-plane thread.
    std::function<void(int exit_code)> fatal;
    // The first snapshot is published and the rules are about to be installed: the daemon
    // starts listening (and, as a successor, has the previous instance let go of the rules).
    // Blocks the control-plane thread until it returns; false: do not install (stopping).
    std::function<bool()> serving;
  };

  ControlPlane(ControlPlaneOptions options, snapshot::SnapshotStore& store, redirect::CommandRunner& runner,
               Callbacks callbacks);
  ~ControlPlane() override;
  ControlPlane(const ControlPlane&) = delete;
  ControlPlane& operator=(const ControlPlane&) = delete;

  // Where sources run: construct them with this, then add_source() them, all before start().
  boost::asio::io_context& io() { return io_; }
  void add_source(std::unique_ptr<sources::ConfigSource> source);

  // Starts the thread; sources start on it.
  void start();
  // Any thread: every source reads everything again (SIGHUP).
  void resync(std::string_view why);
  // Stops the sources and the thread and joins it. Any thread but the control-plane one.
  void stop();
  // After stop(): removes the capture and refusal rules this control plane installed (or may
  // have been installing when it was stopped); with `owner_of_node_rules` (this instance owns the
  // node's rules, handoff.hpp) also rules it never installed, e.g. those a predecessor handed
  // over just before we were stopped. After relinquish_rules() only with `owner_of_node_rules`
  // (the successor is gone and nobody owns them). Best effort, logs what failed.
  void remove_rules(bool owner_of_node_rules = false);
  // After stop(), the first stage of remove_rules() (Redirector::release_capture): new
  // connections are no longer captured, while the socket divert and the policy routing keep
  // steering the packets of the connections the proxy holds or is accepting. Same ownership
  // rule as remove_rules(); remove_rules() later removes the rest. False if a family's capture
  // or conntrack exemption may still be in place (logged): then the staged release cannot be
  // trusted, and the caller removes every rule at once (remove_rules()).
  bool release_capture(bool owner_of_node_rules = false);
  // Any thread: stop writing the capture and refusal rules without removing them (a successor
  // owns them now; see handoff.hpp): no update, no install, and remove_rules() does nothing.
  // `done` runs on the control-plane thread once no rule command of ours can run any more; once
  // stop() has returned, at once on the calling thread (which must then be the one that
  // stopped us, or one ordered after it).
  void relinquish_rules(std::function<void()> done);
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }

  // Any thread.
  bool synced() const { return synced_.load(std::memory_order_acquire); }
  std::uint64_t builds() const { return builds_.load(std::memory_order_relaxed); }
  std::uint64_t build_failures() const { return build_failures_.load(std::memory_order_relaxed); }
  // Every source's status(), for /config_dump.
  boost::json::array sources_status() const;

  // sources::ObjectSink, on the control-plane thread.
  void replace_all(const sources::ConfigSource& from, config::ClusterObjects objects) override;
  void upsert(const sources::ConfigSource& from, config::Service object) override;
  void upsert(const sources::ConfigSource& from, config::Pod object) override;
  void upsert(const sources::ConfigSource& from, config::EndpointSlice object) override;
  void upsert(const sources::ConfigSource& from, config::Node object) override;
  void upsert(const sources::ConfigSource& from, config::Namespace object) override;

  void upsert(const sources::ConfigSource& from, config::AuthorizationPolicy object) override;
  void erase(const sources::ConfigSource& from, sources::ObjectKind kind, const std::string& ns,
             const std::string& name) override;
  void begin_batch(const sources::ConfigSource& from) override;
  void end_batch(const sources::ConfigSource& from) override;
  void synced(const sources::ConfigSource& from) override;
  void failed(const sources::ConfigSource& from, const std::string& why, int exit_code) override;

 private:
  bool adopt_node_rules();
  void run_thread();
  void schedule_build(std::string_view why);
  void arm_build_timer(std::chrono::milliseconds after);
  void build_and_publish();
  void first_publish();
  void apply_rules(const snapshot::ClusterSnapshot& snapshot);
  // Hostname endpoints: the Services annotated dsproxy.io/resolve and the FQDN slices are kept
  // here too (few), resolved, and their addresses upserted into the builder as ordinary slices.
  void refresh_hostnames();
  bool hostname_relevant(const config::Service& service) const;

  ControlPlaneOptions options_;
  snapshot::SnapshotStore& store_;
  redirect::CommandRunner& runner_;
  Callbacks callbacks_;
  boost::asio::io_context io_{1};
  boost::asio::steady_timer build_timer_{io_};
  std::thread thread_;
  std::vector<std::unique_ptr<sources::ConfigSource>> sources_;
  SnapshotBuilder builder_;
  bool build_pending_ = false;
  std::chrono::steady_clock::time_point pending_since_;
  int open_batches_ = 0;
  std::string pending_why_;  // what triggered the pending build, for its log line
  bool first_published_ = false;
  std::atomic<bool> synced_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint64_t> builds_{0};
  std::atomic<std::uint64_t> build_failures_{0};

  std::unique_ptr<resolver::HostnameEndpoints> hostnames_;
  std::map<std::string, config::Service> resolve_services_;     // "ns/name" → annotated Service
  std::map<std::string, config::EndpointSlice> fqdn_slices_;    // "ns/name" → FQDN slice
  std::set<std::pair<std::string, std::string>> resolved_slices_;  // (ns, name) upserted from answers

  std::optional<redirect::Redirector> redirector_;
  std::optional<redirect::VipRefusals> refusals_;
  std::vector<net::IpAddress> installed_pods_;
  bool relinquished_ = false;  // control-plane thread only
  bool released_ = false;      // release_capture() ran
  bool removed_ = false;       // remove_rules() ran (after stop(), on whichever thread stopped us)
};

}  // namespace dsproxy::daemon
