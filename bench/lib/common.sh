# shellcheck shell=bash
# What every bench script starts with, in one place (new scripts source it; older ones still
# carry their own copy): logging, dying, the bench tools' build, a process's CPU time, and the
# statistics the summaries print. Defines functions and variables only.
#
#   BENCH_NAME=my_bench; source "$BENCH_DIR/lib/common.sh"
#
# Expects BENCH_DIR (this directory's parent) to be set; sets REPO_DIR.

REPO_DIR=$(cd -- "$BENCH_DIR/.." && pwd)
BENCH_NAME=${BENCH_NAME:-bench}

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() {
  echo "$BENCH_NAME: $*" >&2
  exit 1
}
# shellcheck disable=SC2120 # the reason is optional
require_root() { [[ $(id -u) == 0 ]] || die "must run as root (${1:-network namespaces})"; }
require_commands() {
  local cmd
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || die "missing command $cmd (scripts/install-deps.sh)"
  done
}
# require_int NAME VALUE MIN MAX: an integer setting within bounds (every load is bounded).
require_int() {
  [[ $2 =~ ^[0-9]+$ ]] && (($2 >= $3 && $2 <= $4)) || die "$1 must be an integer in $3-$4 (got '$2')"
}

# build_bench_tools [TARGET...]: bench/'s own project (bench_load, bench_echo, ...) into
# BENCH_BUILD_DIR (default build-bench/), a project apart from dsproxy's build.
BENCH_BUILD_DIR=${BENCH_BUILD_DIR:-$REPO_DIR/build-bench}
# shellcheck disable=SC2120 # no TARGET: all of them
build_bench_tools() {
  local -a targets=()
  (($#)) && targets=(--target "$@")
  cmake -S "$BENCH_DIR" -B "$BENCH_BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null &&
    cmake --build "$BENCH_BUILD_DIR" -j2 "${targets[@]}" >/dev/null || die "the bench tools did not build"
}

# private_copy BIN DIR: copies BIN into DIR and prints the copy's path, so that a rebuild of
# build/ during the run does not change what is measured.
private_copy() {
  [[ -x $1 ]] || die "no executable at $1 (build it first)"
  cp -- "$1" "$2/" || die "cannot copy $1"
  echo "$2/$(basename -- "$1")"
}

# proc_ticks PID...: the processes' CPU time so far (utime + stime), in clock ticks.
proc_ticks() {
  local total=0 pid t
  for pid in "$@"; do
    t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null) || t=0
    total=$((total + ${t:-0}))
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# median: of the numbers on stdin (whitespace-separated); empty input prints 0.
median() {
  tr ' \t' '\n\n' | grep -v '^$' | sort -g |
    awk '{ a[NR] = $1 } END { if (!NR) print 0; else print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
# ratio A B: A / B with 3 decimals (0 when B is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b ? a / b : 0 }'; }
# diff_pct A B: (A - B) / B in percent, signed, 1 decimal.
diff_pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f", b ? 100 * (a - b) / b : 0 }'; }
