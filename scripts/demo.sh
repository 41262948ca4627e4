#!/usr/bin/env bash
# The demo of the README: Istio's dual-stack tcp-echo experiment, replayed through dsproxy on a
# one-node "cluster" made of network namespaces (no Kubernetes, nothing leaves the machine).
#
#   sudo bash scripts/demo.sh
#
# On a fresh Debian 12 machine: installs the build dependencies, builds dsproxy and the
# tcp-echo app, creates the kind-worker node and its pods (tests/e2e/lib/cluster.sh), starts
# dsproxy with its redirect rules, and shows the sleep pod reaching each tcp-echo Service over
# IPv4 and IPv6, then dsproxy's view of the listeners and endpoints. Everything it creates is
# removed on exit, also on failure or Ctrl-C. Exits non-zero if any step did not work.
#
# DEMO_SKIP_BUILD=1 skips the dependency install and the build and uses DSPROXY_BIN and
# ECHO_BIN (default: the binaries in $BUILD_DIR, default build/).

set -uo pipefail

REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$REPO_DIR/build}

die() {
  echo "demo: $*" >&2
  exit 1
}
[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, iptables): sudo bash $0"

if [[ -z ${DEMO_SKIP_BUILD:-} ]]; then
  echo "== installing dependencies and building (Release) =="
  bash "$REPO_DIR/scripts/install-deps.sh" || die "scripts/install-deps.sh failed"
  cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release || die "cmake configure failed"
  cmake --build "$BUILD_DIR" -j2 --target dsproxy dsproxy_test_echo || die "build failed"
fi
DSPROXY_BIN=${DSPROXY_BIN:-$BUILD_DIR/dsproxy}
ECHO_BIN=${ECHO_BIN:-$BUILD_DIR/tests/dsproxy_test_echo}
[[ -x $DSPROXY_BIN ]] || die "$DSPROXY_BIN is not an executable"
[[ -x $ECHO_BIN ]] || die "$ECHO_BIN is not an executable"

# shellcheck source=tests/e2e/lib/cluster.sh
source "$REPO_DIR/tests/e2e/lib/cluster.sh"

FAILURES=0
demo_on_exit() { if (($1 != 0 || FAILURES > 0)); then dsproxy_log_tail; fi; }
# shellcheck disable=SC2034 # read by the harness's exit trap
CLUSTER_ON_EXIT=demo_on_exit
cluster_trap

echo
echo "== building kind-worker: node and pods in network namespaces =="
cluster_up
# shellcheck disable=SC2119 # no extra dsproxy arguments
start_dsproxy || die "dsproxy did not become ready"
# shellcheck disable=SC2153 # set by start_dsproxy
echo "dsproxy is running in $(node_ns) (pid $DSPROXY_PID, config ${DSPROXY_CONFIG#"$REPO_DIR"/})"

# Runs a dsproxy command in the node namespace, printed as the user would type it. JSON is
# indented for reading when python3 is there.
show_dsproxy() {
  local out status=0
  echo "\$ dsproxy $*"
  out=$(in_node timeout 10 "$DSPROXY_BIN" "$@" 2>&1) || status=$?
  if [[ " $* " == *" -o json "* ]] && command -v python3 >/dev/null 2>&1 &&
    python3 -m json.tool <<<"$out" >/dev/null 2>&1; then
    out=$(python3 -m json.tool --indent 2 <<<"$out")
  fi
  [[ -n $out ]] && echo "$out"
  if ((status != 0)); then
    echo "(dsproxy $* failed with status $status)"
    FAILURES=$((FAILURES + 1))
  fi
}

# One nc from the sleep pod to a Service, shown the way the blog's kubectl exec does it; there
# is no DNS here, so nc is given the ClusterIP the name would resolve to.
show_nc() {
  local payload=$1 service=$2 vip=$3 pod=$4 family=$5 mark answer peer
  printf '%-50s# via ClusterIP %s\n' "\$ echo $payload | nc $service 9000" "$vip"
  mark=$(pod_peers_count "$pod")
  answer=$(echo "$payload" | in_pod sleep timeout 8 nc -N -w 5 "$vip" 9000 2>/dev/null)
  if [[ $answer == "hello $payload" ]]; then
    echo "$answer"
  else
    echo "(no answer${answer:+: got \"$answer\"})"
    FAILURES=$((FAILURES + 1))
  fi
  peer=$(pod_peers_since "$pod" "$mark" | awk '{ print $2 }' | paste -sd ' ')
  echo "    (${CLUSTER_POD_NAME[$pod]} saw the connection come from ${peer:-nobody}; sleep is $(pod_ip sleep "$family"))"
}

echo
echo "== the sleep pod (default/sleep: $(pod_ip sleep 4), $(pod_ip sleep 6)) calls each tcp-echo Service =="
show_nc dualstack tcp-echo.dual-stack fd00:10:96::f9fc echo-ds 6
show_nc dualstack tcp-echo.dual-stack 10.96.106.11 echo-ds 4
show_nc ipv4 tcp-echo.ipv4 10.96.104.229 echo-v4 4
show_nc ipv6 tcp-echo.ipv6 fd00:10:96::9c3a echo-v6 6

echo
echo "== dsproxy's view: one listener per Service port, every ClusterIP of the Service on it =="
show_dsproxy proxy-config listeners --port 9000
echo
show_dsproxy proxy-config listeners --port 9000 -o json
echo
show_dsproxy proxy-config endpoints --port 9000

echo
if ((FAILURES == 0)); then
  echo "== demo done: every Service answered on its IPv4 and IPv6 ClusterIPs; cleaning up =="
else
  echo "== demo: $FAILURES step(s) failed; cleaning up =="
fi
((FAILURES == 0))
