#!/usr/bin/env bash
# What a large config file costs dsproxy (issue 10: "the same memory diet applies to the file
# source"): for each file, `dsproxy run --config FILE` (no --redirect: no capture rules, nothing
# outside a network namespace of its own) and
#   ready     seconds from the start to `GET :15021/healthz/ready` answering 200
#   rss/hwm   VmRSS and VmHWM (peak RSS) once ready, and again after one reload
#   cpu       user+system CPU seconds of the process once ready
#   reload    one Service port changed in a copy renamed over the file (as `kubectl ... > tmp &&
#             mv` does): from the rename to the new snapshot live (dsproxy's log; includes up to
#             one poll interval, 1 s), of which the file source's read (hash + decode, if its log
#             line says) and the snapshot build+publish; the CPU seconds the reload cost; RSS/HWM
#             after it; and the slowest readiness answer while it reloaded
# On a machine shared with other work, wall times grow with the load; CPU seconds and RSS do not
# (much), so compare those.
# Not a test: it prints numbers and asserts nothing about them.
#
#   sudo bash bench/file_source_scale.sh [--dsproxy BIN] [--dir DIR] [--timeout S] [FILE...]
#
# Without FILE, the three files of issue 10 are generated with bench/tools/gen_cluster.py into
# DIR (default: a temporary directory; with --dir they are kept and reused): 10,000 Services with
# 100,000 endpoints as JSON (104 MB) and as YAML (47 MB), and 20,000 Services with 30,000 slices as
# YAML. FILE is any file `dsproxy run --config` takes whose cluster has a Node or pods for
# `--node node-0` (gen_cluster's do). --timeout bounds each wait (readiness, reload; default
# 300 s). Needs root (a network namespace per run, so the default ports collide with nothing),
# curl and python3. dsproxy and everything the script creates are removed on exit, also on
# failure or Ctrl-C.

set -uo pipefail

BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=file_source_scale
# shellcheck source=bench/lib/common.sh
source "$BENCH_DIR/lib/common.sh"
DSPROXY=${DSPROXY_BIN:-$REPO_DIR/build/dsproxy}
DIR=""
TIMEOUT=300
FILES=()
while (($#)); do
  case $1 in
    --dsproxy) DSPROXY=$2; shift ;;
    --dir) DIR=$2; shift ;;
    --timeout) TIMEOUT=$2; shift ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) echo "file_source_scale: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) FILES+=("$1") ;;
  esac
  shift
done
require_root "a network namespace per run"
[[ -x $DSPROXY ]] || die "no dsproxy binary at $DSPROXY (build it, or pass --dsproxy)"
command -v curl >/dev/null || die "curl is needed (readiness probes)"
((TIMEOUT >= 10 && TIMEOUT <= 3600)) || die "--timeout must be 10-3600"

NS=dspxfs$$
WORK=$(mktemp -d /tmp/dsproxy-file-source-scale.XXXXXX)
PID=""
PROBE_PID=""
cleanup() {
  [[ -n $PROBE_PID ]] && kill "$PROBE_PID" 2>/dev/null && wait "$PROBE_PID" 2>/dev/null
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
  command -v python3 >/dev/null || die "python3 is needed to generate the clusters"
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
  gen services20k-slices30k.yaml --services 20000 --single-stack 10000 --endpoints-per-slice 2 --format yaml
fi

in_ns() { ip netns exec "$NS" "$@"; }
ready_code() { in_ns curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:15021/healthz/ready; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
cpu_s() { awk -v hz="$CLK_TCK" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$1/stat"; }
mb() { awk -v kb="$1" 'BEGIN { printf "%.0f", kb / 1024 }'; }
# Milliseconds since the epoch of a log line's timestamp (2026-12-07T16:19:36.461Z).
line_ms() { date -u -d "$(cut -d' ' -f1 <<<"$1" | sed 's/Z$//; s/T/ /')" +%s%3N; }

measure() {
  local file=$1 name copy logf
  name=$(basename "$file")
  copy=$WORK/$name
  logf=$WORK/$name.log
  cp "$file" "$copy" || die "cannot copy $file"
  ip netns add "$NS" || die "cannot create network namespace $NS"
  in_ns ip link set lo up

  local start end
  start=$(date +%s%3N)
  # `ip netns exec` execs the command: $! is dsproxy itself.
  ip netns exec "$NS" "$DSPROXY" run --config "$copy" --node node-0 --dns-upstream 127.0.0.1:9 >"$logf" 2>&1 &
  PID=$!
  local code="" deadline=$((start + TIMEOUT * 1000))
  while (($(date +%s%3N) < deadline)); do
    kill -0 "$PID" 2>/dev/null || { cat "$logf" >&2; die "dsproxy exited before ready on $name"; }
    code=$(ready_code)
    [[ $code == 200 ]] && break
    sleep 0.1
  done
  [[ $code == 200 ]] || die "$name: not ready within ${TIMEOUT}s"
  end=$(date +%s%3N)
  local ready_s rss hwm cpu first_read
  ready_s=$(awk -v ms=$((end - start)) 'BEGIN { printf "%.1f", ms / 1000 }')
  rss=$(status_kb "$PID" VmRSS)
  hwm=$(status_kb "$PID" VmHWM)
  cpu=$(cpu_s "$PID")
  first_read=-
  [[ $(grep -m1 'config file read (start)' "$logf") =~ \ in\ ([0-9]+)\ ms ]] && first_read=${BASH_REMATCH[1]}

  # One reload: the first port 9000 becomes 9001, written beside the file and renamed over it.
  local before_reloads
  before_reloads=$(grep -c 'config reloaded' "$logf")
  sed -E '0,/("?port"?: )9000\b/s//\19001/' "$copy" >"$copy.new" || die "cannot write $copy.new"
  cmp -s "$copy" "$copy.new" && die "$name: no port 9000 to change for the reload"
  # Readiness probed every 100 ms while the reload runs: its slowest answer (or a timeout).
  (
    worst=0
    while :; do
      t=$(in_ns curl -s -o /dev/null -w '%{time_total}' --max-time 5 http://127.0.0.1:15021/healthz/ready || echo 5)
      worst=$(awk -v a="$worst" -v b="$t" 'BEGIN { print (b > a) ? b : a }')
      echo "$worst" >"$WORK/probe"
      sleep 0.1
    done
  ) &
  PROBE_PID=$!
  local mv_ms cpu_before
  cpu_before=$(cpu_s "$PID")
  mv_ms=$(date +%s%3N)
  mv "$copy.new" "$copy"
  deadline=$(($(date +%s%3N) + TIMEOUT * 1000))
  while (($(grep -c 'config reloaded' "$logf") <= before_reloads)) && (($(date +%s%3N) < deadline)); do
    kill -0 "$PID" 2>/dev/null || { cat "$logf" >&2; die "dsproxy exited during the reload of $name"; }
    grep -q 'config reload.*failed' "$logf" && { cat "$logf" >&2; die "the reload of $name failed"; }
    sleep 0.2
  done
  sleep 0.3
  kill "$PROBE_PID" 2>/dev/null
  wait "$PROBE_PID" 2>/dev/null
  PROBE_PID=""
  (($(grep -c 'config reloaded' "$logf") > before_reloads)) || die "$name: no reload within ${TIMEOUT}s"
  local read_line done_line read_ms build_ms total_ms reload_cpu rss2 hwm2 probe_ms
  read_line=$(grep 'config file read (file changed)' "$logf" | tail -n 1)
  done_line=$(grep 'config reloaded' "$logf" | tail -n 1)
  total_ms=$(($(line_ms "$done_line") - mv_ms))
  reload_cpu=$(awk -v a="$cpu_before" -v b="$(cpu_s "$PID")" 'BEGIN { printf "%.1f", b - a }')
  # Older builds log the read without its time: then only the total is known.
  read_ms=-
  build_ms=-
  if [[ $read_line =~ \ in\ ([0-9]+)\ ms ]]; then
    read_ms=${BASH_REMATCH[1]}
    build_ms=$(($(line_ms "$done_line") - $(line_ms "$read_line")))
  fi
  rss2=$(status_kb "$PID" VmRSS)
  hwm2=$(status_kb "$PID" VmHWM)
  probe_ms=$(awk -v s="$(cat "$WORK/probe" 2>/dev/null || echo 0)" 'BEGIN { printf "%.0f", s * 1000 }')
  printf '%-34s %4s %6s %6s %5s/%-5s %5s | %6s %6s %6s %5s %5s/%-5s %5s\n' \
    "$name" "$(awk -v b="$(stat -c %s "$file")" 'BEGIN { printf "%.0f", b / 1e6 }')" "$ready_s" "$first_read" \
    "$(mb "$rss")" "$(mb "$hwm")" "$cpu" "$total_ms" "$read_ms" "$build_ms" "$reload_cpu" "$(mb "$rss2")" \
    "$(mb "$hwm2")" "$probe_ms"

  kill -TERM "$PID" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PID" 2>/dev/null
  wait "$PID" 2>/dev/null
  PID=""
  ip netns del "$NS"
  rm -f "$copy" "$copy.new"
}

log "dsproxy: $DSPROXY ($("$DSPROXY" --version 2>/dev/null || echo '?')); $(nproc) CPU(s), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-34s %4s %6s %6s %11s %5s | %6s %6s %6s %5s %11s %5s\n' "" MB "ready" "read" "RSS/HWM" CPU \
  reload "read" build CPU "RSS/HWM" probe
printf '%-34s %4s %6s %6s %11s %5s | %6s %6s %6s %5s %11s %5s\n' file size s ms MB s ms ms ms s MB ms
for f in "${FILES[@]}"; do
  [[ -r $f ]] || die "cannot read $f"
  measure "$f"
done
log "done; load $(cut -d' ' -f1-3 /proc/loadavg) (on a busy machine the wall times grow, the CPU and RSS figures less)"
