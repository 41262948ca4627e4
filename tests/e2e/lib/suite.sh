# shellcheck shell=bash
# The opening every cluster e2e script shares: its arguments, lib/cluster.sh and lib/checks.sh,
# the summary line, and the exit trap. Sourced first; then each script says only what is its own:
#
#   # shellcheck source=tests/e2e/lib/suite.sh
#   source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
#   suite_args -- "$@"            (or suite_args MORE_BIN -- "$@" for a third argument)
#   E2E_DEADLINE=${E2E_DEADLINE:-90}
#   suite_trap [HOOK]
#   suite_require
#
# On any exit the trap (lib/cluster.sh's, which then removes the namespaces and processes and
# keeps the exit status) shows the dsproxy logs of a failed run, runs HOOK, and still ends with
# the summary line when the script stopped before printing it (cluster_die, a signal), counting
# that as a failure.

SUITE_LIB_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/e2e/lib/cluster.sh
source "$SUITE_LIB_DIR/cluster.sh"
# shellcheck source=tests/e2e/lib/checks.sh
source "$SUITE_LIB_DIR/checks.sh"

# suite_args [NAME...] -- ARG...: the script's arguments are DSPROXY_BIN ECHO_BIN, then one per
# NAME; each variable is set to its argument's absolute path. Anything else: the usage line and
# exit 2.
suite_args() {
  local more=() name
  while (($# > 0)) && [[ $1 != -- ]]; do
    more+=("$1")
    shift
  done
  (($# > 0)) && shift
  if (($# != 2 + ${#more[@]})); then
    echo "usage: $0 DSPROXY_BIN ECHO_BIN${more[*]:+ ${more[*]}}" >&2
    exit 2
  fi
  DSPROXY_BIN=$(realpath -- "$1")
  # shellcheck disable=SC2034 # read by lib/cluster.sh
  ECHO_BIN=$(realpath -- "$2")
  shift 2
  for name in "${more[@]}"; do
    printf -v "$name" '%s' "$(realpath -- "$1")"
    shift
  done
}

# suite_require: what every cluster script needs (cluster_require's root, commands and network
# namespaces, bash 5, the two binaries); a missing one fails the script, never skips it.
suite_require() {
  cluster_require
  [[ -x $DSPROXY_BIN ]] || cluster_die "dsproxy binary $DSPROXY_BIN is not an executable"
  [[ -x $ECHO_BIN ]] || cluster_die "echo binary $ECHO_BIN is not an executable"
  ((BASH_VERSINFO[0] >= 5)) || cluster_die "needs bash 5, this is $BASH_VERSION"
}

SUMMARY_PRINTED=
summary() {
  echo "$PASSED passed, $FAILED failed"
  SUMMARY_PRINTED=1
}
section() { echo "---- $* ----"; }

# Logs of the script's own helpers (names in $CLUSTER_TMP, e.g. a nameserver's) whose last lines
# a failed run shows after dsproxy's.
SUITE_TMP_LOGS=()

# suite_trap [HOOK]: installs the exit trap (call it before anything that creates state). HOOK is
# the script's own part of the exit, given the exit status: stop its own helpers, show logs of
# its own that are not in SUITE_TMP_LOGS.
# shellcheck disable=SC2120 # HOOK is optional
suite_trap() {
  SUITE_ON_EXIT=${1:-}
  # shellcheck disable=SC2034 # read by lib/cluster.sh
  CLUSTER_ON_EXIT=_suite_on_exit
  cluster_trap
}
_suite_on_exit() {
  local status=$1 key name
  if ((status != 0 || FAILED > 0)); then
    # Nodes started with start_dsproxy_node log to dsproxy-KEY.log; the default node's
    # start_dsproxy to $DSPROXY_LOG.
    for key in "${CLUSTER_NODES[@]}"; do
      [[ -f $CLUSTER_TMP/dsproxy-$key.log ]] || continue
      echo "----- last 30 lines of dsproxy on $key -----" >&2
      tail -n 30 "$CLUSTER_TMP/dsproxy-$key.log" >&2
    done
    dsproxy_log_tail
    for name in "${SUITE_TMP_LOGS[@]}"; do
      [[ -n ${CLUSTER_TMP:-} && -s $CLUSTER_TMP/$name ]] || continue
      echo "----- last 20 lines of $CLUSTER_TMP/$name -----" >&2
      tail -n 20 "$CLUSTER_TMP/$name" >&2
    done
  fi
  if [[ -n $SUITE_ON_EXIT ]]; then "$SUITE_ON_EXIT" "$status"; fi
  if [[ -z $SUMMARY_PRINTED ]]; then
    fail "the test ran to its end (it stopped with status $status; see the FATAL line above)"
    summary
  fi
}
