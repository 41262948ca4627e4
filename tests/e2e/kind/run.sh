#!/usr/bin/env bash
# NOT RUN ON OUR MACHINES: they reach no container registry, so neither kind's node image
# (kindest/node) nor debian:12 can be pulled. CI only lints this script (ctest lint.shell) and
# validates its manifests (ctest deploy.manifests). Run it on a machine with Docker and kind.
#
# The dual-stack tcp-echo experiment on a real cluster: creates a dual-stack kind cluster (one
# control plane, two workers; kind-cluster.yaml), builds dsproxy's image and the test app's image
# with the Containerfile, loads both into the nodes, applies deploy/ (kubectl apply -k), deploys
# experiment.yaml (the three tcp-echo namespaces, sleep and a client on the other worker), waits
# for everything to be ready, runs the experiment by name from the sleep pod
# (`echo X | nc tcp-echo.<ns> 9000`, once per Service family), checks every answer and the client
# address every tcp-echo pod saw, prints `dsproxy proxy-config` of the worker's dsproxy, and
# deletes the cluster on every exit path (DSPROXY_KIND_KEEP=1 keeps it).
#
#   tests/e2e/kind/run.sh
#
# Needs: docker, kind (v0.20 or later: node labels in the config), kubectl, and network access to
# Docker Hub (kindest/node, debian:12). Environment: DSPROXY_KIND_CLUSTER (cluster name, default
# dsproxy-e2e), DSPROXY_KIND_NODE_IMAGE (passed to kind --image), DSPROXY_KIND_KEEP.
#
# What it checks, per Service and family (the pods are dual-stack, the Services are not):
#   tcp-echo.dual-stack  its IPv6 and IPv4 ClusterIPs   answer "hello dualstack"; pod sees sleep's
#                                                       IPv6, then IPv4, address
#   tcp-echo.ipv4        10.96.104.229                  "hello ipv4"; pod sees sleep's IPv4
#   tcp-echo.ipv6        fd00:10:96::9c3a               "hello ipv6"; pod sees sleep's IPv6
#   by name from sleep   tcp-echo.<ns>                  answers (the family is the resolver's pick)
#   port 9002 of a ClusterIP                            refused (no Service port)
#   remote client (other worker) -> each tcp-echo pod   answers; pod sees the remote client's address
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../../.." && pwd)
cluster=${DSPROXY_KIND_CLUSTER:-dsproxy-e2e}
context=kind-$cluster
image=localhost/dsproxy:dev
echo_image=localhost/dsproxy-tcp-echo:dev

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
die() {
  echo "kind: FATAL: $*" >&2
  exit 1
}
log() { echo "kind: $*" >&2; }

for cmd in docker kind kubectl; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is not installed"
done
docker info >/dev/null 2>&1 || die "docker does not answer (is the daemon running, may you use it?)"
if kind get clusters 2>/dev/null | grep -qxF "$cluster"; then
  die "a kind cluster named $cluster exists already (delete it, or set DSPROXY_KIND_CLUSTER)"
fi

k() { kubectl --context "$context" "$@"; }

created=
cleanup() {
  local status=$?
  set +e
  if ((status != 0 || FAILED > 0)) && [[ -n $created ]]; then
    log "dsproxy's logs on the cluster:"
    k -n kube-system logs -l app.kubernetes.io/name=dsproxy --tail=40 --prefix 2>&1 | sed 's/^/    /'
  fi
  if [[ -n $created && -z ${DSPROXY_KIND_KEEP:-} ]]; then
    log "deleting cluster $cluster"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || log "could not delete cluster $cluster"
  elif [[ -n $created ]]; then
    log "cluster $cluster kept (DSPROXY_KIND_KEEP); delete it with: kind delete cluster --name $cluster"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- cluster and images ---------------------------------------------------------------------
log "creating dual-stack cluster $cluster (1 control plane, 2 workers)"
created=1
kind create cluster --name "$cluster" --config "$here/kind-cluster.yaml" --wait 180s \
  ${DSPROXY_KIND_NODE_IMAGE:+--image "$DSPROXY_KIND_NODE_IMAGE"}

log "building $image and $echo_image with the Containerfile"
docker build -f "$repo/Containerfile" --target runtime -t "$image" "$repo"
docker build -f "$repo/Containerfile" --target tcp-echo -t "$echo_image" "$repo"
kind load docker-image --name "$cluster" "$image" "$echo_image"

# ---- dsproxy and the experiment -----------------------------------------------------------------
log "kubectl apply -k deploy/"
k apply -k "$repo/deploy"
k -n kube-system rollout status daemonset/dsproxy --timeout=180s
k apply -f "$here/experiment.yaml"
for ns in dual-stack ipv4 ipv6; do
  k -n "$ns" rollout status deployment/tcp-echo --timeout=180s
done
k -n default rollout status deployment/sleep --timeout=180s
k -n default rollout status deployment/remote-client --timeout=180s

pod_of() { k -n "$1" get pods -l "app=$2" -o jsonpath='{.items[0].metadata.name}'; }
# pod_ip NS APP 4|6: the pod's address of that family (kind gives every pod both).
pod_ip() {
  local ips ip
  ips=$(k -n "$1" get pods -l "app=$2" -o jsonpath='{range .items[0].status.podIPs[*]}{.ip}{"\n"}{end}')
  for ip in $ips; do
    if [[ $3 == 6 && $ip == *:* ]] || [[ $3 == 4 && $ip != *:* ]]; then
      echo "$ip"
      return 0
    fi
  done
  return 1
}
sleep_pod=$(pod_of default sleep)
remote_pod=$(pod_of default remote-client)
node=$(k -n default get pod "$sleep_pod" -o jsonpath='{.spec.nodeName}')
dsproxy_pod=$(k -n kube-system get pods -l app.kubernetes.io/name=dsproxy \
  --field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}')
[[ -n $dsproxy_pod ]] || die "no dsproxy pod on $node"
sleep4=$(pod_ip default sleep 4) || die "sleep has no IPv4 address (is the cluster dual-stack?)"
sleep6=$(pod_ip default sleep 6) || die "sleep has no IPv6 address (is the cluster dual-stack?)"
remote4=$(pod_ip default remote-client 4) || die "remote-client has no IPv4 address"
remote6=$(pod_ip default remote-client 6) || die "remote-client has no IPv6 address"

# via POD DEST PORT PAYLOAD: what tcp-echo answered (nc -N: half-close after the line).
via() { k -n default exec "$1" -- timeout 10 sh -c "echo '$4' | nc -N -w 5 $2 $3" 2>&1 || true; }
# peers NS: the tcp-echo pod's peer log ("<port> <client address>" per connection).
peers() { k -n "$1" exec "$(pod_of "$1" tcp-echo)" -- cat /tmp/peers 2>/dev/null || true; }
# expect_peer NS PORT ADDRESS WHAT: the last connection the pod saw came from ADDRESS.
expect_peer() {
  local last
  last=$(peers "$1" | tail -n 1)
  if [[ $last == "$2 $3" ]]; then pass "$4: tcp-echo.$1 saw the client as $3"; else
    fail "$4: tcp-echo.$1 saw '$last', want '$2 $3'"
  fi
}
expect_answer() { # WHAT GOT WANT
  if [[ $2 == "$3" ]]; then pass "$1 answers '$3'"; else fail "$1 answered '${2//$'\n'/\\n}', want '$3'"; fi
}

# ---- 1. by ClusterIP: the family of the address dialled decides the endpoint's family -----------
while read -r ns vip family payload; do
  [[ $family == 6 ]] && want=$sleep6 || want=$sleep4
  what="sleep -> tcp-echo.$ns $vip:9000"
  expect_answer "$what" "$(via "$sleep_pod" "$vip" 9000 "$payload")" "hello $payload"
  expect_peer "$ns" 9000 "$want" "$what"
done <<'EOF'
dual-stack fd00:10:96::f9fc 6 dualstack
dual-stack 10.96.106.11 4 dualstack
ipv4 10.96.104.229 4 ipv4
ipv6 fd00:10:96::9c3a 6 ipv6
EOF

# ---- 2. by name, as the announcement runs it ---------------------------------------------------
for ns in dual-stack ipv4 ipv6; do
  payload=${ns//-/}
  what="sleep: echo $payload | nc tcp-echo.$ns 9000"
  expect_answer "$what" "$(via "$sleep_pod" "tcp-echo.$ns" 9000 "$payload")" "hello $payload"
  last=$(peers "$ns" | tail -n 1)
  if [[ $last == "9000 $sleep4" || $last == "9000 $sleep6" ]]; then
    pass "$what: tcp-echo.$ns saw the sleep pod's own address (${last#9000 })"
  else
    fail "$what: tcp-echo.$ns saw '$last', want 9000 $sleep4 or 9000 $sleep6"
  fi
done

# ---- 3. a ClusterIP on a port its Service lacks is refused -------------------------------------
for vip in fd00:10:96::f9fc 10.96.106.11 10.96.104.229 fd00:10:96::9c3a; do
  out=$(k -n default exec "$sleep_pod" -- timeout 10 sh -c "echo x | nc -v -N -w 3 $vip 9002" 2>&1 || true)
  if [[ $out == *"refused"* ]]; then pass "sleep -> $vip:9002 (no Service port) is refused"; else
    fail "sleep -> $vip:9002 (no Service port): '${out//$'\n'/\\n}', want connection refused"
  fi
done

# ---- 4. from the other worker to each pod, through the inbound capture -------------------------
for ns in dual-stack ipv4 ipv6; do
  for family in 4 6; do
    ip=$(pod_ip "$ns" tcp-echo "$family")
    [[ $family == 6 ]] && want=$remote6 || want=$remote4
    what="remote-client -> tcp-echo.$ns pod $ip:9000"
    expect_answer "$what" "$(via "$remote_pod" "$ip" 9000 remote)" "hello remote"
    expect_peer "$ns" 9000 "$want" "$what"
  done
done

# ---- 5. what the worker's dsproxy shows --------------------------------------------------------
echo "\$ kubectl -n kube-system exec $dsproxy_pod -- dsproxy proxy-config listeners --port 9000"
listeners=$(k -n kube-system exec "$dsproxy_pod" -- /usr/local/bin/dsproxy proxy-config listeners --port 9000 2>&1 || true)
echo "$listeners"
echo "\$ kubectl -n kube-system exec $dsproxy_pod -- dsproxy proxy-config endpoints --port 9000"
endpoints=$(k -n kube-system exec "$dsproxy_pod" -- /usr/local/bin/dsproxy proxy-config endpoints --port 9000 2>&1 || true)
echo "$endpoints"
if grep -qE '^fd00:10:96::f9fc,10\.96\.106\.11[[:space:]]+9000' <<<"$listeners"; then
  pass "proxy-config listeners: the dual-stack Service has one listener with both ClusterIPs"
else
  fail "proxy-config listeners: no listener 'fd00:10:96::f9fc,10.96.106.11 9000'"
fi
if grep -qE "^$(pod_ip dual-stack tcp-echo 6):9000[[:space:]]+HEALTHY" <<<"$endpoints"; then
  pass "proxy-config endpoints: the dual-stack pod's IPv6 endpoint is HEALTHY"
else
  fail "proxy-config endpoints: the dual-stack pod's IPv6 endpoint is not HEALTHY"
fi

echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
