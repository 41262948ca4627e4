#!/usr/bin/env bash
# The README's test command (also CI's: .ci/run): installs what it needs, builds, and runs every
# test. Needs root: the end-to-end tests create network namespaces and install TPROXY rules inside
# them (never in the caller's namespace).
#
# Stages, each timed (the times are printed at the end, also after a failure):
#   deps         scripts/install-deps.sh
#   build        build/: Release, every target
#   fuzz-build   build/fuzz: the libFuzzer targets (clang, ASan+UBSan), so the fuzz tests only run
#   tests        ctest in build/: unit tests, every e2e suite, a 30 s pass per fuzz target
#   asan-build   build-asan/: AddressSanitizer + UndefinedBehaviorSanitizer (-DDSPROXY_SANITIZE)
#   asan-unit    the unit tests under ASan+UBSan
#   asan-e2e     e2e.tcp_echo_experiment with the ASan+UBSan dsproxy (leaks included: it must exit 0)
#   tsan-build   build-tsan/: ThreadSanitizer
#   tsan-unit    the unit tests under TSan (but the descriptor-exhaustion ones, see tsan_unit):
#                the multi-worker ones (ProxyServerTest,
#                ProxyWorkersConcurrency: workers relaying while reloads swap snapshots) and every
#                other test that runs an io_context or resolver on its own thread
# Every sanitizer halts on its first report, so a report fails the test that caused it, and any
# failing stage fails the script. ccache (CCACHE_DIR, default ~/.cache/ccache) makes reruns cheap.
#
#   scripts/test.sh                      everything
#   DSPROXY_TEST_STAGES="build tests"    only those stages (deps always runs), e.g. for a quick loop
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

if [[ $(id -u) -ne 0 ]]; then
  echo "scripts/test.sh: must run as root (the end-to-end tests need network namespaces and iptables)" >&2
  exit 1
fi

stages=${DSPROXY_TEST_STAGES:-"build fuzz-build tests asan-build asan-unit asan-e2e tsan-build tsan-unit"}
times=()
current=
report() {
  local status=$?
  ((${#times[@]})) && printf 'scripts/test.sh: stage times (s):%s\n' "$(printf ' %s' "${times[@]}")"
  [[ -n $current ]] && echo "scripts/test.sh: FAILED in stage $current" >&2
  return $status
}
trap report EXIT
run_stage() {
  local name=$1 start=$SECONDS
  shift
  [[ $name == deps || " $stages " == *" $name "* ]] || return 0
  echo "==== scripts/test.sh: $name"
  current=$name
  "$@"
  current=
  times+=("$name=$((SECONDS - start))")
}

current=deps
bash scripts/install-deps.sh >/dev/null
current=
times+=("deps=$SECONDS")

# Builds in other checkouts of the repository share the cache when they share the base dir.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$repo}
# Unity builds (eight sources per translation unit): Asio's, Beast's and OpenSSL's headers are
# parsed and their templates instantiated once per eight files instead of once per file, which
# takes 43 % off the compile time of the proxy and tunnel sources (measured: 184 -> 105 CPU-s
# under ASan). What the three trees cost dominates a cold run. The price: two files' helpers in
# anonymous namespaces must not share a name (the first stage's build says so at once).
configure() {  # configure DIR [cmake options...]
  local dir=$1
  shift
  cmake -S . -B "$dir" -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_UNITY_BUILD=ON "$@" >/dev/null
}
# For the sanitizer builds' tests: halt on the first report (UBSan aborts by itself, built with
# -fno-sanitize-recover=all) and print stacks. TSan suppressions: see scripts/tsan.supp.
sanitizer_env=(
  ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:strict_string_checks=1
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$repo/scripts/tsan.supp"
)
# Everything that is not an e2e suite or a fuzz pass is a gtest case.
unit_ctest() { (cd "$1" && env "${sanitizer_env[@]}" ctest --output-on-failure -j2 --timeout 600 -E "${2:-^(e2e|fuzz)\.}"); }
# Under TSan, the tests that exhaust descriptors on purpose (lowering RLIMIT_NOFILE to the lowest
# free number) are left to the Release and ASan stages: the TSan runtime opens and closes
# descriptors of its own in the background, so a slot below the limit can come free and the
# injected EMFILE does not happen (11 of 200 runs). They test accounting, not concurrency.
tsan_unit() { unit_ctest build-tsan '^(e2e|fuzz)\.|DescriptorExhaustion'; }

build() {
  configure build -DCMAKE_BUILD_TYPE=Release
  cmake --build build -j2
}
fuzz_build() {
  fuzz/run_fuzz.sh --build-only dns_message build/fuzz
  fuzz/run_fuzz.sh --build-only config_decoder build/fuzz
}
# The end-to-end tests are RUN_SERIAL; unit tests share the two cores.
tests() { (cd build && ctest --output-on-failure -j2 --timeout 600); }
asan_build() {
  configure build-asan -DCMAKE_BUILD_TYPE=Debug -DDSPROXY_SANITIZE=address,undefined
  cmake --build build-asan -j2 --target dsproxy dsproxy_unit_tests dsproxy_test_echo
}
asan_e2e() {
  (cd build-asan && env "${sanitizer_env[@]}" ctest --output-on-failure --timeout 600 -R '^e2e\.tcp_echo_experiment$')
}
tsan_build() {
  configure build-tsan -DCMAKE_BUILD_TYPE=Debug -DDSPROXY_SANITIZE=thread
  cmake --build build-tsan -j2 --target dsproxy_unit_tests
}

run_stage build build
run_stage fuzz-build fuzz_build
run_stage tests tests
run_stage asan-build asan_build
run_stage asan-unit unit_ctest build-asan
run_stage asan-e2e asan_e2e
run_stage tsan-build tsan_build
run_stage tsan-unit tsan_unit
echo "scripts/test.sh: all stages passed"
