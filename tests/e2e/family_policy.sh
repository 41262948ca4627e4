#!/usr/bin/env bash
# Family policy end to end (issue 3): cross-family fallback, Happy Eyeballs, retries, outlier
# ejection, refusal of Services with nothing to serve, and the spread of connections, through the
# built dsproxy binary and its real capture rules (`run --redirect`) in network namespaces.
#
#   family_policy.sh DSPROXY_BIN ECHO_BIN
#
# The cluster is config/family-policy.yaml (its header has the table of Services and what is
# wrong with each pod). Needs root, iproute2, iptables, OpenBSD nc, bash 5 and python3 or jq:
# without any of them it fails, never skips. Prints one PASS/FAIL line per check with what it
# measured, and "N passed, M failed" last; exits non-zero on any failure. Everything it creates
# is removed on exit, also on failure or interruption.
#
# dsproxy runs twice: first with the defaults (250 ms attempt delay, 3 attempts, 5 failures to
# eject, 30 s ejection) and --connect-timeout-ms 3000 so black-holed attempts cost 1 s, not 3.3;
# then with `--family-fallback never` and the other family-policy flags set away from their
# defaults, to see each of them act.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

FP_CONFIG_SOURCE=$CLUSTER_REPO_DIR/config/family-policy.yaml
ECHO_PORTS=9000
CONNECT_TIMEOUT_MS=3000
# Traffic checks not started after this many seconds fail without running, and no probe runs
# more than 10 s past it, so the whole script stays under three minutes even against a proxy that
# hangs every connection (what always runs after it, stopping dsproxy and the cleanup, is bounded
# by the harness). A normal run takes about 25 s.
E2E_DEADLINE=${E2E_DEADLINE:-140}

CHECK_SHOW_DETAIL=1  # every check prints what it measured

suite_trap

# ---- prerequisites: all fatal -------------------------------------------------------------
suite_require
[[ -f $FP_CONFIG_SOURCE ]] || cluster_die "config $FP_CONFIG_SOURCE does not exist"
((BASH_VERSINFO[0] >= 5)) || cluster_die "needs bash 5 (EPOCHREALTIME), this is $BASH_VERSION"
JSON_TOOL=${E2E_JSON_TOOL:-}
if [[ -n $JSON_TOOL ]]; then
  command -v "$JSON_TOOL" >/dev/null 2>&1 || cluster_die "E2E_JSON_TOOL=$JSON_TOOL is not installed"
elif command -v python3 >/dev/null 2>&1; then
  JSON_TOOL=python3
elif command -v jq >/dev/null 2>&1; then
  JSON_TOOL=jq
else
  cluster_die "neither python3 nor jq is installed (needed to read dsproxy's admin API)"
fi

# ---- the topology: config/family-policy.yaml's pods ---------------------------------------
cluster_pods_clear
#               key        Kubernetes name          IPv4         IPv6               node link        gateway
cluster_pod_add client default/client 10.244.2.5 fd00:10:244:2::5 vethfpclient 10.244.2.1
cluster_pod_add client6 default/client-v6only - fd00:10:244:2::6 vethfpclient6 10.244.2.1
cluster_pod_add he fp-he/web-he 10.244.2.10 fd00:10:244:2::a vethfphe 10.244.2.1
cluster_pod_add noroute fp-noroute/web-noroute 10.244.2.11 fd00:10:244:2::b vethfpnoroute 10.244.2.1
cluster_pod_add good fp-retry/good 10.244.2.20 fd00:10:244:2::14 vethfpgood 10.244.2.1
cluster_pod_add blackhole fp-retry/blackhole 10.244.2.21 fd00:10:244:2::15 vethfpblackhole 10.244.2.1
cluster_pod_add refuse fp-retry/refuse 10.244.2.22 fd00:10:244:2::16 vethfprefuse 10.244.2.1
cluster_pod_add web4 fp-fallback/web4 10.244.2.30 - vethfpweb4 10.244.2.1
cluster_pod_add web6 fp-fallback/web6 - fd00:10:244:2::1f vethfpweb6 10.244.2.1
cluster_pod_add single fp-single/web-single 10.244.2.40 fd00:10:244:2::28 vethfpsingle 10.244.2.1
cluster_pod_add spread-0 fp-spread/web-0 10.244.2.50 fd00:10:244:2::32 vethfpspread0 10.244.2.1
cluster_pod_add spread-1 fp-spread/web-1 10.244.2.51 fd00:10:244:2::33 vethfpspread1 10.244.2.1
cluster_pod_add spread-2 fp-spread/web-2 10.244.2.52 fd00:10:244:2::34 vethfpspread2 10.244.2.1
cluster_pod_add late fp-late/web-late 10.244.2.61 fd00:10:244:2::3d vethfplate 10.244.2.1
cluster_echo_add he --family v4     # the app binds 0.0.0.0 only: IPv6 connects are refused
cluster_echo_add noroute
cluster_echo_add good
cluster_echo_add blackhole          # listens, but a DROP rule hides it (below)
# refuse runs nothing: every connect to it is refused
cluster_echo_add web4
cluster_echo_add web6
cluster_echo_add single --family v6 # its IPv4 app is down; IPv6 would answer, if anyone asked
cluster_echo_add spread-0
cluster_echo_add spread-1
cluster_echo_add spread-2
cluster_echo_add late
SPREAD_PODS=(spread-0 spread-1 spread-2)

cluster_up
DSPROXY_CONFIG=$CLUSTER_TMP/family-policy.yaml
cp -- "$FP_CONFIG_SOURCE" "$DSPROXY_CONFIG" || cluster_die "cannot copy the config to $CLUSTER_TMP"

# What is wrong with the pods, made real inside their own namespaces.
# blackhole: SYNs to 9000 vanish, both families.
_must in_pod blackhole iptables -w -A INPUT -p tcp --dport 9000 -j DROP
_must in_pod blackhole ip6tables -w -A INPUT -p tcp --dport 9000 -j DROP
# noroute: no IPv6 default route, so its SYN-ACKs to clients have nowhere to go.
_must ip -n "$(pod_ns noroute)" -6 route del default
# SYN counters (rules without a target only count), to see attempts that leave no other trace:
# a refused or black-holed connect never reaches the app's peer log.
_must in_pod he ip6tables -w -A INPUT -p tcp --dport 9000 --syn -m comment --comment fp-syn
_must in_pod noroute ip6tables -w -A INPUT -p tcp --dport 9000 --syn -m comment --comment fp-syn
_must in_pod single iptables -w -A INPUT -p tcp --dport 9000 --syn -m comment --comment fp-syn
_must in_pod single ip6tables -w -A INPUT -p tcp --dport 9000 --syn -m comment --comment fp-syn

# syn_count POD 4|6: SYNs to port 9000 the pod's kernel has seen in that family.
syn_count() {
  local tool=iptables-save
  [[ $2 == 6 ]] && tool=ip6tables-save
  in_pod "$1" "$tool" -c -t filter 2>/dev/null |
    awk '/fp-syn/ { sub(/^\[/, ""); split($1, c, ":"); n += c[1] } END { print n + 0 }'
}

# The node namespace's own addresses (what a cross-family upstream connection must never come from).
node_addresses() { ip -n "$(node_ns)" -o addr show | awk '{ sub(/\/.*/, "", $4); print $4 }'; }
is_node_address() { node_addresses | grep -qxF -- "$1"; }
# Where the node has address $1: "node address on DEV[, DEV...]", or "not a node address".
node_address_where() {
  local devs
  devs=$(ip -n "$(node_ns)" -o addr show | awk -v a="$1" '{ sub(/\/.*/, "", $4) } $4 == a { print $2 }' | sort -u | paste -sd ',')
  if [[ -n $devs ]]; then echo "node address on $devs"; else echo "not a node address"; fi
}

# ---- the client: timed connections from inside a pod ---------------------------------------
# Runs in the client pod's bash: COUNT sequential connections to HOST PORT, each sending one line
# (TAG-i plus PAD bytes, so a lost byte shows) and waiting up to READ_TIMEOUT s for the echo.
# Prints "i outcome ms" per connection, ms from the start of connect() to the reply (or the
# failure): ok (the full line came back as "hello LINE"), refused (connect() failed with
# ECONNREFUSED: nothing accepted it), reset (connected, then closed or reset without an answer),
# timeout (connected, no answer in time), bad (an answer, but not the right one), error (any
# other connect failure). bash's /dev/tcp: no process per connection, so the times are the
# network's and dsproxy's, not fork's.
# shellcheck disable=SC2016 # expanded by the client's bash
PROBE='
host=$1 port=$2 count=$3 tag=$4 read_timeout=$5 pad=$6
filler=$(printf "%*s" "$pad" "" | tr " " "x")
err=$(mktemp)
trap "rm -f \"\$err\"" EXIT
for ((i = 0; i < count; i++)); do
  payload="$tag-$i-$filler"
  line= connected=0 rc=0
  t0=${EPOCHREALTIME//[.,]/}
  { connected=1; printf "%s\n" "$payload" >&3 && IFS= read -r -t "$read_timeout" line <&3; rc=$?; } 2>"$err" 3<>"/dev/tcp/$host/$port"
  t1=${EPOCHREALTIME//[.,]/}
  us=$((t1 - t0))
  if ((!connected)); then
    # connect() itself reports ECONNRESET when the reset from the proxy is processed before this process
    # wakes from its connect (the proxy accepted and reset within microseconds): still a reset.
    if grep -q "refused" "$err"; then outcome=refused
    elif grep -q "reset by peer" "$err"; then outcome=reset
    else outcome=error; fi
  elif [[ $line == "hello $payload" ]]; then outcome=ok
  elif ((rc > 128)); then outcome=timeout
  elif [[ -z $line ]]; then outcome=reset
  else outcome=bad
  fi
  printf "%d %s %d.%d\n" "$i" "$outcome" $((us / 1000)) $((us % 1000 / 100))
done
'
# probe HOST PORT [COUNT] [TAG] [READ_TIMEOUT_S] [PAD]: runs PROBE in the client pod, bounded.
probe() {
  local host=$1 port=$2 count=${3:-1} tag=${4:-probe} read_timeout=${5:-5} pad=${6:-1000}
  local bound=$((count * (read_timeout + 2) + 5)) left=$((E2E_DEADLINE + 10 - SECONDS))
  ((bound > 120)) && bound=120
  ((bound > left)) && bound=$left
  ((bound < 3)) && bound=3
  local out n j
  out=$(in_pod "${PROBE_POD:-client}" timeout "$bound" bash -c "$PROBE" _ "$host" "$port" "$count" "$tag" "$read_timeout" "$pad")
  # A probe cut short by its bound: the connections it never reported are "killed".
  n=$(grep -c . <<<"$out")
  for ((j = n; j < count; j++)); do out+=$'\n'"$j killed 0"; done
  printf '%s\n' "${out#$'\n'}"
}
# Helpers over probe output.
outcomes() { awk '{ print $2 }' <<<"$1" | sort | uniq -c | awk '{ printf "%s%s x%d", sep, $2, $1; sep = ", " }'; }
count_outcome() { awk -v o="$2" '$2 == o { n++ } END { print n + 0 }' <<<"$1"; }
all_outcome() { [[ -n $1 ]] && (($(count_outcome "$1" "$2") == $(wc -l <<<"$1"))); }
times_of() { awk '{ printf "%s%s", sep, $3; sep = " " }' <<<"$1"; }
median_ms() { awk '{ print $3 }' <<<"$1" | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print -1 }'; }
max_ms() { awk 'BEGIN { m = -1 } $3 > m { m = $3 } END { print m }' <<<"$1"; }
# fcmp A OP B: floating-point comparison (awk).
fcmp() { awk -v a="$1" -v b="$3" -v op="$2" 'BEGIN { exit !((op == "<" && a < b) || (op == ">" && a > b) || (op == "<=" && a <= b) || (op == ">=" && a >= b)) }'; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }

# ---- dsproxy's admin API ---------------------------------------------------------------------
admin_body() { node_http_get 15000 "$1" | tr -d '\r' | sed '1,/^$/d'; }
# json_query stats|endpoints|clusters|generation, on the body on stdin:
#   stats:      "counter value" per numeric counter of /stats
#   endpoints:  "cluster ip:port healthStatus outlierCheck connections activeConnections ejections"
#   clusters:   "cluster familyFallback"
#   generation: the snapshot generation
json_query() {
  if [[ $JSON_TOOL == python3 ]]; then
    python3 -c '
import json, sys
what = sys.argv[1]
d = json.load(sys.stdin)
if what == "stats":
    for k, v in d.items():
        if isinstance(v, int):
            print(k, v)
elif what == "endpoints":
    for c in d.get("endpoints", []):
        for e in c.get("endpoints", []):
            s = e["address"]["socketAddress"]
            print(c["clusterName"], "%s:%s" % (s["address"], s["portValue"]), e.get("healthStatus"),
                  e.get("outlierCheck"), e.get("connections"), e.get("activeConnections"), e.get("ejections"))
elif what == "clusters":
    for c in d.get("endpoints", []):
        print(c["clusterName"], c.get("familyFallback"))
elif what == "generation":
    print(d.get("generation"))
' "$1" 2>/dev/null
  else
    case $1 in
      stats) jq -r 'to_entries[] | select(.value | type == "number") | "\(.key) \(.value)"' ;;
      endpoints) jq -r '.endpoints[]? | .clusterName as $c | .endpoints[]? |
        "\($c) \(.address.socketAddress.address):\(.address.socketAddress.portValue) \(.healthStatus) \(.outlierCheck) \(.connections) \(.activeConnections) \(.ejections)"' ;;
      clusters) jq -r '.endpoints[]? | "\(.clusterName) \(.familyFallback)"' ;;
      generation) jq -r '.generation' ;;
    esac 2>/dev/null
  fi
}
stats_now() { admin_body /stats | json_query stats; }
endpoints_now() { admin_body /config_dump | json_query endpoints; }
generation_now() { admin_body /config_dump | json_query generation; }
# stat_delta BEFORE AFTER COUNTER: how much a counter grew ("?" when it is missing).
stat_delta() {
  local a b
  a=$(awk -v n="$3" '$1 == n { print $2 }' <<<"$1")
  b=$(awk -v n="$3" '$1 == n { print $2 }' <<<"$2")
  if [[ -z $a || -z $b ]]; then echo "?"; else echo $((b - a)); fi
}
# expect_delta WHAT BEFORE AFTER COUNTER OP N: the counter grew by OP N (== or >=).
expect_delta() {
  local what=$1 d
  d=$(stat_delta "$2" "$3" "$4")
  if [[ $d == "?" ]]; then
    fail "$what (no counter $4 in GET :15000/stats)"
  elif { [[ $5 == "==" ]] && ((d == $6)); } || { [[ $5 == ">=" ]] && ((d >= $6)); }; then
    pass "$what ($4 +$d)"
  else
    fail "$what ($4 +$d, want $5 $6)"
  fi
}
# ep_field ENDPOINTS CLUSTER_SUFFIX IP:PORT FIELD (3 health, 4 outlier, 5 connections, 6 active,
# 7 ejections); CLUSTER_SUFFIX is e.g. web.fp-retry (the cluster name is outbound|9000||<it>.svc.…).
ep_field() {
  awk -v c="outbound|9000||$2.svc.cluster.local" -v a="$3" -v f="$4" '$1 == c && $2 == a { print $f }' <<<"$1"
}
# picks_delta BEFORE AFTER CLUSTER_SUFFIX IP:PORT: how many more connections (picks) the endpoint
# got between two endpoints_now outputs (a missing endpoint counts as 0).
picks_delta() {
  local a b
  a=$(ep_field "$1" "$3" "$4" 5)
  b=$(ep_field "$2" "$3" "$4" 5)
  [[ $a =~ ^[0-9]+$ ]] || a=0
  [[ $b =~ ^[0-9]+$ ]] || b=0
  echo $((b - a))
}
# The proxy-config endpoints table, spaces squeezed: "ENDPOINT STATUS OUTLIER CHECK CLUSTER".
endpoints_table() {
  in_node timeout 5 "$DSPROXY_BIN" proxy-config endpoints --port 9000 2>&1 |
    sed -E 's/[[:space:]]+/ /g; s/^ //; s/ $//'
}
# table_row TABLE IP:PORT CLUSTER_SUFFIX: that endpoint's "STATUS OUTLIER" from the table.
table_row() {
  awk -v a="$2" -v c="outbound|9000||$3.svc.cluster.local" '$1 == a && $NF == c { print $2, $3 }' <<<"$1"
}

# new_peers POD MARK: the peer-log lines of POD since MARK, joined with "; ".
new_peers() { pod_peers_since "$1" "$2" | paste -sd ';' | sed 's/;/; /g'; }

# ---- start -----------------------------------------------------------------------------------
before=$(snapshot_netfilter)
section "dsproxy run 1: defaults, --connect-timeout-ms $CONNECT_TIMEOUT_MS"
if start_dsproxy --connect-timeout-ms "$CONNECT_TIMEOUT_MS"; then
  pass "dsproxy started with --redirect on config/family-policy.yaml and /healthz/ready answers 200"
else
  fail "dsproxy started with --redirect on config/family-policy.yaml and /healthz/ready answers 200"
  summary
  exit 1
fi
CLIENT4=$(pod_ip client 4)
CLIENT6=$(pod_ip client 6)

# ---- row 1: an endpoint of the dialled family, the client's own address as source -----------
section "row 1: endpoints of the dialled family"
for entry in "10.96.2.50 4" "fd00:10:96::2:50 6"; do
  read -r vip family <<<"$entry"
  what="client -> fp-spread/web $vip:9000 (IPv$family ClusterIP)"
  in_time "$what" || continue
  declare -A marks=()
  for p in "${SPREAD_PODS[@]}"; do marks[$p]=$(pod_peers_count "$p"); done
  out=$(probe "$vip" 9000 1 row1)
  seen=
  for p in "${SPREAD_PODS[@]}"; do seen+=$(pod_peers_since "$p" "${marks[$p]}"); done
  want="9000 $(pod_ip client "$family")"
  all_outcome "$out" ok && [[ $seen == "$want" ]]
  check "$what is served by an IPv$family endpoint that sees the client's own address" $? \
    "$(outcomes "$out") in $(times_of "$out") ms; endpoint saw '$seen', want '$want'"
done

# dsproxy's open descriptors once it has relayed a connection or two (pooled pipes included), to
# compare with at the end of run 1: attempts cancelled, abandoned or failed must leave nothing.
FD_BASELINE=$(find "/proc/$DSPROXY_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)

# ---- row 2: cross-family fallback, and where it is not allowed ------------------------------
section "row 2: no ready endpoint of the dialled family"
# fallback_case WHAT POD VIP FAMILY: served, by POD, from the client pod's own address of FAMILY
# (the other family than the ClusterIP's; never a node address, see SECURITY.md).
fallback_case() {
  local what=$1 pod=$2 vip=$3 fam=$4 mark out src s0 s1 want
  in_time "$what" || return
  want=$CLIENT4
  [[ $fam == 6 ]] && want=$CLIENT6
  mark=$(pod_peers_count "$pod")
  s0=$(stats_now)
  out=$(probe "$vip" 9000 1 fallback)
  s1=$(stats_now)
  src=$(pod_peers_since "$pod" "$mark" | awk '{ print $2 }' | paste -sd ' ')
  local ok=1
  if all_outcome "$out" ok && [[ $src == "$want" ]] && ! is_node_address "$src"; then ok=0; fi
  check "$what" $ok "$(outcomes "$out") in $(times_of "$out") ms; $pod saw source '${src:-nothing}' (want $want): $(node_address_where "$src")"
  expect_delta "$what: counted as a family fallback" "$s0" "$s1" family_fallbacks == 1
}
fallback_case "RequireDualStack fp-fallback/to-v4, IPv6 ClusterIP, IPv4-only pod: served over IPv4 from the client's own IPv4 address" \
  web4 fd00:10:96::2:30 4
fallback_case "PreferDualStack fp-fallback/to-v6, IPv4 ClusterIP, IPv6-only pod: served over IPv6 from the client's own IPv6 address" \
  web6 10.96.2.31 6

# A client with no address of the other family is not served across families: from the node's
# own address it would reach an endpoint it cannot reach itself, seen as the node.
what="IPv6-only client -> fp-fallback/to-v4 IPv6 ClusterIP (only IPv4 endpoints): reset, web4 gets no connection"
if in_time "$what"; then
  mark=$(pod_peers_count web4)
  s0=$(stats_now)
  out=$(PROBE_POD=client6 probe fd00:10:96::2:30 9000 1 v6only 3)
  s1=$(stats_now)
  src=$(pod_peers_since web4 "$mark" | awk '{ print $2 }' | paste -sd ' ')
  [[ -z $src ]] && ! all_outcome "$out" ok
  check "$what" $? "$(outcomes "$out"); web4 saw '${src:-nothing}'"
  expect_delta "$what: counted as no endpoint for the family" "$s0" "$s1" rejected_no_endpoint_for_family == 1
  expect_delta "$what: no family fallback" "$s0" "$s1" family_fallbacks == 0
fi

# not_crossing WHAT VIP POD...: the client is not served and none of the pods gets a connection.
not_crossing() {
  local what=$1 vip=$2 out reached='' p
  shift 2
  in_time "$what" || return
  declare -A m=()
  for p in "$@"; do m[$p]=$(pod_peers_count "$p"); done
  out=$(probe "$vip" 9000 1 nocross 3)
  for p in "$@"; do [[ -n $(pod_peers_since "$p" "${m[$p]}") ]] && reached+=" $p"; done
  local ok=1
  if { all_outcome "$out" refused || all_outcome "$out" reset; } && [[ -z $reached ]]; then ok=0; fi
  check "$what" $ok "$(outcomes "$out") in $(times_of "$out") ms; reached:${reached:- none}"
}
not_crossing "fp-fallback/never (annotation never), IPv6 ClusterIP, IPv4-only pod: refused or reset, never sent to IPv4" \
  fd00:10:96::2:32 web4
what="fp-fallback/never, IPv4 ClusterIP: served with the client's own IPv4 address"
if in_time "$what"; then
  mark=$(pod_peers_count web4)
  out=$(probe 10.96.2.32 9000 1 never4)
  got=$(new_peers web4 "$mark")
  all_outcome "$out" ok && [[ $got == "9000 $CLIENT4" ]]
  check "$what" $? "$(outcomes "$out") in $(times_of "$out") ms; web4 saw '$got'"
fi
what="SingleStack fp-single/web (IPv4), its pod's IPv4 app down: reset, never an IPv6 connection"
if in_time "$what"; then
  mark=$(pod_peers_count single)
  syn4=$(syn_count single 4)
  syn6=$(syn_count single 6)
  s0=$(stats_now)
  out=$(probe 10.96.2.40 9000 1 single 3)
  s1=$(stats_now)
  got=$(new_peers single "$mark")
  d4=$(($(syn_count single 4) - syn4))
  d6=$(($(syn_count single 6) - syn6))
  all_outcome "$out" reset && [[ -z $got ]] && ((d4 >= 1 && d6 == 0))
  check "$what" $? "$(outcomes "$out") in $(times_of "$out") ms; IPv4 SYNs at the pod +$d4, IPv6 SYNs +$d6; peer log (IPv6 app) '${got:-empty}'"
  expect_delta "$what: counted as a failed upstream connect" "$s0" "$s1" upstream_connect_failed == 1
  expect_delta "$what: no family fallback" "$s0" "$s1" family_fallbacks == 0
  expect_delta "$what: no Happy Eyeballs partner" "$s0" "$s1" happy_eyeballs_other_family == 0
fi

# ---- row 3: nothing to serve: refused at connect() by netfilter, in milliseconds -------------
section "row 3: refused fast"
# refused_case WHAT VIP PORT: connect() fails with ECONNREFUSED in < 1 s, and dsproxy never sees
# the connection (the reject is in the node's netfilter, not an accept-then-reset).
refused_case() {
  local what=$1 out s0 s1 ms ok=1
  in_time "$what" || return
  s0=$(stats_now)
  out=$(probe "$2" "$3" 1 refused 3)
  s1=$(stats_now)
  ms=$(max_ms "$out")
  local accepted
  accepted=$(stat_delta "$s0" "$s1" outbound_accepted)
  if all_outcome "$out" refused && fcmp "$ms" "<" 1000 && [[ $accepted == 0 ]]; then ok=0; fi
  check "$what" $ok "$(outcomes "$out") after $ms ms (limit 1000 ms); dsproxy accepted +$accepted connection(s)"
}
refused_case "fp-empty/web (no endpoints) IPv4 ClusterIP 10.96.2.60:9000 refuses" 10.96.2.60 9000
refused_case "fp-empty/web (no endpoints) IPv6 ClusterIP [fd00:10:96::2:60]:9000 refuses" fd00:10:96::2:60 9000
refused_case "fp-he/web IPv4 ClusterIP on a port it lacks (9001) refuses" 10.96.2.10 9001
refused_case "fp-he/web IPv6 ClusterIP on a port it lacks (9001) refuses" fd00:10:96::2:10 9001
refused_case "fp-fallback/never IPv6 ClusterIP (only IPv4 endpoints, no fallback allowed) refuses" fd00:10:96::2:32 9000

if in_time "fp-late/web endpoints"; then
  table=$(endpoints_table)
  for ep in 10.244.2.61:9000 fd00:10:244:2::3d:9000; do
    row=$(table_row "$table" "$ep" web.fp-late)
    [[ $row == "UNHEALTHY OK" ]]
    check "proxy-config endpoints: $ep of the not-ready pod is STATUS UNHEALTHY, OUTLIER CHECK OK" $? \
      "row '${row:-missing}'"
  done
fi
refused_case "fp-late/web (its only pod not Ready) IPv4 ClusterIP refuses" 10.96.2.61 9000

what="fp-late/web: after its pod turns Ready (config reload) the ClusterIPs serve"
if in_time "$what"; then
  gen0=$(generation_now)
  sed -i 's/{type: Ready, status: "False"}  # fp-late-ready/{type: Ready, status: "True"}  # fp-late-ready/' "$DSPROXY_CONFIG"
  t0=${EPOCHREALTIME//[.,]/}
  kill -HUP "$DSPROXY_PID" 2>/dev/null
  # Bounded: 30 tries and 6 s.
  served_after='' dl=$((SECONDS + 6))
  for ((i = 0; i < 30 && SECONDS < dl; i++)); do
    out=$(probe 10.96.2.61 9000 1 late 2)
    if all_outcome "$out" ok; then
      served_after=$(((${EPOCHREALTIME//[.,]/} - t0) / 1000))
      break
    fi
    sleep 0.1
  done
  gen1=$(generation_now)
  [[ -n $served_after ]] && ((served_after < 3000)) && [[ $gen1 =~ ^[0-9]+$ && $gen0 =~ ^[0-9]+$ ]] && ((gen1 > gen0))
  check "$what" $? "IPv4 ClusterIP served ${served_after:-never} ms after SIGHUP (limit 3000 ms); generation $gen0 -> $gen1"
  out=$(probe fd00:10:96::2:61 9000 1 late6)
  all_outcome "$out" ok
  check "fp-late/web IPv6 ClusterIP serves after the reload" $? "$(outcomes "$out") in $(times_of "$out") ms"
  row=$(table_row "$(endpoints_table)" 10.244.2.61:9000 web.fp-late)
  [[ $row == "HEALTHY OK" ]]
  check "proxy-config endpoints: 10.244.2.61:9000 is HEALTHY after the reload" $? "row '${row:-missing}'"
fi

# ---- row 4: Happy Eyeballs -------------------------------------------------------------------
section "row 4: Happy Eyeballs"
# The baseline: the same pod dialled directly on the address that works (passthrough, one attempt).
what="fp-he/web, IPv6 ClusterIP, the pod's app on IPv4 only: served, the IPv4 attempt starts as soon as IPv6 is refused"
if in_time "$what"; then
  base=$(probe 10.244.2.10 9000 5 direct)
  syn0=$(syn_count he 6)
  mark=$(pod_peers_count he)
  s0=$(stats_now)
  out=$(probe fd00:10:96::2:10 9000 5 he)
  s1=$(stats_now)
  syns=$(($(syn_count he 6) - syn0))
  srcs=$(pod_peers_since he "$mark" | awk '{ print $2 }' | sort -u | paste -sd ' ')
  bm=$(median_ms "$base")
  hm=$(median_ms "$out")
  added=$(fsub "$hm" "$bm")
  echo "    direct to the pod's IPv4 10.244.2.10: $(times_of "$base") ms (median $bm)"
  echo "    via the IPv6 ClusterIP:               $(times_of "$out") ms (median $hm)"
  echo "    added delay (median): $added ms; IPv6 SYNs refused by the pod: $syns"
  all_outcome "$base" ok && all_outcome "$out" ok && fcmp "$added" "<" 150 && ((syns >= 5))
  check "$what" $? "added delay $added ms (limit 150 ms, below the 250 ms attempt delay); IPv6 tried first: $syns SYNs for 5 connections"
  all_outcome "$out" ok && [[ $srcs == "$CLIENT4" ]]
  check "fp-he/web: the IPv4 endpoint saw the client's own IPv4 address, not a node address" $? \
    "source '$srcs': $(node_address_where "$srcs")"
  expect_delta "fp-he/web: the IPv4 partner won 5 races" "$s0" "$s1" happy_eyeballs_other_family == 5
  expect_delta "fp-he/web: 5 family fallbacks" "$s0" "$s1" family_fallbacks == 5
  expect_delta "fp-he/web: 5 refused IPv6 attempts ejected the IPv6 endpoint once" "$s0" "$s1" outlier_ejections == 1
  row=$(table_row "$(endpoints_table)" fd00:10:244:2::a:9000 web.fp-he)
  [[ $row == "HEALTHY FAILED" ]]
  check "proxy-config endpoints: fd00:10:244:2::a:9000 (5 consecutive refusals) shows OUTLIER CHECK FAILED" $? "row '${row:-missing}'"
  # Ejected: the next IPv6 client goes straight to IPv4, without knocking on IPv6 first.
  syn0=$(syn_count he 6)
  s0=$(stats_now)
  out=$(probe fd00:10:96::2:10 9000 3 ejected)
  s1=$(stats_now)
  syns=$(($(syn_count he 6) - syn0))
  all_outcome "$out" ok && ((syns == 0))
  check "fp-he/web: with the IPv6 endpoint ejected, IPv6 ClusterIP clients go straight to IPv4" $? \
    "$(outcomes "$out") in $(times_of "$out") ms; IPv6 SYNs at the pod +$syns"
  expect_delta "fp-he/web: ejected IPv6 endpoint skipped: plain fallbacks, no races" "$s0" "$s1" happy_eyeballs_other_family == 0
fi

what="fp-noroute/web, IPv6 ClusterIP, the pod's IPv6 replies black-holed: the IPv4 attempt wins after the 250 ms attempt delay"
if in_time "$what"; then
  base=$(probe 10.244.2.11 9000 3 direct)
  syn0=$(syn_count noroute 6)
  mark=$(pod_peers_count noroute)
  s0=$(stats_now)
  out=$(probe fd00:10:96::2:11 9000 6 noroute)
  s1=$(stats_now)
  syns=$(($(syn_count noroute 6) - syn0))
  srcs=$(pod_peers_since noroute "$mark" | awk '{ print $2 }' | sort -u | paste -sd ' ')
  bm=$(median_ms "$base")
  hm=$(median_ms "$out")
  added=$(fsub "$hm" "$bm")
  echo "    direct to the pod's IPv4 10.244.2.11: $(times_of "$base") ms (median $bm)"
  echo "    via the IPv6 ClusterIP:               $(times_of "$out") ms (median $hm)"
  echo "    added delay (median): $added ms (expected ~250); IPv6 SYNs the pod got: $syns"
  all_outcome "$base" ok && all_outcome "$out" ok && fcmp "$added" ">=" 200 && fcmp "$added" "<" 450 && ((syns >= 6))
  check "$what" $? "added delay $added ms (want 200-450 ms); IPv6 tried first: $syns SYNs for 6 connections"
  [[ $srcs == "$CLIENT4" ]]
  check "fp-noroute/web: the IPv4 endpoint saw the client's own IPv4 address" $? \
    "source '$srcs': $(node_address_where "$srcs")"
  expect_delta "fp-noroute/web: the IPv4 partner won 6 races" "$s0" "$s1" happy_eyeballs_other_family == 6
  row=$(table_row "$(endpoints_table)" fd00:10:244:2::b:9000 web.fp-noroute)
  [[ $row == "HEALTHY OK" ]]
  check "fp-noroute/web: losing 6 races is not a failure: fd00:10:244:2::b:9000 stays OUTLIER CHECK OK" $? "row '${row:-missing}'"
fi

what="passthrough to fp-noroute's pod IPv6 fd00:10:244:2::b:9000: the pod's IPv4 wins after the attempt delay"
if in_time "$what"; then
  s0=$(stats_now)
  out=$(probe fd00:10:244:2::b 9000 1 passthrough)
  s1=$(stats_now)
  ms=$(max_ms "$out")
  all_outcome "$out" ok && fcmp "$ms" ">=" 200 && fcmp "$ms" "<" 1000
  check "$what" $? "$(outcomes "$out") in $ms ms"
  expect_delta "passthrough Happy Eyeballs counted" "$s0" "$s1" happy_eyeballs_other_family == 1
fi

# ---- row 5/6: retries past a black hole and a refusal, then ejection -------------------------
section "rows 5 and 6: retries and outlier ejection"
what="fp-retry/web (good, blackhole, refuse), IPv4 ClusterIP: every client served, retries inside the ${CONNECT_TIMEOUT_MS} ms connect timeout, until both bad endpoints are ejected"
if in_time "$what"; then
  s0=$(stats_now)
  mark=$(pod_peers_count good)
  results='' ejected_after=''
  eps=$(endpoints_now)
  # Bounded: at most 25 connections and 60 s (a black-holed first pick costs 1/3 of the budget).
  deadline=$((SECONDS + 60))
  for ((n = 1; n <= 25 && SECONDS < deadline; n++)); do
    out=$(probe 10.96.2.20 9000 1 "retry$n" 6 2000)
    results+="${out/#0 /$n }"$'\n'
    prev=$eps
    eps=$(endpoints_now)
    picked=''
    for p in good blackhole refuse; do
      ep="$(pod_ip "$p" 4):9000"
      (($(picks_delta "$prev" "$eps" web.fp-retry "$ep") > 0)) && picked+=" $p"
    done
    echo "    connection $n: $(awk '{ print $2, "in", $3, "ms" }' <<<"$out"), endpoints picked:${picked:- none}"
    if [[ $(ep_field "$eps" web.fp-retry 10.244.2.21:9000 4) == FAILED &&
      $(ep_field "$eps" web.fp-retry 10.244.2.22:9000 4) == FAILED ]]; then
      ejected_after=$n
      break
    fi
  done
  results=${results%$'\n'}
  s1=$(stats_now)
  served=$(pod_peers_since good "$mark" | wc -l)
  echo "    both bad endpoints ejected after ${ejected_after:-(not within the bound)} connection(s); good served $served"
  total=$(wc -l <<<"$results")
  ms=$(max_ms "$results")
  all_outcome "$results" ok && fcmp "$ms" "<" "$CONNECT_TIMEOUT_MS" && ((served == total))
  check "$what" $? "$(outcomes "$results"); slowest $ms ms (limit $CONNECT_TIMEOUT_MS ms); 2000-byte lines echoed whole"
  [[ -n $ejected_after ]]
  check "fp-retry/web: the black-holed and the refusing endpoints are both ejected" $? \
    "after ${ejected_after:-more than 25} connection(s)"
  expect_delta "fp-retry/web: retries counted" "$s0" "$s1" connect_retries ">=" 2
  expect_delta "fp-retry/web: no client was given up on" "$s0" "$s1" upstream_connect_failed == 0
  expect_delta "fp-retry/web: ejections counted" "$s0" "$s1" outlier_ejections ">=" 2
  table=$(endpoints_table)
  for ep in 10.244.2.21:9000 10.244.2.22:9000; do
    row=$(table_row "$table" "$ep" web.fp-retry)
    [[ $row == "HEALTHY FAILED" ]]
    check "proxy-config endpoints: $ep shows STATUS HEALTHY, OUTLIER CHECK FAILED" $? "row '${row:-missing}'"
  done
  row=$(table_row "$table" 10.244.2.20:9000 web.fp-retry)
  [[ $row == "HEALTHY OK" ]]
  check "proxy-config endpoints: the good endpoint 10.244.2.20:9000 stays OK" $? "row '${row:-missing}'"

  # Later connections skip the ejected endpoints: fast, and all on the good pod.
  eps0=$(endpoints_now)
  mark=$(pod_peers_count good)
  out=$(probe 10.96.2.20 9000 10 after 3)
  eps1=$(endpoints_now)
  served=$(pod_peers_since good "$mark" | wc -l)
  picked_bad=0
  for ep in 10.244.2.21:9000 10.244.2.22:9000; do
    picked_bad=$((picked_bad + $(picks_delta "$eps0" "$eps1" web.fp-retry "$ep")))
  done
  ms=$(max_ms "$out")
  all_outcome "$out" ok && ((served == 10 && picked_bad == 0)) && fcmp "$ms" "<" 500
  check "fp-retry/web: 10 later connections skip the ejected endpoints" $? \
    "$(outcomes "$out"), delays $(times_of "$out") ms (limit 500 ms each, half a black hole's share); good served $served, bad endpoints picked $picked_bad times"
fi

what="fp-dead/web (5 refusing endpoints): reset after exactly 3 attempts"
if in_time "$what"; then
  eps0=$(endpoints_now)
  s0=$(stats_now)
  out=$(probe 10.96.2.70 9000 1 dead 3)
  s1=$(stats_now)
  eps1=$(endpoints_now)
  picks=$(($(awk '$1 == "outbound|9000||web.fp-dead.svc.cluster.local" { n += $5 } END { print n + 0 }' <<<"$eps1") -
    $(awk '$1 == "outbound|9000||web.fp-dead.svc.cluster.local" { n += $5 } END { print n + 0 }' <<<"$eps0")))
  ms=$(max_ms "$out")
  all_outcome "$out" reset && ((picks == 3)) && fcmp "$ms" "<" 1000
  check "$what" $? "$(outcomes "$out") after $ms ms; endpoints tried $picks"
  expect_delta "fp-dead/web: 2 retries" "$s0" "$s1" connect_retries == 2
  expect_delta "fp-dead/web: one client given up on" "$s0" "$s1" upstream_connect_failed == 1
fi

# ---- reloads keep the outlier state; the reject follows readiness both ways ----------------------
section "config reload"
what="a config reload (fp-late's pod not Ready again) keeps fp-retry's ejections"
if in_time "$what"; then
  eps0=$(endpoints_now)
  gen0=$(generation_now)
  sed -i 's/{type: Ready, status: "True"}  # fp-late-ready/{type: Ready, status: "False"}  # fp-late-ready/' "$DSPROXY_CONFIG"
  t0=${EPOCHREALTIME//[.,]/}
  kill -HUP "$DSPROXY_PID" 2>/dev/null
  # Bounded: 30 tries and 6 s. The reject is installed after the new snapshot is published, so
  # poll for it rather than expect it the moment the generation changes.
  refused_after='' dl=$((SECONDS + 6))
  for ((i = 0; i < 30 && SECONDS < dl; i++)); do
    out=$(probe 10.96.2.61 9000 1 unready 2)
    if all_outcome "$out" refused; then
      refused_after=$(((${EPOCHREALTIME//[.,]/} - t0) / 1000))
      break
    fi
    sleep 0.1
  done
  gen1=$(generation_now)
  eps1=$(endpoints_now)
  [[ -n $refused_after ]] && ((refused_after < 3000))
  check "fp-late/web: its pod not Ready again, the IPv4 ClusterIP refuses again" $? \
    "refused ${refused_after:-never} ms after SIGHUP (limit 3000 ms); generation $gen0 -> $gen1"
  states='' ok=0
  for ep in 10.244.2.21:9000 10.244.2.22:9000 10.244.2.20:9000; do
    st=$(ep_field "$eps1" web.fp-retry "$ep" 4)
    ej=$(ep_field "$eps1" web.fp-retry "$ep" 7)
    n0=$(ep_field "$eps0" web.fp-retry "$ep" 5)
    n1=$(ep_field "$eps1" web.fp-retry "$ep" 5)
    states+="$ep $st ejections=$ej connections $n0->$n1; "
    want=FAILED
    [[ $ep == 10.244.2.20:9000 ]] && want=OK
    [[ $st == "$want" && -n $n0 && $n0 == "$n1" && $n0 != 0 ]] || ok=1
  done
  [[ $gen1 =~ ^[0-9]+$ && $gen0 =~ ^[0-9]+$ ]] && ((gen1 > gen0)) || ok=1
  check "$what" $ok "generation $gen0 -> $gen1; ${states%; }"
fi

# ---- row 7: the spread of 1,000 connections --------------------------------------------------
section "row 7: 1,000 connections over three endpoints"
what="fp-spread/web: 1,000 sequential connections to 10.96.2.50:9000"
if in_time "$what"; then
  eps0=$(endpoints_now)
  s0=$(stats_now)
  declare -A marks=()
  for p in "${SPREAD_PODS[@]}"; do marks[$p]=$(pod_peers_count "$p"); done
  t0=$SECONDS
  # One bash in the client pod makes all of them; bounded by the probe's 120 s cap.
  out=$(probe 10.96.2.50 9000 1000 spread 2 16)
  took=$((SECONDS - t0))
  s1=$(stats_now)
  eps1=$(endpoints_now)
  ok=$(count_outcome "$out" ok)
  ((ok == 1000))
  check "$what all served" $? "$(outcomes "$out") in ${took} s (median $(median_ms "$out") ms, slowest $(max_ms "$out") ms)"
  expect_delta "fp-spread/web: all 1,000 routed to the Service" "$s0" "$s1" routed_to_service == 1000
  even=0 report=
  for p in "${SPREAD_PODS[@]}"; do
    ep="$(pod_ip "$p" 4):9000"
    n=$(picks_delta "$eps0" "$eps1" web.fp-spread "$ep")
    peers=$(pod_peers_since "$p" "${marks[$p]}" | wc -l)
    echo "    $ep (${CLUSTER_POD_NAME[$p]}): connections +$n per /config_dump, $peers per its own peer log"
    report+="$ep +$n; "
    # Within 15% of 1000/3: 284..382.
    ((n >= 284 && n <= 382 && peers == n)) || even=1
  done
  check "fp-spread/web: every endpoint got 1000/3 +-15% (284-382) of the connections" $even "${report%; }"
fi

# ---- nothing leaks: outstanding counts, sockets, descriptors ---------------------------------
what="after all of run 1 (about 1,100 connections, cancelled, abandoned and failed attempts), nothing is left open"
if in_time "$what"; then
  # Bounded: 30 polls and 5 s, for the last connections to finish closing.
  dl=$((SECONDS + 5))
  for ((i = 0; i < 30 && SECONDS < dl; i++)); do
    active=$(awk '$1 == "active_connections" { print $2 }' <<<"$(stats_now)")
    outstanding=$(awk '{ n += $6 } END { print n + 0 }' <<<"$(endpoints_now)")
    [[ $active == 0 && $outstanding == 0 ]] && break
    sleep 0.1
  done
  synsent=$(in_node ss -Htn state syn-sent 2>/dev/null | wc -l)
  fds=$(find "/proc/$DSPROXY_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  [[ $active == 0 && $outstanding == 0 ]] && ((synsent == 0 && fds > 0 && fds <= FD_BASELINE + 8))
  check "$what" $? "active_connections $active, sum of endpoints' activeConnections $outstanding, SYN-SENT sockets in the node $synsent, dsproxy descriptors $fds (baseline $FD_BASELINE, allowed +8)"
fi

# ---- run 2: the family-policy flags ----------------------------------------------------------
stop_dsproxy
graceful=$?
((graceful == 0 && DSPROXY_EXIT_STATUS == 0))
check "dsproxy (run 1) exits on SIGTERM with status 0" $? "exit status $DSPROXY_EXIT_STATUS"

section "dsproxy run 2: --family-fallback never --attempt-delay-ms 100 --max-connect-attempts 4 --outlier-consecutive-failures 2 --outlier-base-ejection-ms 2000"
RUN2_CHECKS=8 # the checks below, failed as a block when run 2 does not start
if ! start_dsproxy --connect-timeout-ms "$CONNECT_TIMEOUT_MS" --family-fallback never --attempt-delay-ms 100 \
  --max-connect-attempts 4 --outlier-consecutive-failures 2 --outlier-base-ejection-ms 2000; then
  fail "dsproxy started with the family-policy flags (exit status ${DSPROXY_EXIT_STATUS:-none}; $(grep -m1 -iE 'error|unknown|not' "$DSPROXY_LOG" 2>/dev/null))"
  for ((i = 1; i < RUN2_CHECKS; i++)); do fail "run 2 check $i of $((RUN2_CHECKS - 1)) (not run: dsproxy did not start)"; done
else
  pass "dsproxy started with the family-policy flags"
  fallback=$(admin_body /config_dump | json_query clusters | awk '$1 ~ /\|\|(to-v4|other)\.fp-fallback\./ { printf "%s%s=%s", sep, $1, $2; sep = " " }')
  refused_case "--family-fallback never: fp-fallback/to-v4 (no annotation) IPv6 ClusterIP now refuses ($fallback)" fd00:10:96::2:30 9000
  fallback_case "--family-fallback never: fp-fallback/other (annotation other wins) IPv6 ClusterIP still falls back to IPv4" \
    web4 fd00:10:96::2:33 4
  what="--attempt-delay-ms 100: fp-noroute/web (annotation other) IPv6 ClusterIP: IPv4 wins after ~100 ms"
  if in_time "$what"; then
    base=$(probe 10.244.2.11 9000 3 direct)
    out=$(probe fd00:10:96::2:11 9000 3 noroute100)
    added=$(fsub "$(median_ms "$out")" "$(median_ms "$base")")
    all_outcome "$out" ok && fcmp "$added" ">=" 80 && fcmp "$added" "<" 220
    check "$what" $? "delays $(times_of "$out") ms vs direct $(times_of "$base") ms: added $added ms (want 80-220)"
  fi
  what="--max-connect-attempts 4: fp-dead/web (5 refusing endpoints) reset after exactly 4 attempts"
  if in_time "$what"; then
    eps0=$(endpoints_now)
    out=$(probe 10.96.2.70 9000 1 dead4 3)
    eps1=$(endpoints_now)
    picks=$(($(awk '$1 == "outbound|9000||web.fp-dead.svc.cluster.local" { n += $5 } END { print n + 0 }' <<<"$eps1") -
      $(awk '$1 == "outbound|9000||web.fp-dead.svc.cluster.local" { n += $5 } END { print n + 0 }' <<<"$eps0")))
    all_outcome "$out" reset && ((picks == 4))
    check "$what" $? "$(outcomes "$out") after $(max_ms "$out") ms; endpoints tried $picks"
  fi
  # eject_round N EXPECTED_MS: two refused IPv6 clients of fp-he eject fd00:10:244:2::a:9000 (for
  # the N-th time); the ejection must last EXPECTED_MS.
  # What is measured, and why it holds under any load: the ejection starts at some E between
  # t_start (before the probe) and t0 (after it), and ends at B = E + D. A poll that began at p
  # and still saw FAILED proves B > p, so D > p - t0; a poll that ended at q seeing OK proves
  # B <= q, so D <= q - t_start. The proxy decides ejection from its own clock at each query, so
  # a slow machine only widens [lo, hi] (a late poll, a slow probe), it never moves D out of it;
  # an absolute window around the first OK (1500-3000 ms) failed at load 13 with 3152 ms. It still
  # fails for a wrong duration: 2x the base in round 1 puts lo near 4000, 1x in round 2 puts hi
  # near 2000 (unless the machine is slower than a whole base), no ejection or no return fails too.
  eject_round() {
    local what="--outlier-consecutive-failures 2 --outlier-base-ejection-ms 2000: fd00:10:244:2::a:9000 ejected by 2 refusals (ejection $1) for $2 ms"
    in_time "$what" || return
    local out t_start t0 state st lo='' hi='' last_failed dl i p q
    t_start=$((${EPOCHREALTIME//[.,]/} / 1000))
    out=$(probe fd00:10:96::2:10 9000 2 "eject$1" 3)
    t0=$((${EPOCHREALTIME//[.,]/} / 1000))
    state=$(ep_field "$(endpoints_now)" web.fp-he fd00:10:244:2::a:9000 4)
    last_failed=$t0
    # Bounded: 80 polls and 9 s; each poll (admin API + JSON) takes some 0.1 s besides the sleep.
    dl=$((SECONDS + 9))
    for ((i = 0; i < 80 && SECONDS < dl; i++)); do
      p=$((${EPOCHREALTIME//[.,]/} / 1000))
      st=$(ep_field "$(endpoints_now)" web.fp-he fd00:10:244:2::a:9000 4)
      q=$((${EPOCHREALTIME//[.,]/} / 1000))
      if [[ $st == OK ]]; then
        hi=$((q - t_start))
        break
      fi
      [[ $st == FAILED ]] && last_failed=$p
      sleep 0.1
    done
    lo=$((last_failed - t0))
    # 20 ms: the shell's clock against the proxy's, and the rounding to ms above.
    all_outcome "$out" reset && [[ $state == FAILED && -n $hi ]] && ((lo < $2 + 20 && $2 <= hi + 20))
    check "$what" $? "2 IPv6 clients: $(outcomes "$out") (no IPv4 partner under never); then $state; the ejection lasted more than $lo and at most ${hi:-(never back within 9 s)} ms (want $2 in between)"
  }
  eject_round 1 2000
  # Envoy's arithmetic: the second ejection lasts twice the base.
  eject_round 2 4000
fi

# ---- the node is left as it was --------------------------------------------------------------
stop_dsproxy
graceful=$?
((graceful == 0 && DSPROXY_EXIT_STATUS == 0))
check "dsproxy (run 2) exits on SIGTERM with status 0" $? "exit status $DSPROXY_EXIT_STATUS"
now=$(snapshot_netfilter)
if [[ $now == "$before" ]]; then
  pass "after dsproxy stopped, the node's iptables/ip6tables rules (reject chains included), ip rules and routes are as before"
else
  fail "after dsproxy stopped, the node's iptables/ip6tables rules (reject chains included), ip rules and routes are as before"
  diff -u <(echo "$before") <(echo "$now") | sed 's/^/    /' | head -n 60
fi

echo "(took ${SECONDS}s)"
summary
((FAILED == 0))
