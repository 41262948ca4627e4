#!/usr/bin/env bash
# The daemon's spine (issue 10, issue 13) through the built binary in network namespaces:
#   1. DNS and readiness answer while the control plane is stuck in a slow reload: dsproxy runs
#      with the test hook --test-build-delay-ms 5000 (every build after the first sleeps 5 s);
#      the config file changes, and during the reload it triggers a pod's DNS question, a readiness probe, the admin API and a
#      connection through a ClusterIP must all be answered (within a generous 2 s each; no
#      latency is asserted), and the reload then lands.
#   2. The config file source: an emptied file, a file of ignored kinds, and a deleted file keep
#      the last good state (capture rules and answers stay), each said in the log; the file's
#      return is reloaded.
#   3. SIGTERM at several moments of the start-up leaves the node's rules exactly as before.
#
#   daemon_threads.sh DSPROXY_BIN ECHO_BIN
#
# Needs root, iproute2, iptables, dig and bash 5: without any of them it fails, never skips.
# Prints one PASS/FAIL line per check and "N passed, M failed" last; exits non-zero on any
# failure. Everything it creates is removed on exit, also on failure or interruption.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

# Checks not started after this many seconds fail without running; a normal run takes ~40 s.
E2E_DEADLINE=${E2E_DEADLINE:-180}
CHECK_SHOW_DETAIL=1
suite_trap

suite_require
command -v dig >/dev/null 2>&1 || cluster_die "missing command dig (scripts/install-deps.sh: bind9-dnsutils)"

cluster_up
DSPROXY_CONFIG=$CLUSTER_TMP/cluster.yaml
GOOD_CONFIG=$CLUSTER_TMP/cluster.good.yaml
{
  cat "$CLUSTER_REPO_DIR/config/tcp-echo-experiment.yaml"
  echo "---"
  cat "$CLUSTER_REPO_DIR/config/kube-dns.yaml"
} >"$GOOD_CONFIG" || cluster_die "cannot write $GOOD_CONFIG"
cp -- "$GOOD_CONFIG" "$DSPROXY_CONFIG" || cluster_die "cannot copy the config"
# A Service the reload adds: its DNS name answers only once the slow build has landed.
LATE_SERVICE='---
apiVersion: v1
kind: Service
metadata: {name: late, namespace: ipv4}
spec:
  clusterIP: 10.96.77.77
  ipFamilies: [IPv4]
  ports: [{port: 9000, targetPort: 9000}]
  selector: {app: tcp-echo}
'

# dig_a NAME: the A answers (short, sorted) of a question from the sleep pod, through the capture
# to the DNS VIP; one try of 2 s (the "answered at all" bound).
dig_a() { in_pod sleep timeout 5 dig +time=2 +tries=1 +short "@10.96.0.10" "$1" A 2>&1 | sort | tr '\n' ' ' | sed 's/ $//'; }
# readiness: the status line of GET /healthz/ready from the node, within 2 s.
readiness() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  in_node timeout 2 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/15021" || exit 1
    printf "GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" >&3
    head -n 1 <&3' 2>/dev/null | tr -d '\r'
}
echo_via() { echo "$2" | in_pod sleep timeout 5 nc -N -w 2 "$1" 9000 2>&1; }
# ms since the epoch
now_ms() { date +%s%3N; }
log_has() { grep -qF -- "$1" "$DSPROXY_LOG"; }
# wait_log TEXT SECONDS: bounded wait for a log line.
wait_log() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    log_has "$1" && return 0
    sleep 0.1
  done
  return 1
}

# ---- 1. DNS and readiness during a slow reload ----------------------------------------------
section "a 5 s reload does not stall DNS, readiness or the data path"
before=$(snapshot_netfilter)
if start_dsproxy --test-build-delay-ms 5000; then
  pass "dsproxy started with the slow-build test hook and is ready"
else
  fail "dsproxy started with the slow-build test hook and is ready"
  summary
  exit 1
fi
got=$(dig_a tcp-echo.ipv4.svc.cluster.local)
check "before the reload: tcp-echo.ipv4 answers 10.96.104.229" "$([[ $got == 10.96.104.229 ]]; echo $?)" "got '$got'"

if in_time "reload"; then
  # The file poll (1 s) notices the change; the build it triggers sleeps.
  echo "$LATE_SERVICE" >>"$DSPROXY_CONFIG"
  wait_log "test hook: build (" 4
  check "the reload began (the build sleeps 5 s)" $? "$(grep -m1 'test hook' "$DSPROXY_LOG")"
  t0=$(now_ms)
  got=$(dig_a tcp-echo.ipv4.svc.cluster.local)
  t1=$(now_ms)
  check "during the reload: a pod's DNS question is answered" "$([[ $got == 10.96.104.229 ]]; echo $?)" \
    "got '$got' in $((t1 - t0)) ms"
  got=$(dig_a late.ipv4.svc.cluster.local)
  check "during the reload: the new Service is not yet known (answered from the snapshot in force)" \
    "$([[ -z $got ]]; echo $?)" "got '$got'"
  t0=$(now_ms)
  status=$(readiness)
  t1=$(now_ms)
  check "during the reload: readiness answers 200" "$([[ $status == "HTTP/1.1 200 OK" ]]; echo $?)" \
    "'$status' in $((t1 - t0)) ms"
  t0=$(now_ms)
  dump=$(node_http_get 15000 /config_dump | tail -n 1)
  t1=$(now_ms)
  check "during the reload: the admin API answers /config_dump" "$([[ $dump == *'"controlPlane"'* ]]; echo $?)" \
    "$((${#dump})) bytes in $((t1 - t0)) ms"
  got=$(echo_via 10.96.104.229 during)
  check "during the reload: a connection through a ClusterIP is served" "$([[ $got == "hello during" ]]; echo $?)" \
    "got '$got'"
  ! log_has "config reloaded ("
  check "all of the above happened while the build was still sleeping" $?
  wait_log "config reloaded (" 10
  check "the slow reload lands" $? "$(grep -m1 'config reloaded (' "$DSPROXY_LOG")"
  got=$(dig_a late.ipv4.svc.cluster.local)
  check "after the reload: the new Service answers" "$([[ $got == 10.96.77.77 ]]; echo $?)" "got '$got'"
fi

# ---- 2. the file source keeps the last good state --------------------------------------------
section "file source: empty, ignored-only and deleted files keep the last good state"
if in_time "file source"; then
  rules_before=$(in_node iptables-save | grep -c DSPROXY)
  : >"$DSPROXY_CONFIG"
  wait_log "the file is empty; refusing it" 5
  check "an emptied config file is refused and said so" $? "$(grep -m1 'the file is empty' "$DSPROXY_LOG")"
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: y}\n' >"$DSPROXY_CONFIG"
  wait_log "no Service, Pod, EndpointSlice or Node in the file" 5
  check "a config file of ignored kinds only is refused and said so" $?
  rm -f -- "$DSPROXY_CONFIG"
  wait_log "was deleted: keeping the last good configuration" 5
  check "a deleted config file is said so" $? "$(grep -m1 'was deleted' "$DSPROXY_LOG")"
  rules_now=$(in_node iptables-save | grep -c DSPROXY)
  check "the capture and refusal rules are all still there" "$([[ $rules_now == "$rules_before" ]]; echo $?)" \
    "$rules_before -> $rules_now DSPROXY lines"
  got=$(echo_via 10.96.104.229 kept)
  check "traffic is still served" "$([[ $got == "hello kept" ]]; echo $?)" "got '$got'"
  status=$(readiness)
  check "readiness stays 200" "$([[ $status == "HTTP/1.1 200 OK" ]]; echo $?)" "'$status'"
  cp -- "$GOOD_CONFIG" "$DSPROXY_CONFIG"
  wait_log "is back" 5
  check "its return is noticed" $?
fi
if stop_dsproxy; then
  pass "dsproxy exited after SIGTERM (status $DSPROXY_EXIT_STATUS)"
else
  fail "dsproxy exited after SIGTERM (status ${DSPROXY_EXIT_STATUS:-?})"
fi
after=$(snapshot_netfilter)
check "the node's rules are as before dsproxy" "$([[ $after == "$before" ]]; echo $?)" \
  "$(diff <(echo "$before") <(echo "$after") | head -n 5 | tr '\n' ' ')"

# ---- 3. SIGTERM during start-up ------------------------------------------------------------
section "SIGTERM at any moment of the start leaves the node clean"
for delay in 0 0.02 0.05 0.1 0.2 0.3 0.5 1; do
  in_time "SIGTERM after ${delay} s" || break
  log=$CLUSTER_TMP/dsproxy-term-$delay.log
  ip netns exec "$(node_ns)" "$DSPROXY_BIN" run --config "$DSPROXY_CONFIG" --node "$CLUSTER_NODE_NAME" \
    --redirect >"$log" 2>&1 &
  pid=$!
  # The background child is a copy of this shell (with its traps) until it execs: signal it only
  # once it is dsproxy, or the SIGTERM would run this script's cleanup in the child.
  for ((i = 0; i < 400; i++)); do
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$DSPROXY_BIN" ]] && break
    sleep 0.005
  done
  sleep "$delay"
  kill -TERM "$pid" 2>/dev/null
  exited=1
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || { exited=0; break; }
    sleep 0.1
  done
  if ((exited != 0)); then kill -KILL "$pid" 2>/dev/null; fi
  rc=0
  wait "$pid" 2>/dev/null || rc=$?
  after=$(snapshot_netfilter)
  # 0: drained and cleaned up; 143: killed by the signal's default action before the handler
  # existed, which is before anything was installed.
  check "SIGTERM ${delay} s into the start: exits (status $rc) and the rules are as before" \
    "$([[ $exited == 0 && ($rc == 0 || $rc == 143) && $after == "$before" ]]; echo $?)" \
    "$(grep -cE 'capture installed' "$log") install line(s); $(diff <(echo "$before") <(echo "$after") | head -n 3 | tr '\n' ' ')"
done

summary
((FAILED == 0))
