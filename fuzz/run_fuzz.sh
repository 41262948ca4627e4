#!/usr/bin/env bash
# Builds one libFuzzer target with clang (libFuzzer + AddressSanitizer + UBSan, fuzz/CMakeLists.txt)
# and runs a bounded pass over it, starting from its committed corpus. What ctest (and so CI) runs:
#
#   fuzz/run_fuzz.sh [--build-only] TARGET OUT_DIR [libFuzzer options...]
#                                                   default options: -max_total_time=30
#
#   TARGET          committed corpus        what it feeds
#   dns_message     fuzz/corpus/dns         DNS queries and upstream answers (parser, cache, handler)
#   config_decoder  fuzz/corpus/config      YAML and JSON Kubernetes objects (decoder, snapshot build)
#
# Needs clang and libclang-rt-14-dev (scripts/install-deps.sh); missing them is a failure.
# The build lives in OUT_DIR/build (shared by the targets, locked, so two passes may run at
# once). New inputs a pass finds go to OUT_DIR/TARGET/corpus (the committed corpus is never
# written); a crash leaves its input in OUT_DIR/TARGET and fails.
set -euo pipefail

build_only=0
if [[ ${1:-} == --build-only ]]; then
  build_only=1
  shift
fi
if (($# < 2)); then
  echo "usage: $0 TARGET OUT_DIR [libFuzzer options...]   (TARGET: dns_message or config_decoder)" >&2
  exit 2
fi
target=$1
out=$2
shift 2
options=("$@")
((${#options[@]})) || options=(-max_total_time=30)
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
case $target in
  dns_message) corpus=$repo/fuzz/corpus/dns ;;
  config_decoder) corpus=$repo/fuzz/corpus/config ;;
  *) echo "run_fuzz: unknown target '$target' (dns_message or config_decoder)" >&2; exit 2 ;;
esac
cxx=${CXX_FUZZ:-clang++}
command -v "$cxx" >/dev/null || { echo "run_fuzz: $cxx not found (install clang)" >&2; exit 1; }

mkdir -p "$out/$target/corpus"
out=$(cd -- "$out" && pwd)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
(
  # Two targets' passes (ctest -j2) share the build; one configures and builds at a time.
  flock 9
  cmake -S "$repo/fuzz" -B "$out/build" -DCMAKE_CXX_COMPILER="$cxx" \
    "${launcher[@]}" >/dev/null
  cmake --build "$out/build" -j2 --target "${target}_fuzzer"
) 9>"$out/build.lock"
binary=$out/build/${target}_fuzzer
((build_only)) && exit 0
dict=()
[[ -f $repo/fuzz/$target.dict ]] && dict=(-dict="$repo/fuzz/$target.dict")

cd "$out/$target"
echo "run_fuzz: $binary ${options[*]}"
"$binary" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}" "${options[@]}" corpus "$corpus"
