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
// Life: signal handlers first (a SIGTERM at any later moment of the start leaves the node
// clean), listeners, then the control plane syncs its sources, publishes the first snapshot and
// installs the capture rules; readiness turns 200 only then. SIGHUP re-reads every source.
// SIGTERM/SIGINT: readiness 503, listeners close, connections get --drain-grace-ms, the control
// plane stops, the rules are removed, exit 0.
//
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
