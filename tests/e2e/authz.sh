#!/usr/bin/env bash
# AuthorizationPolicy end to end (issue 12), plaintext: the built dsproxy with its real capture
# rules (`run --redirect`) in network namespaces, on the tcp-echo experiment's one-node cluster.
# Policies go into a copy of config/tcp-echo-experiment.yaml and are reloaded with SIGHUP.
#
#   authz.sh DSPROXY_BIN ECHO_BIN
#
# Clients: default/sleep (a pod of this node: its connections to pods are caught by the outbound
# capture, 15001) and default/remote-client-0 (a pod of another node: caught by the inbound
# capture, 15006). Without a peer identity only IP and port conditions can match, as in ztunnel.
# Checks: allow and deny by ipBlocks/ports/when in both families, namespace-wide, selector and
# mesh-wide (root namespace) policies, dry-run, proxy-config authz, the per-policy counters and
# the denial log line, and established connections closed by a new DENY after a reload while
# one it does not match keeps relaying. Needs root, iproute2, iptables and bash 5: without them
# it fails, never skips. Everything it creates is removed on exit.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

E2E_DEADLINE=${E2E_DEADLINE:-90}
CHECK_SHOW_DETAIL=1
suite_trap

suite_require

cluster_up
BASE_CONFIG=$CLUSTER_REPO_DIR/config/tcp-echo-experiment.yaml
DSPROXY_CONFIG=$CLUSTER_TMP/cluster.yaml
cp -- "$BASE_CONFIG" "$DSPROXY_CONFIG" || cluster_die "cannot copy the config"

ECHO_DS4=10.244.0.26 ECHO_DS6=fd00:10:244::1a ECHO_V4=10.244.0.19 ECHO_V6_4=10.244.0.24 ECHO_V6=fd00:10:244::18

# ---- helpers ---------------------------------------------------------------------------------
# probe FROM HOST PORT: one connection from pod FROM sending one line; prints ok, reset, refused,
# timeout or error. Bounded (4 s).
# shellcheck disable=SC2016 # expanded by the client's bash
PROBE='
err=$(mktemp); trap "rm -f \"\$err\"" EXIT
line= connected=0 rc=0
{ connected=1; printf "x\n" >&3 && IFS= read -r -t 2 line <&3; rc=$?; } 2>"$err" 3<>"/dev/tcp/$1/$2"
if ((!connected)); then
  if grep -q refused "$err"; then echo refused; elif grep -q "reset by peer" "$err"; then echo reset; else echo error; fi
elif [[ $line == "hello x" ]]; then echo ok
elif ((rc > 128)); then echo timeout
else echo reset
fi'
probe() { in_pod "$1" timeout 4 bash -c "$PROBE" _ "$2" "$3" || echo timeout; }
expect() {  # expect NAME WANT FROM HOST PORT
  local got
  got=$(probe "$3" "$4" "$5")
  [[ $got == "$2" ]]
  check "$1" $? "$3 -> $4 port $5: $got"
}

generation() { node_http_get 15000 /config_dump | grep -o '"generation":[0-9]*' | head -n 1 | cut -d: -f2; }
# set_policies FILE_CONTENT: the experiment plus these policies, swapped in by rename, SIGHUP,
# and a bounded wait (5 s) for the new generation.
set_policies() {
  local g0 g i
  g0=$(generation)
  { cat -- "$BASE_CONFIG"; printf '%s\n' "$1"; } >"$DSPROXY_CONFIG.new" && mv -- "$DSPROXY_CONFIG.new" "$DSPROXY_CONFIG"
  kill -HUP "$DSPROXY_PID" 2>/dev/null
  for ((i = 0; i < 50; i++)); do
    g=$(generation)
    [[ $g =~ ^[0-9]+$ && $g0 =~ ^[0-9]+$ ]] && ((g > g0)) && return 0
    sleep 0.1
  done
  fail "dsproxy took the reload within 5 s (generation ${g0:-?} -> ${g:-?})"
  return 1
}

POLICIES='---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-sleep, namespace: ipv4}
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        ipBlocks: ["10.244.0.5/32", "fd00:10:244::5/128"]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-9001, namespace: dual-stack}
spec:
  selector:
    matchLabels: {app: tcp-echo}
  action: DENY
  rules:
  - to:
    - operation:
        ports: ["9001"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-remote6, namespace: istio-system}
spec:
  action: DENY
  rules:
  - when:
    - key: source.ip
      values: ["fd00:10:244:1::/64"]
    - key: destination.ip
      values: ["fd00:10:244::18"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-deny-all
  namespace: ipv6
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - {}'

CUT_POLICY='---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cut-remote, namespace: dual-stack}
spec:
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["10.244.1.0/24"]'

# ---- start -----------------------------------------------------------------------------------
section "dsproxy run, no policy"
if start_dsproxy; then
  pass "dsproxy started with --redirect"
else
  fail "dsproxy started with --redirect"
  summary
  exit 1
fi
if in_time "baseline"; then
  expect "no policy: a remote pod reaches dual-stack/tcp-echo over IPv4 (inbound)" ok remote "$ECHO_DS4" 9000
  expect "no policy: a remote pod reaches dual-stack/tcp-echo over IPv6 (inbound)" ok remote "$ECHO_DS6" 9001
  expect "no policy: a local pod reaches ipv4/tcp-echo (outbound to a local pod)" ok sleep "$ECHO_V4" 9000
fi

section "policies"
if in_time "policies" && set_policies "$POLICIES"; then
  expect "namespace-wide ALLOW (ipv4): the allowed local pod gets in" ok sleep "$ECHO_V4" 9000
  expect "namespace-wide ALLOW (ipv4): a remote pod outside its ipBlocks is reset" reset remote "$ECHO_V4" 9000
  expect "selector DENY of port 9001 (dual-stack), IPv4" reset remote "$ECHO_DS4" 9001
  expect "selector DENY of port 9001 (dual-stack), IPv6" reset remote "$ECHO_DS6" 9001
  expect "selector DENY of port 9001 (dual-stack), local client too" reset sleep "$ECHO_DS6" 9001
  expect "selector DENY: port 9000 still open" ok remote "$ECHO_DS6" 9000
  expect "mesh-wide DENY (root namespace) by source.ip and destination.ip: IPv6 remote reset" reset remote "$ECHO_V6" 9000
  expect "mesh-wide DENY: the same pod over IPv4 is not matched" ok remote "$ECHO_V6_4" 9000
  expect "dry-run DENY of everything in ipv6 changes nothing" ok sleep "$ECHO_V6" 9000
  grep -q "dry-run: ipv6/dry-deny-all (DENY) matched" "$DSPROXY_LOG"
  check "dry-run: the log says what would have been denied" $?
  grep -q "denied by AuthorizationPolicy dual-stack/deny-9001 (DENY)" "$DSPROXY_LOG"
  check "the denial log line names the policy" $? "$(grep -m1 'authz:.*deny-9001' "$DSPROXY_LOG")"
  grep -q "none of the 1 ALLOW AuthorizationPolicy(ies) of ipv4/" "$DSPROXY_LOG"
  check "a default deny says no ALLOW policy matched" $?

  table=$(in_node timeout 5 "$DSPROXY_BIN" proxy-config authz 2>&1)
  while IFS= read -r l; do echo "    $l"; done <<<"$table"
  grep -Eq '^ipv4 +tcp-echo-[^ ]+ +10\.244\.0\.19,fd00:10:244::13 +ipv4/only-sleep +ALLOW +namespace' <<<"$table" &&
    grep -Eq '^dual-stack +tcp-echo-[^ ]+ .*dual-stack/deny-9001 +DENY +workload' <<<"$table" &&
    grep -Eq '^dual-stack +tcp-echo-[^ ]+ .*istio-system/mesh-deny-remote6 +DENY +mesh' <<<"$table" &&
    grep -Eq '^ipv6 +tcp-echo-[^ ]+ .*ipv6/dry-deny-all +DENY +namespace .*dry-run' <<<"$table" &&
    grep -Eq '^default +sleep-[^ ]+ .*istio-system/mesh-deny-remote6' <<<"$table"
  check "proxy-config authz lists the policies of each local workload" $?

  stats=$(node_http_get 15000 /stats)
  grep -Eq '"policy":"dual-stack/deny-9001","action":"DENY","dryRun":false,"allowed":0,"denied":[3-9]' <<<"$stats" &&
    grep -Eq '"policy":"ipv4/only-sleep","action":"ALLOW","dryRun":false,"allowed":[1-9]' <<<"$stats"
  check "/stats counts allowed and denied per policy" $? "$(grep -o '"authz":{"allowed":[0-9]*,"denied":[0-9]*' <<<"$stats")"
fi

section "a new DENY closes established connections it matches"
if in_time "revocation"; then
  held_connections remote "$ECHO_DS4" sleep "$ECHO_DS6" set_policies "$POLICIES"$'\n'"$CUT_POLICY"
  cut=$HELD_CUT keep=$HELD_KEEP
  [[ $cut == "first:hello one "* && $cut != *"second:hello two"* ]]
  check "the remote pod's established connection was closed by the new DENY" $? "$cut"
  [[ $keep == "first:hello one second:hello two:0 " ]]
  check "a connection the new DENY does not match keeps relaying" $? "$keep"
  grep -q "established connection closed after a policy change" "$DSPROXY_LOG" &&
    grep -q "dual-stack/cut-remote" "$DSPROXY_LOG"
  check "the log names the policy that closed it" $?
  line=
  for ((i = 0; i < 30; i++)); do  # access-log lines are flushed every second
    line=$(grep 'access connection complete' "$DSPROXY_LOG" | grep 'reason=denied_by_policy' |
      grep 'policy=dual-stack/cut-remote' | grep -v ' bytes_recv=0 ' | head -n 1)
    [[ -n $line ]] && break
    sleep 0.1
  done
  check "its access-log line says denied_by_policy and names the policy" "$([[ -n $line ]] && echo 0 || echo 1)"
  expect "new connections from the remote pod are reset too" reset remote "$ECHO_DS4" 9000
  grep -q '"revoked":[1-9]' <<<"$(node_http_get 15000 /stats)"
  check "/stats counts the revoked connection" $?
fi

section "policies removed"
if in_time "removed" && set_policies ""; then
  expect "without policies the remote pod reaches ipv4/tcp-echo again" ok remote "$ECHO_V4" 9000
  expect "without policies port 9001 is open again" ok remote "$ECHO_DS6" 9001
fi

section "stop"
stop_dsproxy
check "dsproxy exited cleanly on SIGTERM" $? "status ${DSPROXY_EXIT_STATUS:-?}"
summary
((FAILED == 0))
