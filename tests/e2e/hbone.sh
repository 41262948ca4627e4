#!/usr/bin/env bash
# HBONE between two nodes (issue 11): the tcp-echo experiment with the client on one node
# (kind-worker: default/sleep) and the three tcp-echo pods on another (kind-worker2), every
# namespace in the ambient mesh, each node running dsproxy with a local-issuer CA. The nodes
# are joined by an underlay (a bridge, both families); tcpdump on it shows what crosses.
#
#   hbone.sh DSPROXY_BIN ECHO_BIN
#
# Checks: every ClusterIP of every Service answers across nodes; no payload byte crosses the
# underlay in plaintext (only TLS to port 15008), and the echo pod still sees the sleep pod's
# own address; an inner IPv6 connection whose pod's IPv6 underlay path is broken is served over
# the pod's IPv4 address, and the reverse; with mTLS off the same traffic crosses in plaintext
# (the capture sees the payload then: the plaintext check can fail).
#
# Needs root, iproute2, iptables, ipset, OpenBSD nc, tcpdump, openssl. Missing any is a failure.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

E2E_DEADLINE=${E2E_DEADLINE:-80}

suite_trap

suite_require
for cmd in tcpdump openssl; do
  command -v "$cmd" >/dev/null 2>&1 || cluster_die "missing command: $cmd (run scripts/install-deps.sh)"
done

# ---- topology ---------------------------------------------------------------------------------
cluster_node_add node2 kind-worker2
cluster_pods_clear
cluster_pod_add sleep default/sleep 10.244.0.5 fd00:10:244::5 vethsleep 10.244.0.1
cluster_pod_add echo-ds dual-stack/tcp-echo 10.244.1.26 fd00:10:244:1::1a vethechods 10.244.1.1 node2
cluster_pod_add echo-v4 ipv4/tcp-echo 10.244.1.19 fd00:10:244:1::13 vethechov4 10.244.1.1 node2
cluster_pod_add echo-v6 ipv6/tcp-echo 10.244.1.24 fd00:10:244:1::18 vethechov6 10.244.1.1 node2
cluster_echo_add echo-ds
cluster_echo_add echo-v4
cluster_echo_add echo-v6
cluster_up

# The experiment's objects with the tcp-echo pods moved to kind-worker2 (their addresses in its
# pod range) and every namespace labelled into the mesh.
DSPROXY_CONFIG="$CLUSTER_TMP/hbone-cluster.yaml"
awk '
  function flush() {
    if (doc == "") return
    if (doc ~ /(^|\n)kind: Namespace\n/) { doc = ""; return }
    if (doc ~ /(^|\n)kind: Pod\n/ && doc ~ /\n  namespace: (dual-stack|ipv4|ipv6)\n/)
      sub(/nodeName: kind-worker\n/, "nodeName: kind-worker2\n", doc)
    printf "%s---\n", doc
    doc = ""
  }
  /^---$/ { flush(); next }
  { doc = doc $0 "\n" }
  END { flush() }' "$CLUSTER_REPO_DIR/config/tcp-echo-experiment.yaml" |
  sed -e 's/10\.244\.0\.26/10.244.1.26/g; s/10\.244\.0\.19/10.244.1.19/g; s/10\.244\.0\.24/10.244.1.24/g' \
    -e 's/fd00:10:244::1a/fd00:10:244:1::1a/g; s/fd00:10:244::13/fd00:10:244:1::13/g; s/fd00:10:244::18/fd00:10:244:1::18/g' \
    >"$DSPROXY_CONFIG"
for ns in default dual-stack ipv4 ipv6; do
  printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels:\n    istio.io/dataplane-mode: ambient\n---\n' \
    "$ns" >>"$DSPROXY_CONFIG"
done
grep -q 'nodeName: kind-worker2' "$DSPROXY_CONFIG" || cluster_die "config transformation failed"

# A local-issuer CA, as a demo or small cluster would have.
CA_KEY="$CLUSTER_TMP/ca.key"
CA_CERT="$CLUSTER_TMP/ca.crt"
(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$CA_KEY" \
  -out "$CA_CERT" -days 2 -subj "/O=dsproxy e2e/CN=hbone test root" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  >"$CLUSTER_TMP/openssl.log" 2>&1) || cluster_die "openssl could not make the CA ($(cat "$CLUSTER_TMP/openssl.log"))"
MTLS=(--ca-cert "$CA_CERT" --ca-key "$CA_KEY")

start_both() {
  start_dsproxy_node node "$@" || return 1
  start_dsproxy_node node2 "$@"
}
stop_both() {
  stop_dsproxy_node node
  stop_dsproxy_node node2
}

stat_of() { # stat_of NODE-KEY NAME
  node_http_get_on "$1" 15000 /stats | sed -n 's/.*"'"$2"'":\([0-9]*\).*/\1/p'
}

# exchange IP PORT WORD: the sleep pod sends WORD, the answer must be "hello WORD"
exchange() {
  local answer
  answer=$(echo "$3" | in_pod sleep timeout 8 nc -N -w 5 "$1" "$2" 2>&1)
  [[ $answer == "hello $3" ]] || {
    echo "    $1:$2 answered '$answer'"
    return 1
  }
}
# last_peer POD: the client address the echo pod saw last
last_peer() { tail -n 1 "$CLUSTER_TMP/$1.peers" | awk '{ print $2 }'; }

start_capture() { # start_capture FILE
  local i
  ip netns exec "$CLUSTER_PREFIX-underlay" tcpdump -i any --immediate-mode -n -U -s 0 -w "$1" >"$1.log" 2>&1 &
  CAPTURE_PID=$!
  CLUSTER_BG_PIDS+=("$CAPTURE_PID")
  for ((i = 0; i < 50; i++)); do
    grep -q "listening on" "$1.log" 2>/dev/null && return 0
    sleep 0.1
  done
  cluster_die "tcpdump did not start ($(cat "$1.log"))"
}
stop_capture() {
  kill -INT "$CAPTURE_PID" 2>/dev/null
  wait "$CAPTURE_PID" 2>/dev/null
  sleep 0.2
}

VIPS=(fd00:10:96::f9fc 10.96.106.11 10.96.104.229 fd00:10:96::9c3a)
declare -A VIP_POD=([fd00:10:96::f9fc]=echo-ds [10.96.106.11]=echo-ds [10.96.104.229]=echo-v4 [fd00:10:96::9c3a]=echo-v6)
SECRET=payload$RANDOM$RANDOM

# Every ClusterIP of every Service, both Service ports; the echo pod must see the sleep pod's own
# address of the ClusterIP's family.
run_experiment() { # run_experiment LABEL
  local vip port fam want
  for vip in "${VIPS[@]}"; do
    in_time "$1: $vip" || return
    [[ $vip == *:* ]] && fam=6 || fam=4
    want=$(pod_ip sleep "$fam")
    for port in 9000 9001; do
      exchange "$vip" "$port" "$SECRET-$port"
      check "$1: sleep -> $vip:$port across nodes answers" $?
      check "$1: ${VIP_POD[$vip]} saw the client as $want" "$([[ $(last_peer "${VIP_POD[$vip]}") == "$want" ]]; echo $?)" \
        "saw $(last_peer "${VIP_POD[$vip]}")"
    done
  done
}

# wait_identity NODE-KEY URI: until the node's identity manager holds a certificate for URI
# (issued on its own thread right after the snapshot that needs it), bounded.
wait_identity() {
  local i
  for ((i = 0; i < 50; i++)); do
    node_http_get_on "$1" 15000 /config_dump | sed -n '/^{/,$p' | jq -e --arg id "$2" \
      '.identity | tostring | contains($id)' >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# ---- mTLS on ------------------------------------------------------------------------------------
# A short drain grace: the last check below stops node2 with a tunnelled connection still open.
start_both "${MTLS[@]}" --drain-grace-ms 1000 || cluster_die "dsproxy did not start with mTLS"
wait_identity node spiffe://cluster.local/ns/default/sa/sleep
check "node has the sleep pod's certificate" $?
for ns in dual-stack ipv4 ipv6; do
  wait_identity node2 "spiffe://cluster.local/ns/$ns/sa/default"
  check "node2 has the $ns tcp-echo pod's certificate" $?
done

table=$(in_node "$DSPROXY_BIN" proxy-config workloads 2>&1)
echo "$table" | grep -q '^dual-stack .*10.244.1.26,fd00:10:244:1::1a .*kind-worker2 .*None .*HBONE' 
check "proxy-config workloads shows the remote tcp-echo pod as HBONE" $? "$(echo "$table" | head -3 | tr '\n' '|')"
in_node_of node2 iptables-save -t mangle | grep -q -- '--dport 15008 .*--on-port 15008'
check "node2 captures TCP to its pods' port 15008 to its HBONE listener" $?

# Happy Eyeballs between the pod's addresses for the outer connection, before any tunnel to the
# pod is pooled: the IPv6 underlay route to echo-ds is broken on node 1, so the tunnel for an
# inner IPv6 connection must ride IPv4; then the reverse.
before=$(stat_of node tunnels_outbound)
in_node ip -6 route replace unreachable fd00:10:244:1::1a/128
exchange fd00:10:244:1::1a 9002 he6
check "inner IPv6 to echo-ds served while its IPv6 path is broken" $?
check "echo-ds saw the IPv6 client fd00:10:244::5 (inner family kept)" \
  "$([[ $(last_peer echo-ds) == fd00:10:244::5 ]]; echo $?)" "saw $(last_peer echo-ds)"
in_node ip -6 route replace fd00:10:244:1::1a/128 via "${CLUSTER_NODE_UNDERLAY6[node2]}"
in_node ip route replace unreachable 10.244.1.26/32
exchange 10.244.1.26 9002 he4
check "inner IPv4 to echo-ds served while its IPv4 path is broken" $?
check "echo-ds saw the IPv4 client 10.244.0.5 (inner family kept)" \
  "$([[ $(last_peer echo-ds) == 10.244.0.5 ]]; echo $?)" "saw $(last_peer echo-ds)"
in_node ip route replace 10.244.1.26/32 via "${CLUSTER_NODE_UNDERLAY4[node2]}"
after=$(stat_of node tunnels_outbound)
check "both went through tunnels" "$(((${after:-0} - ${before:-0}) >= 2 ? 0 : 1))" "tunnels_outbound $before -> $after"

start_capture "$CLUSTER_TMP/mtls.pcap"
run_experiment mTLS
stop_capture
count() { tcpdump -n -r "$1" "$2" 2>/dev/null | wc -l; }
hbone=$(count "$CLUSTER_TMP/mtls.pcap" 'tcp port 15008')
plain=$(count "$CLUSTER_TMP/mtls.pcap" 'tcp port 9000 or tcp port 9001')
check "mTLS: the traffic crossed the underlay to port 15008" "$((hbone > 0 ? 0 : 1))" "$hbone packets"
check "mTLS: no packet to the app ports crossed the underlay" "$((plain == 0 ? 0 : 1))" "$plain packets"
grep -aq "$SECRET" "$CLUSTER_TMP/mtls.pcap"
check "mTLS: no payload byte in plaintext on the underlay" "$((1 - $?))"
check "node2 served the tunnels" "$(($(stat_of node2 tunnels_inbound) >= 8 ? 0 : 1))" \
  "tunnels_inbound $(stat_of node2 tunnels_inbound)"

# ---- a peer's claims: the client address in `forwarded` must be the proven identity's ----------
# An independent HBONE client (Node.js) with a valid certificate for the sleep pod's identity,
# from node 1's own namespace to echo-ds's port 15008 on node 2. dsproxy dials the pod from the
# address `forwarded` names, so a claim that is not a workload of that identity is refused (401):
# otherwise a peer would choose the source address the pod and its NetworkPolicy see.
if in_time "forwarded claims"; then
  LEAF_KEY="$CLUSTER_TMP/peer.key"
  LEAF_CERT="$CLUSTER_TMP/peer.crt"
  (umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$LEAF_KEY" \
    -subj "/O=dsproxy e2e peer" -out "$CLUSTER_TMP/peer.csr" &&
    printf 'subjectAltName=critical,URI:spiffe://cluster.local/ns/default/sa/sleep\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
      >"$CLUSTER_TMP/peer.ext" &&
    openssl x509 -req -in "$CLUSTER_TMP/peer.csr" -CA "$CA_CERT" -CAkey "$CA_KEY" -CAcreateserial -days 1 \
      -extfile "$CLUSTER_TMP/peer.ext" -out "$LEAF_CERT") >>"$CLUSTER_TMP/openssl.log" 2>&1 ||
    cluster_die "openssl could not make the peer's certificate ($(tail -3 "$CLUSTER_TMP/openssl.log"))"
  peer_status() { # peer_status FORWARDED: the status node2's dsproxy answers a CONNECT to echo-ds:9000
    in_node timeout 15 node "$CLUSTER_REPO_DIR/tests/tools/hbone_peer.js" client --cert "$LEAF_CERT" \
      --key "$LEAF_KEY" --ca "$CA_CERT" --connect 10.244.1.26:15008 --authority 10.244.1.26:9000 \
      --forwarded "$1" --bytes 0 2>&1 | sed -n 's/^RESULT .*"status":\([0-9]*\).*/\1/p'
  }
  got=$(peer_status 'for="10.244.0.5:41000"')
  check "a peer claiming its own workload's address (sleep) is served: 200" "$([[ $got == 200 ]] && echo 0 || echo 1)" \
    "status '$got'"
  got=$(peer_status 'for="10.244.0.1:41000"')
  check "a peer claiming the node's address is refused: 401" "$([[ $got == 401 ]] && echo 0 || echo 1)" "status '$got'"
  got=$(peer_status 'for="10.244.1.19:41000"')
  check "a peer claiming another workload's address is refused: 401" "$([[ $got == 401 ]] && echo 0 || echo 1)" \
    "status '$got'"
  got=$(peer_status 'nothing')
  check "a peer naming no client address is refused: 401" "$([[ $got == 401 ]] && echo 0 || echo 1)" "status '$got'"

  # An established tunnelled connection (sleep -> dual-stack/tcp-echo through node2's 15008),
  # open while the DENY below is applied: node2 must re-decide it and reset it both ways. A
  # Node.js client says how its connection ended (a reset is ERROR ECONNRESET, a FIN is EOF).
  LONG_OUT="$CLUSTER_TMP/long-lived.out"
  in_pod sleep timeout 40 node -e '
    const s = require("net").connect({host: process.argv[1], port: +process.argv[2]});
    let got = "", told = false;
    s.setEncoding("utf8");
    s.on("connect", () => s.write("first\n"));
    s.on("data", (d) => { got += d; if (!told && got.includes("hello first")) { told = true; console.log("ESTABLISHED"); } });
    s.on("error", (e) => { console.log("ERROR " + e.code); process.exit(0); });
    s.on("end", () => { console.log("EOF"); process.exit(0); });
    setTimeout(() => { console.log("TIMEOUT"); process.exit(0); }, 35000);
  ' 10.96.106.11 9000 >"$LONG_OUT" 2>&1 &
  LONG_PID=$!
  for ((i = 0; i < 50; i++)); do
    grep -q ESTABLISHED "$LONG_OUT" 2>/dev/null && break
    sleep 0.1
  done
  check "a long-lived connection to dual-stack/tcp-echo is established through the tunnel" \
    "$(grep -q ESTABLISHED "$LONG_OUT" && echo 0 || echo 1)" "$(tr '\n' '|' <"$LONG_OUT")"

  # AuthorizationPolicy at the destination's node, with the principal the peer proved: a DENY
  # of the sleep pod's identity for dual-stack's pods answers its streams 401.
  cat >>"$DSPROXY_CONFIG" <<'POLICY'
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-sleep
  namespace: dual-stack
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
---
POLICY
  got=
  for ((i = 0; i < 40; i++)); do  # the file is polled every second; bounded to about 20 s
    got=$(peer_status 'for="10.244.0.5:41001"')
    [[ $got == 401 ]] && break
    sleep 0.5
  done
  check "a DENY by principal answers the sleep identity's stream 401 on node2" \
    "$([[ $got == 401 ]] && echo 0 || echo 1)" "status '$got'"
  answer=$(echo denied | in_pod sleep timeout 8 nc -N -w 5 10.96.106.11 9000 2>&1)
  check "the sleep pod's own connection to dual-stack/tcp-echo through the tunnel gets no answer" \
    "$([[ $answer != "hello denied" ]] && echo 0 || echo 1)" "answered '$answer'"
  answer=$(echo allowed | in_pod sleep timeout 8 nc -N -w 5 10.96.104.229 9000 2>&1)
  check "its connection to ipv4/tcp-echo (no policy) is still served" \
    "$([[ $answer == "hello allowed" ]] && echo 0 || echo 1)" "answered '$answer'"

  # The established connection: cut by the new DENY (a reset, never a clean end), and node2's
  # access log says so: an inbound HBONE stream from the sleep identity that carried the first
  # line (6 bytes to the pod), ended denied_by_policy, naming the policy.
  for ((i = 0; i < 100; i++)); do
    grep -q -e ERROR -e EOF -e TIMEOUT "$LONG_OUT" 2>/dev/null && break
    sleep 0.1
  done
  wait "$LONG_PID" 2>/dev/null
  check "the established tunnelled connection is reset by the new DENY" \
    "$(grep -q 'ERROR ECONNRESET' "$LONG_OUT" && echo 0 || echo 1)" "$(tr '\n' '|' <"$LONG_OUT")"
  line=
  for ((i = 0; i < 30; i++)); do  # access-log lines are flushed every second
    line=$(grep 'access connection complete' "$CLUSTER_TMP/dsproxy-node2.log" |
      grep 'src.identity=spiffe://cluster.local/ns/default/sa/sleep ' | grep ' direction=inbound protocol=HBONE ' |
      grep ' bytes_recv=6 ' | grep 'reason=denied_by_policy .*policy=dual-stack/deny-sleep' | tail -n 1)
    [[ -n $line ]] && break
    sleep 0.1
  done
  check "node2's access log has the cut stream: inbound, HBONE, denied_by_policy by dual-stack/deny-sleep" \
    "$([[ -n $line ]] && echo 0 || echo 1)" \
    "$(grep 'access connection complete' "$CLUSTER_TMP/dsproxy-node2.log" | grep -c 'protocol=HBONE') HBONE lines"
  line=$(grep 'access connection complete' "$CLUSTER_TMP/dsproxy-node2.log" | grep ' direction=inbound protocol=HBONE ' |
    grep 'reason=rejected_source_identity' | head -n 1)
  check "node2's access log has the refused claims (401) as rejected_source_identity" \
    "$([[ -n $line ]] && echo 0 || echo 1)"
fi

# A tunnelled connection still open when node2 stops: the drain grace runs out, the stream is
# reset, and its record is still written once, as `shutdown` (the access log is flushed at exit;
# its byte counts are 0: the relay was destroyed without reporting, as for plaintext).
if in_time "shutdown record"; then
  SHUT_OUT="$CLUSTER_TMP/shutdown.out"
  in_pod sleep timeout 20 node -e '
    const s = require("net").connect({host: process.argv[1], port: +process.argv[2]});
    let got = "";
    s.setEncoding("utf8");
    s.on("connect", () => s.write("stay\n"));
    s.on("data", (d) => { got += d; if (got.includes("hello stay")) console.log("ESTABLISHED"); });
    s.on("error", (e) => { console.log("ERROR " + e.code); process.exit(0); });
    s.on("end", () => { console.log("EOF"); process.exit(0); });
    setTimeout(() => process.exit(0), 15000);
  ' 10.96.104.229 9000 >"$SHUT_OUT" 2>&1 &
  SHUT_PID=$!
  for ((i = 0; i < 50; i++)); do
    grep -q ESTABLISHED "$SHUT_OUT" 2>/dev/null && break
    sleep 0.1
  done
  stop_dsproxy_node node2
  wait "$SHUT_PID" 2>/dev/null
  n=$(grep 'access connection complete' "$CLUSTER_TMP/dsproxy-node2.log" | grep ' direction=inbound protocol=HBONE ' |
    grep ' dst.addr=10.244.1.19:9000 ' | grep -c 'reason=shutdown')
  check "a tunnelled stream open at node2's exit is recorded once, as shutdown" "$([[ $n == 1 ]] && echo 0 || echo 1)" \
    "$n lines; client: $(tr '\n' '|' <"$SHUT_OUT")"
fi
stop_both

# ---- mTLS off: plaintext as before, and the capture does see it ---------------------------------
if in_time "mTLS off"; then
  start_both || cluster_die "dsproxy did not start without mTLS"
  start_capture "$CLUSTER_TMP/plain.pcap"
  run_experiment plaintext
  stop_capture
  grep -aq "$SECRET" "$CLUSTER_TMP/plain.pcap"
  check "plaintext: the capture sees the payload (so the mTLS check can fail)" $?
  check "plaintext: no tunnel used" "$(($(stat_of node tunnels_outbound) == 0 ? 0 : 1))"
  stop_both
fi

summary
((FAILED == 0))
