#!/usr/bin/env bash
# Issue 14's DNS findings played by a hostile pod and a hostile remote node, against dsproxy with
# its DNS capture on:
#
#  2. A pod's captured query to a node address must not take over that address's port 53: a node
#     DNS server (dnsmasq on 0.0.0.0:53 and [::]:53, the way a node-local resolver runs) keeps
#     answering other clients (a remote host, the node itself) after dsproxy answered the pod.
#  3. dsproxy is no open resolver: a remote host's query straight to node:15053 (UDP and TCP)
#     gets nothing and is counted, one to the node address's port 53 is the node server's, not
#     dsproxy's; a pod's query sent straight to :15053 (not captured) is refused too; the node
#     itself may ask on loopback.
#  7. A pod holding 300 TCP DNS connections that sent a length prefix and nothing else does not
#     lock other pods out: their TCP and UDP queries are answered meanwhile, a half-sent message
#     is cut off after the message deadline, and dsproxy is alive afterwards.
#
#   security_dns.sh DSPROXY_BIN ECHO_BIN
#
# Needs root, iproute2, iptables, OpenBSD nc, dig (bind9-dnsutils), dnsmasq (dnsmasq-base), jq
# and bash 5. Missing any of them is a failure, never a skip. Prints one PASS/FAIL line per
# check and "N passed, M failed"; exits non-zero on any failure. Everything it creates is removed
# on exit, also on failure.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

E2E_DEADLINE=${E2E_DEADLINE:-120}
DNS_VIP4=10.96.0.10
# Node addresses: the local pods' gateway, the node's end of the link to kind-worker2, and a
# global IPv6 address on the node's lo (the gateway's fe80::1 is link-local).
NODE4=10.244.0.1
NODE4_REMOTE=10.244.1.1
NODE6=fd00:feed::1
# What the node's own DNS server (dnsmasq) answers; dsproxy never gives these addresses.
NODE_NAME=who.node.test
NODE_ANSWER4=192.0.2.53
NODE_ANSWER6=2001:db8::53
# A cluster name and the address only dsproxy gives for it.
CLUSTER_NAME=tcp-echo.ipv4.svc.cluster.local
CLUSTER_ANSWER4=10.96.104.229
CLUSTER_NAME6=tcp-echo.ipv6.svc.cluster.local
CLUSTER_ANSWER6=fd00:10:96::9c3a
FLOOD_CONNECTIONS=300
FLOOD_HOLD_S=8

SUITE_TMP_LOGS=(node-dnsmasq.log)  # the node's nameserver
suite_trap

# ---- prerequisites: all fatal -------------------------------------------------------------
suite_require
for cmd in dig dnsmasq jq; do
  command -v "$cmd" >/dev/null 2>&1 ||
    cluster_die "missing command $cmd (run scripts/install-deps.sh: bind9-dnsutils, dnsmasq-base, jq)"
done
((BASH_VERSINFO[0] >= 5)) || cluster_die "needs bash 5 (for {fd} redirections), this is $BASH_VERSION"

# ---- the cluster, the node's own DNS server, resolv.conf files ----------------------------
cluster_up
DSPROXY_CONFIG="$CLUSTER_TMP/cluster.yaml"
{
  cat "$CLUSTER_REPO_DIR/config/tcp-echo-experiment.yaml"
  echo "---"
  cat "$CLUSTER_REPO_DIR/config/kube-dns.yaml"
} >"$DSPROXY_CONFIG"
_must in_node ip addr add "$NODE6/128" dev lo

# The node's DNS server on the wildcard addresses (no --bind-interfaces: one socket on
# 0.0.0.0:53 and one on [::]:53, with SO_REUSEADDR, as dnsmasq does). It is also dsproxy's
# upstream (the node's resolv.conf).
cat >"$CLUSTER_TMP/node.hosts" <<EOF
$NODE_ANSWER4 $NODE_NAME
$NODE_ANSWER6 $NODE_NAME
EOF
in_node dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-poll --user=root \
  --pid-file= --port=53 --local-ttl=0 --addn-hosts="$CLUSTER_TMP/node.hosts" --local=/node.test/ \
  --log-queries --log-facility="$CLUSTER_TMP/node-dnsmasq.log" >"$CLUSTER_TMP/node-dnsmasq.out" 2>&1 &
CLUSTER_BG_PIDS+=("$!")
for ((i = 0; i < 50; i++)); do
  in_node dig +time=1 +tries=1 +short @127.0.0.1 "$NODE_NAME" A 2>/dev/null | grep -qx "$NODE_ANSWER4" && break
  sleep 0.1
done
((i < 50)) || cluster_die "the node's dnsmasq did not answer (see $CLUSTER_TMP/node-dnsmasq.out)"
cluster_netns_file node resolv.conf "nameserver 127.0.0.1
"

if start_dsproxy; then
  pass "dsproxy started with --redirect (DNS capture on) and is ready"
else
  fail "dsproxy started with --redirect (DNS capture on) and is ready"
  summary
  exit 1
fi

# ask WHERE ARGS...: the short answers of one dig (one try of 2 s), sorted, on one line; WHERE is
# node or a pod. Empty when nothing answered.
ask() {
  local where=$1
  shift
  local run=(in_pod "$where")
  [[ $where == node ]] && run=(in_node)
  "${run[@]}" timeout 5 dig +time=2 +tries=1 +short "$@" 2>/dev/null | grep -v '^;' | sort | tr '\n' ' ' |
    sed 's/ $//'
}
# dns_counter NAME: dsproxy's DNS counter NAME from GET :15000/stats ("" when absent).
dns_counter() {
  node_http_get 15000 /stats | tr -d '\r' | sed '1,/^$/d' | jq -r --arg n "$1" '.dns[$n] // empty' 2>/dev/null
}
dsproxy_alive() { [[ -n $DSPROXY_PID ]] && kill -0 "$DSPROXY_PID" 2>/dev/null && dsproxy_ready; }

# ---- 2. a pod's query to a node address does not take over the node's port 53 -------------
if in_time "node DNS server takeover"; then
  got=$(ask remote "@$NODE4" "$NODE_NAME" A)
  [[ $got == "$NODE_ANSWER4" ]]
  check "before: the node's DNS server answers a remote host at $NODE4:53" $? "got '$got'"

  # The pod's query to the node address is captured and answered by dsproxy (a cluster name the
  # node server does not know), from $NODE4:53 exactly: dig only takes an answer from there.
  got=$(ask sleep "@$NODE4" "$CLUSTER_NAME" A)
  [[ $got == "$CLUSTER_ANSWER4" ]]
  check "a pod's query to $NODE4:53 is answered by dsproxy from $NODE4:53" $? "got '$got'"
  got=$(ask sleep "@$NODE6" "$CLUSTER_NAME6" AAAA)
  [[ $got == "$CLUSTER_ANSWER6" ]]
  check "a pod's query to [$NODE6]:53 is answered by dsproxy from [$NODE6]:53" $? "got '$got'"

  for who in remote node; do
    got=$(ask "$who" "@$NODE4" "$NODE_NAME" A)
    [[ $got == "$NODE_ANSWER4" ]]
    check "after: the node's DNS server still answers the $who at $NODE4:53" $? "got '$got'"
    got=$(ask "$who" "@$NODE6" "$NODE_NAME" AAAA)
    [[ $got == "$NODE_ANSWER6" ]]
    check "after: the node's DNS server still answers the $who at [$NODE6]:53" $? "got '$got'"
  done
  # Interleaved: every pod query is followed at once by another client's.
  bad=0
  for ((i = 0; i < 5; i++)); do
    [[ $(ask sleep "@$NODE4" "$CLUSTER_NAME" A) == "$CLUSTER_ANSWER4" ]] || bad=$((bad + 1))
    [[ $(ask remote "@$NODE4" "$NODE_NAME" A) == "$NODE_ANSWER4" ]] || bad=$((bad + 1))
  done
  ((bad == 0))
  check "5 rounds of pod query then remote query at $NODE4:53: each answered by the right server" $? \
    "$bad wrong or missing"
fi

# ---- 3. no open resolver ------------------------------------------------------------------
if in_time "open resolver"; then
  direct_before=$(dns_counter dropped_direct)
  queries_before=$(( $(dns_counter queries_udp) + $(dns_counter queries_tcp) ))
  got=$(ask remote -p 15053 "@$NODE4_REMOTE" "$CLUSTER_NAME" A)
  [[ -z $got ]]
  check "a remote host's UDP query to $NODE4_REMOTE:15053 gets nothing" $? "got '$got'"
  got=$(ask remote +tcp -p 15053 "@$NODE4_REMOTE" "$CLUSTER_NAME" A)
  [[ -z $got ]]
  check "a remote host's TCP query to $NODE4_REMOTE:15053 gets nothing" $? "got '$got'"
  got=$(ask remote -p 15053 "@$NODE6" "$NODE_NAME" AAAA)
  [[ -z $got ]]
  check "a remote host's UDP query to [$NODE6]:15053 gets nothing" $? "got '$got'"
  got=$(ask sleep -p 15053 "@$NODE4" "$CLUSTER_NAME" A)
  [[ -z $got ]]
  check "a pod's query sent straight to $NODE4:15053 (not captured) gets nothing" $? "got '$got'"
  got=$(ask node -p 15053 "@$NODE4" "$CLUSTER_NAME" A)
  [[ -z $got ]]
  check "the node's query to its non-loopback $NODE4:15053 gets nothing" $? "got '$got'"
  direct_after=$(dns_counter dropped_direct)
  [[ -n $direct_after ]] && ((direct_after - ${direct_before:-0} >= 5))
  check "the 5 direct queries are counted (dns.dropped_direct)" $? "before '${direct_before}', after '$direct_after'"

  # A remote host at the node address's port 53 reaches the node's server, never dsproxy.
  got=$(ask remote "@$NODE4_REMOTE" "$CLUSTER_NAME" A)
  [[ $got != *"$CLUSTER_ANSWER4"* ]]
  check "a remote host's query to $NODE4_REMOTE:53 for a cluster name is not answered by dsproxy" $? "got '$got'"
  got=$(ask remote "@$NODE4_REMOTE" "$NODE_NAME" A)
  [[ $got == "$NODE_ANSWER4" ]]
  check "... it is the node's DNS server that answers there" $? "got '$got'"
  got=$(ask remote "@$DNS_VIP4" "$CLUSTER_NAME" A)
  [[ -z $got ]]
  check "a remote host's query to the DNS VIP $DNS_VIP4 gets nothing" $? "got '$got'"
  queries_after=$(( $(dns_counter queries_udp) + $(dns_counter queries_tcp) ))
  ((queries_after == queries_before))
  check "none of those queries reached dsproxy's resolver" $? "$((queries_after - queries_before)) did"

  # The node itself may ask on loopback (documented), and captured pod queries still work.
  got=$(ask node -p 15053 @127.0.0.1 "$CLUSTER_NAME" A)
  [[ $got == "$CLUSTER_ANSWER4" ]]
  check "the node itself is answered at 127.0.0.1:15053" $? "got '$got'"
  got=$(ask sleep "@$DNS_VIP4" "$CLUSTER_NAME" A)
  [[ $got == "$CLUSTER_ANSWER4" ]]
  check "a pod's captured query to the DNS VIP is still answered" $? "got '$got'"
fi

# ---- 7. a TCP flood from one pod ------------------------------------------------------------
if in_time "TCP flood"; then
  limit_before=$(dns_counter tcp_client_limit)
  # The hostile pod: FLOOD_CONNECTIONS connections to the DNS VIP (captured), each sends a length
  # prefix (32 octets announced) and nothing else; all held FLOOD_HOLD_S seconds. Bounded by
  # timeout; a connection dsproxy resets makes a write fail (SIGPIPE ignored).
  # shellcheck disable=SC2016 # expanded by the inner bash
  in_pod sleep timeout $((FLOOD_HOLD_S + 10)) bash -c '
    trap "" PIPE
    opened=0
    for ((i = 0; i < $1; i++)); do
      if exec {fd}<>"/dev/tcp/$2/53"; then
        printf "\x00\x20" >&"$fd" && opened=$((opened + 1))
      fi
    done 2>/dev/null
    echo "$opened" >"$3"
    sleep "$4"' _ "$FLOOD_CONNECTIONS" "$DNS_VIP4" "$CLUSTER_TMP/flood.opened" "$FLOOD_HOLD_S" &
  FLOOD_PID=$!
  CLUSTER_BG_PIDS+=("$FLOOD_PID")
  for ((i = 0; i < 150; i++)); do
    [[ -s $CLUSTER_TMP/flood.opened ]] && break
    sleep 0.1
  done
  [[ -s $CLUSTER_TMP/flood.opened ]]
  check "the hostile pod made its $FLOOD_CONNECTIONS connection attempts" $? \
    "a length prefix went out on $(cat "$CLUSTER_TMP/flood.opened" 2>/dev/null) before resets"

  # Meanwhile another pod, over TCP and UDP, with a short deadline (one try of 2 s).
  got=$(ask echo-ds +tcp "@$DNS_VIP4" "$CLUSTER_NAME" A)
  [[ $got == "$CLUSTER_ANSWER4" ]]
  check "during the flood another pod's TCP query is answered" $? "got '$got'"
  got=$(ask echo-ds +notcp "@$DNS_VIP4" "$CLUSTER_NAME" A)
  [[ $got == "$CLUSTER_ANSWER4" ]]
  check "during the flood another pod's UDP query is answered" $? "got '$got'"
  limit_after=$(dns_counter tcp_client_limit)
  [[ -n $limit_after ]] && ((limit_after - ${limit_before:-0} > 0))
  check "the flood's connections over the per-client cap are refused and counted (dns.tcp_client_limit)" $? \
    "before '$limit_before', after '$limit_after'"

  wait "$FLOOD_PID" 2>/dev/null
  # After the flood (so that no cap is in the way): a message that never completes is cut off
  # after the message deadline, well before the idle timeout (10 s): the connection ends within 6 s.
  timeouts_before=$(dns_counter tcp_message_timeouts)
  # shellcheck disable=SC2016 # expanded by the inner bash
  in_pod echo-v4 timeout 6 bash -c 'exec 3<>"/dev/tcp/$1/53" && printf "\x00\x20" >&3 && cat <&3 >/dev/null' \
    _ "$DNS_VIP4" 2>/dev/null
  status=$?
  ((status != 124))
  check "a half-sent TCP message is cut off within 6 s (message deadline)" $? "timeout's status $status"
  timeouts_after=$(dns_counter tcp_message_timeouts)
  [[ -n $timeouts_after ]] && ((timeouts_after - ${timeouts_before:-0} > 0))
  check "the cut-off is counted (dns.tcp_message_timeouts)" $? "before '$timeouts_before', after '$timeouts_after'"

  dsproxy_alive
  check "dsproxy is alive and ready after the flood" $?
  got=$(ask sleep +tcp "@$DNS_VIP4" "$CLUSTER_NAME" A)
  [[ $got == "$CLUSTER_ANSWER4" ]]
  check "after the flood the hostile pod itself is answered over TCP again" $? "got '$got'"
fi

stop_dsproxy
graceful=$?
((graceful == 0 && DSPROXY_EXIT_STATUS == 0))
check "dsproxy exits on SIGTERM with status 0" $? "exit status $DSPROXY_EXIT_STATUS"

echo "(took ${SECONDS}s)"
summary
((FAILED == 0))
