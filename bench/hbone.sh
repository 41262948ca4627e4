#!/usr/bin/env bash
# The HBONE path next to plaintext dsproxy, in one run (issue 11): a client pod on node 1, a
# server pod on node 2 (tests/e2e/lib/cluster.sh's two-node topology: node namespaces joined by
# a dual-stack underlay bridge), both nodes running dsproxy with --workers 1:
#
#   hbone      client -> node 1 dsproxy -> TLS 1.3 + HTTP/2 CONNECT -> node 2 dsproxy -> server
#   plaintext  client -> node 1 dsproxy -> TCP (client's address) -> node 2 dsproxy -> server
#
# For each: bulk throughput (iperf3, 1 stream, BULK_S seconds) and the two proxies' CPU time
# during it (utime+stime from /proc, so CPU seconds per Gbit), sequential connect+echo+close
# per second (bench_load conn: the HBONE pool is warm, only the stream is new), and round-trip
# p50/p99 on one connection (bench_load rtt). Not a test: it prints numbers, asserts nothing.
# Everything shares the machine (both proxies, both ends).
#
#   bash bench/hbone.sh            (root; builds bench_load/bench_echo into build-bench/)

set -uo pipefail
BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=hbone
# shellcheck source=bench/lib/common.sh
source "$BENCH_DIR/lib/common.sh"
DSPROXY_BIN=${DSPROXY_BIN:-$REPO_DIR/build/dsproxy}
ECHO_BIN=${ECHO_BIN:-$REPO_DIR/build/tests/dsproxy_test_echo}
BULK_S=${BULK_S:-5}
CONN_S=${CONN_S:-5}

build_bench_tools bench_load bench_echo
LOAD=$BENCH_BUILD_DIR/bench_load
BECHO=$BENCH_BUILD_DIR/bench_echo

# shellcheck source=tests/e2e/lib/cluster.sh
source "$REPO_DIR/tests/e2e/lib/cluster.sh"
cluster_trap
cluster_node_add node2 kind-worker2
cluster_pods_clear
cluster_pod_add client default/client 10.244.0.5 fd00:10:244::5 vethclient 10.244.0.1
cluster_pod_add server default/server 10.244.1.9 fd00:10:244:1::9 vethserver 10.244.1.1 node2
cluster_up

DSPROXY_CONFIG="$CLUSTER_TMP/bench.yaml"
cat >"$DSPROXY_CONFIG" <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec: {nodeName: kind-worker, serviceAccountName: client}
status: {podIPs: [{ip: 10.244.0.5}, {ip: "fd00:10:244::5"}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default, labels: {app: server}}
spec: {nodeName: kind-worker2, serviceAccountName: server}
status: {podIPs: [{ip: 10.244.1.9}, {ip: "fd00:10:244:1::9"}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: default}
spec:
  clusterIP: 10.96.50.50
  clusterIPs: [10.96.50.50]
  ipFamilies: [IPv4]
  ports: [{name: iperf, port: 5201, targetPort: 5201}, {name: echo, port: 7000, targetPort: 7000}]
  selector: {app: server}
EOF
(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$CLUSTER_TMP/ca.key" \
  -out "$CLUSTER_TMP/ca.crt" -days 2 -subj "/CN=bench root" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1) || cluster_die "openssl failed"

# Each connect+echo+close leaves a TIME_WAIT behind, in the client pod (it closes first) and in
# both nodes (their upstream sockets, bound to the client's address with port 0, send the first
# FIN when the client's arrives). connect() takes its ephemeral ports from one half of the range
# (about 14,000): a 5 s run at 2,800 connections/s fills it, and from then on every connect()
# scans the whole range in the kernel (measured: 5-6 ms per connect, the second phase's rate
# falling from ~1,800/s to ~170/s, whichever phase came second). Reusing TIME_WAIT ports older
# than a second (tcp_tw_reuse=1, per namespace: the bench's own) keeps both phases on the same
# footing.
for ns in "$(node_ns node)" "$(node_ns node2)" "$(pod_ns client)"; do
  ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1 || cluster_die "tcp_tw_reuse in $ns"
done

in_pod server iperf3 -s -D --logfile "$CLUSTER_TMP/iperf3.log" >/dev/null 2>&1 || cluster_die "iperf3 -s failed"
in_pod server "$BECHO" --listen 0.0.0.0:7000 --max-seconds 600 >"$CLUSTER_TMP/becho.log" 2>&1 &
CLUSTER_BG_PIDS+=($!)
sleep 0.5

measure() { # measure LABEL [dsproxy args...]
  local label=$1 t0 t1 bulk gbps cpu
  shift
  start_dsproxy_node node --workers 1 "$@" || cluster_die "dsproxy (node) did not start"
  start_dsproxy_node node2 --workers 1 "$@" || cluster_die "dsproxy (node2) did not start"
  sleep 1  # certificates
  # Warm-up (and the pool's connection, for HBONE).
  in_pod client "$LOAD" rtt --addr 10.96.50.50 --port 7000 --seconds 0.5 >/dev/null
  t0=$(proc_ticks "${DSPROXY_NODE_PID[@]}")
  bulk=$(in_pod client iperf3 -c 10.96.50.50 -t "$BULK_S" -J 2>/dev/null)
  t1=$(proc_ticks "${DSPROXY_NODE_PID[@]}")
  gbps=$(echo "$bulk" | jq '.end.sum_received.bits_per_second / 1e9')
  cpu=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$BULK_S" -v g="$gbps" \
    'BEGIN { printf "%.2f", (t / hz) / (g * s) }')
  local conn rtt
  conn=$(in_pod client "$LOAD" conn --addr 10.96.50.50 --port 7000 --seconds "$CONN_S")
  local outer
  outer=$(in_node_of node ss -Htn state established '( dport = :15008 )' | wc -l)
  rtt=$(in_pod client "$LOAD" rtt --addr 10.96.50.50 --port 7000 --seconds "$CONN_S")
  printf '%-10s bulk %6.2f Gbit/s  CPU %s s per Gbit  conn %s/s (p50 %s us, p99 %s us; %s outer connections)  rtt p50 %s us p99 %s us\n' \
    "$label" "$gbps" "$cpu" "$(echo "$conn" | jq -r '.rate | floor')" "$(echo "$conn" | jq -r '.p50_us')" \
    "$(echo "$conn" | jq -r '.p99_us')" "$outer" "$(echo "$rtt" | jq -r '.p50_us')" "$(echo "$rtt" | jq -r '.p99_us')"
  echo "$label conn: $conn" >>"$CLUSTER_TMP/raw.txt"
  echo "$label rtt: $rtt" >>"$CLUSTER_TMP/raw.txt"
  stop_dsproxy_node node
  stop_dsproxy_node node2
}

measure plaintext
measure hbone --ca-cert "$CLUSTER_TMP/ca.crt" --ca-key "$CLUSTER_TMP/ca.key"
echo "raw bench_load output: $CLUSTER_TMP/raw.txt"
CLUSTER_KEEP_TMP=1
