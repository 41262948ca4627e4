#!/usr/bin/env bash
# Issue 11's refusals on the wire: misbehaving peers against a dsproxy node's HBONE port, and a
# remote "node" presenting the wrong identity to dsproxy as a client. Three node namespaces
# (lib/hbone_lab.sh): dsproxy on node (sleep) and node2 (dual-stack/tcp-echo); node3 runs no
# dsproxy and plays a foreign node: test peers (tests/tools/hbone_peer.js, Node.js's own
# http2/tls) connect from it, and its pod's port 15008 is served by the peer as a remote node.
#
#   hbone_refusals.sh DSPROXY_BIN ECHO_BIN
#
# Server side (a peer on node3 -> the tcp-echo pod's 15008, captured by node2's dsproxy): a
# client certificate from a foreign CA, an expired one, a not-yet-valid one, none at all, TLS 1.2
# only, plaintext HTTP/2 (h2c), ALPN without h2, a GET instead of CONNECT (400), a CONNECT to an
# address that is not the pod (400, no open relay), a bad HTTP/2 preface and a DATA frame on
# stream 0 (the connection is closed with GOAWAY PROTOCOL_ERROR). Client side (sleep -> the peer
# pod, through node's dsproxy): a server certificate with the wrong SPIFFE identity and one from
# a foreign CA. For each: the connection is refused, dsproxy logs a line naming the reason, the
# matching counter (/config_dump identity.handshakes, /stats) goes up by one, and the sleep pod's
# traffic through the same nodes (a connection opened before, and a new one) keeps working.
# Valid peers on both sides are served (so every refusal check can fail).
#
# Certificates are made with the openssl command line. Needs root, iproute2, iptables, ipset,
# OpenBSD nc, openssl, node, jq, python3; about 20 s.

set -uo pipefail

# shellcheck source=tests/e2e/lib/hbone_lab.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/hbone_lab.sh"
suite_args -- "$@"
E2E_DEADLINE=${E2E_DEADLINE:-60}
lab_up

# ---- certificates ------------------------------------------------------------------------------
PKI="$CLUSTER_TMP/pki"
lab_ca "$PKI/root" "hbone test root"
lab_ca "$PKI/foreign" "some other mesh's root"
ROOT="$PKI/root/ca.crt"
DAY_AGO=$(date -u -d '-2 days' +%Y%m%d%H%M%SZ)
HOUR_AGO=$(date -u -d '-1 hour' +%Y%m%d%H%M%SZ)
TOMORROW=$(date -u -d '+1 day' +%Y%m%d%H%M%SZ)
IN_TWO_DAYS=$(date -u -d '+2 days' +%Y%m%d%H%M%SZ)
lab_leaf "$PKI/root" "$LAB_SLEEP_ID" "$PKI/good"
lab_leaf "$PKI/foreign" "$LAB_SLEEP_ID" "$PKI/foreign-ca"
lab_leaf "$PKI/root" "$LAB_SLEEP_ID" "$PKI/expired" "$DAY_AGO" "$HOUR_AGO"
lab_leaf "$PKI/root" "$LAB_SLEEP_ID" "$PKI/not-yet-valid" "$TOMORROW" "$IN_TWO_DAYS"
lab_leaf "$PKI/root" "$LAB_PEERPOD_ID" "$PKI/peerpod"
lab_leaf "$PKI/root" spiffe://cluster.local/ns/peer/sa/impostor "$PKI/impostor"
lab_leaf "$PKI/foreign" "$LAB_PEERPOD_ID" "$PKI/peerpod-foreign"

start_dsproxy_node node --ca-cert "$ROOT" --ca-key "$PKI/root/ca.key" || cluster_die "dsproxy did not start on node"
start_dsproxy_node node2 --ca-cert "$ROOT" --ca-key "$PKI/root/ca.key" || cluster_die "dsproxy did not start on node2"
wait_identity node "$LAB_SLEEP_ID" || cluster_die "node has no certificate for the sleep pod"
wait_identity node2 "$LAB_ECHO_ID" || cluster_die "node2 has no certificate for the tcp-echo pod"

# ---- the bystander: sleep's traffic through both nodes -----------------------------------------
exchange "$LAB_ECHO_IP" 9000 first
check "sleep -> tcp-echo on node2 through the tunnel answers" $?
# A connection that stays open through every refusal below.
coproc KEPT { ip netns exec "$(pod_ns sleep)" timeout 120 nc "$LAB_ECHO_IP" 9001 2>&1; }
KEPT_OUT=${KEPT[0]}
KEPT_IN=${KEPT[1]}
kept_exchange() {
  local line=
  { echo "$1" >&"$KEPT_IN"; } 2>/dev/null || return 1
  read -r -t 5 line <&"$KEPT_OUT" || return 1
  [[ $line == "hello $1" ]]
}
kept_exchange kept0
check "a long-lived connection through the tunnel answers" $?

bystander() { # bystander LABEL: the sleep pod's traffic still flows
  local out
  out=$(exchange "$LAB_ECHO_IP" 9000 "after-$RANDOM")
  check "$1: a new connection of sleep through the same nodes is served" $? "$out"
  kept_exchange "kept-$RANDOM"
  check "$1: the long-lived connection still answers" $?
}

# ---- server side: peers on node3 against node2's HBONE port --------------------------------------
# peer_client ARGS...: a CONNECT to the tcp-echo pod as sleep's identity would send it, from node3.
peer_client() {
  peer_on node3 client --ca "$ROOT" --connect "$LAB_ECHO_IP:15008" --authority "$LAB_ECHO_IP:9000" \
    --forwarded "for=\"$LAB_SLEEP_IP:41000\"" "$@"
}
field() { jq -r ".$2 // empty" <<<"$1" 2>/dev/null; }

# (tcp-echo answers each line with "hello <line>": the answer is a little longer than what was sent.)
result=$(peer_client --cert "$PKI/good.crt" --key "$PKI/good.key" --bytes 65536)
[[ $(field "$result" status) == 200 && $(field "$result" sent) == 65536 && $(field "$result" received) -gt 65536 ]]
check "control: a peer with a valid certificate of the mesh's CA is served (200, 64 KiB through tcp-echo)" $? "$result"
[[ $(field "$result" peer) == "$LAB_ECHO_ID" ]]
check "control: node2 presented the tcp-echo pod's identity" $? "peer $(field "$result" peer)"

# The log throttle lets one line per second through per (side, reason): refusals with the same
# reason are spaced so that each gets its own line.
declare -A LAST_REFUSAL=()
space_reason() {
  local now=${EPOCHREALTIME/./} last=${LAST_REFUSAL[$1]:-0} gap
  gap=$((now - last))
  if ((gap < 1200000)); then sleep "$(printf '0.%06d' $((1200000 - gap)))"; fi
  LAST_REFUSAL[$1]=${EPOCHREALTIME/./}
}

# tls_refusal LABEL REASON LOG-ERE PEER-ARGS...: the peer is refused in the TLS handshake by
# node2; REASON is the counter's name in /config_dump identity.handshakes.server.refused.
tls_refusal() {
  local label=$1 reason=$2 ere=$3 before after mark line
  shift 3
  in_time "$label" || return
  space_reason "$reason"
  before=$(tls_refused node2 server "$reason")
  mark=$(log_mark node2)
  result=$(peer_client "$@")
  [[ -n $result && $(field "$result" status) == 0 && -n $(field "$result" error) ]]
  check "$label: the connection is refused" $? "${result:-no result}"
  after=$(wait_at_least $((${before:-0} + 1)) tls_refused node2 server "$reason")
  check "$label: counter server.refused.$reason $before -> $after" $?
  line=$(wait_log node2 "$mark" "$ere")
  check "$label: dsproxy logs why" $? "no line matching /$ere/ in: $(log_since node2 "$mark" | tail -n 3 | tr '\n' '|')"
  [[ -n $line ]] && echo "    $line"
  bystander "$label"
}

from_node3='192\.168\.200\.3:[0-9]+'
tls_refusal "TLS 1.2 only" protocol "tls server: refused client $from_node3: TLS handshake failed \(.*protocol" \
  --cert "$PKI/good.crt" --key "$PKI/good.key" --tls12 1
tls_refusal "client certificate from a foreign CA" unknown-ca \
  "tls server: refused client $from_node3: certificate from an unknown CA \(.*presented $LAB_SLEEP_ID" \
  --cert "$PKI/foreign-ca.crt" --key "$PKI/foreign-ca.key"
tls_refusal "expired client certificate" expired \
  "tls server: refused client $from_node3: expired certificate \(certificate has expired.*presented $LAB_SLEEP_ID" \
  --cert "$PKI/expired.crt" --key "$PKI/expired.key"
tls_refusal "plaintext HTTP/2 (h2c, no TLS)" protocol \
  "tls server: refused client $from_node3: TLS handshake failed \(not TLS, a plaintext client\? wrong version number\)" \
  --plaintext 1
tls_refusal "not-yet-valid client certificate" not-yet-valid \
  "tls server: refused client $from_node3: certificate not yet valid \(certificate is not yet valid.*presented $LAB_SLEEP_ID" \
  --cert "$PKI/not-yet-valid.crt" --key "$PKI/not-yet-valid.key"
tls_refusal "no client certificate" no-certificate "tls server: refused client $from_node3: no client certificate" \
  --no-cert 1

# ALPN without h2: the raw peer (the http2 module always offers h2).
if in_time "ALPN without h2"; then
  space_reason protocol
  before=$(tls_refused node2 server protocol)
  mark=$(log_mark node2)
  result=$(peer_on node3 raw --ca "$ROOT" --cert "$PKI/good.crt" --key "$PKI/good.key" --connect "$LAB_ECHO_IP:15008" \
    --alpn http/1.1 --send data-on-stream-0)
  [[ $(field "$result" closed) == true && $(field "$result" alpn) != h2 && -n $(field "$result" error) ]]
  check "ALPN http/1.1 only: the handshake is refused" $? "${result:-no result}"
  after=$(wait_at_least $((${before:-0} + 1)) tls_refused node2 server protocol)
  check "ALPN http/1.1 only: counter server.refused.protocol $before -> $after" $?
  line=$(wait_log node2 "$mark" "tls server: refused client $from_node3: TLS handshake failed \(the client does not offer ALPN h2")
  check "ALPN http/1.1 only: dsproxy logs why" $? "$(log_since node2 "$mark" | tail -n 3 | tr '\n' '|')"
  [[ -n $line ]] && echo "    $line"
  bystander "ALPN http/1.1 only"
fi

# ---- server side, after a good handshake: HTTP/2 misbehaviour -------------------------------------
# stream_refusal LABEL STATUS LOG-ERE PEER-ARGS...: a well-authenticated peer's request is answered
# STATUS; counted in /stats tunnels_refused. LOG-ERE empty: no log line expected.
stream_refusal() {
  local label=$1 want=$2 ere=$3 before after mark line
  shift 3
  in_time "$label" || return
  before=$(stat_of node2 tunnels_refused)
  mark=$(log_mark node2)
  result=$(peer_client --cert "$PKI/good.crt" --key "$PKI/good.key" "$@")
  [[ $(field "$result" status) == "$want" ]]
  check "$label: answered $want" $? "${result:-no result}"
  after=$(wait_at_least $((${before:-0} + 1)) stat_of node2 tunnels_refused)
  check "$label: counter tunnels_refused $before -> $after" $?
  if [[ -n $ere ]]; then
    line=$(wait_log node2 "$mark" "$ere")
    check "$label: dsproxy logs why" $? "$(log_since node2 "$mark" | tail -n 3 | tr '\n' '|')"
    [[ -n $line ]] && echo "    $line"
  fi
  bystander "$label"
}
stream_refusal "GET instead of CONNECT" 400 "hbone: refused a GET request from $from_node3 .*: HBONE serves CONNECT only \(400\)" \
  --method GET
stream_refusal "CONNECT to another address than the pod's (no open relay)" 400 "" --authority "$LAB_SLEEP_IP:9000"

# protocol_violation LABEL SEND LOG-ERE: after a good handshake, frames nghttp2 must refuse; the
# connection ends with GOAWAY(PROTOCOL_ERROR = 1) and is closed; /stats hbone_protocol_errors.
protocol_violation() {
  local label=$1 send=$2 ere=$3 before after mark line
  in_time "$label" || return
  before=$(stat_of node2 hbone_protocol_errors)
  mark=$(log_mark node2)
  result=$(peer_on node3 raw --ca "$ROOT" --cert "$PKI/good.crt" --key "$PKI/good.key" --connect "$LAB_ECHO_IP:15008" \
    --send "$send")
  [[ $(field "$result" handshake) == true && $(field "$result" closed) == true && $(field "$result" goaway) == 1 ]]
  check "$label: GOAWAY(PROTOCOL_ERROR) and the connection closed" $? "${result:-no result}"
  after=$(wait_at_least $((${before:-0} + 1)) stat_of node2 hbone_protocol_errors)
  check "$label: counter hbone_protocol_errors $before -> $after" $?
  line=$(wait_log node2 "$mark" "$ere")
  check "$label: dsproxy logs why" $? "$(log_since node2 "$mark" | tail -n 3 | tr '\n' '|')"
  [[ -n $line ]] && echo "    $line"
  bystander "$label"
}
protocol_violation "a bad HTTP/2 preface" bad-preface \
  "hbone: server connection from $from_node3 \($LAB_SLEEP_ID\) closed: HTTP/2 protocol violation: .*"
sleep 1.1 # the protocol-violation line is throttled to one a second too
protocol_violation "DATA on stream 0" data-on-stream-0 \
  "hbone: server connection from $from_node3 \($LAB_SLEEP_ID\) closed: HTTP/2 protocol violation: .*stream"

# ---- client side: node's dsproxy dials a remote node that presents the wrong certificate --------
# The peer pod on node3 is a mesh workload of identity peer/default; its 15008 is the peer server.
# client_case LABEL CERT-PREFIX REASON LOG-ERE: sleep -> the peer pod's tcp-echo must fail, counted
# and logged on node as a refused server.
client_case() {
  local label=$1 cert=$2 reason=$3 ere=$4 before after mark line out ok
  in_time "$label" || return
  peer_server_stop
  peer_server_start "$cert" "$ROOT"
  before=$(tls_refused node client "$reason")
  mark=$(log_mark node)
  if out=$(exchange "$LAB_PEERPOD_IP" 9000 "to-$reason"); then ok=1; else ok=0; fi
  check "$label: sleep's connection is not served" "$ok" "$out"
  after=$(wait_at_least $((${before:-0} + 1)) tls_refused node client "$reason")
  check "$label: counter client.refused.$reason $before -> $after" $?
  line=$(wait_log node "$mark" "$ere")
  check "$label: dsproxy logs why" $? "$(log_since node "$mark" | tail -n 3 | tr '\n' '|')"
  [[ -n $line ]] && echo "    $line"
  [[ -z $(peer_server_last_request) ]]
  check "$label: no request reached the peer server" $? "$(peer_server_last_request)"
  bystander "$label"
}
if in_time "client-side control"; then
  peer_server_start "$PKI/peerpod" "$ROOT"
  out=$(exchange "$LAB_PEERPOD_IP" 9000 to-peer)
  check "control: sleep -> the peer pod through a tunnel to the peer server answers" $? "$out"
  req=$(peer_server_last_request)
  [[ $(field "$req" peer) == "$LAB_SLEEP_ID" && $(field "$req" method) == CONNECT ]]
  check "control: the peer server saw a CONNECT from the sleep identity" $? "$req"
fi
client_case "server presents the wrong SPIFFE identity" "$PKI/impostor" wrong-identity \
  "tls client: refused server $LAB_PEERPOD_IP: wrong identity \(presented spiffe://cluster.local/ns/peer/sa/impostor, expected $LAB_PEERPOD_ID\)"
client_case "server certificate from a foreign CA" "$PKI/peerpod-foreign" unknown-ca \
  "tls client: refused server $LAB_PEERPOD_IP: certificate from an unknown CA"
peer_server_stop

# ---- nothing lost but the refused connections ----------------------------------------------------
for key in node node2; do
  kill -0 "${DSPROXY_NODE_PID[$key]}" 2>/dev/null && dsproxy_ready "$key"
  check "dsproxy on $key is still running and ready" $?
done
in_node_of node2 timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/15000' 2>/dev/null
check "node2's admin API still answers" $?

echo "(took ${SECONDS}s)"
summary
((FAILED == 0))
