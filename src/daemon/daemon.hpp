#pragma once
// `dsproxy run`: the process and its lifecycle.
//
// Threads:
//   - data-path workers (proxy::ProxyServer): one io_context each, accept and relay;
//   - the front thread (the main thread, its own io_context): the DNS proxy, the admin API and
//     readiness, signals and drain. It never parses, builds a snapshot or runs iptables;
//   - the control-plane thread (ControlPlane, its own io_context): the config sources, the
//     snapshot builds, hostname endpoint resolution and the capture/refusal rule updates.
// The only things they share are the SnapshotStore (an atomic shared_ptr), counters and the
// readiness flag (atomics), so DNS answers and readiness probes never wait for a reload.
//
// Life: signal handlers first (a signal at any later moment of the start leaves the node clean),
// then the ownership of the node's rules (handoff.hpp: owner, or successor of a running
// instance), listeners bound but not listening; the control plane syncs its sources and publishes
// the first snapshot; then the listeners join their SO_REUSEPORT groups, a successor has the
// owner let go of the rules, the rules are installed (an atomic replace for a successor) and
// readiness turns 200. SIGHUP re-reads every source.
// SIGTERM/SIGINT: readiness 503, then
//   - superseded (a successor serves and owns the rules): stop accepting (queued connections move
//     to the successor's listeners with net.ipv4.tcp_migrate_req=1), let the open connections
//     finish for --drain-grace-ms, reset what is left, exit 0 without touching the rules;
//   - no successor: keep capturing and serving until the open connections have ended or the grace
//     runs out (or a successor takes over), then remove the rules first (new connections go
//     straight to their destination), stop accepting, reset what is left, exit 0.
// The last instance out removes rules nobody owns (a successor that died after taking over).
// Exit codes: 0 clean shutdown; 2 no usable configuration at start; 3 the capture rules could not
// be installed; 4 a listener could not be bound; 5 a control-plane or front-thread failure.

#include "daemon/daemon_options.hpp"
#include "redirect/node_families.hpp"

namespace dsproxy::daemon {

// `options` for a node that carries only the families that are on in `families`: the capture
// rules, the proxy and DNS listeners and the IPv6 admin/readiness listeners of a family that is
// off are dropped (a [::] bind fails outright on a kernel without IPv6).
DaemonOptions restrict_to_families(DaemonOptions options, const redirect::NodeFamilies& families);

// Returns the process exit code (see above).
int run_daemon(const DaemonOptions& options);

}  // namespace dsproxy::daemon
