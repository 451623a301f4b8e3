#!/usr/bin/env python3
"""CONNECT tunnel benchmark: Envoy 1.40 and Legate side by side.

Both proxies run the same bootstrap (--concurrency 1, pinned to CPU 0): a
listener whose connect_matcher route terminates CONNECT (connect_config) to
a TCP echo (`legate echo --tcp`, on CPU 1). Through one tunnel per proxy
the client measures
  - throughput: MiB/s of bytes sent through the tunnel and echoed back
    (writer and reader threads, 64 KiB writes), and
  - latency: round trips of a 64-byte message, p50 and p99 in ms.

    python3 bench/tunnel.py LEGATE_BIN ENVOY_BIN [MIB] [ROUND_TRIPS]

Only loopback is used; every process started is stopped by its PID.
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

BOOTSTRAP = """admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ connect_matcher: {{}} }}
                route: {{ cluster: echo, upgrade_configs: [{{ upgrade_type: CONNECT, connect_config: {{}} }}] }}
  clusters:
  - {{ name: echo, connect_timeout: 1s, load_assignment: {{ cluster_name: echo, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {echo} }} }} }} }}] }}] }} }}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, limit=20.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} did not open")


def tunnel(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"CONNECT bench.test:443 HTTP/1.1\r\nhost: bench.test:443\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("tunnel refused")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"tunnel refused: {head!r}")
    return s


def throughput(port, mib):
    s = tunnel(port)
    total = mib * 1024 * 1024
    block = b"x" * 65536
    got = [0]

    def reader():
        while got[0] < total:
            n = len(s.recv(1 << 20))
            if n == 0:
                break
            got[0] += n

    t = threading.Thread(target=reader)
    start = time.time()
    t.start()
    sent = 0
    while sent < total:
        s.sendall(block)
        sent += len(block)
    t.join(timeout=120)
    elapsed = time.time() - start
    s.close()
    return got[0] / (1024 * 1024) / elapsed


def latency(port, n):
    s = tunnel(port)
    msg = b"y" * 64
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        s.sendall(msg)
        got = 0
        while got < len(msg):
            got += len(s.recv(4096))
        times.append((time.perf_counter() - t0) * 1000)
    s.close()
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


def main():
    legate, envoy = sys.argv[1], sys.argv[2]
    mib = int(sys.argv[3]) if len(sys.argv) > 3 else 512
    trips = int(sys.argv[4]) if len(sys.argv) > 4 else 5000
    work = tempfile.mkdtemp(prefix="legate-tunnel-bench-")
    procs = []
    try:
        echo_port = free_port()
        procs.append(subprocess.Popen(["taskset", "-c", "1", legate, "echo", "--tcp", "--listen", f"127.0.0.1:{echo_port}"]))
        wait_port(echo_port)
        results = {}
        for name in ["envoy", "legate"]:
            listen, admin = free_port(), free_port()
            cfg = os.path.join(work, f"{name}.yaml")
            with open(cfg, "w") as f:
                f.write(BOOTSTRAP.format(listen=listen, admin=admin, echo=echo_port))
            if name == "envoy":
                cmd = [envoy, "-c", cfg, "--concurrency", "1", "-l", "error", "--base-id", str(admin)]
            else:
                cmd = [legate, "proxy", "-c", cfg, "--concurrency", "1", "-l", "error"]
            p = subprocess.Popen(["taskset", "-c", "0"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(listen)
            throughput(listen, 32)  # warm-up
            mbps = throughput(listen, mib)
            p50, p99 = latency(listen, trips)
            results[name] = (mbps, p50, p99)
            p.terminate()
            p.wait(timeout=10)
        print(f"{'proxy':8} {'MiB/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for name, (mbps, p50, p99) in results.items():
            print(f"{name:8} {mbps:9.1f} {p50:8.3f} {p99:8.3f}")
        e, l = results["envoy"], results["legate"]
        print(f"{'legate/envoy':8} {l[0] / e[0]:5.2f} {l[1] / e[1]:8.2f} {l[2] / e[2]:8.2f}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
