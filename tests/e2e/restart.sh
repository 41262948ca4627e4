#!/usr/bin/env bash
# Hitless restarts (issue 13): a new dsproxy starts next to the running one (SO_REUSEPORT on every
# listener), takes the capture rules over (handoff.hpp), the old one gets SIGTERM and drains.
#
#   1. three restarts in a row, each "start the new instance, wait until it is ready, SIGTERM the
#      old one", under a bounded connection loop (~500 connections/s to the IPv4 and IPv6
#      ClusterIPs) and 20 long transfers with checksums: zero failed connections, none slower than
#      1 s (a dropped SYN costs 1 s), every checksum intact, every old instance exits 0 and leaves
#      the rules to its successor;
#   2. plain SIGTERM with no successor under the same loop (to pod addresses, which work with or
#      without capture; a ClusterIP needs kube-proxy once the capture is gone) and 10 long
#      transfers that hold the drain, so the staged removal falls in the middle of the loop: at
#      most 2 failures and 2 stalls (measured 0), every transfer intact or reset (never a short
#      EOF), and the node's rules are as before dsproxy;
#   3. the drain grace running out: the client of a transfer still open sees a reset, not an EOF.
#
#   restart.sh DSPROXY_BIN ECHO_BIN
set -uo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
CLIENT=$HERE/../tools/restart_client.mjs
# shellcheck source=tests/e2e/lib/suite.sh
source "$HERE/lib/suite.sh"
suite_args -- "$@"
E2E_DEADLINE=${E2E_DEADLINE:-85}
CHECK_SHOW_DETAIL=1

command -v node >/dev/null || { echo "FAIL: node (Node.js) is required"; exit 1; }
suite_trap
cluster_up

CLUSTERIPS="10.96.104.229:9000,[fd00:10:96::9c3a]:9000"
POD_IPS="10.244.0.19:9000,[fd00:10:244::18]:9000"
declare -A PID_OF=()
INSTANCES=()

# start_instance NAME [ARGS...]: dsproxy in the node namespace, logging to $CLUSTER_TMP/NAME.log.
start_instance() {
  local name=$1
  shift
  ip netns exec "$(node_ns)" "$DSPROXY_BIN" run --config "$DSPROXY_CONFIG" --node "$CLUSTER_NODE_NAME" \
    --redirect --workers 2 "$@" >"$CLUSTER_TMP/$name.log" 2>&1 &
  PID_OF[$name]=$!
  CLUSTER_BG_PIDS+=("$!")
  INSTANCES+=("$name")
}

# wait_ready NAME: its own log says it installed the rules and is ready (the readiness port is
# shared by both instances, so a probe could be answered by either).
wait_ready() {
  local i
  for ((i = 0; i < 100; i++)); do
    grep -q "dsproxy ready" "$CLUSTER_TMP/$1.log" 2>/dev/null && return 0
    kill -0 "${PID_OF[$1]}" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# wait_exit NAME STEPS: waits (STEPS x 0.1 s) for the exit; sets RC to its status ("timeout" if
# none). Not in a $(...) subshell: only this shell can reap its child.
wait_exit() {
  local pid=${PID_OF[$1]} i
  RC=timeout
  for ((i = 0; i < $2; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      RC=0
      wait "$pid" 2>/dev/null || RC=$?
      return 0
    fi
    sleep 0.1
  done
}

rules_present() { in_node iptables-save -t mangle | grep -q -- '-j DSPROXY_PREROUTING'; }

json_field() { node -e 'const o = JSON.parse(process.argv[1]); console.log(o[process.argv[2]])' "$1" "$2"; }

before=$(snapshot_netfilter)

# ---- 1. three restarts in a row -----------------------------------------------------------
section() { echo "== $*"; }
section "three restarts under load"
start_instance gen0 --drain-grace-ms 15000
wait_ready gen0 || { fail "gen0 ready"; cat "$CLUSTER_TMP/gen0.log"; exit 1; }

LOAD_OUT=$CLUSTER_TMP/load.json
BULK_OUT=$CLUSTER_TMP/bulk.json
# ~500/s for 14 s at most, 7,000 connections at most; 20 transfers of 1 MB over 10 s each.
in_pod sleep timeout 60 node "$CLIENT" load "$CLUSTERIPS" 500 7000 14 >"$LOAD_OUT" 2>&1 &
load_pid=$!
in_pod sleep timeout 60 node "$CLIENT" bulk "$CLUSTERIPS" 20 1000000 10 >"$BULK_OUT" 2>&1 &
bulk_pid=$!
sleep 1.5
prev=gen0
restart_ok=0
for gen in gen1 gen2 gen3; do
  start_instance "$gen" --drain-grace-ms 15000
  if ! wait_ready "$gen"; then
    fail "$gen ready next to $prev"
    tail -n 20 "$CLUSTER_TMP/$gen.log"
    break
  fi
  kill -TERM "${PID_OF[$prev]}"
  restart_ok=$((restart_ok + 1))
  prev=$gen
  sleep 2.5
done
check "three successors started next to the running instance and took over" "$((restart_ok == 3 ? 0 : 1))" \
  "$restart_ok of 3"
wait "$load_pid"
wait "$bulk_pid"
load=$(tail -n 1 "$LOAD_OUT")
bulk=$(tail -n 1 "$BULK_OUT")
echo "load: $load"
echo "bulk: $bulk"
opened=$(json_field "$load" opened)
failed=$(json_field "$load" failed)
stalls=$(json_field "$load" over_1s)
intact=$(json_field "$bulk" intact)
check "load through three restarts: zero failed connections" "$([[ $failed == 0 && $opened -ge 3000 ]]; echo $?)" \
  "$opened opened, $failed failed"
check "load through three restarts: no connection over 1 s" "$([[ $stalls == 0 ]]; echo $?)" \
  "slowest $(json_field "$load" slowest_ms) ms"
check "20 long transfers through three restarts: every checksum intact" "$([[ $intact == 20 ]]; echo $?)" "$intact of 20"
for gen in gen0 gen1 gen2; do
  wait_exit "$gen" 200
  check "$gen exits 0 after draining" "$([[ $RC == 0 ]]; echo $?)" "status $RC"
  check "$gen handed the rules over and removed none" \
    "$(grep -q 'superseded' "$CLUSTER_TMP/$gen.log" && ! grep -q 'capture removed' "$CLUSTER_TMP/$gen.log"; echo $?)"
done
check "the rules stay installed for the last instance" "$(rules_present; echo $?)"

# ---- 1b. a successor stopped during its start leaves the owner's rules ------------------------
section "a successor stopped during its start"
# Its configuration is large (the experiment plus 6,000 Services: about a second to read), so the
# SIGTERM surely comes before it could take over; the experiment's config is read in 5 ms.
BIG_CONFIG=$CLUSTER_TMP/big.yaml
{
  cat "$DSPROXY_CONFIG"
  for ((i = 0; i < 6000; i++)); do
    printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: pad%d, namespace: default}\n' "$i"
    printf 'spec: {clusterIP: 10.97.%d.%d, ports: [{port: 80, targetPort: 8080}], selector: {app: pad}}\n' \
      $((i / 250)) $((i % 250 + 1))
  done
} >"$BIG_CONFIG"
for delay in 0 0.2; do
  name=dud$delay
  ip netns exec "$(node_ns)" "$DSPROXY_BIN" run --config "$BIG_CONFIG" --node "$CLUSTER_NODE_NAME" \
    --redirect --workers 2 --drain-grace-ms 2000 >"$CLUSTER_TMP/$name.log" 2>&1 &
  PID_OF[$name]=$!
  CLUSTER_BG_PIDS+=("$!")
  # Once it is dsproxy (not the forked shell), then after the delay.
  for ((i = 0; i < 200; i++)); do
    [[ $(readlink "/proc/${PID_OF[$name]}/exe" 2>/dev/null) == "$DSPROXY_BIN" ]] && break
    sleep 0.005
  done
  sleep "$delay"
  kill -TERM "${PID_OF[$name]}"
  wait_exit "$name" 100
  ready=1
  for ((i = 0; i < 30; i++)); do dsproxy_ready && { ready=0; break; }; sleep 0.1; done
  check "successor SIGTERMed ${delay} s into its start: exits (status $RC), the owner keeps its rules and is ready" \
    "$([[ $RC == 0 || $RC == 143 ]] && rules_present && ((ready == 0)) && ! grep -q superseded "$CLUSTER_TMP/gen3.log"; echo $?)" \
    "$(grep -c 'capture removed' "$CLUSTER_TMP/$name.log") removal line(s)"
done

# ---- 2. plain SIGTERM, no successor ---------------------------------------------------------
section "plain SIGTERM with no successor"
# Once the capture is gone, the proxy's upstream connections that ended in TIME_WAIT (bound to the
# pod's address, kept by the kernel for 60 s after dsproxy exits) make the node drop a reply to a
# direct connection of that pod that picks the same source port towards the same endpoint (the
# packet is early-demuxed to the local TIME_WAIT socket, and ip_forward drops such packets). That
# is not the drain's doing and not what this case measures: the client pod's ephemeral ports are
# kept apart from the node's (the upstream ports' range) here. See the README's caveat. (Measured
# with the pod's default range: 247 of 3,000 connections failed, 295 over 1 s; with the node's
# net.ipv4.tcp_early_demux=0 none failed but 49 took a SYN retry.)
in_pod sleep sysctl -q -w net.ipv4.ip_local_port_range="20000 29999"
# The long transfers (through the proxy until the release: 10 of 300 KB over 3 s) hold the drain,
# so the capture is released at about 3.5 s, in the middle of the load (6 s).
in_pod sleep timeout 30 node "$CLIENT" load "$POD_IPS" 500 3000 6 >"$LOAD_OUT" 2>&1 &
load_pid=$!
in_pod sleep timeout 40 node "$CLIENT" bulk "$POD_IPS" 10 300000 3 >"$BULK_OUT" 2>&1 &
bulk_pid=$!
sleep 1
kill -TERM "${PID_OF[gen3]}"
wait_exit gen3 200; rc=$RC
wait "$load_pid"
wait "$bulk_pid"
load=$(tail -n 1 "$LOAD_OUT")
bulk=$(tail -n 1 "$BULK_OUT")
echo "load: $load"
echo "bulk: $bulk"
check "plain SIGTERM: exits 0" "$([[ $rc == 0 ]]; echo $?)" "status $rc"
grep -E 'signal|drain:|released|narrowed|capture removed' "$CLUSTER_TMP/gen3.log" | cut -c1-160
check "plain SIGTERM: the capture was released first (the conntrack exemption narrowed), the rest removed at exit" \
  "$(grep -q 'capture released' "$CLUSTER_TMP/gen3.log" && grep -q 'capture removed' "$CLUSTER_TMP/gen3.log" &&
    grep -q 'exemption narrowed' "$CLUSTER_TMP/gen3.log" &&
    ! grep -qE 'release incomplete|release failed|not narrowed' "$CLUSTER_TMP/gen3.log"; echo $?)"
# The removal is staged (the TPROXY chains first, the socket divert at exit), so a handshake that
# straddles it completes. At most 2 allowed for what the bound loop cannot control (a SYN or
# SYN-ACK lost to the node's load); measured 0 (README).
check "plain SIGTERM: at most 2 failed connections, at most 2 over 1 s" \
  "$([[ $(json_field "$load" failed) -le 2 && $(json_field "$load" over_1s) -le 2 ]]; echo $?)" \
  "$(json_field "$load" opened) opened, $(json_field "$load" failed) failed, slowest $(json_field "$load" slowest_ms) ms"
# Every transfer ends intact or reset (the grace running out), never in a clean, short EOF.
check "plain SIGTERM: 10 long transfers intact or reset, none truncated silently" \
  "$(node -e 'const o = JSON.parse(process.argv[1]);
      process.exit(o.outcomes.length === 10 && o.outcomes.every((x) => x === "intact" || x.startsWith("reset after")) ? 0 : 1)' "$bulk"; echo $?)" \
  "$bulk"
after=$(snapshot_netfilter)
check "plain SIGTERM: the node's rules are as before dsproxy" "$([[ $after == "$before" ]]; echo $?)" \
  "$(diff <(echo "$before") <(echo "$after") | head -n 5 | tr '\n' ' ')"

# ---- 3. the drain grace runs out ------------------------------------------------------------
section "drain grace expiry resets, never a clean EOF"
start_instance last --drain-grace-ms 1500
wait_ready last || fail "last ready"
in_pod sleep timeout 40 node "$CLIENT" bulk "10.96.104.229:9000" 1 1000000 10 >"$BULK_OUT" 2>&1 &
bulk_pid=$!
sleep 1.5
kill -TERM "${PID_OF[last]}"
wait_exit last 100; rc=$RC
wait "$bulk_pid"
bulk=$(tail -n 1 "$BULK_OUT")
echo "bulk: $bulk"
check "grace expiry: exits 0 within the grace" "$([[ $rc == 0 ]]; echo $?)" "status $rc"
check "grace expiry: the transfer's client sees a reset, not an EOF" \
  "$([[ $bulk == *'"reset after'* ]]; echo $?)" "$bulk"
after=$(snapshot_netfilter)
check "grace expiry: the node's rules are as before dsproxy" "$([[ $after == "$before" ]]; echo $?)"

# ---- 3b. the successor dies after taking over -----------------------------------------------
section "a successor killed after taking over: the old one, last out, removes the rules"
start_instance orphan_old --drain-grace-ms 1000
wait_ready orphan_old || fail "orphan_old ready"
start_instance orphan_new --drain-grace-ms 1000
wait_ready orphan_new || fail "orphan_new ready"
kill -KILL "${PID_OF[orphan_new]}"
wait_exit orphan_new 50
kill -TERM "${PID_OF[orphan_old]}"
wait_exit orphan_old 100
after=$(snapshot_netfilter)
check "superseded instance whose successor died: exits 0 and the node's rules are as before" \
  "$([[ $RC == 0 && $after == "$before" ]]; echo $?)" \
  "status $RC; $(diff <(echo "$before") <(echo "$after") | head -n 3 | tr '\n' ' ')"

# ---- 4. signals at any moment of the start and of the drain ---------------------------------
section "SIGINT, SIGHUP then SIGTERM during the start; more signals during the drain"
for sig in INT HUP; do
  for delay in 0.05 0.3; do
    in_time "SIG$sig ${delay} s into the start" || break
    name=sig$sig$delay
    start_instance "$name" --drain-grace-ms 1000
    for ((i = 0; i < 200; i++)); do
      [[ $(readlink "/proc/${PID_OF[$name]}/exe" 2>/dev/null) == "$DSPROXY_BIN" ]] && break
      sleep 0.005
    done
    sleep "$delay"
    kill -"$sig" "${PID_OF[$name]}"
    # SIGHUP is a reload, never a stop: the instance must still stop cleanly on the SIGTERM after.
    [[ $sig == HUP ]] && sleep 0.05 && kill -TERM "${PID_OF[$name]}"
    wait_exit "$name" 100
    after=$(snapshot_netfilter)
    check "SIG$sig ${delay} s into the start: exits (status $RC) and the node's rules are as before" \
      "$([[ ($RC == 0 || $RC == 129 || $RC == 130 || $RC == 143) && $after == "$before" ]]; echo $?)" \
      "$(diff <(echo "$before") <(echo "$after") | head -n 3 | tr '\n' ' ')"
  done
done
if in_time "signals during the drain"; then
  start_instance drainsig --drain-grace-ms 2000
  wait_ready drainsig || fail "drainsig ready"
  in_pod sleep timeout 40 node "$CLIENT" bulk "10.96.104.229:9000" 1 1000000 10 >"$BULK_OUT" 2>&1 &
  bulk_pid=$!
  sleep 1
  kill -TERM "${PID_OF[drainsig]}"
  sleep 0.3
  kill -INT "${PID_OF[drainsig]}"
  kill -HUP "${PID_OF[drainsig]}"
  sleep 0.3
  kill -TERM "${PID_OF[drainsig]}"
  wait_exit drainsig 100
  wait "$bulk_pid"
  after=$(snapshot_netfilter)
  check "SIGINT, SIGHUP and SIGTERM again during the drain: exits 0 and the node's rules are as before" \
    "$([[ $RC == 0 && $after == "$before" ]]; echo $?)" "status $RC"
fi

summary
((FAILED == 0))
