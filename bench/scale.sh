#!/usr/bin/env bash
# The scale benchmark of issue 10, snapshot side: a synthetic dual-stack cluster of 10,000
# Services and 100,000 endpoints (both families) fed to the snapshot builder object by object
# then changed one EndpointSlice at a time (what the API watch does), and the same cluster, then
# the issue's 20,000-Service / 30,000-slice file, through the file source (decode, build,
# reload). Prints the figures the issue sets targets for: initial sync <= 5 s, RSS <= 150 MB,
# one event live <= 10 ms p99 over 1,000 events. A benchmark, not a test: nothing is asserted.
#
#   bash bench/scale.sh [--quick]      (--quick: a tenth of the size, for a smoke run)
#
# Builds bench/tools/snapshot_scale in build-bench/ (Release); the files come from
# bench/tools/gen_cluster.py (python3) into a temporary directory. Needs no root and no network.

set -euo pipefail

BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$BENCH_DIR/.." && pwd)
BENCH_BUILD_DIR=${BENCH_BUILD_DIR:-$REPO_DIR/build-bench}

DIV=1
if [[ ${1:-} == --quick ]]; then DIV=10; fi

launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S "$BENCH_DIR" -B "$BENCH_BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" >/dev/null
cmake --build "$BENCH_BUILD_DIR" --target snapshot_scale -j"${BENCH_JOBS:-2}" >/dev/null
tool=$BENCH_BUILD_DIR/snapshot_scale

echo "== events: 10,000 Services / 100,000 endpoints (50,000 dual-stack pods), this node's Pods only"
"$tool" events --services $((10000 / DIV)) --endpoints $((100000 / DIV)) --events 1000
echo
# The file source reads what bench/tools/gen_cluster.py writes (kubectl-shaped, full metadata).
work=$(mktemp -d "${TMPDIR:-/tmp}/dsproxy-scale.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 "$BENCH_DIR/tools/gen_cluster.py" --services $((10000 / DIV)) --endpoints-per-slice 5 --format json \
  -o "$work/cluster.json"
python3 "$BENCH_DIR/tools/gen_cluster.py" --services $((20000 / DIV)) --single-stack $((10000 / DIV)) \
  --endpoints-per-slice 2 --format yaml -o "$work/issue10.yaml"
echo "== file source: the same cluster as gen_cluster.py's JSON (this node's Pods only)"
"$tool" file --input "$work/cluster.json"
echo
echo "== file source: the issue's file, 20,000 Services / 30,000 EndpointSlices as YAML"
"$tool" file --input "$work/issue10.yaml"
