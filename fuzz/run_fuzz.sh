#!/usr/bin/env bash
# Builds the DNS message fuzzer with clang (libFuzzer + AddressSanitizer + UBSan) and runs a
# bounded pass over it, starting from fuzz/corpus. What ctest (and so CI) runs:
#
#   fuzz/run_fuzz.sh OUT_DIR [libFuzzer options...]     default options: -max_total_time=30
#
# Needs clang and libclang-rt-14-dev (scripts/install-deps.sh); missing them is a failure.
# New inputs the pass finds go to OUT_DIR/corpus (the committed corpus is never written);
# a crash leaves its input in OUT_DIR and fails.
set -euo pipefail

if (($# < 1)); then
  echo "usage: $0 OUT_DIR [libFuzzer options...]" >&2
  exit 2
fi
out=$1
shift
options=("$@")
((${#options[@]})) || options=(-max_total_time=30)
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cxx=${CXX_FUZZ:-clang++}
command -v "$cxx" >/dev/null || { echo "run_fuzz: $cxx not found (install clang)" >&2; exit 1; }

mkdir -p "$out/corpus"
out=$(cd -- "$out" && pwd)
binary="$out/dns_message_fuzzer"
sources=(
  "$repo/fuzz/dns_message_fuzzer.cpp"
  "$repo/src/resolver/dns_message.cpp" "$repo/src/resolver/cluster_dns.cpp"
  "$repo/src/resolver/dns_cache.cpp" "$repo/src/resolver/dns_handler.cpp"
  "$repo/src/net/ip_address.cpp"
)
# Rebuild when a source is newer than the binary.
rebuild=0
[[ -x $binary ]] || rebuild=1
for s in "${sources[@]}" "$repo"/src/resolver/*.hpp "$repo"/src/config/*.hpp; do
  [[ $s -nt $binary ]] && rebuild=1
done
if ((rebuild)); then
  echo "run_fuzz: building $binary with $cxx"
  "$cxx" -std=c++20 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -DSPDLOG_FMT_EXTERNAL -DSPDLOG_COMPILED_LIB -DSPDLOG_SHARED_LIB -I"$repo/src" "${sources[@]}" \
    -lspdlog -lfmt -o "$binary"
fi
cd "$out"
echo "run_fuzz: $binary ${options[*]}"
"$binary" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${options[@]}" corpus "$repo/fuzz/corpus"
