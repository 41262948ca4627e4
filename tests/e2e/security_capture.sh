#!/usr/bin/env bash
# The capture ports and descriptor exhaustion as a hostile pod would try them (issue 14,
# findings 5 and 6), through the built dsproxy and its real capture rules (`run --redirect`) in
# network namespaces:
#
#   (a) an app that listens on 15006 and 15001 itself is reachable from another pod on this node
#       and from a pod on another node, by its pod IP (both families) and through a Service whose
#       port and targetPort are 15006 (or whose targetPort is 15001);
#   (b) connections made straight to the node's capture ports (loopback and a node address inside
#       the node namespace, a node address from a pod; both families) are reset and counted as
#       loops (rejected_loop), and dsproxy lives;
#   (c) with dsproxy's descriptor limit lowered to ~256 (prlimit on the running process), a burst
#       of 1,000 concurrent connections to a Service ejects no endpoint, counts local_errors, the
#       process lives, and afterwards the Service serves normally.
#
#   security_capture.sh DSPROXY_BIN ECHO_BIN
#
# Needs root, iproute2, iptables, OpenBSD nc, prlimit (util-linux), jq and bash 5: without any of
# them it fails, never skips. Prints one PASS/FAIL line per check and "N passed, M failed" last;
# exits non-zero on any failure. Everything it creates is removed on exit, also on failure or
# interruption. Traffic stays inside the namespaces it creates.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

# Every echo pod listens on the capture ports as its own application ports, and on 9000.
ECHO_PORTS=9000,15001,15006
# Checks not started after this many seconds fail without running; a normal run takes ~20 s.
E2E_DEADLINE=${E2E_DEADLINE:-150}
BURST_CONNECTIONS=${BURST_CONNECTIONS:-1000}
FD_LIMIT_TARGET=256

CHECK_SHOW_DETAIL=1
suite_trap

# ---- prerequisites: all fatal -------------------------------------------------------------
suite_require
((BASH_VERSINFO[0] >= 5)) || cluster_die "needs bash 5 (EPOCHREALTIME), this is $BASH_VERSION"
command -v jq >/dev/null 2>&1 || cluster_die "jq is not installed (needed to read dsproxy's admin API)"
command -v prlimit >/dev/null 2>&1 || cluster_die "prlimit is not installed (util-linux)"

# ---- the topology ------------------------------------------------------------------------------
NODE4=172.31.255.1          # the node's own address, both families
NODE6=fd00:172:31::1
GW4=10.244.5.1              # the pods' gateway: a node address too
APP_SVC4=10.96.5.10         # sc/app: port 15006 -> 15006, port 80 -> 15001
APP_SVC6=fd00:10:96::5:10
WEB_SVC4=10.96.5.20         # sc/web: port 9000 -> 9000, two pods
WEB_SVC6=fd00:10:96::5:20

cluster_pods_clear
#               key     Kubernetes name   IPv4         IPv6              node link     gateway
cluster_pod_add client default/client 10.244.5.5 fd00:10:244:5::5 vethscclient $GW4
cluster_pod_add app sc/app 10.244.5.10 fd00:10:244:5::a vethscapp $GW4
cluster_pod_add web-0 sc/web-0 10.244.5.20 fd00:10:244:5::14 vethscweb0 $GW4
cluster_pod_add web-1 sc/web-1 10.244.5.21 fd00:10:244:5::15 vethscweb1 $GW4
# A pod on another node: its link plays the inter-node network, so its traffic to this node's
# pods is taken by the inbound capture (15006).
cluster_pod_add remote default/remote 10.244.6.7 fd00:10:244:6::7 to-worker2 10.244.6.1
cluster_echo_add app
cluster_echo_add web-0
cluster_echo_add web-1
cluster_up

DSPROXY_CONFIG=$CLUSTER_TMP/security-capture.yaml
pod_yaml() { # key name ns labels node
  cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: $2, namespace: $3, labels: {app: $4}}
spec:
  nodeName: $5
  containers: [{name: c, image: tcp-echo}]
status:
  podIPs: [{ip: $(pod_ip "$1" 4)}, {ip: "$(pod_ip "$1" 6)"}]
  conditions: [{type: Ready, status: "True"}]
EOF
}
{
  cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: app, namespace: sc}
spec:
  type: ClusterIP
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: $APP_SVC4
  clusterIPs: [$APP_SVC4, $APP_SVC6]
  ports:
  - {name: in, port: 15006, protocol: TCP, targetPort: 15006}
  - {name: out, port: 80, protocol: TCP, targetPort: 15001}
  selector: {app: app}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: sc}
spec:
  type: ClusterIP
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: $WEB_SVC4
  clusterIPs: [$WEB_SVC4, $WEB_SVC6]
  ports: [{name: tcp, port: 9000, protocol: TCP, targetPort: 9000}]
  selector: {app: web}
EOF
  pod_yaml client client default client "$CLUSTER_NODE_NAME"
  pod_yaml app app sc app "$CLUSTER_NODE_NAME"
  pod_yaml web-0 web-0 sc web "$CLUSTER_NODE_NAME"
  pod_yaml web-1 web-1 sc web "$CLUSTER_NODE_NAME"
  pod_yaml remote remote default remote kind-worker2
} >"$DSPROXY_CONFIG" || cluster_die "cannot write $DSPROXY_CONFIG"

# The node's own addresses besides the gateways, in the node namespace only (on lo: no dummy
# interface module needed).
_must ip -n "$(node_ns)" addr add "$NODE4/32" dev lo
_must ip -n "$(node_ns)" addr add "$NODE6/128" dev lo nodad

# ---- probes ------------------------------------------------------------------------------------
# One connection from bash's /dev/tcp (no process per connection): sends a line and waits up to
# 3 s for the echo. Prints ok (the echo came back), reset (connected, then closed or reset with
# no answer), timeout (connected, no answer), refused, error (another connect failure) or bad.
# shellcheck disable=SC2016 # expanded by the inner bash
PROBE='
host=$1 port=$2 payload=$3
err=$(mktemp)
trap "rm -f \"\$err\"" EXIT
line= connected=0 rc=0
{ connected=1; printf "%s\n" "$payload" >&3 && IFS= read -r -t 3 line <&3; rc=$?; } 2>"$err" 3<>"/dev/tcp/$host/$port"
if ((!connected)); then
  # connect() itself reports ECONNRESET when the reset from the proxy is processed before this process
  # wakes from its connect (the proxy accepted and reset within microseconds): still a reset.
  if grep -q refused "$err"; then echo refused
  elif grep -q "reset by peer" "$err"; then echo reset
  else echo error; fi
elif [[ $line == "hello $payload" ]]; then echo ok
elif ((rc > 128)); then echo timeout
elif [[ -z $line ]]; then echo reset
else echo bad
fi
'
# probe_from WHERE HOST PORT: WHERE is "node" or a pod key.
probe_from() {
  local where=$1 host=$2 port=$3 out
  if [[ $where == node ]]; then
    out=$(in_node timeout 8 bash -c "$PROBE" _ "$host" "$port" "p-$RANDOM")
  else
    out=$(in_pod "$where" timeout 8 bash -c "$PROBE" _ "$host" "$port" "p-$RANDOM")
  fi
  echo "${out:-killed}"
}
# bracket HOST: [HOST] for IPv6, HOST otherwise.
bracket() { if [[ $1 == *:* ]]; then echo "[$1]"; else echo "$1"; fi; }

# ---- dsproxy's admin API -------------------------------------------------------------------------
admin_body() { node_http_get 15000 "$1" | tr -d '\r' | sed '1,/^$/d'; }
stat_of() { admin_body /stats | jq -r --arg k "$1" '.[$k] // "?"' 2>/dev/null; }
stats_now() { admin_body /stats | jq -r 'to_entries[] | select(.value | type == "number") | "\(.key) \(.value)"' 2>/dev/null; }
stat_delta() {
  local a b
  a=$(awk -v n="$3" '$1 == n { print $2 }' <<<"$1")
  b=$(awk -v n="$3" '$1 == n { print $2 }' <<<"$2")
  if [[ -z $a || -z $b ]]; then echo "?"; else echo $((b - a)); fi
}
# Endpoints of sc/web: "ip:port outlierCheck ejections" per line.
web_endpoints() {
  admin_body /config_dump | jq -r '.endpoints[]? | select(.clusterName | test("\\|web\\.sc\\.svc")) | .endpoints[]? |
    "\(.address.socketAddress.address):\(.address.socketAddress.portValue) \(.outlierCheck) \(.ejections)"' 2>/dev/null
}
dsproxy_alive() { [[ -n $DSPROXY_PID ]] && kill -0 "$DSPROXY_PID" 2>/dev/null && dsproxy_ready; }

# ---- start -------------------------------------------------------------------------------------
before=$(snapshot_netfilter)
section "dsproxy run --redirect"
if start_dsproxy; then
  pass "dsproxy started with --redirect and /healthz/ready answers 200"
else
  fail "dsproxy started with --redirect and /healthz/ready answers 200"
  summary
  exit 1
fi

# ---- (a) an app of our own listening on 15006 and 15001 --------------------------------------
section "(a) an app listening on 15006 and 15001 is reachable"
s0=$(stats_now)
# reach WHAT FROM HOST PORT POD_KEY: the echo answers and the app saw the client's own address.
reach() {
  local what=$1 from=$2 host=$3 port=$4 out mark seen want
  in_time "$what" || return
  mark=$(pod_peers_count app)
  out=$(probe_from "$from" "$host" "$port")
  seen=$(pod_peers_since app "$mark" | paste -sd ';')
  if [[ $host == *:* ]]; then want="$5 $(pod_ip "$from" 6)"; else want="$5 $(pod_ip "$from" 4)"; fi
  [[ $out == ok && $seen == "$want" ]]
  check "$what" $? "$out; app saw '${seen:-nothing}', want '$want'"
}
for fam in 4 6; do
  ip=$(pod_ip app $fam)
  for port in 15006 15001; do
    reach "client -> app pod IP $(bracket "$ip"):$port (outbound capture)" client "$ip" $port $port
  done
  reach "remote pod on another node -> app pod IP $(bracket "$ip"):15006 (inbound capture)" remote "$ip" 15006 15006
done
reach "client -> Service sc/app $APP_SVC4:15006 (targetPort 15006)" client $APP_SVC4 15006 15006
reach "client -> Service sc/app [$APP_SVC6]:15006 (targetPort 15006)" client $APP_SVC6 15006 15006
reach "client -> Service sc/app $APP_SVC4:80 (targetPort 15001)" client $APP_SVC4 80 15001
reach "client -> Service sc/app [$APP_SVC6]:80 (targetPort 15001)" client $APP_SVC6 80 15001
s1=$(stats_now)
d=$(stat_delta "$s0" "$s1" rejected_loop)
[[ $d == 0 ]]
check "none of them was taken for a loop" $? "rejected_loop +$d"

# ---- (b) straight to the capture ports ----------------------------------------------------------
section "(b) connections straight to the node's capture ports are reset as loops"
s0=$(stats_now)
direct=0
for port in 15001 15006; do
  for host in 127.0.0.1 ::1 $NODE4 $NODE6 $GW4; do
    what="node namespace -> $(bracket "$host"):$port"
    in_time "$what" || continue
    out=$(probe_from node "$host" "$port")
    direct=$((direct + 1))
    [[ $out == reset ]]
    check "$what is reset" $? "$out"
  done
done
for target in "$NODE4 15006" "$NODE6 15001" "$GW4 15001" "$GW4 15006"; do
  read -r host port <<<"$target"
  what="client pod -> node address $(bracket "$host"):$port"
  in_time "$what" || continue
  out=$(probe_from client "$host" "$port")
  direct=$((direct + 1))
  [[ $out == reset ]]
  check "$what is reset" $? "$out"
done
s1=$(stats_now)
d=$(stat_delta "$s0" "$s1" rejected_loop)
[[ $d == "$direct" ]]
check "each of them counted as a loop" $? "rejected_loop +$d for $direct connections"
dsproxy_alive
check "dsproxy lives and is ready after the loop attempts" $?

# ---- (c) descriptor exhaustion ----------------------------------------------------------------
section "(c) bursts of $BURST_CONNECTIONS connections under a descriptor limit of ~$FD_LIMIT_TARGET"
# Runs in the client pod: opens COUNT connections to HOST PORT one after the other and keeps them
# all open, writes a line on each, holds them HOLD s, reads each, then closes them all. echoed:
# the answer came; ended: reset or closed by the proxy; hung: still open with nothing to read
# after HOLD s (a client left waiting, e.g. in the accept queue).
# shellcheck disable=SC2016 # expanded by the client's bash
BURST='
host=$1 port=$2 count=$3 hold=$4
trap "" PIPE
ulimit -n $((count + 64)) || { echo "cannot raise the client descriptor limit"; exit 3; }
fds=() opened=0 failed=0 echoed=0 ended=0 hung=0 hung_at=
for ((i = 0; i < count; i++)); do
  if exec {fd}<>"/dev/tcp/$host/$port"; then
    fds+=("$fd")
    opened=$((opened + 1))
    printf "b-%d\n" "$i" >&"$fd"
  else
    failed=$((failed + 1))
  fi
done 2>/dev/null
sleep "$hold"
# Every fate must be decided by now: nothing is closed until all are read, so the proxy gets no
# descriptor back meanwhile. read -t 0.01 can time out on a loaded machine with the answer
# already there (the timer fires before the read): the few that do get a second, longer look.
again=()
for fd in "${fds[@]}"; do
  line=
  IFS= read -r -t 0.01 line <&"$fd"
  rc=$?
  if [[ $line == "hello b-"* ]]; then echoed=$((echoed + 1))
  elif ((rc > 128)); then again+=("$fd")
  else ended=$((ended + 1))
  fi
done 2>/dev/null
for fd in "${again[@]}"; do
  line= rc=142
  ((${#again[@]} <= 20)) && { IFS= read -r -t 0.5 line <&"$fd"; rc=$?; }
  if [[ $line == "hello b-"* ]]; then echoed=$((echoed + 1))
  elif ((rc > 128)); then hung=$((hung + 1)); ((hung <= 10)) && hung_at+=" $fd"
  else ended=$((ended + 1))
  fi
done 2>/dev/null
for fd in "${fds[@]}"; do exec {fd}>&-; done
echo "opened=$opened failed=$failed echoed=$echoed ended=$ended hung=$hung${hung_at:+ (descriptors$hung_at of ${fds[0]}-${fds[-1]})}"
'
# burst_phase NAME PARITY: lowers dsproxy's limit to ~256 so that the number of free descriptors
# is odd or even, and sends a burst to sc/web.
#  odd:  a proxied connection takes two, so one is always left: new connections are accepted and
#        then fail at socket() for their upstream, the case that used to eject endpoints.
#  even: none is left: accept() fails with EMFILE, and the waiting clients must be reset through
#        the reserve descriptor (accept_shed), not left hanging in the accept queue.
# The kernel hands out the lowest free numbers, so free = limit - open descriptors.
burst_phase() {
  local name=$1 parity=$2 open_fds limit burst s0 s1 eps1 d_ej d_local d_shed d_acc d_fail failed_eps hung i
  in_time "burst ($name)" || return
  open_fds=$(find "/proc/$DSPROXY_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  limit=$FD_LIMIT_TARGET
  if [[ $parity == odd ]]; then ((((limit - open_fds) % 2) == 1)) || limit=$((limit + 1))
  else ((((limit - open_fds) % 2) == 0)) || limit=$((limit + 1)); fi
  if ((open_fds >= limit - 20)); then
    fail "burst ($name): dsproxy has $open_fds descriptors open already, no room for a limit of $limit"
    return
  fi
  if ! prlimit --pid "$DSPROXY_PID" --nofile="$limit:"; then
    fail "burst ($name): prlimit --pid $DSPROXY_PID --nofile=$limit: (the soft limit)"
    return
  fi
  pass "burst ($name): dsproxy's descriptor limit is $limit with $open_fds open ($((limit - open_fds)) free)"
  s0=$(stats_now)
  burst=$(in_pod client timeout 90 bash -c "$BURST" _ $WEB_SVC4 9000 "$BURST_CONNECTIONS" 1)
  check "burst ($name): the client ran to its end" "$([[ $burst == opened=* ]] && echo 0 || echo 1)" \
    "${burst:-killed after 90 s}"
  kill -0 "$DSPROXY_PID" 2>/dev/null
  check "burst ($name): dsproxy is still running" $?
  # Until the proxy has closed what the client closed (bounded).
  for ((i = 0; i < 50; i++)); do dsproxy_ready && break; sleep 0.1; done
  s1=$(stats_now)
  eps1=$(web_endpoints)
  d_ej=$(stat_delta "$s0" "$s1" outlier_ejections)
  d_local=$(stat_delta "$s0" "$s1" local_errors)
  d_shed=$(stat_delta "$s0" "$s1" accept_shed)
  d_acc=$(stat_delta "$s0" "$s1" outbound_accepted)
  d_fail=$(stat_delta "$s0" "$s1" upstream_connect_failed)
  [[ $d_ej == 0 ]]
  check "burst ($name): no endpoint was ejected" $? "outlier_ejections +$d_ej; sc/web endpoints: $(paste -sd ';' <<<"$eps1")"
  failed_eps=$(awk '$2 != "OK"' <<<"$eps1" | wc -l)
  [[ -n $eps1 ]] && ((failed_eps == 0))
  check "burst ($name): every sc/web endpoint passes its outlier check" $? "$failed_eps not OK"
  [[ $d_local =~ ^[0-9]+$ ]] && ((d_local > 0)) && [[ $d_fail == 0 ]]
  check "burst ($name): the node's own errors are counted apart, none as an upstream failure" $? \
    "local_errors +$d_local, accept_shed +$d_shed, outbound_accepted +$d_acc, upstream_connect_failed +$d_fail"
  hung=$(sed -n 's/.* hung=\([0-9]*\).*/\1/p' <<<"$burst")
  [[ $hung == 0 ]]
  check "burst ($name): no client was left waiting: each got its echo or a reset" $? "hung ${hung:-?}"
  if [[ $parity == even ]]; then
    [[ $d_shed =~ ^[0-9]+$ ]] && ((d_shed > 0))
    check "burst ($name): connections with no descriptor left were reset at accept" $? "accept_shed +$d_shed"
  fi
  dsproxy_alive
  check "burst ($name): dsproxy is ready afterwards" $?
  local vip what outs
  for vip in $WEB_SVC4 $WEB_SVC6; do
    what="burst ($name): afterwards client -> Service sc/web $(bracket "$vip"):9000 is served (limit still $limit)"
    in_time "$what" || continue
    outs=
    for i in 1 2 3; do outs+="$(probe_from client "$vip" 9000) "; done
    [[ $outs == "ok ok ok " ]]
    check "$what" $? "3 connections: $outs"
  done
}
burst_phase "upstream socket fails" odd
burst_phase "accept fails" even

# ---- the node is left as it was --------------------------------------------------------------
stop_dsproxy
graceful=$?
((graceful == 0 && DSPROXY_EXIT_STATUS == 0))
check "dsproxy exits on SIGTERM with status 0" $? "exit status $DSPROXY_EXIT_STATUS"
now=$(snapshot_netfilter)
[[ $now == "$before" ]]
check "after dsproxy stopped, the node's rules and routes are as before" $?

echo "(took ${SECONDS}s)"
summary
((FAILED == 0))
