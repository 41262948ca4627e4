#!/usr/bin/env python3
"""Turns bench/run.sh's raw.jsonl into results.json, results.md and results.png.

Usage: report.py RESULTS_DIR

Every figure is the median over the runs. A ratio of dsproxy to a peer is computed within each
run (same run, same family: the interleaved measurements closest in time) and then the median
of those ratios is shown, as only ratios from one run mean anything on a noisy shared machine.
Standard library only; the chart is drawn by gnuplot.
"""

import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict

PEER_ORDER = ["direct", "dsproxy", "dsproxy-svc", "dsproxy-w2", "dsproxy-explicit", "haproxy-splice", "haproxy",
              "nginx"]
# The "best peer" of the ratio tables is chosen among these only (never a dsproxy variant).
OTHER_PEERS = ["haproxy-splice", "haproxy", "nginx"]
PEER_LABEL = {
    "direct": "direct (the limit)",
    "dsproxy": "**dsproxy** (passthrough)",
    "dsproxy-svc": "**dsproxy** (ClusterIP)",
    "dsproxy-w2": "**dsproxy** 2 workers",
    "dsproxy-explicit": "**dsproxy** explicit address (no TPROXY)",
    "haproxy-splice": "HAProxy, splice forced",
    "haproxy": "HAProxy, no splice",
    "nginx": "nginx stream",
}

# name: (description, unit, higher_is_better)
METRICS = {
    "bulk1_gbps": ("bulk, 1 stream", "Gbit/s", True),
    "bulk1_cpu_per_gbps": ("proxy %core per Gbit/s, 1 stream", "%core", False),
    "bulk8_gbps": ("bulk, 8 streams", "Gbit/s", True),
    "bulk8_cpu_per_gbps": ("proxy %core per Gbit/s, 8 streams", "%core", False),
    "conn1_rate": ("connect + 64 B echo + close, sequential", "/s", True),
    "conn1_p50_us": ("  its p50", "µs", False),
    "conn1_p99_us": ("  its p99", "µs", False),
    "conn1_cpu_us": ("proxy CPU per connection", "µs", False),
    "conn1_user_us": ("  of it in user space", "µs", False),
    "conn1_machine_us": ("machine CPU per connection (all processes)", "µs", False),
    "rtt_p50_us": ("64 B round trip p50", "µs", False),
    "rtt_p99_us": ("64 B round trip p99", "µs", False),
    "rtt_added_p50_us": ("round trip p50 added over direct", "µs", False),
    "conn4_rate": ("connection rate, 4 clients", "/s", True),
    "conn4_p99_us": ("  its p99", "µs", False),
    "conn4_cpu_us": ("proxy CPU per connection, 4 clients", "µs", False),
    "conn4_user_us": ("  of it in user space", "µs", False),
    "conn4_machine_us": ("machine CPU per connection, 4 clients (all processes)", "µs", False),
    "conn16_rate": ("connection rate, 16 clients", "/s", True),
    "conn16_p99_us": ("  its p99", "µs", False),
    "conn16_cpu_us": ("proxy CPU per connection, 16 clients", "µs", False),
    "conn16_user_us": ("  of it in user space", "µs", False),
    "conn16_machine_us": ("machine CPU per connection, 16 clients (all processes)", "µs", False),
    "rss_idle_mb": ("RSS idle", "MB", False),
    "rss_hold_mb": ("RSS with the idle connections", "MB", False),
    "per_conn_kib": ("memory per idle proxied connection", "KiB", False),
}


# The target "TPROXY within 5 % of explicit addressing": dsproxy (passthrough, TPROXY
# capture) divided by dsproxy-explicit (client dials the node, --forward, no capture) per run.
TPROXY_PEER, EXPLICIT_PEER = "dsproxy", "dsproxy-explicit"
TPROXY_TOLERANCE = 0.05
TPROXY_METRICS = ["bulk1_gbps", "bulk8_gbps", "conn1_rate", "conn4_rate", "conn16_rate", "rtt_p50_us", "rtt_p99_us"]

# The connection tests whose user-space ceiling is computed (see user_space_share).
CEILING_METRICS = ["conn1", "conn4", "conn16"]


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def values_of(rec):
    """The metrics one raw record contributes."""
    m, r = rec["metric"], rec.get("result") or {}
    out = {}
    if m in ("bulk1", "bulk8"):
        g = r.get("gbps") or 0
        if g > 0:
            out[m + "_gbps"] = g
            if rec["peer"] != "direct":
                out[m + "_cpu_per_gbps"] = rec.get("cpu_pct", 0) / g
    elif m in ("conn1", "conn4", "conn16"):
        if r.get("ops", 0) > 0:
            out[m + "_rate"] = r["rate"]
            out[m + "_p50_us"] = r["p50_us"]
            out[m + "_p99_us"] = r["p99_us"]
            if r["rate"] > 0:
                per_conn_us = lambda pct: pct / 100 / r["rate"] * 1e6
                if rec.get("machine_busy_pct") is not None:
                    out[m + "_machine_us"] = per_conn_us(rec["machine_busy_pct"])
                if rec["peer"] != "direct" and rec.get("cpu_pct") is not None:
                    out[m + "_cpu_us"] = per_conn_us(rec["cpu_pct"])
                    if rec.get("user_pct") is not None:
                        out[m + "_user_us"] = per_conn_us(rec["user_pct"])
                        out[m + "_user_share"] = user_space_share(rec)
    elif m == "rtt":
        if r.get("ops", 0) > 0:
            out["rtt_p50_us"] = r["p50_us"]
            out["rtt_p99_us"] = r["p99_us"]
    elif m == "rss_idle":
        out["rss_idle_mb"] = rec["rss_kb"] / 1024
    elif m == "hold":
        n = r.get("established", 0)
        if n > 0:
            out["rss_hold_mb"] = rec["rss_during_kb"] / 1024
            out["per_conn_kib"] = (rec["rss_during_kb"] - rec["rss_before_kb"]) / n
    return out


def user_space_share(rec):
    """The largest share of a connection's cost that the proxy's user-space code could account
    for: its user seconds per wall second (all of it on the critical path of a sequential
    client, or of a saturated proxy thread) or per machine-busy second (a saturated machine);
    the larger one, so that 1 / (1 - share) is an upper bound on the rate a proxy of zero
    user-space cost would reach with the same kernel work."""
    user = rec["user_pct"] / 100
    machine = (rec.get("machine_busy_pct") or 0) / 100
    return max(user, user / machine if machine > 0 else 0)


def family_table_header(first, columns, families):
    """The two header lines of a table with `columns` repeated per family; the first of them
    is prefixed with the family ("IPv4 ...")."""
    hdr, sep = f"| {first} |", "|---|"
    for fam in families:
        hdr += " " + " | ".join([f"IPv{fam} {columns[0]}".rstrip()] + columns[1:]) + " |"
        sep += "---|" * len(columns)
    return [hdr, sep]


def fmt(v, unit=""):
    if v is None:
        return "–"
    if unit in ("/s",):
        return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def main():
    out_dir = sys.argv[1]
    records = load(os.path.join(out_dir, "raw.jsonl"))
    meta = json.load(open(os.path.join(out_dir, "meta.json")))
    descriptions = {}
    peers_tsv = os.path.join(out_dir, "peers.tsv")
    if os.path.exists(peers_tsv):
        for line in open(peers_tsv):
            name, _, desc = line.rstrip("\n").partition("\t")
            descriptions[name] = desc

    # per[(peer, family)][metric][run] = value
    per = defaultdict(lambda: defaultdict(dict))
    errors = []
    loads = []
    for rec in records:
        if rec["metric"] == "error":
            errors.append(rec)
            continue
        if rec["metric"] not in ("rss_idle", "stats"):
            loads.append((rec["load1"], rec["idle_pct"], rec["quiet"]))
        for k, v in values_of(rec).items():
            per[(rec["peer"], rec["family"])][k][rec["run"]] = v
    # Latency added over direct, within each run.
    for (peer, fam), metrics in list(per.items()):
        direct = per.get(("direct", fam), {}).get("rtt_p50_us", {})
        for run, v in metrics.get("rtt_p50_us", {}).items():
            if peer != "direct" and run in direct:
                metrics["rtt_added_p50_us"][run] = v - direct[run]

    peers = [p for p in PEER_ORDER if any(k[0] == p for k in per)] + sorted(
        {k[0] for k in per} - set(PEER_ORDER))
    families = sorted({k[1] for k in per})

    def median(peer, fam, metric):
        vals = list(per.get((peer, fam), {}).get(metric, {}).values())
        return statistics.median(vals) if vals else None

    def spread(peer, fam, metric):
        vals = list(per.get((peer, fam), {}).get(metric, {}).values())
        if len(vals) < 2:
            return None
        m = statistics.median(vals)
        return (max(vals) - min(vals)) / m if m else None

    # Ratios of each dsproxy variant, per run, to the best other peer and to direct.
    ratios = {}
    for peer in [p for p in peers if p.startswith("dsproxy")]:
        for fam in families:
            for metric, (_, _, higher) in METRICS.items():
                mine = per.get((peer, fam), {}).get(metric, {})
                best_r, direct_r, best_names = [], [], []
                for run, v in mine.items():
                    cands = [(per[(o, fam)][metric][run], o) for o in OTHER_PEERS
                             if run in per.get((o, fam), {}).get(metric, {})]
                    if cands and metric != "rtt_added_p50_us":
                        bv, bn = (max if higher else min)(cands)
                        if bv:
                            best_r.append(v / bv)
                            best_names.append(bn)
                    d = per.get(("direct", fam), {}).get(metric, {}).get(run)
                    if d:
                        direct_r.append(v / d)
                ratios[(peer, fam, metric)] = {
                    "value": statistics.median(mine.values()) if mine else None,
                    "vs_best_peer": statistics.median(best_r) if best_r else None,
                    # the most frequent; on a tie all of the tied ones, in OTHER_PEERS order
                    "best_peer": "/".join(o for o in OTHER_PEERS if best_names.count(o) == max(
                        map(best_names.count, OTHER_PEERS))) if best_names else None,
                    "vs_direct": statistics.median(direct_r) if direct_r else None,
                }

    # TPROXY against explicit addressing, per run and family (null when either is missing).
    tproxy = None
    if any(k[0] == EXPLICIT_PEER for k in per) and any(k[0] == TPROXY_PEER for k in per):
        tproxy = {"target": f"{TPROXY_PEER} (TPROXY) within {TPROXY_TOLERANCE * 100:.0f} % of {EXPLICIT_PEER}: "
                            f"ratio >= {1 - TPROXY_TOLERANCE:.2f} where higher is better, "
                            f"<= {1 + TPROXY_TOLERANCE:.2f} where lower is better",
                  "tproxy_peer": TPROXY_PEER, "explicit_peer": EXPLICIT_PEER}
        for fam in families:
            fam_out = {}
            for metric in TPROXY_METRICS:
                higher = METRICS[metric][2]
                mine = per.get((TPROXY_PEER, fam), {}).get(metric, {})
                theirs = per.get((EXPLICIT_PEER, fam), {}).get(metric, {})
                per_run = {run: v / theirs[run] for run, v in sorted(mine.items()) if theirs.get(run)}
                r = statistics.median(per_run.values()) if per_run else None
                within = None
                if r is not None:
                    within = r >= 1 - TPROXY_TOLERANCE if higher else r <= 1 + TPROXY_TOLERANCE
                fam_out[metric] = {
                    "tproxy": median(TPROXY_PEER, fam, metric),
                    "explicit": median(EXPLICIT_PEER, fam, metric),
                    "ratio": r,
                    "ratio_per_run": per_run,
                    "within_target": within,
                }
            tproxy[f"ipv{fam}"] = fam_out

    # What a proxy of zero user-space cost could still reach on the connection rates: per run,
    # dsproxy's rate over the best other peer's, times 1 / (1 - dsproxy's user-space share).
    ceiling = None
    if any(k[0] == TPROXY_PEER for k in per):
        ceiling = {"peer": TPROXY_PEER}
        for fam in families:
            fam_out = {}
            for m in CEILING_METRICS:
                mine = per.get((TPROXY_PEER, fam), {})
                per_run = {}
                for run, share in mine.get(m + "_user_share", {}).items():
                    rate = mine.get(m + "_rate", {}).get(run)
                    cands = [per[(o, fam)][m + "_rate"][run] for o in OTHER_PEERS
                             if run in per.get((o, fam), {}).get(m + "_rate", {})]
                    if rate and cands and max(cands) > 0 and share < 1:
                        per_run[run] = rate / max(cands) / (1 - share)
                fam_out[m] = {
                    "cpu_us": median(TPROXY_PEER, fam, m + "_cpu_us"),
                    "user_us": median(TPROXY_PEER, fam, m + "_user_us"),
                    "machine_us": median(TPROXY_PEER, fam, m + "_machine_us"),
                    "user_share": median(TPROXY_PEER, fam, m + "_user_share"),
                    "vs_best_peer": ratios.get((TPROXY_PEER, fam, m + "_rate"), {}).get("vs_best_peer"),
                    "ceiling_vs_best_peer": statistics.median(per_run.values()) if per_run else None,
                    "ceiling_per_run": per_run,
                }
            ceiling[f"ipv{fam}"] = fam_out

    # ---------------------------------------------------------------- results.json
    result = {
        "meta": meta,
        "peers": {p: descriptions.get(p, p) for p in peers},
        "metrics": {k: {"description": d.strip(), "unit": u, "higher_is_better": h} for k, (d, u, h) in METRICS.items()},
        "medians": {p: {f"ipv{f}": {m: median(p, f, m) for m in METRICS} for f in families} for p in peers},
        "spread": {p: {f"ipv{f}": {m: spread(p, f, m) for m in METRICS} for f in families} for p in peers},
        "runs": {p: {f"ipv{f}": {m: per[(p, f)][m] for m in METRICS if per[(p, f)].get(m)} for f in families}
                 for p in peers},
        "dsproxy_ratios": {f"{p} ipv{f} {m}": r for (p, f, m), r in ratios.items()},
        "tproxy_vs_explicit": tproxy,
        "user_space_ceiling": ceiling,
        "errors": errors,
        "load": {
            "load1_min": min((l[0] for l in loads), default=None),
            "load1_max": max((l[0] for l in loads), default=None),
            "idle_pct_median": statistics.median([l[1] for l in loads]) if loads else None,
            "measurements": len(loads),
            "not_quiet": sum(1 for l in loads if not l[2]),
        },
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=False)

    # ---------------------------------------------------------------- results.md
    s = meta["settings"]
    mach = meta["machine"]
    L = []
    L.append(f"# dsproxy benchmark, {meta['date'][:10]}")
    L.append("")
    L.append(f"Machine: {mach['cpu']}, {mach['vcpus']} vCPUs, {mach['memory']}, kernel {mach['kernel']}, "
             f"{mach['os']}. Client, proxy and server share these vCPUs.")
    v = meta["versions"]
    L.append(f"Versions: dsproxy {v['dsproxy']} (binary sha256 {v.get('dsproxy_sha256_16', '?')}…), HAProxy {v['haproxy']}, nginx {v['nginx']}, iperf3 {v['iperf3']}.")
    L.append(f"Settings: {s['runs']} run(s) per cell{' (--quick)' if s['quick'] else ''}{' (--conn-only: connection rates only)' if s.get('conn_only') else ''}, interleaved (each run: "
             f"families alternating, peers rotating); bulk {s['bulk_seconds']} s (+{s['bulk_omit_seconds']} s "
             f"omitted), connection tests {s['conn_seconds']} s; idle-memory test with "
             f"{s['hold_connections']} connections (descriptor limit {s['fd_limit']}).")
    ld = result["load"]
    L.append(f"Load: 1-min load average {ld['load1_min']}–{ld['load1_max']} over {ld['measurements']} "
             f"measurements (start {meta.get('load_start', '?').split()[0]}, end "
             f"{meta.get('load_end', '? ').split()[0]}); median idle before a measurement "
             f"{fmt(ld['idle_pct_median'])} %; {ld['not_quiet']} measurement(s) started without a quiet machine "
             f"(idle < {s['quiet_idle_pct']} % after {s['quiet_max_wait_s']} s of waiting).")
    L.append("")
    cols = [("bulk1_gbps", "1 stream Gbit/s"), ("bulk1_cpu_per_gbps", "%core per Gbit/s"),
            ("bulk8_gbps", "8 streams Gbit/s"), ("bulk8_cpu_per_gbps", "%core per Gbit/s (8)"),
            ("conn1_rate", "conn+echo+close /s"), (("conn1_p50_us", "conn1_p99_us"), "its p50 / p99 µs"),
            (("rtt_p50_us", "rtt_p99_us"), "64 B RTT p50 / p99 µs"), ("rtt_added_p50_us", "RTT p50 added µs"),
            ("conn4_rate", "4-client conn/s"), ("conn16_rate", "16-client conn/s"), ("rss_idle_mb", "RSS idle MB"),
            ("per_conn_kib", "KiB per idle conn")]
    for fam in families:
        L.append(f"## IPv{fam}")
        L.append("")
        L.append("| path | " + " | ".join(c[1] for c in cols) + " |")
        L.append("|---|" + "---|" * len(cols))
        for p in peers:
            cells = []
            for key, _ in cols:
                if isinstance(key, tuple):
                    cells.append(" / ".join(fmt(median(p, fam, k), METRICS[k][1]) for k in key))
                else:
                    cells.append(fmt(median(p, fam, key), METRICS[key][1]))
            L.append(f"| {PEER_LABEL.get(p, p)} | " + " | ".join(cells) + " |")
        L.append("")
    for peer in [p for p in peers if p.startswith("dsproxy")]:
        L.append(f"## {PEER_LABEL.get(peer, peer).replace('**', '')}: ratios within each run (median)")
        L.append("")
        L.append("× best peer: dsproxy's figure divided by the best of HAProxy (splice), HAProxy and nginx in the same "
                 "run and family (>1 is better for throughput and rates, <1 is better for CPU, latency and memory); "
                 "× direct: divided by the direct path's figure.")
        L.append("")
        L += family_table_header("metric", ["", "× best peer (which)", "× direct"], families)
        for metric, (desc, unit, higher) in METRICS.items():
            row = f"| {desc.strip()} ({unit}, {'higher' if higher else 'lower'} is better) |"
            have = False
            for fam in families:
                r = ratios.get((peer, fam, metric), {})
                if r.get("value") is not None:
                    have = True
                vb = f"{r['vs_best_peer']:.2f}× ({r['best_peer']})" if r.get("vs_best_peer") is not None else "–"
                vd = f"{r['vs_direct']:.2f}×" if r.get("vs_direct") is not None else "–"
                row += f" {fmt(r.get('value'), unit)} | {vb} | {vd} |"
            if have:
                L.append(row)
        L.append("")
    if tproxy:
        pct = f"{TPROXY_TOLERANCE * 100:.0f} %"
        L.append("## TPROXY vs explicit addressing: ratios within each run (median)")
        L.append("")
        L.append(f"`{TPROXY_PEER}` (the client dials the server pod; TPROXY capture, upstream from the client's "
                 f"address) divided by `{EXPLICIT_PEER}` (the client dials the node's address; `--forward`, no "
                 f"capture rules, upstream from the node's address), in the same run and family. Target: TPROXY "
                 f"within {pct} of explicit addressing, i.e. ≥ {1 - TPROXY_TOLERANCE:.2f}× for throughput and rates, "
                 f"≤ {1 + TPROXY_TOLERANCE:.2f}× for latency.")
        L.append("")
        L += family_table_header("metric", ["TPROXY", "explicit", "× explicit", f"within {pct}"], families)
        for metric in TPROXY_METRICS:
            desc, unit, higher = METRICS[metric]
            row = f"| {desc.strip()} ({unit}, {'higher' if higher else 'lower'} is better) |"
            for fam in families:
                t = tproxy[f"ipv{fam}"][metric]
                ratio = f"{t['ratio']:.2f}×" if t["ratio"] is not None else "–"
                within = {True: "yes", False: "**no**", None: "–"}[t["within_target"]]
                row += f" {fmt(t['tproxy'], unit)} | {fmt(t['explicit'], unit)} | {ratio} | {within} |"
            L.append(row)
        L.append("")
    if ceiling and any(ceiling[f"ipv{fam}"][m]["ceiling_vs_best_peer"] is not None
                       for fam in families for m in CEILING_METRICS):
        L.append("## Connection rates: what user space can still win")
        L.append("")
        L.append(f"`{TPROXY_PEER}`'s user-space CPU per connection as a share of what a connection costs: the "
                 "larger of its user seconds per wall second (all of them on the critical path of a sequential "
                 "client) and per busy second of the whole machine (client, proxy, server and the kernel's "
                 "network processing share these vCPUs). A proxy whose own code cost nothing, doing the same "
                 "kernel work, could be at most 1 / (1 − share) faster; the ceiling is today's ratio to the best "
                 "peer in the same run times that bound.")
        L.append("")
        L += family_table_header("test", ["proxy CPU µs/conn", "of it user µs", "machine µs/conn", "user share",
                                          "× best peer", "ceiling × best peer"], families)
        for m in CEILING_METRICS:
            row = f"| {METRICS[m + '_rate'][0]} |"
            for fam in families:
                c = ceiling[f"ipv{fam}"][m]
                x = lambda v: f"{v:.2f}×" if v is not None else "–"
                share = f"{c['user_share'] * 100:.1f} %" if c["user_share"] is not None else "–"
                row += (f" {fmt(c['cpu_us'])} | {fmt(c['user_us'])} | {fmt(c['machine_us'])} | {share} | "
                        f"{x(c['vs_best_peer'])} | {x(c['ceiling_vs_best_peer'])} |")
            L.append(row)
        L.append("")
    if errors:
        L.append("## Errors")
        L.append("")
        for e in errors:
            L.append(f"- run {e['run']} IPv{e['family']} {e['peer']}: {e.get('error')}")
        L.append("")
    L.append("## Peers and their configuration")
    L.append("")
    for p in peers:
        L.append(f"- `{p}`: {descriptions.get(p, p)}")
    L.append("")
    cfg_dir = os.path.join(out_dir, "configs")
    if os.path.isdir(cfg_dir):
        for name in sorted(os.listdir(cfg_dir)):
            L.append(f"### configs/{name}")
            L.append("")
            L.append("```")
            L.append(open(os.path.join(cfg_dir, name)).read().rstrip("\n"))
            L.append("```")
            L.append("")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(L) + "\n")

    # ---------------------------------------------------------------- results.png (gnuplot)
    panels = [("bulk1_gbps", "bulk, 1 stream (Gbit/s, higher is better)"),
              ("bulk1_cpu_per_gbps", "proxy %core per Gbit/s, 1 stream (lower is better)"),
              ("conn1_rate", "connect+64 B echo+close per s, sequential (higher is better)"),
              ("rtt_p50_us", "64 B round trip p50, µs (lower is better)"),
              ("conn4_rate", "connections per s, 4 clients (higher is better)"),
              ("conn16_rate", "connections per s, 16 clients (higher is better)"),
              ("per_conn_kib", "KiB per idle proxied connection (lower is better)")]
    # Only panels with data (a --conn-only run has no bulk or memory figures; gnuplot refuses an
    # empty histogram).
    panels = [(m, label) for m, label in panels
              if any(median(p, fam, m) is not None for p in peers for fam in (4, 6))]
    rows = (len(panels) + 1) // 2
    dat = os.path.join(out_dir, "chart.dat")
    with open(dat, "w") as f:
        for metric, _ in panels:
            f.write(f"# {metric}\n")
            for p in peers:
                vals = [median(p, fam, metric) for fam in (4, 6)]
                f.write(f"\"{p}\" " + " ".join("NaN" if x is None else f"{x:.4f}" for x in vals) + "\n")
            f.write("\n\n")
    png = os.path.join(out_dir, "results.png")
    title = f"dsproxy vs peers, medians of {s['runs']} run(s), {meta['date'][:10]}, {mach['vcpus']} vCPUs {mach['cpu']}"
    gp = [f"set terminal pngcairo size 1500,{max(1, rows) * 330} font 'sans,10'", f"set output '{png}'",
          f"set multiplot layout {max(1, rows)},2 title \"{title}\"", "set style data histograms",
          "set style histogram clustered gap 1", "set style fill solid 0.8 border -1", "set boxwidth 0.9",
          "set xtics rotate by -20 scale 0", "set grid ytics", "set key top right", "set yrange [0:*]"]
    for i, (metric, label) in enumerate(panels):
        gp.append(f"set title \"{label}\"")
        gp.append(f"plot '{dat}' index {i} using 2:xtic(1) title 'IPv4' lc rgb '#4c72b0', "
                  f"'' index {i} using 3 title 'IPv6' lc rgb '#dd8452'")
    gp.append("unset multiplot")
    if not panels:
        return
    try:
        subprocess.run(["gnuplot"], input="\n".join(gp), text=True, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"report: gnuplot failed: {getattr(e, 'stderr', e)}", file=sys.stderr)


if __name__ == "__main__":
    main()
