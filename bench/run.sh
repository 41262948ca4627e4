#!/usr/bin/env bash
# The side-by-side benchmark of issue 5: dsproxy against direct routing, HAProxy (with and
# without splice) and nginx stream, on a client / node / server topology of network namespaces.
#
#   sudo bash bench/run.sh [--quick | --conn-only] [--runs N] [--peers a,b,c] [--families "4 6"]
#                          [--conn-seconds S] [--no-install] [--dsproxy PATH | --build-head]
#
# Installs the Debian packages it needs (haproxy, nginx + libnginx-mod-stream, iperf3, jq,
# gnuplot-nox), builds dsproxy (Release, or reuses build/dsproxy) and the load tools
# (bench/CMakeLists.txt -> build-bench/), then, for each run, each family (alternating order) and
# each peer (rotating order), builds fresh namespaces, starts the peer and measures bulk
# throughput (1 and 8 iperf3 streams), sequential connect+echo+close, round-trip latency,
# 4- and 16-client connection rate and idle-connection memory. --conn-only measures the
# connection rate with 1, 4 and 16 clients only (peers dsproxy, haproxy-splice, haproxy, nginx,
# both families, 3 runs of 3 s per cell unless told otherwise: about 6 minutes). Results: bench/results/<date>/results.md,
# results.json, results.png (bench/README.md explains every number). Everything it creates is
# removed on exit, also on failure or Ctrl-C.
#
# --dsproxy PATH measures that binary; --build-head builds the committed HEAD apart from the work
# tree (build-bench/dsproxy-head/) and measures it; by default build/dsproxy is used (built first
# if missing). The binary is copied at start, so a rebuild during the run changes nothing.
# Environment: BUILD_DIR (default build/), DSPROXY_BIN (default $BUILD_DIR/dsproxy),
# BENCH_OUT (results directory), BENCH_QUIET_IDLE (default 90: % idle CPU that counts as quiet).

set -uo pipefail

BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=bench
# shellcheck source=bench/lib/common.sh
source "$BENCH_DIR/lib/common.sh"
BUILD_DIR=${BUILD_DIR:-$REPO_DIR/build}

QUICK=0
CONN_ONLY=0
CONN_SECONDS=
RUNS=
PEERS_ARG=
FAMILIES="4 6"
INSTALL=1
BUILD_HEAD=0
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --conn-only) CONN_ONLY=1 ;;
    --conn-seconds) CONN_SECONDS=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --peers) PEERS_ARG=$2; shift ;;
    --families) FAMILIES=$2; shift ;;
    --no-install) INSTALL=0 ;;
    --dsproxy) DSPROXY_BIN=$2; shift ;;
    --build-head) BUILD_HEAD=1 ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "bench: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, iptables): sudo bash $0"

# ---------------------------------------------------------------- settings
((QUICK && CONN_ONLY)) && die "--quick and --conn-only exclude each other"
if ((QUICK)); then
  RUNS=${RUNS:-1}
  BENCH_BULK_S=3 BENCH_BULK_OMIT=0 BENCH_CONN_S=2 BENCH_QUIET_MAX_S=3
elif ((CONN_ONLY)); then
  # Three short cells per peer and family; the quiet wait is bounded lower than a full run's so
  # that a busy machine cannot stretch the run past about 8 minutes (those cells are flagged).
  RUNS=${RUNS:-3}
  BENCH_BULK_S=0 BENCH_BULK_OMIT=0 BENCH_CONN_S=3 BENCH_QUIET_MAX_S=3
else
  RUNS=${RUNS:-3}
  BENCH_BULK_S=10 BENCH_BULK_OMIT=1 BENCH_CONN_S=8 BENCH_QUIET_MAX_S=15
fi
((RUNS >= 1 && RUNS <= 20)) || die "--runs must be 1-20"
if [[ -n $CONN_SECONDS ]]; then
  if ! [[ $CONN_SECONDS =~ ^[0-9]+$ ]] || ((CONN_SECONDS < 1 || CONN_SECONDS > 60)); then
    die "--conn-seconds must be 1-60"
  fi
  BENCH_CONN_S=$CONN_SECONDS
fi
BENCH_QUIET_IDLE=${BENCH_QUIET_IDLE:-90}
DEFAULT_PEERS=(direct dsproxy dsproxy-svc dsproxy-w2 dsproxy-explicit haproxy-splice haproxy nginx)
((CONN_ONLY)) && DEFAULT_PEERS=(dsproxy haproxy-splice haproxy nginx)
if [[ -n $PEERS_ARG ]]; then IFS=, read -r -a PEERS <<<"$PEERS_ARG"; else PEERS=("${DEFAULT_PEERS[@]}"); fi
for f in $FAMILIES; do [[ $f == 4 || $f == 6 ]] || die "--families takes 4 and/or 6"; done

# ---------------------------------------------------------------- packages
BENCH_PACKAGES=(haproxy nginx libnginx-mod-stream iperf3 jq gnuplot-nox python3 iproute2 iptables procps)
install_packages() {
  local missing=() p created_policy=0
  for p in "${BENCH_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]}"
  # The packages' maintainer scripts would start haproxy and nginx as system services on the
  # machine's own network; a policy-rc.d that says "no" (unless one exists) prevents it.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  local status=$?
  ((created_policy)) && rm -f /usr/sbin/policy-rc.d
  ((status == 0)) || die "apt-get install ${missing[*]} failed"
}
((INSTALL)) && install_packages
for cmd in haproxy nginx iperf3 jq gnuplot python3 ip iptables ip6tables ss cmake; do
  command -v "$cmd" >/dev/null 2>&1 || die "missing command $cmd (run without --no-install)"
done
[[ -f /usr/lib/nginx/modules/ngx_stream_module.so ]] || die "nginx stream module missing (libnginx-mod-stream)"

# ---------------------------------------------------------------- build
if ((BUILD_HEAD)); then
  # The committed HEAD, built apart from the work tree (whose src/ may hold someone's unfinished
  # changes, and whose build/ they may rebuild at any time).
  head_rev=$(git -C "$REPO_DIR" rev-parse --short HEAD) || die "not a git checkout"
  head_dir=$BENCH_BUILD_DIR/dsproxy-head
  if [[ $(cat "$head_dir/rev" 2>/dev/null) == "$head_rev" && -x $head_dir/build/dsproxy ]]; then
    log "reusing dsproxy $head_rev (committed HEAD) built in $head_dir"
  else
    # shellcheck disable=SC2015 # dies when either fails
    rm -rf "$head_dir" && mkdir -p "$head_dir/src" || die "cannot create $head_dir"
    git -C "$REPO_DIR" archive HEAD | tar -x -C "$head_dir/src" || die "git archive HEAD failed"
    log "building dsproxy $head_rev (committed HEAD, Release) in $head_dir"
    bash "$REPO_DIR/scripts/install-deps.sh" || die "scripts/install-deps.sh failed"
    # shellcheck disable=SC2015 # dies when either fails
    cmake -S "$head_dir/src" -B "$head_dir/build" -DCMAKE_BUILD_TYPE=Release -DDSPROXY_BUILD_TESTS=OFF >/dev/null &&
      cmake --build "$head_dir/build" -j2 --target dsproxy >/dev/null || die "dsproxy build of HEAD failed"
    echo "$head_rev" >"$head_dir/rev"
  fi
  DSPROXY_BIN=$head_dir/build/dsproxy
  BENCH_DSPROXY_REV="$head_rev (committed HEAD)"
fi
DSPROXY_BIN=${DSPROXY_BIN:-$BUILD_DIR/dsproxy}
if [[ ! -x $DSPROXY_BIN ]]; then
  log "building dsproxy (Release) in $BUILD_DIR"
  bash "$REPO_DIR/scripts/install-deps.sh" || die "scripts/install-deps.sh failed"
  cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null || die "cmake configure failed"
  cmake --build "$BUILD_DIR" -j2 --target dsproxy >/dev/null || die "dsproxy build failed"
fi
if [[ -f $BUILD_DIR/CMakeCache.txt ]] && ! grep -q '^CMAKE_BUILD_TYPE:STRING=Release' "$BUILD_DIR/CMakeCache.txt"; then
  log "WARNING: $BUILD_DIR is not a Release build"
fi
[[ -x $DSPROXY_BIN ]] || die "$DSPROXY_BIN is not an executable"
log "building the load tools in $BENCH_BUILD_DIR"
build_bench_tools
BENCH_LOAD=$BENCH_BUILD_DIR/bench_load
BENCH_ECHO=$BENCH_BUILD_DIR/bench_echo

# ---------------------------------------------------------------- descriptors
# Each idle proxied connection costs the proxy two descriptors. Raise the limit as far as this
# process may (without CAP_SYS_RESOURCE the hard limit is the ceiling) and size the idle-memory
# test to it.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
BENCH_FD_LIMIT=$(ulimit -n)
BENCH_HOLD_N=10000
if ((2 * BENCH_HOLD_N + 600 > BENCH_FD_LIMIT)); then
  BENCH_HOLD_N=$(((BENCH_FD_LIMIT - 600) / 2 / 100 * 100))
  log "descriptor limit is $BENCH_FD_LIMIT (cannot be raised here): idle-memory test with $BENCH_HOLD_N connections"
fi
BENCH_PEER_MAXCONN=$((BENCH_HOLD_N + 100))

# ---------------------------------------------------------------- output and cleanup
STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
BENCH_OUT=${BENCH_OUT:-$BENCH_DIR/results/$STAMP$( ((QUICK)) && echo -quick)$( ((CONN_ONLY)) && echo -conn)}
mkdir -p "$BENCH_OUT" || die "cannot create $BENCH_OUT"
BENCH_RAW=$BENCH_OUT/raw.jsonl
: >"$BENCH_RAW"
BENCH_TMP=$(mktemp -d "/tmp/dsbench.XXXXXX")
BENCH_CONFIG_DIR=$BENCH_OUT/configs
# A private copy of the binary under test: a rebuild of build/ during the run (others work in
# this tree) must not change what is measured half way.
DSPROXY_SOURCE_BIN=$DSPROXY_BIN
cp "$DSPROXY_BIN" "$BENCH_TMP/dsproxy" || die "cannot copy $DSPROXY_BIN"
DSPROXY_BIN=$BENCH_TMP/dsproxy

# shellcheck source=bench/lib/topo.sh
source "$BENCH_DIR/lib/topo.sh"
# shellcheck source=bench/lib/peers.sh
source "$BENCH_DIR/lib/peers.sh"
# shellcheck source=bench/lib/measure.sh
source "$BENCH_DIR/lib/measure.sh"

on_exit() {
  local status=$?
  set +e
  trap - EXIT INT TERM HUP
  [[ -n ${PEER_PIDS[*]:-} ]] && peer_stop
  topo_down
  if ((status == 0)); then rm -rf -- "$BENCH_TMP"; else log "logs kept in $BENCH_TMP"; fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

peer_write_configs "$BENCH_CONFIG_DIR"
"$DSPROXY_BIN" validate --config "$BENCH_CONFIG_DIR/dsproxy-cluster.yaml" --node "$BENCH_NODE_NAME" >/dev/null ||
  die "dsproxy rejects the generated config $BENCH_CONFIG_DIR/dsproxy-cluster.yaml"

write_meta() {
  local git_rev dirty
  git_rev=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
  # shellcheck disable=SC2015 # never fails: "|| true"
  dirty=$(git -C "$REPO_DIR" status --porcelain -- src CMakeLists.txt 2>/dev/null | grep -q . && echo "+uncommitted src changes" || true)
  jq -n \
    --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    --arg nproc "$(nproc)" \
    --arg mem "$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" \
    --arg kernel "$(uname -r)" \
    --arg os "$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")" \
    --arg dsproxy "${BENCH_DSPROXY_REV:-$git_rev$dirty}" \
    --arg dsproxy_bin "$DSPROXY_SOURCE_BIN" --arg dsproxy_sha "$(sha256sum "$DSPROXY_BIN" | cut -c1-16)" \
    --arg haproxy "$(haproxy_version)" --arg nginx "$(nginx_version)" \
    --arg iperf3 "$(iperf3 --version 2>/dev/null | awk 'NR == 1 { print $2 }')" \
    --arg load_start "$(cat /proc/loadavg)" \
    --argjson runs "$RUNS" --argjson quick "$QUICK" --argjson conn_only "$CONN_ONLY" \
    --argjson bulk_s "$BENCH_BULK_S" --argjson bulk_omit "$BENCH_BULK_OMIT" --argjson conn_s "$BENCH_CONN_S" \
    --argjson hold_n "$BENCH_HOLD_N" --argjson fd_limit "$BENCH_FD_LIMIT" \
    --argjson quiet_idle "$BENCH_QUIET_IDLE" --argjson quiet_max_s "$BENCH_QUIET_MAX_S" \
    --arg peers "${PEERS[*]}" --arg families "$FAMILIES" \
    '{date: $date, machine: {cpu: $cpu, vcpus: ($nproc | tonumber), memory: $mem, kernel: $kernel, os: $os},
      versions: {dsproxy: $dsproxy, dsproxy_binary: $dsproxy_bin, dsproxy_sha256_16: $dsproxy_sha, haproxy: $haproxy, nginx: $nginx, iperf3: $iperf3},
      settings: {runs: $runs, quick: ($quick == 1), conn_only: ($conn_only == 1), bulk_seconds: $bulk_s, bulk_omit_seconds: $bulk_omit,
                 conn_seconds: $conn_s, hold_connections: $hold_n, fd_limit: $fd_limit,
                 quiet_idle_pct: $quiet_idle, quiet_max_wait_s: $quiet_max_s,
                 peers: ($peers | split(" ")), families: ($families | split(" "))},
      load_start: $load_start}' >"$BENCH_OUT/meta.json"
}
write_meta
for p in "${PEERS[@]}"; do echo "$p	$(peer_describe "$p")"; done >"$BENCH_OUT/peers.tsv"

log "results in $BENCH_OUT; $RUNS run(s), families $FAMILIES, peers ${PEERS[*]}"
if ((CONN_ONLY)); then
  log "connection rate only (1, 4 and 16 clients), ${BENCH_CONN_S}s per cell"
else
  log "durations: bulk ${BENCH_BULK_S}s (+${BENCH_BULK_OMIT}s omitted), connection tests ${BENCH_CONN_S}s; idle-memory test $BENCH_HOLD_N connections"
fi

# ---------------------------------------------------------------- the runs
n_peers=${#PEERS[@]}
for ((run = 1; run <= RUNS; run++)); do
  read -r -a fams <<<"$FAMILIES"
  if ((run % 2 == 0 && ${#fams[@]} == 2)); then fams=("${fams[1]}" "${fams[0]}"); fi
  for fam in "${fams[@]}"; do
    for ((k = 0; k < n_peers; k++)); do
      peer=${PEERS[$(((k + run - 1) % n_peers))]}
      M_RUN=$run M_FAMILY=$fam M_PEER=$peer
      log "run $run/$RUNS IPv$fam $peer"
      topo_up
      if peer_start "$peer"; then
        dst_var=PEER_DST$fam
        measure_peer_family "${!dst_var}"
      else
        Q_LOAD1=$(load1)
        emit error "\"error\":$(jq -Rn --arg e "$PEER_ERROR" '$e')"
        log "  ERROR: $PEER_ERROR"
      fi
      peer_stop
      topo_down
    done
  done
done

jq --arg load_end "$(cat /proc/loadavg)" '. + {load_end: $load_end}' "$BENCH_OUT/meta.json" >"$BENCH_OUT/meta.json.tmp" &&
  mv "$BENCH_OUT/meta.json.tmp" "$BENCH_OUT/meta.json"
python3 "$BENCH_DIR/lib/report.py" "$BENCH_OUT" || die "report failed (raw data in $BENCH_RAW)"
cat "$BENCH_OUT/results.md"
log "done: $BENCH_OUT/results.md, results.json, results.png"
