#!/usr/bin/env python3
"""Helpers for bench/run.sh: parse wrk and h2load output, and render the tables.

  report.py wrk OUTPUT                 -> "requests rps p50_ms p99_ms" (exit 2 on errors)
  report.py h2load OUTPUT LOGFILE      -> "requests rps p50_ms p99_ms" (exit 2 on errors)
  report.py table RESULTS.tsv META.tsv -> the markdown report on stdout
  report.py cpu-snapshot OUT PID...    -> CPU ticks of every user process but PID... and their descendants
  report.py cpu-others A B HZ SECS     -> % of one CPU those processes used between snapshots A and B

Errors (non-2xx responses, socket errors, failed streams, nothing parsed) are
printed to stderr with the offending lines, and the exit status is 2, so that
run.sh stops loudly instead of reporting numbers from a broken run.
"""

import json
import os
import re
import sys

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def die(msg):
    print(f"report.py: {msg}", file=sys.stderr)
    sys.exit(2)


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        die(f"cannot read latency {text!r}")
    return float(m.group(1)) * UNITS_MS[m.group(2)]


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        die("no samples for a percentile")
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100)
    return sorted_values[int(rank) - 1]


def parse_wrk(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    problems = []
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m and any(int(x) for x in m.groups()):
        problems.append(m.group(0))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m and int(m.group(1)):
        problems.append(m.group(0))
    req = re.search(r"^\s*(\d+) requests in ([0-9.]+\w+)", text, re.M)
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not (req and rps and p50 and p99):
        problems.append("could not find requests, Requests/sec and the 50%/99% latency lines")
    if req and int(req.group(1)) == 0:
        problems.append("zero requests completed")
    if problems:
        die(f"wrk run failed ({path}): " + "; ".join(problems))
    return int(req.group(1)), float(rps.group(1)), to_ms(p50.group(1)), to_ms(p99.group(1))


def parse_h2load(path, log_path):
    text = open(path, encoding="utf-8", errors="replace").read()
    problems = []
    fin = re.search(r"^finished in ([0-9.]+)(\w+), ([0-9.]+) req/s", text, re.M)
    req = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
        text,
        re.M,
    )
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if not (fin and req and codes):
        die(f"h2load run failed ({path}): could not find the 'finished in', 'requests:' and 'status codes:' lines")
    done, succeeded, failed, errored, timeout = (int(req.group(i)) for i in (3, 4, 5, 6, 7))
    if failed or errored or timeout:
        problems.append(req.group(0))
    c2, c3, c4, c5 = (int(x) for x in codes.groups())
    if c3 or c4 or c5:
        problems.append(codes.group(0))
    if succeeded == 0:
        problems.append("zero requests succeeded")
    # Per-request log: start (us since epoch) \t status \t latency (us).
    latencies = []
    bad_status = 0
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) < 3:
                continue
            status = int(cols[1])
            if not 200 <= status < 300:
                bad_status += 1
            latencies.append(int(cols[2]))
    if bad_status:
        problems.append(f"{bad_status} non-2xx or failed streams in {log_path}")
    if not latencies:
        problems.append(f"no per-request latencies in {log_path}")
    if problems:
        die(f"h2load run failed ({path}): " + "; ".join(problems))
    latencies.sort()
    return succeeded, float(fin.group(3)), percentile(latencies, 50) / 1000.0, percentile(latencies, 99) / 1000.0


# ---------------------------------------------------------------------------
# Interference: CPU used by other processes during a run.
#
# other = (all CPU time the machine spent in user+nice+system+irq+softirq, /proc/stat;
#          a task's stime includes the softirq work done on its behalf)
#       - (ours: the excluded PIDs and their live descendants, plus what the first
#          of them, this script, reaped: the load generator and helpers)
#       - (kernel threads: e.g. ksoftirqd doing our loopback traffic)
# Short-lived processes (builds, tests) are caught by the /proc/stat total.

PF_KTHREAD = 0x00200000


def read_procs():
    """pid -> (ppid, utime+stime, cutime+cstime, is_kernel_thread), in ticks."""
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[0] is field 3 (state): ppid=4, flags=9, utime=14, stime=15, cutime=16, cstime=17
        ppid, flags = int(fields[1]), int(fields[6])
        procs[int(name)] = (
            ppid,
            int(fields[11]) + int(fields[12]),
            int(fields[13]) + int(fields[14]),
            bool(flags & PF_KTHREAD),
        )
    return procs


def cpu_snapshot(out_path, exclude):
    with open("/proc/stat", encoding="utf-8") as f:
        cpu = f.readline().split()
    total = int(cpu[1]) + int(cpu[2]) + int(cpu[3]) + int(cpu[6]) + int(cpu[7])
    procs = read_procs()
    excluded = set(exclude)

    def ours(pid):
        seen = 0
        while pid > 1 and seen < 64:
            if pid in excluded:
                return True
            pid = procs.get(pid, (0,))[0]
            seen += 1
        return False

    snap = {"total": total, "ours": 0, "kthreads": 0, "procs": {}}
    for pid, (_, ticks, cticks, kthread) in procs.items():
        if kthread:
            snap["kthreads"] += ticks
        elif ours(pid):
            snap["ours"] += ticks + (cticks if exclude and pid == exclude[0] else 0)
        else:
            snap["procs"][str(pid)] = ticks
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(snap, f)


def cpu_others(a_path, b_path, hz, secs):
    with open(a_path, encoding="utf-8") as f:
        a = json.load(f)
    with open(b_path, encoding="utf-8") as f:
        b = json.load(f)
    scale = 100.0 / float(hz) / float(secs)
    other = (b["total"] - a["total"]) - (b["ours"] - a["ours"]) - (b["kthreads"] - a["kthreads"])
    pct = max(0.0, other * scale)
    if pct >= 10:
        deltas = {p: t - a["procs"].get(p, 0) for p, t in b["procs"].items() if t > a["procs"].get(p, 0)}
        names = []
        for pid, t in sorted(deltas.items(), key=lambda kv: -kv[1])[:3]:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:70]
            except OSError:
                cmd = "(exited)"
            names.append(f"pid {pid} {t * scale:.0f}%: {cmd}")
        gone = other - sum(deltas.values())
        if gone * scale >= 1:
            names.append(f"processes that exited meanwhile {gone * scale:.0f}%")
        print("  other load: " + "; ".join(names), file=sys.stderr)
    return pct


# ---------------------------------------------------------------------------
# The report.

TARGETS = [
    ("direct", "direct (no proxy)"),
    ("envoy", "Envoy 1.40"),
    ("legate", "Legate"),
    ("envoy2", "Envoy 1.40, 2 workers"),
    ("legate2", "Legate, 2 workers"),
]
# Ratio tables: (Legate target, Envoy target, title).
PAIRS = [("legate", "envoy", "Legate / Envoy"), ("legate2", "envoy2", "Legate / Envoy, 2 workers (unpinned)")]
PROTOCOLS = [
    ("h1", "HTTP/1.1 keep-alive (wrk)"),
    ("h2c", "h2c (h2load)"),
    ("https", "HTTPS keep-alive, TLS terminated at the proxy (wrk)"),
]


def read_tsv(path):
    with open(path, encoding="utf-8") as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    head, rows = lines[0], lines[1:]
    return [dict(zip(head, r)) for r in rows]


def fmt(v, digits):
    return "—" if v is None else f"{v:,.{digits}f}"


def ratio(legate, envoy):
    if legate is None or envoy is None or envoy == 0:
        return None
    return legate / envoy


def verdict(r, higher_is_better):
    if r is None:
        return "—"
    ok = r >= 1.0 if higher_is_better else r <= 1.0
    return "meets" if ok else "**misses**"


def table(results_path, meta_path):
    rows = read_tsv(results_path)
    meta = read_tsv(meta_path)
    by = {}
    for r in rows:
        num = {}
        for k in ("requests", "rps", "p50_ms", "p99_ms", "cpu_s", "idle_rss_kb", "peak_rss_kb", "secs", "others_pct"):
            v = r.get(k, "-")
            num[k] = None if v in ("-", "") else float(v)
        by[(r["proto"], r["target"])] = num

    busy = []
    out = []
    out.append("# Legate vs Envoy 1.40: side-by-side benchmark")
    out.append("")
    for m in meta:
        out.append(f"- {m['key']}: {m['value']}")
    out.append("")
    for proto, proto_title in PROTOCOLS:
        present = [(t, name) for t, name in TARGETS if (proto, t) in by]
        if not present:
            continue
        out.append(f"## {proto_title}")
        out.append("")
        out.append(
            "| target | requests | req/s | p50 ms | p99 ms | proxy CPU-s / 10k req | proxy CPU % | idle RSS MiB | peak RSS MiB | other load % |"
        )
        out.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        derived = {}
        for t, name in present:
            d = by[(proto, t)]
            cpu10k = None
            cpu_pct = None
            if d["others_pct"] is not None and d["others_pct"] >= 10:
                busy.append(f"{name} {proto}")
            if d["cpu_s"] is not None and d["requests"]:
                cpu10k = d["cpu_s"] / d["requests"] * 10000.0
                cpu_pct = d["cpu_s"] / d["secs"] * 100.0 if d["secs"] else None
            idle = d["idle_rss_kb"] / 1024.0 if d["idle_rss_kb"] is not None else None
            peak = d["peak_rss_kb"] / 1024.0 if d["peak_rss_kb"] is not None else None
            derived[t] = dict(rps=d["rps"], p50=d["p50_ms"], p99=d["p99_ms"], cpu10k=cpu10k, idle=idle, peak=peak)
            out.append(
                f"| {name} | {fmt(d['requests'], 0)} | {fmt(d['rps'], 0)} | {fmt(d['p50_ms'], 3)} | {fmt(d['p99_ms'], 3)}"
                f" | {fmt(cpu10k, 4)} | {fmt(cpu_pct, 0)} | {fmt(idle, 1)} | {fmt(peak, 1)} | {fmt(d['others_pct'], 0)} |"
            )
        out.append("")
        for lt, et, title in PAIRS:
            if lt not in derived or et not in derived:
                continue
            lg, ev = derived[lt], derived[et]
            out.append(f"| {title} | ratio | bar | verdict |")
            out.append("|---|--:|---|---|")
            for key, label, higher, bar in (
                ("rps", "req/s", True, ">= 1.00"),
                ("p50", "p50 latency", False, "(info)"),
                ("p99", "p99 latency", False, "<= 1.00"),
                ("cpu10k", "CPU per request", False, "<= 1.00"),
                ("idle", "idle RSS", False, "<= 1.00"),
                ("peak", "peak RSS", False, "(info)"),
            ):
                r = ratio(lg[key], ev[key])
                v = verdict(r, higher) if bar != "(info)" else "—"
                out.append(f"| {label} | {fmt(r, 2)} | {bar} | {v} |")
            out.append("")
    if busy:
        out.append(
            "**Warning:** other processes on this machine used >= 10 % of a CPU during "
            + ", ".join(busy)
            + "; those numbers are skewed. Rerun on an idle machine."
        )
        out.append("")
    out.append(
        "CPU is the proxy process's utime+stime over the measured run only (not the warm-up), "
        "divided by the requests that run completed; CPU % is that over the run's wall time "
        "(100 % = the proxy's pinned core is saturated). Idle RSS is VmRSS once the proxy "
        "answers /ready, before any proxied request; peak RSS is VmHWM after the load. "
        "Each proxy is started fresh for each protocol. Latencies: wrk's --latency "
        "percentiles for HTTP/1.1; for h2c, nearest-rank percentiles over h2load's "
        "per-request --log-file. Other load is the CPU time "
        "(% of one CPU) the machine spent during the run on processes other than the proxy, "
        "the upstream and the load generator (kernel threads aside): above a few % the run "
        "was disturbed."
    )
    print("\n".join(out))


def main():
    if len(sys.argv) < 2:
        die(__doc__)
    cmd = sys.argv[1]
    if cmd == "wrk" and len(sys.argv) == 3:
        print("%d %.2f %.4f %.4f" % parse_wrk(sys.argv[2]))
    elif cmd == "h2load" and len(sys.argv) == 4:
        print("%d %.2f %.4f %.4f" % parse_h2load(sys.argv[2], sys.argv[3]))
    elif cmd == "cpu-snapshot" and len(sys.argv) >= 3:
        cpu_snapshot(sys.argv[2], [int(p) for p in sys.argv[3:]])
    elif cmd == "cpu-others" and len(sys.argv) == 6:
        print("%.0f" % cpu_others(*sys.argv[2:6]))
    elif cmd == "table" and len(sys.argv) == 4:
        table(sys.argv[2], sys.argv[3])
    else:
        die(__doc__)


if __name__ == "__main__":
    main()
