# shellcheck shell=bash
# The one-node "cluster" of the dual-stack tcp-echo experiment, built from network namespaces.
# Sourced by tests/e2e/tcp_echo_experiment.sh and scripts/demo.sh; defines functions only
# (plus a few variables), changes nothing until cluster_up is called.
#
# Topology (every namespace name starts with $CLUSTER_PREFIX, unique per run):
#
#   <prefix>-node      kind-worker's host network namespace: dsproxy runs here. No uplink and no
#                      route out: the only interfaces are lo and the veths below.
#   <prefix>-sleep     default/sleep, the client          10.244.0.5   fd00:10:244::5
#   <prefix>-echo-ds   dual-stack/tcp-echo                10.244.0.26  fd00:10:244::1a
#   <prefix>-echo-v4   ipv4/tcp-echo                      10.244.0.19  fd00:10:244::13
#   <prefix>-echo-v6   ipv6/tcp-echo                      10.244.0.24  fd00:10:244::18
#   <prefix>-remote    default/remote-client-0 on kind-worker2: 10.244.1.7 fd00:10:244:1::7
#
# Each pod is wired like a point-to-point CNI (ptp / Calico style): a veth pair whose node end
# carries the gateway address as a /32 plus fe80::1/64, and host routes (/32, /128) to the pod
# over it; the pod has its addresses as /32 and /128 and default routes via the gateway.
# kind-worker's pods use gateway 10.244.0.1. The remote client stands for a pod on kind-worker2:
# its link to the node namespace plays the inter-node network, with kind-worker2's gateway
# 10.244.1.1, so its packets to local pods enter the node like traffic from another node does
# and are taken by the inbound capture (15006), not the outbound one.
#
# Safety: everything is created inside the namespaces (veth pairs are created in the node
# namespace with their peer moved straight into the pod's), nothing in the root namespace is
# touched, and no namespace has a route to anything outside the set.
#
# Inputs (set before cluster_up / start_dsproxy):
#   ECHO_BIN        dsproxy_test_echo binary (required by cluster_up)
#   DSPROXY_BIN     dsproxy binary (required by start_dsproxy)
#   DSPROXY_CONFIG  config file (default: <repo>/config/tcp-echo-experiment.yaml)
#   CLUSTER_PREFIX  namespace name prefix (default: dspx<pid>)
#   CLUSTER_TMP     directory for logs and peer logs (default: a fresh mktemp -d)
#
# More nodes (tests/e2e/hbone.sh): cluster_node_add KEY K8S-NAME before cluster_up adds a node
# namespace <prefix>-KEY; pods go to it with cluster_pod_add's optional 7th argument. With more
# than one node, every node gets a leg on an underlay: a bridge in <prefix>-underlay (both
# families, 192.168.200.0/24 and fd00:200::/64, node i at .i / ::i in the order added, the default
# node first), and host routes (/32, /128) to every other node's pods via that node's underlay
# address, as a flat L3 pod network would route them. start_dsproxy_node KEY ... runs a node's
# proxy (the default node keeps start_dsproxy). tcpdump on the bridge (underlay_capture) sees
# every packet between nodes.
#
# Other topologies: the pod list above is the default (the experiment's). A test with its own
# config calls cluster_pods_clear, then cluster_pod_add for each pod (a pod may have one family
# only) and cluster_echo_add for those that run tcp-echo (with extra tcp-echo arguments, e.g.
# --family v4), all before cluster_up.

CLUSTER_LIB_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
CLUSTER_REPO_DIR=$(cd -- "$CLUSTER_LIB_DIR/../../.." && pwd)

CLUSTER_PREFIX=${CLUSTER_PREFIX:-dspx$$}
CLUSTER_NODE_NAME=kind-worker
DSPROXY_CONFIG=${DSPROXY_CONFIG:-$CLUSTER_REPO_DIR/config/tcp-echo-experiment.yaml}
CLUSTER_TMP=${CLUSTER_TMP:-}
ECHO_PORTS=9000,9001,9002

# Bounds of every wait.
CLUSTER_ECHO_WAIT_STEPS=${CLUSTER_ECHO_WAIT_STEPS:-50}  # echo server "listening", 0.1 s steps
DSPROXY_READY_TIMEOUT=${DSPROXY_READY_TIMEOUT:-10}      # seconds until /healthz/ready is 200
DSPROXY_STOP_WAIT_STEPS=${DSPROXY_STOP_WAIT_STEPS:-100} # exit after SIGTERM, 0.1 s steps

# The pods: key -> namespace suffix, node-side interface, IPv4, IPv6, gateway, runs tcp-echo.
CLUSTER_PODS=(sleep echo-ds echo-v4 echo-v6 remote)
# shellcheck disable=SC2034 # Kubernetes names, for scripts that print them
declare -A CLUSTER_POD_NAME=(
  [sleep]=default/sleep [echo-ds]=dual-stack/tcp-echo [echo-v4]=ipv4/tcp-echo
  [echo-v6]=ipv6/tcp-echo [remote]=default/remote-client-0)
declare -A CLUSTER_POD_IP4=(
  [sleep]=10.244.0.5 [echo-ds]=10.244.0.26 [echo-v4]=10.244.0.19 [echo-v6]=10.244.0.24
  [remote]=10.244.1.7)
declare -A CLUSTER_POD_IP6=(
  [sleep]=fd00:10:244::5 [echo-ds]=fd00:10:244::1a [echo-v4]=fd00:10:244::13
  [echo-v6]=fd00:10:244::18 [remote]=fd00:10:244:1::7)
# Node-side interface names (<= 15 characters). Local pods' links match veth+ like a CNI's do;
# the remote client's link is the node's way to kind-worker2, not a pod veth.
declare -A CLUSTER_POD_LINK=(
  [sleep]=vethsleep [echo-ds]=vethechods [echo-v4]=vethechov4 [echo-v6]=vethechov6
  [remote]=to-worker2)
declare -A CLUSTER_POD_GW4=(
  [sleep]=10.244.0.1 [echo-ds]=10.244.0.1 [echo-v4]=10.244.0.1 [echo-v6]=10.244.0.1
  [remote]=10.244.1.1)
CLUSTER_GW6=fe80::1
CLUSTER_ECHO_PODS=(echo-ds echo-v4 echo-v6)
# Extra tcp-echo arguments per pod (none for the default pods).
declare -A CLUSTER_POD_ECHO_ARGS=()

# Nodes: key -> Kubernetes node name; the default node's key is "node".
CLUSTER_NODES=(node)
declare -A CLUSTER_NODE_K8S_NAME=([node]=$CLUSTER_NODE_NAME)
declare -A CLUSTER_POD_NODE=()
declare -A DSPROXY_NODE_PID=()
CLUSTER_UNDERLAY4_NET=192.168.200
CLUSTER_UNDERLAY6_NET=fd00:200:
# Every node's pods' IPv4/IPv6 routes go via the node's underlay address (set by cluster_up).
declare -A CLUSTER_NODE_UNDERLAY4=()
declare -A CLUSTER_NODE_UNDERLAY6=()

CLUSTER_BG_PIDS=()
DSPROXY_PID=
DSPROXY_LOG=
DSPROXY_EXIT_STATUS=

cluster_log() { echo "cluster: $*" >&2; }
cluster_die() {
  echo "cluster: FATAL: $*" >&2
  exit 1
}
# Runs a setup command; any failure ends the script (the trap then cleans up).
_must() { "$@" || cluster_die "failed: $*"; }

# node_ns [NODE-KEY]: the namespace of a node (default: the default node).
node_ns() { echo "$CLUSTER_PREFIX-${1:-node}"; }
# The node key pod $1 runs on.
pod_node() { echo "${CLUSTER_POD_NODE[$1]:-node}"; }

# cluster_node_add KEY K8S-NAME: one more node namespace (<prefix>-KEY), before cluster_up.
cluster_node_add() {
  (($# == 2)) || cluster_die "usage: cluster_node_add KEY K8S-NAME"
  [[ $1 =~ ^[a-z0-9][a-z0-9-]*$ && -z ${CLUSTER_NODE_K8S_NAME[$1]:-} ]] || cluster_die "cluster_node_add: bad or duplicate key '$1'"
  CLUSTER_NODES+=("$1")
  CLUSTER_NODE_K8S_NAME[$1]=$2
}
in_node_of() {
  local key=$1
  shift
  ip netns exec "$(node_ns "$key")" "$@"
}
pod_ns() {
  # Every pod has a link; a single-family pod has no address of the other family.
  [[ -n ${CLUSTER_POD_LINK[$1]:-} ]] || cluster_die "unknown pod '$1' (one of: ${CLUSTER_PODS[*]})"
  echo "$CLUSTER_PREFIX-$1"
}
# pod_ip POD 4|6
pod_ip() {
  pod_ns "$1" >/dev/null
  local ip
  case $2 in
    4) ip=${CLUSTER_POD_IP4[$1]:-} ;;
    6) ip=${CLUSTER_POD_IP6[$1]:-} ;;
    *) cluster_die "pod_ip: family must be 4 or 6, not '$2'" ;;
  esac
  [[ -n $ip ]] || cluster_die "pod '$1' has no IPv$2 address"
  echo "$ip"
}

# Forgets every pod (the default list included), to define another topology with cluster_pod_add.
cluster_pods_clear() {
  [[ -z $(cluster_namespaces) ]] || cluster_die "cluster_pods_clear: the cluster is up already"
  CLUSTER_PODS=()
  CLUSTER_ECHO_PODS=()
  CLUSTER_POD_NAME=()
  CLUSTER_POD_IP4=()
  CLUSTER_POD_IP6=()
  CLUSTER_POD_LINK=()
  CLUSTER_POD_GW4=()
  CLUSTER_POD_ECHO_ARGS=()
  CLUSTER_POD_NODE=()
}

# cluster_pod_add KEY NAMESPACE/NAME IP4|- IP6|- LINK GW4 [NODE-KEY]
# Adds a pod wired like the default ones, on the default node or NODE-KEY. "-" leaves out that family (a single-stack pod); LINK
# is the node-side interface name (<= 15 characters; veth* for this node's pods), GW4 the
# node-side IPv4 gateway (the IPv6 one is always $CLUSTER_GW6). KEY names its namespace
# (<prefix>-KEY) and its files in $CLUSTER_TMP.
cluster_pod_add() {
  (($# == 6 || $# == 7)) || cluster_die "usage: cluster_pod_add KEY NAMESPACE/NAME IP4|- IP6|- LINK GW4 [NODE-KEY]"
  if (($# == 7)); then
    [[ -n ${CLUSTER_NODE_K8S_NAME[$7]:-} ]] || cluster_die "cluster_pod_add: unknown node '$7'"
    CLUSTER_POD_NODE[$1]=$7
  fi
  local key=$1 name=$2 ip4=$3 ip6=$4 link=$5 gw4=$6
  [[ $key =~ ^[a-z0-9][a-z0-9-]*$ ]] || cluster_die "cluster_pod_add: bad key '$key'"
  [[ -z ${CLUSTER_POD_LINK[$key]:-} ]] || cluster_die "cluster_pod_add: pod '$key' exists already"
  ((${#link} <= 15)) || cluster_die "cluster_pod_add: interface name '$link' is longer than 15 characters"
  [[ $ip4 != - || $ip6 != - ]] || cluster_die "cluster_pod_add: pod '$key' needs an address"
  CLUSTER_PODS+=("$key")
  # shellcheck disable=SC2034 # read by the scripts that print it
  CLUSTER_POD_NAME[$key]=$name
  CLUSTER_POD_IP4[$key]=${ip4#-}
  CLUSTER_POD_IP6[$key]=${ip6#-}
  CLUSTER_POD_LINK[$key]=$link
  CLUSTER_POD_GW4[$key]=$gw4
}

# cluster_echo_add POD [TCP-ECHO ARGS...]: POD runs tcp-echo on $ECHO_PORTS, with the extra
# arguments (e.g. --family v4; tcp-echo adds the ports of a second --ports to the first).
cluster_echo_add() {
  pod_ns "$1" >/dev/null
  CLUSTER_ECHO_PODS+=("$1")
  CLUSTER_POD_ECHO_ARGS[$1]="${*:2}"
}

in_node() { ip netns exec "$(node_ns)" "$@"; }
# in_pod POD cmd...
in_pod() {
  local ns
  ns=$(pod_ns "$1") || exit 1
  shift
  ip netns exec "$ns" "$@"
}

# held_connections CUT_POD CUT_HOST KEEP_POD KEEP_HOST COMMAND...: two connections to port 9000
# (the echo app), from CUT_POD to CUT_HOST and from KEEP_POD to KEEP_HOST; each sends a line and
# reads the answer, stays open while COMMAND runs (a policy change) and the workers re-decide,
# then sends a second line. Sets HELD_CUT and HELD_KEEP to what each saw, one line per step:
# "first:hello one second:hello two:0 " when it relayed throughout. Bounded: 20 s per connection.
held_connections() {
  local cut_pod=$1 cut_host=$2 keep_pod=$3 keep_host=$4 go=$CLUSTER_TMP/go cut_pid keep_pid i
  shift 4
  rm -f "$go"
  # shellcheck disable=SC2016 # expanded by the pod's bash
  local long='exec 3<>"/dev/tcp/$1/9000" || { echo "connect failed"; exit 1; }
    printf "one\n" >&3; IFS= read -r -t 3 l <&3; echo "first:$l"
    for ((i = 0; i < 100; i++)); do [[ -f $2 ]] && break; sleep 0.1; done
    printf "two\n" >&3; IFS= read -r -t 3 l <&3; rc=$?; echo "second:$l:$rc"'
  in_pod "$cut_pod" timeout 20 bash -c "$long" _ "$cut_host" "$go" >"$CLUSTER_TMP/cut.out" 2>&1 &
  cut_pid=$!
  in_pod "$keep_pod" timeout 20 bash -c "$long" _ "$keep_host" "$go" >"$CLUSTER_TMP/keep.out" 2>&1 &
  keep_pid=$!
  CLUSTER_BG_PIDS+=("$cut_pid" "$keep_pid")
  for ((i = 0; i < 30; i++)); do
    grep -q '^first:' "$CLUSTER_TMP/cut.out" && grep -q '^first:' "$CLUSTER_TMP/keep.out" && break
    sleep 0.1
  done
  "$@"
  sleep 0.3 # the workers' re-evaluation is posted right after the publish
  touch "$go"
  wait "$cut_pid" 2>/dev/null
  wait "$keep_pid" 2>/dev/null
  # shellcheck disable=SC2034 # read by the caller
  HELD_CUT=$(tr '\n' ' ' <"$CLUSTER_TMP/cut.out")
  # shellcheck disable=SC2034 # read by the caller
  HELD_KEEP=$(tr '\n' ' ' <"$CLUSTER_TMP/keep.out")
}

# Namespaces of this run that exist now (also the ones a failed cluster_up left half made).
cluster_namespaces() {
  ip netns list 2>/dev/null | awk -v p="$CLUSTER_PREFIX-" 'index($1, p) == 1 { print $1 }'
}

# Fails loudly (exit 1, never a skip) when the machine cannot run the experiment.
cluster_require() {
  local missing=() cmd
  [[ $(id -u) == 0 ]] || cluster_die "must run as root (network namespaces, iptables); run with sudo"
  for cmd in ip iptables ip6tables iptables-save ip6tables-save iptables-legacy-save ip6tables-legacy-save ipset nc timeout sysctl awk; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  ((${#missing[@]} == 0)) ||
    cluster_die "missing commands: ${missing[*]} (run scripts/install-deps.sh: iproute2, iptables, ipset, netcat-openbsd, procps)"
  # -N (shut down the write side on stdin EOF) is OpenBSD netcat's; other netcats never let the
  # echo server see EOF, or reject the option.
  nc -h 2>&1 | grep -q -- '-N' ||
    cluster_die "nc is not OpenBSD netcat (no -N option): install netcat-openbsd"
  local probe="$CLUSTER_PREFIX-probe"
  ip netns add "$probe" 2>/dev/null ||
    cluster_die "cannot create network namespaces ('ip netns add' failed): needs root with CAP_SYS_ADMIN, not a restricted container"
  if ! ip netns exec "$probe" iptables -t mangle -S >/dev/null 2>&1 ||
    ! ip netns exec "$probe" ip6tables -t mangle -S >/dev/null 2>&1; then
    ip netns del "$probe"
    cluster_die "iptables/ip6tables do not work inside a network namespace (kernel modules missing?)"
  fi
  ip netns del "$probe"
}

# Installs the cleanup trap: on any exit (success, failure, Ctrl-C, SIGTERM) the cluster is
# torn down and the script's exit status kept. Call right after sourcing, before cluster_up.
# CLUSTER_ON_EXIT may name a function to run first (e.g. to print logs on failure); it gets the
# exit status as $1.
cluster_trap() {
  trap '_cluster_exit_trap' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}
_cluster_exit_trap() {
  local status=$?
  set +e # the cleanup must run to the end even in a `set -e` script
  trap - EXIT INT TERM HUP
  if [[ -n ${CLUSTER_ON_EXIT:-} ]]; then "$CLUSTER_ON_EXIT" "$status" || true; fi
  cluster_down
  if [[ -n $CLUSTER_TMP && -d $CLUSTER_TMP && -z ${CLUSTER_KEEP_TMP:-} && $status == 0 ]]; then
    rm -rf -- "$CLUSTER_TMP"
  elif [[ -n $CLUSTER_TMP && -d $CLUSTER_TMP ]]; then
    cluster_log "logs kept in $CLUSTER_TMP"
  fi
  exit "$status"
}

# Sends SIGTERM to every process in namespace $1, waits (bounded), then SIGKILLs what is left.
_cluster_kill_ns_processes() {
  local - ns=$1 pids i
  set +e
  pids=$(ip netns pids "$ns" 2>/dev/null) || return 0
  [[ -z $pids ]] && return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [[ -z $pids ]] && return 0
    sleep 0.1
  done
  cluster_log "SIGKILL to processes left in $ns: $pids"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  for ((i = 0; i < 20; i++)); do
    [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && return 0
    sleep 0.1
  done
  cluster_log "processes still alive in $ns: $(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
}

# Kills every process in this run's namespaces and deletes them. Idempotent; safe to call from
# a trap at any stage, also when cluster_up failed half way.
cluster_down() {
  local - ns
  set +e # idempotent and best effort: never stop half way, also under `set -e`
  if [[ -n $DSPROXY_PID ]]; then stop_dsproxy >/dev/null 2>&1 || true; fi
  local key
  for key in "${!DSPROXY_NODE_PID[@]}"; do stop_dsproxy_node "$key" >/dev/null 2>&1 || true; done
  for ns in $(cluster_namespaces); do _cluster_kill_ns_processes "$ns"; done
  # Reap the (now dead) background children we started.
  local pid
  for pid in "${CLUSTER_BG_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  CLUSTER_BG_PIDS=()
  for ns in $(cluster_namespaces); do
    ip netns del "$ns" 2>/dev/null || cluster_log "could not delete namespace $ns"
  done
  local left
  left=$(cluster_namespaces)
  [[ -z $left ]] || cluster_log "namespaces left behind: $left"
  # Files cluster_netns_file wrote for `ip netns exec` (resolv.conf and the like).
  local dir
  for dir in "/etc/netns/$CLUSTER_PREFIX-"*; do
    if [[ -d $dir ]]; then rm -rf -- "$dir" || cluster_log "could not remove $dir"; fi
  done
}

# cluster_netns_file KEY FILE CONTENT: writes /etc/netns/<prefix>-KEY/FILE, which `ip netns exec`
# bind-mounts over /etc/FILE for every command it runs in namespace <prefix>-KEY (KEY: node, a
# pod, or any other namespace of this run), e.g. a pod's resolv.conf. cluster_down removes it.
cluster_netns_file() {
  (($# == 3)) || cluster_die "usage: cluster_netns_file KEY FILE CONTENT"
  [[ $1 =~ ^[a-z0-9][a-z0-9-]*$ && $2 =~ ^[a-z0-9][a-z0-9._-]*$ ]] || cluster_die "cluster_netns_file: bad name '$1' / '$2'"
  local dir="/etc/netns/$CLUSTER_PREFIX-$1"
  _must mkdir -p "$dir"
  printf '%s' "$3" >"$dir/$2" || cluster_die "cannot write $dir/$2"
}

# Network sysctls every namespace of the cluster gets, before any link exists (the per-link
# values are copied from `default` when a link is created): no duplicate address detection,
# so addresses are usable at once; IPv6 on whatever the root namespace says.
_cluster_ns_sysctls() {
  _must ip netns exec "$1" sysctl -q -w \
    net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0 \
    net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
}

# Creates a node namespace ($1: its key, default the default node): lo up, forwarding on, and
# the iptables tables pre-created.
_cluster_make_node() {
  local node
  node=$(node_ns "${1:-node}")
  _must ip netns add "$node"
  _cluster_ns_sysctls "$node"
  _must ip netns exec "$node" sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
    net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.default.rp_filter=2
  _must ip -n "$node" link set lo up
  # With the nft backend a table only appears in iptables-save once something wrote to it, and
  # it stays (with its empty built-in chains) after the last rule is deleted. A real node has
  # these tables from kube-proxy and the CNI; create them here so that dsproxy installing and
  # removing its rules compares equal in snapshot_netfilter. A read (-S, -L) is not enough: it
  # creates nothing.
  local tool table
  for tool in iptables ip6tables; do
    for table in raw mangle nat filter; do
      _must ip netns exec "$node" "$tool" -t "$table" -N DSPX_E2E_PROBE
      _must ip netns exec "$node" "$tool" -t "$table" -X DSPX_E2E_PROBE
    done
  done
}

# Creates pod $1's namespace and its point-to-point link to the node.
_cluster_make_pod() {
  local pod=$1 node ns link ip4 ip6 gw4
  node=$(node_ns "$(pod_node "$pod")")
  ns=$(pod_ns "$pod")
  link=${CLUSTER_POD_LINK[$pod]}
  ip4=${CLUSTER_POD_IP4[$pod]}
  ip6=${CLUSTER_POD_IP6[$pod]}
  gw4=${CLUSTER_POD_GW4[$pod]}
  _must ip netns add "$ns"
  _cluster_ns_sysctls "$ns"
  _must ip -n "$ns" link set lo up
  # Created in the node namespace with the peer moved straight into the pod's: neither end
  # ever exists in the root namespace.
  _must ip -n "$node" link add "$link" type veth peer name eth0 netns "$ns"

  _must ip -n "$node" addr add "$gw4/32" dev "$link"
  _must ip -n "$node" addr add "$CLUSTER_GW6/64" dev "$link" nodad
  _must ip -n "$node" link set "$link" up
  # A single-family pod (cluster_pod_add with "-") gets neither address nor routes of the other.
  if [[ -n $ip4 ]]; then _must ip -n "$node" route add "$ip4/32" dev "$link"; fi
  if [[ -n $ip6 ]]; then _must ip -n "$node" -6 route add "$ip6/128" dev "$link"; fi

  if [[ -n $ip4 ]]; then _must ip -n "$ns" addr add "$ip4/32" dev eth0; fi
  if [[ -n $ip6 ]]; then _must ip -n "$ns" addr add "$ip6/128" dev eth0 nodad; fi
  _must ip -n "$ns" link set eth0 up
  if [[ -n $ip4 ]]; then
    _must ip -n "$ns" route add "$gw4" dev eth0 scope link
    _must ip -n "$ns" route add default via "$gw4" dev eth0
  fi
  if [[ -n $ip6 ]]; then _must ip -n "$ns" -6 route add default via "$CLUSTER_GW6" dev eth0; fi
}

# Starts the tcp-echo app in pod $1 and waits (bounded) until it prints "listening".
_cluster_start_echo() {
  local pod=$1 out i echo_args=()
  out="$CLUSTER_TMP/$pod.echo.log"
  : >"$CLUSTER_TMP/$pod.peers"
  # Word-split on purpose: cluster_echo_add stores the extra arguments as one string.
  read -r -a echo_args <<<"${CLUSTER_POD_ECHO_ARGS[$pod]:-}"
  ip netns exec "$(pod_ns "$pod")" "$ECHO_BIN" --ports "$ECHO_PORTS" \
    --peer-log "$CLUSTER_TMP/$pod.peers" "${echo_args[@]}" >"$out" 2>&1 &
  local pid=$!
  CLUSTER_BG_PIDS+=("$pid")
  for ((i = 0; i < CLUSTER_ECHO_WAIT_STEPS; i++)); do
    grep -qx listening "$out" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$out" >&2
  cluster_die "tcp-echo in $pod did not start listening"
}

# Builds the whole cluster and starts the tcp-echo apps. Call cluster_trap first.
cluster_up() {
  [[ -n ${ECHO_BIN:-} && -x $ECHO_BIN ]] || cluster_die "ECHO_BIN '${ECHO_BIN:-}' is not an executable"
  cluster_require
  [[ -z $(cluster_namespaces) ]] || cluster_die "namespaces with prefix $CLUSTER_PREFIX exist already"
  if [[ -z $CLUSTER_TMP ]]; then CLUSTER_TMP=$(mktemp -d "/tmp/$CLUSTER_PREFIX.XXXXXX"); fi
  mkdir -p "$CLUSTER_TMP"
  local pod key
  for key in "${CLUSTER_NODES[@]}"; do _cluster_make_node "$key"; done
  for pod in "${CLUSTER_PODS[@]}"; do _cluster_make_pod "$pod"; done
  if ((${#CLUSTER_NODES[@]} > 1)); then _cluster_make_underlay; fi
  for pod in "${CLUSTER_ECHO_PODS[@]}"; do _cluster_start_echo "$pod"; done
  cluster_log "up: node $(node_ns), pods ${CLUSTER_PODS[*]}, logs in $CLUSTER_TMP"
}

# The underlay between nodes: a bridge in <prefix>-underlay, one veth leg per node ("underlay" on
# the node's side), both families; every node routes every other node's pods to that node.
_cluster_make_underlay() {
  local ns="$CLUSTER_PREFIX-underlay" i=0 key node pod other
  _must ip netns add "$ns"
  _cluster_ns_sysctls "$ns"
  _must ip -n "$ns" link set lo up
  _must ip -n "$ns" link add br0 type bridge
  _must ip -n "$ns" link set br0 up
  for key in "${CLUSTER_NODES[@]}"; do
    i=$((i + 1))
    node=$(node_ns "$key")
    CLUSTER_NODE_UNDERLAY4[$key]=$CLUSTER_UNDERLAY4_NET.$i
    CLUSTER_NODE_UNDERLAY6[$key]=$CLUSTER_UNDERLAY6_NET:$i
    _must ip -n "$node" link add underlay type veth peer name "leg$i" netns "$ns"
    _must ip -n "$ns" link set "leg$i" master br0
    _must ip -n "$ns" link set "leg$i" up
    _must ip -n "$node" addr add "${CLUSTER_NODE_UNDERLAY4[$key]}/24" dev underlay
    _must ip -n "$node" addr add "${CLUSTER_NODE_UNDERLAY6[$key]}/64" dev underlay nodad
    _must ip -n "$node" link set underlay up
  done
  for key in "${CLUSTER_NODES[@]}"; do
    for pod in "${CLUSTER_PODS[@]}"; do
      other=$(pod_node "$pod")
      [[ $other != "$key" && ${CLUSTER_POD_LINK[$pod]} == veth* ]] || continue
      if [[ -n ${CLUSTER_POD_IP4[$pod]} ]]; then
        _must in_node_of "$key" ip route add "${CLUSTER_POD_IP4[$pod]}/32" via "${CLUSTER_NODE_UNDERLAY4[$other]}"
      fi
      if [[ -n ${CLUSTER_POD_IP6[$pod]} ]]; then
        _must in_node_of "$key" ip -6 route add "${CLUSTER_POD_IP6[$pod]}/128" via "${CLUSTER_NODE_UNDERLAY6[$other]}"
      fi
    done
  done
}

# Number of lines in pod $1's peer log (a mark for pod_peers_since).
pod_peers_count() { wc -l <"$CLUSTER_TMP/$1.peers"; }
# The peer-log lines of pod $1 after line $2 ("<local port> <peer ip>").
pod_peers_since() { tail -n "+$(($2 + 1))" "$CLUSTER_TMP/$1.peers"; }

# HTTP GET on the node's loopback, without curl: prints the raw response.
# node_http_get PORT PATH
node_http_get() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  in_node timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3
    cat <&3' _ "$1" "$2" 2>/dev/null
}

# node_http_get_on NODE-KEY PORT PATH: node_http_get on another node.
node_http_get_on() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  in_node_of "$1" timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3
    cat <&3' _ "$2" "$3" 2>/dev/null
}

dsproxy_ready() {
  local status
  status=$(node_http_get_on "${1:-node}" 15021 /healthz/ready | head -n 1)
  [[ $status == "HTTP/1."?" 200"* ]]
}

# start_dsproxy_node NODE-KEY [ARGS...]: dsproxy on another node (as start_dsproxy, logging to
# $CLUSTER_TMP/dsproxy-NODE-KEY.log), waiting (bounded) until it is ready.
start_dsproxy_node() {
  local key=$1 log pid i deadline=$((SECONDS + DSPROXY_READY_TIMEOUT))
  shift
  [[ -n ${CLUSTER_NODE_K8S_NAME[$key]:-} ]] || cluster_die "start_dsproxy_node: unknown node '$key'"
  [[ -z ${DSPROXY_NODE_PID[$key]:-} ]] || cluster_die "dsproxy on $key is already running"
  log="$CLUSTER_TMP/dsproxy-$key.log"
  # DSPROXY_NODE_WRAPPER: a command prefix for debugging (e.g. "gdb -batch -ex run -ex bt --args").
  # shellcheck disable=SC2086 # word-split on purpose
  ip netns exec "$(node_ns "$key")" ${DSPROXY_NODE_WRAPPER:-} "$DSPROXY_BIN" run --config "$DSPROXY_CONFIG" \
    --node "${CLUSTER_NODE_K8S_NAME[$key]}" --redirect "$@" >>"$log" 2>&1 &
  pid=$!
  DSPROXY_NODE_PID[$key]=$pid
  for ((i = 0; i < 10 * DSPROXY_READY_TIMEOUT && SECONDS < deadline; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null
      cluster_log "dsproxy on $key exited with status $? before it was ready (log: $log)"
      unset "DSPROXY_NODE_PID[$key]"
      return 1
    fi
    dsproxy_ready "$key" && return 0
    sleep 0.1
  done
  cluster_log "dsproxy on $key not ready after ${DSPROXY_READY_TIMEOUT} s (log: $log)"
  return 1
}

# stop_dsproxy_node NODE-KEY: SIGTERM, bounded wait, SIGKILL; 0 only for a graceful exit.
stop_dsproxy_node() {
  local pid=${DSPROXY_NODE_PID[$1]:-} i
  [[ -n $pid ]] || return 0
  unset "DSPROXY_NODE_PID[$1]"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < DSPROXY_STOP_WAIT_STEPS; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null
      return 0
    fi
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null
  return 1
}

# Runs dsproxy in the node namespace with the redirect rules (in the background, logging to
# $DSPROXY_LOG) and waits (bounded) until /healthz/ready answers 200. Extra arguments are
# passed on. Fails when dsproxy exits or is not ready in time (dsproxy_log_tail shows why).
# shellcheck disable=SC2120 # extra arguments are optional
start_dsproxy() {
  [[ -n ${DSPROXY_BIN:-} && -x $DSPROXY_BIN ]] || cluster_die "DSPROXY_BIN '${DSPROXY_BIN:-}' is not an executable"
  [[ -f $DSPROXY_CONFIG ]] || cluster_die "config $DSPROXY_CONFIG does not exist"
  [[ -z $DSPROXY_PID ]] || cluster_die "dsproxy is already running (pid $DSPROXY_PID)"
  DSPROXY_LOG="$CLUSTER_TMP/dsproxy.log"
  DSPROXY_EXIT_STATUS=
  # Not through in_node: a backgrounded function is a forked subshell, and $! would be its pid
  # instead of dsproxy's. A plain command is exec'd by the fork, and `ip netns exec` execs
  # dsproxy in turn, so $! is dsproxy's own pid and SIGTERM reaches it.
  # DSPROXY_LAUNCHER (tests/e2e/image.sh) runs it another way, e.g. from the image: it gets
  # the node namespace and the arguments, and must exec the process SIGTERM stops.
  if [[ -n ${DSPROXY_LAUNCHER:-} ]]; then
    "$DSPROXY_LAUNCHER" "$(node_ns)" run --config "$DSPROXY_CONFIG" \
      --node "$CLUSTER_NODE_NAME" --redirect "$@" >>"$DSPROXY_LOG" 2>&1 &
  else
    ip netns exec "$(node_ns)" "$DSPROXY_BIN" run --config "$DSPROXY_CONFIG" \
      --node "$CLUSTER_NODE_NAME" --redirect "$@" >>"$DSPROXY_LOG" 2>&1 &
  fi
  DSPROXY_PID=$!
  # Bounded in time (a probe can take up to 3 s when the port accepts but never answers) and
  # in count.
  local i deadline=$((SECONDS + DSPROXY_READY_TIMEOUT))
  for ((i = 0; i < 10 * DSPROXY_READY_TIMEOUT && SECONDS < deadline; i++)); do
    if ! kill -0 "$DSPROXY_PID" 2>/dev/null; then
      DSPROXY_EXIT_STATUS=0
      wait "$DSPROXY_PID" || DSPROXY_EXIT_STATUS=$?
      DSPROXY_PID=
      cluster_log "dsproxy exited with status $DSPROXY_EXIT_STATUS before it was ready (log: $DSPROXY_LOG)"
      return 1
    fi
    dsproxy_ready && return 0
    sleep 0.1
  done
  cluster_log "dsproxy not ready after ${DSPROXY_READY_TIMEOUT} s (log: $DSPROXY_LOG)"
  return 1
}

# SIGTERM, bounded wait, then SIGKILL. Sets DSPROXY_EXIT_STATUS; returns 0 only when dsproxy
# exited on its own after SIGTERM (so it had the chance to remove its redirect rules).
stop_dsproxy() {
  [[ -n $DSPROXY_PID ]] || return 0
  local pid=$DSPROXY_PID i graceful=0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < DSPROXY_STOP_WAIT_STEPS; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      graceful=1
      break
    fi
    sleep 0.1
  done
  if ((!graceful)); then
    cluster_log "dsproxy ignored SIGTERM for $((DSPROXY_STOP_WAIT_STEPS / 10)) s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  DSPROXY_EXIT_STATUS=0
  wait "$pid" 2>/dev/null || DSPROXY_EXIT_STATUS=$?
  DSPROXY_PID=
  ((graceful))
}

dsproxy_log_tail() {
  [[ -n $DSPROXY_LOG && -f $DSPROXY_LOG ]] || return 0
  echo "----- last 40 lines of $DSPROXY_LOG -----" >&2
  tail -n 40 "$DSPROXY_LOG" >&2
  echo "-----" >&2
}

# The node namespace's packet-steering state, normalised for comparing before and after:
# iptables/ip6tables rules without comments and counters, policy rules, and every routing
# table of both families.
snapshot_netfilter() {
  local tool
  for tool in iptables-save ip6tables-save; do
    echo "## $tool"
    # (iptables-nft-save warns on stderr whenever legacy tables exist, which they may: below.)
    in_node "$tool" 2> >(grep -v '^# Warning: .*-legacy tables present' >&2) | grep -v '^#' |
      sed -E 's/ \[[0-9]+:[0-9]+\]$//'
  done
  # The legacy (x_tables) backend too, where --iptables-backend legacy (or a legacy node) puts
  # the rules. Only its chains and rules count: a legacy table, once any tool named it, exists
  # with its built-in chains until the namespace goes, and a save never creates one.
  for tool in iptables-legacy-save ip6tables-legacy-save; do
    echo "## $tool"
    in_node "$tool" | awk '/^\*/ { table = $0; next }
      /^-A / || /^:[^ ]+ - / { if (table != shown) { print table; shown = table }; print }'
  done
  # The sets the rules match (members sorted: a hash set lists them in no stable order; initval
  # is the hash seed, new with every fill-and-swap).
  echo "## ipset save"
  in_node ipset save | sed -E "s/ initval 0x[0-9a-f]+//" | sort
  echo "## ip -4 rule"
  in_node ip -4 rule show
  echo "## ip -6 rule"
  in_node ip -6 rule show
  echo "## ip -4 route show table all"
  in_node ip -4 route show table all
  echo "## ip -6 route show table all"
  in_node ip -6 route show table all
}

# An upstream nameserver only the node can reach, as a node's resolv.conf would name: dnsmasq in
# its own namespace <prefix>-upstream, linked to the node by a veth (node 10.53.0.1 /
# fd00:53::1, server UPSTREAM4=10.53.0.53 / UPSTREAM6=fd00:53::53). Pods have no route to it.
#   cluster_upstream_dns HOSTS_FILE PROBE_NAME PROBE_TYPE PROBE_ANSWER [DNSMASQ ARGS...]
# serves HOSTS_FILE for outside.test (plus the extra arguments), waits (bounded) until
# PROBE_NAME PROBE_TYPE answers PROBE_ANSWER, and writes the node's resolv.conf naming it.
# dnsmasq logs to $CLUSTER_TMP/dnsmasq.log, its pid is DNSMASQ_PID, and it dies with the cluster.
UPSTREAM_NODE4=10.53.0.1
UPSTREAM_NODE6=fd00:53::1
UPSTREAM4=10.53.0.53
UPSTREAM6=fd00:53::53
cluster_upstream_dns() {
  local hosts=$1 name=$2 type=$3 answer=$4 ns="$CLUSTER_PREFIX-upstream" i
  shift 4
  _must ip netns add "$ns"
  _must ip netns exec "$ns" sysctl -q -w net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  _must ip -n "$ns" link set lo up
  _must ip -n "$(node_ns)" link add to-upstream type veth peer name eth0 netns "$ns"
  _must ip -n "$(node_ns)" addr add "$UPSTREAM_NODE4/24" dev to-upstream
  _must ip -n "$(node_ns)" addr add "$UPSTREAM_NODE6/64" dev to-upstream nodad
  _must ip -n "$(node_ns)" link set to-upstream up
  _must ip -n "$ns" addr add "$UPSTREAM4/24" dev eth0
  _must ip -n "$ns" addr add "$UPSTREAM6/64" dev eth0 nodad
  _must ip -n "$ns" link set eth0 up
  ip netns exec "$ns" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
    --no-poll --user=root --pid-file= --bind-interfaces --local-ttl=60 --listen-address="$UPSTREAM4" \
    --listen-address="$UPSTREAM6" --addn-hosts="$hosts" --local=/outside.test/ \
    --log-queries --log-facility="$CLUSTER_TMP/dnsmasq.log" "$@" >"$CLUSTER_TMP/dnsmasq.out" 2>&1 &
  DNSMASQ_PID=$!
  CLUSTER_BG_PIDS+=("$DNSMASQ_PID")
  for ((i = 0; i < 50; i++)); do
    ip netns exec "$ns" dig +time=1 +tries=1 +short "@$UPSTREAM4" "$name" "$type" 2>/dev/null |
      grep -qxF -- "$answer" && break
    sleep 0.1
  done
  ((i < 50)) || cluster_die "dnsmasq did not answer $name $type $answer (see $CLUSTER_TMP/dnsmasq.out)"
  cluster_netns_file node resolv.conf "nameserver $UPSTREAM4
"
}
