#!/usr/bin/env bash
# The HBONE path's cost next to plaintext dsproxy's, in instructions and syscalls rather than
# wall-clock rates (which a shared, loaded 2-vCPU machine makes noise of). Same topology and
# config as bench/hbone.sh: client pod on node 1, server pod on node 2, both dsproxies with
# --workers 1. For each path (plaintext, hbone) and each tool:
#
#   callgrind  both dsproxies under valgrind --tool=callgrind; counters zeroed after warm-up
#              (callgrind_control -z), then CONNS sequential connect+echo+close (the HBONE
#              pool warm: only the stream is new), dumped; then BULK_MB through iperf3, dumped.
#              Prints user-space instructions per connection and per MB for each node, and
#              keeps the dumps (callgrind_annotate them for the functions).
#   strace     strace -c -f attached to each dsproxy for the same two loads: syscalls per
#              connection and per MB.
#   cpu        no tracer: each dsproxy's user and system CPU time (utime, stime from
#              /proc/<pid>/stat) for the same two loads, per 1000 connections and per GB (CPU
#              time, unlike a rate, barely moves when other processes share the cores).
#
#   bash bench/hbone_cost.sh [callgrind|strace|cpu|both|all]   (root; builds bench_load/bench_echo)
#   ("both": callgrind and strace; "all": the three)
#   env: CONNS (200), BULK_MB (200), PATHS ("plaintext hbone"), DSPROXY_BIN, OUT (dump directory)
# Not a test: it prints numbers, asserts nothing.

set -uo pipefail
BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=hbone_cost
# shellcheck source=bench/lib/common.sh
source "$BENCH_DIR/lib/common.sh"
DSPROXY_BIN=${DSPROXY_BIN:-$REPO_DIR/build/dsproxy}
ECHO_BIN=${ECHO_BIN:-$REPO_DIR/build/tests/dsproxy_test_echo}
TOOLS=${1:-both}
CONNS=${CONNS:-200}
BULK_MB=${BULK_MB:-200}
OUT=${OUT:-}
export DSPROXY_READY_TIMEOUT=${DSPROXY_READY_TIMEOUT:-60}

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
OUT=${OUT:-$CLUSTER_TMP}
mkdir -p "$OUT"

DSPROXY_CONFIG="$CLUSTER_TMP/bench.yaml"
# shellcheck disable=SC2016 # a literal $ in the pattern
sed -n '/^cat >"\$DSPROXY_CONFIG" <<.EOF.$/,/^EOF$/p' "$BENCH_DIR/hbone.sh" | sed '1d;$d' >"$DSPROXY_CONFIG"
[[ -s $DSPROXY_CONFIG ]] || cluster_die "no config from bench/hbone.sh"
(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$CLUSTER_TMP/ca.key" \
  -out "$CLUSTER_TMP/ca.crt" -days 2 -subj "/CN=bench root" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1) || cluster_die "openssl failed"

in_pod server iperf3 -s -D --logfile "$CLUSTER_TMP/iperf3.log" >/dev/null 2>&1 || cluster_die "iperf3 -s failed"
in_pod server "$BECHO" --listen 0.0.0.0:7000 --max-seconds 3600 >"$CLUSTER_TMP/becho.log" 2>&1 &
CLUSTER_BG_PIDS+=($!)
sleep 0.5

# The dsproxy process itself (the wrapper's child, under callgrind the same pid).
dsproxy_pid() { echo "${DSPROXY_NODE_PID[$1]}"; }

conn_load() {
  in_pod client "$LOAD" conn --addr 10.96.50.50 --port 7000 --seconds 600 --max-ops "$CONNS" | jq -r '"\(.ops) ops, \(.errors) errors"'
}
# Per MB divides by what iperf3 sent (all of which crossed both proxies), kept in $OUT/bulk_bytes.
bulk_load() {
  in_pod client iperf3 -c 10.96.50.50 -n "${BULK_MB}M" -J 2>/dev/null | jq -r '.end.sum_sent.bytes' >"$OUT/bulk_bytes"
  echo "$(cat "$OUT/bulk_bytes") bytes sent"
}
bulk_mb() { awk '{ printf "%.3f", $1 / 1048576 }' "$OUT/bulk_bytes"; }
warm() { in_pod client "$LOAD" conn --addr 10.96.50.50 --port 7000 --seconds 30 --max-ops 20 >/dev/null; }

cg_total() { awk '/^(summary|totals):/ { print $2; exit }' "$1"; }

run_callgrind() { # LABEL [dsproxy args]
  local label=$1 n
  shift
  export DSPROXY_NODE_WRAPPER="valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file=$OUT/cg.$label.%p"
  start_dsproxy_node node --workers 1 "$@" || cluster_die "dsproxy (node) did not start"
  start_dsproxy_node node2 --workers 1 "$@" || cluster_die "dsproxy (node2) did not start"
  unset DSPROXY_NODE_WRAPPER
  sleep 2
  warm
  for n in node node2; do callgrind_control -z "$(dsproxy_pid $n)" >/dev/null; done
  echo "$label conn: $(conn_load)"
  for n in node node2; do callgrind_control -d "conn" "$(dsproxy_pid $n)" >/dev/null; done
  for n in node node2; do callgrind_control -z "$(dsproxy_pid $n)" >/dev/null; done
  echo "$label bulk: $(bulk_load)"
  for n in node node2; do callgrind_control -d "bulk" "$(dsproxy_pid $n)" >/dev/null; done
  for n in node node2; do
    local pid; pid=$(dsproxy_pid $n)
    # Dumps are numbered in order: .1 after the connections, .2 after the bulk transfer.
    awk -v l="$label" -v n="$n" -v ir="$(cg_total "$OUT/cg.$label.$pid.1")" -v c="$CONNS" \
      -v b="$(cg_total "$OUT/cg.$label.$pid.2")" -v m="$(bulk_mb)" \
      'BEGIN { printf "%-9s %-5s instructions: %10.0f per connection, %10.0f per MB\n", l, n, ir / c, b / m }'
  done
  stop_dsproxy_node node
  stop_dsproxy_node node2
}

strace_window() { # OUTFILE-PREFIX LOADFN: strace -c -f on both proxies around LOADFN
  local prefix=$1 fn=$2 n pids=()
  for n in node node2; do
    strace -c -f -o "$prefix.$n" -p "$(dsproxy_pid $n)" 2>/dev/null &
    pids+=($!)
  done
  sleep 1
  "$fn"
  sleep 0.5
  kill -INT "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
}

strace_calls() { awk '$NF == "total" { print $(NF-2) + 0 }' "$1"; }

run_strace() { # LABEL [dsproxy args]
  local label=$1 n
  shift
  start_dsproxy_node node --workers 1 "$@" || cluster_die "dsproxy (node) did not start"
  start_dsproxy_node node2 --workers 1 "$@" || cluster_die "dsproxy (node2) did not start"
  sleep 1
  warm
  strace_window "$OUT/strace.$label.conn" conn_load
  strace_window "$OUT/strace.$label.bulk" bulk_load
  for n in node node2; do
    awk -v l="$label" -v n="$n" -v s="$(strace_calls "$OUT/strace.$label.conn.$n")" -v c="$CONNS" \
      -v b="$(strace_calls "$OUT/strace.$label.bulk.$n")" -v m="$(bulk_mb)" \
      'BEGIN { printf "%-9s %-5s syscalls: %8.1f per connection, %8.1f per MB\n", l, n, s / c, b / m }'
  done
  stop_dsproxy_node node
  stop_dsproxy_node node2
}

cpu_of() { awk '{ print $14, $15 }' "/proc/$(dsproxy_pid "$1")/stat"; }  # utime stime (ticks)

run_cpu() { # LABEL [dsproxy args]
  local label=$1 n hz
  hz=$(getconf CLK_TCK)
  shift
  start_dsproxy_node node --workers 1 "$@" || cluster_die "dsproxy (node) did not start"
  start_dsproxy_node node2 --workers 1 "$@" || cluster_die "dsproxy (node2) did not start"
  sleep 1
  warm
  declare -A c0 c1 b1
  for n in node node2; do c0[$n]=$(cpu_of $n); done
  echo "$label conn: $(conn_load)"
  for n in node node2; do c1[$n]=$(cpu_of $n); done
  echo "$label bulk: $(bulk_load)"
  for n in node node2; do b1[$n]=$(cpu_of $n); done
  for n in node node2; do
    # shellcheck disable=SC2086
    awk -v l="$label" -v n="$n" -v hz="$hz" -v c="$CONNS" -v m="$(bulk_mb)" -v a="${c0[$n]}" -v b="${c1[$n]}" \
      -v d="${b1[$n]}" 'BEGIN { split(a, x, " "); split(b, y, " "); split(d, z, " ");
        printf "%-9s %-5s CPU: user %6.3f s + sys %6.3f s per 1000 connections, user %6.3f s + sys %6.3f s per GB\n",
          l, n, (y[1] - x[1]) / hz * 1000 / c, (y[2] - x[2]) / hz * 1000 / c,
          (z[1] - y[1]) / hz * 1024 / m, (z[2] - y[2]) / hz * 1024 / m }'
  done
  stop_dsproxy_node node
  stop_dsproxy_node node2
}

HBONE_ARGS=(--ca-cert "$CLUSTER_TMP/ca.crt" --ca-key "$CLUSTER_TMP/ca.key")
for tool in strace callgrind cpu; do
  [[ $TOOLS == "$tool" || $TOOLS == all || ($TOOLS == both && $tool != cpu) ]] || continue
  for path in ${PATHS:-plaintext hbone}; do
    case $path in
      plaintext) "run_$tool" plaintext ;;
      hbone) "run_$tool" hbone "${HBONE_ARGS[@]}" ;;
    esac
  done
done
echo "dumps and strace tables: $OUT"
CLUSTER_KEEP_TMP=1
