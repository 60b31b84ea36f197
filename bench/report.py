#!/usr/bin/env python3
"""Aggregate the raw files of bench/run.sh into a table and a JSON file.

Usage: report.py WORKDIR RESULTS.json [--meta key=value ...]

Each WORKDIR/run.CFG.ROUND/ holds wrk.txt (wrk --latency), meta.json (tracer
pid, CPU ticks, wrk window, BPF program ids), bpf.before.json/bpf.after.json
(`bpftool prog show -j`), tracer.err (netdrift's text summary) and, for the
bpftrace peer, bt.count (lines printed, "Lost N events" summed).

Rounds run with kernel.bpf_stats_enabled (meta.json "bpf_stats": true) give
the BPF run time only: the statistics slow every program run down, so their
requests/s, p99 and CPU are not mixed with the measured rounds'. Drops are
counted over every round.
"""
import datetime
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text):
    out = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rps"] = float(m.group(1)) if m else None
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    out["p99_ms"] = float(m.group(1)) * UNITS[m.group(2)] if m else None
    m = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    out["p50_ms"] = float(m.group(1)) * UNITS[m.group(2)] if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    out["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    return out


def parse_netdrift_summary(text):
    """The text summary netdrift prints on stderr with --json.

    Its last lines say "lost: 0 records, 0 stacks" when nothing was lost, or
    one "LOST:" line per kind (records, stacks, map-full, unreadable epoll
    arrays; program runs the kernel skipped). No summary (the tracer died):
    the losses are None, and a target judged on them is not met.
    """
    out = {}
    m = re.search(r"^\s+(\d+) events", text, re.M)
    out["events"] = int(m.group(1)) if m else None
    m = re.search(r"after ([\d.]+)s", text)
    out["duration_s"] = float(m.group(1)) if m else None
    out.update(lost_ringbuf=None, lost_stacks=None, lost_map_full=None, lost_user_read=None, lost_skipped=None)
    if re.search(r"^\s+lost: 0 records, 0 stacks", text, re.M):
        out.update(lost_ringbuf=0, lost_stacks=0, lost_map_full=0, lost_user_read=0, lost_skipped=0)
    m = re.search(r"^\s+LOST: (\d+) records .*?, (\d+) stacks, (\d+) map-full, (\d+) unreadable", text, re.M)
    if m:
        out.update(lost_ringbuf=int(m.group(1)), lost_stacks=int(m.group(2)), lost_map_full=int(m.group(3)), lost_user_read=int(m.group(4)))
    m = re.search(r"^\s+LOST: (\d+) program runs skipped", text, re.M)
    if m:
        out["lost_skipped"] = int(m.group(1))
        for k in ("lost_ringbuf", "lost_stacks", "lost_map_full", "lost_user_read"):
            out[k] = out[k] or 0
    elif out["lost_ringbuf"] is not None:
        out["lost_skipped"] = 0
    return out


def bpf_by_id(path):
    try:
        with open(path) as f:
            return {p["id"]: p for p in json.load(f)}
    except (OSError, ValueError):
        return {}


def bpf_progs(before_path, after_path, ids):
    """Run time and runs of programs `ids` between two `bpftool prog show -j` files."""
    before, after = bpf_by_id(before_path), bpf_by_id(after_path)
    progs = []
    for pid in ids:
        a, b = after.get(pid), before.get(pid)
        if not a:
            continue
        ns = a.get("run_time_ns", 0) - (b or {}).get("run_time_ns", 0)
        cnt = a.get("run_cnt", 0) - (b or {}).get("run_cnt", 0)
        progs.append({"id": pid, "name": a.get("name"), "type": a.get("type"), "run_time_ns": ns, "run_cnt": cnt})
    return progs


def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def bracket_ref(run, base):
    """Mean req/s of the untraced rounds just before and just after `run` (one at the ends)."""
    before = [b for b in base if b["t"][0] < run["t"][0]]
    after = [b for b in base if b["t"][0] > run["t"][0]]
    near = ([before[-1]] if before else []) + ([after[0]] if after else [])
    return mean(b["rps"] for b in near) if near else None


# Student's t, two-sided 95%, by degrees of freedom (1.96 beyond 30).
T95 = [None, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def bootstrap_ci(xs, n=4000, seed=1):
    """95% interval of the mean of xs: the wider of a percentile bootstrap over
    the rounds (fixed seed: reruns agree) and Student's t. The bootstrap alone
    is too narrow for a few rounds, and bracketed ratios of neighbouring
    rounds share an untraced round, so they are not quite independent."""
    if len(xs) < 3:
        return None
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(xs, k=len(xs))) for _ in range(n))
    boot = [means[int(0.025 * n)], means[int(0.975 * n) - 1]]
    m, df = statistics.fmean(xs), len(xs) - 1
    half = (T95[df] if df < len(T95) else 1.96) * statistics.stdev(xs) / len(xs) ** 0.5
    return [min(boot[0], m - half), max(boot[1], m + half)]


def load_run(d):
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(d, "wrk.txt")) as f:
        run = dict(meta, **parse_wrk(f.read()))
    window = meta["t"][1] - meta["t"][0]
    run["window_s"] = window
    tck = meta["clk_tck"]

    def pct(pair):
        return 100.0 * (pair[1] - pair[0]) / tck / window

    tracer = meta["cpu_ticks"][1] - meta["cpu_ticks"][0] if meta["tracer_pid"] else 0
    if meta["tracer_pid"]:
        run["tracer_cpu_pct"] = 100.0 * tracer / tck / window
    if "system_busy_steal" in meta:
        (b0, st0), (b1, st1) = meta["system_busy_steal"]
        run["nginx_cpu_pct"] = pct(meta["nginx_ticks"])
        run["wrk_cpu_pct"] = pct(meta["wrk_ticks"])
        run["counter_cpu_pct"] = pct(meta["counter_ticks"])
        ours = sum(p[1] - p[0] for p in (meta["nginx_ticks"], meta["wrk_ticks"], meta["counter_ticks"])) + tracer
        # CPU used by everything else on the machine during the window (% of one CPU).
        run["other_cpu_pct"] = max(0.0, 100.0 * ((b1 - b0) - ours) / tck / window)
        run["steal_pct"] = 100.0 * (st1 - st0) / tck / window
    err = ""
    for name in ("tracer.err", "tracer.out"):
        if os.path.exists(os.path.join(d, name)):
            with open(os.path.join(d, name), errors="replace") as f:
                err += f.read()
    if meta["cfg"] == "peer":
        try:
            with open(os.path.join(d, "bt.count")) as f:
                c = json.load(f)
        except (OSError, ValueError):
            c = {"lines": None, "lost": None}
        lost_err = sum(int(x) for x in re.findall(r"Lost (\d+) events", err))
        run["events"] = c["lines"]
        run["lost"] = (c["lost"] or 0) + lost_err if c["lost"] is not None else None
    elif meta["tracer_pid"]:
        s = parse_netdrift_summary(err)
        run["events"] = s["events"]
        run["lost"] = s["lost_ringbuf"]
        run["lost_stacks"] = s["lost_stacks"]
        run["lost_map_full"] = s["lost_map_full"]
        run["lost_user_read"] = s["lost_user_read"]
        run["lost_skipped"] = s["lost_skipped"]
        run["tracer_duration_s"] = s["duration_s"]
        run["summary"] = err.strip().splitlines()[-6:]
    if run.get("events") is not None:
        run["events_per_s"] = run["events"] / window
    # BPF run time of the tracer's own programs over the wrk window.
    progs = bpf_progs(os.path.join(d, "bpf.before.json"), os.path.join(d, "bpf.after.json"), meta["prog_ids"])
    run["bpf_progs"] = progs
    if progs:
        run["bpf_ms_per_s"] = sum(p["run_time_ns"] for p in progs) / 1e6 / window
    return run


def main():
    work, results = sys.argv[1], sys.argv[2]
    meta = {}
    if "--meta" in sys.argv:
        for kv in sys.argv[sys.argv.index("--meta") + 1:]:
            k, _, v = kv.partition("=")
            meta[k] = v
    runs = []
    for name in sorted(os.listdir(work)):
        if name.startswith("run.") and os.path.exists(os.path.join(work, name, "meta.json")):
            runs.append(load_run(os.path.join(work, name)))
    runs.sort(key=lambda r: r["t"][0])
    order = []
    for r in runs:
        if r["cfg"] not in order:
            order.append(r["cfg"])
    base = [r for r in runs if r["cfg"] == "untraced"]
    base_rps, base_p99 = mean(r["rps"] for r in base), mean(r["p99_ms"] for r in base)
    base_each = [r["rps"] for r in base if not r.get("bpf_stats")]
    base_measured = [r for r in base if not r.get("bpf_stats") and r["rps"]]
    configs = {}
    for cfg in order:
        every = [r for r in runs if r["cfg"] == cfg]
        rs = [r for r in every if not r.get("bpf_stats")]
        # Runs from before the split (no "bpf_stats" key) had the statistics on in every round.
        stats_rs = [r for r in every if r.get("bpf_stats")] or [r for r in rs if "bpf_stats" not in r]
        if not rs:
            continue
        c = {
            "rounds": len(rs),
            "rps": mean(r["rps"] for r in rs),
            "rps_each": [r["rps"] for r in rs],
            "p99_ms": mean(r["p99_ms"] for r in rs),
            "p99_ms_each": [r["p99_ms"] for r in rs],
            "socket_errors": sum(r["socket_errors"] for r in rs),
            "nginx_cpu_pct": mean(r.get("nginx_cpu_pct") for r in rs),
            "wrk_cpu_pct": mean(r.get("wrk_cpu_pct") for r in rs),
            "other_cpu_pct": mean(r.get("other_cpu_pct") for r in rs),
            "other_cpu_pct_each": [r.get("other_cpu_pct") for r in rs],
            "steal_pct": mean(r.get("steal_pct") for r in rs),
        }
        c["rps_ratio"] = c["rps"] / base_rps if base_rps and c["rps"] else None
        # Each round against the untraced run of the same round: a host hiccup
        # that slows one round moves one pair, not the whole mean.
        paired = [a / b for a, b in zip(c["rps_each"], base_each) if a and b]
        c["rps_ratio_each_round"] = paired
        c["rps_ratio_median_paired"] = statistics.median(paired) if paired else None
        # Each round against the untraced rounds just before and just after
        # it: the host's speed drifts over tens of seconds (10-30% here), and
        # the mean of the two neighbours cancels a steady drift.
        bracketed = [r["rps"] / ref for r in rs if r["rps"] and (ref := bracket_ref(r, base_measured))]
        c["rps_ratio_each_bracketed"] = bracketed
        c["rps_ratio_bracketed"] = mean(bracketed)
        c["rps_ratio_bracketed_ci95"] = bootstrap_ci(bracketed)
        c["p99_ratio"] = c["p99_ms"] / base_p99 if base_p99 and c["p99_ms"] else None
        if cfg != "untraced":
            c["events_per_s"] = mean(r.get("events_per_s") for r in rs)
            # A round whose losses could not be read (no summary) makes the total unknown.
            lost = [r.get("lost") for r in every]
            c["lost"] = None if any(x is None for x in lost) else sum(lost)
            c["lost_each"] = lost
            if cfg != "peer":
                for k in ("lost_stacks", "lost_map_full", "lost_user_read", "lost_skipped"):
                    each = [r.get(k) for r in every]
                    c[k] = None if any(x is None for x in each) else sum(each)
            c["tracer_cpu_pct"] = mean(r.get("tracer_cpu_pct") for r in rs)
            if cfg == "peer":
                c["line_counter_cpu_pct"] = mean(r.get("counter_cpu_pct") for r in rs)
            c["tracer_vmhwm_kb"] = max((r.get("vmhwm_kb") or 0) for r in every)
            c["bpf_stats_rounds"] = len([r for r in every if r.get("bpf_stats")])
            c["bpf_ms_per_s"] = mean(r.get("bpf_ms_per_s") for r in stats_rs)
            by_type, by_name = {}, {}
            for r in stats_rs:
                for p in r["bpf_progs"]:
                    for key, agg in ((p["type"], by_type), (p["name"], by_name)):
                        t = agg.setdefault(key, [0, 0])
                        t[0] += p["run_time_ns"]
                        t[1] += p["run_cnt"]
            c["bpf_ns_per_run_by_type"] = {k: (v[0] / v[1] if v[1] else None) for k, v in by_type.items()}
            c["bpf_runs_per_s_by_type"] = {k: v[1] / sum(r["window_s"] for r in stats_rs) for k, v in by_type.items()}
            c["bpf_ns_per_run_by_prog"] = {k: (v[0] / v[1] if v[1] else None) for k, v in sorted(by_name.items())}
        configs[cfg] = c

    def git(*a):
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        except OSError:
            return ""

    targets = {}
    if "trace" in configs and configs["trace"]["rps_ratio"]:
        t = configs["trace"]
        # On the bracketed ratio; "met" only if the whole 95% interval is within 3%.
        ratio = t["rps_ratio_bracketed"] or t["rps_ratio"]
        ci = t["rps_ratio_bracketed_ci95"]
        # No interval (fewer than 3 rounds): never "met".
        verdict = {"cost_pct": 100 * (1 - ratio), "cost_pct_ratio_of_means": 100 * (1 - t["rps_ratio"]), "met": bool(ci) and ci[0] >= 0.97}
        if ci:
            verdict["cost_pct_ci95"] = [100 * (1 - ci[1]), 100 * (1 - ci[0])]
            verdict["undecided"] = ci[0] < 0.97 <= ci[1]
        else:
            verdict["undecided"] = ratio >= 0.97
            verdict["why"] = "fewer than 3 rounds: no interval"
        targets["trace_rps_cost_at_most_3pct"] = verdict
        if "peer" in configs and configs["peer"]["rps_ratio"]:
            peer = configs["peer"]["rps_ratio_bracketed"] or configs["peer"]["rps_ratio"]
            targets["trace_cheaper_than_peer"] = {"trace_rps_ratio": ratio, "peer_rps_ratio": peer, "met": ratio > peer}
        kinds = ("lost", "lost_stacks", "lost_map_full", "lost_user_read", "lost_skipped")
        targets["trace_zero_drops"] = {**{k: t.get(k) for k in kinds}, "met": all(t.get(k) == 0 for k in kinds)}
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        # The results file itself is rewritten by every run: it does not make the tree dirty.
        "commit": git("rev-parse", "--short", "HEAD")
        + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)bench/results") else ""),
        "settings": meta,
        "configs": configs,
        "targets": targets,
        "runs": runs,
    }
    with open(results, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")

    def fmt(v, spec):
        if v is None:
            w = re.match(r"\D*(\d*)", spec).group(1)
            return "-".rjust(int(w)) if w else "-"
        return format(v, spec)

    print()
    print(f"netdrift overhead on nginx, wrk -t1 -c{meta.get('connections', '?')} -d{meta.get('duration_s', '?')}s, "
          f"{meta.get('rounds', '?')} rounds interleaved (+{meta.get('stats_rounds', 0)} with bpf_stats_enabled for the BPF columns); untraced: {fmt(base_rps, ',.0f')} req/s, p99 {fmt(base_p99, '.2f')} ms")
    hdr = f"{'config':<11} {'req/s':>9} {'ratio':>6} {'median':>6} {'bracket':>7} {'95% CI':>13} {'p99 ms':>7} {'ratio':>6} {'events/s':>9} {'lost':>5} {'cpu %':>6} {'bpf ms/s':>8} {'other %':>7}  bpf ns/run by type"
    print(hdr)
    print("-" * len(hdr))
    for cfg, c in configs.items():
        types = ", ".join(f"{k} {fmt(v, '.0f')}" for k, v in sorted(c.get("bpf_ns_per_run_by_type", {}).items()) if v is not None)
        ci = c.get("rps_ratio_bracketed_ci95")
        ci_s = f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-"
        print(f"{cfg:<11} {fmt(c['rps'], '9.0f')} {fmt(c['rps_ratio'], '6.3f')} {fmt(c['rps_ratio_median_paired'], '6.3f')} {fmt(c['rps_ratio_bracketed'], '7.3f')} {ci_s:>13} {fmt(c['p99_ms'], '7.2f')} {fmt(c['p99_ratio'], '6.2f')} "
              f"{fmt(c.get('events_per_s'), '9.0f')} {fmt(c.get('lost'), '5d')} {fmt(c.get('tracer_cpu_pct'), '6.1f')} {fmt(c.get('bpf_ms_per_s'), '8.1f')} {fmt(c.get('other_cpu_pct'), '7.1f')}  {types}")
    if meta.get("skipped", "").strip():
        print(f"skipped: {meta['skipped'].strip()}")
    for k, v in targets.items():
        word = "met" if v["met"] else "undecided (the 95% interval straddles the target: add rounds)" if v.get("undecided") else "NOT met"
        print(f"target {k}: {word} {json.dumps({a: b for a, b in v.items() if a not in ('met', 'undecided')})}")
    for cfg, c in configs.items():
        print(f"  {cfg}: req/s per round {[round(x) for x in c['rps_each'] if x]}, ratio per round {[round(x, 3) for x in c['rps_ratio_each_round']]}, p99 ms {c['p99_ms_each']}, other CPU % {[round(x, 1) for x in c['other_cpu_pct_each'] if x is not None]}")
    print("(ratio = mean req/s over the untraced mean; median = median over rounds of req/s over the same round's untraced req/s;")
    print(" bracket = mean over rounds of req/s over the mean of the untraced rounds just before and after it, with the 95% interval of")
    print(" that mean: the wider of a bootstrap over rounds and Student's t (untraced: against its neighbours, a gauge of the host's drift); the 3% target is judged on it;")
    print(" cpu % = the tracer's utime+stime per second of the wrk window, % of one CPU; bpf ms/s = run time of the tracer's BPF programs")
    print(" per second (charged to the traced tasks, not the tracer), from the rounds with kernel.bpf_stats_enabled, which are left out of")
    print(f" the other columns; lost = over every round; other % = CPU used by unrelated processes during the window; results: {results})")


if __name__ == "__main__":
    main()
