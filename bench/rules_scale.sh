#!/usr/bin/env bash
# Does the cost of a connection through the node grow with the cluster? (issue 10: "the connect
# latency through the node with 20,000 Services is within 5 % of that with 10".) Not a test: it
# prints numbers and asserts nothing about them.
#
#   sudo bash bench/rules_scale.sh [--services N] [--rounds R] [--seconds S] [--no-install]
#
# On bench/run.sh's client / node / server namespaces (bench/lib/topo.sh), dsproxy runs with
# --redirect and the client opens connections (connect, 64-byte echo, close; bench_load conn,
# one thread) to the server through its captured ClusterIP, IPv4 and IPv6. Three node states,
# measured in alternating order R times each:
#   10     the refusal sets hold 10 Services (the bench Service + 9 injected)
#   N      the refusal sets hold N Services (N-1 injected: 2 ClusterIPs, 2 open ports each)
#   old    as 10, plus what dsproxy used to install for N Services: one chain of 3 rules per
#          ClusterIP (2 RETURN per open port, 1 REJECT) that every SYN to the node walks (the
#          measured ClusterIP is not in it, so the SYN walks all of it, as it did for a VIP
#          rendered last)
# The injected members are exactly what dsproxy would add for such Services: the sets and the
# rules are dsproxy's own, only their contents grow.
# Then, in a namespace of its own, dsproxy_rules_update times the daemon's refusal-set updates
# with N Services: install, and one-Service changes through both entry points (apply: the whole
# list, diffed; apply_changes: only the change), and again without the kernel (dsproxy's share).
#
# Needs root, cmake and a C++ toolchain (builds dsproxy, its rules_update tool and the bench
# tools if missing), ipset, iptables, jq, iperf3 (topo.sh's server; installed unless
# --no-install). Everything it creates is removed on exit, also on failure or Ctrl-C.

set -uo pipefail

BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=rules_scale
# shellcheck source=bench/lib/common.sh
source "$BENCH_DIR/lib/common.sh"
BUILD_DIR=${BUILD_DIR:-$REPO_DIR/build}

SERVICES=20000
ROUNDS=3
SECONDS_PER=4
INSTALL=1
while (($#)); do
  case $1 in
    --services) SERVICES=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --seconds) SECONDS_PER=$2; shift ;;
    --no-install) INSTALL=0 ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "rules_scale: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
require_root "network namespaces, iptables, ipset"
((SERVICES >= 10 && SERVICES <= 200000)) || die "--services must be 10-200000"
((ROUNDS >= 1 && ROUNDS <= 20)) || die "--rounds must be 1-20"
((SECONDS_PER >= 1 && SECONDS_PER <= 60)) || die "--seconds must be 1-60"

if ((INSTALL)) && ! command -v iperf3 >/dev/null 2>&1; then
  log "installing iperf3 (the topology's server runs it)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iperf3 >/dev/null ||
    die "apt-get install iperf3 failed"
fi
for cmd in ipset iptables ip6tables iperf3 jq cmake; do
  command -v "$cmd" >/dev/null 2>&1 || die "missing command $cmd (scripts/install-deps.sh; iperf3 without --no-install)"
done

if [[ ! -x $BUILD_DIR/dsproxy || ! -x $BUILD_DIR/tests/dsproxy_rules_update ]]; then
  log "building dsproxy and dsproxy_rules_update in $BUILD_DIR"
  if ! cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null ||
    ! cmake --build "$BUILD_DIR" -j2 --target dsproxy dsproxy_rules_update >/dev/null; then
    die "build failed"
  fi
fi
build_bench_tools
BENCH_LOAD=$BENCH_BUILD_DIR/bench_load
BENCH_ECHO=$BENCH_BUILD_DIR/bench_echo
BENCH_TMP=$(mktemp -d /tmp/dsrules.XXXXXX)
# Private copies: a rebuild of build/ during the run must not change what is measured.
cp "$BUILD_DIR/dsproxy" "$BUILD_DIR/tests/dsproxy_rules_update" "$BENCH_TMP/" || die "cannot copy the binaries"
DSPROXY_BIN=$BENCH_TMP/dsproxy

# shellcheck source=bench/lib/topo.sh
source "$BENCH_DIR/lib/topo.sh"
RULES_NS="$BENCH_PREFIX-rules"
DSPROXY_PID=

on_exit() {
  local status=$?
  set +e
  trap - EXIT INT TERM HUP
  if [[ -n $DSPROXY_PID ]]; then
    kill -TERM "$DSPROXY_PID" 2>/dev/null
    for ((i = 0; i < 100; i++)); do kill -0 "$DSPROXY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DSPROXY_PID" 2>/dev/null
    wait "$DSPROXY_PID" 2>/dev/null
  fi
  ip netns del "$RULES_NS" 2>/dev/null
  topo_down
  if ((status == 0)); then rm -rf -- "$BENCH_TMP"; else log "logs kept in $BENCH_TMP"; fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---- the node, with dsproxy --redirect ----------------------------------------------------
topo_up
topo_write_k8s_config "$BENCH_TMP/cluster.yaml"
ip netns exec "$(ns_node)" "$DSPROXY_BIN" run --config "$BENCH_TMP/cluster.yaml" --node "$BENCH_NODE_NAME" \
  --redirect >"$BENCH_TMP/dsproxy.log" 2>&1 &
DSPROXY_PID=$!
ready=0
for ((i = 0; i < 100; i++)); do
  kill -0 "$DSPROXY_PID" 2>/dev/null || die "dsproxy exited at start (log $BENCH_TMP/dsproxy.log)"
  if in_node timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/15021 && printf "GET /healthz/ready HTTP/1.0\r\n\r\n" >&3 && head -n 1 <&3' 2>/dev/null |
    grep -q ' 200'; then
    ready=1
    break
  fi
  sleep 0.1
done
((ready)) || die "dsproxy not ready after 10 s (log $BENCH_TMP/dsproxy.log)"

# Members of the injected Services k = 1..count-1 (the bench Service is the first one), as
# dsproxy renders them: ClusterIP 10.(100+k/65536).(k/256%256).(k%256) and fd00:10:97::<k>,
# open ports 80 and 443.
members() {
  awk -v verb="$1" -v count="$2" 'BEGIN {
    for (k = 1; k < count; k++) {
      v4 = sprintf("10.%d.%d.%d", 100 + int(k / 65536), int(k / 256) % 256, k % 256)
      v6 = sprintf("fd00:10:97::%x", k)
      printf "%s DSPROXY_OPEN4 %s,tcp:80\n%s DSPROXY_OPEN4 %s,tcp:443\n%s DSPROXY_VIPS4 %s\n", verb, v4, verb, v4, verb, v4
      printf "%s DSPROXY_OPEN6 %s,tcp:80\n%s DSPROXY_OPEN6 %s,tcp:443\n%s DSPROXY_VIPS6 %s\n", verb, v6, verb, v6, verb, v6
    }
  }'
}
members add 10 >"$BENCH_TMP/add-10"
members del 10 >"$BENCH_TMP/del-10"
members add "$SERVICES" >"$BENCH_TMP/add-n"
members del "$SERVICES" >"$BENCH_TMP/del-n"
# The old shape, per family: 3 rules per ClusterIP in a chain every SYN to the node walks.
old_rules() {
  awk -v family="$1" -v count="$SERVICES" 'BEGIN {
    print "*filter"
    print ":DSPXB_OLD - [0:0]"
    for (k = 1; k < count; k++) {
      if (family == 4) vip = sprintf("10.%d.%d.%d/32", 100 + int(k / 65536), int(k / 256) % 256, k % 256)
      else vip = sprintf("fd00:10:97::%x/128", k)
      printf "-A DSPXB_OLD -d %s -p tcp -m tcp --dport 80 -j RETURN\n", vip
      printf "-A DSPXB_OLD -d %s -p tcp -m tcp --dport 443 -j RETURN\n", vip
      printf "-A DSPXB_OLD -d %s -p tcp -j REJECT --reject-with tcp-reset\n", vip
    }
    print "COMMIT"
  }'
}
old_rules 4 >"$BENCH_TMP/old4"
old_rules 6 >"$BENCH_TMP/old6"

# set_state 10|n|old
set_state() {
  in_node ipset -exist restore <"$BENCH_TMP/del-n" || die "ipset del failed"
  in_node iptables -w -D INPUT -p tcp -m tcp --syn -j DSPXB_OLD 2>/dev/null
  in_node ip6tables -w -D INPUT -p tcp -m tcp --syn -j DSPXB_OLD 2>/dev/null
  in_node iptables -w -F DSPXB_OLD 2>/dev/null && in_node iptables -w -X DSPXB_OLD
  in_node ip6tables -w -F DSPXB_OLD 2>/dev/null && in_node ip6tables -w -X DSPXB_OLD
  case $1 in
    10) in_node ipset -exist restore <"$BENCH_TMP/add-10" || die "ipset add failed" ;;
    n) in_node ipset -exist restore <"$BENCH_TMP/add-n" || die "ipset add failed" ;;
    old)
      in_node ipset -exist restore <"$BENCH_TMP/add-10" || die "ipset add failed"
      in_node iptables-restore -w --noflush <"$BENCH_TMP/old4" || die "old rules (IPv4) failed"
      in_node ip6tables-restore -w --noflush <"$BENCH_TMP/old6" || die "old rules (IPv6) failed"
      in_node iptables -w -I INPUT 1 -p tcp -m tcp --syn -j DSPXB_OLD || die "old jump failed"
      in_node ip6tables -w -I INPUT 1 -p tcp -m tcp --syn -j DSPXB_OLD || die "old jump failed"
      ;;
  esac
}

# measure FAMILY: one bench_load conn run through the ClusterIP; prints "p50 p99 ops errors".
measure() {
  local vip=$VIP4 res
  [[ $1 == 6 ]] && vip=$VIP6
  res=$(in_client timeout $((SECONDS_PER + 30)) "$BENCH_LOAD" conn --addr "$vip" --port "$ECHO_PORT" \
    --seconds "$SECONDS_PER" --threads 1 2>>"$BENCH_TMP/load.err" | tail -n 1)
  jq -r '"\(.p50_us) \(.p99_us) \(.ops) \(.errors)"' <<<"$res" 2>/dev/null || echo "0 0 0 1"
}

states=(10 n old)
declare -A p50s=() p99s=() opss=() errs=()
for ((r = 0; r < ROUNDS; r++)); do
  for ((s = 0; s < ${#states[@]}; s++)); do
    state=${states[$(((s + r) % ${#states[@]}))]}
    set_state "$state"
    for family in 4 6; do
      in_client timeout 10 "$BENCH_LOAD" conn --addr "$([[ $family == 4 ]] && echo "$VIP4" || echo "$VIP6")" \
        --port "$ECHO_PORT" --seconds 1 --threads 1 >/dev/null 2>&1 # warm-up
      read -r p50 p99 ops err < <(measure "$family")
      log "round $((r + 1)) state $state IPv$family: p50 $p50 us, p99 $p99 us ($ops connections, $err errors)"
      p50s[$state.$family]+="$p50 "
      p99s[$state.$family]+="$p99 "
      opss[$state.$family]=$((${opss[$state.$family]:-0} + ops))
      errs[$state.$family]=$((${errs[$state.$family]:-0} + err))
    done
  done
done
set_state 10
members4=$(in_node ipset list DSPROXY_VIPS4 -t | awk -F': ' '/Number of entries/ { print $2 }')

echo
echo "## Connect + 64 B echo + close through a captured ClusterIP (bench_load conn, 1 thread, ${SECONDS_PER} s x $ROUNDS rounds; median of the rounds' p50 / p99)"
echo
echo "| node state | family | p50 µs | p99 µs | vs 10 Services (p50 / p99) | connections | errors |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for family in 4 6; do
  base50=$(median <<<"${p50s[10.$family]}")
  base99=$(median <<<"${p99s[10.$family]}")
  for state in 10 n old; do
    m50=$(median <<<"${p50s[$state.$family]}")
    m99=$(median <<<"${p99s[$state.$family]}")
    case $state in
      10) label="10 Services (sets)" ;;
      n) label="$SERVICES Services (sets)" ;;
      old) label="$SERVICES Services (old: one rule per ClusterIP:port)" ;;
    esac
    printf '| %s | IPv%s | %.0f | %.0f | %+.1f %% / %+.1f %% | %s | %s |\n' "$label" "$family" "$m50" "$m99" \
      "$(awk -v a="$m50" -v b="$base50" 'BEGIN { print b ? 100 * (a - b) / b : 0 }')" \
      "$(awk -v a="$m99" -v b="$base99" 'BEGIN { print b ? 100 * (a - b) / b : 0 }')" \
      "${opss[$state.$family]}" "${errs[$state.$family]}"
  done
done
echo
echo "(10-Service state: DSPROXY_VIPS4 holds $members4 members; rounds per state: ${p50s[n.4]})"

# ---- update timing: the daemon's code path, in a namespace of its own ------------------------
ip netns add "$RULES_NS" || die "cannot create $RULES_NS"
ip -n "$RULES_NS" link set lo up
echo
echo "## Refusal-set updates with $SERVICES dual-stack Services (dsproxy_rules_update: VipRefusals + ProcessRunner)"
echo
result=$(ip netns exec "$RULES_NS" "$BENCH_TMP/dsproxy_rules_update" --services "$SERVICES" --rounds 9) ||
  die "dsproxy_rules_update failed"
jq -r '"| what | apply (whole list, diffed): ms | apply_changes (the change only): ms |\n| --- | --- | --- |\n| install (\(.clusterips) ClusterIPs, \(.open_ports) open ports, fill + swap) | \(.install_ms) | |\n| close one port (median / max of \(.rounds)) | \(.close_one_port.median_ms) / \(.close_one_port.max_ms) | \(.changes.close_one_port.median_ms) / \(.changes.close_one_port.max_ms) |\n| open one port | \(.open_one_port.median_ms) / \(.open_one_port.max_ms) | \(.changes.open_one_port.median_ms) / \(.changes.open_one_port.max_ms) |\n| add one Service | \(.add_one_service.median_ms) / \(.add_one_service.max_ms) | \(.changes.add_one_service.median_ms) / \(.changes.add_one_service.max_ms) |\n| remove one Service | \(.remove_one_service.median_ms) / \(.remove_one_service.max_ms) | \(.changes.remove_one_service.median_ms) / \(.changes.remove_one_service.max_ms) |\n| uninstall | \(.uninstall_ms) | |"' <<<"$result"
echo
echo "dsproxy's own share (the same, with a runner that runs nothing: diffing and formatting only):"
echo
result=$("$BENCH_TMP/dsproxy_rules_update" --services "$SERVICES" --rounds 9 --no-kernel) ||
  die "dsproxy_rules_update --no-kernel failed"
jq -r '"| one-Service change (median of \(.rounds)) | apply: ms | apply_changes: ms |\n| --- | --- | --- |\n| close one port | \(.close_one_port.median_ms) | \(.changes.close_one_port.median_ms) |\n| open one port | \(.open_one_port.median_ms) | \(.changes.open_one_port.median_ms) |\n| add one Service | \(.add_one_service.median_ms) | \(.changes.add_one_service.median_ms) |\n| remove one Service | \(.remove_one_service.median_ms) | \(.changes.remove_one_service.median_ms) |"' <<<"$result"
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
