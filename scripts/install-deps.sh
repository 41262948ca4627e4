#!/usr/bin/env bash
# Installs the Debian 12 packages dsproxy builds and tests with. Idempotent; needs root.
# Boost is pinned to 1.81 on purpose: libboost-all-dev would pull 1.74.
set -euo pipefail
packages=(
  cmake g++ make pkg-config
  libboost1.81-dev libboost-json1.81-dev   # asio (data path), beast (admin HTTP), json (config_dump)
  libspdlog-dev libcli11-dev libyaml-cpp-dev libssl-dev libc-ares-dev
  # nghttp2: HTTP/2 (session API) of the HBONE tunnel between nodes, src/hbone/ (issue 11).
  libnghttp2-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  iptables iproute2 netcat-openbsd procps kmod jq   # jq: the e2e tests read the admin JSON
  curl   # the e2e tests steer the fake Kubernetes API server over its control port
  # prometheus-cpp (core): the metric families and Prometheus text format behind :15020/metrics.
  prometheus-cpp-dev
  # ipset: the capture and refusal rules match pod addresses and ClusterIP(:port)s in kernel
  # sets (one rule, one hash lookup per packet) instead of one rule per pod or per port.
  ipset
  # nftables (nft): e2e.kube_proxy_coexistence writes kube-proxy's nftables-mode tables.
  nftables
  # DNS: dnsmasq is the e2e test's and benchmark's upstream/reference server, dig and getent the
  # pods' clients, dnsperf the load generator; clang + compiler-rt build the libFuzzer target.
  dnsmasq-base bind9-dnsutils libc-bin dnsperf clang libclang-rt-14-dev
  # scripts/test.sh builds four trees (Release, ASan+UBSan, TSan, the fuzzers); ccache makes a
  # rerun recompile only what changed. The sanitizer runtimes come with g++ (libgcc-12-dev).
  ccache
  # The image (scripts/build-image.sh, e2e.image): mmdebstrap builds the Debian root filesystem
  # from the archive, podman imports and runs it (with runc: this machine has no systemd).
  mmdebstrap podman runc
  # e2e.hbone: tcpdump shows that no payload byte crosses the underlay between nodes in
  # plaintext; openssl makes the test's CA.
  tcpdump openssl
  # lint.shell checks the deployment scripts (tests/e2e/kind, scripts/build-image.sh).
  shellcheck
)
# deploy.manifests renders deploy/ with kubectl's built-in kustomize and validates it with npm
# packages. Machines of this kind ship a kubectl (Google Cloud SDK's) and a nodejs with npm that
# Debian's packages would conflict with; install Debian's only where they are missing.
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
