# shellcheck shell=bash
# The benchmark's three hosts, built from network namespaces. Sourced by bench/run.sh and
# bench/profile.sh; defines functions and variables only, changes nothing until topo_up.
#
#   <prefix>-client   a pod of node bench-node:   10.244.0.10   fd00:10:244::a
#                     eth0 <-> node "vclient" (gateway 10.244.0.1/32 + fe80::1/64, and
#                     fd00:10:244::1/128 as the node's own IPv6 address on that link)
#   <prefix>-node     bench-node's host namespace: forwarding on, runs the proxy under test.
#                     No uplink, no route out: lo and the two veths only.
#   <prefix>-server   a pod of another node, bench-remote: 10.244.1.20   fd00:10:244:1::14
#                     eth0 <-> node "vremote" (gateway 10.244.1.1/32 + fe80::1/64). Runs the
#                     echo server (port 7000) and iperf3 (port 5201).
#
# Routed like a point-to-point CNI: /32 and /128 host routes on the node, default routes via the
# gateway in the pods, so the client's packets to the server, and the server's answers, cross the
# node namespace, where the proxy's capture rules (or none, for "direct") apply. veth MTU 1500.
#
# Safety: every link is created inside a namespace (the node end first, its peer moved straight
# into the pod's namespace), nothing in the root namespace is read or changed, and no namespace
# has a route to anything outside the three.

BENCH_PREFIX=${BENCH_PREFIX:-dsb$$}
BENCH_NODE_NAME=bench-node
BENCH_REMOTE_NODE_NAME=bench-remote

CLIENT_IP4=10.244.0.10
CLIENT_IP6=fd00:10:244::a
SERVER_IP4=10.244.1.20
SERVER_IP6=fd00:10:244:1::14
NODE_GW_CLIENT4=10.244.0.1
NODE_GW_SERVER4=10.244.1.1
NODE_IP6=fd00:10:244::1
GW6=fe80::1
VIP4=10.96.0.10
VIP6=fd00:10:96::a
ECHO_PORT=7000
IPERF_PORT=5201

TOPO_BG_PIDS=()

ns_client() { echo "$BENCH_PREFIX-client"; }
ns_node() { echo "$BENCH_PREFIX-node"; }
ns_server() { echo "$BENCH_PREFIX-server"; }
in_client() { ip netns exec "$(ns_client)" "$@"; }
in_node() { ip netns exec "$(ns_node)" "$@"; }
in_server() { ip netns exec "$(ns_server)" "$@"; }

topo_log() { echo "bench: $*" >&2; }
topo_die() {
  echo "bench: FATAL: $*" >&2
  exit 1
}
_tmust() { "$@" || topo_die "failed: $*"; }

# Namespaces of this run that exist now (also half-made ones).
topo_namespaces() {
  ip netns list 2>/dev/null | awk -v p="$BENCH_PREFIX-" 'index($1, p) == 1 { print $1 }'
}

_topo_sysctls() {
  _tmust ip netns exec "$1" sysctl -q -w \
    net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0 \
    net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  _tmust ip -n "$1" link set lo up
}

# The sides that open many short connections: wide ephemeral ranges, and TIME_WAIT reuse (the
# client closes first, so at thousands of connections per second the default range and 60 s of
# TIME_WAIT would run out of ports within seconds). The node needs it for the proxies' upstream
# sockets, which take the client's address. The two ranges are disjoint on purpose: an upstream
# socket bound to the client's address must never pick a port the client itself is using, or
# its 4-tuple equals the client's own connection (with nginx's nat capture, conntrack then
# rewrites the upstream SYN back to nginx and about half of 10,000 connections time out).
_topo_port_sysctls() {
  _tmust ip netns exec "$1" sysctl -q -w net.ipv4.ip_local_port_range="$2" net.ipv4.tcp_tw_reuse=1
}

# _topo_link NODE_IF POD_NS POD_IP4 POD_IP6 GW4
_topo_link() {
  local node_if=$1 pod=$2 ip4=$3 ip6=$4 gw4=$5 node
  node=$(ns_node)
  _tmust ip -n "$node" link add "$node_if" mtu 1500 type veth peer name eth0 mtu 1500 netns "$pod"
  _tmust ip -n "$node" addr add "$gw4/32" dev "$node_if"
  _tmust ip -n "$node" addr add "$GW6/64" dev "$node_if" nodad
  _tmust ip -n "$node" link set "$node_if" up
  _tmust ip -n "$node" route add "$ip4/32" dev "$node_if"
  _tmust ip -n "$node" -6 route add "$ip6/128" dev "$node_if"
  _tmust ip -n "$pod" addr add "$ip4/32" dev eth0
  _tmust ip -n "$pod" addr add "$ip6/128" dev eth0 nodad
  _tmust ip -n "$pod" link set eth0 up
  _tmust ip -n "$pod" route add "$gw4" dev eth0 scope link
  _tmust ip -n "$pod" route add default via "$gw4" dev eth0
  _tmust ip -n "$pod" -6 route add default via "$GW6" dev eth0
}

# Builds the three namespaces and starts the echo server and iperf3 in the server's.
topo_up() {
  [[ -z $(topo_namespaces) ]] || topo_die "namespaces with prefix $BENCH_PREFIX exist already"
  local ns
  for ns in "$(ns_node)" "$(ns_client)" "$(ns_server)"; do
    _tmust ip netns add "$ns"
    _topo_sysctls "$ns"
  done
  _tmust ip netns exec "$(ns_node)" sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
    net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.default.rp_filter=2
  _topo_port_sysctls "$(ns_client)" "1024 32767"
  _topo_port_sysctls "$(ns_node)" "32768 65535"
  _topo_link vclient "$(ns_client)" "$CLIENT_IP4" "$CLIENT_IP6" "$NODE_GW_CLIENT4"
  _topo_link vremote "$(ns_server)" "$SERVER_IP4" "$SERVER_IP6" "$NODE_GW_SERVER4"
  _tmust ip -n "$(ns_node)" addr add "$NODE_IP6/128" dev vclient nodad
  _topo_start_servers
}

_topo_start_servers() {
  local out="$BENCH_TMP/echo.$BENCH_PREFIX.log" i
  : >"$out"
  ip netns exec "$(ns_server)" "$BENCH_ECHO" --listen "0.0.0.0:$ECHO_PORT" --listen "[::]:$ECHO_PORT" \
    --max-seconds 7200 >"$out" 2>&1 &
  TOPO_BG_PIDS+=($!)
  # iperf3 on [::] takes both families (v4-mapped); it serves one test at a time, as we run them.
  ip netns exec "$(ns_server)" iperf3 -s -p "$IPERF_PORT" >"$BENCH_TMP/iperf3-server.log" 2>&1 &
  TOPO_BG_PIDS+=($!)
  for ((i = 0; i < 50; i++)); do
    if grep -qx listening "$out" 2>/dev/null &&
      in_server ss -Hltn "sport = :$IPERF_PORT" 2>/dev/null | grep -q LISTEN; then
      return 0
    fi
    sleep 0.1
  done
  topo_die "echo server or iperf3 did not start listening in $(ns_server)"
}

# SIGTERM to every process in namespace $1, bounded wait, then SIGKILL.
_topo_kill_ns() {
  local - ns=$1 pids i
  set +e
  pids=$(ip netns pids "$ns" 2>/dev/null) || return 0
  [[ -z $pids ]] && return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null
  for ((i = 0; i < 50; i++)); do
    [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && return 0
    sleep 0.1
  done
  pids=$(ip netns pids "$ns" 2>/dev/null)
  topo_log "SIGKILL to processes left in $ns: $pids"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
  for ((i = 0; i < 20; i++)); do
    [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && return 0
    sleep 0.1
  done
}

# Kills everything in this run's namespaces and deletes them: the node's rules, routes and
# sockets go with its namespace. Idempotent, best effort, safe from a trap at any point.
topo_down() {
  local - ns pid
  set +e
  for ns in $(topo_namespaces); do _topo_kill_ns "$ns"; done
  for pid in "${TOPO_BG_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  TOPO_BG_PIDS=()
  for ns in $(topo_namespaces); do
    ip netns del "$ns" 2>/dev/null || topo_log "could not delete namespace $ns"
  done
  [[ -z $(topo_namespaces) ]] || topo_log "namespaces left behind: $(topo_namespaces | tr '\n' ' ')"
}

# The Kubernetes objects dsproxy reads (and `dsproxy redirect` renders the capture rules from):
# the client is a pod of bench-node, the server a pod of bench-remote behind a dual-stack
# Service with ports 7000 (echo) and 5201 (iperf3).
topo_write_k8s_config() {
  cat >"$1" <<EOF
# Generated by bench/run.sh: the benchmark's cluster as Kubernetes objects.
apiVersion: v1
kind: Service
metadata:
  name: bench-server
  namespace: bench
spec:
  type: ClusterIP
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: $VIP4
  clusterIPs: [$VIP4, $VIP6]
  ports:
  - {name: echo, port: $ECHO_PORT, protocol: TCP, targetPort: $ECHO_PORT}
  - {name: iperf, port: $IPERF_PORT, protocol: TCP, targetPort: $IPERF_PORT}
  selector:
    app: bench-server
---
apiVersion: v1
kind: Pod
metadata:
  name: bench-client
  namespace: bench
  labels: {app: bench-client}
spec:
  nodeName: $BENCH_NODE_NAME
  containers:
  - name: client
    image: bench/load
status:
  podIP: $CLIENT_IP4
  podIPs: [{ip: $CLIENT_IP4}, {ip: $CLIENT_IP6}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: bench-server
  namespace: bench
  labels: {app: bench-server}
spec:
  nodeName: $BENCH_REMOTE_NODE_NAME
  containers:
  - name: server
    image: bench/echo
    ports:
    - {name: echo, containerPort: $ECHO_PORT, protocol: TCP}
    - {name: iperf, containerPort: $IPERF_PORT, protocol: TCP}
status:
  podIP: $SERVER_IP4
  podIPs: [{ip: $SERVER_IP4}, {ip: $SERVER_IP6}]
  conditions: [{type: Ready, status: "True"}]
EOF
}
