#!/usr/bin/env bash
# Security, issue 14 finding 1, played by a hostile pod: every Service form that could make dsproxy
# dial the node's own loopback on the pod's behalf. Each Service below points its endpoints at
# the node's loopback (from a config EndpointSlice, or from a DNS answer for a dsproxy.io/resolve
# Service), in the family the pod did NOT dial, so a cross-family fallback or Happy Eyeballs
# attempt is what would reach it:
#
#   grab-6    RequireDualStack [IPv4, IPv6], FQDN endpoint loop6.outside.test -> ::1 only;
#             the pod dials the IPv4 ClusterIP (ports 80 -> a loopback-only node service, 81 ->
#             the admin API's /config_dump on 127.0.0.1:15000)
#   grab-4    RequireDualStack [IPv6, IPv4], FQDN endpoint loop4.outside.test -> 127.0.0.1 only;
#             the pod dials the IPv6 ClusterIP (the mirror case)
#   grab-s    PreferDualStack [IPv4, IPv6], plain EndpointSlices ::1 and 127.0.0.1; the pod dials
#             both ClusterIPs
#
# The node-local service is `nc -lk` bound to 127.0.0.1 and ::1 only, in the node namespace: it
# logs every byte it gets, so "reached" is a fact, not an inference. Expected: no byte reaches
# it or the admin API, every loopback endpoint is listed in config_dump's droppedEndpoints, the
# process lives, and an ordinary Service still answers afterwards.
#
#   security_loopback.sh DSPROXY_BIN ECHO_BIN
#
# Needs root, iproute2, iptables, OpenBSD nc, dig, dnsmasq, jq: missing any is a failure, never a
# skip. Everything it creates is removed on exit, also on failure.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

E2E_DEADLINE=${E2E_DEADLINE:-90}
SECRET_PORT=15999

suite_trap

suite_require
for cmd in dig dnsmasq jq nc; do
  command -v "$cmd" >/dev/null 2>&1 || cluster_die "missing command $cmd (run scripts/install-deps.sh)"
done

cluster_up
DSPROXY_CONFIG="$CLUSTER_TMP/cluster.yaml"
{
  cat "$CLUSTER_REPO_DIR/config/tcp-echo-experiment.yaml"
  cat <<YAML
---
apiVersion: v1
kind: Service
metadata: {name: grab-6, namespace: default, annotations: {dsproxy.io/resolve: "true"}}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIPs: [10.96.66.1, "fd00:10:96::6601"]
  ports: [{name: secret, port: 80, targetPort: $SECRET_PORT}, {name: admin, port: 81, targetPort: 15000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: grab-6-fqdn, namespace: default, labels: {kubernetes.io/service-name: grab-6}}
addressType: FQDN
endpoints: [{addresses: [loop6.outside.test]}]
ports: [{name: secret, port: $SECRET_PORT}, {name: admin, port: 15000}]
---
apiVersion: v1
kind: Service
metadata: {name: grab-4, namespace: default, annotations: {dsproxy.io/resolve: "true"}}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv6, IPv4]
  clusterIPs: ["fd00:10:96::6602", 10.96.66.2]
  ports: [{name: secret, port: 80, targetPort: $SECRET_PORT}, {name: admin, port: 81, targetPort: 15000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: grab-4-fqdn, namespace: default, labels: {kubernetes.io/service-name: grab-4}}
addressType: FQDN
endpoints: [{addresses: [loop4.outside.test]}]
ports: [{name: secret, port: $SECRET_PORT}, {name: admin, port: 15000}]
---
apiVersion: v1
kind: Service
metadata: {name: grab-s, namespace: default}
spec:
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIPs: [10.96.66.3, "fd00:10:96::6603"]
  ports: [{name: secret, port: 80, targetPort: $SECRET_PORT}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: grab-s-v6, namespace: default, labels: {kubernetes.io/service-name: grab-s}}
addressType: IPv6
endpoints: [{addresses: ["::1"]}]
ports: [{name: secret, port: $SECRET_PORT}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: grab-s-v4, namespace: default, labels: {kubernetes.io/service-name: grab-s}}
addressType: IPv4
endpoints: [{addresses: [127.0.0.1]}]
ports: [{name: secret, port: $SECRET_PORT}]
YAML
} >"$DSPROXY_CONFIG"

# The upstream nameserver (lib/cluster.sh), answering the hostile names with loopback addresses.
cat >"$CLUSTER_TMP/upstream.hosts" <<EOF
::1 loop6.outside.test
127.0.0.1 loop4.outside.test
EOF
cluster_upstream_dns "$CLUSTER_TMP/upstream.hosts" loop6.outside.test AAAA ::1

# The node-local service: loopback only, logs every byte it receives.
for lo in 127.0.0.1 ::1; do
  ip netns exec "$(node_ns)" timeout 120 nc -lk "$lo" "$SECRET_PORT" >>"$CLUSTER_TMP/secret.log" 2>/dev/null &
  CLUSTER_BG_PIDS+=("$!")
done
sleep 0.3
in_node timeout 3 bash -c "printf 'self-test\n' >/dev/tcp/127.0.0.1/$SECRET_PORT" 2>/dev/null
for ((i = 0; i < 30; i++)); do grep -q self-test "$CLUSTER_TMP/secret.log" 2>/dev/null && break; sleep 0.1; done
grep -q self-test "$CLUSTER_TMP/secret.log" 2>/dev/null || cluster_die "the node-local loopback service did not start"

if start_dsproxy; then
  pass "dsproxy started with --redirect and is ready"
else
  fail "dsproxy started with --redirect and is ready"
  summary
  exit 1
fi

dump() { node_http_get 15000 /config_dump | tr -d '\r' | sed '1,/^$/d'; }
# Wait (bounded) until both hostnames were resolved: then every hostile endpoint is in the
# snapshot's input, dropped or not.
dropped=''
for ((i = 0; i < 100; i++)); do
  dropped=$(dump | jq -r '.droppedEndpoints[]? | "\(.cluster) \(.address) \(.reason)"' 2>/dev/null | sort)
  routed=$(dump | jq -r '.endpoints[] | select(.clusterName | test("grab-")) | .endpoints[].address.socketAddress.address' 2>/dev/null)
  if grep -q 'grab-6.*\[::1\]' <<<"$dropped$routed" && grep -q 'grab-4.*127.0.0.1' <<<"$dropped$routed"; then break; fi
  if grep -qx '::1' <<<"$routed" && grep -qx 127.0.0.1 <<<"$routed"; then break; fi
  sleep 0.1
done
echo "    droppedEndpoints:"
# shellcheck disable=SC2001 # indents every line
sed 's/^/      /' <<<"${dropped:-(none)}"
for want in "grab-6.default.svc.cluster.local [::1]:$SECRET_PORT loopback" \
  "grab-6.default.svc.cluster.local [::1]:15000 loopback" \
  "grab-4.default.svc.cluster.local 127.0.0.1:$SECRET_PORT loopback" \
  "grab-s.default.svc.cluster.local [::1]:$SECRET_PORT loopback" \
  "grab-s.default.svc.cluster.local 127.0.0.1:$SECRET_PORT loopback"; do
  grep -qF -- "$want" <<<"$dropped"
  check "config_dump lists the dropped endpoint: ${want}" $?
done
routed=$(dump | jq -r '.endpoints[] | select(.clusterName | test("grab-")) | .endpoints[].address.socketAddress.address' 2>/dev/null | sort -u)
[[ -z $routed ]]
check "no grab-* Service has a routable endpoint" $? "routable: $(tr '\n' ' ' <<<"$routed")"

# hostile_probe VIP PORT PAYLOAD: the sleep pod connects, sends PAYLOAD, prints what came back.
hostile_probe() {
  # shellcheck disable=SC2016 # expanded by the pod's bash
  in_pod sleep timeout 4 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || { echo "connect-failed"; exit 0; }
    printf "%s\r\n\r\n" "$3" >&3
    timeout 2 cat <&3 | head -c 200' _ "$1" "$2" "$3" 2>/dev/null
}
for entry in "grab-6 10.96.66.1" "grab-4 fd00:10:96::6602" "grab-s 10.96.66.3" "grab-s fd00:10:96::6603"; do
  read -r svc vip <<<"$entry"
  in_time "$svc $vip" || continue
  tag="probe-$svc-${vip//:/_}"
  got=$(hostile_probe "$vip" 80 "$tag")
  sleep 0.2
  ! grep -q -- "$tag" "$CLUSTER_TMP/secret.log"
  check "sleep -> $svc ClusterIP $vip:80: nothing reaches the node's loopback service" $? \
    "the pod got '$(tr -d '\r\n' <<<"${got:0:80}")'"
done
for entry in "grab-6 10.96.66.1" "grab-4 fd00:10:96::6602"; do
  read -r svc vip <<<"$entry"
  in_time "$svc admin" || continue
  got=$(hostile_probe "$vip" 81 "GET /config_dump HTTP/1.0")
  [[ $got != *HTTP/* && $got != *listeners* ]]
  check "sleep -> $svc ClusterIP $vip:81 (targetPort 15000): the admin API does not answer the pod" $? \
    "the pod got '$(tr -d '\r\n' <<<"${got:0:80}")'"
done

# Nothing else broke: the process lives and an ordinary Service answers.
kill -0 "$DSPROXY_PID" 2>/dev/null
check "dsproxy is still running" $?
got=$(in_pod sleep timeout 5 bash -c 'exec 3<>/dev/tcp/10.96.106.11/9000 && echo after >&3 && timeout 2 head -n 1 <&3' 2>/dev/null)
[[ $got == "hello after" ]]
check "the dual-stack tcp-echo Service still answers (10.96.106.11:9000)" $? "got '$got'"

stop_dsproxy
check "dsproxy exits on SIGTERM" $? "exit status $DSPROXY_EXIT_STATUS"
summary
((FAILED == 0))
