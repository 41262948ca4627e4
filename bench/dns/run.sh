#!/usr/bin/env bash
# DNS benchmark: dsproxy's DNS proxy answering cluster names from its model, against dnsmasq
# answering the same names from a hosts file, in one run, with the same dnsperf load. Also the
# forwarded path: an outside name dsproxy gets from dnsmasq once and then serves from its cache.
#
#   bench/dns/run.sh BUILD_DIR [SECONDS]      (root; default 10 s per target)
#
# Everything runs in a network namespace of its own with only lo (no route anywhere); the
# namespace and the processes are removed on exit, also on failure. Prints queries per second,
# mean and p99 latency per target (p99 from dnsperf -v's per-query latencies).
set -uo pipefail

if (($# < 1)); then
  echo "usage: $0 BUILD_DIR [SECONDS]" >&2
  exit 2
fi
build=$(cd -- "$1" && pwd)
seconds=${2:-10}
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
[[ $(id -u) == 0 ]] || { echo "bench: must run as root (network namespace)" >&2; exit 1; }
for cmd in dnsperf dnsmasq ip awk; do
  command -v "$cmd" >/dev/null || { echo "bench: $cmd missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[[ -x $build/dsproxy ]] || { echo "bench: $build/dsproxy not built" >&2; exit 1; }

ns="dspxbench$$-dns"
tmp=$(mktemp -d "/tmp/$ns.XXXXXX")
pids=()
cleanup() {
  local pid i
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  ip netns del "$ns" 2>/dev/null
  if [[ -n ${BENCH_KEEP:-} ]]; then echo "bench: outputs kept in $tmp" >&2; else rm -rf -- "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$ns" || exit 1
ip -n "$ns" link set lo up || exit 1

# The same answers from both servers: every name of the experiment, A and AAAA as the Service
# families allow (dnsmasq gives NODATA for a family the hosts file lacks, as dsproxy does).
cat >"$tmp/hosts" <<'HOSTS'
10.96.106.11 tcp-echo.dual-stack.svc.cluster.local
fd00:10:96::f9fc tcp-echo.dual-stack.svc.cluster.local
10.96.104.229 tcp-echo.ipv4.svc.cluster.local
fd00:10:96::9c3a tcp-echo.ipv6.svc.cluster.local
10.96.200.10 sleep.default.svc.cluster.local
198.51.100.7 www.outside.test
HOSTS
cat >"$tmp/cluster.queries" <<'Q'
tcp-echo.dual-stack.svc.cluster.local A
tcp-echo.dual-stack.svc.cluster.local AAAA
tcp-echo.ipv4.svc.cluster.local A
tcp-echo.ipv4.svc.cluster.local AAAA
tcp-echo.ipv6.svc.cluster.local A
tcp-echo.ipv6.svc.cluster.local AAAA
sleep.default.svc.cluster.local A
sleep.default.svc.cluster.local AAAA
Q
echo "www.outside.test A" >"$tmp/outside.queries"

ip netns exec "$ns" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-poll \
  --user=root --pid-file= --bind-interfaces --listen-address=127.0.0.1 --port=5353 \
  --addn-hosts="$tmp/hosts" --local=/cluster.local/ --local=/outside.test/ --local-ttl=30 \
  >"$tmp/dnsmasq.log" 2>&1 &
pids+=("$!")
ip netns exec "$ns" "$build/dsproxy" --log-level warn run --config "$repo/config/tcp-echo-experiment.yaml" \
  --node kind-worker --dns-upstream 127.0.0.1:5353 >"$tmp/dsproxy.log" 2>&1 &
pids+=("$!")

# Both ready: a bounded wait for an answer from each.
ready() { ip netns exec "$ns" dnsperf -s 127.0.0.1 -p "$1" -d "$tmp/cluster.queries" -n 1 -t 1 2>/dev/null | grep -q "Queries completed: *8 "; }
for port in 5353 15053; do
  for ((i = 0; i < 50; i++)); do ready "$port" && break; sleep 0.1; done
  ((i < 50)) || { echo "bench: nothing answers on port $port" >&2; cat "$tmp/dsproxy.log" "$tmp/dnsmasq.log" >&2; exit 1; }
done

# run NAME PORT QUERIES: dnsperf for $seconds with 8 clients and up to 100 queries in flight.
run() {
  local name=$1 port=$2 queries=$3 out
  out="$tmp/$(tr -c 'a-z0-9\n' '_' <<<"$name").out"
  ip netns exec "$ns" timeout $((seconds + 30)) dnsperf -s 127.0.0.1 -p "$port" -d "$queries" -l "$seconds" \
    -c 8 -q 100 -t 2 -v >"$out" 2>&1
  # dnsperf -v prints one line per answered query: "> RCODE name type latency-seconds".
  grep '^> ' "$out" | awk '{ print $NF }' | sort -g >"$out.lat"
  local n qps lost bad mean p50 p99
  n=$(wc -l <"$out.lat")
  qps=$(awk '/Queries per second:/ { print $4 }' "$out")
  lost=$(awk '/Queries lost:/ { print $3 }' "$out")
  bad=$(grep '^> ' "$out" | grep -vc '^> NOERROR ')
  mean=$(awk '{ s += $1 } END { printf "%.1f", NR ? s / NR * 1e6 : 0 }' "$out.lat")
  p50=$(awk -v k=$(((n + 1) / 2)) 'NR == k { printf "%.1f", $1 * 1e6 }' "$out.lat")
  p99=$(awk -v k=$(((n * 99 + 99) / 100)) 'NR == k { printf "%.1f", $1 * 1e6 }' "$out.lat")
  printf "%-34s %12.0f %10s %10s %10s %8s %6s\n" "$name" "${qps:-0}" "$mean" "$p50" "$p99" "${lost:-?}" "$bad"
}

echo "dnsperf: ${seconds} s per target, 8 clients, 100 queries in flight, UDP on 127.0.0.1 (one namespace, 2 cores shared)"
printf "%-34s %12s %10s %10s %10s %8s %6s\n" target "queries/s" "mean us" "p50 us" "p99 us" lost "!NOERR"
run "dsproxy: cluster names (model)" 15053 "$tmp/cluster.queries"
run "dnsmasq: same names (hosts file)" 5353 "$tmp/cluster.queries"
run "dsproxy: outside name (cache)" 15053 "$tmp/outside.queries"
