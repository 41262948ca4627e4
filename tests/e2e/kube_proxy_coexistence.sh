#!/usr/bin/env bash
# dsproxy next to kube-proxy (issue 10): the tcp-echo experiment run four times on the same
# netns cluster: with kube-proxy-style iptables rules for the experiment's Services in the node
# namespace (iptables mode: nat PREROUTING/OUTPUT -> KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-*
# DNAT, KUBE-MARK-MASQ and the KUBE-POSTROUTING masquerade, plus kube-proxy's filter chains),
# the same rules written with iptables-legacy (dsproxy must detect that backend and use it: its
# mangle/raw/filter rules, -m set, TPROXY and CT --notrack in x_tables),
# with kube-proxy's nftables mode instead (its own `kube-proxy` tables, a service-ips verdict
# map, dnat in endpoint chains at priority dstnat), and without kube-proxy. The results must be
# identical: for every ClusterIP and port, the answer, the
# pod that answered, the client address that pod saw (so the family of the endpoint reached),
# and that dsproxy routed the connection as Service traffic (not as passthrough to a pod IP);
# the refusals; and `proxy-config listeners` / `proxy-config endpoints`.
#
# What goes wrong without dsproxy's conntrack exemption: TPROXY (mangle PREROUTING, -150) hands
# the SYN to the proxy's listener, then kube-proxy's DNAT (nat PREROUTING, -100) rewrites its
# destination to the pod kube-proxy picked, so the proxy accepts a connection "to" that pod IP
# and passes it through: the ClusterIP, and with it the Service's family policy, is lost.
#
#   kube_proxy_coexistence.sh DSPROXY_BIN ECHO_BIN
#
# Needs root, iproute2, iptables, ipset, nft, OpenBSD nc and python3 or jq; fails (never skips)
# without them. Prints one PASS/FAIL line per check, "N passed, M failed" last, exits non-zero
# on any failure. Everything it creates is removed on exit, also on failure or interruption.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args -- "$@"

# Traffic checks not started after this many seconds fail without running; a normal run takes
# about 40 s. What always runs after it (stopping dsproxy, cleanup) is bounded by the harness.
E2E_DEADLINE=${E2E_DEADLINE:-150}

suite_trap

suite_require
command -v nft >/dev/null 2>&1 || cluster_die "nft is not installed (scripts/install-deps.sh: nftables)"
command -v python3 >/dev/null 2>&1 || command -v jq >/dev/null 2>&1 ||
  cluster_die "neither python3 nor jq is installed (needed to read GET :15000/stats)"

# The experiment's ClusterIPs: service namespace, ClusterIP, family, pod behind it, payload.
VIPS=(
  "dual-stack fd00:10:96::f9fc 6 echo-ds dualstack"
  "dual-stack 10.96.106.11 4 echo-ds dualstack"
  "ipv4 10.96.104.229 4 echo-v4 ipv4"
  "ipv6 fd00:10:96::9c3a 6 echo-v6 ipv6"
)
CLUSTER_CIDR4=10.244.0.0/16
CLUSTER_CIDR6=fd00:10:244::/56

# ---- kube-proxy, iptables mode ------------------------------------------------------------
# What kube-proxy (v1.28+, iptables mode, --cluster-cidr set) writes for these Services: the
# service portals in nat PREROUTING and OUTPUT, one KUBE-SVC chain per Service port, one
# KUBE-SEP chain per endpoint (hairpin masquerade + DNAT to the pod's targetPort), the
# masquerade mark for clients from outside the cluster CIDR, and its filter chains (INVALID
# drop in FORWARD, the 127/8 firewall).
kube_proxy_rules() {
  local family=$1 cidr=$CLUSTER_CIDR4 host=32 entry svc vip fam pod payload port n=0 ip
  ((family == 6)) && cidr=$CLUSTER_CIDR6 host=128
  echo "*nat"
  echo ":KUBE-SERVICES - [0:0]"
  echo ":KUBE-NODEPORTS - [0:0]"
  echo ":KUBE-POSTROUTING - [0:0]"
  echo ":KUBE-MARK-MASQ - [0:0]"
  echo '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
  echo '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
  echo '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'
  echo "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"
  echo "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"
  echo "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0"
  echo '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully'
  for entry in "${VIPS[@]}"; do
    read -r svc vip fam pod payload <<<"$entry"
    ((fam == family)) || continue
    ip=$(pod_ip "$pod" "$family")
    for port in 9000 9001; do
      n=$((n + 1))
      echo ":KUBE-SVC-E2E$family$n - [0:0]"
      echo ":KUBE-SEP-E2E$family$n - [0:0]"
      echo "-A KUBE-SERVICES -d $vip/$host -p tcp -m comment --comment \"$svc/tcp-echo cluster IP\" -m tcp --dport $port -j KUBE-SVC-E2E$family$n"
      echo "-A KUBE-SVC-E2E$family$n ! -s $cidr -d $vip/$host -p tcp -m tcp --dport $port -j KUBE-MARK-MASQ"
      echo "-A KUBE-SVC-E2E$family$n -j KUBE-SEP-E2E$family$n"
      echo "-A KUBE-SEP-E2E$family$n -s $ip/$host -j KUBE-MARK-MASQ"
      if ((family == 6)); then
        echo "-A KUBE-SEP-E2E$family$n -p tcp -m tcp -j DNAT --to-destination [$ip]:$port"
      else
        echo "-A KUBE-SEP-E2E$family$n -p tcp -m tcp -j DNAT --to-destination $ip:$port"
      fi
    done
  done
  echo "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
  echo "COMMIT"
  echo "*filter"
  echo ":KUBE-FORWARD - [0:0]"
  echo ":KUBE-FIREWALL - [0:0]"
  echo "-A FORWARD -j KUBE-FORWARD"
  echo "-A INPUT -j KUBE-FIREWALL"
  echo "-A OUTPUT -j KUBE-FIREWALL"
  echo "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
  echo "-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT"
  if ((family == 4)); then
    echo "-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
  fi
  echo "COMMIT"
}

# The iptables variant kube-proxy's rules are written with: "" (the plain tools: nf_tables on
# Debian 12) or "-legacy" (iptables-legacy, as on a node whose kube-proxy image picked legacy).
KP_VARIANT=

kube_proxy_install() {
  kube_proxy_rules 4 | in_node "iptables$KP_VARIANT-restore" -w --noflush &&
    kube_proxy_rules 6 | in_node "ip6tables$KP_VARIANT-restore" -w --noflush
}

# Removes the jumps, then the chains (a chain cannot go while referenced).
kube_proxy_remove() {
  local tool chain status=0
  for tool in "iptables$KP_VARIANT" "ip6tables$KP_VARIANT"; do
    in_node "$tool" -w -t nat -D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES || status=1
    in_node "$tool" -w -t nat -D OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES || status=1
    in_node "$tool" -w -t nat -D POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING || status=1
    in_node "$tool" -w -t filter -D FORWARD -j KUBE-FORWARD || status=1
    in_node "$tool" -w -t filter -D INPUT -j KUBE-FIREWALL || status=1
    in_node "$tool" -w -t filter -D OUTPUT -j KUBE-FIREWALL || status=1
    for table in nat filter; do
      for chain in $(in_node "$tool" -w -t "$table" -S | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }'); do
        in_node "$tool" -w -t "$table" -F "$chain" || status=1
      done
      for chain in $(in_node "$tool" -w -t "$table" -S | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }'); do
        in_node "$tool" -w -t "$table" -X "$chain" || status=1
      done
    done
  done
  return $status
}

# Sum of the packet counters of every KUBE-SEP chain's DNAT rule, both families: how many
# connections kube-proxy's rules translated.
kube_proxy_dnat_count() {
  local tool total=0 n
  for tool in "iptables$KP_VARIANT" "ip6tables$KP_VARIANT"; do
    n=$(in_node "$tool" -w -t nat -L -v -x -n 2>/dev/null |
      awk '/^Chain KUBE-SEP-/ { sep = 1; next } /^Chain / { sep = 0 } sep && / DNAT / { s += $1 } END { print s + 0 }')
    total=$((total + n))
  done
  echo "$total"
}

# ---- kube-proxy, nftables mode ------------------------------------------------------------
# What kube-proxy's nftables mode (v1.31+) writes, cut down to these Services: a table of its
# own per family, base chains at the nat hooks, a verdict map from ClusterIP . protocol . port
# to a service chain, one endpoint chain per endpoint (hairpin masquerade mark + dnat), the
# masquerade in postrouting. Every endpoint chain counts its packets.
kube_proxy_nft_rules() {
  local family=$1 nf=ip cidr=$CLUSTER_CIDR4 entry svc vip fam pod payload port n=0 ip elements=
  ((family == 6)) && nf=ip6 cidr=$CLUSTER_CIDR6
  echo "table $nf kube-proxy {"
  echo "  chain mark-for-masquerade { meta mark set meta mark | 0x4000; }"
  echo "  chain masquerading { meta mark & 0x4000 == 0 return; meta mark set meta mark ^ 0x4000; masquerade fully-random; }"
  for entry in "${VIPS[@]}"; do
    read -r svc vip fam pod payload <<<"$entry"
    ((fam == family)) || continue
    ip=$(pod_ip "$pod" "$family")
    for port in 9000 9001; do
      n=$((n + 1))
      echo "  chain endpoint-e2e$n { $nf saddr $ip jump mark-for-masquerade; counter meta l4proto tcp dnat to $( ((family == 6)) && echo "[$ip]" || echo "$ip"):$port; }"
      echo "  chain service-e2e$n { $nf saddr != $cidr jump mark-for-masquerade; numgen random mod 1 vmap { 0 : goto endpoint-e2e$n }; }"
      elements+="${elements:+, }$vip . tcp . $port : goto service-e2e$n"
    done
  done
  echo "  map service-ips { type $( ((family == 6)) && echo ipv6_addr || echo ipv4_addr) . inet_proto . inet_service : verdict; elements = { $elements }; }"
  echo "  chain services { $nf daddr . meta l4proto . th dport vmap @service-ips; }"
  echo "  chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }"
  echo "  chain nat-output { type nat hook output priority -100; policy accept; jump services; }"
  echo "  chain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading; }"
  echo "  chain filter-forward { type filter hook forward priority -110; policy accept; ct state invalid drop; }"
  echo "}"
}
kube_proxy_nft_install() { { kube_proxy_nft_rules 4 && kube_proxy_nft_rules 6; } | in_node nft -f -; }
kube_proxy_nft_remove() { in_node nft delete table ip kube-proxy && in_node nft delete table ip6 kube-proxy; }
# Packets the nftables-mode endpoint chains DNATed, both families.
kube_proxy_nft_dnat_count() {
  { in_node nft list table ip kube-proxy && in_node nft list table ip6 kube-proxy; } 2>/dev/null |
    awk '/counter packets/ { for (i = 1; i < NF; i++) if ($i == "packets") s += $(i + 1) } END { print s + 0 }'
}

# ---- the experiment -----------------------------------------------------------------------
# Prints "counter value" for every numeric counter of dsproxy's admin GET :15000/stats.
stats_now() {
  local body
  body=$(node_http_get 15000 /stats | tr -d '\r' | sed '1,/^$/d')
  if command -v python3 >/dev/null 2>&1; then
    python3 -c '
import json, sys
for k, v in json.load(sys.stdin).items():
    if isinstance(v, int):
        print(k, v)
' <<<"$body" 2>/dev/null
  else
    jq -r 'to_entries[] | select(.value | type == "number") | "\(.key) \(.value)"' <<<"$body" 2>/dev/null
  fi
}
# counter_delta BEFORE AFTER NAME
counter_delta() {
  local a b
  a=$(awk -v n="$3" '$1 == n { print $2 }' <<<"$1")
  b=$(awk -v n="$3" '$1 == n { print $2 }' <<<"$2")
  if [[ -z $a || -z $b ]]; then echo "?"; else echo $((b - a)); fi
}

# Runs the experiment against the running dsproxy and prints its results, one line each, in a
# fixed order, so two runs can be compared as text. A line per ClusterIP connection: the answer,
# the pods that logged the connection and the client address they saw, and how dsproxy counted
# it (routed to the Service, or passed through to whatever address it saw).
run_experiment() {
  local entry svc vip family pod payload port answer before after p peers
  for entry in "${VIPS[@]}"; do
    read -r svc vip family pod payload <<<"$entry"
    for port in 9000 9001 9002; do
      in_time "sleep -> $vip port $port" >/dev/null || { echo "$vip $port: not run (time budget used up)"; continue; }
      declare -A marks=()
      for p in "${CLUSTER_ECHO_PODS[@]}"; do marks[$p]=$(pod_peers_count "$p"); done
      before=$(stats_now)
      answer=$(echo "$payload" | in_pod sleep timeout 8 nc -v -N -w 3 "$vip" "$port" 2>&1 |
        grep -v '^Connection to .* succeeded!$' | tr '\n' ' ')
      after=$(stats_now)
      peers=
      for p in "${CLUSTER_ECHO_PODS[@]}"; do
        while read -r line; do [[ -n $line ]] && peers+="$p($line) "; done < <(pod_peers_since "$p" "${marks[$p]}")
      done
      printf '%s %s: answer [%s] reached [%s] service +%s passthrough +%s outbound +%s\n' "$vip" "$port" \
        "${answer% }" "${peers% }" "$(counter_delta "$before" "$after" routed_to_service)" \
        "$(counter_delta "$before" "$after" passthrough)" "$(counter_delta "$before" "$after" outbound_accepted)"
    done
  done
  echo "---- proxy-config listeners"
  in_node timeout 5 "$DSPROXY_BIN" proxy-config listeners -o json 2>&1
  echo "---- proxy-config endpoints"
  in_node timeout 5 "$DSPROXY_BIN" proxy-config endpoints 2>&1
}

# What the experiment must show, whatever kube-proxy does: every ClusterIP answers on 9000 and
# 9001 from its own pod, which sees the sleep pod's own address of the ClusterIP's family, and
# dsproxy routed it to the Service; 9002 is refused before dsproxy sees it.
check_results() {
  local label=$1 results=$2 entry svc vip family pod payload port want line ok
  for entry in "${VIPS[@]}"; do
    read -r svc vip family pod payload <<<"$entry"
    for port in 9000 9001; do
      want="$vip $port: answer [hello $payload] reached [$pod($port $(pod_ip sleep "$family"))] service +1 passthrough +0 outbound +1"
      line=$(grep -F "$vip $port: " <<<"$results")
      [[ $line == "$want" ]]
      ok=$? # before the check's arguments run anything
      check "$label: sleep -> $svc $vip:$port reaches $pod over IPv$family as $(pod_ip sleep "$family"), routed to the Service" $ok \
        "got '$line'"
    done
    want="$vip 9002: answer [nc: connect to $vip port 9002 (tcp) failed: Connection refused] reached [] service +0 passthrough +0 outbound +0"
    line=$(grep -F "$vip 9002: " <<<"$results")
    [[ $line == "$want" ]]
    ok=$?
    check "$label: $vip:9002 (not a Service port) is refused in the kernel" $ok "got '$line'"
  done
}

# ---- 1. kube-proxy's rules, then dsproxy ---------------------------------------------------
cluster_up
# A real node reaches the Service range by its default route; this one has no route out, so it
# gets one for the Service CIDRs over its link to "kind-worker2" (kube-proxy's DNAT then reroutes
# the node's own connections to the pod). In place for both runs.
# IPv6 also needs a global source address (the node's links carry only fe80::1).
_must in_node ip -4 route add 10.96.0.0/16 dev "${CLUSTER_POD_LINK[remote]}"
_must in_node ip -6 addr add fd00:10:255::1/128 dev lo
_must in_node ip -6 route add fd00:10:96::/112 dev "${CLUSTER_POD_LINK[remote]}" src fd00:10:255::1
before=$(snapshot_netfilter)

kube_proxy_install
check "kube-proxy-style KUBE-SERVICES/KUBE-SVC/KUBE-SEP rules installed in the node namespace" $?
with_kube=$(snapshot_netfilter)

# The rules are live: the node's own connection to a ClusterIP (not captured by dsproxy, which
# only takes pods' traffic) is DNATed by them to the pod.
for vip in 10.96.104.229 fd00:10:96::f9fc; do
  dnat0=$(kube_proxy_dnat_count)
  answer=$(echo node | in_node timeout 8 nc -N -w 3 "$vip" 9000 2>&1)
  dnat1=$(kube_proxy_dnat_count)
  [[ $answer == "hello node" ]] && ((dnat1 == dnat0 + 1))
  check "kube-proxy's rules work: the node reaches $vip port 9000 through their DNAT" $? \
    "answer '$answer', DNAT packets $dnat0 -> $dnat1"
done

# shellcheck disable=SC2119 # no extra dsproxy arguments
start_dsproxy
check "dsproxy started with --redirect next to kube-proxy's rules" $? || {
  summary
  exit 1
}
dnat0=$(kube_proxy_dnat_count)
results_kube=$(run_experiment)
dnat1=$(kube_proxy_dnat_count)
check_results "with kube-proxy" "$results_kube"
((dnat1 == dnat0))
check "kube-proxy's DNAT never saw the pods' captured ClusterIP connections (untracked)" $? \
  "DNAT packets $dnat0 -> $dnat1"

stop_dsproxy
((DSPROXY_EXIT_STATUS == 0))
check "dsproxy exits on SIGTERM with status 0" $? "exit status $DSPROXY_EXIT_STATUS"
now=$(snapshot_netfilter)
[[ $now == "$with_kube" ]]
check "after dsproxy stopped, kube-proxy's rules are intact and nothing of dsproxy's is left" $? \
  "$(diff <(echo "$with_kube") <(echo "$now") | head -n 20 | tr '\n' ' ')"

kube_proxy_remove
check "kube-proxy's rules removed" $?
now=$(snapshot_netfilter)
[[ $now == "$before" ]]
check "the node is as before kube-proxy's rules" $? "$(diff <(echo "$before") <(echo "$now") | head -n 20 | tr '\n' ' ')"

# ---- 1b. the same rules in the legacy iptables backend, then dsproxy choosing it itself -------
# A node whose kube-proxy writes legacy rules: dsproxy, started without --iptables-backend, must
# find them (more rules there than in nf_tables) and put its own rules next to them, in legacy,
# where they are ordered against kube-proxy's and `iptables-legacy-save` shows them.
KP_VARIANT=-legacy
kube_proxy_install
check "kube-proxy-style rules installed with iptables-legacy in the node namespace" $?
with_kube_legacy=$(snapshot_netfilter)
dnat0=$(kube_proxy_dnat_count)
answer=$(echo node | in_node timeout 8 nc -N -w 3 10.96.104.229 9000 2>&1)
dnat1=$(kube_proxy_dnat_count)
[[ $answer == "hello node" ]] && ((dnat1 == dnat0 + 1))
check "kube-proxy's legacy rules work: the node reaches 10.96.104.229 port 9000 through their DNAT" $? \
  "answer '$answer', DNAT packets $dnat0 -> $dnat1"
# shellcheck disable=SC2119
start_dsproxy
check "dsproxy started with --redirect next to kube-proxy's legacy rules" $? || {
  summary
  exit 1
}
grep -q "iptables backend: legacy (auto: no kubelet hint chain; the legacy backend holds" "$DSPROXY_LOG"
check "dsproxy chose the legacy backend itself, and said why" $? "$(grep -m1 'iptables backend' "$DSPROXY_LOG")"
ours_legacy=$( (in_node iptables-legacy-save && in_node ip6tables-legacy-save) | grep -c -- '-j DSPROXY_')
ours_nft=$( (in_node iptables-nft-save && in_node ip6tables-nft-save) 2>/dev/null | grep -c -- '-j DSPROXY_')
((ours_legacy >= 10 && ours_nft == 0))
check "dsproxy's rules are in the legacy backend only" $? "jumps to DSPROXY_* chains: legacy $ours_legacy, nf_tables $ours_nft"
dnat0=$(kube_proxy_dnat_count)
results_legacy=$(run_experiment)
dnat1=$(kube_proxy_dnat_count)
check_results "with kube-proxy (legacy iptables)" "$results_legacy"
((dnat1 == dnat0))
check "kube-proxy's legacy DNAT never saw the pods' captured ClusterIP connections (untracked)" $? \
  "DNAT packets $dnat0 -> $dnat1"
stop_dsproxy
((DSPROXY_EXIT_STATUS == 0))
check "dsproxy exits on SIGTERM with status 0" $? "exit status $DSPROXY_EXIT_STATUS"
now=$(snapshot_netfilter)
[[ $now == "$with_kube_legacy" ]]
check "after dsproxy stopped, kube-proxy's legacy rules are intact and nothing of dsproxy's is left" $? \
  "$(diff <(echo "$with_kube_legacy") <(echo "$now") | head -n 20 | tr '\n' ' ')"
kube_proxy_remove
check "kube-proxy's legacy rules removed" $?
KP_VARIANT=
now=$(snapshot_netfilter)
[[ $now == "$before" ]]
check "the node is as before kube-proxy's legacy rules" $? "$(diff <(echo "$before") <(echo "$now") | head -n 20 | tr '\n' ' ')"

# ---- 2. kube-proxy's nftables mode, then dsproxy --------------------------------------------
kube_proxy_nft_install
check "kube-proxy nftables-mode tables installed in the node namespace" $?
for vip in 10.96.106.11 fd00:10:96::9c3a; do
  dnat0=$(kube_proxy_nft_dnat_count)
  answer=$(echo node | in_node timeout 8 nc -N -w 3 "$vip" 9000 2>&1)
  dnat1=$(kube_proxy_nft_dnat_count)
  [[ $answer == "hello node" ]] && ((dnat1 == dnat0 + 1))
  check "kube-proxy's nftables rules work: the node reaches $vip port 9000 through their dnat" $? \
    "answer '$answer', dnat packets $dnat0 -> $dnat1"
done
# shellcheck disable=SC2119
start_dsproxy
check "dsproxy started with --redirect next to kube-proxy's nftables rules" $? || {
  summary
  exit 1
}
dnat0=$(kube_proxy_nft_dnat_count)
results_nft=$(run_experiment)
dnat1=$(kube_proxy_nft_dnat_count)
check_results "with kube-proxy (nftables)" "$results_nft"
((dnat1 == dnat0))
check "kube-proxy's nftables dnat never saw the pods' captured ClusterIP connections" $? \
  "dnat packets $dnat0 -> $dnat1"
stop_dsproxy
((DSPROXY_EXIT_STATUS == 0))
check "dsproxy exits on SIGTERM with status 0" $? "exit status $DSPROXY_EXIT_STATUS"
kube_proxy_nft_remove
check "kube-proxy's nftables tables removed" $?
now=$(snapshot_netfilter)
[[ $now == "$before" ]]
check "the node is as before (dsproxy left nothing next to the nftables tables)" $? \
  "$(diff <(echo "$before") <(echo "$now") | head -n 20 | tr '\n' ' ')"

# ---- 3. the same experiment without kube-proxy ---------------------------------------------
# shellcheck disable=SC2119
start_dsproxy
check "dsproxy started with --redirect without kube-proxy" $? || {
  summary
  exit 1
}
results_plain=$(run_experiment)
check_results "without kube-proxy" "$results_plain"
stop_dsproxy

# ---- 4. identical ---------------------------------------------------------------------------
for mode in iptables "legacy iptables" nftables; do
  case $mode in
    iptables) results=$results_kube ;;
    legacy*) results=$results_legacy ;;
    *) results=$results_nft ;;
  esac
  if [[ $results == "$results_plain" ]]; then
    pass "the experiment's results (answers, endpoint families, client addresses, dsproxy's routing, listeners, endpoints) are identical with kube-proxy ($mode mode) and without"
  else
    fail "the experiment's results differ with kube-proxy ($mode mode) and without:"
    diff -u <(echo "$results_plain") <(echo "$results") | sed 's/^/    /' | head -n 60
  fi
done
grep -q '"name"' <<<"$results_plain"
check "proxy-config listeners answered (compared above)" $?
grep -q 'HEALTHY' <<<"$results_plain"
check "proxy-config endpoints answered (compared above)" $?

now=$(snapshot_netfilter)
[[ $now == "$before" ]]
check "after dsproxy stopped, the node is as before" $?

echo "(took ${SECONDS}s)"
summary
((FAILED == 0))
