#!/usr/bin/env bash
# Issue 13, "fail safe and bounded", through the built binary in network namespaces:
#   1. Worker faults: with the test hook --test-fault relay:3 (every 3rd connection of the one
#      worker meets a std::bad_alloc in its relay), 30 connections through a ClusterIP: the 10
#      faulted ones are reset, the other 20 are answered, worker_faults says 10, nothing stays
#      counted as open, the capture rules stay, readiness and liveness stay 200, and SIGTERM
#      drains at once (no leaked connection holds it) and leaves the node's rules as before.
#   2. Limits: --max-admin-sessions 5 (5 silent sessions held: the 6th is reset, counted 1),
#      --max-readiness-sessions 5 (the same on :15021), --max-connections-per-worker 3 with one
#      worker (3 idle proxied connections held: the 4th is reset, counted 1); all under "limits"
#      in /stats.
#   3. Liveness: with --test-fault stall-worker:2000 the worker's loop blocks 2 s after start;
#      /healthz/live turns from 200 to 503 naming the worker (--liveness-worker-stall-ms 1000),
#      while readiness stays 200; SIGTERM still stops it cleanly.
#
#   fail_safe.sh DSPROXY_BIN ECHO_BIN
#
# Needs root, iproute2, iptables, nc, jq and bash 5: without any of them it fails, never skips.
# Prints one PASS/FAIL line per check and "N passed, M failed" last; exits non-zero on any
# failure. Everything it creates is removed on exit, also on failure or interruption.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

# Checks not started after this many seconds fail without running; a normal run takes ~15 s.
E2E_DEADLINE=${E2E_DEADLINE:-150}
CHECK_SHOW_DETAIL=1
HOLDERS=()
stop_holders() {
  local p
  for p in "${HOLDERS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${HOLDERS[@]}"; do wait "$p" 2>/dev/null; done
  HOLDERS=()
}
suite_trap stop_holders

suite_require
for tool in nc jq; do
  command -v "$tool" >/dev/null 2>&1 || cluster_die "missing command $tool (scripts/install-deps.sh)"
done

cluster_up
VIP=10.96.104.229 # ipv4/tcp-echo: one endpoint, echo-v4

# echo_via LINE: the echo pod's answer to one line through the ClusterIP, from the sleep pod.
echo_via() { echo "$1" | in_pod sleep timeout 5 nc -N -w 2 "$VIP" 9000 2>/dev/null; }
# http_status PORT PATH: the status line of a GET from the node, within 2 s ("" when none).
http_status() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  in_node timeout 2 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" "$2" >&3
    head -n 1 <&3' _ "$1" "$2" 2>/dev/null | tr -d '\r'
}
# http_body PORT PATH: the body of a GET from the node.
http_body() { node_http_get "$1" "$2" | tr -d '\r' | sed '1,/^$/d'; }
stat_of() { http_body 15000 /stats | jq -r "$1" 2>/dev/null; }
rule_count() { in_node iptables-save | grep -c DSPROXY; }
# wait_for TEXT-COMMAND EXPECTED SECONDS: polls a command until it prints EXPECTED.
wait_for() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    [[ $(eval "$1") == "$2" ]] && return 0
    sleep 0.1
  done
  return 1
}
# hold_sessions PORT N SECONDS: N silent TCP sessions from the node to 127.0.0.1:PORT, held open
# for SECONDS in the background (HOLDERS).
# Not through in_node: a backgrounded function is a subshell, and killing it would leave the
# holder running; `ip netns exec` execs, so $! is the holder itself.
hold_sessions() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  ip netns exec "$(node_ns)" bash -c '
    for ((i = 0; i < $2; i++)); do exec {fd}<>"/dev/tcp/127.0.0.1/$1" || exit 1; done
    sleep "$3"' _ "$1" "$2" "$3" &
  HOLDERS+=($!)
}

# ---- 1. worker faults ------------------------------------------------------------------------
section "a fault on a worker resets its one connection; the node keeps its proxy"
before=$(snapshot_netfilter)
if start_dsproxy --workers 1 --test-fault relay:3; then
  pass "dsproxy started with the fault-injection test hook (every 3rd relay throws bad_alloc)"
else
  fail "dsproxy started with the fault-injection test hook"
  summary
  exit 1
fi
rules_installed=$(rule_count)
if in_time "faults"; then
  answered=0 failed=0
  for i in $(seq 1 30); do
    got=$(echo_via "c$i")
    if [[ $got == "hello c$i" ]]; then answered=$((answered + 1)); else failed=$((failed + 1)); fi
  done
  check "30 connections: the 10 faulted are refused, the other 20 answered" \
    "$([[ $answered == 20 && $failed == 10 ]]; echo $?)" "$answered answered, $failed failed"
  faults=$(stat_of .worker_faults)
  check "worker_faults counts each of them" "$([[ $faults == 10 ]]; echo $?)" "worker_faults=$faults"
  wait_for "stat_of .active_connections" 0 5
  check "no faulted connection stays counted as open" $? "active_connections=$(stat_of .active_connections)"
  check "a fault is logged" "$(grep -q 'a callback threw (std::bad_alloc)' "$DSPROXY_LOG"; echo $?)"
  check "the capture rules are all still installed" "$([[ $(rule_count) == "$rules_installed" ]]; echo $?)" \
    "$rules_installed -> $(rule_count) DSPROXY lines"
  check "readiness stays 200" "$([[ $(http_status 15021 /healthz/ready) == "HTTP/1.1 200 OK" ]]; echo $?)"
  check "liveness stays 200" "$([[ $(http_status 15021 /healthz/live) == "HTTP/1.1 200 OK" ]]; echo $?)"
  got=$(echo_via after)
  check "the worker goes on serving" "$([[ $got == "hello after" ]]; echo $?)" "got '$got'"
fi
if stop_dsproxy; then
  pass "dsproxy exited after SIGTERM (status $DSPROXY_EXIT_STATUS)"
else
  fail "dsproxy exited after SIGTERM (status ${DSPROXY_EXIT_STATUS:-?})"
fi
check "the drain found no connection left open (none leaked by a fault)" \
  "$(! grep -q 'still open' "$DSPROXY_LOG"; echo $?)" "$(grep -m1 'still open' "$DSPROXY_LOG")"
after=$(snapshot_netfilter)
check "the node's rules are as before dsproxy" "$([[ $after == "$before" ]]; echo $?)" \
  "$(diff <(echo "$before") <(echo "$after") | head -n 5 | tr '\n' ' ')"

# ---- 2. limits -------------------------------------------------------------------------------
section "limits: past each, a new connection is reset at once and counted"
: >"$DSPROXY_LOG"
if in_time "limits" && start_dsproxy --workers 1 --max-admin-sessions 5 --max-readiness-sessions 5 \
  --max-connections-per-worker 3; then
  hold_sessions 15000 5 6
  hold_sessions 15021 5 6
  sleep 0.5
  got=$(http_status 15000 /stats)
  check "admin API: with 5 sessions held, the 6th gets no answer (reset)" "$([[ -z $got ]]; echo $?)" "got '$got'"
  got=$(http_status 15021 /healthz/ready)
  check "readiness port: with 5 sessions held, the 6th gets no answer (reset)" "$([[ -z $got ]]; echo $?)" \
    "got '$got'"
  stop_holders
  wait_for "stat_of .limits.adminSessions.active" 1 5 # the /stats session itself
  limits=$(http_body 15000 /stats | jq -c .limits)
  check "adminSessions: limit 5, refused 1" \
    "$([[ $(jq -r '"\(.adminSessions.limit) \(.adminSessions.refused)"' <<<"$limits") == "5 1" ]]; echo $?)" "$limits"
  check "readinessSessions: limit 5, refused 1" \
    "$([[ $(jq -r '"\(.readinessSessions.limit) \(.readinessSessions.refused)"' <<<"$limits") == "5 1" ]]; echo $?)"

  # Three idle proxied connections (nc waits on a silent stdin) fill the one worker.
  SLEEP_NS=$(pod_ns sleep)
  for i in 1 2 3; do
    # nc -d reads nothing from stdin: an idle connection. timeout passes our SIGTERM on to nc.
    ip netns exec "$SLEEP_NS" timeout 8 nc -d "$VIP" 9000 >/dev/null 2>&1 &
    HOLDERS+=($!)
  done
  wait_for "stat_of '.limits.workers[0].connections'" 3 5
  check "three proxied connections held on the worker" $? "$(stat_of '.limits.workers[0]' | tr -d ' \n')"
  got=$(echo_via fourth)
  check "the 4th connection is refused" "$([[ -z $got ]]; echo $?)" "got '$got'"
  refused=$(stat_of .rejected_worker_connection_limit)
  check "rejected_worker_connection_limit is 1" "$([[ $refused == 1 ]]; echo $?)" "$refused"
  stop_holders
  wait_for "stat_of '.limits.workers[0].connections'" 0 5
  got=$(echo_via fifth)
  check "once they close, connections are served again" "$([[ $got == "hello fifth" ]]; echo $?)" "got '$got'"
  stop_dsproxy || fail "dsproxy exited after SIGTERM (status ${DSPROXY_EXIT_STATUS:-?})"
else
  fail "dsproxy started with limits"
fi

# ---- 3. liveness -----------------------------------------------------------------------------
section "liveness: a stuck worker makes /healthz/live fail"
: >"$DSPROXY_LOG"
if in_time "liveness" && start_dsproxy --test-fault stall-worker:2000 --liveness-worker-stall-ms 1000; then
  got=$(http_status 15021 /healthz/live)
  check "before the stall: /healthz/live is 200" "$([[ $got == "HTTP/1.1 200 OK" ]]; echo $?)" "'$got'"
  wait_for "http_status 15021 /healthz/live" "HTTP/1.1 503 Service Unavailable" 8
  check "the stalled worker turns /healthz/live to 503" $? "$(http_body 15021 /healthz/live | head -n 1)"
  body=$(http_body 15021 /healthz/live)
  check "the answer names the stuck loop" "$([[ $body == *"worker 0 has not run a heartbeat"* ]]; echo $?)" "$body"
  got=$(http_status 15021 /healthz/ready)
  check "readiness is a different question: still 200" "$([[ $got == "HTTP/1.1 200 OK" ]]; echo $?)" "'$got'"
  if stop_dsproxy; then
    pass "a stalled dsproxy still stops on SIGTERM (status $DSPROXY_EXIT_STATUS)"
  else
    fail "a stalled dsproxy still stops on SIGTERM (status ${DSPROXY_EXIT_STATUS:-?})"
  fi
else
  fail "dsproxy started with the stall test hook"
fi
after=$(snapshot_netfilter)
check "the node's rules are as before dsproxy" "$([[ $after == "$before" ]]; echo $?)" \
  "$(diff <(echo "$before") <(echo "$after") | head -n 5 | tr '\n' ' ')"

summary
((FAILED == 0))
