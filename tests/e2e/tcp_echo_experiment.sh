#!/usr/bin/env bash
# The dual-stack tcp-echo experiment of Istio's dual-stack announcement, without Kubernetes:
# one node (kind-worker) in network namespaces, dsproxy capturing its pods' traffic, and the
# sleep pod talking to the tcp-echo Services of the dual-stack, ipv4 and ipv6 namespaces.
#
#   tcp_echo_experiment.sh DSPROXY_BIN ECHO_BIN
#
# Needs root, iproute2, iptables, OpenBSD nc, and python3 or jq. Missing any of them is a
# failure, never a skip. Prints one PASS/FAIL line per check and "N passed, M failed" at the
# end; exits non-zero on any failure. Everything it creates is removed on exit, also on
# failure or interruption.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

# The whole run must stay under two minutes even against a proxy that accepts and never
# answers: traffic and proxy-config checks not started after this many seconds fail without
# running. What always runs after it is bounded (stop: 10 s, redirect commands: 3 x 5 s).
E2E_DEADLINE=${E2E_DEADLINE:-75}

suite_trap

# ---- prerequisites: all fatal -------------------------------------------------------------
suite_require
[[ -f $DSPROXY_CONFIG ]] || cluster_die "config $DSPROXY_CONFIG does not exist"
# E2E_JSON_TOOL=jq forces the jq path (to test it where python3 exists).
JSON_TOOL=${E2E_JSON_TOOL:-}
if [[ -n $JSON_TOOL ]]; then
  command -v "$JSON_TOOL" >/dev/null 2>&1 || cluster_die "E2E_JSON_TOOL=$JSON_TOOL is not installed"
elif command -v python3 >/dev/null 2>&1; then
  JSON_TOOL=python3
elif command -v jq >/dev/null 2>&1; then
  JSON_TOOL=jq
else
  cluster_die "neither python3 nor jq is installed (needed to read proxy-config -o json)"
fi

# Reads proxy-config listeners JSON on stdin (a list of Envoy-style listeners, or anything that
# nests them) and prints one line per listener: name TAB address:port TAB additional addresses
# (comma-separated, "-" for none). IPv6 addresses are bracketed.
listeners_tsv() {
  if [[ $JSON_TOOL == python3 ]]; then
    python3 -c '
import json, sys

def listeners(x):
    if isinstance(x, dict):
        if "name" in x and "address" in x:
            yield x
            return
        for v in x.values():
            yield from listeners(v)
    elif isinstance(x, list):
        for v in x:
            yield from listeners(v)

def socket_address(a):
    s = (a or {}).get("socketAddress") or {}
    host = str(s.get("address", ""))
    return ("[%s]" % host if ":" in host else host) + ":" + str(s.get("portValue", ""))

for l in listeners(json.load(sys.stdin)):
    extra = [socket_address(e.get("address")) for e in l.get("additionalAddresses") or []]
    print(l["name"], socket_address(l["address"]), ",".join(extra) or "-", sep="\t")
'
  else
    jq -r '
      def sa: (.socketAddress // {}) as $s | ($s.address // "" | tostring) as $h
        | (if ($h | contains(":")) then "[\($h)]" else $h end) + ":" + ($s.portValue | tostring);
      [.. | objects | select(has("name") and has("address"))] | .[]
        | [.name, (.address | sa),
           ([.additionalAddresses[]?.address | sa] | join(",") | if . == "" then "-" else . end)]
        | @tsv'
  fi
}

# The third column (additional addresses) of listener $2 in listeners_tsv output $1; fails when
# the listener is absent.
listener_field() {
  awk -F '\t' -v n="$2" -v f="$3" '$1 == n { print $f; found = 1 } END { exit !found }' <<<"$1"
}

# Prints "counter value" for every numeric counter of dsproxy's admin GET :15000/stats.
stats_now() {
  local body
  body=$(node_http_get 15000 /stats | tr -d '\r' | sed '1,/^$/d')
  if [[ $JSON_TOOL == python3 ]]; then
    python3 -c '
import json, sys
for k, v in json.load(sys.stdin).items():
    if isinstance(v, int):
        print(k, v)
' <<<"$body" 2>/dev/null
  else
    jq -r 'to_entries[] | select(.value | type == "number") | "\(.key) \(.value)"' <<<"$body" 2>/dev/null
  fi
}
# expect_counter WHAT BEFORE AFTER COUNTER WANT: the counter grew by exactly WANT between the
# two stats_now outputs. Shows that the traffic took the path the check is about.
expect_counter() {
  local what=$1 before=$2 after=$3 counter=$4 want=$5 a b
  a=$(awk -v n="$counter" '$1 == n { print $2 }' <<<"$before")
  b=$(awk -v n="$counter" '$1 == n { print $2 }' <<<"$after")
  if [[ -z $a || -z $b ]]; then
    fail "$what (no counter $counter in GET :15000/stats)"
  elif ((b - a == want)); then
    pass "$what ($counter +$want)"
  else
    fail "$what ($counter +$((b - a)), want +$want)"
  fi
}

# echo_via SRC_POD DEST PORT PAYLOAD: prints what the tcp-echo answered (bounded by nc -w and
# an outer timeout).
echo_via() {
  echo "$4" | in_pod "$1" timeout 8 nc -N -w 5 "$2" "$3" 2>/dev/null
}

# ---- the cluster and dsproxy --------------------------------------------------------------
cluster_up
before=$(snapshot_netfilter)

# shellcheck disable=SC2119 # no extra dsproxy arguments
if start_dsproxy; then
  pass "dsproxy started with --redirect and /healthz/ready answers 200"
else
  fail "dsproxy started with --redirect and /healthz/ready answers 200"
  summary
  exit 1
fi

# ---- 1. every ClusterIP of every Service answers, on both Service ports --------------------
# service namespace, ClusterIP, family, pod behind it, payload (the blog's)
VIPS=(
  "dual-stack fd00:10:96::f9fc 6 echo-ds dualstack"
  "dual-stack 10.96.106.11 4 echo-ds dualstack"
  "ipv4 10.96.104.229 4 echo-v4 ipv4"
  "ipv6 fd00:10:96::9c3a 6 echo-v6 ipv6"
)
stats_before=$(stats_now)
ran=0
for entry in "${VIPS[@]}"; do
  read -r svc vip family pod payload <<<"$entry"
  for port in 9000 9001; do
    what="sleep -> tcp-echo.$svc $vip port $port"
    in_time "$what" || continue
    ran=$((ran + 1))
    mark=$(pod_peers_count "$pod")
    answer=$(echo_via sleep "$vip" "$port" "$payload")
    [[ $answer == "hello $payload" ]]
    ok=$?
    check "$what answers 'hello $payload'" $ok "got '${answer//$'\n'/\\n}'"
    # The pod must see the client's own address (IPv4 VIP: its IPv4 one, IPv6 VIP: its IPv6
    # one), never a node or proxy address.
    want="$port $(pod_ip sleep "$family")"
    got=$(pod_peers_since "$pod" "$mark")
    [[ $got == "$want" ]]
    ok=$?
    check "$what: $pod sees the client as $(pod_ip sleep "$family")" $ok \
      "peer log has '${got//$'\n'/; }', want '$want'"
  done
done

expect_counter "the outbound capture (15001) routed every ClusterIP connection to its Service" \
  "$stats_before" "$(stats_now)" routed_to_service "$ran"

# ---- 2. pod IPs on a port no Service has pass through untouched ----------------------------
for pod in "${CLUSTER_ECHO_PODS[@]}"; do
  for family in 4 6; do
    ip=$(pod_ip "$pod" "$family")
    what="sleep -> pod $pod $ip port 9002 (passthrough)"
    in_time "$what" || continue
    mark=$(pod_peers_count "$pod")
    answer=$(echo_via sleep "$ip" 9002 passthrough)
    got=$(pod_peers_since "$pod" "$mark")
    want="9002 $(pod_ip sleep "$family")"
    [[ $answer == "hello passthrough" && $got == "$want" ]]
    ok=$?
    check "$what" $ok "answer '${answer//$'\n'/\\n}', peer log '${got//$'\n'/; }', want '$want'"
  done
done

# ---- 3. a ClusterIP on a port its Service lacks is refused ---------------------------------
# The refusal rules answer the SYN with a TCP reset in the kernel: the client's connect fails
# with "connection refused" and the proxy never sees the connection.
stats_before=$(stats_now)
for entry in "${VIPS[@]}"; do
  read -r svc vip family pod payload <<<"$entry"
  what="sleep -> tcp-echo.$svc $vip port 9002 (not a Service port) is refused"
  in_time "$what" || continue
  declare -A marks=()
  for p in "${CLUSTER_ECHO_PODS[@]}"; do marks[$p]=$(pod_peers_count "$p"); done
  answer=$(echo "$payload" | in_pod sleep timeout 8 nc -v -N -w 3 "$vip" 9002 2>&1)
  reached=
  for p in "${CLUSTER_ECHO_PODS[@]}"; do
    [[ -n $(pod_peers_since "$p" "${marks[$p]}") ]] && reached+=" $p"
  done
  [[ $answer == *"Connection refused"* && -z $reached ]]
  ok=$?
  check "$what" $ok "nc said '${answer//$'\n'/\\n}', reached:${reached:- none}"
done

expect_counter "the refused connections never reached dsproxy" \
  "$stats_before" "$(stats_now)" outbound_accepted 0

# ---- 4. from another node, through the inbound capture -------------------------------------
stats_before=$(stats_now)
ran=0
for pod in "${CLUSTER_ECHO_PODS[@]}"; do
  for family in 4 6; do
    ip=$(pod_ip "$pod" "$family")
    what="remote-client-0 (kind-worker2) -> pod $pod $ip port 9000"
    in_time "$what" || continue
    ran=$((ran + 1))
    mark=$(pod_peers_count "$pod")
    answer=$(echo_via remote "$ip" 9000 remote)
    got=$(pod_peers_since "$pod" "$mark")
    want="9000 $(pod_ip remote "$family")"
    [[ $answer == "hello remote" && $got == "$want" ]]
    ok=$?
    check "$what answers and sees the client as $(pod_ip remote "$family")" $ok \
      "answer '${answer//$'\n'/\\n}', peer log '${got//$'\n'/; }', want '$want'"
  done
done

expect_counter "the inbound capture (15006) took every connection from the other node" \
  "$stats_before" "$(stats_now)" inbound_accepted "$ran"

# ---- 4b. Istio metrics on :15020 (both families) and one access-log line per connection -----
# metrics_get ADDRESS PATH: the body of GET http://ADDRESS:15020PATH from the node.
metrics_get() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  in_node timeout 3 bash -c '
    exec 3<>"/dev/tcp/$1/15020" || exit 1
    printf "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" "$2" >&3
    cat <&3' _ "$1" "$2" 2>/dev/null | tr -d '\r' | sed '1,/^$/d'
}
# metric_sum BODY NAME FILTER: the sum of NAME's samples whose labels contain FILTER.
metric_sum() {
  awk -v n="$2" -v f="$3" 'index($0, n "{") == 1 && index($0, f) { s += $NF } END { print s + 0 }' <<<"$1"
}
access_lines() { grep -c 'access connection complete' "$DSPROXY_LOG" 2>/dev/null || true; }
if in_time "metrics and access log"; then
  # Every connection above has ended on the client side; the proxy closes its side at once, and
  # writes the access log in batches at least every second. Wait (bounded) until every accepted
  # connection is counted closed and logged.
  accepted=0 closed=-1 lines=-1
  for ((i = 0; i < 50; i++)); do
    accepted=$(stats_now | awk '$1 == "outbound_accepted" || $1 == "inbound_accepted" { s += $2 } END { print s + 0 }')
    body=$(metrics_get 127.0.0.1 /metrics)
    closed=$(metric_sum "$body" istio_tcp_connections_closed_total "")
    lines=$(access_lines)
    ((closed == accepted && lines == accepted && accepted > 0)) && break
    sleep 0.1
  done
  check "GET 127.0.0.1:15020/metrics counts every accepted connection closed" $((closed == accepted && accepted > 0 ? 0 : 1)) \
    "closed $closed, accepted $accepted"
  body6=$(metrics_get ::1 /stats/prometheus)
  [[ $body6 == *"# TYPE istio_tcp_connections_opened_total counter"* ]]
  check "GET [::1]:15020/stats/prometheus answers with the istio_tcp_* families" $? "${body6:0:200}"
  svc='destination_service="tcp-echo.dual-stack.svc.cluster.local"'
  n=$(metric_sum "$body" istio_tcp_connections_opened_total "reporter=\"source\",source_workload=\"sleep\"")
  ds=$(metric_sum "$body" istio_tcp_connections_closed_total "$svc")
  dsw=$(metric_sum "$body" istio_tcp_connections_closed_total "destination_workload=\"tcp-echo\"")
  rx=$(metric_sum "$body" istio_tcp_received_bytes_total "$svc")
  ((ds == 4 && n >= 4 && dsw >= 4 && rx > 0))
  check "istio_tcp_* series for sleep -> $svc count its 4 connections (both ClusterIPs, 2 ports)" $? \
    "closed $ds, sleep opened $n, destination_workload tcp-echo $dsw, received bytes $rx"
  ((lines == accepted))
  check "the access log has one line per accepted connection" $? "$lines lines, $accepted accepted"
  v6=$(grep 'access connection complete' "$DSPROXY_LOG" | grep -c 'dst.service=tcp-echo.dual-stack.svc.cluster.local .*family=IPv6 fallback=false')
  v4=$(grep 'access connection complete' "$DSPROXY_LOG" | grep -c 'dst.service=tcp-echo.dual-stack.svc.cluster.local .*family=IPv4 fallback=false')
  ((v6 == 2 && v4 == 2))
  check "the access log shows the dual-stack Service served on both families (2 IPv6, 2 IPv4)" $? \
    "IPv6 $v6, IPv4 $v4"
fi

# ---- 5. proxy-config listeners: one listener per Service port, both ClusterIPs on it -------
if in_time "proxy-config listeners"; then
  json=$(in_node timeout 5 "$DSPROXY_BIN" proxy-config listeners --port 9000 -o json 2>&1)
  status=$?
  tsv=$(listeners_tsv <<<"$json" 2>&1)
  if ((status != 0)) || [[ -z $tsv ]]; then
    fail "proxy-config listeners --port 9000 -o json gives listeners (status $status): ${json:0:300}"
  else
    extra=$(listener_field "$tsv" fd00:10:96::f9fc_9000 3)
    [[ $extra == "10.96.106.11:9000" ]]
    ok=$?
    check "listener fd00:10:96::f9fc_9000 has additionalAddresses 10.96.106.11:9000" $ok \
      "got '${extra:-listener missing}'"
    for name in 10.96.104.229_9000 fd00:10:96::9c3a_9000; do
      ok=1
      if extra=$(listener_field "$tsv" "$name" 3) && [[ $extra == - ]]; then ok=0; fi
      check "single-stack listener $name exists without additionalAddresses" $ok \
        "got '${extra:-listener missing}'"
    done
  fi
  # virtualInbound listens on 15006, so it only shows up in the unfiltered listing.
  json=$(in_node timeout 5 "$DSPROXY_BIN" proxy-config listeners -o json 2>&1)
  tsv=$(listeners_tsv <<<"$json" 2>/dev/null)
  line=$(awk -F '\t' '$1 == "virtualInbound" { print $2 " + " $3 }' <<<"$tsv")
  [[ $line == "0.0.0.0:15006 + [::]:15006" ]]
  ok=$?
  check "listener virtualInbound on 0.0.0.0:15006 with additional [::]:15006" $ok \
    "got '${line:-listener missing}'"
fi

# ---- 6. proxy-config endpoints -------------------------------------------------------------
if in_time "proxy-config endpoints"; then
  table=$(in_node timeout 5 "$DSPROXY_BIN" proxy-config endpoints --port 9000 2>&1 |
    sed -E 's/[[:space:]]+/ /g; s/^ //; s/ $//')
  grep -qFx "ENDPOINT STATUS OUTLIER CHECK NODE ZONE CLUSTER" <<<"$table"
  ok_header=$?
  check "proxy-config endpoints --port 9000 has the header ENDPOINT STATUS OUTLIER CHECK NODE ZONE CLUSTER" $ok_header
  grep -qFx "fd00:10:244::1a:9000 HEALTHY OK kind-worker - outbound|9000||tcp-echo.dual-stack.svc.cluster.local" <<<"$table"
  ok=$?
  check "proxy-config endpoints --port 9000 lists fd00:10:244::1a:9000 HEALTHY for tcp-echo.dual-stack" $ok
  if ((ok_header != 0 || ok != 0)); then echo "$table" | head -n 20 | sed 's/^/    | /'; fi
fi

# ---- 7. stopping dsproxy leaves the node as it found it ------------------------------------
# compare_snapshot NAME EXPECTED: the node's current state must equal EXPECTED.
compare_snapshot() {
  local now
  now=$(snapshot_netfilter)
  if [[ $now == "$2" ]]; then
    pass "$1"
  else
    fail "$1"
    diff -u <(echo "$2") <(echo "$now") | sed 's/^/    /' | head -n 60
  fi
}

during=$(snapshot_netfilter)
[[ $during != "$before" ]]
ok=$?
check "dsproxy --redirect changed the node's rules while running" $ok
stop_dsproxy
graceful=$?
((graceful == 0 && DSPROXY_EXIT_STATUS == 0))
ok=$?
check "dsproxy exits on SIGTERM with status 0" $ok \
  "$( ((graceful == 0)) || echo "needed SIGKILL, ")exit status $DSPROXY_EXIT_STATUS"
compare_snapshot "after dsproxy stopped, iptables/ip6tables rules, ip rules and routes are as before" \
  "$before"

# ---- 8. redirect install is idempotent, uninstall removes everything -----------------------
redirect() {
  in_node timeout 5 "$DSPROXY_BIN" redirect "$1" --config "$DSPROXY_CONFIG" \
    --node "$CLUSTER_NODE_NAME" >>"$CLUSTER_TMP/redirect.log" 2>&1
}
redirect install
ok=$?
check "dsproxy redirect install succeeds" $ok "see $CLUSTER_TMP/redirect.log"
first=$(snapshot_netfilter)
[[ $first != "$before" ]]
ok=$?
check "dsproxy redirect install changes the node's rules" $ok
redirect install
ok=$?
check "dsproxy redirect install succeeds a second time" $ok "see $CLUSTER_TMP/redirect.log"
compare_snapshot "a second redirect install changes nothing" "$first"
redirect uninstall
ok=$?
check "dsproxy redirect uninstall succeeds" $ok "see $CLUSTER_TMP/redirect.log"
compare_snapshot "after redirect install twice and uninstall the node is as before" "$before"

echo "(took ${SECONDS}s)"
summary
((FAILED == 0))
