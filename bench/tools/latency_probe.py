#!/usr/bin/env python3
"""Asks dsproxy's DNS proxy and readiness endpoint, in turn, over and over, and records how long
each answer took: one line per probe on stdout, `<unix time s> dns|ready <latency ms> ok|fail`.

For bench/reload_latency.sh (issue 13: "the DNS server and readiness endpoint keep answering
within 10 ms p99 while a 100,000-endpoint config is being reloaded"). Each DNS probe is one UDP A
question for a cluster name to DNS_ADDR (the node's own queries from loopback are answered);
each readiness probe is a new TCP connection with `GET /healthz/ready` to READY_ADDR, read to the
end, as the kubelet does. A probe that gets no answer within 2 s counts as 2000 ms and `fail`.
One probe every --interval-ms (default 5), so the load itself stays small. Runs until SIGTERM or
--seconds. Only the standard library.
"""

import argparse
import random
import signal
import socket
import struct
import sys
import time

TIMEOUT_S = 2.0


def dns_query(name, qid):
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return header + qname + struct.pack("!HH", 1, 1)


def probe_dns(addr, name):
    qid = random.randrange(65536)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT_S)
    try:
        start = time.perf_counter()
        s.sendto(dns_query(name, qid), addr)
        while True:
            data, _ = s.recvfrom(4096)
            if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                elapsed = time.perf_counter() - start
                rcode = data[3] & 0x0F
                answers = struct.unpack("!H", data[6:8])[0]
                return elapsed, rcode == 0 and answers > 0
    except OSError:
        return TIMEOUT_S, False
    finally:
        s.close()


def probe_ready(addr):
    start = time.perf_counter()
    try:
        with socket.create_connection(addr, timeout=TIMEOUT_S) as s:
            s.settimeout(TIMEOUT_S)
            s.sendall(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return time.perf_counter() - start, data.startswith(b"HTTP/1.1 200")
    except OSError:
        return TIMEOUT_S, False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dns", default="127.0.0.1:15053")
    p.add_argument("--ready", default="127.0.0.1:15021")
    p.add_argument("--name", default="svc-0.ns-0.svc.cluster.local")
    p.add_argument("--interval-ms", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=600.0)
    args = p.parse_args()
    host, port = args.dns.rsplit(":", 1)
    dns_addr = (host, int(port))
    host, port = args.ready.rsplit(":", 1)
    ready_addr = (host, int(port))

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    end = time.monotonic() + args.seconds
    out = sys.stdout
    turn = 0
    while not stopping and time.monotonic() < end:
        t = time.time()
        if turn % 2 == 0:
            elapsed, ok = probe_dns(dns_addr, args.name)
            kind = "dns"
        else:
            elapsed, ok = probe_ready(ready_addr)
            kind = "ready"
        out.write("%.3f %s %.3f %s\n" % (t, kind, elapsed * 1000.0, "ok" if ok else "fail"))
        out.flush()
        turn += 1
        time.sleep(args.interval_ms / 1000.0)


if __name__ == "__main__":
    main()
