#!/usr/bin/env python3
"""Writes a synthetic dual-stack cluster as `kubectl get ... -o json|yaml` would print it.

For the decoder/source scale measurements of issue 10: N Services, each with an IPv4 and an IPv6
EndpointSlice of M endpoints (one per pod), the Pods of one node ("this node"), as one
`kind: List`. Objects carry the metadata a real dump has (uid, resourceVersion, timestamps,
managed-by labels, targetRef), so sizes are realistic; keys are sorted as kubectl sorts them
("items" before "kind"). Deterministic: the same arguments give the same bytes.

  gen_cluster.py --services 10000 --endpoints-per-slice 5 --format json > cluster.json
      10,000 Services, 20,000 slices, 100,000 endpoints (both families), 50,000 pods of which
      this node's (--nodes 100: 500) are listed
  gen_cluster.py --services 20000 --single-stack 10000 --endpoints-per-slice 2 --format yaml
      20,000 Services, 30,000 slices: the file of issue 10

Only the standard library; the YAML writer below emits the block style kubectl emits.
"""

import argparse
import ipaddress
import json
import re
import sys
import uuid

NODE_PREFIX = "node-"


def uid(*parts):
    return str(uuid.uuid5(uuid.NAMESPACE_OID, "/".join(str(p) for p in parts)))


def meta(name, namespace, index, labels=None, extra=None):
    m = {
        "creationTimestamp": "2026-12-01T10:%02d:%02dZ" % (index // 60 % 60, index % 60),
        "name": name,
        "namespace": namespace,
        "resourceVersion": str(100000 + index),
        "uid": uid(namespace, name),
    }
    if labels:
        m["labels"] = labels
    if extra:
        m.update(extra)
    return m


def v4(base, i):
    return str(ipaddress.IPv4Address(base) + i)


def v6(base, i):
    return str(ipaddress.IPv6Address(base) + i)


def cluster(args):
    items = []
    slices = []
    pods = []
    this_node = NODE_PREFIX + "0"
    pod_index = 0
    for s in range(args.services):
        ns = "ns-%d" % (s % args.namespaces)
        name = "svc-%d" % s
        dual = s < args.services - args.single_stack
        ips = [v4("10.96.0.10", s)] + ([v6("fd00:10:96::a", s)] if dual else [])
        selector = {"app": name}
        items.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(name, ns, s, labels={"app": name, "app.kubernetes.io/part-of": "bench"}),
            "spec": {
                "clusterIP": ips[0],
                "clusterIPs": ips,
                "internalTrafficPolicy": "Cluster",
                "ipFamilies": ["IPv4", "IPv6"] if dual else ["IPv4"],
                "ipFamilyPolicy": "RequireDualStack" if dual else "SingleStack",
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                    {"name": "grpc", "port": 9000, "protocol": "TCP", "targetPort": "grpc"},
                ],
                "selector": selector,
                "sessionAffinity": "None",
                "type": "ClusterIP",
            },
            "status": {"loadBalancer": {}},
        })
        members = []
        for e in range(args.endpoints_per_slice):
            node = NODE_PREFIX + str(pod_index % args.nodes)
            pod = "%s-%s" % (name, uid(name, e)[:10])
            members.append((pod, node, v4("10.128.0.2", pod_index), v6("fd00:10:244::2", pod_index)))
            if node == this_node:
                pods.append({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": meta(pod, ns, pod_index, labels={"app": name, "pod-template-hash": "7d4b9c"}),
                    "spec": {
                        "containers": [{
                            "image": "registry.example/app:1.0",
                            "name": "app",
                            "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"},
                                      {"containerPort": 9000, "name": "grpc", "protocol": "TCP"}],
                        }],
                        "nodeName": node,
                        "serviceAccountName": "default",
                    },
                    "status": {
                        "conditions": [{"status": "True", "type": "Ready"}],
                        "phase": "Running",
                        "podIP": members[-1][2],
                        "podIPs": [{"ip": members[-1][2]}, {"ip": members[-1][3]}],
                    },
                })
            pod_index += 1
        for family in (["IPv4", "IPv6"] if dual else ["IPv4"]):
            slice_name = "%s-%s" % (name, uid(name, family)[:5])
            slices.append({
                "addressType": family,
                "apiVersion": "discovery.k8s.io/v1",
                "endpoints": [{
                    "addresses": [a4 if family == "IPv4" else a6],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": node,
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": ns, "uid": uid(ns, pod)},
                    "zone": "zone-%s" % node[-1],
                } for pod, node, a4, a6 in members],
                "kind": "EndpointSlice",
                "metadata": meta(slice_name, ns, s, labels={
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    "kubernetes.io/service-name": name,
                }),
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                          {"name": "grpc", "port": 9000, "protocol": "TCP"}],
            })
    items.extend(slices)
    items.extend(pods)
    return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}


# ---- a YAML writer in kubectl's block style ----

PLAIN_UNSAFE = set("-?:,[]{}#&*!|>'\"%@`")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d")


def scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    s = str(v)
    # Quote what YAML would read as something else than this string.
    looks_typed = s.lower() in ("true", "false", "null", "yes", "no", "on", "off", "~", "")
    try:
        float(s)
        looks_typed = True
    except ValueError:
        pass
    if looks_typed or TIMESTAMP.match(s) or s[0] in PLAIN_UNSAFE or ": " in s or " #" in s or s != s.strip():
        return json.dumps(s)
    return s


def write_yaml(v, out, indent=0):
    pad = " " * indent
    if isinstance(v, dict):
        for k, x in sorted(v.items()):
            if isinstance(x, dict) and x:
                out.write("%s%s:\n" % (pad, scalar(k)))
                write_yaml(x, out, indent + 2)
            elif isinstance(x, list) and x:
                out.write("%s%s:\n" % (pad, scalar(k)))
                write_yaml(x, out, indent)
            else:
                out.write("%s%s: %s\n" % (pad, scalar(k), "{}" if x == {} else "[]" if x == [] else scalar(x)))
    elif isinstance(v, list):
        for x in v:
            if isinstance(x, dict) and x:
                # The first key on the dash line, the rest aligned under it.
                first = True
                for k, y in sorted(x.items()):
                    lead = pad + ("- " if first else "  ")
                    first = False
                    if isinstance(y, dict) and y:
                        out.write("%s%s:\n" % (lead, scalar(k)))
                        write_yaml(y, out, indent + 4)
                    elif isinstance(y, list) and y:
                        out.write("%s%s:\n" % (lead, scalar(k)))
                        write_yaml(y, out, indent + 2)
                    else:
                        out.write("%s%s: %s\n" % (lead, scalar(k), "{}" if y == {} else "[]" if y == [] else scalar(y)))
            else:
                out.write("%s- %s\n" % (pad, scalar(x)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--endpoints-per-slice", type=int, default=5)
    p.add_argument("--single-stack", type=int, default=0, help="the last K services are IPv4 only (one slice)")
    p.add_argument("--nodes", type=int, default=100, help="pods spread over this many nodes; node-0's are listed")
    p.add_argument("--namespaces", type=int, default=50)
    p.add_argument("--format", choices=["json", "yaml"], default="json")
    p.add_argument("-o", "--output", default="-")
    args = p.parse_args()
    if args.single_stack > args.services:
        p.error("--single-stack is more than --services")
    doc = cluster(args)
    out = sys.stdout if args.output == "-" else open(args.output, "w")
    if args.format == "json":
        json.dump(doc, out, indent=4, sort_keys=True)  # kubectl -o json indents by 4
        out.write("\n")
    else:
        write_yaml(doc, out)
    out.close()


if __name__ == "__main__":
    main()
