#!/usr/bin/env bash
# Issue 11's certificate rotation under load: a long transfer through an HBONE tunnel while every
# certificate and the trust bundle change, on the three-node lab of lib/hbone_lab.sh.
#
#   hbone_rotation.sh DSPROXY_BIN ECHO_BIN
#
#   node  (sleep):    local issuer (root 1) with --cert-lifetime-s 8: renewed every 4 s.
#   node2 (tcp-echo): --cert-dir, files written here with openssl, first signed by root 1, then
#                     rewritten with a new key signed by root 2 during the transfer.
#   both:             --trust-bundle FILE, root 1 only, rewritten to root 1 + root 2 during the
#                     transfer (the order a CA rotation needs: trust the new root, then use it).
#
# Checks: the transfer (4 MiB each way at a bounded 400 KiB/s, line by line through tcp-echo,
# sha256 of both directions kept by the client) was still running when every rotation had been
# seen and completes intact; afterwards a new connection to node2 (Node.js peer) gets the new
# root-2 certificate (serial and notBefore of the file), which a peer trusting root 1 only
# refuses; node's dsproxy, as a client, presents a renewed certificate on a new connection (the
# peer pod's server sees its serial, one node logged after the rotation) and verifies node2's
# root-2 certificate with the reloaded bundle (a new tunnel, over the pod's IPv6 address).
#
# Needs root, iproute2, iptables, ipset, OpenBSD nc, openssl, node, jq, python3; about 20 s.

set -uo pipefail

# shellcheck source=tests/e2e/lib/hbone_lab.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/hbone_lab.sh"
suite_args -- "$@"
E2E_DEADLINE=${E2E_DEADLINE:-60}
lab_up

TRANSFER_BYTES=$((4 * 1024 * 1024))
TRANSFER_RATE=$((400 * 1024))

# ---- certificates ------------------------------------------------------------------------------
PKI="$CLUSTER_TMP/pki"
lab_ca "$PKI/root1" "hbone test root 1"
lab_ca "$PKI/root2" "hbone test root 2"
BUNDLE="$CLUSTER_TMP/bundle.pem"
cp "$PKI/root1/ca.crt" "$BUNDLE"
cat "$PKI/root1/ca.crt" "$PKI/root2/ca.crt" >"$PKI/both-roots.pem"
CERT_DIR="$CLUSTER_TMP/certs"
ECHO_DIR="$CERT_DIR/dual-stack/default"
mkdir -p "$ECHO_DIR"
# install_echo_cert PREFIX: node2's files for the tcp-echo pod, key first then certificate, each
# by rename (a reader sees a mismatched pair at most, which it skips until the next poll).
install_echo_cert() {
  install -m 0600 "$1.key" "$ECHO_DIR/.tls.key.new" && mv -f "$ECHO_DIR/.tls.key.new" "$ECHO_DIR/tls.key" &&
    install -m 0644 "$1.crt" "$ECHO_DIR/.tls.crt.new" && mv -f "$ECHO_DIR/.tls.crt.new" "$ECHO_DIR/tls.crt"
}
lab_leaf "$PKI/root1" "$LAB_ECHO_ID" "$PKI/echo-1"
lab_leaf "$PKI/root2" "$LAB_ECHO_ID" "$PKI/echo-2"
lab_leaf "$PKI/root1" "$LAB_SLEEP_ID" "$PKI/peer-client"
lab_leaf "$PKI/root1" "$LAB_PEERPOD_ID" "$PKI/peerpod"
install_echo_cert "$PKI/echo-1" || cluster_die "cannot write node2's certificate files"

start_dsproxy_node node --ca-cert "$PKI/root1/ca.crt" --ca-key "$PKI/root1/ca.key" --cert-lifetime-s 8 \
  --trust-bundle "$BUNDLE" || cluster_die "dsproxy did not start on node"
start_dsproxy_node node2 --cert-dir "$CERT_DIR" --trust-bundle "$BUNDLE" || cluster_die "dsproxy did not start on node2"
wait_identity node "$LAB_SLEEP_ID" || cluster_die "node has no certificate for the sleep pod"
wait_identity node2 "$LAB_ECHO_ID" || cluster_die "node2 has no certificate for the tcp-echo pod"

ECHO_SERIAL_1=$(cert_serial "$PKI/echo-1.crt")
ECHO_SERIAL_2=$(cert_serial "$PKI/echo-2.crt")
[[ $(norm_serial "$(cert_of node2 "$LAB_ECHO_ID" serial)") == "$ECHO_SERIAL_1" ]]
check "node2 serves the cert-dir certificate signed by root 1" $? "serial $(cert_of node2 "$LAB_ECHO_ID" serial)"
exchange "$LAB_ECHO_IP" 9000 before
check "sleep -> tcp-echo on node2 through the tunnel answers" $?

# Before: what node presents as a client, seen by an independent server (the peer pod's).
peer_server_start "$PKI/peerpod" "$BUNDLE"
out=$(exchange "$LAB_PEERPOD_IP" 9000 to-peer)
check "sleep -> the peer pod (its server a Node.js peer) answers" $? "$out"
SLEEP_SERIAL_SEEN_1=$(norm_serial "$(jq -r '.peerSerial // empty' <<<"$(peer_server_last_request)")")
SLEEP_SERIAL_1=$(norm_serial "$(cert_of node "$LAB_SLEEP_ID" serial)")
[[ -n $SLEEP_SERIAL_SEEN_1 && $SLEEP_SERIAL_SEEN_1 == "$SLEEP_SERIAL_1" ]]
check "the peer server saw node's current certificate for sleep" $? "saw '$SLEEP_SERIAL_SEEN_1', node has '$SLEEP_SERIAL_1'"
peer_server_stop

# ---- the transfer, and the rotations during it ----------------------------------------------------
# Line by line through tcp-echo ("hello <line>" back): the client knows what both directions
# must hash to; paced so it lasts about 10 s.
cat >"$CLUSTER_TMP/transfer.py" <<'PY'
import hashlib, json, random, socket, sys, threading, time
host, port, total, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
result = {"sent": 0, "received": 0, "expected": 0, "ok": False, "error": ""}
try:
    s = socket.create_connection((host, port), timeout=10)
    s.settimeout(30)
    want, got, sent_hash = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    def reader():
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    return
                got.update(b)
                result["received"] += len(b)
        except Exception as e:  # a reset or a stall: the result says so
            result["error"] = "read: " + repr(e)
    t = threading.Thread(target=reader)
    t.start()
    rng, start = random.Random(11), time.monotonic()
    while result["sent"] < total:
        line = rng.randbytes(512).hex().encode() + b"\n"
        s.sendall(line)
        sent_hash.update(line)
        want.update(b"hello " + line)
        result["sent"] += len(line)
        result["expected"] += len(line) + 6
        ahead = result["sent"] / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    s.shutdown(socket.SHUT_WR)
    t.join(30)
    result["seconds"] = round(time.monotonic() - start, 1)
    result["ok"] = not t.is_alive() and result["received"] == result["expected"] and got.digest() == want.digest()
    result["receivedSha"], result["expectedSha"] = got.hexdigest(), want.hexdigest()
except Exception as e:
    result["error"] = repr(e)
print("TRANSFER " + json.dumps(result), flush=True)
PY
NODE_MARK=$(log_mark node)
ip netns exec "$(pod_ns sleep)" timeout 40 python3 "$CLUSTER_TMP/transfer.py" "$LAB_ECHO_IP" 9000 \
  "$TRANSFER_BYTES" "$TRANSFER_RATE" >"$CLUSTER_TMP/transfer.out" 2>&1 &
TRANSFER_PID=$!
CLUSTER_BG_PIDS+=("$TRANSFER_PID")
sleep 1

# 1. The trust bundle gains root 2 (one rename), on both nodes.
cp "$PKI/both-roots.pem" "$BUNDLE.new" && mv -f "$BUNDLE.new" "$BUNDLE"
roots() { dump_of "$1" | jq -r '.identity.trustBundle.roots | length'; }
got1=$(wait_at_least 2 roots node)
got2=$(wait_at_least 2 roots node2)
[[ $got1 == 2 && $got2 == 2 ]]
check "during the transfer: both nodes reloaded the bundle with two roots" $? "node $got1, node2 $got2"
# 2. node2's files now hold a new key and a certificate from root 2.
install_echo_cert "$PKI/echo-2" || cluster_die "cannot rewrite node2's certificate files"
for ((i = 0; i < 30; i++)); do
  [[ $(norm_serial "$(cert_of node2 "$LAB_ECHO_ID" serial)") == "$ECHO_SERIAL_2" ]] && break
  sleep 0.1
done
[[ $(norm_serial "$(cert_of node2 "$LAB_ECHO_ID" serial)") == "$ECHO_SERIAL_2" ]]
check "during the transfer: node2 took the rewritten root-2 certificate" $? "serial $(cert_of node2 "$LAB_ECHO_ID" serial)"
# 3. node's local issuer renewed sleep's certificate (half of 8 s).
for ((i = 0; i < 60; i++)); do
  [[ $(norm_serial "$(cert_of node "$LAB_SLEEP_ID" serial)") != "$SLEEP_SERIAL_1" ]] && break
  sleep 0.1
done
SLEEP_SERIAL_2=$(norm_serial "$(cert_of node "$LAB_SLEEP_ID" serial)")
[[ -n $SLEEP_SERIAL_2 && $SLEEP_SERIAL_2 != "$SLEEP_SERIAL_1" ]]
check "during the transfer: node renewed sleep's certificate" $? "$SLEEP_SERIAL_1 -> $SLEEP_SERIAL_2"
kill -0 "$TRANSFER_PID" 2>/dev/null && ! grep -q '^TRANSFER' "$CLUSTER_TMP/transfer.out"
check "every rotation above happened while the transfer was running" $? "$(cat "$CLUSTER_TMP/transfer.out")"

for ((i = 0; i < 300; i++)); do
  kill -0 "$TRANSFER_PID" 2>/dev/null || break
  sleep 0.1
done
wait "$TRANSFER_PID" 2>/dev/null
transfer=$(sed -n 's/^TRANSFER //p' "$CLUSTER_TMP/transfer.out")
[[ $(jq -r .ok <<<"$transfer" 2>/dev/null) == true && $(jq -r .sent <<<"$transfer") -ge $TRANSFER_BYTES ]]
CHECK_SHOW_DETAIL=1 check "the transfer completed with both directions' checksums intact" $? \
  "${transfer:-$(cat "$CLUSTER_TMP/transfer.out")}"

# ---- after: new connections use the new certificates ---------------------------------------------
peer_to_node2() { # peer_to_node2 CA: a new connection from node3 to node2's tcp-echo pod
  peer_on node3 client --cert "$PKI/peer-client.crt" --key "$PKI/peer-client.key" --ca "$1" \
    --connect "$LAB_ECHO_IP:15008" --authority "$LAB_ECHO_IP:9000" --forwarded "for=\"$LAB_SLEEP_IP:41000\"" --bytes 1024
}
result=$(peer_to_node2 "$PKI/both-roots.pem")
[[ $(jq -r .status <<<"$result") == 200 && $(norm_serial "$(jq -r .serverSerial <<<"$result")") == "$ECHO_SERIAL_2" ]]
check "a new connection to node2 gets the rewritten certificate (serial $ECHO_SERIAL_2)" $? "$result"
want_nb=$(openssl x509 -in "$PKI/echo-2.crt" -noout -startdate | sed 's/^notBefore=//')
[[ $(jq -r .serverNotBefore <<<"$result") == "$want_nb" ]]
check "... with the file's notBefore ($want_nb)" $? "saw $(jq -r .serverNotBefore <<<"$result")"
result=$(peer_to_node2 "$PKI/root1/ca.crt")
[[ $(jq -r .status <<<"$result") == 0 && $(jq -r .error <<<"$result") == *"unable to verify the first certificate"* ]]
check "a peer trusting root 1 only refuses it (it is root 2's)" $? "$result"

# node as a client: a new connection to the peer pod's server presents a renewed certificate.
peer_server_start "$PKI/peerpod" "$BUNDLE"
out=$(exchange "$LAB_PEERPOD_IP" 9000 to-peer-after)
check "after: sleep -> the peer pod answers" $? "$out"
seen=$(norm_serial "$(jq -r '.peerSerial // empty' <<<"$(peer_server_last_request)")")
issued_after=$(log_since node "$NODE_MARK" | sed -n "s|.*identity: certificate for $LAB_SLEEP_ID from local issuer: serial \([0-9A-F]*\),.*|\1|p" |
  while read -r s; do norm_serial "$s"; done)
[[ -n $seen && $seen != "$SLEEP_SERIAL_1" ]] && grep -qxF -- "$seen" <<<"$issued_after"
check "node presented a certificate issued after the rotation began" $? \
  "saw '$seen'; before '$SLEEP_SERIAL_1'; issued since: ${issued_after//$'\n'/ }"
peer_server_stop

# node as a client verifying node2's root-2 certificate: a new pool key (the pod's IPv6 address)
# means a new outer connection and handshake.
before=$(tls_handshakes node client)
refused_before=$(dump_of node | jq '[.identity.handshakes.client.refused[]] | add')
out=$(exchange fd00:10:244:1::1a 9000 v6-after)
check "after: a new tunnel (sleep -> tcp-echo's IPv6 address) answers" $? "$out"
after=$(tls_handshakes node client)
refused_after=$(dump_of node | jq '[.identity.handshakes.client.refused[]] | add')
((after == before + 1 && refused_after == refused_before))
check "... over a new handshake that verified node2's root-2 certificate" $? \
  "client handshakes $before -> $after, refused $refused_before -> $refused_after"
exchange "$LAB_ECHO_IP" 9000 v4-after
check "after: the tunnel pooled before the rotation still serves new streams" $?

for key in node node2; do
  kill -0 "${DSPROXY_NODE_PID[$key]}" 2>/dev/null && dsproxy_ready "$key"
  check "dsproxy on $key is still running and ready" $?
done

echo "(took ${SECONDS}s)"
summary
((FAILED == 0))
