#!/usr/bin/env bash
# What one proxied connection costs each proxy, with 1, 4 and 16 clients at once: CPU time, context
# switches and system calls per connection, counted by `perf stat` on the proxy's process over a
# fixed number of connect+echo+close cycles (bench_load conn). Counts per connection do not
# depend on how fast a busy machine lets the run go, so this is the measure to use while others
# share the machine; the connection rate itself is bench/run.sh --conn-only's to say.
#
#   sudo bash bench/conn_cost.sh [--peers dsproxy,haproxy-splice,haproxy,nginx] [--clients "1 4 16"]
#                                [--family 4|6] [--conns 20000] [--record CLIENTS] [--dsproxy PATH]
#                                [--out DIR]
#
# Per peer and client count it prints one line: connections (two passes of CONNS: CPU, then
# system calls), errors, rate (noisy), task-clock microseconds per connection (user+kernel time
# of the proxy's threads: noisy under load; the kernel part includes the softirq work that lands
# in the proxy's system calls), context switches, system calls in total and by name. --record N also runs `perf record -g` (cpu-clock) on the
# proxy during the N-client load and keeps the report in DIR. Needs bench/run.sh to have
# installed the peers and built the load tools once (or run it with --no-install after
# `cmake --build build-bench`).

set -uo pipefail
BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$BENCH_DIR/.." && pwd)
PEERS_ARG=dsproxy,haproxy-splice,haproxy,nginx
CLIENTS="1 4 16"
FAMILY=4
CONNS=20000
RECORD=
OUT=
DSPROXY_BIN=${DSPROXY_BIN:-$REPO_DIR/build/dsproxy}
while (($#)); do
  case $1 in
    --peers) PEERS_ARG=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --family) FAMILY=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --record) RECORD=$2; shift ;;
    --dsproxy) DSPROXY_BIN=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "conn_cost: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() {
  echo "conn_cost: $*" >&2
  exit 1
}
[[ $(id -u) == 0 ]] || die "must run as root (network namespaces)"
[[ $FAMILY == 4 || $FAMILY == 6 ]] || die "--family is 4 or 6"
[[ $CONNS =~ ^[0-9]+$ ]] && ((CONNS >= 100 && CONNS <= 1000000)) || die "--conns must be 100-1000000"
for c in $CLIENTS; do [[ $c =~ ^[0-9]+$ ]] && ((c >= 1 && c <= 64)) || die "--clients takes 1-64"; done
command -v perf >/dev/null || die "perf missing (apt-get install linux-perf)"
BENCH_LOAD=$REPO_DIR/build-bench/bench_load
BENCH_ECHO=$REPO_DIR/build-bench/bench_echo
[[ -x $BENCH_LOAD && -x $BENCH_ECHO ]] || die "load tools not built: cmake -S bench -B build-bench && cmake --build build-bench"
[[ -x $DSPROXY_BIN ]] || die "$DSPROXY_BIN is not an executable"
IFS=, read -r -a PEERS <<<"$PEERS_ARG"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
BENCH_FD_LIMIT=$(ulimit -n)
BENCH_PEER_MAXCONN=$(((BENCH_FD_LIMIT - 600) / 2))
BENCH_TMP=$(mktemp -d /tmp/dsconn.XXXXXX)
OUT=${OUT:-$BENCH_TMP/out}
mkdir -p "$OUT"
BENCH_CONFIG_DIR=$OUT/configs
cp "$DSPROXY_BIN" "$BENCH_TMP/dsproxy" || die "cannot copy $DSPROXY_BIN"
DSPROXY_BIN=$BENCH_TMP/dsproxy
# shellcheck source=bench/lib/topo.sh
source "$BENCH_DIR/lib/topo.sh"
# shellcheck source=bench/lib/peers.sh
source "$BENCH_DIR/lib/peers.sh"
PERF_PID=
on_exit() {
  local status=$?
  set +e
  trap - EXIT INT TERM HUP
  [[ -n $PERF_PID ]] && kill -INT "$PERF_PID" 2>/dev/null && wait "$PERF_PID" 2>/dev/null
  [[ -n ${PEER_PIDS[*]:-} ]] && peer_stop
  topo_down
  [[ $OUT == "$BENCH_TMP"/* ]] || rm -rf -- "$BENCH_TMP"
  log "outputs in $OUT"
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
peer_write_configs "$BENCH_CONFIG_DIR"

# The events counted: CPU time, scheduling, and every system call by name (tracepoints, which
# cost the traced process little while only counting).
EVENTS=task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter,'syscalls:sys_enter_*'

# jnum FILTER JSON: a number from bench_load's result line (0 when there is none).
jnum() {
  local v
  v=$(jq -r "$1 // 0" <<<"$2" 2>/dev/null)
  [[ $v =~ ^[0-9.]+$ ]] || v=0
  echo "${v%%.*}"
}

# cost_line PEER CLIENTS CPUSTAT CPULOAD SYSSTAT SYSLOAD: one summary line from the two passes'
# perf stat CSV outputs and bench_load results.
cost_line() {
  local peer=$1 clients=$2 cpustat=$3 cpuload=$4 stat=$5 load=$6 cops ops errors rate
  cops=$(jnum .ops "$cpuload")
  ops=$(jnum .ops "$load")
  errors=$(($(jnum .errors "$cpuload") + $(jnum .errors "$load")))
  rate=$(jnum '.rate // 0 | floor' "$cpuload")
  awk -F, -v peer="$peer" -v c="$clients" -v cops="$cops" -v ops="$ops" -v err="$errors" -v rate="$rate" -v fam="$FAMILY" '
    FILENAME == ARGV[1] && $1 ~ /^[0-9.]+$/ {
      if ($3 == "task-clock") tc = $1            # milliseconds
      else if ($3 == "context-switches") cs = $1
      next
    }
    $1 ~ /^[0-9.]+$/ {
      v = $1; ev = $3
      if (ev == "raw_syscalls:sys_enter") sc = v
      else if (ev ~ /^syscalls:sys_enter_/ && v > 0) { sub(/^syscalls:sys_enter_/, "", ev); by[ev] = v }
    }
    END {
      if (ops <= 0 || cops <= 0) { printf "%-15s IPv%s %2d clients: no connections\n", peer, fam, c; exit }
      printf "%-15s IPv%s %2d clients: %d+%d conns %s errors %d/s | %.1f us CPU/conn, %.2f ctx-sw/conn | %.2f syscalls/conn:",
             peer, fam, c, cops, ops, err, rate, tc * 1000 / cops, cs / cops, sc / ops
      n = 0
      for (k in by) names[++n] = k
      # by count, largest first (insertion sort: a few dozen names)
      for (i = 2; i <= n; i++) { t = names[i]; j = i - 1; while (j > 0 && by[names[j]] < by[t]) { names[j + 1] = names[j]; j-- } names[j + 1] = t }
      for (i = 1; i <= n; i++) if (by[names[i]] / ops >= 0.01) printf " %s %.2f", names[i], by[names[i]] / ops
      printf "\n"
    }' "$cpustat" "$stat"
}

for peer in "${PEERS[@]}"; do
  # Fresh namespaces per peer: the capture rules a peer installs go with its node namespace.
  topo_up
  peer_start "$peer" || die "$peer: $PEER_ERROR"
  dst_var=PEER_DST$FAMILY
  dst=${!dst_var}
  # A first connection through the path, so a broken peer is reported instead of measured.
  res=$(in_client timeout 10 "$BENCH_LOAD" conn --addr "$dst" --port "$ECHO_PORT" --seconds 3 --max-ops 100 | tail -n 1)
  [[ $(jq -r '.ops // 0' <<<"$res" 2>/dev/null) -ge 1 ]] || die "no echo through $peer to $dst: $res"
  for clients in $CLIENTS; do
    name=$peer.ipv$FAMILY.c$clients
    # Two passes of CONNS connections each: the first counts CPU time only, the second counts
    # system calls, whose tracepoints add a little to each call (and so would penalise the proxy
    # that makes more of them in the CPU figure).
    perf stat -x, -e task-clock,context-switches -p "$PEER_MAIN_PID" -o "$OUT/$name.cpu.csv" &
    PERF_PID=$!
    sleep 0.5
    cpu_res=$(in_client timeout 120 "$BENCH_LOAD" conn --addr "$dst" --port "$ECHO_PORT" --seconds 100 \
      --max-ops "$CONNS" --threads "$clients" | tail -n 1)
    kill -INT "$PERF_PID" 2>/dev/null
    wait "$PERF_PID" 2>/dev/null
    perf stat -x, -e "$EVENTS" -p "$PEER_MAIN_PID" -o "$OUT/$name.stat.csv" &
    PERF_PID=$!
    if [[ $RECORD == "$clients" ]]; then
      perf record -e cpu-clock -F 999 -g -p "$PEER_MAIN_PID" -o "$OUT/$name.perf.data" >"$OUT/$name.record.log" 2>&1 &
      RECORD_PID=$!
    fi
    sleep 0.5 # perf attached
    res=$(in_client timeout 120 "$BENCH_LOAD" conn --addr "$dst" --port "$ECHO_PORT" --seconds 100 \
      --max-ops "$CONNS" --threads "$clients" | tail -n 1)
    kill -INT "$PERF_PID" 2>/dev/null
    wait "$PERF_PID" 2>/dev/null
    PERF_PID=
    if [[ $RECORD == "$clients" ]]; then
      kill -INT "$RECORD_PID" 2>/dev/null
      wait "$RECORD_PID" 2>/dev/null
      perf report -i "$OUT/$name.perf.data" --stdio --no-children --sort sym --percent-limit 0.7 -g none 2>/dev/null |
        grep -v '^$' >"$OUT/$name.report.txt"
      perf report -i "$OUT/$name.perf.data" --stdio --children --sort sym --percent-limit 2 -g none 2>/dev/null |
        grep -v '^$' >"$OUT/$name.children.txt"
    fi
    echo "$cpu_res" >"$OUT/$name.cpu-load.json"
    echo "$res" >"$OUT/$name.load.json"
    cost_line "$peer" "$clients" "$OUT/$name.cpu.csv" "$cpu_res" "$OUT/$name.stat.csv" "$res" | tee -a "$OUT/summary.txt"
  done
  peer_stop
  topo_down
done
