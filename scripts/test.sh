#!/usr/bin/env bash
# The README's test command (also CI's: .ci/run): installs what it needs, builds, and runs every
# test. Needs root: the end-to-end tests create network namespaces and install TPROXY rules inside
# them (never in the caller's namespace).
#
# Stages, each timed (the times are printed at the end, also after a failure):
#   deps         scripts/install-deps.sh
#   build        build/: Release, every target but the unit tests (-DDSPROXY_UNIT_TESTS=OFF: they
#                run under ASan+UBSan below, the stricter check; reconfigure build/ with ON to get
#                them back there)
#   fuzz-build   build/fuzz: the libFuzzer targets (clang, ASan+UBSan), so the fuzz tests only run
#   tests        ctest in build/: every e2e suite and script check, then a 30 s pass per fuzz target
#   asan-build   build-asan/: AddressSanitizer + UndefinedBehaviorSanitizer (-DDSPROXY_SANITIZE)
#   asan-unit    the unit tests under ASan+UBSan (the only run of all of them)
#   asan-e2e     e2e.tcp_echo_experiment with the ASan+UBSan dsproxy (leaks included: it must exit 0)
#   tsan-build   build-tsan/: ThreadSanitizer
#   tsan-unit    the unit tests under TSan (but the descriptor-exhaustion ones, see tsan_unit):
#                the multi-worker ones (ProxyServerTest,
#                ProxyWorkersConcurrency: workers relaying while reloads swap snapshots) and every
#                other test that runs an io_context or resolver on its own thread
# Every sanitizer halts on its first report, so a report fails the test that caused it, and any
# failing stage fails the script. ccache (CCACHE_DIR, default ~/.cache/ccache) makes reruns cheap.
#
# fuzz-build, asan-build and tsan-build run in the background, at the lowest CPU priority, while
# the tests stage runs: the e2e suites run one at a time and mostly wait (on handshakes, timeouts,
# namespaces being set up), which leaves the two cores idle for most of that stage, and the
# compilers take whatever the tests leave (nice 19: a weight of 15 against the tests' 1,024, about
# 1.5 % of a core the tests want, so the tests run much as they would alone). Their output goes to
# build/fuzz-build.log and build/sanitizer-builds.log, printed if they fail; their stage times
# are the background builds' own, and "wait-<job>" is what the script still waited for them.
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
declare -A background=()  # job -> pid of its background job (own process group)
report() {
  local status=$? stage
  for stage in "${!background[@]}"; do  # a failure in the foreground: stop the compilers too
    kill -- "-${background[$stage]}" 2>/dev/null || true
  done
  ((${#times[@]})) && printf 'scripts/test.sh: stage times (s):%s\n' "$(printf ' %s' "${times[@]}")"
  [[ -n $current ]] && echo "scripts/test.sh: FAILED in stage $current" >&2
  return $status
}
trap report EXIT
selected() { [[ " $stages " == *" $1 "* ]]; }
run_stage() {
  local name=$1 start=$SECONDS
  shift
  [[ $name == deps ]] || selected "$name" || return 0
  echo "==== scripts/test.sh: $name"
  current=$name
  "$@"
  current=
  times+=("$name=$((SECONDS - start))")
}
# run_in_background JOB STAGE...: those of the stages that are selected, one after another,
# niced; output to build/JOB.log, each stage's time to build/JOB.times. `set -m` gives the job its
# own process group, so that report() can stop the compilers it started.
run_in_background() {
  local job=$1 stage todo=()
  shift
  for stage in "$@"; do selected "$stage" && todo+=("$stage"); done
  ((${#todo[@]})) || return 0
  echo "==== scripts/test.sh: ${todo[*]} (in the background, log: build/$job.log)"
  mkdir -p build
  : >"build/$job.times"
  set -m
  (
    renice -n 19 -p "$BASHPID" >/dev/null
    for stage in "${todo[@]}"; do
      start=$SECONDS
      "${stage//-/_}"
      echo "$stage=$((SECONDS - start))" >>"build/$job.times"
    done
  ) >"build/$job.log" 2>&1 &
  background[$job]=$!
  set +m
}
# await_background JOB: waits for that job; its failure is the script's, with its log.
await_background() {
  local job=$1 start=$SECONDS
  [[ -n ${background[$job]:-} ]] || return 0
  current=$job
  if ! wait "${background[$job]}"; then
    unset "background[$job]"
    echo "scripts/test.sh: $job failed; its log (build/$job.log) ends with:" >&2
    tail -n 80 "build/$job.log" >&2
    return 1
  fi
  unset "background[$job]"
  current=
  mapfile -t -O "${#times[@]}" times <"build/$job.times"
  times+=("wait-$job=$((SECONDS - start))")
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
  configure build -DCMAKE_BUILD_TYPE=Release -DDSPROXY_UNIT_TESTS=OFF
  cmake --build build -j2
}
fuzz_build() {
  fuzz/run_fuzz.sh --build-only dns_message build/fuzz
  fuzz/run_fuzz.sh --build-only config_decoder build/fuzz
}
# The end-to-end tests are RUN_SERIAL (the unit tests run in the ASan tree). The fuzz passes come
# last, once their build (in the background) is done; the two run at once, one per core.
tests() {
  (cd build && ctest --output-on-failure -j2 --timeout 600 -E '^fuzz\.')
  await_background fuzz-build
  current=tests
  (cd build && ctest --output-on-failure -j2 --timeout 600 -R '^fuzz\.')
}
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
run_in_background fuzz-build fuzz-build
run_in_background sanitizer-builds asan-build tsan-build
run_stage tests tests
await_background fuzz-build
await_background sanitizer-builds
run_stage asan-unit unit_ctest build-asan
run_stage asan-e2e asan_e2e
run_stage tsan-unit tsan_unit
echo "scripts/test.sh: all stages passed"
