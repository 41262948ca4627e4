#!/usr/bin/env bash
# Issue 10's scale figures fed through the watch, next to the same figures for the file source:
# a synthetic dual-stack cluster (bench/tools/gen_cluster.py: 10,000 Services, an IPv4 and an
# IPv6 EndpointSlice of 5 endpoints each = 100,000 endpoints, ~100 pods on this node) through
# the daemon's own control plane (dsproxy_watch_scale: ControlPlane + KubernetesSource or
# FileSource + SnapshotStore, no rules, no data path). Not a test: it prints numbers and asserts
# nothing about them. Targets (issue 10): initial sync <= 5 s, RSS <= 150 MB, one event live
# <= 10 ms p99 over 1,000 events.
#
#   bash bench/watch_scale.sh [--services N] [--events E] [--event-budget S] [--file-events F]
#                             [--poll-ms MS] [--max-seconds T]
#
# 1. kubernetes: the fake API server (tests/tools/fake_apiserver) runs as a child process loaded
#    with the cluster (--objects), so its memory is not in the measured process; the tool syncs
#    through LIST+WATCH, then sends E EndpointSlice upserts (one endpoint's ready flipped, random
#    slices) one at a time over the fake's control port and times each until the store has it.
# 2. file: the tool's FileSource reads a copy of the same JSON file (poll every MS, the daemon's
#    default --config-poll is 1000), then rewrites it F times (tmp + rename, one endpoint flipped)
#    and times each rename → publish (which includes up to one poll interval of waiting).
# Each event phase stops after its budget (S seconds for the watch, a third of it for the file)
# and reports how many events it timed. Everything is killed after T seconds (default 600).
# Needs no root. Builds dsproxy_watch_scale and dsproxy_fake_apiserver if missing.

set -uo pipefail

BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$BENCH_DIR/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$REPO_DIR/build}

SERVICES=10000
EVENTS=1000
EVENT_BUDGET=240
FILE_EVENTS=10
POLL_MS=1000
MAX_SECONDS=600
while (($#)); do
  case $1 in
    --services) SERVICES=$2; shift ;;
    --events) EVENTS=$2; shift ;;
    --event-budget) EVENT_BUDGET=$2; shift ;;
    --file-events) FILE_EVENTS=$2; shift ;;
    --poll-ms) POLL_MS=$2; shift ;;
    --max-seconds) MAX_SECONDS=$2; shift ;;
    *) echo "usage: $0 [--services N] [--events E] [--event-budget S] [--file-events F] [--poll-ms MS] [--max-seconds T]" >&2; exit 2 ;;
  esac
  shift
done

WORK=$(mktemp -d /tmp/watch_scale.XXXXXX)
FAKE_PID=
TOOL_PID=
cleanup() {
  trap - EXIT INT TERM
  [[ -n $TOOL_PID ]] && kill "$TOOL_PID" 2>/dev/null && wait "$TOOL_PID" 2>/dev/null
  [[ -n $FAKE_PID ]] && kill "$FAKE_PID" 2>/dev/null && wait "$FAKE_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "watch_scale.sh: interrupted" >&2; exit 130' INT TERM

remaining() {
  local left=$((MAX_SECONDS - SECONDS))
  if ((left <= 5)); then echo "watch_scale.sh: out of time (--max-seconds $MAX_SECONDS)" >&2; exit 1; fi
  echo "$left"
}

# Run in the background and wait, so the trap can kill it (a foreground child would hold the
# INT/TERM trap until it ends).
run_tool() {
  timeout --kill-after=5 "$(remaining)" "$BUILD_DIR/tests/dsproxy_watch_scale" "$@" \
    >"$WORK/out" 2>>"$WORK/tool.log" &
  TOOL_PID=$!
  wait "$TOOL_PID"
  local rc=$?
  TOOL_PID=
  grep '^RESULT' "$WORK/out" || { echo "watch_scale.sh: no result (exit $rc); log:" >&2; tail -20 "$WORK/tool.log" >&2; }
  return "$rc"
}

if [[ ! -x $BUILD_DIR/tests/dsproxy_watch_scale || ! -x $BUILD_DIR/tests/dsproxy_fake_apiserver ]]; then
  cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null || exit 1
  cmake --build "$BUILD_DIR" -j2 --target dsproxy_watch_scale dsproxy_fake_apiserver >/dev/null || exit 1
fi

# --nodes 500: the 50,000 pods spread over 500 nodes, so node-0 (this node) has 100.
python3 "$BENCH_DIR/tools/gen_cluster.py" --services "$SERVICES" --endpoints-per-slice 5 --nodes 500 \
  --format json -o "$WORK/cluster.json" || exit 1
echo "cluster: $SERVICES Services, $((SERVICES * 2)) EndpointSlices, $((SERVICES * 10)) endpoints;" \
  "$(du -m "$WORK/cluster.json" | cut -f1) MB of JSON (generated in ${SECONDS} s)"

# --- 1. through the watch ---
mkdir -p "$WORK/fake"
"$BUILD_DIR/tests/dsproxy_fake_apiserver" --dir "$WORK/fake" --objects "$WORK/cluster.json" \
  --history $((EVENTS + 1000)) >"$WORK/fake.log" 2>&1 &
FAKE_PID=$!
for ((i = 0; i < 1200; i++)); do
  [[ -s $WORK/fake/control_port ]] && break
  kill -0 "$FAKE_PID" 2>/dev/null || { echo "fake API server died:" >&2; cat "$WORK/fake.log" >&2; exit 1; }
  sleep 0.1
done
[[ -s $WORK/fake/control_port ]] || { echo "fake API server did not start in 120 s" >&2; exit 1; }
echo "fake API server: $(head -1 "$WORK/fake.log"); its RSS $(awk '/VmRSS/ {print int($2/1024) " MB"}' /proc/$FAKE_PID/status)"

WATCH=$(run_tool --source kubernetes --kubeconfig "$WORK/fake/kubeconfig" \
  --control-port "$(cat "$WORK/fake/control_port")" --objects "$WORK/cluster.json" \
  --events "$EVENTS" --budget-s "$EVENT_BUDGET")
kill "$FAKE_PID" 2>/dev/null; wait "$FAKE_PID" 2>/dev/null; FAKE_PID=

# --- 2. the file source, on the same cluster ---
cp "$WORK/cluster.json" "$WORK/file-source.json"
FILE=$(run_tool --source file --objects "$WORK/file-source.json" --poll-ms "$POLL_MS" \
  --events "$FILE_EVENTS" --budget-s $((EVENT_BUDGET / 3)))

field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
echo
echo "$WATCH"
echo "$FILE"
echo
printf '%-34s %16s %16s %10s\n' "" "API watch" "file (poll ${POLL_MS}ms)" "target"
printf '%-34s %16s %16s %10s\n' "service ports / local pods" \
  "$(field "$WATCH" service_ports)/$(field "$WATCH" local_pods)" "$(field "$FILE" service_ports)/$(field "$FILE" local_pods)" ""
printf '%-34s %16s %16s %10s\n' "initial sync (ms)" "$(field "$WATCH" sync_ms)" "$(field "$FILE" sync_ms)" "<= 5000"
printf '%-34s %16s %16s %10s\n' "VmRSS after sync (MB)" "$(field "$WATCH" rss_mb)" "$(field "$FILE" rss_mb)" "<= 150"
printf '%-34s %16s %16s %10s\n' "VmHWM after sync (MB)" "$(field "$WATCH" hwm_mb)" "$(field "$FILE" hwm_mb)" ""
printf '%-34s %16s %16s %10s\n' "events timed (timeouts)" \
  "$(field "$WATCH" events) ($(field "$WATCH" timeouts))" "$(field "$FILE" events) ($(field "$FILE" timeouts))" ""
for p in p50 p90 p99 max; do
  target=""; [[ $p == p99 ]] && target="<= 10"
  printf '%-34s %16s %16s %10s\n' "event -> live $p (ms)" "$(field "$WATCH" ${p}_ms)" "$(field "$FILE" ${p}_ms)" "$target"
done
