#!/usr/bin/env bash
# Do DNS and readiness keep answering while a big config is reloaded? (issue 13: "within 10 ms p99
# while a 100,000-endpoint config is being reloaded (parse and rebuild off their thread)".)
#
# For each file: `dsproxy run --config FILE --workers 2` in a network namespace of its own (no
# --redirect: nothing outside the namespace is touched), and bench/tools/latency_probe.py asking,
# in turn, one DNS question (UDP, a cluster name, to 127.0.0.1:15053) and one readiness probe (a
# new TCP connection, GET /healthz/ready on 127.0.0.1:15021) every 5 ms. After a quiet baseline,
# the file is reloaded --reloads times (one Service port changed, written beside the file and
# renamed over it, as `kubectl ... > tmp && mv` does; each time until dsproxy's log says the new
# snapshot is live). Printed per file: the reload time (rename to live, including up to one 1 s
# poll), and for DNS and readiness the number of probes, p50, p99, the slowest and the failures,
# during the reloads and in the baseline.
# Not a test: it prints numbers and asserts nothing about them. On a machine shared with other
# work (builds, other benchmarks) the tails grow with the load; say what else ran.
#
#   sudo bash bench/reload_latency.sh [--dsproxy BIN] [--dir DIR] [--reloads N] [--timeout S] [FILE...]
#
# Without FILE, issue 10's 10,000 Services with 100,000 endpoints are generated with
# bench/tools/gen_cluster.py into DIR (default: a temporary directory; with --dir they are kept
# and reused), as JSON (104 MB) and as YAML (47 MB, whose decode takes about ten times longer:
# the longer window). Needs root, curl and python3. dsproxy, the probe and everything the script
# creates are removed on exit, also on failure or Ctrl-C.

set -uo pipefail

BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=reload_latency
# shellcheck source=bench/lib/common.sh
source "$BENCH_DIR/lib/common.sh"
DSPROXY=${DSPROXY_BIN:-$REPO_DIR/build/dsproxy}
DIR=""
TIMEOUT=300
RELOADS=3
FILES=()
while (($#)); do
  case $1 in
    --dsproxy) DSPROXY=$2; shift ;;
    --dir) DIR=$2; shift ;;
    --reloads) RELOADS=$2; shift ;;
    --timeout) TIMEOUT=$2; shift ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) echo "reload_latency: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) FILES+=("$1") ;;
  esac
  shift
done
require_root "a network namespace per run"
[[ -x $DSPROXY ]] || die "no dsproxy binary at $DSPROXY (build it, or pass --dsproxy)"
command -v curl >/dev/null || die "curl is needed (readiness)"
command -v python3 >/dev/null || die "python3 is needed (the probe)"
((TIMEOUT >= 10 && TIMEOUT <= 3600)) || die "--timeout must be 10-3600"
((RELOADS >= 1 && RELOADS <= 20)) || die "--reloads must be 1-20"

NS=dspxrl$$
WORK=$(mktemp -d /tmp/dsproxy-reload-latency.XXXXXX)
PID=""
PROBE_PID=""
cleanup() {
  if [[ -n $PROBE_PID ]]; then
    kill "$PROBE_PID" 2>/dev/null
    wait "$PROBE_PID" 2>/dev/null
  fi
  PROBE_PID=""
  if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
  fi
  PID=""
  ip netns del "$NS" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ((${#FILES[@]} == 0)); then
  [[ -n $DIR ]] || DIR=$WORK/clusters
  mkdir -p "$DIR" || die "cannot create $DIR"
  gen() {
    local out=$DIR/$1
    shift
    if [[ ! -s $out ]]; then
      log "generating $out (gen_cluster.py $*)"
      python3 "$BENCH_DIR/tools/gen_cluster.py" "$@" -o "$out.tmp" || die "gen_cluster.py failed"
      mv "$out.tmp" "$out" || die "cannot write $out"
    fi
    FILES+=("$out")
  }
  gen services10k-endpoints100k.json --services 10000 --endpoints-per-slice 5 --format json
  gen services10k-endpoints100k.yaml --services 10000 --endpoints-per-slice 5 --format yaml
fi

in_ns() { ip netns exec "$NS" "$@"; }
ready_code() { in_ns curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:15021/healthz/ready; }
# Seconds since the epoch (with ms) of a log line's timestamp (2026-12-07T16:19:36.461Z).
line_s() { date -u -d "$(cut -d' ' -f1 <<<"$1" | sed 's/Z$//; s/T/ /')" +%s.%3N; }

# stats SAMPLES WINDOWS KIND: "count p50 p99 max failures" of KIND's probes that started inside one
# of the windows (lines "from to", seconds), or outside all of them with KIND prefixed by "!".
stats() {
  python3 - "$1" "$2" "$3" <<'EOF'
import sys
samples, windows, kind = sys.argv[1], sys.argv[2], sys.argv[3]
outside = kind.startswith("!")
kind = kind.lstrip("!")
spans = [tuple(map(float, l.split())) for l in open(windows) if l.strip()]
lat, fails = [], 0
for line in open(samples):
    parts = line.split()
    if len(parts) != 4 or parts[1] != kind:
        continue
    t = float(parts[0])
    inside = any(a <= t <= b for a, b in spans)
    if inside == outside:
        continue
    lat.append(float(parts[2]))
    fails += parts[3] != "ok"
lat.sort()
def pct(p):
    return lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))] if lat else float("nan")
print("%d %.1f %.1f %.1f %d" % (len(lat), pct(50), pct(99), lat[-1] if lat else float("nan"), fails))
EOF
}

measure() {
  local file=$1 name copy logf samples windows
  name=$(basename "$file")
  copy=$WORK/$name
  logf=$WORK/$name.log
  samples=$WORK/$name.samples
  windows=$WORK/$name.windows
  : >"$windows"
  cp "$file" "$copy" || die "cannot copy $file"
  ip netns add "$NS" || die "cannot create network namespace $NS"
  in_ns ip link set lo up

  # `ip netns exec` execs the command: $! is dsproxy itself.
  ip netns exec "$NS" "$DSPROXY" run --config "$copy" --node node-0 --workers 2 \
    --dns-upstream 127.0.0.1:9 >"$logf" 2>&1 &
  PID=$!
  local code="" deadline=$(($(date +%s) + TIMEOUT))
  while (($(date +%s) < deadline)); do
    kill -0 "$PID" 2>/dev/null || { cat "$logf" >&2; die "dsproxy exited before ready on $name"; }
    code=$(ready_code)
    [[ $code == 200 ]] && break
    sleep 0.2
  done
  [[ $code == 200 ]] || die "$name: not ready within ${TIMEOUT}s"

  ip netns exec "$NS" python3 "$BENCH_DIR/tools/latency_probe.py" --seconds "$TIMEOUT" >"$samples" &
  PROBE_PID=$!
  sleep 3 # the baseline

  local r reloads_before mv_s done_line done_s totals="" port_from=9000 port_to=9001
  for ((r = 1; r <= RELOADS; r++)); do
    reloads_before=$(grep -c 'config reloaded' "$logf")
    # Every other reload puts the port back: each one is a real change.
    sed -E "0,/(\"?port\"?: )$port_from\\b/s//\\1$port_to/" "$copy" >"$copy.new" || die "cannot write $copy.new"
    cmp -s "$copy" "$copy.new" && die "$name: no port $port_from to change for the reload"
    mv_s=$(date +%s.%3N)
    mv "$copy.new" "$copy"
    deadline=$(($(date +%s) + TIMEOUT))
    while (($(grep -c 'config reloaded' "$logf") <= reloads_before)) && (($(date +%s) < deadline)); do
      kill -0 "$PID" 2>/dev/null || { cat "$logf" >&2; die "dsproxy exited during the reload of $name"; }
      grep -q 'config reload.*failed' "$logf" && { cat "$logf" >&2; die "the reload of $name failed"; }
      sleep 0.05
    done
    (($(grep -c 'config reloaded' "$logf") > reloads_before)) || die "$name: no reload within ${TIMEOUT}s"
    done_line=$(grep 'config reloaded' "$logf" | tail -n 1)
    done_s=$(line_s "$done_line")
    echo "$mv_s $done_s" >>"$windows"
    totals+="$(awk -v a="$mv_s" -v b="$done_s" 'BEGIN { printf "%.0f", (b - a) * 1000 }') "
    local t=$port_from
    port_from=$port_to
    port_to=$t
    sleep 1 # between reloads: more baseline
  done
  kill "$PROBE_PID" 2>/dev/null
  wait "$PROBE_PID" 2>/dev/null
  PROBE_PID=""

  local d_dns d_ready b_dns b_ready
  d_dns=$(stats "$samples" "$windows" dns)
  d_ready=$(stats "$samples" "$windows" ready)
  b_dns=$(stats "$samples" "$windows" '!dns')
  b_ready=$(stats "$samples" "$windows" '!ready')
  row() { # LABEL "count p50 p99 max fails"
    # shellcheck disable=SC2086 # split on purpose
    set -- "$1" $2
    printf '  %-28s %7s %8s %8s %8s %6s\n' "$1" "$2" "$3" "$4" "$5" "$6"
  }
  echo "$name ($(awk -v b="$(stat -c %s "$file")" 'BEGIN { printf "%.0f", b / 1e6 }') MB): $RELOADS reload(s), rename to live: ${totals% } ms"
  printf '  %-28s %7s %8s %8s %8s %6s\n' "" probes "p50 ms" "p99 ms" "max ms" fails
  row "DNS during the reloads" "$d_dns"
  row "readiness during the reloads" "$d_ready"
  row "DNS otherwise" "$b_dns"
  row "readiness otherwise" "$b_ready"

  kill -TERM "$PID" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PID" 2>/dev/null
  wait "$PID" 2>/dev/null
  PID=""
  ip netns del "$NS"
  rm -f "$copy" "$copy.new"
}

log "dsproxy: $DSPROXY; $(nproc) CPU(s), load $(cut -d' ' -f1-3 /proc/loadavg)"
for f in "${FILES[@]}"; do
  [[ -r $f ]] || die "cannot read $f"
  measure "$f"
done
log "done; load $(cut -d' ' -f1-3 /proc/loadavg) (a busy machine grows the tails)"
