#!/usr/bin/env bash
# Runs dsproxy from its image instead of the host binary, for tests/e2e/image.sh: start_dsproxy
# (lib/cluster.sh) calls it as DSPROXY_LAUNCHER with the node namespace and dsproxy's arguments.
#
#   dsproxy_in_image.sh NODE_NETNS DSPROXY-ARGS...
#
# Environment: DSPROXY_IMAGE_NAME (the image), DSPROXY_CONTAINER_NAME (the container's name, so
# the caller can inspect and remove it). A `--config FILE` argument is bind-mounted read-only at
# /etc/dsproxy/cluster.yaml. The container gets what deploy/daemonset.yaml gives the pod: the
# node's network namespace, NET_ADMIN + NET_RAW and no other capability, no privilege escalation
# (no_new_privs), a read-only root filesystem without scratch tmpfs mounts, the runtime's
# default seccomp filter, root. podman stays in the foreground and is exec'd, so the caller's $!
# is podman's pid: SIGTERM reaches dsproxy through podman's signal proxy, and podman exits with
# dsproxy's exit status. The stopped container is kept (no --rm) for the caller to inspect; the
# caller removes it (podman rm -f) on every exit path.
set -euo pipefail
(($# >= 1)) || {
  echo "usage: $0 NODE_NETNS DSPROXY-ARGS..." >&2
  exit 2
}
netns=$1
shift
: "${DSPROXY_IMAGE_NAME:?}" "${DSPROXY_CONTAINER_NAME:?}"
[[ -e /run/netns/$netns ]] || {
  echo "dsproxy_in_image: no network namespace /run/netns/$netns" >&2
  exit 2
}

args=()
mounts=()
while (($#)); do
  case $1 in
    --config | --config=*)
      if [[ $1 == --config ]]; then
        file=${2:?--config needs a value}
        shift 2
      else
        file=${1#--config=}
        shift
      fi
      mounts+=(--volume "$(realpath -- "$file"):/etc/dsproxy/cluster.yaml:ro")
      args+=(--config /etc/dsproxy/cluster.yaml)
      ;;
    *)
      args+=("$1")
      shift
      ;;
  esac
done

# Within this host's hard limits (runc fails with EPERM above them; see scripts/build-image.sh).
nofile=$(ulimit -Hn)
[[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536

exec podman --runtime runc --cgroup-manager cgroupfs run --name "$DSPROXY_CONTAINER_NAME" \
  --pull=never --network "ns:/run/netns/$netns" \
  --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW \
  --security-opt no-new-privileges --read-only --read-only-tmpfs=false \
  --ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096 \
  "${mounts[@]}" "$DSPROXY_IMAGE_NAME" "${args[@]}"
