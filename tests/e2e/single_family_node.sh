#!/usr/bin/env bash
# Issue 14, finding 4: a node that has only one IP family must still be served fully in it.
#
#   single_family_node.sh DSPROXY_BIN ECHO_BIN
#
# Part 1, IPv6 disabled: the experiment's cluster (tcp_echo_experiment.sh), then
# net.ipv6.conf.all.disable_ipv6=1 inside the node namespace only. `dsproxy run --redirect`
# must start and become ready, the IPv4 ClusterIPs must answer with the client's own address
# seen by the pod, inbound IPv4 from the other node must work, the log must say exactly once
# that IPv6 is off, no IPv6 rule or listener may be installed, and SIGTERM must end it with
# status 0 and every rule removed. (Before the fix dsproxy exited 3 on
# `ip -6 route replace local ::/0 ... IPv6 is disabled on nexthop device`.)
#
# Part 2, IPv6-only: every pod has only an IPv6 address and the node namespace has no IPv4
# address besides lo's. The IPv6 ClusterIPs must answer, inbound IPv6 must work, and the rules
# must be gone after SIGTERM.
#
# Needs root, iproute2 (ip, ss), iptables and OpenBSD nc; missing any is a failure, never a
# skip. Nothing is changed outside the namespaces this script creates (the root namespace's
# sysctls are read, never written); everything is removed on exit, also on failure.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

# Traffic checks not started after this many seconds fail without running; what always runs
# after them is bounded (stop: 10 s per part, cluster teardown: a few seconds).
E2E_DEADLINE=${E2E_DEADLINE:-120}

suite_trap

suite_require
command -v ss >/dev/null 2>&1 || cluster_die "ss is missing (iproute2)"
command -v dig >/dev/null 2>&1 || cluster_die "dig is missing (bind9-dnsutils)"

# What the root namespace says before we start: compared at the end, to prove the test changed
# nothing outside its own namespaces.
ROOT_DISABLE_IPV6=$(cat /proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null || echo absent)

# echo_via SRC_POD DEST PORT PAYLOAD: what the tcp-echo answered (bounded by nc -w and timeout).
echo_via() {
  echo "$4" | in_pod "$1" timeout 8 nc -N -w 5 "$2" "$3" 2>/dev/null
}

# expect_echo WHAT SRC_POD DEST PORT POD FAMILY: DEST:PORT answers and POD sees SRC_POD's own
# address of FAMILY as the peer (never a node or proxy address).
expect_echo() {
  local what=$1 src=$2 dest=$3 port=$4 pod=$5 family=$6 mark answer got want ok
  in_time "$what" || return 0
  mark=$(pod_peers_count "$pod")
  answer=$(echo_via "$src" "$dest" "$port" single)
  got=$(pod_peers_since "$pod" "$mark")
  want="$port $(pod_ip "$src" "$family")"
  [[ $answer == "hello single" && $got == "$want" ]]
  ok=$?
  check "$what answers and $pod sees the client as $(pod_ip "$src" "$family")" $ok \
    "answer '${answer//$'\n'/\\n}', peer log '${got//$'\n'/; }', want '$want'"
}

# expect_dns WHAT SERVER NAME TYPE WANT: a query from the sleep pod to SERVER:53, over UDP and
# over TCP, is captured and answered by dsproxy's DNS proxy with exactly WANT.
expect_dns() {
  local what=$1 server=$2 name=$3 type=$4 want=$5 transport got
  for transport in +notcp +tcp; do
    in_time "$what ($transport)" || return 0
    got=$(in_pod sleep timeout 10 dig "$transport" +time=2 +tries=2 +short "@$server" "$name" "$type" 2>&1)
    [[ $got == "$want" ]]
    check "$what (dig $transport): $name $type is $want" $? "got '${got//$'\n'/ | }'"
  done
}

# compare_snapshot NAME EXPECTED: the node's current rules and routes equal EXPECTED.
compare_snapshot() {
  local now
  now=$(snapshot_netfilter)
  if [[ $now == "$2" ]]; then
    pass "$1"
  else
    fail "$1"
    diff -u <(echo "$2") <(echo "$now") | sed 's/^/    /' | head -n 60
  fi
}

# stop_and_compare PART BEFORE: SIGTERM, exit status 0, and the node's rules as before.
stop_and_compare() {
  local graceful ok
  stop_dsproxy
  graceful=$?
  ((graceful == 0 && DSPROXY_EXIT_STATUS == 0))
  ok=$?
  check "$1: dsproxy exits on SIGTERM with status 0" $ok \
    "$( ((graceful == 0)) || echo "needed SIGKILL, ")exit status $DSPROXY_EXIT_STATUS"
  compare_snapshot "$1: after dsproxy stopped, rules, ip rules and routes are as before" "$2"
}

# listening ADDRESS:PORT: something in the node namespace listens (TCP) there.
listening() { in_node ss -Htln | awk '{ print $4 }' | grep -qxF -- "$1"; }

# ==== Part 1: IPv6 disabled in the node namespace ==========================================
part1() {
  local P="IPv6 disabled" before during count lines ok
  cluster_up
  _must in_node sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  [[ $(in_node cat /proc/sys/net/ipv6/conf/all/disable_ipv6) == 1 &&
    $(in_node cat /proc/sys/net/ipv6/conf/lo/disable_ipv6) == 1 ]]
  check "$P: net.ipv6.conf.all.disable_ipv6=1 (and lo's) in the node namespace" $?
  before=$(snapshot_netfilter)

  # shellcheck disable=SC2119 # no extra dsproxy arguments
  if start_dsproxy; then
    pass "$P: dsproxy run --redirect starts and /healthz/ready answers 200"
  else
    fail "$P: dsproxy run --redirect starts and /healthz/ready answers 200 (exit status ${DSPROXY_EXIT_STATUS:-none})"
    return 0
  fi

  # The experiment's IPv4 ClusterIPs (dual-stack and ipv4 Services), both Service ports
  # (numeric and named targetPort), from the sleep pod.
  local entry vip pod port
  for entry in "10.96.106.11 echo-ds" "10.96.104.229 echo-v4"; do
    read -r vip pod <<<"$entry"
    for port in 9000 9001; do
      expect_echo "$P: sleep -> ClusterIP $vip port $port" sleep "$vip" "$port" "$pod" 4
    done
  done
  # Passthrough to a pod IP and inbound from the other node, IPv4.
  expect_echo "$P: sleep -> pod echo-ds 10.244.0.26 port 9002 (passthrough)" sleep 10.244.0.26 9002 echo-ds 4
  expect_echo "$P: remote-client-0 -> pod echo-v4 10.244.0.19 port 9000 (inbound)" remote 10.244.0.19 9000 echo-v4 4
  # The pods' DNS over IPv4 is captured and answered (no nameserver exists at that address).
  expect_dns "$P: sleep -> DNS 10.96.0.10" 10.96.0.10 tcp-echo.ipv4.svc.cluster.local A 10.96.104.229

  # Said once, clearly; nothing else in the log is about IPv6 (no warning per listener, rule
  # or socket that could not be made).
  count=$(grep -c "IPv6 is off" "$DSPROXY_LOG")
  lines=$(grep -i "ipv6\|\[::" "$DSPROXY_LOG")
  ((count == 1)) && [[ $(wc -l <<<"$lines") == 1 ]]
  check "$P: the log says once that IPv6 is off, and nothing else about IPv6" $? \
    "lines: ${lines//$'\n'/ | }"

  during=$(snapshot_netfilter)
  grep -q "DSPROXY_PREROUTING" <<<"$(in_node iptables-save -t mangle)" &&
    grep -q "lookup 133" <<<"$(in_node ip -4 rule show)"
  check "$P: the IPv4 capture rules are installed" $?
  ! grep -q "DSPROXY" <<<"$(in_node ip6tables-save)" &&
    ! grep -q "lookup 133" <<<"$(in_node ip -6 rule show)"
  check "$P: no IPv6 rule is installed (ip6tables, ip -6 rule)" $?
  ok=0
  listening "0.0.0.0:15001" && listening "0.0.0.0:15006" || ok=1
  ! listening "[::]:15001" && ! listening "[::]:15006" && ! listening "[::]:15021" &&
    ! listening "[::]:15053" || ok=1
  check "$P: the capture and DNS listeners are on 0.0.0.0 only, nothing on [::]" $ok \
    "$(in_node ss -Htln | awk '{ print $4 }' | paste -sd ' ')"
  # proxy-config shows the capture listeners as they are: IPv4 only, no empty [::] address.
  local table
  table=$(in_node timeout 5 "$DSPROXY_BIN" proxy-config listeners --port 15006 2>&1 | sed -E 's/[[:space:]]+/ /g; s/ $//')
  grep -qx "0.0.0.0 15006 ALL Inbound: passthrough to this node's pods" <<<"$table"
  check "$P: proxy-config lists the inbound listener on 0.0.0.0 only" $? "got '${table//$'\n'/ | }'"
  [[ $during != "$before" ]]
  check "$P: dsproxy changed the node's rules while running" $?

  stop_and_compare "$P" "$before"

  # The standalone commands decide the same way: install works (IPv4 only) and uninstall
  # leaves the node as it was.
  local log=$CLUSTER_TMP/redirect.ipv6-disabled.log
  in_node timeout 10 "$DSPROXY_BIN" redirect install --config "$DSPROXY_CONFIG" --node "$CLUSTER_NODE_NAME" >>"$log" 2>&1 &&
    grep -q "DSPROXY_PREROUTING" <<<"$(in_node iptables-save -t mangle)" &&
    ! grep -q "DSPROXY" <<<"$(in_node ip6tables-save)"
  check "$P: dsproxy redirect install succeeds with IPv4 rules only" $? "see $log"
  in_node timeout 10 "$DSPROXY_BIN" redirect uninstall >>"$log" 2>&1
  check "$P: dsproxy redirect uninstall succeeds" $? "see $log"
  compare_snapshot "$P: after redirect install and uninstall the node is as before" "$before"
}

# ==== Part 2: an IPv6-only node =============================================================
# Pods with an IPv6 address only; a config where they and the Services are IPv6 only (what an
# IPv6 single-stack cluster's API holds).
write_ipv6_only_config() {
  local svc
  {
    for svc in "ipv6 fd00:10:96::9c3a" "dual-stack fd00:10:96::f9fc"; do
      read -r ns vip <<<"$svc"
      cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: tcp-echo, namespace: $ns}
spec:
  type: ClusterIP
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: $vip
  clusterIPs: [$vip]
  ports:
  - {name: tcp, port: 9000, protocol: TCP, targetPort: 9000}
  - {name: tcp-other, port: 9001, protocol: TCP, targetPort: tcp-other}
  selector: {app: tcp-echo}
---
EOF
    done
    local entry name ns ip node app
    for entry in "tcp-echo-ds dual-stack fd00:10:244::1a kind-worker tcp-echo" \
      "tcp-echo-v6 ipv6 fd00:10:244::18 kind-worker tcp-echo" \
      "sleep default fd00:10:244::5 kind-worker sleep" \
      "remote-client-0 default fd00:10:244:1::7 kind-worker2 remote-client"; do
      read -r name ns ip node app <<<"$entry"
      cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: $ns, labels: {app: $app}}
spec:
  nodeName: $node
  containers:
  - name: main
    image: example
    ports:
    - {name: tcp, containerPort: 9000, protocol: TCP}
    - {name: tcp-other, containerPort: 9001, protocol: TCP}
status:
  phase: Running
  podIP: $ip
  podIPs: [{ip: $ip}]
  conditions: [{type: Ready, status: "True"}]
---
EOF
    done
  } >"$1"
}

part2() {
  local P="IPv6-only node" before link v4 entry vip pod port
  cluster_pods_clear
  cluster_pod_add sleep default/sleep - fd00:10:244::5 vethsleep 10.244.0.1
  cluster_pod_add echo-ds dual-stack/tcp-echo - fd00:10:244::1a vethechods 10.244.0.1
  cluster_pod_add echo-v6 ipv6/tcp-echo - fd00:10:244::18 vethechov6 10.244.0.1
  cluster_pod_add remote default/remote-client-0 - fd00:10:244:1::7 to-worker2 10.244.1.1
  cluster_echo_add echo-ds
  cluster_echo_add echo-v6
  cluster_up
  # cluster.sh gives every node-side link an IPv4 gateway address; an IPv6-only node has none.
  for link in vethsleep vethechods vethechov6 to-worker2; do _must in_node ip -4 addr flush dev "$link"; done
  v4=$(in_node ip -4 -o addr show | awk '$2 != "lo" { print $2 " " $4 }')
  [[ -z $v4 ]]
  check "$P: the node namespace has no IPv4 address besides lo's" $? "has: ${v4//$'\n'/, }"
  DSPROXY_CONFIG=$CLUSTER_TMP/ipv6-only.yaml
  write_ipv6_only_config "$DSPROXY_CONFIG"
  before=$(snapshot_netfilter)

  # shellcheck disable=SC2119 # no extra dsproxy arguments
  if start_dsproxy; then
    pass "$P: dsproxy run --redirect starts and /healthz/ready answers 200"
  else
    fail "$P: dsproxy run --redirect starts and /healthz/ready answers 200 (exit status ${DSPROXY_EXIT_STATUS:-none})"
    return 0
  fi
  for entry in "fd00:10:96::9c3a echo-v6" "fd00:10:96::f9fc echo-ds"; do
    read -r vip pod <<<"$entry"
    for port in 9000 9001; do
      expect_echo "$P: sleep -> ClusterIP $vip port $port" sleep "$vip" "$port" "$pod" 6
    done
  done
  expect_echo "$P: sleep -> pod echo-ds fd00:10:244::1a port 9002 (passthrough)" sleep fd00:10:244::1a 9002 echo-ds 6
  expect_echo "$P: remote-client-0 -> pod echo-v6 fd00:10:244::18 port 9000 (inbound)" remote fd00:10:244::18 9000 echo-v6 6
  expect_dns "$P: sleep -> DNS fd00:10:96::a" fd00:10:96::a tcp-echo.ipv6.svc.cluster.local AAAA fd00:10:96::9c3a
  ! grep -q "IPv6 is off" "$DSPROXY_LOG"
  check "$P: the log does not claim that IPv6 is off" $?
  grep -q "DSPROXY_PREROUTING" <<<"$(in_node ip6tables-save -t mangle)"
  check "$P: the IPv6 capture rules are installed" $?

  stop_and_compare "$P" "$before"
}

part1
# Part 2 starts dsproxy again; its log must not hold part 1's lines.
if [[ -n $DSPROXY_LOG && -f $DSPROXY_LOG ]]; then mv -- "$DSPROXY_LOG" "$CLUSTER_TMP/dsproxy.ipv6-disabled.log"; fi
# A fresh cluster for part 2 (same prefix; cluster_down removed every namespace of part 1).
cluster_down
part2

now=$(cat /proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null || echo absent)
[[ $now == "$ROOT_DISABLE_IPV6" ]]
check "the root namespace's net.ipv6.conf.all.disable_ipv6 is unchanged ($ROOT_DISABLE_IPV6)" $? "now $now"

echo "(took ${SECONDS}s)"
summary
((FAILED == 0))
