#!/usr/bin/env bash
# e2e.image: dsproxy's image runs. Builds (or reuses) localhost/dsproxy:dev with
# scripts/build-image.sh from DSPROXY_BIN, then runs the whole tcp-echo experiment
# (tests/e2e/tcp_echo_experiment.sh: every answer, the client address every pod saw, the
# listener and endpoint tables, clean rule removal on SIGTERM) with the node's dsproxy started
# FROM THE IMAGE inside the node's network namespace, with the DaemonSet's restrictions
# (lib/dsproxy_in_image.sh). Afterwards it checks that the container really ran that image and
# exited 0 with those restrictions.
#
#   image.sh DSPROXY_BIN ECHO_BIN
#
# Needs root, podman, runc, mmdebstrap (scripts/install-deps.sh) and, the first time or when
# deploy/image/runtime-packages.txt changes, Debian's archive (about 2 minutes; then cached in
# DSPROXY_IMAGE_CACHE, default ~/.cache/dsproxy/image). Missing any of them is a failure. The container and
# the namespaces are removed on every exit path.
set -uo pipefail

if (($# != 2)); then
  echo "usage: $0 DSPROXY_BIN ECHO_BIN" >&2
  exit 2
fi
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)
dsproxy_bin=$(realpath -- "$1")
echo_bin=$(realpath -- "$2")

# shellcheck source=tests/e2e/lib/checks.sh
source "$here/lib/checks.sh"
die() {
  echo "image: FATAL: $*" >&2
  exit 1
}
[[ $(id -u) == 0 ]] || die "must run as root (podman's root storage, network namespaces)"
for cmd in podman runc mmdebstrap; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is not installed (run scripts/install-deps.sh)"
done

export CLUSTER_PREFIX=dspx$$
export DSPROXY_CONTAINER_NAME=$CLUSTER_PREFIX-dsproxy
export CLUSTER_TMP
CLUSTER_TMP=$(mktemp -d "/tmp/$CLUSTER_PREFIX.XXXXXX")
export CLUSTER_KEEP_TMP=1 # the experiment keeps its logs; this script removes them on success

status=1
cleanup() {
  # The experiment removes its namespaces itself; the container is ours (kept after it stopped
  # so that it could be inspected, or left running if the experiment died before stopping it).
  podman rm -f --time 5 "$DSPROXY_CONTAINER_NAME" >/dev/null 2>&1
  podman rmi "localhost/dsproxy:e2e-$$" >/dev/null 2>&1
  if podman container exists "$DSPROXY_CONTAINER_NAME" 2>/dev/null; then
    echo "image: could not remove container $DSPROXY_CONTAINER_NAME" >&2
  fi
  if ((status == 0)); then rm -rf -- "$CLUSTER_TMP"; else echo "image: logs kept in $CLUSTER_TMP" >&2; fi
}
trap 'status=$?; cleanup; exit $status' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A leftover from a killed run of the same pid would make `podman run --name` fail.
podman rm -f "$DSPROXY_CONTAINER_NAME" >/dev/null 2>&1

# ---- the image --------------------------------------------------------------------------------
# A tag of this run's own: a concurrent run (another checkout) re-tagging localhost/dsproxy:dev
# with its binary must not change what this run tests. The layers are shared.
start=$SECONDS
image=$(DSPROXY_IMAGE=localhost/dsproxy:e2e-$$ bash "$repo/scripts/build-image.sh" "$dsproxy_bin" \
  2>"$CLUSTER_TMP/build-image.log" | tail -n 1)
built=$?
if ((built != 0)) || [[ -z $image ]]; then
  cat "$CLUSTER_TMP/build-image.log" >&2
  die "scripts/build-image.sh failed"
fi
sed 's/^/    /' "$CLUSTER_TMP/build-image.log"
echo "image: $image ready in $((SECONDS - start)) s, $(podman image inspect --format '{{.Size}}' "$image") bytes"

# ---- the experiment, dsproxy from the image ---------------------------------------------------
export DSPROXY_IMAGE_NAME=$image
export DSPROXY_LAUNCHER=$here/lib/dsproxy_in_image.sh
start=$SECONDS
bash "$here/tcp_echo_experiment.sh" "$dsproxy_bin" "$echo_bin" | tee "$CLUSTER_TMP/experiment.out"
experiment=${PIPESTATUS[0]}
echo "image: the experiment took $((SECONDS - start)) s"
summary=$(tail -n 1 "$CLUSTER_TMP/experiment.out")
if [[ $summary =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
  PASSED=${BASH_REMATCH[1]}
  FAILED=${BASH_REMATCH[2]}
else
  fail "the experiment printed no summary (exit $experiment)"
fi
((experiment == 0 || FAILED > 0)) || fail "the experiment exited $experiment"

# ---- the container that served it --------------------------------------------------------------
# The experiment's dsproxy must have been this container (not a host binary), stopped by the
# experiment's SIGTERM with exit status 0, with the DaemonSet's restrictions.
info=$(podman container inspect --format \
  '{{.ImageName}}|{{.State.Status}}|{{.State.ExitCode}}|{{.HostConfig.NetworkMode}}|{{.HostConfig.ReadonlyRootfs}}|{{.EffectiveCaps}}|{{.HostConfig.SecurityOpt}}' \
  "$DSPROXY_CONTAINER_NAME" 2>/dev/null)
IFS='|' read -r c_image c_state c_exit c_net c_ro c_caps c_secopt <<<"$info"
[[ $c_image == "$image" && $c_state == exited && $c_exit == 0 ]]
check "dsproxy ran as container $DSPROXY_CONTAINER_NAME of $image and exited 0 after SIGTERM" $? \
  "podman inspect: ${info:0:300}"
[[ $c_net == "ns:/run/netns/$CLUSTER_PREFIX-node" ]]
check "the container used the node's network namespace" $? "NetworkMode $c_net"
caps=$(tr -d '[]' <<<"$c_caps" | tr ' ' '\n' | sed '/^$/d' | sort | tr '\n' ' ')
[[ $c_ro == true && $caps == "CAP_NET_ADMIN CAP_NET_RAW " && $c_secopt == *no-new-privileges* ]]
check "with a read-only root filesystem, exactly NET_ADMIN + NET_RAW, no-new-privileges" $? \
  "ReadonlyRootfs $c_ro, EffectiveCaps $c_caps, SecurityOpt $c_secopt"
grep -q 'proxy bound: outbound' "$CLUSTER_TMP/dsproxy.log" 2>/dev/null
check "the container's log (podman's stdout) is dsproxy's" $? "see $CLUSTER_TMP/dsproxy.log"

echo "(took ${SECONDS}s)"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
