#!/usr/bin/env bash
# What do the access log and the metrics cost per connection? (issue 13: "the connection rate with
# metrics and access log on (json) stays within 3 % of both off, in the same run".) Not a test:
# it prints numbers and asserts nothing about them.
#
#   sudo bash bench/telemetry_cost.sh [--rounds 40] [--seconds 2] [--threads T] [--cpus P:L|none]
#                                     [--method simultaneous|alternate|captured] [--aa] [--no-install]
#   sudo bash bench/telemetry_cost.sh --callgrind N    (user-space instructions per connection)
#   sudo bash bench/telemetry_cost.sh --syscalls N     (system calls per connection, strace -c)
#
# On bench/run.sh's client / node / server namespaces (bench/lib/topo.sh), the client opens
# connections (bench_load conn: connect, 64-byte echo, close; --threads client threads) through
# dsproxy --workers 1 to the tcp-echo Service's ClusterIP, so every connection is routed to a
# Service and named (pods, workloads, Service). Two dsproxy configurations:
#   off   --access-log off --metrics-port 0   (no record is built at all)
#   on    --access-log json, metrics on        (scraped at the end, to check the counts)
# TELEMETRY_ON_ARGS replaces the "on" arguments (e.g. "--access-log off": metrics alone); --aa
# makes "on" the same as "off", to see the method's own resolution (an A/A test: the paired ratios
# should centre on 1.000, and their spread is what the A/B comparison can resolve).
# dsproxy's stderr (the access log, the process log) goes to a pipe read by `cat` into a file, as
# a container runtime reads it.
#
# Method, made to resolve a few per cent on a machine whose throughput drifts by ±15 % between
# runs and swings by more while others build on it. By default (--method simultaneous) both
# configurations run AT THE SAME TIME, as two dsproxy processes without capture rules, each with a
# --forward listener on the node's address (ports 17001 and 17002) whose connections are routed
# as if captured on their way to the ClusterIP (the client's pod is named as the source, the
# Service and its endpoint as the destination; only the TPROXY capture and the transparent
# upstream bind, the same for both, are left out), and both are loaded at the same time, each by
# its own bench_load (--threads each, default 2): R rounds of S seconds per family, and whatever
# else the machine does in those seconds, both see it. Both run on the same pinned CPU: when it
# is saturated each gets half of it, so the rates compare the costs directly.
# --method alternate: the same two processes loaded in turn, one window each per round and
# family, in alternating order (off, on / on, off), 4 threads.
# --method captured measures the capture path itself: one dsproxy with --redirect, restarted
# for each configuration, R rounds of (off, on) or (on, off), both families per process, a 0.5 s
# warm-up before each window (slower: about R x (4 S + 5) s, so use fewer rounds).
# What is compared is, per round, the PAIRED ratio on/off (of the connection rate, and of the
# proxy's CPU time per connection); the report gives the median of the R ratios, their
# interquartile range, and a distribution-free 95 % confidence interval of that median (order
# statistics of the binomial), and says whether the interval lies within 3 %.
# dsproxy is pinned to one CPU (`taskset`) and the load generator, the echo server and the log
# readers to the others (--cpus PROXY:LOAD, default the last CPU : the rest; `none` pins nothing),
# so the scheduler does not move them around each other.
# CPU per connection is the sum of the on-CPU time of dsproxy's threads (/proc/PID/task/*/schedstat,
# nanoseconds, user + system) over the window divided by its connections: the cost itself, and
# less noisy than the rate (which also moves with the client's and the server's share of the
# machine). Takes about R x 2 x S seconds plus 30 s of set-up: the default 40 x 2 s, about 3
# minutes (alternate: R x 4 x S).
#
# --callgrind N: instead, dsproxy runs under valgrind --tool=callgrind and the client makes N
# connections per configuration and family (1 thread); prints the user-space instructions the
# proxy executed per connection (counters zeroed after the warm-up, dumped after the load): a
# count that does not move with the machine's load. The kernel's share is not in it.
# --syscalls N: `strace -f -c` attaches to dsproxy (--redirect) after a warm-up of 200 connections
# and counts while the client makes N connections per configuration and family; prints the
# system calls per connection, by call, of each configuration.
#
# Needs root, cmake and a C++ toolchain (builds dsproxy and the bench tools if missing), iptables,
# ipset, jq, iperf3 (topo.sh's server; installed unless --no-install), taskset. Everything it
# creates is removed on exit, also on failure or Ctrl-C.

set -uo pipefail

BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=telemetry_cost
# shellcheck source=bench/lib/common.sh
source "$BENCH_DIR/lib/common.sh"
BUILD_DIR=${BUILD_DIR:-$REPO_DIR/build}

ROUNDS=40
SECONDS_PER=2
METHOD=simultaneous
THREADS=
CPUS=auto
INSTALL=1
CALLGRIND=0
SYSCALLS=0
AA=0
while (($#)); do
  case $1 in
    --callgrind) CALLGRIND=$2; shift ;;
    --syscalls) SYSCALLS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --seconds) SECONDS_PER=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --cpus) CPUS=$2; shift ;;
    --aa) AA=1 ;;
    --method) METHOD=$2; shift ;;
    --no-install) INSTALL=0 ;;
    -h | --help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
require_root "network namespaces, iptables"
require_int --rounds "$ROUNDS" 2 60
require_int --seconds "$SECONDS_PER" 1 60
case $METHOD in
  simultaneous) THREADS=${THREADS:-2} ;;
  alternate | captured) THREADS=${THREADS:-4} ;;
  *) die "--method must be simultaneous, alternate or captured" ;;
esac
require_int --threads "$THREADS" 1 16
require_int --callgrind "$CALLGRIND" 0 100000
require_int --syscalls "$SYSCALLS" 0 100000
((CALLGRIND == 0)) || command -v callgrind_control >/dev/null 2>&1 || die "--callgrind needs valgrind"
((SYSCALLS == 0)) || command -v strace >/dev/null 2>&1 || die "--syscalls needs strace"

OFF_ARGS="--access-log off --metrics-port 0"
ON_ARGS=${TELEMETRY_ON_ARGS:---access-log json}
((AA)) && ON_ARGS=$OFF_ARGS

# --cpus: PROXY:LOAD as taskset lists ("1:0", "3:0-2"), auto (the last CPU : the others), none.
NCPU=$(nproc)
PROXY_CPUS=
LOAD_CPUS=
case $CPUS in
  none) ;;
  auto) if ((NCPU >= 2)); then PROXY_CPUS=$((NCPU - 1)); LOAD_CPUS=0-$((NCPU - 2)); fi ;;
  *:*) PROXY_CPUS=${CPUS%%:*}; LOAD_CPUS=${CPUS#*:} ;;
  *) die "--cpus must be PROXY:LOAD, auto or none" ;;
esac
[[ -z $PROXY_CPUS ]] || command -v taskset >/dev/null 2>&1 || die "--cpus needs taskset (util-linux)"
pin_proxy=()
pin_load=()
if [[ -n $PROXY_CPUS ]]; then
  pin_proxy=(taskset -c "$PROXY_CPUS")
  pin_load=(taskset -c "$LOAD_CPUS")
fi

if ((INSTALL)) && ! command -v iperf3 >/dev/null 2>&1; then
  log "installing iperf3 (the topology's server runs it)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iperf3 >/dev/null ||
    die "apt-get install iperf3 failed"
fi
require_commands ipset iptables ip6tables iperf3 jq cmake

if [[ ! -x $BUILD_DIR/dsproxy ]]; then
  log "building dsproxy in $BUILD_DIR"
  if ! cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null ||
    ! cmake --build "$BUILD_DIR" -j2 --target dsproxy >/dev/null; then
    die "build failed"
  fi
fi
build_bench_tools bench_load bench_echo
BENCH_LOAD=$BENCH_BUILD_DIR/bench_load
BENCH_ECHO=$BENCH_BUILD_DIR/bench_echo
BENCH_TMP=$(mktemp -d /tmp/dstelemetry.XXXXXX)
# A private copy: a rebuild of build/ during the run must not change what is measured.
DSPROXY_BIN=$(private_copy "$BUILD_DIR/dsproxy" "$BENCH_TMP") || exit 1

# shellcheck source=bench/lib/topo.sh
source "$BENCH_DIR/lib/topo.sh"
DSPROXY_PID=
# The concurrent method's two processes.
declare -A PID_OF=()

# stop_pid PID: SIGTERM, bounded wait, SIGKILL.
stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}
stop_proxy() {
  [[ -n $DSPROXY_PID ]] || return 0
  stop_pid "$DSPROXY_PID"
  DSPROXY_PID=
}
on_exit() {
  local status=$? pid
  set +e
  trap - EXIT INT TERM HUP
  stop_proxy
  for pid in "${PID_OF[@]}"; do stop_pid "$pid"; done
  topo_down
  if ((status == 0)); then rm -rf -- "$BENCH_TMP"; else log "logs kept in $BENCH_TMP"; fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

http_get() { # PORT PATH: the body
  # shellcheck disable=SC2016 # expanded by the inner bash
  in_node timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "GET %s HTTP/1.0\r\n\r\n" "$2" >&3 && cat <&3' \
    _ "$1" "$2" 2>/dev/null | tr -d '\r' | sed '1,/^$/d'
}

mode_args() { # MODE: the telemetry arguments of off|on
  if [[ $1 == on ]]; then echo "$ON_ARGS"; else echo "$OFF_ARGS"; fi
}

# launch MODE READINESS_PORT ARGS...: dsproxy in the node namespace on the proxy CPU (or under
# --callgrind's / --syscalls' tool), its stderr (the access log) into a pipe read into
# $BENCH_TMP/dsproxy-MODE.log by a cat on the load CPUs; waits until it is ready. Sets LAUNCHED_PID.
launch() {
  local mode=$1 ready=$2
  shift 2
  local -a args wrap=("${pin_proxy[@]}")
  read -r -a args <<<"$(mode_args "$mode")"
  ((CALLGRIND)) && wrap=(valgrind --tool=callgrind --callgrind-out-file="$BENCH_TMP/callgrind.$mode.%p")
  : >"$BENCH_TMP/dsproxy-$mode.log"
  # ip netns exec and taskset exec the program: $! is dsproxy's own pid.
  ip netns exec "$(ns_node)" "${wrap[@]}" "$DSPROXY_BIN" run --config "$BENCH_TMP/cluster.yaml" --node "$BENCH_NODE_NAME" \
    --workers 1 "$@" "${args[@]}" 2> >("${pin_load[@]}" cat >>"$BENCH_TMP/dsproxy-$mode.log") >&2 &
  LAUNCHED_PID=$!
  local deadline=$((SECONDS + 60))  # by the clock: each http_get may itself take 3 s
  while ((SECONDS < deadline)); do
    kill -0 "$LAUNCHED_PID" 2>/dev/null || die "dsproxy exited at start (log $BENCH_TMP/dsproxy-$mode.log)"
    [[ $(http_get "$ready" /healthz/ready) == ready* ]] && return 0
    sleep 0.1
  done
  die "dsproxy not ready after 60 s"
}

# start_proxy off|on: the captured method's one dsproxy, with the capture rules.
start_proxy() {
  launch "$1" 15021 --redirect
  DSPROXY_PID=$LAUNCHED_PID
}

# The concurrent method: off and on side by side, no capture rules, every port their own; each
# forwards a listener on the node's address, per family, to the ClusterIP. Both share the node's
# handoff name (daemon/handoff.hpp), so "on" starts as "off"'s successor and "off" closes its admin
# and readiness listeners: its data path, which is all that is measured, is not affected.
declare -A FWD_PORT=([off]=17001 [on]=17002)
start_pair() {
  local mode base
  for mode in off on; do
    base=15200
    [[ $mode == on ]] && base=15300
    local -a ports=(--admin-port $((base)) --readiness-port $((base + 21)) --outbound-port $((base + 1))
      --inbound-port $((base + 6)) --dns-port $((base + 53)) --no-dns-capture)
    # Metrics, when on, on their own port (the scrape at the end).
    [[ $(mode_args "$mode") == *"--metrics-port 0"* ]] || ports+=(--metrics-port $((base + 20)))
    launch "$mode" $((base + 21)) "${ports[@]}" \
      --forward "$NODE_GW_CLIENT4:${FWD_PORT[$mode]}=$VIP4:$ECHO_PORT" --forward "[$NODE_IP6]:${FWD_PORT[$mode]}=[$VIP6]:$ECHO_PORT"
    PID_OF[$mode]=$LAUNCHED_PID
  done
}

# The on-CPU time of all of a dsproxy's threads so far, in nanoseconds (user + system; none of
# its threads exits while it serves).
cpu_ns() {
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'
}

vip_of() { if [[ $1 == 6 ]]; then echo "$VIP6"; else echo "$VIP4"; fi; }
node_of() { if [[ $1 == 6 ]]; then echo "$NODE_IP6"; else echo "$NODE_GW_CLIENT4"; fi; }
load() { # FAMILY SECONDS MAX_OPS THREADS [ADDRESS PORT]: bench_load's JSON line
  in_client "${pin_load[@]}" timeout $((${2%.*} + 30)) "$BENCH_LOAD" conn --addr "${5:-$(vip_of "$1")}" \
    --port "${6:-$ECHO_PORT}" --seconds "$2" --max-ops "$3" --threads "$4" 2>>"$BENCH_TMP/load.err" | tail -n 1
}

# measure PID FAMILY [ADDRESS PORT]: prints "rate errors ops cpu_ns_per_connection".
measure() {
  local res c0 c1
  c0=$(cpu_ns "$1")
  res=$(load "$2" "$SECONDS_PER" 4000000 "$THREADS" "${@:3}")
  c1=$(cpu_ns "$1")
  jq -r --argjson ns $((c1 - c0)) '"\(.rate) \(.errors) \(.ops) \(if .ops > 0 then ($ns / .ops | round) else 0 end)"' \
    <<<"$res" 2>/dev/null || echo "0 1 0 0"
}

topo_up
topo_write_k8s_config "$BENCH_TMP/cluster.yaml"
# The echo server (and iperf3, idle) on the load CPUs too.
if [[ -n $LOAD_CPUS ]]; then
  for pid in "${TOPO_BG_PIDS[@]}"; do taskset -a -p -c "$LOAD_CPUS" "$pid" >/dev/null 2>&1; done
fi

# callgrind_instructions FAMILY MODE: the proxy's instructions per connection over CALLGRIND connections.
callgrind_instructions() {
  local res ops total dump
  load "$1" 60 200 1 >/dev/null
  callgrind_control -z "$DSPROXY_PID" >/dev/null 2>&1 || die "callgrind_control -z failed"
  res=$(load "$1" 590 "$CALLGRIND" 1)
  ops=$(jq -r '.ops' <<<"$res")
  rm -f "$BENCH_TMP"/callgrind.*.[0-9]*.[0-9]*
  callgrind_control -d "$DSPROXY_PID" >/dev/null 2>&1 || die "callgrind_control -d failed"
  sleep 1
  # shellcheck disable=SC2012 # our own file names: the newest dump
  dump=$(ls -t "$BENCH_TMP"/callgrind.*.[0-9]*.[0-9]* 2>/dev/null | head -n 1)
  total=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump" 2>/dev/null)
  # CALLGRIND_KEEP=DIR: the dumps are kept there, for callgrind_annotate.
  [[ -n ${CALLGRIND_KEEP:-} && -n $dump ]] && cp "$dump" "$CALLGRIND_KEEP/callgrind.$2.$1"
  awk -v t="${total:-0}" -v n="${ops:-0}" 'BEGIN { printf "%.0f %d\n", n ? t / n : 0, n }'
}

if ((CALLGRIND)); then
  declare -A instr=()
  for mode in off on; do
    start_proxy "$mode"
    for family in 4 6; do
      read -r per ops < <(callgrind_instructions "$family" "$mode")
      log "callgrind $mode IPv$family: $per instructions/connection over $ops connections"
      instr[$mode.$family]=$per
    done
    stop_proxy
  done
  echo
  echo "## dsproxy user-space instructions per connection (callgrind, $CALLGRIND connections through a captured ClusterIP, 1 client thread)"
  echo
  echo "| family | off ($OFF_ARGS) | on ($ON_ARGS; metrics on) | difference |"
  echo "| --- | --- | --- | --- |"
  for family in 4 6; do
    delta=$((${instr[on.$family]} - ${instr[off.$family]}))
    printf '| IPv%s | %s | %s | %+d (%s %%) |\n' "$family" "${instr[off.$family]}" "${instr[on.$family]}" \
      "$delta" "$(diff_pct "${instr[on.$family]}" "${instr[off.$family]}")"
  done
  exit 0
fi

if ((SYSCALLS)); then
  # strace attaches to every thread of the running proxy after the warm-up, counts while the
  # client makes SYSCALLS connections, and detaches (SIGINT) to write its summary: no start-up
  # in the counts.
  declare -A calls=()
  for mode in off on; do
    start_proxy "$mode"
    for family in 4 6; do
      load "$family" 60 200 1 >/dev/null
      strace -f -c -o "$BENCH_TMP/strace.$mode.$family" -p "$DSPROXY_PID" 2>/dev/null &
      tracer=$!
      sleep 1 # attached to every thread
      load "$family" 590 "$SYSCALLS" 1 >/dev/null
      kill -INT "$tracer" 2>/dev/null
      wait "$tracer" 2>/dev/null
      calls[$mode.$family]=$(awk '$NF != "total" && $1 ~ /^[0-9.]+$/ && $4 ~ /^[0-9]+$/ { print $NF, $4 }' "$BENCH_TMP/strace.$mode.$family")
      log "strace $mode IPv$family done"
    done
    stop_proxy
  done
  echo
  echo "## dsproxy system calls per connection (strace -f -c attached after a warm-up, $SYSCALLS connections through a captured ClusterIP, 1 client thread)"
  echo
  for family in 4 6; do
    echo "### IPv$family"
    echo
    echo "| call | off ($OFF_ARGS) | on ($ON_ARGS; metrics on) |"
    echo "| --- | --- | --- |"
    awk -v n="$SYSCALLS" '
      FNR == 1 { f++ }
      { v[f, $1] = $2; names[$1] = 1 }
      END {
        for (k in names) {
          off = v[1, k] / n; on = v[2, k] / n
          if (off > 0.005 || on > 0.005) printf "| %s | %.2f | %.2f |\n", k, off, on
          toff += off; ton += on
        }
        printf "| **total** | %.2f | %.2f |\n", toff, ton
      }' <(echo "${calls[off.$family]}") <(echo "${calls[on.$family]}") | sort
    echo
  done
  exit 0
fi

declare -A rates=() cpus=()
if [[ $METHOD == captured ]]; then
  log "captured: $ROUNDS rounds of 2 x 2 x ${SECONDS_PER} s (about $((ROUNDS * (4 * SECONDS_PER + 5))) s); dsproxy on CPU ${PROXY_CPUS:-any}, load on ${LOAD_CPUS:-any}"
  for ((r = 0; r < ROUNDS; r++)); do
    order=(off on)
    ((r % 2)) && order=(on off)
    for mode in "${order[@]}"; do
      start_proxy "$mode"
      for family in 4 6; do
        load "$family" 0.5 1000000 "$THREADS" >/dev/null # warm-up
        read -r rate err ops cpu < <(measure "$DSPROXY_PID" "$family")
        log "round $((r + 1)) $mode IPv$family: $rate connections/s, proxy CPU $cpu ns/connection, $ops connections, $err errors"
        rates[$mode.$family]+="$rate "
        cpus[$mode.$family]+="$cpu "
      done
      if [[ $mode == on && $ON_ARGS != "$OFF_ARGS" ]]; then
        closed=$(http_get 15020 /metrics | awk 'index($0, "istio_tcp_connections_closed_total{") == 1 { s += $NF } END { print s + 0 }')
        stop_proxy
        sleep 0.3 # the log reader's last write
        lines=$(grep -c '"message":"connection complete"' "$BENCH_TMP/dsproxy-on.log")
        log "round $((r + 1)) on: metrics $closed closed, access log $lines lines"
      else
        stop_proxy
      fi
    done
  done
else
  per=$((4 * SECONDS_PER))
  [[ $METHOD == simultaneous ]] && per=$((2 * SECONDS_PER))
  log "$METHOD: $ROUNDS rounds of ${per} s (about $((ROUNDS * per + 10)) s); dsproxy on CPU ${PROXY_CPUS:-any}, load on ${LOAD_CPUS:-any}"
  start_pair
  for family in 4 6; do # warm-up
    for mode in off on; do
      load "$family" 1 1000000 "$THREADS" "$(node_of "$family")" "${FWD_PORT[$mode]}" >/dev/null
    done
  done
  for ((r = 0; r < ROUNDS; r++)); do
    for family in 4 6; do
      if [[ $METHOD == simultaneous ]]; then
        # Both at once, each with its own client threads: whatever else the machine does in
        # these seconds, both see it.
        declare -A c0=() c1=()
        c0[off]=$(cpu_ns "${PID_OF[off]}")
        c0[on]=$(cpu_ns "${PID_OF[on]}")
        # The one started first has a few milliseconds alone: the order alternates.
        order=(off on)
        ((r % 2)) && order=(on off)
        pids=()
        for mode in "${order[@]}"; do
          load "$family" "$SECONDS_PER" 4000000 "$THREADS" "$(node_of "$family")" "${FWD_PORT[$mode]}" >"$BENCH_TMP/win.$mode" &
          pids+=($!)
        done
        wait "${pids[@]}"
        c1[off]=$(cpu_ns "${PID_OF[off]}")
        c1[on]=$(cpu_ns "${PID_OF[on]}")
        for mode in off on; do
          read -r rate err ops cpu < <(jq -r --argjson ns $((c1[$mode] - c0[$mode])) \
            '"\(.rate) \(.errors) \(.ops) \(if .ops > 0 then ($ns / .ops | round) else 0 end)"' "$BENCH_TMP/win.$mode" 2>/dev/null ||
            echo "0 1 0 0")
          log "round $((r + 1)) $mode IPv$family: $rate connections/s, proxy CPU $cpu ns/connection, $ops connections, $err errors"
          rates[$mode.$family]+="$rate "
          cpus[$mode.$family]+="$cpu "
        done
        continue
      fi
      # ABBA over rounds (and the families shifted by one): a drift favours neither.
      order=(off on)
      (((r + family / 6) % 2)) && order=(on off)
      for mode in "${order[@]}"; do
        read -r rate err ops cpu < <(measure "${PID_OF[$mode]}" "$family" "$(node_of "$family")" "${FWD_PORT[$mode]}")
        log "round $((r + 1)) $mode IPv$family: $rate connections/s, proxy CPU $cpu ns/connection, $ops connections, $err errors"
        rates[$mode.$family]+="$rate "
        cpus[$mode.$family]+="$cpu "
      done
    done
  done
  if [[ $ON_ARGS != "$OFF_ARGS" ]]; then
    closed=$(http_get 15320 /metrics | awk 'index($0, "istio_tcp_connections_closed_total{") == 1 { s += $NF } END { print s + 0 }')
    stop_pid "${PID_OF[on]}"
    unset 'PID_OF[on]'
    sleep 0.3 # the log reader's last write
    lines=$(grep -c '"message":"connection complete"' "$BENCH_TMP/dsproxy-on.log")
    log "on: metrics $closed closed, access log $lines lines (warm-up included)"
  fi
fi

# stats: the numbers on stdin -> "median q1 q3 ci_low ci_high n" (quartiles interpolated; the
# median's 95 % interval from order statistics: the k-th smallest and largest, k the largest with
# P(Binomial(n, 1/2) < k) <= 0.025; with fewer than 6 numbers no such k exists: min and max).
stats() {
  tr ' \t' '\n' | grep -v '^$' | sort -g | awk '
    { x[NR] = $1 }
    function q(p,   h, l) { h = (NR - 1) * p + 1; l = int(h); return (l >= NR) ? x[NR] : x[l] + (h - l) * (x[l + 1] - x[l]) }
    END {
      if (!NR) { print "0 0 0 0 0 0"; exit }
      k = 1; cdf = 0; pk = 0.5 ^ NR
      for (j = 0; j < NR; j++) { cdf += pk; if (cdf > 0.025) break; k = j + 2; pk = pk * (NR - j) / (j + 1) }
      printf "%.4f %.4f %.4f %.4f %.4f %d\n", q(0.5), q(0.25), q(0.75), x[k], x[NR + 1 - k], NR
    }'
}
# paired KEY_OFF KEY_ON ARRAY: the per-round ratios on/off.
paired() {
  local -n arr=$3
  paste -d' ' <(tr ' ' '\n' <<<"${arr[$1]}" | grep -v '^$') <(tr ' ' '\n' <<<"${arr[$2]}" | grep -v '^$') |
    awk '$1 > 0 { printf "%.5f ", $2 / $1 }'
}
pct() { awk -v r="$1" 'BEGIN { printf "%+.1f %%", 100 * (r - 1) }'; }

echo
case $METHOD in
  simultaneous) method="simultaneous (two dsproxy --forward to the ClusterIP, loaded at the same time, $THREADS client threads each)" ;;
  alternate) method="alternate (two dsproxy --forward to the ClusterIP, loaded in turn)" ;;
  captured) method="captured (dsproxy --redirect, restarted per configuration)" ;;
esac
echo "## Telemetry off vs on, paired rounds: $method; bench_load conn ($THREADS threads), $ROUNDS rounds x ${SECONDS_PER} s per family"
echo
echo "off: \`$OFF_ARGS\`; on: \`$ON_ARGS\`$( [[ $ON_ARGS == *metrics-port\ 0* ]] || echo ' (metrics on)')."
echo "dsproxy pinned to CPU ${PROXY_CPUS:-(none)}, load generator, echo server and log reader to ${LOAD_CPUS:-(none)}."
echo "Ratios are on/off of the same round; the interval is a 95 % confidence interval of their median."
echo
echo "| family | measure | off (median) | on (median) | on/off: median | IQR | 95 % CI of the median | within 3 %? |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for family in 4 6; do
  for what in rate cpu; do
    if [[ $what == rate ]]; then
      arr=rates label="connections/s" fmt="%.0f"
    else
      arr=cpus label="proxy CPU ns/connection" fmt="%.0f"
    fi
    declare -n vals=$arr
    off=$(median <<<"${vals[off.$family]}")
    on=$(median <<<"${vals[on.$family]}")
    read -r med q1 q3 lo hi n < <(paired "off.$family" "on.$family" "$arr" | stats)
    # Within 3 %: the rate may not drop by more than 3 %, the CPU per connection not grow by more.
    verdict=$(awk -v lo="$lo" -v hi="$hi" -v w="$what" -v n="$n" 'BEGIN {
      if (n < 6) print "too few rounds"
      else if (w == "rate") { if (lo >= 0.97) print "yes (shown)"; else if (hi < 0.97) print "NO"; else print "not resolved" }
      else { if (hi <= 1.03) print "yes (shown)"; else if (lo > 1.03) print "NO"; else print "not resolved" } }')
    # shellcheck disable=SC2059
    printf "| IPv%s | %s | $fmt | $fmt | %.3f (%s) | %.3f – %.3f | %.3f – %.3f (n=%d) | %s |\n" "$family" "$label" \
      "$off" "$on" "$med" "$(pct "$med")" "$q1" "$q3" "$lo" "$hi" "$n" "$verdict"
    unset -n vals
  done
done
echo
echo "Per round (off, on):"
for family in 4 6; do
  echo "- IPv$family rate off: ${rates[off.$family]}"
  echo "- IPv$family rate on:  ${rates[on.$family]}"
  echo "- IPv$family CPU ns/connection off: ${cpus[off.$family]}"
  echo "- IPv$family CPU ns/connection on:  ${cpus[on.$family]}"
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $NCPU CPUs"
