# shellcheck shell=bash
# The fake Kubernetes API server (tests/tools/fake_apiserver) for the end-to-end tests: start it
# (optionally inside a network namespace, e.g. the cluster's node namespace), wait until it
# serves, and steer it through its control API with curl. Defines functions and a few
# variables only; nothing happens until fake_apiserver_start is called.
#
# Inputs:
#   FAKE_APISERVER_BIN   the dsproxy_fake_apiserver binary (required by fake_apiserver_start)
#   FAKE_APISERVER_DIR   directory for its files (default: $CLUSTER_TMP/apiserver, else mktemp -d)
# After fake_apiserver_start:
#   FAKE_APISERVER_PID, FAKE_APISERVER_PORT (HTTPS), FAKE_APISERVER_CONTROL_PORT (plain HTTP,
#   127.0.0.1 of the namespace it runs in), FAKE_APISERVER_NETNS, FAKE_APISERVER_LOG, and the
#   files $FAKE_APISERVER_DIR/{kubeconfig,kubeconfig-inline,ca.crt,wrong-ca.crt,token,
#   serviceaccount/} a client is pointed at (README.md next to the binary's sources).
# Every wait is bounded; every control call has a 5 s limit and fails (status 1) on an HTTP error.

FAKE_APISERVER_PID=
FAKE_APISERVER_PORT=
FAKE_APISERVER_CONTROL_PORT=
FAKE_APISERVER_NETNS=
FAKE_APISERVER_LOG=
FAKE_APISERVER_START_WAIT_STEPS=${FAKE_APISERVER_START_WAIT_STEPS:-100} # 0.1 s steps
FAKE_APISERVER_STOP_WAIT_STEPS=${FAKE_APISERVER_STOP_WAIT_STEPS:-50}    # 0.1 s steps

fake_apiserver_log() { echo "fake-apiserver: $*" >&2; }

# Runs a command where the server runs (its namespace, if any): its control port is loopback there.
_fake_apiserver_here() {
  if [[ -n $FAKE_APISERVER_NETNS ]]; then
    ip netns exec "$FAKE_APISERVER_NETNS" "$@"
  else
    "$@"
  fi
}

# fake_apiserver_start [--netns NS] [--listen ADDR] [--objects FILE] [-- MORE_ARGS...]
# MORE_ARGS go to the binary (--token, --bookmark-interval-ms, --history, --port).
fake_apiserver_start() {
  local netns="" listen="" objects="" extra=()
  while (($#)); do
    case $1 in
      --netns) netns=$2; shift 2 ;;
      --listen) listen=$2; shift 2 ;;
      --objects) objects=$2; shift 2 ;;
      --) shift; extra=("$@"); break ;;
      *) fake_apiserver_log "unknown option $1"; return 1 ;;
    esac
  done
  [[ -n ${FAKE_APISERVER_BIN:-} && -x $FAKE_APISERVER_BIN ]] || {
    fake_apiserver_log "FAKE_APISERVER_BIN '${FAKE_APISERVER_BIN:-}' is not an executable"
    return 1
  }
  [[ -z $FAKE_APISERVER_PID ]] || { fake_apiserver_log "already running (pid $FAKE_APISERVER_PID)"; return 1; }
  command -v curl >/dev/null || { fake_apiserver_log "curl is missing (scripts/install-deps.sh)"; return 1; }
  if [[ -z ${FAKE_APISERVER_DIR:-} ]]; then
    if [[ -n ${CLUSTER_TMP:-} ]]; then FAKE_APISERVER_DIR=$CLUSTER_TMP/apiserver; else FAKE_APISERVER_DIR=$(mktemp -d); fi
  fi
  mkdir -p "$FAKE_APISERVER_DIR"
  rm -f "$FAKE_APISERVER_DIR/port" "$FAKE_APISERVER_DIR/control_port"
  FAKE_APISERVER_NETNS=$netns
  FAKE_APISERVER_LOG=$FAKE_APISERVER_DIR/apiserver.log
  local args=(--dir "$FAKE_APISERVER_DIR")
  [[ -z $listen ]] || args+=(--listen "$listen")
  [[ -z $objects ]] || args+=(--objects "$objects")
  # A plain command, not a function, in the background: $! is then the server's own pid
  # (`ip netns exec` execs it), so SIGTERM reaches it.
  if [[ -n $netns ]]; then
    ip netns exec "$netns" "$FAKE_APISERVER_BIN" "${args[@]}" "${extra[@]}" >>"$FAKE_APISERVER_LOG" 2>&1 &
  else
    "$FAKE_APISERVER_BIN" "${args[@]}" "${extra[@]}" >>"$FAKE_APISERVER_LOG" 2>&1 &
  fi
  FAKE_APISERVER_PID=$!
  # control_port is written last, after the port, TLS files and kubeconfigs.
  local i
  for ((i = 0; i < FAKE_APISERVER_START_WAIT_STEPS; i++)); do
    if ! kill -0 "$FAKE_APISERVER_PID" 2>/dev/null; then
      wait "$FAKE_APISERVER_PID" 2>/dev/null
      fake_apiserver_log "exited with status $? before serving (log: $FAKE_APISERVER_LOG)"
      FAKE_APISERVER_PID=
      return 1
    fi
    if [[ -s $FAKE_APISERVER_DIR/control_port ]]; then
      # shellcheck disable=SC2034 # for the scripts that source this file
      FAKE_APISERVER_PORT=$(<"$FAKE_APISERVER_DIR/port")
      FAKE_APISERVER_CONTROL_PORT=$(<"$FAKE_APISERVER_DIR/control_port")
      return 0
    fi
    sleep 0.1
  done
  fake_apiserver_log "not serving after $((FAKE_APISERVER_START_WAIT_STEPS / 10)) s (log: $FAKE_APISERVER_LOG)"
  fake_apiserver_stop
  return 1
}

# SIGTERM, a bounded wait, then SIGKILL. Idempotent.
fake_apiserver_stop() {
  [[ -n $FAKE_APISERVER_PID ]] || return 0
  kill -TERM "$FAKE_APISERVER_PID" 2>/dev/null
  local i
  for ((i = 0; i < FAKE_APISERVER_STOP_WAIT_STEPS; i++)); do
    kill -0 "$FAKE_APISERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$FAKE_APISERVER_PID" 2>/dev/null; then
    fake_apiserver_log "did not exit on SIGTERM; killing it"
    kill -KILL "$FAKE_APISERVER_PID" 2>/dev/null
  fi
  wait "$FAKE_APISERVER_PID" 2>/dev/null
  FAKE_APISERVER_PID=
}

# fake_apiserver_control METHOD COMMAND[?QUERY] [BODY_FILE|-]: prints the JSON answer.
fake_apiserver_control() {
  local method=$1 command=$2 body=${3:-}
  [[ -n $FAKE_APISERVER_CONTROL_PORT ]] || { fake_apiserver_log "not started"; return 1; }
  local args=(-sS --fail-with-body --max-time 5 -X "$method")
  if [[ -n $body ]]; then
    if [[ $body == - ]]; then args+=(--data-binary @-); else args+=(--data-binary "@$body"); fi
    args+=(-H 'Content-Type: application/json')
  fi
  _fake_apiserver_here curl "${args[@]}" "http://127.0.0.1:$FAKE_APISERVER_CONTROL_PORT/control/$command"
}

# fake_apiserver_upsert FILE|- [RESOURCE]: JSON or YAML (documents, a List, an array); the
# resource comes from each object's kind unless given (services, pods, nodes, endpointslices).
# Prints {"resourceVersion":"N"} (the last write's).
fake_apiserver_upsert() {
  local file=$1 resource=${2:-}
  fake_apiserver_control POST "upsert${resource:+?resource=$resource}" "$file"
}
fake_apiserver_delete() { fake_apiserver_control POST "delete?resource=$1&ns=$2&name=$3"; }
# Forget the event history: watches from an older resourceVersion get ERROR 410, then a relist.
fake_apiserver_compact() { fake_apiserver_control POST compact; }
fake_apiserver_expire_continue() { fake_apiserver_control POST expire-continue; }
# Refuse connections (listener closed, open connections dropped) for SECONDS, then serve again.
fake_apiserver_pause() { fake_apiserver_control POST "pause?seconds=$1"; }
fake_apiserver_resume() { fake_apiserver_control POST resume; }
# fake_apiserver_fail STATUS COUNT [RETRY_AFTER] [PATH_PREFIX]
fake_apiserver_fail() {
  local query="status=$1&count=$2"
  [[ -z ${3:-} ]] || query+="&retry_after=$3"
  [[ -z ${4:-} ]] || query+="&path=$4"
  fake_apiserver_control POST "fail?$query"
}
fake_apiserver_clear_failures() { fake_apiserver_control POST clear-failures; }
fake_apiserver_stall() { fake_apiserver_control POST "stall?on=${1:-1}"; } # 1: stall, 0: resume streams
fake_apiserver_cut() { fake_apiserver_control POST cut; }                 # cut watch streams mid-line
fake_apiserver_close() { fake_apiserver_control POST close; }             # drop every connection
fake_apiserver_bookmark() { fake_apiserver_control POST bookmark; }
# Rotates the bearer token (a random one if none is given) and rewrites the token files.
fake_apiserver_rotate_token() { fake_apiserver_control POST "token${1:+?value=$1}"; }
# {"requests":[{"method","target","hasAuthorization","authorized","watch","status"},...]}
fake_apiserver_requests() { fake_apiserver_control GET requests; }
fake_apiserver_clear_requests() { fake_apiserver_control POST clear-requests; }
# {"resourceVersion","compactedResourceVersion","openWatches","paused","stalled","objects":{...}}
fake_apiserver_state() { fake_apiserver_control GET state; }

# fake_apiserver_wait_watches N [STEPS]: until N watches are open (0.1 s steps, default 50).
fake_apiserver_wait_watches() {
  local want=$1 steps=${2:-50} i open
  for ((i = 0; i < steps; i++)); do
    open=$(fake_apiserver_state | jq -r .openWatches) || return 1
    ((open >= want)) && return 0
    sleep 0.1
  done
  fake_apiserver_log "$open watches open, wanted $want"
  return 1
}
