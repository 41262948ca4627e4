# shellcheck shell=bash
# PASS/FAIL bookkeeping shared by the end-to-end tests. Each test ends with `N passed, M failed`.
# Set CHECK_SHOW_DETAIL=1 to print a check's detail on PASS too (for checks that report what they
# measured); E2E_DEADLINE is the test's time budget in seconds.

PASSED=0
FAILED=0
pass() {
  echo "PASS: $*"
  PASSED=$((PASSED + 1))
}
fail() {
  echo "FAIL: $*"
  FAILED=$((FAILED + 1))
}
# check NAME STATUS [DETAIL]: PASS when STATUS is 0.
check() {
  local name=$1 ok=$2 detail=${3:-}
  if ((ok == 0)); then
    if [[ ${CHECK_SHOW_DETAIL:-0} == 1 ]]; then pass "$name${detail:+ ($detail)}"; else pass "$name"; fi
  else
    fail "$name${detail:+ ($detail)}"
  fi
}
in_time() {
  ((SECONDS < E2E_DEADLINE)) && return 0
  fail "$1 (not run: the ${E2E_DEADLINE}s time budget is used up)"
  return 1
}
