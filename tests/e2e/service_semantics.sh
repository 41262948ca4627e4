#!/usr/bin/env bash
# Service semantics end to end (issue 16): the terminating-endpoint fallback during a rollout,
# internalTrafficPolicy Local, ClientIP session affinity and topology hints, through the built
# dsproxy binary and its real capture rules (`run --redirect`) in network namespaces.
#
#   service_semantics.sh DSPROXY_BIN ECHO_BIN
#
# The cluster is config/service-semantics.yaml (its header has the table of Services). The test
# rewrites marked lines of a copy of it and reloads dsproxy with SIGHUP. Needs root, iproute2,
# iptables, OpenBSD nc and bash 5: without any of them it fails, never skips. Prints one
# PASS/FAIL line per check and "N passed, M failed" last; exits non-zero on any failure.
# Everything it creates is removed on exit, also on failure or interruption.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

SS_CONFIG_SOURCE=$CLUSTER_REPO_DIR/config/service-semantics.yaml
ECHO_PORTS=9000
# Checks not started after this many seconds fail without running; a normal run takes ~15 s.
E2E_DEADLINE=${E2E_DEADLINE:-120}

CHECK_SHOW_DETAIL=1
suite_trap

suite_require
[[ -f $SS_CONFIG_SOURCE ]] || cluster_die "config $SS_CONFIG_SOURCE does not exist"

# ---- the topology: config/service-semantics.yaml's pods ------------------------------------
cluster_pods_clear
#               key     Kubernetes name      IPv4         IPv6               node link     gateway
cluster_pod_add client default/client 10.244.3.5 fd00:10:244:3::5 vethssclient 10.244.3.1
cluster_pod_add roll ss-roll/web 10.244.3.10 fd00:10:244:3::a vethssroll 10.244.3.1
cluster_pod_add local ss-local/local 10.244.3.20 fd00:10:244:3::14 vethsslocal 10.244.3.1
cluster_pod_add remote ss-local/remote 10.244.3.21 fd00:10:244:3::15 vethssremote 10.244.3.1
cluster_pod_add aff-0 ss-aff/aff-0 10.244.3.30 fd00:10:244:3::1e vethssaff0 10.244.3.1
cluster_pod_add aff-1 ss-aff/aff-1 10.244.3.31 fd00:10:244:3::1f vethssaff1 10.244.3.1
cluster_pod_add aff-2 ss-aff/aff-2 10.244.3.32 fd00:10:244:3::20 vethssaff2 10.244.3.1
cluster_pod_add zone-a ss-zone/zone-a 10.244.3.40 fd00:10:244:3::28 vethsszonea 10.244.3.1
cluster_pod_add zone-b0 ss-zone/zone-b0 10.244.3.41 fd00:10:244:3::29 vethsszoneb0 10.244.3.1
cluster_pod_add zone-b1 ss-zone/zone-b1 10.244.3.42 fd00:10:244:3::2a vethsszoneb1 10.244.3.1
ECHO_PODS=(roll local remote aff-0 aff-1 aff-2 zone-a zone-b0 zone-b1)
for p in "${ECHO_PODS[@]}"; do cluster_echo_add "$p"; done

cluster_up
DSPROXY_CONFIG=$CLUSTER_TMP/service-semantics.yaml
cp -- "$SS_CONFIG_SOURCE" "$DSPROXY_CONFIG" || cluster_die "cannot copy the config to $CLUSTER_TMP"

# ---- helpers ---------------------------------------------------------------------------------
# probe HOST COUNT: COUNT sequential connections from the client pod, each sending one line and
# waiting up to 3 s for its echo; prints one outcome per connection: ok, refused, reset, timeout,
# error. Bounded as a whole.
# shellcheck disable=SC2016 # expanded by the client's bash
PROBE='
host=$1 count=$2
err=$(mktemp)
trap "rm -f \"\$err\"" EXIT
for ((i = 0; i < count; i++)); do
  line= connected=0 rc=0
  { connected=1; printf "p-%d\n" "$i" >&3 && IFS= read -r -t 3 line <&3; rc=$?; } 2>"$err" 3<>"/dev/tcp/$host/9000"
  if ((!connected)); then
    # connect() itself reports ECONNRESET when the reset from the proxy is processed before this process
    # wakes from its connect (the proxy accepted and reset within microseconds): still a reset.
    if grep -q refused "$err"; then echo refused
    elif grep -q "reset by peer" "$err"; then echo reset
    else echo error; fi
  elif [[ $line == "hello p-$i" ]]; then echo ok
  elif ((rc > 128)); then echo timeout
  else echo reset
  fi
done
'
probe() {
  local bound=$(($2 * 4 + 5))
  ((bound > 60)) && bound=60
  in_pod client timeout "$bound" bash -c "$PROBE" _ "$1" "$2"
}
outcomes() { sort <<<"$1" | uniq -c | awk '{ printf "%s%s x%d", sep, $2, $1; sep = ", " }'; }
all_ok() { [[ -n $1 ]] && (($(grep -c . <<<"$1") == $2)) && ! grep -qv '^ok$' <<<"$1"; }
all_refused() { [[ -n $1 ]] && (($(grep -c . <<<"$1") == $2)) && ! grep -qv '^refused$' <<<"$1"; }

# Which pods accepted connections: mark_peers before, served_since after ("pod=N ..." for N > 0).
declare -A MARK
mark_peers() { local p; for p in "${ECHO_PODS[@]}"; do MARK[$p]=$(pod_peers_count "$p"); done; }
served_by() { echo $(($(pod_peers_count "$1") - ${MARK[$1]})); }
served_since() {
  local p n out=
  for p in "${ECHO_PODS[@]}"; do
    n=$(served_by "$p")
    ((n > 0)) && out+="$p=$n "
  done
  echo "${out% }"
}

generation() { node_http_get 15000 /config_dump | grep -o '"generation":[0-9]*' | head -n 1 | cut -d: -f2; }
# reload SED-EXPRESSION: rewrites the config copy, SIGHUPs dsproxy and waits (bounded, 5 s) until
# the new snapshot is in force.
reload() {
  local g0 g i
  g0=$(generation)
  sed -i -E "$1" "$DSPROXY_CONFIG" || cluster_die "sed $1 failed"
  kill -HUP "$DSPROXY_PID" 2>/dev/null
  for ((i = 0; i < 50; i++)); do
    g=$(generation)
    [[ $g =~ ^[0-9]+$ && $g0 =~ ^[0-9]+$ ]] && ((g > g0)) && return 0
    sleep 0.1
  done
  fail "dsproxy took the reload ($1) within 5 s (generation ${g0:-?} -> ${g:-?})"
  return 1
}
# The STATUS column of proxy-config endpoints for IP:PORT.
endpoint_status() {
  in_node timeout 5 "$DSPROXY_BIN" proxy-config endpoints --port 9000 2>/dev/null |
    awk -v a="$1" '$1 == a { print $2 }'
}
endpoint_row() {
  in_node timeout 5 "$DSPROXY_BIN" proxy-config endpoints --port 9000 2>/dev/null |
    sed -E 's/[[:space:]]+/ /g' | awk -v a="$1" '$1 == a'
}

# ---- start -----------------------------------------------------------------------------------
section "dsproxy run (zone from the Node object's label: a)"
if start_dsproxy; then
  pass "dsproxy started with --redirect on config/service-semantics.yaml"
else
  fail "dsproxy started with --redirect on config/service-semantics.yaml"
  summary
  exit 1
fi

# ---- 1. rollout: the only pod turns terminating-but-serving ----------------------------------
section "terminating endpoints (ss-roll)"
if in_time "ss-roll"; then
  mark_peers
  out=$(probe 10.96.3.10 5)$'\n'$(probe fd00:10:96::3:10 5)
  all_ok "$out" 10 && (($(served_by roll) == 10))
  check "ss-roll: the ready pod serves both ClusterIPs" $? "$(outcomes "$out"); served: $(served_since)"

  # A connection relaying across the change: opened now, used again after the reload.
  rm -f "$CLUSTER_TMP/go"
  # shellcheck disable=SC2016
  in_pod client timeout 20 bash -c '
    exec 3<>"/dev/tcp/$1/9000" || { echo "connect failed"; exit 1; }
    printf "one\n" >&3; IFS= read -r -t 3 l <&3; echo "first:$l"
    for ((i = 0; i < 150; i++)); do [[ -f $2 ]] && break; sleep 0.1; done
    printf "two\n" >&3; IFS= read -r -t 3 l <&3; echo "second:$l"' _ 10.96.3.10 "$CLUSTER_TMP/go" \
    >"$CLUSTER_TMP/long.out" 2>&1 &
  long_pid=$!
  CLUSTER_BG_PIDS+=("$long_pid")
  for ((i = 0; i < 30; i++)); do grep -q '^first:' "$CLUSTER_TMP/long.out" && break; sleep 0.1; done

  reload 's/(conditions: \{)[^}]*(\}\}  # roll)$/\1ready: false, serving: true, terminating: true\2/'
  st4=$(endpoint_status 10.244.3.10:9000) st6=$(endpoint_status fd00:10:244:3::a:9000)
  [[ $st4 == DRAINING && $st6 == DRAINING ]]
  check "proxy-config endpoints: the terminating-serving pod is DRAINING" $? "IPv4 ${st4:-missing}, IPv6 ${st6:-missing}"
  mark_peers
  out=$(probe 10.96.3.10 5)$'\n'$(probe fd00:10:96::3:10 5)
  all_ok "$out" 10 && (($(served_by roll) == 10))
  check "ss-roll: no ready endpoint left, the serving-terminating pod keeps answering both families" $? \
    "$(outcomes "$out"); served: $(served_since)"

  touch "$CLUSTER_TMP/go"
  wait "$long_pid" 2>/dev/null
  long=$(tr '\n' ' ' <"$CLUSTER_TMP/long.out")
  [[ $long == "first:hello one second:hello two " ]]
  check "a connection relaying when its endpoint turned terminating is not cut" $? "${long:-no output}"

  reload 's/(conditions: \{)[^}]*(\}\}  # roll)$/\1ready: false, serving: false, terminating: true\2/'
  st4=$(endpoint_status 10.244.3.10:9000)
  mark_peers
  out=$(probe 10.96.3.10 3)$'\n'$(probe fd00:10:96::3:10 3)
  all_refused "$out" 6 && (($(served_by roll) == 0)) && [[ $st4 == UNHEALTHY ]]
  check "ss-roll: neither ready nor serving: refused, both families" $? "$(outcomes "$out"); status ${st4:-missing}"
fi

# ---- 2. internalTrafficPolicy: Local ---------------------------------------------------------
section "internalTrafficPolicy Local (ss-local, ss-remote)"
if in_time "ss-local"; then
  mark_peers
  out=$(probe 10.96.3.20 20)$'\n'$(probe fd00:10:96::3:20 20)
  all_ok "$out" 40 && (($(served_by local) == 40 && $(served_by remote) == 0))
  check "ss-local: all 40 connections (both families) to this node's endpoint, none to kind-worker2's" $? \
    "$(outcomes "$out"); served: $(served_since)"
  row=$(endpoint_row 10.244.3.21:9000 | grep -F 'web.ss-local.')
  [[ $row == "10.244.3.21:9000 HEALTHY OK kind-worker2 - outbound|9000||web.ss-local.svc.cluster.local" ]]
  check "proxy-config endpoints shows the remote endpoint's node" $? "${row:-missing}"

  mark_peers
  out=$(probe 10.96.3.21 3)$'\n'$(probe fd00:10:96::3:21 3)
  all_refused "$out" 6 && (($(served_by remote) == 0))
  check "ss-remote: no endpoint on this node: refused (never sent to another node), both families" $? \
    "$(outcomes "$out"); served: $(served_since)"
fi

# ---- 3. sessionAffinity: ClientIP ------------------------------------------------------------
section "sessionAffinity ClientIP (ss-aff)"
if in_time "ss-aff"; then
  mark_peers
  out=$(probe 10.96.3.30 100)
  pinned=
  for p in aff-0 aff-1 aff-2; do (($(served_by "$p") == 100)) && pinned=$p; done
  all_ok "$out" 100 && [[ -n $pinned ]]
  check "ss-aff IPv4: 100 connections from one client all reach one pod" $? "$(outcomes "$out"); served: $(served_since)"

  mark_peers
  out=$(probe fd00:10:96::3:30 30)
  pinned6=
  for p in aff-0 aff-1 aff-2; do (($(served_by "$p") == 30)) && pinned6=$p; done
  all_ok "$out" 30 && [[ -n $pinned6 ]]
  check "ss-aff IPv6: 30 connections from one client all reach one pod" $? "$(outcomes "$out"); served: $(served_since)"

  if [[ -n $pinned ]]; then
    reload "s/(conditions: \\{)ready: true(\\}\\}  # $pinned)\$/\\1ready: false\\2/"
    mark_peers
    out=$(probe 10.96.3.30 100)
    moved=
    for p in aff-0 aff-1 aff-2; do [[ $p != "$pinned" ]] && (($(served_by "$p") == 100)) && moved=$p; done
    all_ok "$out" 100 && [[ -n $moved ]] && (($(served_by "$pinned") == 0))
    check "ss-aff: after $pinned turns unready, the client moves to one other pod and stays there" $? \
      "$(outcomes "$out"); served: $(served_since)"
  else
    fail "ss-aff: moving after the pinned pod turns unready (not run: no pinned pod)"
  fi
fi

# ---- 4. topology hints -----------------------------------------------------------------------
section "topology hints, zone a (ss-zone)"
if in_time "ss-zone"; then
  mark_peers
  out=$(probe 10.96.3.40 30)$'\n'$(probe fd00:10:96::3:40 30)
  all_ok "$out" 60 && (($(served_by zone-a) == 60))
  check "ss-zone: every connection (both families) to the endpoint hinted for zone a" $? \
    "$(outcomes "$out"); served: $(served_since)"

  reload 's/(conditions: \{)ready: true(\}\}  # zone-a)$/\1ready: false\2/'
  mark_peers
  out=$(probe 10.96.3.40 30)$'\n'$(probe fd00:10:96::3:40 30)
  all_ok "$out" 60 && (($(served_by zone-a) == 0 && $(served_by zone-b0) > 0 && $(served_by zone-b1) > 0))
  check "ss-zone: zone a empties: zone b's endpoints take the traffic" $? "$(outcomes "$out"); served: $(served_since)"
fi

# ---- stop ------------------------------------------------------------------------------------
section "stop"
stop_dsproxy
check "dsproxy exits 0 on SIGTERM" "$DSPROXY_EXIT_STATUS"
summary
((FAILED == 0))
