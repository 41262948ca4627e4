#!/usr/bin/env bash
# Profiles one proxy of the benchmark under bulk and under connection-rate load, on the same
# topology as bench/run.sh (bench/lib/topo.sh), and prints where its CPU time goes.
#
#   sudo bash bench/profile.sh [--peer dsproxy|haproxy-splice|haproxy|nginx] [--seconds 8]
#                              [--family 4|6] [--callgrind] [--dsproxy PATH] [--out DIR]
#
# perf: `perf record` with the cpu-clock software event (this VM has no hardware counters:
# `perf stat -e instructions true` says <not supported>), user and kernel stacks of the peer's
# process only, while iperf3 (1 stream) and then the 4-client connect+echo+close loop run from
# the client namespace. Reports: perf report --no-children, by symbol, above 0.5 %.
# --callgrind (dsproxy only): the same two loads, shorter, with dsproxy under
# valgrind --tool=callgrind; instruction counts per function (user space only, repeatable).
# Needs bench/run.sh to have installed the packages and built the tools once.

set -uo pipefail
BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=profile
# shellcheck source=bench/lib/common.sh
source "$BENCH_DIR/lib/common.sh"
PEER=dsproxy
SECONDS_LOAD=8
FAMILY=4
CALLGRIND=0
OUT=
DSPROXY_BIN=${DSPROXY_BIN:-$REPO_DIR/build/dsproxy}
while (($#)); do
  case $1 in
    --peer) PEER=$2; shift ;;
    --seconds) SECONDS_LOAD=$2; shift ;;
    --family) FAMILY=$2; shift ;;
    --callgrind) CALLGRIND=1 ;;
    --dsproxy) DSPROXY_BIN=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "profile: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
require_root
((SECONDS_LOAD >= 1 && SECONDS_LOAD <= 60)) || die "--seconds must be 1-60"
command -v perf >/dev/null || die "perf missing: apt-get install linux-perf"
BENCH_LOAD=$BENCH_BUILD_DIR/bench_load
BENCH_ECHO=$BENCH_BUILD_DIR/bench_echo
[[ -x $BENCH_LOAD && -x $BENCH_ECHO ]] || die "load tools not built: run bench/run.sh --quick once"
[[ -x $DSPROXY_BIN ]] || die "$DSPROXY_BIN is not an executable"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
BENCH_FD_LIMIT=$(ulimit -n)
BENCH_PEER_MAXCONN=$(((BENCH_FD_LIMIT - 600) / 2))
BENCH_TMP=$(mktemp -d /tmp/dsprof.XXXXXX)
OUT=${OUT:-$BENCH_TMP/out}
mkdir -p "$OUT"
BENCH_CONFIG_DIR=$BENCH_TMP/configs
# shellcheck source=bench/lib/topo.sh
source "$BENCH_DIR/lib/topo.sh"
# shellcheck source=bench/lib/peers.sh
source "$BENCH_DIR/lib/peers.sh"
on_exit() {
  local status=$?
  set +e
  trap - EXIT INT TERM HUP
  [[ -n ${PERF_PID:-} ]] && kill -INT "$PERF_PID" 2>/dev/null && wait "$PERF_PID" 2>/dev/null
  [[ -n ${PEER_PIDS[*]:-} ]] && peer_stop
  topo_down
  # The scratch directory goes unless it holds the outputs (no --out given).
  [[ $OUT == "$BENCH_TMP"/* ]] || rm -rf -- "$BENCH_TMP"
  log "profiles in $OUT"
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
peer_write_configs "$BENCH_CONFIG_DIR"

dst_for() { if [[ $FAMILY == 4 ]]; then echo "$1"; else echo "$2"; fi; }

run_bulk() {
  in_client timeout $((SECONDS_LOAD + 20)) iperf3 -c "$1" -p "$IPERF_PORT" -t "$SECONDS_LOAD" -P 1 \
    --connect-timeout 3000 | tail -n 3 | head -n 1
}
run_conn() {
  in_client timeout $((SECONDS_LOAD + 20)) "$BENCH_LOAD" conn --addr "$1" --port "$ECHO_PORT" \
    --seconds "$SECONDS_LOAD" --threads 4 --max-ops 4000000
}

# perf on the running peer while LOAD runs: perf_during NAME LOADFN DST
perf_during() {
  local name=$1 fn=$2 dst=$3
  perf record -e cpu-clock -F 1999 -g -p "$PEER_MAIN_PID" -o "$OUT/$name.perf.data" \
    -- sleep $((SECONDS_LOAD + 1)) >"$OUT/$name.perf.log" 2>&1 &
  PERF_PID=$!
  sleep 0.3
  "$fn" "$dst" | tee "$OUT/$name.load.txt"
  wait "$PERF_PID"
  PERF_PID=
  perf report -i "$OUT/$name.perf.data" --stdio --no-children --sort sym --percent-limit 0.5 -g none \
    2>/dev/null | grep -v '^$' >"$OUT/$name.report.txt"
  perf report -i "$OUT/$name.perf.data" --stdio --no-children --sort dso --percent-limit 0.5 -g none \
    2>/dev/null | grep -v '^$' >"$OUT/$name.dso.txt"
  echo "== $PEER, $name, IPv$FAMILY: by shared object"
  grep -v '^#' "$OUT/$name.dso.txt" | head -n 8
  echo "== $PEER, $name, IPv$FAMILY: top symbols (self time)"
  grep -v '^#' "$OUT/$name.report.txt" | head -n 30
}

topo_up
peer_start "$PEER" || die "$PEER: $PEER_ERROR"
DST=$(dst_for "$PEER_DST4" "$PEER_DST6")
log "$PEER (pid $PEER_MAIN_PID) up; perf under bulk"
perf_during bulk run_bulk "$DST"
log "perf under 4-client connection rate"
perf_during conn run_conn "$DST"

# System calls per proxied connection: strace -c over exactly SYSCALL_CONNS sequential
# connect+echo+close (strace slows the peer down; only the counts matter here).
if command -v strace >/dev/null; then
  SYSCALL_CONNS=2000
  log "strace -c over $SYSCALL_CONNS connections"
  strace -f -c -o "$OUT/syscalls.txt" -p "$PEER_MAIN_PID" &
  STRACE_PID=$!
  sleep 1
  in_client timeout 120 "$BENCH_LOAD" conn --addr "$DST" --port "$ECHO_PORT" --seconds 60 --threads 1 \
    --max-ops "$SYSCALL_CONNS" >"$OUT/syscalls.load.txt"
  sleep 0.5
  kill -INT "$STRACE_PID" 2>/dev/null
  wait "$STRACE_PID" 2>/dev/null
  echo "== $PEER: system calls per connection ($SYSCALL_CONNS connections, $(jq -r .errors "$OUT/syscalls.load.txt") errors)"
  awk -v n="$SYSCALL_CONNS" '$1 ~ /^[0-9.]+$/ && NF >= 5 { calls = $4; name = $NF; if (name != "total") printf "  %-14s %6.2f\n", name, calls / n; else total = calls }
    END { printf "  %-14s %6.2f\n", "total", total / n }' "$OUT/syscalls.txt"
fi
peer_stop

if ((CALLGRIND)) && [[ $PEER == dsproxy ]]; then
  log "callgrind: dsproxy under valgrind (slow: the loads are short)"
  ip netns exec "$(ns_node)" valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.%p" \
    "$DSPROXY_BIN" run --config "$BENCH_CONFIG_DIR/dsproxy-cluster.yaml" --node "$BENCH_NODE_NAME" \
    --redirect --workers 1 >"$OUT/callgrind.log" 2>&1 &
  PEER_MAIN_PID=$!
  PEER_PIDS=("$PEER_MAIN_PID")
  for ((i = 0; i < 300; i++)); do
    [[ $(node_http_get 15021 /healthz/ready | head -n 1) == "HTTP/1."?" 200"* ]] && break
    sleep 0.1
  done
  in_client timeout 60 "$BENCH_LOAD" conn --addr "$(dst_for "$SERVER_IP4" "$SERVER_IP6")" --port "$ECHO_PORT" \
    --seconds 5 --threads 1 --max-ops 2000 | tee "$OUT/callgrind.conn.txt"
  in_client timeout 60 iperf3 -c "$(dst_for "$SERVER_IP4" "$SERVER_IP6")" -p "$IPERF_PORT" -n 1G \
    --connect-timeout 5000 | tail -n 3 | head -n 1 | tee "$OUT/callgrind.bulk.txt"
  peer_stop
  for f in "$OUT"/callgrind.out.*; do
    callgrind_annotate --inclusive=no "$f" 2>/dev/null | head -n 45 >"$f.txt"
    echo "== callgrind (user space, instructions, self): $f"
    cat "$f.txt"
  done
fi
