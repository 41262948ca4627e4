#!/usr/bin/env bash
# What 10,000 AuthorizationPolicies in the cluster cost the connection rate (issue 12: "a
# benchmark with 10,000 policies in the cluster (ztunnel's own benchmark uses that figure) shows
# connection rate within 5 % of no policies"). Not a test: it prints numbers, asserts nothing.
#
#   sudo bash bench/authz_scale.sh                       # defaults: about 2.5 minutes
#   sudo AUTHZ_ROUNDS=7 AUTHZ_SECONDS=8 bash bench/authz_scale.sh     # a quiet machine
#
# Topology: tests/e2e/lib/cluster.sh's two nodes (network namespaces joined by a dual-stack
# underlay), each running dsproxy --workers 1 with a local-issuer CA:
#   kind-worker2   bench/server (ambient; bench_echo on 7000), the destination: authz is decided here
#   kind-worker    bench/client (ambient, sa client): HBONE, client -> node 1 -> tunnel -> node 2
#   (kind-worker3) legacy/client (not in the mesh, a pod of a node without dsproxy; its link is
#                  on kind-worker's namespace, which only forwards it): plaintext inbound to a
#                  local pod of node 2, the one proxy in its path
# Paths measured, each family: plaintext inbound and HBONE, bench_load conn (connect, 64-byte
# echo, close; AUTHZ_THREADS threads, AUTHZ_SECONDS s; HBONE with a warm pool: only the stream
# is new).
#
# Two configurations of the same cluster, both proxies restarted for every measurement round,
# alternated (none, 10k / 10k, none / ...) AUTHZ_ROUNDS times:
#   none  no AuthorizationPolicy
#   10k   10,000 policies: 9,990 in 999 other namespaces (10 each: ALLOW and DENY, half with
#         selectors, by principals, namespaces, ipBlocks of both families, ports, when), 7 in the
#         server's namespace selecting other apps, and 3 that select the server: an ALLOW of
#         both clients (by principal, and by ipBlocks for the plaintext one), a namespace-wide
#         DENY of port 9999, a mesh-wide DENY of the documentation blocks. Every measured
#         connection is allowed after evaluating all three.
# Prints, per path and family, the median connection rate and node 2's dsproxy CPU per
# connection (utime + stime from /proc: on a shared machine the rate swings with whatever else
# runs, the proxy's own CPU per connection much less), 10k / none of both, and every round's
# values. Then, if AUTHZ_MICRO=1 (default) and libbenchmark is installed, the per-decision cost
# from dsproxy_authz_bench (bench/tools/authz_bench.cpp, Google Benchmark).
#
# Settings (environment): AUTHZ_ROUNDS (3), AUTHZ_SECONDS (3), AUTHZ_THREADS (1),
# AUTHZ_POLICIES (10000), AUTHZ_PATHS ("plain hbone"), AUTHZ_FAMILIES ("4 6"), AUTHZ_MICRO (1),
# AUTHZ_QUIET_S (0: off; N: before each measurement wait up to N s for 90 % idle CPUs and log
# the idle share, bench/lib/measure.sh's quiet_wait), DSPROXY_BIN (build/dsproxy). Needs root,
# iproute2, iptables, ipset, openssl, jq, cmake and a C++ toolchain (the bench tools are built
# into build-bench/). Everything it creates is removed on exit, also on failure or Ctrl-C.

set -uo pipefail

BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=authz_scale
# shellcheck source=bench/lib/common.sh
source "$BENCH_DIR/lib/common.sh"
# shellcheck source=bench/lib/measure.sh
source "$BENCH_DIR/lib/measure.sh" # quiet_wait

ROUNDS=${AUTHZ_ROUNDS:-3}
SECONDS_PER=${AUTHZ_SECONDS:-3}
THREADS=${AUTHZ_THREADS:-1}
POLICIES=${AUTHZ_POLICIES:-10000}
PATHS=${AUTHZ_PATHS:-plain hbone}
FAMILIES=${AUTHZ_FAMILIES:-4 6}
MICRO=${AUTHZ_MICRO:-1}
QUIET_S=${AUTHZ_QUIET_S:-0}
case ${1:-} in
  -h | --help) sed -n '2,41p' "$0"; exit 0 ;;
  "") ;;
  *) die "no arguments (settings are environment variables; see --help)" ;;
esac
require_int AUTHZ_ROUNDS "$ROUNDS" 1 50
require_int AUTHZ_SECONDS "$SECONDS_PER" 1 120
require_int AUTHZ_THREADS "$THREADS" 1 16
require_int AUTHZ_POLICIES "$POLICIES" 10 100000
require_int AUTHZ_QUIET_S "$QUIET_S" 0 120
for p in $PATHS; do [[ $p == plain || $p == hbone ]] || die "AUTHZ_PATHS: plain and/or hbone, not '$p'"; done
for f in $FAMILIES; do [[ $f == 4 || $f == 6 ]] || die "AUTHZ_FAMILIES: 4 and/or 6, not '$f'"; done
require_root
require_commands ip iptables ipset openssl jq cmake awk

build_bench_tools bench_load bench_echo
WORK=$(mktemp -d /tmp/dsproxy-authz-scale.XXXXXX)
DSPROXY_BIN=$(private_copy "${DSPROXY_BIN:-$REPO_DIR/build/dsproxy}" "$WORK")
LOAD=$(private_copy "$BENCH_BUILD_DIR/bench_load" "$WORK")
BECHO=$(private_copy "$BENCH_BUILD_DIR/bench_echo" "$WORK")
ECHO_BIN=$BECHO # cluster_up checks that it is set; the server here runs bench_echo

CLUSTER_TMP=$WORK
# shellcheck source=tests/e2e/lib/cluster.sh
source "$REPO_DIR/tests/e2e/lib/cluster.sh"
cluster_trap
cluster_node_add node2 kind-worker2
cluster_pods_clear
cluster_pod_add client bench/client 10.244.0.5 fd00:10:244::5 vethclient 10.244.0.1
cluster_pod_add legacy legacy/client 10.244.0.8 fd00:10:244::8 vethlegacy 10.244.0.1
cluster_pod_add server bench/server 10.244.1.9 fd00:10:244:1::9 vethserver 10.244.1.1 node2
cluster_up
SERVER4=10.244.1.9 SERVER6=fd00:10:244:1::9 PORT=7000
# As bench/lib/topo.sh does, for the same reason: the clients close first, so at thousands of
# connections per second the default port range and 60 s of TIME_WAIT run out of ports within
# seconds (the rounds after the first then collapse to tens of connections per second); the
# nodes' upstream sockets take the client's address, so their range is disjoint from the
# clients'. Namespaces of this run only.
for pod in client legacy; do
  in_pod "$pod" sysctl -q -w net.ipv4.ip_local_port_range="1024 32767" net.ipv4.tcp_tw_reuse=1 ||
    die "cannot set the port sysctls in $pod"
done
for key in node node2; do
  in_node_of "$key" sysctl -q -w net.ipv4.ip_local_port_range="32768 65535" net.ipv4.tcp_tw_reuse=1 ||
    die "cannot set the port sysctls on $key"
done

# ---- the cluster, without and with the policies ------------------------------------------------
BASE=$WORK/base.yaml
cat >"$BASE" <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: bench, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: bench, labels: {app: client}}
spec: {nodeName: kind-worker, serviceAccountName: client}
status: {phase: Running, podIPs: [{ip: 10.244.0.5}, {ip: "fd00:10:244::5"}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: legacy, labels: {app: legacy}}
spec: {nodeName: kind-worker3, serviceAccountName: default}
status: {phase: Running, podIPs: [{ip: 10.244.0.8}, {ip: "fd00:10:244::8"}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server-0, namespace: bench, labels: {app: server}}
spec: {nodeName: kind-worker2, serviceAccountName: server}
status: {phase: Running, podIPs: [{ip: 10.244.1.9}, {ip: "fd00:10:244:1::9"}], conditions: [{type: Ready, status: "True"}]}
EOF
# The policies, generated (awk: no dependency). Namespaces ns-1 ... of 10 policies each, then 7
# in bench for other apps, then the 3 that select the server; POLICIES in all.
gen_policies() {
  awk -v total="$1" '
  function header(ns, name, action, sel) {
    printf "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: %s, namespace: %s}\nspec:\n", name, ns
    if (sel != "") printf "  selector:\n    matchLabels: {app: %s}\n", sel
    printf "  action: %s\n  rules:\n", action
  }
  BEGIN {
    other = total - 10
    for (i = 0; i < other; i++) {
      ns = "ns-" int(i / 10) + 1; k = i % 10
      sel = (k % 2) ? "app-" k : ""
      action = (k < 6) ? "ALLOW" : "DENY"
      header(ns, "policy-" k, action, sel)
      if (k % 5 == 0) printf "  - from:\n    - source:\n        principals: [\"cluster.local/ns/%s/sa/sa-%d\", \"cluster.local/ns/team-%d/*\"]\n", ns, k, i % 97
      else if (k % 5 == 1) printf "  - from:\n    - source:\n        namespaces: [\"team-%d\"]\n    to:\n    - operation:\n        ports: [\"%d\"]\n", i % 97, 8000 + k
      else if (k % 5 == 2) printf "  - from:\n    - source:\n        ipBlocks: [\"10.%d.%d.0/24\", \"fd00:%x::/64\"]\n", (i / 256) % 256, i % 256, i
      else if (k % 5 == 3) printf "  - when:\n    - key: destination.port\n      values: [\"%d\"]\n    - key: source.ip\n      notValues: [\"10.0.0.0/8\"]\n", 9000 + k
      else printf "  - to:\n    - operation:\n        notPorts: [\"%d\"]\n", 8000 + k
    }
    for (k = 0; k < 7; k++) {
      header("bench", "other-app-" k, (k % 2) ? "DENY" : "ALLOW", "other-" k)
      printf "  - from:\n    - source:\n        ipBlocks: [\"10.244.0.0/16\", \"fd00:10:244::/48\"]\n"
    }
    header("bench", "allow-clients", "ALLOW", "server")
    printf "  - from:\n    - source:\n        principals: [\"cluster.local/ns/bench/sa/client\"]\n"
    printf "  - from:\n    - source:\n        ipBlocks: [\"10.244.0.8/32\", \"fd00:10:244::8/128\"]\n"
    header("bench", "deny-9999", "DENY", "")
    printf "  - to:\n    - operation:\n        ports: [\"9999\"]\n"
    header("istio-system", "mesh-deny-doc-blocks", "DENY", "")
    printf "  - from:\n    - source:\n        ipBlocks: [\"192.0.2.0/24\", \"2001:db8::/32\"]\n"
  }'
}
CONFIG_none=$WORK/none.yaml
CONFIG_10k=$WORK/10k.yaml
cp -- "$BASE" "$CONFIG_none" || die "cannot write $CONFIG_none"
{ cat -- "$BASE"; gen_policies "$POLICIES"; } >"$CONFIG_10k" || die "cannot write $CONFIG_10k"
n=$(grep -c '^kind: AuthorizationPolicy' "$CONFIG_10k")
((n == POLICIES)) || die "generated $n policies, not $POLICIES"
log "configs: none $(wc -c <"$CONFIG_none") B, 10k $(wc -c <"$CONFIG_10k") B ($n policies)"

(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$WORK/ca.key" \
  -out "$WORK/ca.crt" -days 2 -subj "/CN=authz bench root" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1) || die "openssl failed"

in_pod server "$BECHO" --listen 0.0.0.0:$PORT --listen "[::]:$PORT" --max-seconds 3600 >"$WORK/becho.log" 2>&1 &
CLUSTER_BG_PIDS+=($!)
for ((i = 0; i < 50; i++)); do grep -q listening "$WORK/becho.log" && break; sleep 0.1; done
grep -q listening "$WORK/becho.log" || die "bench_echo did not start ($(cat "$WORK/becho.log"))"

# ---- measuring ----------------------------------------------------------------------------------
# start CONFIG-NAME: both proxies on that config, ready, the server's workload decided by node 2
# with the expected number of policies.
start() {
  case $1 in none) DSPROXY_CONFIG=$CONFIG_none ;; *) DSPROXY_CONFIG=$CONFIG_10k ;; esac
  local n=0 want=0 i t0
  [[ $1 == 10k ]] && want=$POLICIES
  t0=$(date +%s.%N)
  start_dsproxy_node node --workers 1 --ca-cert "$WORK/ca.crt" --ca-key "$WORK/ca.key" --drain-grace-ms 0 ||
    die "dsproxy (node) did not start (log $WORK/dsproxy-node.log)"
  start_dsproxy_node node2 --workers 1 --ca-cert "$WORK/ca.crt" --ca-key "$WORK/ca.key" --drain-grace-ms 0 ||
    die "dsproxy (node2) did not start (log $WORK/dsproxy-node2.log)"
  for ((i = 0; i < 100; i++)); do
    n=$(node_http_get_on node2 15000 /config_dump | sed -n '/^{/,$p' | jq -r '.authz.policyCount // empty' 2>/dev/null)
    if [[ $n == "$want" ]]; then
      log "$1: both proxies ready, node2 with $n policies, $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s after the start" \
        "(node2: $(grep -o 'config file read (start).*' "$WORK/dsproxy-node2.log" | tail -n 1);" \
        "VmRSS $(awk '/^VmRSS:/ { print $2, $3 }' "/proc/${DSPROXY_NODE_PID[node2]}/status" 2>/dev/null))"
      return 0
    fi
    sleep 0.1
  done
  die "node2 does not hold $want policies after 10 s (it says '${n:-nothing}')"
}
stop() {
  stop_dsproxy_node node
  stop_dsproxy_node node2
}
# client_of PATH: the pod that makes the connections.
client_of() { [[ $1 == hbone ]] && echo client || echo legacy; }
addr_of() { [[ $1 == 6 ]] && echo "$SERVER6" || echo "$SERVER4"; }
# warm PATH FAMILY: until one connection is echoed (the HBONE client needs its certificate and
# the pool its connection), bounded (10 s).
warm() {
  local i res
  for ((i = 0; i < 20; i++)); do
    res=$(in_pod "$(client_of "$1")" timeout 5 "$LOAD" conn --addr "$(addr_of "$2")" --port $PORT --seconds 0.3 \
      --max-ops 200 2>/dev/null | tail -n 1)
    [[ $(jq -r '.ops // 0' <<<"$res" 2>/dev/null) -gt 0 && $(jq -r '.errors // 1' <<<"$res" 2>/dev/null) == 0 ]] && return 0
    sleep 0.5
  done
  die "no connection through the $1 path over IPv$2 after 10 s (last: $res)"
}
# measure PATH FAMILY: "rate errors ops node2_cpu_us_per_connection"
measure() {
  local res c0 c1
  c0=$(proc_ticks "${DSPROXY_NODE_PID[node2]}")
  res=$(in_pod "$(client_of "$1")" timeout $((SECONDS_PER + 30)) "$LOAD" conn --addr "$(addr_of "$2")" --port $PORT \
    --seconds "$SECONDS_PER" --max-ops 4000000 --threads "$THREADS" 2>>"$WORK/load.err" | tail -n 1)
  c1=$(proc_ticks "${DSPROXY_NODE_PID[node2]}")
  jq -r --argjson ticks $((c1 - c0)) --argjson hz "$CLK_TCK" \
    '"\(.rate) \(.errors) \(.ops) \(if .ops > 0 then ($ticks / $hz * 1e6 / .ops * 10 | round / 10) else 0 end)"' \
    <<<"$res" 2>/dev/null || echo "0 1 0 0"
}

declare -A rates=() cpus=()
errors=0
started=$SECONDS
for ((r = 0; r < ROUNDS; r++)); do
  order=(none 10k)
  ((r % 2)) && order=(10k none)
  for config in "${order[@]}"; do
    start "$config"
    for path in $PATHS; do
      for family in $FAMILIES; do
        warm "$path" "$family"
        quiet=
        if ((QUIET_S)); then
          BENCH_QUIET_IDLE=90 BENCH_QUIET_MAX_S=$QUIET_S quiet_wait
          quiet=", CPUs ${Q_IDLE} % idle before it (waited ${Q_WAITED} s, quiet: $Q_QUIET)"
        fi
        read -r rate err ops cpu < <(measure "$path" "$family")
        log "round $((r + 1)) $config $path IPv$family: $rate connections/s, node2 dsproxy $cpu µs CPU/connection, $ops connections, $err errors$quiet"
        rates[$config.$path.$family]+="$rate "
        cpus[$config.$path.$family]+="$cpu "
        errors=$((errors + ${err:-1}))
      done
    done
    stats=$(node_http_get_on node2 15000 /stats)
    denied=$(grep -o '"denied":[0-9]*' <<<"$stats" | head -n 1 | cut -d: -f2)
    [[ ${denied:-0} == 0 ]] || log "WARNING: node2 denied ${denied} connections (the measured ones should all be allowed)"
    if [[ $config == 10k ]]; then # the measured connections were decided with the policies
      allowed=$(grep -o '"policy":"bench/allow-clients","action":"ALLOW","dryRun":false,"allowed":[0-9]*' <<<"$stats" |
        sed 's/.*"allowed"://')
      ((${allowed:-0} > 0)) || die "node2 counted no connection allowed by bench/allow-clients: the policies were not applied"
      log "node2: ${allowed} connections allowed by bench/allow-clients (of the 3 policies that select the server)"
    fi
    stop
  done
done

echo
echo "## Connection rate with $POLICIES AuthorizationPolicies in the cluster vs none (bench_load conn, $THREADS thread(s), ${SECONDS_PER} s; median of $ROUNDS interleaved rounds)"
echo
echo "Destination: a pod of node 2 selected by 3 of the policies; plaintext = inbound to it (one proxy in the path), HBONE = node 1 -> node 2 tunnel (two proxies). CPU = node 2's dsproxy (where the decision is made), utime + stime per connection."
echo
echo "| path | family | what | none | $POLICIES policies | $POLICIES / none | rounds none | rounds $POLICIES |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for path in $PATHS; do
  for family in $FAMILIES; do
    k=$path.$family
    a=$(median <<<"${rates[none.$k]}") b=$(median <<<"${rates[10k.$k]}")
    printf '| %s | IPv%s | connections/s | %.0f | %.0f | %s | %s| %s|\n' "$path" "$family" "$a" "$b" "$(ratio "$b" "$a")" \
      "${rates[none.$k]}" "${rates[10k.$k]}"
    a=$(median <<<"${cpus[none.$k]}") b=$(median <<<"${cpus[10k.$k]}")
    printf '| %s | IPv%s | node 2 CPU µs/connection | %.1f | %.1f | %s | %s| %s|\n' "$path" "$family" "$a" "$b" "$(ratio "$b" "$a")" \
      "${cpus[none.$k]}" "${cpus[10k.$k]}"
  done
done
echo
echo "connection errors: $errors; $((SECONDS - started)) s of measuring; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"

# ---- per decision (Google Benchmark) -----------------------------------------------------------
if ((MICRO)); then
  echo
  if [[ -f /usr/include/benchmark/benchmark.h ]] &&
    cmake --build "$REPO_DIR/build" -j2 --target dsproxy_authz_bench >"$WORK/micro-build.log" 2>&1; then
    echo "## Per decision (build/tests/dsproxy_authz_bench: workload lookup + decide, CPU ns)"
    echo
    "$REPO_DIR/build/tests/dsproxy_authz_bench" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
      2>/dev/null | grep -E '^(decide|build_index).*_median' |
      awk '{ printf "| %s | %s %s |\n", $1, $4, $5 }' | { echo "| benchmark | CPU |"; echo "| --- | --- |"; cat; }
  else
    echo "(per-decision benchmark skipped: libbenchmark-dev missing or dsproxy_authz_bench did not build, see $WORK/micro-build.log)"
  fi
fi
