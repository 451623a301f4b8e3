#!/usr/bin/env python3
"""Memory of Legate beside Envoy 1.40 on bench/bootstrap.yaml, in one run.

  python3 bench/memory.py LEGATE_BIN ENVOY_BIN [--conns N] [--concurrency 1,2] [--out FILE]

For each proxy and each --concurrency (1 and 2 by default), on a fresh process:

- idle: VmRSS and RssAnon (the heap and other anonymous memory) 2 s after
  the proxy answers /ready and one proxied GET;
- per idle keep-alive connection, HTTP/1.1 and h2c (prior knowledge), each on
  a fresh process: N connections (10,000 by default) each make one GET,
  get its 200 and stay open; (VmRSS with them open - VmRSS before) / N;
- peak: VmHWM at the end.

Connections are opened 100 at a time, so that both proxies keep about as
many upstream connections. Every response must be a 200, every connection
must still be open when the figure is read, and every process started is
stopped by its PID; anything else stops the run with an error. The upstream
is `legate echo --plain` (HTTP/1.1). The markdown table goes to stdout (and
to --out), with Legate / Envoy ratios beside the issue's goals.
"""

import asyncio
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
BATCH = 100
IDLE_SETTLE_S = 2.0
# Ratio goals (Legate / Envoy); None: reported, not judged.
GOALS = {"idle_rss": 0.25, "idle_anon": 0.5, "h1_conn": 1.0, "h2_conn": 1.0, "peak": None}


def die(msg):
    print(f"memory.py: {msg}", file=sys.stderr)
    sys.exit(1)


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def status_kb(pid):
    """VmRSS, RssAnon, RssFile, VmHWM of a process, in kB."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    return out


def http_status(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return None


class Procs:
    """Every process started, stopped by PID at the end."""

    def __init__(self):
        self.procs = []

    def start(self, argv, log_path):
        logf = open(log_path, "wb")
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=raise_nofile)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(self.procs):
            self.stop(p)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def wait_200(url, proc, log_path, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            die(f"{what} exited ({proc.returncode}); see {log_path}")
        if http_status(url) == 200:
            return
        time.sleep(0.1)
    die(f"{what} did not answer 200 on {url} within 30 s; see {log_path}")


# ---------------------------------------------------------------------------
# Idle keep-alive connections.

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_request(authority):
    # HPACK: :method GET (2), :scheme http (6), :path / (4), then :authority as a
    # literal with incremental indexing on name index 1.
    block = bytes([0x82, 0x86, 0x84, 0x41, len(authority)]) + authority
    return (
        H2_PREFACE
        + h2_frame(0x4, 0, 0)  # SETTINGS (none)
        + h2_frame(0x1, 0x5, 1, block)  # HEADERS, END_STREAM | END_HEADERS
    )


async def h2_exchange(reader, writer):
    """Reads frames until stream 1 ends; ACKs the server's SETTINGS. Returns the :status."""
    status = None
    while True:
        head = await reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags, stream = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await reader.readexactly(length)
        if kind == 0x4 and not flags & 0x1:
            writer.write(h2_frame(0x4, 0x1, 0))
        elif kind == 0x7:
            raise ConnectionError("GOAWAY from the proxy")
        elif kind == 0x3 and stream == 1:
            raise ConnectionError("RST_STREAM from the proxy")
        elif kind == 0x1 and stream == 1:
            # The first header of a response is :status; HPACK static 0x88 is 200.
            status = 200 if payload[:1] == b"\x88" else (status or -1)
        if stream == 1 and flags & 0x1 and kind in (0x0, 0x1):
            return status


async def h1_exchange(reader, writer):
    head = await reader.readuntil(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.1 (\d{3})", head)
    n = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if not m or not n:
        raise ConnectionError(f"unexpected response head {head[:80]!r}")
    await reader.readexactly(int(n.group(1)))
    return int(m.group(1))


async def open_one(port, proto):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if proto == "h1":
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status = await asyncio.wait_for(h1_exchange(reader, writer), 10)
    else:
        writer.write(h2_request(b"127.0.0.1"))
        status = await asyncio.wait_for(h2_exchange(reader, writer), 10)
    if status != 200:
        raise ConnectionError(f"status {status}")
    return reader, writer


async def hold_connections(port, proto, n, measure):
    """Opens n keep-alive connections (one GET each), calls measure() with all
    of them open and idle, checks they are all still open, closes them."""
    conns = []
    sem = asyncio.Semaphore(BATCH)

    async def one():
        async with sem:
            conns.append(await open_one(port, proto))

    try:
        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise RuntimeError(f"{len(errors)} of {n} {proto} connections failed, first: {errors[0]!r}")
        await asyncio.sleep(IDLE_SETTLE_S)
        figures = measure()
        closed = sum(1 for r, _ in conns if r.at_eof())
        if closed:
            raise RuntimeError(f"{closed} of {n} {proto} connections were closed by the proxy while idle")
        return figures
    finally:
        for _, w in conns:
            w.close()


# ---------------------------------------------------------------------------
# One proxy process.


def render(port_listen, port_admin, port_up, path):
    text = open(os.path.join(BENCH_DIR, "bootstrap.yaml"), encoding="utf-8").read()
    text = text.replace("@LISTEN_PORT@", str(port_listen)).replace("@ADMIN_PORT@", str(port_admin))
    text = text.replace("@UPSTREAM_PORT@", str(port_up))
    if re.search(r"@[A-Z_]+@", text):
        die("a placeholder is left unrendered in the bootstrap")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def start_proxy(procs, work, target, bins, concurrency, port_up, tag):
    listen, admin = free_ports(2)
    cfg = os.path.join(work, f"bootstrap-{target}-{tag}.yaml")
    render(listen, admin, port_up, cfg)
    log = os.path.join(work, f"{target}-{tag}.log")
    if target == "envoy":
        argv = [bins["envoy"], "-c", cfg, "--concurrency", str(concurrency), "-l", "warning", "--disable-hot-restart"]
    else:
        v = subprocess.run([bins["legate"], "validate", "-c", cfg], capture_output=True, text=True)
        if v.returncode != 0:
            die(f"legate validate -c {cfg} exited {v.returncode}: {v.stdout}{v.stderr}")
        argv = [bins["legate"], "proxy", "-c", cfg, "--concurrency", str(concurrency), "-l", "warning"]
    p = procs.start(argv, log)
    wait_200(f"http://127.0.0.1:{admin}/ready", p, log, f"{target} /ready")
    wait_200(f"http://127.0.0.1:{listen}/", p, log, f"{target} listener")
    return p, listen


def measure_target(procs, work, target, bins, concurrency, port_up, n):
    row = {}
    p, _ = start_proxy(procs, work, target, bins, concurrency, port_up, f"c{concurrency}-idle")
    time.sleep(IDLE_SETTLE_S)
    s = status_kb(p.pid)
    row["idle_rss"], row["idle_anon"], row["idle_file"] = s["VmRSS"], s["RssAnon"], s["RssFile"]
    row["threads"] = s["Threads"]
    procs.stop(p)
    peak = 0
    for proto in ("h1", "h2"):
        p, listen = start_proxy(procs, work, target, bins, concurrency, port_up, f"c{concurrency}-{proto}")
        # A first batch warms the proxy (upstream connections, buffers); the
        # figure is what n more idle connections add.
        asyncio.run(hold_connections(listen, proto, BATCH, lambda: None))
        time.sleep(IDLE_SETTLE_S)
        before = status_kb(p.pid)["VmRSS"]

        def measure(pid=p.pid):
            return status_kb(pid)["VmRSS"]

        with_conns = asyncio.run(hold_connections(listen, proto, n, measure))
        if p.poll() is not None:
            die(f"{target} exited during the {proto} connections")
        row[f"{proto}_conn"] = (with_conns - before) * 1024.0 / n  # bytes per connection
        peak = max(peak, status_kb(p.pid)["VmHWM"])
        procs.stop(p)
    row["peak"] = peak
    return row


# ---------------------------------------------------------------------------
# The report.

ROWS = [
    ("idle_rss", "idle RSS (MiB)", lambda v: f"{v / 1024:.1f}"),
    ("idle_anon", "idle anonymous (heap) RSS (MiB)", lambda v: f"{v / 1024:.1f}"),
    ("idle_file", "idle file-backed RSS (MiB)", lambda v: f"{v / 1024:.1f}"),
    ("h1_conn", "per idle HTTP/1.1 keep-alive connection (KiB)", lambda v: f"{v / 1024:.1f}"),
    ("h2_conn", "per idle h2c connection (KiB)", lambda v: f"{v / 1024:.1f}"),
    ("peak", "peak RSS, with the connections open (MiB)", lambda v: f"{v / 1024:.1f}"),
    ("threads", "threads", lambda v: f"{v:d}"),
]


def report(results, n, bins):
    out = ["# Memory: Legate vs Envoy 1.40", ""]
    out.append(f"- bootstrap: bench/bootstrap.yaml (one listener, one STATIC cluster); {n:,} connections per protocol")
    out.append(f"- legate: {version(bins['legate'], '--version')}")
    out.append(f"- envoy: {version(bins['envoy'], '--version')}")
    out.append("")
    for conc in sorted({c for (_, c) in results}):
        ev, lg = results[("envoy", conc)], results[("legate", conc)]
        out.append(f"## --concurrency {conc}")
        out.append("")
        out.append("| figure | Envoy 1.40 | Legate | Legate / Envoy | goal |")
        out.append("|---|--:|--:|--:|---|")
        for key, label, f in ROWS:
            r = lg[key] / ev[key] if ev[key] else float("nan")
            goal = GOALS.get(key)
            verdict = "" if goal is None else (f"<= {goal:.2f} " + ("meets" if r <= goal else "**misses**"))
            ratio = f"{r:.2f}" if key != "threads" else ""
            out.append(f"| {label} | {f(ev[key])} | {f(lg[key])} | {ratio} | {verdict} |")
        out.append("")
    out.append(
        "Idle: /proc/PID/status 2 s after /ready and one proxied GET. Per connection: "
        f"(VmRSS with {n:,} idle keep-alive connections open, each after one GET answered 200, "
        "- VmRSS before them) / connections, on a fresh process per protocol, after a warm-up of "
        f"{BATCH} connections. Peak: VmHWM of those processes."
    )
    return "\n".join(out)


def version(binary, flag):
    try:
        text = subprocess.run([binary, flag], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r"version: (\S+)", text)
    if m:
        return m.group(1)
    line = next((l for l in text.splitlines() if l.strip()), "?")
    return line.strip()[:120]


def main():
    args = sys.argv[1:]
    opts = {"--conns": "10000", "--concurrency": "1,2", "--out": ""}
    pos = []
    while args:
        a = args.pop(0)
        if a in opts:
            if not args:
                die(f"{a} needs a value")
            opts[a] = args.pop(0)
        else:
            pos.append(a)
    if len(pos) != 2:
        die(__doc__)
    bins = {"legate": pos[0], "envoy": pos[1]}
    for k, b in bins.items():
        if not os.access(b, os.X_OK):
            die(f"{k}: {b} is not an executable")
    n = int(opts["--conns"])
    concs = [int(c) for c in opts["--concurrency"].split(",")]
    raise_nofile()
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < n + 1000:
        die(f"the open-file limit is below {n + 1000}: raise it (ulimit -n) or lower --conns")
    procs = Procs()
    results = {}
    with tempfile.TemporaryDirectory(prefix="legate-mem.") as work:
        try:
            (port_up,) = free_ports(1)
            up_log = os.path.join(work, "upstream.log")
            up = procs.start([bins["legate"], "echo", "--listen", f"127.0.0.1:{port_up}", "--name", "up", "--plain"], up_log)
            wait_200(f"http://127.0.0.1:{port_up}/", up, up_log, "the upstream")
            for conc in concs:
                for target in ("envoy", "legate"):
                    print(f"[memory] {target} --concurrency {conc}", file=sys.stderr)
                    results[(target, conc)] = measure_target(procs, work, target, bins, conc, port_up, n)
                    print(f"[memory]   {results[(target, conc)]}", file=sys.stderr)
        finally:
            procs.stop_all()
    text = report(results, n, bins)
    print(text)
    if opts["--out"]:
        with open(opts["--out"], "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
