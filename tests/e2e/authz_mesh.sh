#!/usr/bin/env bash
# AuthorizationPolicy across two nodes (issue 12): ambient (HBONE) clients in two namespaces and
# one plaintext client on kind-worker, ambient tcp-echo pods in two namespaces on kind-worker2,
# each node running dsproxy with a local-issuer CA. Policies are applied by rewriting the config
# file (the file source's poll reloads it: no signal), and are enforced at the destination's node.
#
#   authz_mesh.sh DSPROXY_BIN ECHO_BIN
#
#   kind-worker:  default/sleep   (ambient, sa sleep)   10.244.0.5  fd00:10:244::5
#                 tenant/client   (ambient, sa client)  10.244.0.6  fd00:10:244::6
#                 legacy/client   (not in the mesh)     10.244.0.8  fd00:10:244::8
#   kind-worker2: dual-stack/tcp-echo (ambient)         10.244.1.26 fd00:10:244:1::1a
#                 ipv4/tcp-echo       (ambient)         10.244.1.19 fd00:10:244:1::13
#
# Checks, each over HBONE (a denied stream is answered 401 and the client's connection is reset)
# and over plaintext (only IP and port conditions can match: no principal, no namespace), from
# IPv4 and IPv6 clients: an ALLOW by principal (plus an ipBlocks rule for the plaintext pod), a
# DENY by namespace, a namespace-wide DENY (no selector) by notPrincipals and port, a mesh-wide
# DENY in the root namespace, a dry-run DENY that only logs; `proxy-config authz` on both nodes;
# an established plaintext connection across nodes closed by a new DENY while an HBONE one keeps
# relaying; then with --authz-root-namespace mesh-root, istio-system is an ordinary namespace and
# mesh-root's policies apply mesh-wide. Needs root, iproute2, iptables, ipset, openssl, jq and
# bash 5: without them it fails, never skips. Everything it creates is removed on exit.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

E2E_DEADLINE=${E2E_DEADLINE:-60}
CHECK_SHOW_DETAIL=1
suite_trap

suite_require
for cmd in openssl jq; do
  command -v "$cmd" >/dev/null 2>&1 || cluster_die "missing command: $cmd (run scripts/install-deps.sh)"
done

# ---- topology ---------------------------------------------------------------------------------
cluster_node_add node2 kind-worker2
cluster_pods_clear
cluster_pod_add sleep default/sleep 10.244.0.5 fd00:10:244::5 vethsleep 10.244.0.1
cluster_pod_add tenant tenant/client 10.244.0.6 fd00:10:244::6 vethtenant 10.244.0.1
cluster_pod_add legacy legacy/client 10.244.0.8 fd00:10:244::8 vethlegacy 10.244.0.1
cluster_pod_add echo-ds dual-stack/tcp-echo 10.244.1.26 fd00:10:244:1::1a vethechods 10.244.1.1 node2
cluster_pod_add echo-v4 ipv4/tcp-echo 10.244.1.19 fd00:10:244:1::13 vethechov4 10.244.1.1 node2
cluster_echo_add echo-ds
cluster_echo_add echo-v4
cluster_up

DS4=10.244.1.26 DS6=fd00:10:244:1::1a V4=10.244.1.19 V6=fd00:10:244:1::13

# The cluster's objects: namespaces (legacy is not in the mesh) and pods, no Service (clients
# dial pod addresses).
namespace() { # namespace NAME AMBIENT(0|1)
  printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$1"
  (($2)) && printf '  labels:\n    istio.io/dataplane-mode: ambient\n'
}
pod() { # pod NS NAME APP SA NODE IP4 IP6
  cat <<EOF
---
apiVersion: v1
kind: Pod
metadata:
  name: $2
  namespace: $1
  labels: {app: $3}
spec:
  nodeName: $5
  serviceAccountName: $4
  containers:
  - name: main
    image: example/$3
    ports:
    - {containerPort: 9000, protocol: TCP}
    - {containerPort: 9001, protocol: TCP}
    - {containerPort: 9002, protocol: TCP}
status:
  phase: Running
  podIP: $6
  podIPs: [{ip: $6}, {ip: "$7"}]
  conditions: [{type: Ready, status: "True"}]
EOF
}
BASE_CONFIG=$CLUSTER_TMP/base.yaml
{
  namespace default 1
  namespace tenant 1
  namespace legacy 0
  namespace dual-stack 1
  namespace ipv4 1
  pod default sleep-0 sleep sleep kind-worker 10.244.0.5 fd00:10:244::5
  pod tenant client-0 client client kind-worker 10.244.0.6 fd00:10:244::6
  pod legacy client-0 client default kind-worker 10.244.0.8 fd00:10:244::8
  pod dual-stack tcp-echo-0 tcp-echo default kind-worker2 "$DS4" "$DS6"
  pod ipv4 tcp-echo-0 tcp-echo default kind-worker2 "$V4" "$V6"
} >"$BASE_CONFIG"
DSPROXY_CONFIG=$CLUSTER_TMP/cluster.yaml
cp -- "$BASE_CONFIG" "$DSPROXY_CONFIG" || cluster_die "cannot write the config"

CA_KEY="$CLUSTER_TMP/ca.key"
CA_CERT="$CLUSTER_TMP/ca.crt"
(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$CA_KEY" \
  -out "$CA_CERT" -days 2 -subj "/O=dsproxy e2e/CN=authz mesh test root" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  >"$CLUSTER_TMP/openssl.log" 2>&1) || cluster_die "openssl could not make the CA ($(cat "$CLUSTER_TMP/openssl.log"))"
# A short drain: restarts with another root namespace should not wait for the pool's tunnels.
DSPROXY_ARGS=(--ca-cert "$CA_CERT" --ca-key "$CA_KEY" --drain-grace-ms 100)
NODE2_LOG=$CLUSTER_TMP/dsproxy-node2.log

# ---- helpers ----------------------------------------------------------------------------------
# probe FROM HOST PORT: one connection from pod FROM sending one line; prints ok, reset (the
# connection was reset: what a 401 and a plaintext denial both give the client), eof, refused,
# timeout or error. Bounded (5 s).
# shellcheck disable=SC2016 # expanded by the client's bash
PROBE='
err=$(mktemp); trap "rm -f \"\$err\"" EXIT
line= connected=0 rc=0
{ connected=1; printf "x\n" >&3 && IFS= read -r -t 3 line <&3; rc=$?; } 2>"$err" 3<>"/dev/tcp/$1/$2"
if ((!connected)); then
  if grep -q refused "$err"; then echo refused; elif grep -q "reset by peer" "$err"; then echo reset; else echo error; fi
elif [[ $line == "hello x" ]]; then echo ok
elif grep -q "reset by peer" "$err"; then echo reset
elif ((rc > 128)); then echo timeout
else echo eof
fi'
probe() { in_pod "$1" timeout 5 bash -c "$PROBE" _ "$2" "$3" || echo timeout; }
expect() { # expect NAME WANT FROM HOST PORT
  local got
  got=$(probe "$3" "$4" "$5")
  [[ $got == "$2" ]]
  check "$1" $? "$3 -> $4 port $5: $got"
}
stat_of() { # stat_of NODE-KEY NAME
  node_http_get_on "$1" 15000 /stats | sed -n 's/.*"'"$2"'":\([0-9]*\).*/\1/p' | head -n 1
}
generation() { node_http_get_on "$1" 15000 /config_dump | grep -o '"generation":[0-9]*' | head -n 1 | cut -d: -f2; }
# set_policies TEXT: the base objects plus these policies, swapped in by rename; the file source
# polls the file (every second) and reloads it. Bounded wait (6 s) for the new generation on both
# nodes.
set_policies() {
  local g1 g2 n1 n2 i
  g1=$(generation node) g2=$(generation node2)
  { cat -- "$BASE_CONFIG"; printf '%s\n' "$1"; } >"$DSPROXY_CONFIG.new" && mv -- "$DSPROXY_CONFIG.new" "$DSPROXY_CONFIG"
  for ((i = 0; i < 60; i++)); do
    n1=$(generation node) n2=$(generation node2)
    [[ $n1 =~ ^[0-9]+$ && $n2 =~ ^[0-9]+$ && $g1 =~ ^[0-9]+$ && $g2 =~ ^[0-9]+$ ]] && ((n1 > g1 && n2 > g2)) && return 0
    sleep 0.1
  done
  fail "both nodes reloaded the rewritten file within 6 s (generations ${g1:-?} -> ${n1:-?}, ${g2:-?} -> ${n2:-?})"
  return 1
}
wait_identity() { # wait_identity NODE-KEY URI: until the node holds a certificate for URI, bounded
  local i
  for ((i = 0; i < 50; i++)); do
    node_http_get_on "$1" 15000 /config_dump | sed -n '/^{/,$p' | jq -e --arg id "$2" \
      '.identity | tostring | contains($id)' >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}
# Node 1 without passthrough Happy Eyeballs: by default, when a plaintext connection to a pod's
# IPv6 address is reset as it is accepted (node 2 denies it), node 1 may take that for a failed
# attempt and dial the pod's IPv4 address from the client's IPv4 address instead, which a policy
# may allow (that connection is then decided, and allowed, on its own). The checks below that
# deny one family of a pod and allow the other need each family to reach node 2 as dialled.
start_both() {
  start_dsproxy_node node "${DSPROXY_ARGS[@]}" --family-fallback never || return 1
  start_dsproxy_node node2 "${DSPROXY_ARGS[@]}"
}
wait_identities() {
  local ok=0 ns
  wait_identity node spiffe://cluster.local/ns/default/sa/sleep || ok=1
  wait_identity node spiffe://cluster.local/ns/tenant/sa/client || ok=1
  for ns in dual-stack ipv4; do wait_identity node2 "spiffe://cluster.local/ns/$ns/sa/default" || ok=1; done
  return $ok
}
authz_table() { in_node_of "$1" timeout 5 "$DSPROXY_BIN" proxy-config authz 2>&1; }
show() { while IFS= read -r l; do echo "    $l"; done <<<"$1"; }

# ---- policies ---------------------------------------------------------------------------------
POLICIES='---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: dual-stack}
spec:
  selector:
    matchLabels: {app: tcp-echo}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
  - from:
    - source:
        ipBlocks: ["10.244.0.8/32"]
    to:
    - operation:
        ports: ["9000"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-tenant, namespace: ipv4}
spec:
  selector:
    matchLabels: {app: tcp-echo}
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["tenant"]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-plaintext-9001, namespace: ipv4}
spec:
  action: DENY
  rules:
  - from:
    - source:
        notPrincipals: ["*"]
    to:
    - operation:
        ports: ["9001"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-9002, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: ["9002"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-deny-sleep
  namespace: ipv4
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]'

CUT_POLICY='---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cut-legacy, namespace: dual-stack}
spec:
  action: DENY
  rules:
  - when:
    - key: source.ip
      values: ["10.244.0.8"]'

# With --authz-root-namespace mesh-root: istio-system's policy is an ordinary namespace's (no pod
# there), mesh-root's apply to every workload.
ROOT_POLICIES='---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-9002, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: ["9002"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-tenant-everywhere, namespace: mesh-root}
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["tenant"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-legacy-v6, namespace: mesh-root}
spec:
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["fd00:10:244::8/128"]'

# ---- start, no policy -------------------------------------------------------------------------
section "both nodes, mTLS, no policy"
start_both || cluster_die "dsproxy did not start on both nodes"
wait_identities
check "both nodes hold their local workloads' certificates" $?
if in_time "baseline"; then
  expect "no policy: sleep -> dual-stack over HBONE, IPv4" ok sleep "$DS4" 9000
  expect "no policy: tenant -> ipv4 over HBONE, IPv6" ok tenant "$V6" 9000
  expect "no policy: legacy (plaintext) -> dual-stack, IPv6" ok legacy "$DS6" 9000
  t=$(stat_of node tunnels_outbound)
  check "the ambient clients went through tunnels" "$((${t:-0} >= 2 ? 0 : 1))" "tunnels_outbound ${t:-?}"
fi

# ---- the policy set ---------------------------------------------------------------------------
section "ALLOW by principal, DENY by namespace, namespace-wide, mesh-wide, dry-run"
if in_time "policies" && set_policies "$POLICIES"; then
  refused0=$(stat_of node2 tunnels_refused)
  # dual-stack: ALLOW by principal (HBONE) or by the plaintext pod's IPv4 block on port 9000.
  expect "ALLOW by principal: sleep -> dual-stack over HBONE, IPv4" ok sleep "$DS4" 9000
  expect "ALLOW by principal: sleep -> dual-stack over HBONE, IPv6" ok sleep "$DS6" 9001
  expect "ALLOW by principal: tenant (another principal) is reset over HBONE, IPv4" reset tenant "$DS4" 9000
  expect "ALLOW by principal: tenant is reset over HBONE, IPv6" reset tenant "$DS6" 9000
  expect "ALLOW by ipBlocks: legacy (plaintext) IPv4 on 9000 gets in" ok legacy "$DS4" 9000
  expect "ALLOW: legacy (plaintext) over IPv6 matches neither rule (no principal on plaintext)" reset legacy "$DS6" 9000
  expect "ALLOW: legacy (plaintext) IPv4 on 9001 is outside the ports condition" reset legacy "$DS4" 9001
  # ipv4: DENY by namespace (selector), namespace-wide DENY of plaintext on 9001.
  expect "DENY by namespace: tenant -> ipv4 over HBONE, IPv4" reset tenant "$V4" 9000
  expect "DENY by namespace: tenant -> ipv4 over HBONE, IPv6" reset tenant "$V6" 9001
  expect "DENY by namespace: sleep (default) still gets in" ok sleep "$V6" 9000
  expect "DENY by namespace cannot match plaintext: legacy -> ipv4 gets in" ok legacy "$V4" 9000
  expect "namespace-wide DENY notPrincipals *: legacy (plaintext) on 9001, IPv4" reset legacy "$V4" 9001
  expect "namespace-wide DENY notPrincipals *: legacy (plaintext) on 9001, IPv6" reset legacy "$V6" 9001
  expect "namespace-wide DENY notPrincipals *: sleep over HBONE on 9001 gets in" ok sleep "$V4" 9001
  # istio-system: mesh-wide DENY of port 9002.
  expect "mesh-wide DENY: sleep -> ipv4:9002 over HBONE, IPv6" reset sleep "$V6" 9002
  expect "mesh-wide DENY: sleep -> dual-stack:9002 over HBONE, IPv4" reset sleep "$DS4" 9002
  expect "mesh-wide DENY: legacy -> ipv4:9002 plaintext, IPv4" reset legacy "$V4" 9002
  # The denials over HBONE were 401s at node2 (6 of the above).
  refused=$(stat_of node2 tunnels_refused)
  check "node2 answered the denied HBONE streams (tunnels_refused +6)" \
    "$(((${refused:-0} - ${refused0:-0}) >= 6 ? 0 : 1))" "tunnels_refused ${refused0:-?} -> ${refused:-?}"
  grep -q "denied by AuthorizationPolicy ipv4/deny-tenant (DENY).*answered 401\|answered 401.*denied by AuthorizationPolicy ipv4/deny-tenant" "$NODE2_LOG"
  check "node2 logs the 401 with the policy that denied it" $? "$(grep -m1 'deny-tenant' "$NODE2_LOG")"
  grep -q "denied by AuthorizationPolicy ipv4/deny-plaintext-9001 (DENY)" "$NODE2_LOG"
  check "node2 logs the plaintext denial with its policy" $?
  # dry-run: sleep -> ipv4 was allowed above, and the log says the dry-run DENY matched.
  grep -q "dry-run: ipv4/dry-deny-sleep (DENY) matched" "$NODE2_LOG"
  check "dry-run DENY of sleep changes nothing but logs what it would have done" $?
  ! grep -q "denied by AuthorizationPolicy ipv4/dry-deny-sleep" "$NODE2_LOG"
  check "dry-run DENY never denied" $?

  table=$(authz_table node2)
  show "$table"
  grep -Eq '^dual-stack +tcp-echo-0 +10\.244\.1\.26,fd00:10:244:1::1a +dual-stack/allow-sleep +ALLOW +workload' <<<"$table" &&
    grep -Eq '^dual-stack +tcp-echo-0 .*istio-system/mesh-deny-9002 +DENY +mesh' <<<"$table" &&
    grep -Eq '^ipv4 +tcp-echo-0 .*ipv4/deny-tenant +DENY +workload' <<<"$table" &&
    grep -Eq '^ipv4 +tcp-echo-0 .*ipv4/deny-plaintext-9001 +DENY +namespace' <<<"$table" &&
    grep -Eq '^ipv4 +tcp-echo-0 .*ipv4/dry-deny-sleep +DENY +workload|^ipv4 +tcp-echo-0 .*ipv4/dry-deny-sleep +DENY +namespace .*dry-run' <<<"$table" &&
    grep -Eq '^ipv4 +tcp-echo-0 .*istio-system/mesh-deny-9002 +DENY +mesh' <<<"$table" &&
    ! grep -Eq '^dual-stack .*ipv4/' <<<"$table" && ! grep -Eq '^ipv4 .*dual-stack/' <<<"$table"
  check "proxy-config authz on node2 lists exactly the policies of each local workload" $?
  table=$(authz_table node)
  show "$table"
  grep -Eq '^default +sleep-0 .*istio-system/mesh-deny-9002 +DENY +mesh' <<<"$table" &&
    grep -Eq '^legacy +client-0 .*istio-system/mesh-deny-9002 +DENY +mesh' <<<"$table" &&
    ! grep -Eq 'allow-sleep|deny-tenant|deny-plaintext-9001' <<<"$table"
  check "proxy-config authz on node lists only the mesh-wide policy for its pods" $?
fi

# ---- an established plaintext connection across nodes cut by a new DENY -------------------------
section "a new DENY closes the established plaintext connection it matches"
if in_time "revocation"; then
  held_connections legacy "$DS4" sleep "$DS6" set_policies "$POLICIES"$'\n'"$CUT_POLICY"
  cut=$HELD_CUT keep=$HELD_KEEP
  [[ $cut == "first:hello one "* && $cut != *"second:hello two"* ]]
  check "legacy's established plaintext connection to node2 was closed by the new DENY" $? "$cut"
  [[ $keep == "first:hello one second:hello two:0 " ]]
  check "sleep's HBONE connection, which the DENY does not match, keeps relaying" $? "$keep"
  grep -q "established connection closed after a policy change" "$NODE2_LOG" &&
    grep -q "dual-stack/cut-legacy" "$NODE2_LOG"
  check "node2's log names the policy that closed it" $?
  for ((i = 0; i < 20; i++)); do # the access log line is written as the connection's record ends
    grep -Eq 'access connection complete src.addr=10\.244\.0\.8:.* bytes_sent=[1-9].* reason=denied_by_policy .*policy=dual-stack/cut-legacy' \
      "$NODE2_LOG" && break
    sleep 0.1
  done
  grep -Eq 'access connection complete src.addr=10\.244\.0\.8:.* bytes_sent=[1-9].* reason=denied_by_policy .*policy=dual-stack/cut-legacy' \
    "$NODE2_LOG"
  check "node2's access log names the policy for the closed connection too" $? \
    "$(grep -E 'src.addr=10.244.0.8:.* bytes_sent=[1-9].*reason=denied_by_policy' "$NODE2_LOG" | head -n 1)"
  expect "new plaintext connections from legacy are reset too" reset legacy "$DS4" 9000
fi

# ---- another root namespace -------------------------------------------------------------------
section "--authz-root-namespace mesh-root"
if in_time "root namespace"; then
  stop_dsproxy_node node2
  { cat -- "$BASE_CONFIG"; printf '%s\n' "$ROOT_POLICIES"; } >"$DSPROXY_CONFIG.new" && mv -- "$DSPROXY_CONFIG.new" "$DSPROXY_CONFIG"
  if start_dsproxy_node node2 "${DSPROXY_ARGS[@]}" --authz-root-namespace mesh-root; then
    wait_identity node2 spiffe://cluster.local/ns/ipv4/sa/default
    check "node2 restarted with --authz-root-namespace mesh-root" $?
    # node 1 reloads the same file by its poll; only node2 enforces, so no need to wait for it.
    expect "istio-system is no longer the root: sleep -> ipv4:9002 over HBONE gets in" ok sleep "$V4" 9002
    expect "istio-system is no longer the root: legacy -> dual-stack:9002 plaintext gets in" ok legacy "$DS4" 9002
    expect "mesh-root DENY by namespace: tenant -> dual-stack over HBONE, IPv6" reset tenant "$DS6" 9000
    expect "mesh-root DENY by namespace: tenant -> ipv4 over HBONE, IPv4" reset tenant "$V4" 9001
    expect "mesh-root DENY by namespace: sleep still gets in" ok sleep "$DS4" 9000
    expect "mesh-root DENY by ipBlocks: legacy (plaintext) IPv6 is reset" reset legacy "$V6" 9000
    expect "mesh-root DENY by ipBlocks: legacy (plaintext) IPv4 gets in" ok legacy "$V4" 9000
    table=$(authz_table node2)
    show "$table"
    grep -Eq '^dual-stack +tcp-echo-0 .*mesh-root/deny-tenant-everywhere +DENY +mesh' <<<"$table" &&
      grep -Eq '^ipv4 +tcp-echo-0 .*mesh-root/deny-legacy-v6 +DENY +mesh' <<<"$table" &&
      ! grep -Eq '^(dual-stack|ipv4) .*istio-system/mesh-deny-9002' <<<"$table" &&
      grep -q 'root namespace mesh-root' <<<"$table"
    check "proxy-config authz shows mesh-root's policies as mesh-wide and istio-system's on no workload" $?
  else
    fail "node2 restarted with --authz-root-namespace mesh-root"
  fi
fi

section "stop"
stop_dsproxy_node node
stop_dsproxy_node node2
summary
((FAILED == 0))
