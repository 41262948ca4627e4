#!/usr/bin/env bash
# Builds dsproxy's runtime image without a container registry: the same image the Containerfile
# makes (Debian 12 + deploy/image/runtime-packages.txt + the dsproxy binary), but the Debian root
# filesystem comes straight from the Debian archive through mmdebstrap, and podman imports it.
# For machines that can reach Debian's archive but no image registry (ours); with Docker or
# Podman and a registry, `podman build -f Containerfile .` gives the same result.
#
#   scripts/build-image.sh [DSPROXY_BINARY]       (default: build/dsproxy, a Release build)
#
# Environment:
#   DSPROXY_IMAGE        the image to create (default localhost/dsproxy:dev)
#   DSPROXY_IMAGE_CACHE  where the root filesystem tarballs are kept (default
#                        ~/.cache/dsproxy/image, shared by every checkout like ccache's cache)
#   DSPROXY_APT_SOURCES  the apt sources mmdebstrap reads (default: this machine's, i.e.
#                        /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)
#
# The root filesystem is cached: <cache>/rootfs-<key>.tar, where the key is a hash of the
# package list, the suite and the apt sources. A rebuild with an unchanged list only imports the
# binary (seconds); a changed list builds a new rootfs (about a minute, mostly downloads).
# Needs root (mmdebstrap's root mode, podman's root storage), mmdebstrap and podman
# (scripts/install-deps.sh installs both). Prints the image name on the last line.
set -euo pipefail
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

die() {
  echo "build-image: $*" >&2
  exit 1
}

binary=${1:-$repo/build/dsproxy}
image=${DSPROXY_IMAGE:-localhost/dsproxy:dev}
cache=${DSPROXY_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dsproxy/image}
suite=bookworm
list=$repo/deploy/image/runtime-packages.txt

[[ $(id -u) == 0 ]] || die "must run as root (mmdebstrap builds the rootfs as root; podman uses root's storage)"
for cmd in mmdebstrap podman sha256sum flock; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is not installed (run scripts/install-deps.sh)"
done
[[ -x $binary ]] || die "dsproxy binary '$binary' is not an executable (build it first: cmake --build build --target dsproxy)"
[[ -f $list ]] || die "package list $list is missing"

if [[ -z ${DSPROXY_APT_SOURCES:-} ]]; then
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [[ -s $f ]]; then
      DSPROXY_APT_SOURCES=$f
      break
    fi
  done
fi
[[ -n ${DSPROXY_APT_SOURCES:-} && -s $DSPROXY_APT_SOURCES ]] ||
  die "no apt sources found (set DSPROXY_APT_SOURCES to a sources.list or .sources file)"

mapfile -t packages < <(sed 's/#.*//' "$list" | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
((${#packages[@]})) || die "$list names no package"
include=$(IFS=,; echo "${packages[*]}")

# The cache key: what decides the rootfs's content. The binary is not part of it: it is added on
# top as its own layer.
key=$( {
  printf '%s\n' "$suite" "${packages[@]}"
  grep -v '^#' "$DSPROXY_APT_SOURCES"
  echo "layout-2" # bump when the mmdebstrap options below change
} | sha256sum | cut -c1-16)
rootfs=$cache/rootfs-$key.tar
base=localhost/dsproxy-rootfs:$key
mkdir -p "$cache"

# One builder per cache at a time: concurrent runs (two checkouts' tests) wait for the first
# one's rootfs instead of downloading it twice into the same file.
exec 9>"$cache/lock"
flock 9
if [[ -f $rootfs ]]; then
  echo "build-image: rootfs cached: $rootfs" >&2
else
  echo "build-image: building the Debian $suite rootfs with: ${packages[*]}" >&2
  start=$SECONDS
  # --variant=apt: Essential + apt, like debian:12-slim (apt stays so that a user can add a
  # debugging tool to a running copy). Documentation, man pages and translations are left out as
  # in the slim images. The merged-usr hook lays out /usr as Debian 12 does without installing
  # the usrmerge package, which would pull in perl (40 MB). The tar is written under a
  # temporary name (mmdebstrap picks the format from the extension) and renamed when complete,
  # so an interrupted build never leaves a cache entry that looks good.
  partial=$cache/partial-$key.$$.tar
  if ! mmdebstrap --quiet --variant=apt --include="$include" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --aptopt='APT::Install-Recommends "false"' \
    "$suite" "$partial" "$DSPROXY_APT_SOURCES" >&2; then
    rm -f -- "$partial"
    die "mmdebstrap failed (is Debian's archive reachable through $DSPROXY_APT_SOURCES?)"
  fi
  mv -f -- "$partial" "$rootfs"
  echo "build-image: rootfs built in $((SECONDS - start)) s: $rootfs ($(du -h "$rootfs" | cut -f1))" >&2
  # Tarballs of other package lists that no build used for a week are of no further use.
  find "$cache" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$key.tar" -mtime +7 -delete
fi
if ! podman image exists "$base"; then
  podman import --quiet "$rootfs" "$base" >/dev/null || die "podman import $rootfs failed"
fi

# The binary goes on top of the base in a layer of its own (a local build: --pull=never, no
# registry is asked for anything).
context=$(mktemp -d)
trap 'rm -rf -- "$context"' EXIT
cp -- "$binary" "$context/dsproxy"
cat >"$context/Containerfile" <<EOF
FROM $base
COPY dsproxy /usr/local/bin/dsproxy
ENTRYPOINT ["/usr/local/bin/dsproxy"]
CMD ["--help"]
EOF
previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
podman build --quiet --pull=never --label "io.dsproxy.rootfs=$key" -t "$image" "$context" >/dev/null ||
  die "podman build of $image failed"
# The image this tag named before (an older binary) is now untagged: remove it unless a
# container or another tag still uses it, so rebuilds do not pile up dangling images.
if [[ -n $previous && $previous != "$(podman image inspect --format '{{.Id}}' "$image")" ]] &&
  [[ $(podman image inspect --format '{{len .RepoTags}}' "$previous" 2>/dev/null) == 0 ]]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
exec 9>&- # the image is complete: release the lock
# A binary that misses a shared library in the image fails here, not in a cluster. runc and
# cgroupfs because this machine has no systemd to manage cgroups; explicit ulimits because
# podman otherwise asks for limits above the hard ones a sandboxed host allows (EPERM in runc;
# seen here: nproc above 4096 failed although `ulimit -Hu` said 96370).
nofile=$(ulimit -Hn)
[[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
podman --runtime runc --cgroup-manager cgroupfs run --rm --network none \
  --ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096 \
  "$image" --help >/dev/null ||
  die "the image's dsproxy does not start (a shared library missing from $list?)"
echo "build-image: $image ($(podman image inspect --format '{{.Size}}' "$image") bytes)" >&2
echo "$image"
