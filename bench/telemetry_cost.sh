#!/usr/bin/env bash
# What do the access log and the metrics cost per connection? (issue 13: "the connection rate with
# metrics and access log on (json) stays within 3 % of both off, in the same run".) Not a test:
# it prints numbers and asserts nothing about them.
#
#   sudo bash bench/telemetry_cost.sh [--rounds R] [--seconds S] [--no-install]
#
# On bench/run.sh's client / node / server namespaces (bench/lib/topo.sh), dsproxy runs with
# --redirect --workers 1 and the client opens connections (bench_load conn: connect, 64-byte
# echo, close; 4 threads, as run.sh's conn4) through the captured ClusterIP, so every connection
# is routed to a Service and named (pods, workloads, Service). Two dsproxy configurations,
# restarted for every measurement and alternated (off, on / on, off / ...) R times:
#   off   --access-log off --metrics-port 0   (no record is built at all)
#   on    --access-log json, metrics on :15020 (scraped once after each measurement, to check)
# TELEMETRY_ON_ARGS replaces the "on" arguments (e.g. "--access-log off": metrics alone).
# The access log goes to a file in the run's temporary directory. Prints the median connection
# rate and the median proxy CPU time per connection (user + system, from /proc) of each
# configuration and family, and the differences: on a shared machine the rate swings with
# whatever else runs, the proxy's own CPU per connection much less.
#
# --callgrind N: instead, dsproxy runs under valgrind --tool=callgrind and the client makes N
# connections per configuration and family (1 thread); prints the user-space instructions the
# proxy executed per connection (counters zeroed after the warm-up, dumped after the load): a
# count that does not move with the machine's load. The kernel's share is not in it.
#
# Needs root, cmake and a C++ toolchain (builds dsproxy and the bench tools if missing), iptables,
# ipset, jq, iperf3 (topo.sh's server; installed unless --no-install). Everything it creates is
# removed on exit, also on failure or Ctrl-C.

set -uo pipefail

BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=telemetry_cost
# shellcheck source=bench/lib/common.sh
source "$BENCH_DIR/lib/common.sh"
BUILD_DIR=${BUILD_DIR:-$REPO_DIR/build}

ROUNDS=3
SECONDS_PER=5
INSTALL=1
CALLGRIND=0
while (($#)); do
  case $1 in
    --callgrind) CALLGRIND=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --seconds) SECONDS_PER=$2; shift ;;
    --no-install) INSTALL=0 ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "telemetry_cost: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
require_root "network namespaces, iptables"
((ROUNDS >= 1 && ROUNDS <= 20)) || die "--rounds must be 1-20"
((SECONDS_PER >= 1 && SECONDS_PER <= 60)) || die "--seconds must be 1-60"
((CALLGRIND >= 0 && CALLGRIND <= 100000)) || die "--callgrind must be 0-100000"
((CALLGRIND == 0)) || command -v callgrind_control >/dev/null 2>&1 || die "--callgrind needs valgrind"

if ((INSTALL)) && ! command -v iperf3 >/dev/null 2>&1; then
  log "installing iperf3 (the topology's server runs it)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iperf3 >/dev/null ||
    die "apt-get install iperf3 failed"
fi
for cmd in ipset iptables ip6tables iperf3 jq cmake; do
  command -v "$cmd" >/dev/null 2>&1 || die "missing command $cmd (scripts/install-deps.sh; iperf3 without --no-install)"
done

if [[ ! -x $BUILD_DIR/dsproxy ]]; then
  log "building dsproxy in $BUILD_DIR"
  if ! cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null ||
    ! cmake --build "$BUILD_DIR" -j2 --target dsproxy >/dev/null; then
    die "build failed"
  fi
fi
build_bench_tools
BENCH_LOAD=$BENCH_BUILD_DIR/bench_load
BENCH_ECHO=$BENCH_BUILD_DIR/bench_echo
BENCH_TMP=$(mktemp -d /tmp/dstelemetry.XXXXXX)
# A private copy: a rebuild of build/ during the run must not change what is measured.
DSPROXY_BIN=$(private_copy "$BUILD_DIR/dsproxy" "$BENCH_TMP") || exit 1

# shellcheck source=bench/lib/topo.sh
source "$BENCH_DIR/lib/topo.sh"
DSPROXY_PID=

stop_proxy() {
  [[ -n $DSPROXY_PID ]] || return 0
  kill -TERM "$DSPROXY_PID" 2>/dev/null
  for ((i = 0; i < 100; i++)); do kill -0 "$DSPROXY_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$DSPROXY_PID" 2>/dev/null
  wait "$DSPROXY_PID" 2>/dev/null
  DSPROXY_PID=
}
on_exit() {
  local status=$?
  set +e
  trap - EXIT INT TERM HUP
  stop_proxy
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

# start_proxy off|on
start_proxy() {
  local -a args=(--access-log off --metrics-port 0)
  # TELEMETRY_ON_ARGS: another "on" configuration, to see what each part costs.
  [[ $1 == on ]] && read -r -a args <<<"${TELEMETRY_ON_ARGS:---access-log json}"
  local -a wrap=()
  ((CALLGRIND)) && wrap=(valgrind --tool=callgrind --callgrind-out-file="$BENCH_TMP/callgrind.$1.%p")
  ip netns exec "$(ns_node)" "${wrap[@]}" "$DSPROXY_BIN" run --config "$BENCH_TMP/cluster.yaml" --node "$BENCH_NODE_NAME" \
    --redirect --workers 1 "${args[@]}" >"$BENCH_TMP/dsproxy-$1.log" 2>&1 &
  DSPROXY_PID=$!
  for ((i = 0; i < 600; i++)); do
    kill -0 "$DSPROXY_PID" 2>/dev/null || die "dsproxy exited at start (log $BENCH_TMP/dsproxy-$1.log)"
    [[ $(http_get 15021 /healthz/ready) == ready* ]] && return 0
    sleep 0.1
  done
  die "dsproxy not ready after 60 s"
}

# measure FAMILY: prints "rate errors ops cpu_us_per_connection".
measure() {
  local vip=$VIP4 res c0 c1
  [[ $1 == 6 ]] && vip=$VIP6
  c0=$(proc_ticks "$DSPROXY_PID")
  res=$(in_client timeout $((SECONDS_PER + 30)) "$BENCH_LOAD" conn --addr "$vip" --port "$ECHO_PORT" \
    --seconds "$SECONDS_PER" --max-ops 4000000 --threads 4 2>>"$BENCH_TMP/load.err" | tail -n 1)
  c1=$(proc_ticks "$DSPROXY_PID")
  jq -r --argjson ticks $((c1 - c0)) --argjson hz "$CLK_TCK" \
    '"\(.rate) \(.errors) \(.ops) \(if .ops > 0 then ($ticks / $hz * 1e6 / .ops * 10 | round / 10) else 0 end)"' \
    <<<"$res" 2>/dev/null || echo "0 1 0 0"
}

topo_up
topo_write_k8s_config "$BENCH_TMP/cluster.yaml"

# callgrind_instructions FAMILY: the proxy's instructions per connection over CALLGRIND connections.
callgrind_instructions() {
  local vip=$VIP4 res ops total dump
  [[ $1 == 6 ]] && vip=$VIP6
  in_client timeout 120 "$BENCH_LOAD" conn --addr "$vip" --port "$ECHO_PORT" --seconds 60 --max-ops 200 --threads 1 >/dev/null 2>&1
  callgrind_control -z "$DSPROXY_PID" >/dev/null 2>&1 || die "callgrind_control -z failed"
  res=$(in_client timeout 600 "$BENCH_LOAD" conn --addr "$vip" --port "$ECHO_PORT" --seconds 590 --max-ops "$CALLGRIND" \
    --threads 1 2>>"$BENCH_TMP/load.err" | tail -n 1)
  ops=$(jq -r '.ops' <<<"$res")
  rm -f "$BENCH_TMP"/callgrind.*.[0-9]*.[0-9]*
  callgrind_control -d "$DSPROXY_PID" >/dev/null 2>&1 || die "callgrind_control -d failed"
  sleep 1
  # shellcheck disable=SC2012 # our own file names: digits and dots
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
  echo "| family | off (--access-log off --metrics-port 0) | on (${TELEMETRY_ON_ARGS:---access-log json}; metrics on) | difference |"
  echo "| --- | --- | --- | --- |"
  for family in 4 6; do
    printf '| IPv%s | %s | %s | %+.1f %% |\n' "$family" "${instr[off.$family]}" "${instr[on.$family]}" \
      "$(awk -v a="${instr[on.$family]}" -v b="${instr[off.$family]}" 'BEGIN { print b ? 100 * (a - b) / b : 0 }')"
  done
  exit 0
fi

declare -A rates=() cpus=()
for ((r = 0; r < ROUNDS; r++)); do
  order=(off on)
  ((r % 2)) && order=(on off)
  for mode in "${order[@]}"; do
    start_proxy "$mode"
    for family in 4 6; do
      vip=$VIP4
      [[ $family == 6 ]] && vip=$VIP6
      in_client timeout 10 "$BENCH_LOAD" conn --addr "$vip" --port "$ECHO_PORT" --seconds 1 --threads 4 >/dev/null 2>&1 # warm-up
      read -r rate err ops cpu < <(measure "$family")
      extra=
      if [[ $mode == on ]]; then
        closed=$(http_get 15020 /metrics | awk 'index($0, "istio_tcp_connections_closed_total{") == 1 { s += $NF } END { print s + 0 }')
        lines=$(grep -c '"message":"connection complete"' "$BENCH_TMP/dsproxy-on.log")
        extra=" (metrics: $closed closed; access log: $lines lines)"
      fi
      log "round $((r + 1)) $mode IPv$family: $rate connections/s, proxy CPU $cpu µs/connection, $ops connections, $err errors$extra"
      rates[$mode.$family]+="$rate "
      cpus[$mode.$family]+="$cpu "
    done
    stop_proxy
  done
done

echo
echo "## Connection rate through a captured ClusterIP, telemetry off vs on (bench_load conn, 4 threads, ${SECONDS_PER} s; median of $ROUNDS interleaved rounds)"
echo
# The rate depends on everything else the machine runs; the proxy's own CPU time per connection
# much less, so both are printed.
echo "| family | what | off | on (${TELEMETRY_ON_ARGS:---access-log json}; metrics on) | difference | rounds off | rounds on |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for family in 4 6; do
  off=$(median <<<"${rates[off.$family]}")
  on=$(median <<<"${rates[on.$family]}")
  printf '| IPv%s | connections/s | %.0f | %.0f | %+.1f %% | %s| %s|\n' "$family" "$off" "$on" "$(diff_pct "$on" "$off")" \
    "${rates[off.$family]}" "${rates[on.$family]}"
  off=$(median <<<"${cpus[off.$family]}")
  on=$(median <<<"${cpus[on.$family]}")
  printf '| IPv%s | proxy CPU µs/connection | %.1f | %.1f | %+.1f %% | %s| %s|\n' "$family" "$off" "$on" "$(diff_pct "$on" "$off")" \
    "${cpus[off.$family]}" "${cpus[on.$family]}"
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
