#!/usr/bin/env bash
# ctest deploy.manifests: renders deploy/ with kustomize and checks the output, and the kind
# e2e's manifests, offline against the Kubernetes OpenAPI schemas and dsproxy's own rules
# (tests/deploy/validate.mjs says which). Then breaks copies of deploy/ on purpose and expects
# each break to be caught, so the check is shown to be able to fail.
#
#   tests/deploy/validate.sh WORK_DIR
#
# WORK_DIR holds the rendered output; the pinned npm packages (npm ci from
# tests/deploy/package-lock.json) are cached per lock file in ~/.cache/dsproxy. Needs kubectl (its built-in kustomize;
# scripts/install-deps.sh installs Debian's kubernetes-client when no kubectl is present), node
# and npm, and the npm registry for the first run. Missing any of them is a failure.
set -uo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)
if (($# != 1)); then
  echo "usage: $0 WORK_DIR" >&2
  exit 2
fi
work=$1

# shellcheck source=tests/e2e/lib/checks.sh
source "$repo/tests/e2e/lib/checks.sh"
die() {
  echo "FATAL: $*" >&2
  exit 1
}

for cmd in kubectl node npm sha256sum flock; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is not installed (run scripts/install-deps.sh)"
done
mkdir -p "$work" || die "cannot create $work"
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

# ---- the validator's packages, pinned by package-lock.json ---------------------------------
# Installed once per lock file into a cache shared by every checkout (like ccache's), so a fresh
# clone (CI) pays npm ci only when the lock file changed; flock keeps concurrent runs apart.
stamp=$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)
modules=${DSPROXY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dsproxy}/deploy-validate-$stamp
mkdir -p "$modules" || die "cannot create $modules"
(
  flock 9
  if [[ ! -f $modules/installed ]]; then
    cp "$here/package.json" "$here/package-lock.json" "$modules/" &&
      (cd "$modules" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) &&
      touch "$modules/installed"
  fi
) 9>"$modules.lock" || die "npm ci in $modules failed"
[[ -f $modules/installed ]] || die "npm ci in $modules failed"
# Node resolves packages next to the script: the script runs from the work directory, whose
# node_modules is the cache's.
ln -sfn "$modules/node_modules" "$work/node_modules" || die "cannot link $work/node_modules"
cp "$here/validate.mjs" "$work/validate.mjs" || die "cannot copy validate.mjs"
validate() { (cd "$work" && node validate.mjs "$@"); }

# kustomize DIR OUT: renders with kubectl's built-in kustomize.
kustomize() { timeout 60 kubectl kustomize "$1" >"$2" 2>"$2.err"; }

echo "kubectl: $(kubectl version --client 2>/dev/null | head -n 2 | tr '\n' ' ')"

# ---- deploy/ ------------------------------------------------------------------------------
rendered=$work/deploy.rendered.yaml
kustomize "$repo/deploy" "$rendered"
ok=$?
check "kubectl kustomize deploy/ renders" $ok "$(cat "$rendered.err")"
out=$(validate --policy dsproxy "$rendered" 2>&1)
ok=$?
check "deploy/ is valid against the Kubernetes schemas and dsproxy's rules" $ok "$out"
((ok == 0)) && echo "$out" | tail -n 1 | sed 's/^/    /'

# Every manifest in deploy/ is in the kustomization: no stray file (like the old single
# daemonset.yaml with its sidecar) that someone could `kubectl apply -f` by mistake.
stray=
for f in "$repo"/deploy/*.yaml "$repo"/deploy/*.yml; do
  [[ -f $f ]] || continue
  name=$(basename -- "$f")
  [[ $name == kustomization.yaml ]] && continue
  grep -qE "^- +$name\$" "$repo/deploy/kustomization.yaml" || stray+=" $name"
done
[[ -z $stray ]]
check "every manifest in deploy/ is a resource of deploy/kustomization.yaml" $? "not listed:$stray"

# ---- the kind e2e's manifests ---------------------------------------------------------------
kind_dir=$repo/tests/e2e/kind
out=$(validate --policy "experiment=$repo/config/tcp-echo-experiment.yaml" "$kind_dir/experiment.yaml" 2>&1)
check "tests/e2e/kind/experiment.yaml is valid and its Services match config/tcp-echo-experiment.yaml" $? "$out"
out=$(validate --policy kind-config "$kind_dir/kind-cluster.yaml" 2>&1)
check "tests/e2e/kind/kind-cluster.yaml is a dual-stack kind config with 1 control plane + 2 workers" $? "$out"

# ---- the Containerfile's build stage installs only what scripts/install-deps.sh installs ----
# (the two lists would otherwise drift apart: the Containerfile is not built on our machines).
build_packages=$(awk '/^FROM .* AS build/ { on = 1; next } /^FROM / { on = 0 }
  on && /--no-install-recommends/ { grab = 1; sub(/.*--no-install-recommends/, "") }
  grab { for (i = 1; i <= NF; i++) { if ($i == "&&") { grab = 0; break } if ($i != "\\") print $i } }' \
  "$repo/Containerfile")
missing=
for p in $build_packages; do
  grep -v '^\s*#' "$repo/scripts/install-deps.sh" | grep -qwF -- "$p" || missing+=" $p"
done
[[ -n $build_packages && -z $missing ]]
ok=$?
check "the Containerfile's build packages ($(wc -w <<<"$build_packages")) are all in scripts/install-deps.sh" $ok \
  "not there:${missing:- (no package found in the Containerfile)}"

# ---- the check can fail: broken copies of deploy/ ---------------------------------------------
# broken NAME FILE SED-EXPRESSION EXPECTED-MESSAGE: applies the edit to a copy of deploy/, which
# must still render, and expects validate.mjs to reject it with a message containing EXPECTED.
broken() {
  local name=$1 file=$2 edit=$3 want=$4 copy="$tmp/$1" out status
  rm -rf -- "$copy"
  cp -r "$repo/deploy" "$copy"
  sed -i -E "$edit" "$copy/$file"
  if cmp -s "$repo/deploy/$file" "$copy/$file"; then
    fail "broken copy '$name': the edit changed nothing in $file (fix the test)"
    return
  fi
  if ! kustomize "$copy" "$copy.yaml"; then
    fail "broken copy '$name' does not render: $(cat "$copy.yaml.err")"
    return
  fi
  out=$(validate --policy dsproxy "$copy.yaml" 2>&1)
  status=$?
  [[ $status != 0 && $out == *"$want"* ]]
  check "broken copy '$name' is rejected with '$want'" $? "exit $status: $(grep INVALID <<<"$out" | head -n 3)"
}
broken typo-field daemonset.yaml 's/^(\s+)readinessProbe:/\1readinesProbe:/' \
  "readinesProbe: unknown field"
broken misplaced-field daemonset.yaml 's/^(\s+)hostNetwork: true/\1hostNetwork: true\n\1hostPort: 15021/' \
  "spec.template.spec.hostPort: unknown field"
broken wrong-type daemonset.yaml 's/terminationGracePeriodSeconds: 30/terminationGracePeriodSeconds: thirty/' \
  "terminationGracePeriodSeconds must be integer"
broken bad-enum daemonset.yaml 's/type: RollingUpdate/type: Rolling/' \
  "must be equal to one of the allowed values"
broken no-surge daemonset.yaml 's/maxSurge: 1/maxSurge: 0/' \
  "updateStrategy must be RollingUpdate with maxSurge 1 and maxUnavailable 0"
broken host-ports daemonset.yaml 's/^(\s+)readinessProbe:/\1ports: [{containerPort: 15021}]\n\1readinessProbe:/' \
  "no container ports"
broken privileged daemonset.yaml 's/privileged: false/privileged: true/' \
  "privileged: false"
broken extra-capability daemonset.yaml 's/add: \[NET_ADMIN, NET_RAW\]/add: [NET_ADMIN, NET_RAW, SYS_ADMIN]/' \
  "capabilities.add must be exactly NET_ADMIN and NET_RAW"
broken readiness-port daemonset.yaml 's/port: 15021/port: 15000/' \
  "readinessProbe must be httpGet :15021/healthz/ready"
broken no-liveness daemonset.yaml 's#path: /healthz/live#path: /healthz/ready#' \
  "livenessProbe must be httpGet :15021/healthz/live"
broken short-grace daemonset.yaml 's/terminationGracePeriodSeconds: 30/terminationGracePeriodSeconds: 10/' \
  "terminationGracePeriodSeconds (10) must cover"
broken rbac-write clusterrole.yaml '0,/verbs: \[get, list, watch\]/s//verbs: [get, list, watch, create]/' \
  "rules must be exactly get/list/watch"
broken rbac-secrets clusterrole.yaml 's/resources: \[services, pods, nodes, namespaces\]/resources: [services, pods, nodes, namespaces, secrets]/' \
  "rules must be exactly get/list/watch"
broken no-priority daemonset.yaml '/priorityClassName:/d' \
  "priorityClassName must be system-node-critical"
broken sidecar daemonset.yaml 's/^(\s+)containers:/\1containers:\n\1- {name: objects, image: bitnami\/kubectl:latest}/' \
  "exactly one container (no sidecar)"

# ... and of the kind manifests: a Service that no longer matches the experiment's.
sed -E '0,/ipFamilyPolicy: RequireDualStack/s//ipFamilyPolicy: PreferDualStack/' \
  "$kind_dir/experiment.yaml" >"$tmp/experiment.yaml"
out=$(validate --policy "experiment=$repo/config/tcp-echo-experiment.yaml" "$tmp/experiment.yaml" 2>&1)
status=$?
[[ $status != 0 && $out == *"Service dual-stack/tcp-echo: differs from"* ]]
check "a kind experiment.yaml whose dual-stack Service is PreferDualStack is rejected" $? "exit $status: $out"

echo "(took ${SECONDS}s)"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
