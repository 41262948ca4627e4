# shellcheck shell=bash disable=SC2034 # the LAB_* names are for the scripts that source this
# The three-node HBONE lab of tests/e2e/hbone_refusals.sh and hbone_rotation.sh, on top of
# lib/suite.sh, which it sources. Defines functions and variables only.
#
#   node   (kind-worker)   dsproxy; default/sleep           10.244.0.5   fd00:10:244::5
#   node2  (kind-worker2)  dsproxy; dual-stack/tcp-echo     10.244.1.26  fd00:10:244:1::1a
#   node3  (kind-worker3)  no dsproxy: a foreign node. Test peers run in its namespace, and its
#                          pod peer/hbone-peer (10.244.2.9, fd00:10:244:2::9) serves its own
#                          port 15008 with tests/tools/hbone_peer.js: the remote node dsproxy
#                          tunnels to when sleep connects to that pod.
# Every namespace is in the ambient mesh. Certificates are made with the openssl command line
# (an issuer independent of dsproxy's own signer): lab_ca and lab_leaf below.

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/suite.sh"

LAB_PEER_JS="$CLUSTER_REPO_DIR/tests/tools/hbone_peer.js"
LAB_SLEEP_ID=spiffe://cluster.local/ns/default/sa/sleep
LAB_ECHO_ID=spiffe://cluster.local/ns/dual-stack/sa/default
LAB_PEERPOD_ID=spiffe://cluster.local/ns/peer/sa/default
LAB_ECHO_IP=10.244.1.26
LAB_PEERPOD_IP=10.244.2.9
LAB_SLEEP_IP=10.244.0.5
# What the test peers say on stderr: shown by lib/suite.sh's exit trap after a failure.
SUITE_TMP_LOGS+=(peer.stderr)

lab_require() {
  local cmd
  for cmd in openssl node jq python3; do
    command -v "$cmd" >/dev/null 2>&1 || cluster_die "missing command: $cmd (run scripts/install-deps.sh)"
  done
}

# The exit trap, the prerequisites, then the lab itself (after suite_args).
lab_up() {
  suite_trap
  suite_require
  lab_require
  lab_topology
  cluster_up
}

# Before cluster_up: the three nodes, their pods, and the config both dsproxy nodes read.
lab_topology() {
  cluster_node_add node2 kind-worker2
  cluster_node_add node3 kind-worker3
  cluster_pods_clear
  cluster_pod_add sleep default/sleep "$LAB_SLEEP_IP" fd00:10:244::5 vethsleep 10.244.0.1
  cluster_pod_add echo dual-stack/tcp-echo "$LAB_ECHO_IP" fd00:10:244:1::1a vethecho 10.244.1.1 node2
  cluster_pod_add peerpod peer/hbone-peer "$LAB_PEERPOD_IP" fd00:10:244:2::9 vethpeer 10.244.2.1 node3
  cluster_echo_add echo
  cluster_echo_add peerpod
  [[ -n $CLUSTER_TMP ]] || CLUSTER_TMP=$(mktemp -d "/tmp/$CLUSTER_PREFIX.XXXXXX")
  DSPROXY_CONFIG="$CLUSTER_TMP/lab.yaml"
  local ns
  {
    for ns in default dual-stack peer; do
      printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels:\n    istio.io/dataplane-mode: ambient\n---\n' "$ns"
    done
    _lab_pod sleep default sleep kind-worker "$LAB_SLEEP_IP" fd00:10:244::5
    _lab_pod tcp-echo dual-stack default kind-worker2 "$LAB_ECHO_IP" fd00:10:244:1::1a
    _lab_pod hbone-peer peer default kind-worker3 "$LAB_PEERPOD_IP" fd00:10:244:2::9
  } >"$DSPROXY_CONFIG"
}
_lab_pod() { # NAME NAMESPACE SERVICE-ACCOUNT NODE IP4 IP6
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $2
  labels:
    app: $1
spec:
  nodeName: $4
  serviceAccountName: $3
  containers:
  - name: app
    image: example/app
    ports:
    - name: tcp
      containerPort: 9000
      protocol: TCP
status:
  phase: Running
  podIP: $5
  podIPs:
  - ip: $5
  - ip: $6
  conditions:
  - type: Ready
    status: "True"
---
EOF
}

# lab_ca DIR CN: a root CA in DIR (ca.crt, ca.key mode 0600, and what `openssl ca` needs).
lab_ca() {
  local dir=$1
  mkdir -p "$dir" || cluster_die "cannot create $dir"
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/ca.key" \
    -out "$dir/ca.crt" -days 2 -subj "/O=dsproxy e2e/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    >>"$CLUSTER_TMP/openssl.log" 2>&1) || cluster_die "openssl could not make the CA $2 ($(tail -3 "$CLUSTER_TMP/openssl.log"))"
  : >"$dir/index.txt"
  openssl rand -hex 16 >"$dir/serial"
  cat >"$dir/ca.cnf" <<EOF
[ca]
default_ca = lab
[lab]
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
default_md = sha256
policy = anything
copy_extensions = none
unique_subject = no
[anything]
O = optional
EOF
}

# lab_leaf CA-DIR SPIFFE-URI OUT-PREFIX [START END]: OUT-PREFIX.crt and .key (0600), a SPIFFE leaf
# as a workload's (URI SAN only, serverAuth+clientAuth), valid START..END (openssl's
# YYYYMMDDHHMMSSZ; default an hour ago to a day ahead).
lab_leaf() {
  local ca=$1 id=$2 out=$3 start=${4:-$(date -u -d '-1 hour' +%Y%m%d%H%M%SZ)} end=${5:-$(date -u -d '+1 day' +%Y%m%d%H%M%SZ)}
  printf '[leaf]\nsubjectAltName=critical,URI:%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$id" >"$out.ext"
  (umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$out.key" \
    -subj "/O=dsproxy e2e" -out "$out.csr" &&
    openssl ca -batch -config "$ca/ca.cnf" -cert "$ca/ca.crt" -keyfile "$ca/ca.key" -in "$out.csr" -out "$out.crt" \
      -startdate "$start" -enddate "$end" -extfile "$out.ext" -extensions leaf -notext) >>"$CLUSTER_TMP/openssl.log" 2>&1 ||
    cluster_die "openssl could not make the leaf $out ($(tail -3 "$CLUSTER_TMP/openssl.log"))"
}

# The serial of a PEM certificate as dsproxy and Node print it: upper-case hex, no leading zeros.
cert_serial() { openssl x509 -in "$1" -noout -serial | sed 's/^serial=//; s/^0*//' | tr a-f A-F; }
# shellcheck disable=SC2001 # (a leading-zeros strip needs extglob otherwise)
norm_serial() { sed 's/^0*//' <<<"${1^^}"; }

# /config_dump of a node, as JSON.
dump_of() { node_http_get_on "$1" 15000 /config_dump | sed -n '/^{/,$p'; }
# tls_refused NODE-KEY server|client REASON: dsproxy's refusal counter (/config_dump
# identity.handshakes: PeerError names, "unknown-ca", "expired", ...).
tls_refused() { dump_of "$1" | jq -r --arg s "$2" --arg r "$3" '.identity.handshakes[$s].refused[$r] // empty'; }
tls_handshakes() { dump_of "$1" | jq -r --arg s "$2" '.identity.handshakes[$s].handshakes // empty'; }
# stat_of NODE-KEY NAME: a counter of /stats.
stat_of() { node_http_get_on "$1" 15000 /stats | sed -n '/^{/,$p' | jq -r --arg n "$2" '.[$n] // empty'; }
# cert_of NODE-KEY SPIFFE-URI FIELD: a field of the node's current certificate for an identity
# (serial, notBefore, notAfter, issuer, ...).
cert_of() {
  dump_of "$1" | jq -r --arg id "$2" --arg f "$3" '.identity.certificates[]? | select(.identity == $id) | .[$f]'
}
# wait_identity NODE-KEY URI: until the node holds a certificate for URI (bounded, 5 s).
wait_identity() {
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -n $(cert_of "$1" "$2" serial) ]] && return 0
    sleep 0.1
  done
  return 1
}

# The node's log, from a mark on: log_mark NODE-KEY prints the mark, log_since NODE-KEY MARK the
# lines after it.
node_log() { echo "$CLUSTER_TMP/dsproxy-$1.log"; }
log_mark() { wc -l <"$(node_log "$1")"; }
log_since() { tail -n "+$(($2 + 1))" "$(node_log "$1")"; }
# wait_log NODE-KEY MARK ERE: until a line after MARK matches (bounded, 3 s); prints it.
wait_log() {
  local i line
  for ((i = 0; i < 30; i++)); do
    line=$(log_since "$1" "$2" | grep -E -m1 -- "$3") && {
      echo "$line"
      return 0
    }
    sleep 0.1
  done
  return 1
}
# wait_counter CMD... -- WANT: until CMD prints a number >= WANT (bounded, 3 s); prints the last.
wait_at_least() {
  local want=$1 i got
  shift
  for ((i = 0; i < 30; i++)); do
    got=$("$@")
    if [[ $got =~ ^[0-9]+$ ]] && ((got >= want)); then
      echo "$got"
      return 0
    fi
    sleep 0.1
  done
  echo "${got:-none}"
  return 1
}

# exchange IP PORT WORD: the sleep pod sends WORD through its node's dsproxy; the answer must be
# "hello WORD".
exchange() {
  local answer
  answer=$(echo "$3" | in_pod sleep timeout 8 nc -N -w 5 "$1" "$2" 2>&1)
  [[ $answer == "hello $3" ]] || {
    echo "$1:$2 answered '$answer'"
    return 1
  }
}

# peer_on NODE-KEY ARGS...: hbone_peer.js in a node's namespace (bounded); prints its RESULT json.
peer_on() {
  local key=$1
  shift
  in_node_of "$key" timeout 15 node "$LAB_PEER_JS" "$@" 2>>"$CLUSTER_TMP/peer.stderr" | sed -n 's/^RESULT //p'
}

# peer_server_start CERT-PREFIX CA: hbone_peer.js serving the peer pod's port 15008 (both
# families) as the remote node would, relaying to the pod's own tcp-echo. Its REQUEST lines go
# to $CLUSTER_TMP/peer-server.log.
PEER_SERVER_PID=
peer_server_start() {
  local i
  : >"$CLUSTER_TMP/peer-server.log"
  # Not through in_pod: $! must be the peer's own pid (ip netns exec execs it), not a subshell's.
  ip netns exec "$(pod_ns peerpod)" node "$LAB_PEER_JS" server --cert "$1.crt" --key "$1.key" --ca "$2" --listen '[::]:15008' \
    >"$CLUSTER_TMP/peer-server.log" 2>&1 &
  PEER_SERVER_PID=$!
  CLUSTER_BG_PIDS+=("$PEER_SERVER_PID")
  for ((i = 0; i < 50; i++)); do
    grep -q '^PORT 15008' "$CLUSTER_TMP/peer-server.log" && return 0
    kill -0 "$PEER_SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  cluster_die "the peer server did not start ($(cat "$CLUSTER_TMP/peer-server.log"))"
}
peer_server_stop() {
  [[ -n $PEER_SERVER_PID ]] || return 0
  kill -TERM "$PEER_SERVER_PID" 2>/dev/null
  wait "$PEER_SERVER_PID" 2>/dev/null
  PEER_SERVER_PID=
}
# The last request the peer server saw, as JSON.
peer_server_last_request() { sed -n 's/^REQUEST //p' "$CLUSTER_TMP/peer-server.log" | tail -n 1; }
