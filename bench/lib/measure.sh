# shellcheck shell=bash
# The measurements: each one waits for a quiet machine (bounded), runs one bounded load from the
# client namespace against the current peer, reads the peer's CPU time and memory from /proc,
# and appends one JSON line to $BENCH_RAW. Sourced by bench/run.sh and bench/profile.sh.

CLK_TCK=$(getconf CLK_TCK)

# "TOTAL USER": utime+stime and utime alone (clock ticks) of the given pids, all their threads
# included. The user share is what a proxy's own code costs; the rest is the kernel's work
# (system calls and the softirq processing that runs inside them).
proc_cpu_ticks() {
  local pid total=0 user=0 stat rest
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    rest=${stat##*) } # fields from the 3rd on: comm may contain spaces and parentheses
    # shellcheck disable=SC2086
    set -- $rest
    total=$((total + ${12} + ${13}))
    user=$((user + ${12}))
  done
  echo "$total $user"
}

# Busy clock ticks of the whole machine, all CPUs summed (everything but idle and iowait):
# client, proxy, server and the kernel's network processing together.
machine_busy_ticks() {
  awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6 }' /proc/stat
}

proc_rss_kb() {
  awk '/^VmRSS:/ { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# Idle share of all CPUs over a 1 s sample of /proc/stat, in percent (idle + iowait).
cpu_idle_pct() {
  local a b
  a=$(awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $5 + $6 }' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $5 + $6 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); dt = y[1] - x[1];
    if (dt <= 0) { print 100; exit } printf "%.1f\n", 100 * (y[2] - x[2]) / dt }'
}

load1() { awk '{ print $1 }' /proc/loadavg; }

# Waits until the machine looks quiet: at least BENCH_QUIET_IDLE % of the CPUs idle over one
# second, for at most BENCH_QUIET_MAX_S seconds. Sets Q_IDLE, Q_LOAD1, Q_WAITED, Q_QUIET.
quiet_wait() {
  local start=$SECONDS i
  Q_QUIET=false
  for ((i = 0; i < BENCH_QUIET_MAX_S + 1; i++)); do
    Q_IDLE=$(cpu_idle_pct)
    if awk -v v="$Q_IDLE" -v t="$BENCH_QUIET_IDLE" 'BEGIN { exit !(v >= t) }'; then
      Q_QUIET=true
      break
    fi
    ((SECONDS - start >= BENCH_QUIET_MAX_S)) && break
  done
  Q_WAITED=$((SECONDS - start))
  Q_LOAD1=$(load1)
}

# emit METRIC JSON-FIELDS: one line of $BENCH_RAW with the run's coordinates and the quiet-wait
# readings of the measurement just taken.
emit() {
  local metric=$1 fields=$2
  printf '{"run":%d,"family":%d,"peer":"%s","metric":"%s","load1":%s,"idle_pct":%s,"quiet":%s,"waited_s":%d,%s}\n' \
    "$M_RUN" "$M_FAMILY" "$M_PEER" "$metric" "${Q_LOAD1:-0}" "${Q_IDLE:-0}" "${Q_QUIET:-false}" "${Q_WAITED:-0}" \
    "$fields" >>"$BENCH_RAW"
}

# The peer's CPU share (percent of one core) between two tick readings over WALL_NS; null when
# the peer died in between (its ticks are gone with it).
_cpu_pct() {
  awk -v t="$1" -v hz="$CLK_TCK" -v ns="$2" 'BEGIN { if (ns <= 0 || t < 0) { print "null"; exit } printf "%.2f\n", 100 * (t / hz) / (ns / 1e9) }'
}

# After a measurement: if a process of the peer is gone, record how it ended (exit status or
# signal, last log lines) as an error, and start the peer again so the remaining measurements
# still say something. Returns 1 when the peer could not be restarted.
check_peer_alive() {
  local metric=$1 pid dead= status=0 how tail_log=
  for pid in "${PEER_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || dead=$pid
  done
  [[ -z $dead ]] && return 0
  wait "$dead" 2>/dev/null
  status=$?
  if ((status > 128)); then how="killed by SIG$(kill -l $((status - 128)) 2>/dev/null) (exit status $status)"; else how="exit status $status"; fi
  [[ -f $BENCH_TMP/$PEER_LOG_NAME.log ]] && tail_log=$(tail -n 3 "$BENCH_TMP/$PEER_LOG_NAME.log" | tr '\n' ' ')
  Q_LOAD1=$(load1)
  emit error "\"error\":$(jq -Rn --arg e "$M_PEER died during $metric: $how; last log lines: $tail_log" '$e')"
  log "  ERROR: $M_PEER died during $metric: $how; restarting it"
  peer_stop
  if ! peer_start "$M_PEER"; then
    log "  ERROR: restart failed: $PEER_ERROR"
    return 1
  fi
}

# measure_bulk STREAMS: iperf3 from the client to the server through the peer.
measure_bulk() {
  local streams=$1 dst=$2 out t0 t1 c0 c1 res cpu
  quiet_wait
  out="$BENCH_TMP/iperf.json"
  read -r c0 _ < <(proc_cpu_ticks "${PEER_PIDS[@]}")
  t0=$(date +%s%N)
  in_client timeout $((BENCH_BULK_S + BENCH_BULK_OMIT + 20)) iperf3 -c "$dst" -p "$IPERF_PORT" \
    -t "$BENCH_BULK_S" -O "$BENCH_BULK_OMIT" -P "$streams" -J --connect-timeout 3000 >"$out" 2>"$BENCH_TMP/iperf.err"
  t1=$(date +%s%N)
  read -r c1 _ < <(proc_cpu_ticks "${PEER_PIDS[@]}")
  res=$(jq -c '{gbps: ((.end.sum_received.bits_per_second // 0) / 1e9), retransmits: (.end.sum_sent.retransmits // null), error: (.error // null)}' "$out" 2>/dev/null)
  [[ -n $res ]] || res='{"gbps":0,"error":"iperf3 printed no JSON"}'
  cpu=$(_cpu_pct $((c1 - c0)) $((t1 - t0)))
  emit "bulk$streams" "\"cpu_pct\":$cpu,\"wall_s\":$(awk -v n=$((t1 - t0)) 'BEGIN { printf "%.2f", n / 1e9 }'),\"result\":$res"
  log "  bulk $streams stream(s): $(jq -r '"\(.gbps * 1000 | round / 1000) Gbit/s"' <<<"$res"), peer CPU $cpu %"
}

# measure_tool METRIC ARGS...: bench_load in the client namespace; its JSON line is the result.
measure_tool() {
  local metric=$1 t0 t1 c0 c1 u0 u1 m0 m1 res cpu
  shift
  quiet_wait
  read -r c0 u0 < <(proc_cpu_ticks "${PEER_PIDS[@]}")
  m0=$(machine_busy_ticks)
  t0=$(date +%s%N)
  res=$(in_client timeout $((BENCH_CONN_S + 30)) "$BENCH_LOAD" "$@" 2>>"$BENCH_TMP/load.err" | tail -n 1)
  t1=$(date +%s%N)
  m1=$(machine_busy_ticks)
  read -r c1 u1 < <(proc_cpu_ticks "${PEER_PIDS[@]}")
  [[ $res == \{* ]] || res='{"ops":0,"error":"bench_load printed no result"}'
  cpu=$(_cpu_pct $((c1 - c0)) $((t1 - t0)))
  # user_pct: the proxy's user-space share; machine_busy_pct: all CPUs summed (200 = 2 busy
  # vCPUs). Together they bound what any user-space change could still gain (bench/README.md).
  emit "$metric" "\"cpu_pct\":$cpu,\"user_pct\":$(_cpu_pct $((u1 - u0)) $((t1 - t0))),\"machine_busy_pct\":$(_cpu_pct $((m1 - m0)) $((t1 - t0))),\"result\":$res"
  log "  $metric: $(jq -r '"\(.rate // 0 | floor)/s p50 \(.p50_us // 0) us p99 \(.p99_us // 0) us errors \(.errors // 0)"' <<<"$res"), peer CPU $cpu %"
}

# measure_hold DST: RSS of the peer before and while holding N idle proxied connections.
measure_hold() {
  local dst=$1 ready="$BENCH_TMP/hold.ready" before during pid i res active='null'
  [[ -n $PEER_MAIN_PID ]] || return 0
  quiet_wait
  rm -f "$ready"
  before=$(proc_rss_kb "$PEER_MAIN_PID")
  # Not through in_client: $! of a backgrounded function would be a subshell's pid.
  ip netns exec "$(ns_client)" "$BENCH_LOAD" hold --addr "$dst" --port "$ECHO_PORT" --count "$BENCH_HOLD_N" \
    --hold-seconds 120 --ready-file "$ready" >/dev/null 2>>"$BENCH_TMP/load.err" &
  pid=$!
  for ((i = 0; i < 900; i++)); do
    [[ -s $ready ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  sleep 1 # let the proxy settle its last allocations
  during=$(proc_rss_kb "$PEER_MAIN_PID")
  if [[ $M_PEER == dsproxy* ]]; then active=$(dsproxy_stats_json | jq '.active_connections // null' 2>/dev/null || echo null); fi
  res=$(cat "$ready" 2>/dev/null)
  [[ $res == \{* ]] || res='{"established":0,"error":"hold did not finish"}'
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  emit hold "\"rss_before_kb\":$before,\"rss_during_kb\":$during,\"proxy_active_connections\":${active:-null},\"result\":$res"
  log "  hold: $(jq -r '.established' <<<"$res") connections, RSS $before -> $during kB" \
    "($(awk -v b="$before" -v d="$during" -v n="$(jq -r '.established' <<<"$res")" 'BEGIN { if (n > 0) printf "%.2f", (d - b) / n; else print "?" }') kB/conn)"
}

# The connection-rate cells alone (run.sh --conn-only): 1, 4 and 16 clients, each its own
# bench_load thread doing connect + 64 B echo + close in a loop.
measure_conn_rates() {
  local dst=$1 clients
  for clients in 1 4 16; do
    measure_tool "conn$clients" conn --addr "$dst" --port "$ECHO_PORT" --seconds "$BENCH_CONN_S" --max-ops 4000000 \
      --threads "$clients"
    check_peer_alive "conn$clients" || return 1
  done
}

# Every measurement of one peer for one family, in a fixed order.
measure_peer_family() {
  local dst=$1 res
  if [[ -n $PEER_MAIN_PID ]]; then
    Q_LOAD1=$(load1) Q_IDLE=0 Q_QUIET=false Q_WAITED=0
    emit rss_idle "\"rss_kb\":$(proc_rss_kb "$PEER_MAIN_PID")"
  fi
  # A first connection through the path, so a broken peer is reported instead of measured.
  res=$(in_client timeout 10 "$BENCH_LOAD" conn --addr "$dst" --port "$ECHO_PORT" --seconds 3 --max-ops 3 2>&1 | tail -n 1)
  if [[ $(jq -r '.ops // 0' <<<"$res" 2>/dev/null) -lt 1 ]]; then
    Q_LOAD1=$(load1)
    emit error "\"error\":$(jq -Rn --arg e "no echo through $M_PEER to $dst: $res" '$e')"
    log "  ERROR: no echo through $M_PEER to $dst"
    return 1
  fi
  if ((${CONN_ONLY:-0})); then
    measure_conn_rates "$dst"
    return
  fi
  measure_bulk 1 "$dst"
  check_peer_alive bulk1 || return 1
  measure_bulk 8 "$dst"
  check_peer_alive bulk8 || return 1
  measure_tool conn1 conn --addr "$dst" --port "$ECHO_PORT" --seconds "$BENCH_CONN_S" --max-ops 2000000 --threads 1
  check_peer_alive conn1 || return 1
  measure_tool rtt rtt --addr "$dst" --port "$ECHO_PORT" --seconds "$BENCH_CONN_S" --max-ops 5000000
  check_peer_alive rtt || return 1
  measure_tool conn4 conn --addr "$dst" --port "$ECHO_PORT" --seconds "$BENCH_CONN_S" --max-ops 4000000 --threads 4
  check_peer_alive conn4 || return 1
  measure_tool conn16 conn --addr "$dst" --port "$ECHO_PORT" --seconds "$BENCH_CONN_S" --max-ops 4000000 --threads 16
  check_peer_alive conn16 || return 1
  measure_hold "$dst"
  check_peer_alive hold || return 1
  if [[ $M_PEER == dsproxy* ]]; then
    Q_LOAD1=$(load1)
    emit stats "\"stats\":$(dsproxy_stats_json)"
  fi
}
