#!/usr/bin/env bash
# Issue 11's identity flags on a running dsproxy (the TLS checks themselves are unit tests,
# tests/unit/identity_*_test.cpp):
#   1. without certificates dsproxy runs as before and says "mTLS off" at start;
#   2. with --ca-cert/--ca-key it issues a certificate for the service account of every pod on
#      its node (and none other), shown in /config_dump with its trust bundle;
#   3. no private key (the CA's or a leaf's) appears in /config_dump or the log;
#   4. a CA key readable by others stops the start (exit 2) with a clear line that does not
#      quote the key.
#
#   identity_flags.sh DSPROXY_BIN ECHO_BIN TEST_PKI_BIN
#
# Needs root, iproute2, iptables, python3; about 10 s. Everything it creates is removed on exit.

set -uo pipefail

# shellcheck source=tests/e2e/lib/suite.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_args TEST_PKI_BIN -- "$@"

E2E_DEADLINE=${E2E_DEADLINE:-60}

suite_trap
suite_require
command -v python3 >/dev/null 2>&1 || cluster_die "python3 is not installed"
[[ -x $TEST_PKI_BIN ]] || cluster_die "test PKI tool $TEST_PKI_BIN is not an executable"
cluster_up

# ---- 1. no certificates: plaintext as before, said at start --------------------------------
start_dsproxy
ok=$?
check "dsproxy without certificates starts" $ok
grep -q "mTLS off: no certificates configured" "$DSPROXY_LOG"
check "it says mTLS is off" $?
stop_dsproxy
check "it stops on SIGTERM" $?

# ---- 2. local issuer: one certificate per local pod's service account ------------------------
"$TEST_PKI_BIN" ca "$CLUSTER_TMP/pki" || cluster_die "cannot make the test CA"
: >"$CLUSTER_TMP/dsproxy.log"
start_dsproxy --ca-cert "$CLUSTER_TMP/pki/ca.crt" --ca-key "$CLUSTER_TMP/pki/ca.key" --cert-lifetime-s 3600
check "dsproxy with --ca-cert/--ca-key starts" $?
grep -q "mTLS on: local-issuer" "$DSPROXY_LOG"
check "it says mTLS is on" $?
# The identities follow the first snapshot within a poll (1 s); bounded wait.
want=$(python3 - "$DSPROXY_CONFIG" "$CLUSTER_NODE_NAME" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ids = set()
for d in docs:
    if d.get("kind") == "Pod" and d.get("spec", {}).get("nodeName") == sys.argv[2] and not d["spec"].get("hostNetwork"):
        sa = d["spec"].get("serviceAccountName") or d["spec"].get("serviceAccount") or "default"
        ids.add("spiffe://cluster.local/ns/%s/sa/%s" % (d["metadata"].get("namespace", "default"), sa))
print(" ".join(sorted(ids)))
PY
)
got=
for ((i = 0; i < 30; i++)); do
  dump=$(node_http_get 15000 /config_dump | sed '1,/^\r$/d')
  got=$(python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(" ".join(sorted(c["identity"] for c in d["identity"]["certificates"])))' <<<"$dump" 2>/dev/null)
  [[ -n $got && $got == "$want" ]] && break
  sleep 0.2
done
[[ -n $want && $got == "$want" ]]
check "a certificate for exactly the local pods' identities" $? "want [$want], got [$got]"
python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); r=d["identity"]["trustBundle"]["roots"]; sys.exit(0 if len(r)==1 and "dsproxy test root" in r[0]["subject"] else 1)' <<<"$dump"
check "/config_dump shows the trust bundle's root" $?

# ---- 3. no key material anywhere -------------------------------------------------------------
key_line=$(grep -v -- "-----" "$CLUSTER_TMP/pki/ca.key" | head -n 1 | cut -c1-24)
! grep -q "PRIVATE KEY" <<<"$dump" && ! grep -qF -- "$key_line" <<<"$dump"
check "no key in /config_dump" $?
stop_dsproxy
check "it stops on SIGTERM" $?
! grep -q "PRIVATE KEY" "$DSPROXY_LOG" && ! grep -qF -- "$key_line" "$DSPROXY_LOG"
check "no key in the log" $?

# ---- 4. an open CA key stops the start ---------------------------------------------------------
chmod 0644 "$CLUSTER_TMP/pki/ca.key"
: >"$CLUSTER_TMP/dsproxy.log"
start_dsproxy --ca-cert "$CLUSTER_TMP/pki/ca.crt" --ca-key "$CLUSTER_TMP/pki/ca.key"
[[ $DSPROXY_EXIT_STATUS == 2 ]]
check "a group/world-readable CA key: exit 2" $? "exit status ${DSPROXY_EXIT_STATUS:-none}"
grep -q "is readable by group or others (mode 0644)" "$DSPROXY_LOG" && ! grep -qF -- "$key_line" "$DSPROXY_LOG"
check "with a clear line that does not quote the key" $?

echo "(took ${SECONDS}s)"
summary
((FAILED == 0))
