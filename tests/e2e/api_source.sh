#!/usr/bin/env bash
# dsproxy driven by the Kubernetes API instead of a file (issue 10): the netns cluster of
# lib/cluster.sh, and the fake API server (tests/tools/fake_apiserver) in the node namespace on
# its loopback, which dsproxy watches through `run --kubeconfig` (TLS verified, bearer token).
#
#   api_source.sh DSPROXY_BIN ECHO_BIN FAKE_APISERVER_BIN
#
#   0. readiness stays 503 until the first sync: dsproxy starts while the API server refuses
#      connections, and turns ready once it serves;
#   1. a pod and its EndpointSlice created while a client loops on the Service: served within
#      1 s of the control call, no connection fails;
#   2. the endpoint marked not ready, then the pod deleted: no new connection goes there;
#   3. a forced 410 relist (history compacted, watch streams cut mid-line) during traffic: no
#      connection fails, and a connection open across it still relays;
#   4. the API server away for 10 s: readiness stays 200, traffic goes on, and an object changed
#      meanwhile appears once it is back.
#
# Needs root, iproute2, iptables, curl, jq and bash 5: without any of them it fails, never skips.
# Every loop is bounded in count and time. Prints one PASS/FAIL line per check and
# "N passed, M failed" last; exits non-zero on any failure. Everything it creates is removed on
# exit, also on failure or interruption.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args FAKE_APISERVER_BIN -- "$@"
# shellcheck source=tests/e2e/lib/fake_apiserver.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/fake_apiserver.sh"
# Checks not started after this many seconds fail without running; a normal run takes ~70 s.
E2E_DEADLINE=${E2E_DEADLINE:-200}
CHECK_SHOW_DETAIL=1
apiserver_on_exit() {
  if (($1 != 0 || FAILED > 0)) && [[ -n ${FAKE_APISERVER_LOG:-} && -f $FAKE_APISERVER_LOG ]]; then
    tail -n 20 "$FAKE_APISERVER_LOG" >&2
  fi
  fake_apiserver_stop
}
suite_trap apiserver_on_exit

suite_require
for cmd in curl jq; do command -v "$cmd" >/dev/null || cluster_die "missing command $cmd (scripts/install-deps.sh)"; done
[[ -x $FAKE_APISERVER_BIN ]] || cluster_die "fake API server binary $FAKE_APISERVER_BIN is not an executable"

# ---- the topology ------------------------------------------------------------------------------
# A client, and two tcp-echo pods of Service api/web whose answers name them (from-a, from-b).
# echo-b's namespace exists from the start, but the API knows nothing of it until step 1.
cluster_pods_clear
#               key     Kubernetes name  IPv4         IPv6              node link   gateway
cluster_pod_add sleep default/sleep 10.244.0.5 fd00:10:244::5 vethsleep 10.244.0.1
cluster_pod_add echo-a api/echo-a 10.244.0.30 fd00:10:244::1e vethapia 10.244.0.1
cluster_pod_add echo-b api/echo-b 10.244.0.31 fd00:10:244::1f vethapib 10.244.0.1
cluster_echo_add echo-a --prefix from-a
cluster_echo_add echo-b --prefix from-b
ECHO_PORTS=9000
VIP=10.96.200.10
LATE_VIP=10.96.200.20
cluster_up
FAKE_APISERVER_DIR=$CLUSTER_TMP/apiserver

# ---- objects -------------------------------------------------------------------------------
pod_yaml() { # NAME NAMESPACE IP4 IP6 READY
  cat <<YAML
---
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $2, labels: {app: $1}}
spec: {nodeName: $CLUSTER_NODE_NAME, containers: [{name: app, ports: [{containerPort: 9000}]}]}
status:
  podIP: $3
  podIPs: [{ip: $3}, {ip: "$4"}]
  conditions: [{type: Ready, status: "$5"}]
YAML
}
# slice_yaml NAME SERVICE "IP:READY ..."
slice_yaml() {
  local e ip ready
  cat <<YAML
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: $1, namespace: api, labels: {kubernetes.io/service-name: $2}}
addressType: IPv4
ports: [{name: tcp, port: 9000, protocol: TCP}]
endpoints:
YAML
  for e in $3; do
    ip=${e%%:*} ready=${e##*:}
    echo "- {addresses: [$ip], conditions: {ready: $ready}, nodeName: $CLUSTER_NODE_NAME}"
  done
  [[ -n $3 ]] || echo "[]"
}
service_yaml() { # NAME VIP
  cat <<YAML
---
apiVersion: v1
kind: Service
metadata: {name: $1, namespace: api}
spec:
  clusterIP: $2
  clusterIPs: [$2]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  ports: [{name: tcp, port: 9000, targetPort: 9000}]
YAML
}
{
  cat <<YAML
apiVersion: v1
kind: Node
metadata: {name: $CLUSTER_NODE_NAME, labels: {topology.kubernetes.io/zone: zone-a}}
YAML
  pod_yaml sleep default 10.244.0.5 fd00:10:244::5 True
  pod_yaml echo-a api 10.244.0.30 fd00:10:244::1e True
  service_yaml web "$VIP"
  slice_yaml web-1 web "10.244.0.30:true"
} >"$CLUSTER_TMP/initial.yaml"

# ---- helpers ---------------------------------------------------------------------------------
now_ms() { date +%s%3N; }
readiness() { node_http_get 15021 /healthz/ready | head -n 1 | tr -d '\r'; }
dump() { node_http_get 15000 /config_dump | sed -n '/^{/,$p'; }
# Sum of a reflector counter over the six reflectors (relists, lists, ...).
reflector_sum() { dump | jq "[.controlPlane.sources[0].reflectors[].$1] | add // 0" 2>/dev/null; }
generation() { dump | jq '.generation' 2>/dev/null; }
# wait_generation_after G SECONDS: until the snapshot generation is above G.
wait_generation_after() {
  local i g
  for ((i = 0; i < $2 * 10; i++)); do
    g=$(generation)
    [[ $g =~ ^[0-9]+$ ]] && ((g > $1)) && return 0
    sleep 0.1
  done
  return 1
}
upsert() { fake_apiserver_upsert - >/dev/null; }

# The client loop, in the sleep pod, in the background: at most $2 connections and $3 seconds,
# one every ~20 ms, to $1:9000, each sending one line and waiting up to 2 s for the echo. One
# line per connection: "<ms since epoch at connect> <answer prefix: from-a|from-b> | FAIL <why>".
# Stops early when the file $4 exists.
# shellcheck disable=SC2016 # expanded by the pod's bash
LOOP='
vip=$1 count=$2 limit=$3 stop=$4
end=$((SECONDS + limit))
for ((i = 0; i < count && SECONDS < end; i++)); do
  [[ -e $stop ]] && break
  t=$(date +%s%3N)
  line= rc=0
  { printf "c%d\n" "$i" >&3 && IFS= read -r -t 2 line <&3; rc=$?; } 2>/dev/null 3<>"/dev/tcp/$vip/9000" || rc=$?
  if [[ $line == "from-"?" c$i" ]]; then echo "$t ${line%% *}"; else echo "$t FAIL rc=$rc line=$line"; fi
  sleep 0.02
done
'
LOOP_PID=
start_loop() { # VIP COUNT SECONDS OUT
  rm -f "$CLUSTER_TMP/loop.stop"
  in_pod sleep timeout $(($3 + 10)) bash -c "$LOOP" _ "$1" "$2" "$3" "$CLUSTER_TMP/loop.stop" >"$4" 2>&1 &
  LOOP_PID=$!
  CLUSTER_BG_PIDS+=("$LOOP_PID")
}
stop_loop() {
  touch "$CLUSTER_TMP/loop.stop"
  wait "$LOOP_PID" 2>/dev/null
  LOOP_PID=
}
failures_in() { grep -c FAIL "$1"; }
count_in() { grep -c . "$1"; }
from_in() { grep -c " $2\$" "$1"; }

# Starts dsproxy watching the fake API server; unlike start_dsproxy it does not wait for
# readiness (step 0 checks it is not ready first).
launch_dsproxy() {
  DSPROXY_LOG=$CLUSTER_TMP/dsproxy.log
  ip netns exec "$(node_ns)" "$DSPROXY_BIN" run --kubeconfig "$FAKE_APISERVER_DIR/kubeconfig" \
    --node "$CLUSTER_NODE_NAME" --redirect >>"$DSPROXY_LOG" 2>&1 &
  DSPROXY_PID=$!
}

before=$(snapshot_netfilter)

# ---- 0. not ready before the first sync ------------------------------------------------------
section "readiness waits for the first sync"
fake_apiserver_start --netns "$(node_ns)" --objects "$CLUSTER_TMP/initial.yaml" ||
  cluster_die "the fake API server did not start"
fake_apiserver_pause 60 >/dev/null || cluster_die "cannot pause the fake API server"
launch_dsproxy
not_ready=0 probes=0
for ((i = 0; i < 20; i++)); do
  sleep 0.1
  kill -0 "$DSPROXY_PID" 2>/dev/null || break
  status=$(readiness)
  [[ -n $status ]] || continue
  probes=$((probes + 1))
  [[ $status == "HTTP/1.1 503"* ]] && not_ready=$((not_ready + 1))
done
check "while the API server refuses connections, readiness answers 503" \
  "$( ((probes > 0 && not_ready == probes)); echo $?)" "$not_ready of $probes probes were 503"
fake_apiserver_resume >/dev/null
t0=$(now_ms)
ready=1
for ((i = 0; i < 150; i++)); do
  kill -0 "$DSPROXY_PID" 2>/dev/null || break
  if dsproxy_ready; then
    ready=0
    break
  fi
  sleep 0.1
done
check "once the API server serves, dsproxy syncs and turns ready" $ready "after $(($(now_ms) - t0)) ms"
if ((ready != 0)); then
  summary
  exit 1
fi
got=$(echo x | in_pod sleep timeout 5 nc -N -w 2 "$VIP" 9000 2>&1)
check "the Service known from the API is served" "$([[ $got == "from-a x" ]]; echo $?)" "got '$got'"

# ---- 1. a new pod and its endpoint, served within 1 s ------------------------------------------
section "a new endpoint is served within 1 s of the API call"
if in_time "new endpoint"; then
  out=$CLUSTER_TMP/loop1.out
  start_loop "$VIP" 300 60 "$out"
  sleep 1
  t0=$(now_ms)
  { pod_yaml echo-b api 10.244.0.31 fd00:10:244::1f True; slice_yaml web-1 web "10.244.0.30:true 10.244.0.31:true"; } | upsert
  first_b=
  for ((i = 0; i < 100; i++)); do
    first_b=$(awk '$2 == "from-b" { print $1; exit }' "$out")
    [[ -n $first_b ]] && break
    sleep 0.05
  done
  sleep 0.5
  stop_loop
  took=$((${first_b:-999999999999999} - t0))
  check "the new pod answers within 1 s of the upsert" "$( ((took <= 1000)); echo $?)" "first answer from echo-b ${took} ms after the call"
  check "no connection failed meanwhile" "$(($(failures_in "$out") > 0))" \
    "$(count_in "$out") connections, $(failures_in "$out") failed, $(from_in "$out" from-b) to echo-b"
fi

# ---- 2. not ready, then deleted: no new connection goes there -----------------------------------
section "an endpoint that is not ready or deleted gets no new connection"
if in_time "not ready"; then
  g=$(generation)
  slice_yaml web-1 web "10.244.0.30:true 10.244.0.31:false" | upsert
  wait_generation_after "$g" 5
  check "the update reached the snapshot" $?
  mark=$(pod_peers_count echo-b)
  out=$CLUSTER_TMP/loop2.out
  start_loop "$VIP" 40 30 "$out"
  wait "$LOOP_PID" 2>/dev/null
  LOOP_PID=
  check "echo-b not ready: 40 new connections, none to echo-b, none failed" \
    "$( (($(pod_peers_count echo-b) == mark && $(from_in "$out" from-a) == 40)); echo $?)" \
    "$(from_in "$out" from-a) from-a, $(from_in "$out" from-b) from-b, $(failures_in "$out") failed; echo-b saw $(($(pod_peers_count echo-b) - mark))"

  g=$(generation)
  slice_yaml web-1 web "10.244.0.30:true 10.244.0.31:true" | upsert
  wait_generation_after "$g" 5
  fake_apiserver_delete pods api echo-b >/dev/null
  g=$(generation)
  slice_yaml web-1 web "10.244.0.30:true" | upsert
  wait_generation_after "$g" 5
  check "the deletion reached the snapshot" $?
  mark=$(pod_peers_count echo-b)
  out=$CLUSTER_TMP/loop2b.out
  start_loop "$VIP" 40 30 "$out"
  wait "$LOOP_PID" 2>/dev/null
  LOOP_PID=
  check "echo-b deleted: 40 new connections, none to echo-b, none failed" \
    "$( (($(pod_peers_count echo-b) == mark && $(from_in "$out" from-a) == 40)); echo $?)" \
    "$(from_in "$out" from-a) from-a, $(failures_in "$out") failed; echo-b saw $(($(pod_peers_count echo-b) - mark))"
  # echo-b back for the next steps
  g=$(generation)
  { pod_yaml echo-b api 10.244.0.31 fd00:10:244::1f True; slice_yaml web-1 web "10.244.0.30:true 10.244.0.31:true"; } | upsert
  wait_generation_after "$g" 5
fi

# ---- 3. a 410 relist during traffic ---------------------------------------------------------
section "a forced 410 relist drops no connection"
if in_time "relist"; then
  relists0=$(reflector_sum relists)
  # One connection held open across the relist: a line before, a line after.
  # shellcheck disable=SC2016 # expanded by the pod's bash
  in_pod sleep timeout 40 bash -c '
    exec 3<>"/dev/tcp/$1/9000" || { echo "connect failed"; exit 1; }
    printf "before\n" >&3; IFS= read -r -t 2 a <&3
    for ((i = 0; i < 300; i++)); do [[ -e $2 ]] && break; sleep 0.1; done
    printf "after\n" >&3; IFS= read -r -t 2 b <&3
    echo "$a|$b"' _ "$VIP" "$CLUSTER_TMP/held.go" >"$CLUSTER_TMP/held.out" 2>&1 &
  held_pid=$!
  CLUSTER_BG_PIDS+=("$held_pid")
  out=$CLUSTER_TMP/loop3.out
  start_loop "$VIP" 300 60 "$out"
  sleep 1
  fake_apiserver_compact >/dev/null
  fake_apiserver_cut >/dev/null
  relisted=1
  for ((i = 0; i < 100; i++)); do
    r=$(reflector_sum relists)
    # Every reflector whose resourceVersion the compaction left behind relists (one that saw the
    # last write resumes its watch from it, legitimately, without a 410).
    if [[ $r =~ ^[0-9]+$ ]] && ((r > relists0)); then
      relisted=0
      break
    fi
    sleep 0.1
  done
  sleep 1
  stop_loop
  touch "$CLUSTER_TMP/held.go"
  wait "$held_pid" 2>/dev/null
  check "the reflectors relisted after the 410" $relisted "relists $relists0 -> $(reflector_sum relists)"
  check "no connection failed across the relist" "$(($(failures_in "$out") > 0 || $(count_in "$out") == 0))" \
    "$(count_in "$out") connections, $(failures_in "$out") failed"
  got=$(<"$CLUSTER_TMP/held.out")
  check "a connection open across the relist still relays" \
    "$([[ $got =~ ^from-.\ before\|from-.\ after$ ]]; echo $?)" "got '$got'"
fi

# ---- 4. the API server away for 10 s ---------------------------------------------------------
section "the API server away for 10 s: the last state is served, then caught up"
if in_time "pause"; then
  out=$CLUSTER_TMP/loop4.out
  start_loop "$VIP" 300 60 "$out"
  fake_apiserver_pause 10 >/dev/null
  t_pause=$SECONDS
  # Changed while it is away: a new Service with echo-a behind it.
  { service_yaml late "$LATE_VIP"; slice_yaml late-1 late "10.244.0.30:true"; } | upsert
  sleep 3
  status=$(readiness)
  check "during the pause readiness stays 200" "$([[ $status == "HTTP/1.1 200 OK" ]]; echo $?)" "'$status'"
  got=$(echo y | in_pod sleep timeout 5 nc -N -w 2 "$LATE_VIP" 9000 2>&1)
  check "during the pause the Service created meanwhile is not known yet" "$([[ $got != "from-a y" ]]; echo $?)" \
    "got '$got'"
  caught=
  for ((i = 0; i < 250; i++)); do
    got=$(echo z | in_pod sleep timeout 3 nc -N -w 1 "$LATE_VIP" 9000 2>&1)
    if [[ $got == "from-a z" ]]; then
      caught=$((SECONDS - t_pause))
      break
    fi
    sleep 0.1
  done
  stop_loop
  check "no connection failed during the pause" "$(($(failures_in "$out") > 0 || $(count_in "$out") == 0))" \
    "$(count_in "$out") connections, $(failures_in "$out") failed"
  check "after the pause the Service created meanwhile is served" "$([[ -n $caught ]]; echo $?)" \
    "${caught:-not} within 25 s of the pause's start (10 s pause)"
  status=$(readiness)
  check "readiness is still 200" "$([[ $status == "HTTP/1.1 200 OK" ]]; echo $?)" "'$status'"
fi

# ---- /config_dump and the way out ----------------------------------------------------------
d=$(dump)
jq -e '.controlPlane.sources[0].type == "kubernetes" and ([.controlPlane.sources[0].reflectors[] | select(.synced)] | length) == 6' \
  >/dev/null <<<"$d"
check "/config_dump shows the six reflectors synced (namespaces and authorizationpolicies too)" $? \
  "$(jq -c '[.controlPlane.sources[0].reflectors[] | {resource, synced, resource_version, relists, errors}]' <<<"$d" 2>/dev/null | cut -c1-400)"
if stop_dsproxy; then
  pass "dsproxy exited after SIGTERM (status $DSPROXY_EXIT_STATUS)"
else
  fail "dsproxy exited after SIGTERM (status ${DSPROXY_EXIT_STATUS:-?})"
fi
fake_apiserver_stop
after=$(snapshot_netfilter)
check "the node's rules are as before dsproxy" "$([[ $after == "$before" ]]; echo $?)" \
  "$(diff <(echo "$before") <(echo "$after") | head -n 5 | tr '\n' ' ')"

summary
((FAILED == 0))
