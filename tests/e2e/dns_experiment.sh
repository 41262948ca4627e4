#!/usr/bin/env bash
# The tcp-echo experiment by name: the pods' resolv.conf names the cluster DNS VIP (kube-dns,
# 10.96.0.10 / fd00:10:96::a) with kubelet's search list and ndots:5, dsproxy captures their DNS
# (UDP and TCP port 53) and answers cluster names itself, family-correct, and forwards the rest
# to an upstream nameserver (dnsmasq) that only the node namespace can reach.
#
#   dns_experiment.sh DSPROXY_BIN ECHO_BIN
#
# Needs root, iproute2, iptables, OpenBSD nc, dig (bind9-dnsutils), getent and dnsmasq
# (dnsmasq-base). Missing any of them is a failure, never a skip. Prints one PASS/FAIL line per
# check and "N passed, M failed"; exits non-zero on any failure. Everything it creates
# (namespaces, /etc/netns files, processes, rules) is removed on exit, also on failure.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

E2E_DEADLINE=${E2E_DEADLINE:-90}
DNS_VIP4=10.96.0.10
DNS_VIP6=fd00:10:96::a

SUITE_TMP_LOGS=(dnsmasq.log)  # the node's nameserver
suite_trap

# ---- prerequisites: all fatal -------------------------------------------------------------
suite_require
for cmd in dig getent dnsmasq; do
  command -v "$cmd" >/dev/null 2>&1 ||
    cluster_die "missing command $cmd (run scripts/install-deps.sh: bind9-dnsutils, libc-bin, dnsmasq-base)"
done

# ---- the cluster, the upstream nameserver, the pods' resolv.conf --------------------------
cluster_up
DSPROXY_CONFIG="$CLUSTER_TMP/cluster.yaml"
{
  cat "$CLUSTER_REPO_DIR/config/tcp-echo-experiment.yaml"
  echo "---"
  cat "$CLUSTER_REPO_DIR/config/kube-dns.yaml"
  # A hostname endpoint: a dual-stack Service whose only endpoint is a hostname the upstream
  # resolves (to the dual-stack tcp-echo pod), which dsproxy resolves because of the annotation.
  cat <<'YAML'
---
apiVersion: v1
kind: Service
metadata:
  name: outside-echo
  namespace: default
  annotations: {dsproxy.io/resolve: "true"}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.50.50
  clusterIPs: [10.96.50.50, "fd00:10:96::5050"]
  ports: [{name: tcp, port: 9000, targetPort: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: outside-echo-fqdn
  namespace: default
  labels: {kubernetes.io/service-name: outside-echo}
addressType: FQDN
endpoints:
- addresses: [echo.outside.test]
ports: [{name: tcp, port: 9000, protocol: TCP}]
YAML
} >"$DSPROXY_CONFIG"

# The upstream nameserver (lib/cluster.sh): dnsmasq answering outside.test from a hosts file,
# reachable from the node only, named by the node's resolv.conf (dsproxy reads it: no
# --dns-upstream here).
cat >"$CLUSTER_TMP/upstream.hosts" <<EOF
198.51.100.7 www.outside.test
2001:db8::7 www.outside.test
10.244.0.26 echo.outside.test
fd00:10:244::1a echo.outside.test
EOF
# Six 200-octet TXT strings: about 1.3 kB, more than fits one UDP answer (512 octets, or the
# 1232 of EDNS), so the answer comes back truncated and must be fetched over TCP.
txt=$(printf 'x%.0s' {1..200})
txt_args=()
for i in 1 2 3 4 5 6; do txt_args+=("--txt-record=big.outside.test,\"$i$txt\""); done
cluster_upstream_dns "$CLUSTER_TMP/upstream.hosts" www.outside.test A 198.51.100.7 "${txt_args[@]}"

# Every pod's resolv.conf as kubelet writes it for dnsPolicy ClusterFirst.
pod_resolv_conf() {
  local ns=${CLUSTER_POD_NAME[$1]%%/*}
  printf 'search %s.svc.cluster.local svc.cluster.local cluster.local\nnameserver %s\noptions ndots:5\n' \
    "$ns" "$DNS_VIP4"
}
for pod in "${CLUSTER_PODS[@]}"; do cluster_netns_file "$pod" resolv.conf "$(pod_resolv_conf "$pod")"; done

before=$(snapshot_netfilter)
if start_dsproxy; then
  pass "dsproxy started with --redirect (DNS capture on) and is ready"
else
  fail "dsproxy started with --redirect (DNS capture on) and is ready"
  summary
  exit 1
fi

# dig_in POD ARGS...: short answers, sorted, one line each (bounded: 2 s per try, 2 tries).
dig_in() {
  local pod=$1
  shift
  in_pod "$pod" timeout 10 dig +time=2 +tries=2 +short "$@" 2>&1 | sort
}
# rcode_in POD ARGS...: the status dig reports (NOERROR, NXDOMAIN, ...), or its error.
rcode_in() {
  local pod=$1 out
  shift
  out=$(in_pod "$pod" timeout 12 dig +time=2 +tries=2 "$@" 2>&1)
  sed -n 's/.*status: \([A-Z]*\),.*/\1/p' <<<"$out" | head -n 1 | grep . || echo "no answer: ${out//$'\n'/ }"
}
one_line() { tr '\n' ' ' <<<"$1" | sed 's/ $//'; }

# ---- 1. the answers, per Service and family, from both DNS VIPs, UDP and TCP --------------
# name, type, expected short answer ("" = NOERROR without address)
ANSWERS=(
  "tcp-echo.dual-stack.svc.cluster.local A 10.96.106.11"
  "tcp-echo.dual-stack.svc.cluster.local AAAA fd00:10:96::f9fc"
  "tcp-echo.ipv4.svc.cluster.local A 10.96.104.229"
  "tcp-echo.ipv4.svc.cluster.local AAAA -"
  "tcp-echo.ipv6.svc.cluster.local A -"
  "tcp-echo.ipv6.svc.cluster.local AAAA fd00:10:96::9c3a"
)
for vip in "$DNS_VIP4" "$DNS_VIP6"; do
  for transport in +notcp +tcp; do
    for entry in "${ANSWERS[@]}"; do
      read -r name type want <<<"$entry"
      [[ $want == - ]] && want=""
      what="sleep: dig $transport @$vip $name $type"
      in_time "$what" || continue
      got=$(dig_in sleep "$transport" "@$vip" "$name" "$type")
      rcode=$(rcode_in sleep "$transport" "@$vip" "$name" "$type")
      [[ $got == "$want" && $rcode == NOERROR ]]
      check "$what answers '${want:-no address}' (NOERROR)" $? "got '$(one_line "$got")', status $rcode"
    done
  done
done

if in_time "NXDOMAIN"; then
  rcode=$(rcode_in sleep "@$DNS_VIP4" nope.default.svc.cluster.local A)
  [[ $rcode == NXDOMAIN ]]
  check "an unknown cluster name is NXDOMAIN" $? "got $rcode"
fi

# ---- 2. getent ahosts through the search list: only the Service's families -----------------
# short name, the addresses getaddrinfo must give (sorted, space separated)
HOSTS=(
  "tcp-echo.dual-stack 10.96.106.11 fd00:10:96::f9fc"
  "tcp-echo.ipv4 10.96.104.229"
  "tcp-echo.ipv6 fd00:10:96::9c3a"
)
for entry in "${HOSTS[@]}"; do
  read -r name want <<<"$entry"
  what="sleep: getent ahosts $name"
  in_time "$what" || continue
  got=$(in_pod sleep timeout 10 getent ahosts "$name" | awk '{ print $1 }' | sort -u | tr '\n' ' ' | sed 's/ $//')
  [[ $got == "$want" ]]
  check "$what gives only $want" $? "got '$got'"
done
if in_time "short name in its own namespace"; then
  got=$(in_pod echo-v4 timeout 10 getent ahosts tcp-echo | awk '{ print $1 }' | sort -u | tr '\n' ' ' | sed 's/ $//')
  [[ $got == 10.96.104.229 ]]
  check "ipv4/tcp-echo pod: getent ahosts tcp-echo gives 10.96.104.229 (first search domain)" $? "got '$got'"
fi

# ---- 3. the experiment by name ------------------------------------------------------------
for entry in "dual-stack dualstack" "ipv4 ipv4" "ipv6 ipv6"; do
  read -r svc payload <<<"$entry"
  what="sleep: echo $payload | nc tcp-echo.$svc 9000"
  in_time "$what" || continue
  answer=$(echo "$payload" | in_pod sleep timeout 10 nc -N -w 5 "tcp-echo.$svc" 9000 2>&1)
  [[ $answer == "hello $payload" ]]
  check "$what prints 'hello $payload'" $? "got '$(one_line "$answer")'"
done

# ---- 4. outside names go upstream, from the node ------------------------------------------
if in_time "outside names"; then
  got=$(in_pod sleep timeout 10 getent ahosts www.outside.test | awk '{ print $1 }' | sort -u | tr '\n' ' ' | sed 's/ $//')
  [[ $got == "198.51.100.7 2001:db8::7" ]]
  check "sleep: getent ahosts www.outside.test is answered by the upstream through dsproxy" $? "got '$got'"
  grep -q "query\[A\] www.outside.test from $UPSTREAM_NODE4" "$CLUSTER_TMP/dnsmasq.log"
  check "the upstream saw the query from the node ($UPSTREAM_NODE4), not from the pod" $?
  rcode=$(rcode_in sleep "@$DNS_VIP6" nope.outside.test A)
  [[ $rcode == NXDOMAIN ]]
  check "an unknown outside name is the upstream's NXDOMAIN, via the IPv6 DNS VIP" $? "got $rcode"
  # Too big for UDP everywhere: dnsmasq sets TC, c-ares re-asks over TCP, dsproxy answers the
  # pod's UDP query with TC, dig re-asks over TCP and gets all six records.
  got=$(dig_in sleep +noedns "@$DNS_VIP4" big.outside.test TXT | wc -l)
  [[ $got == 6 ]]
  check "a TXT answer too big for UDP arrives whole (TC, then TCP)" $? "got $got record(s)"
  queries=$(grep -c "query\[A\] www.outside.test" "$CLUSTER_TMP/dnsmasq.log")
  for ((i = 0; i < 5; i++)); do dig_in sleep "@$DNS_VIP4" www.outside.test A >/dev/null; done
  after=$(grep -c "query\[A\] www.outside.test" "$CLUSTER_TMP/dnsmasq.log")
  [[ $after == "$queries" ]]
  check "repeated outside queries are answered from the cache" $? "upstream saw $((after - queries)) more"
fi

# ---- 4b. a hostname endpoint, resolved by dsproxy, reached through both ClusterIPs ----------
for vip in 10.96.50.50 fd00:10:96::5050 outside-echo.default; do
  what="sleep: echo hostname | nc $vip 9000 (endpoint: echo.outside.test, resolved by dsproxy)"
  in_time "$what" || continue
  # The first resolution happens at start; allow a few seconds for it and the snapshot rebuild.
  for ((i = 0; i < 10; i++)); do
    answer=$(echo hostname | in_pod sleep timeout 5 nc -N -w 2 "$vip" 9000 2>&1)
    [[ $answer == "hello hostname" ]] && break
    sleep 0.5
  done
  [[ $answer == "hello hostname" ]]
  check "$what prints 'hello hostname'" $? "got '$(one_line "$answer")'"
done

# ---- 5. upstream silent: SERVFAIL, and cluster names still work ---------------------------
if in_time "upstream silent"; then
  kill -STOP "$DNSMASQ_PID"
  # c-ares gives up after its tries (2 s, then 4 s); the client must wait longer than that.
  rcode=$(rcode_in sleep +time=9 +tries=1 "@$DNS_VIP4" down.outside.test A)
  [[ $rcode == SERVFAIL ]]
  check "with the upstream silent an outside name is SERVFAIL" $? "got $rcode"
  got=$(dig_in sleep "@$DNS_VIP4" tcp-echo.ipv4.svc.cluster.local A)
  [[ $got == 10.96.104.229 ]]
  check "with the upstream silent cluster names still answer" $? "got '$(one_line "$got")'"
  kill -CONT "$DNSMASQ_PID"
fi

# ---- 6. stopping dsproxy leaves nothing; --no-dns-capture leaves DNS alone ----------------
stop_dsproxy
graceful=$?
((graceful == 0 && DSPROXY_EXIT_STATUS == 0))
check "dsproxy exits on SIGTERM with status 0" $? "exit status $DSPROXY_EXIT_STATUS"
now=$(snapshot_netfilter)
[[ $now == "$before" ]]
check "after dsproxy stopped the node's rules, ip rules and routes are as before" $? \
  "$(diff <(echo "$before") <(echo "$now") | head -n 20 | tr '\n' ' ')"

if start_dsproxy --no-dns-capture; then
  pass "dsproxy --no-dns-capture started"
  rules=$(in_node iptables-save -t mangle; in_node ip6tables-save -t mangle)
  ! grep -q -- "--dport 53" <<<"$rules"
  check "--no-dns-capture installs no port-53 rule" $?
  rcode=$(rcode_in sleep +time=1 +tries=1 "@$DNS_VIP4" tcp-echo.ipv4.svc.cluster.local A)
  [[ $rcode != NOERROR ]]
  check "--no-dns-capture: nothing answers the DNS VIP" $? "got $rcode"
  stop_dsproxy
else
  fail "dsproxy --no-dns-capture started"
fi

echo "(took ${SECONDS}s)"
summary
((FAILED == 0))
