#!/usr/bin/env bash
# The README's test command: installs what it needs, builds, and runs every test (unit tests and
# the network-namespace end-to-end tests). Needs root: the end-to-end tests create network
# namespaces and install TPROXY rules inside them (never in the caller's namespace).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]]; then
  echo "scripts/test.sh: must run as root (the end-to-end tests need network namespaces and iptables)" >&2
  exit 1
fi

bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j2
cd build
# The end-to-end tests are RUN_SERIAL; unit tests share the two cores.
ctest --output-on-failure -j2 --timeout 600
