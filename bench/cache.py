#!/usr/bin/env python3
"""The response cache, Legate beside Envoy 1.40 in one run.

    python3 bench/cache.py LEGATE_BIN ENVOY_BIN [REQUESTS] [SECONDS]

One origin on a thread (every path cacheable for 60 s, 2 KiB bodies, its
requests counted), then each proxy in turn on the same bootstrap
(`envoy.filters.http.cache` with the simple cache): REQUESTS GETs (default
5,000) over one kept connection, spread over 100 paths, stopping early
after SECONDS (default 20). Prints, per proxy, the hit latency (requests
answered with `age`: p50, p99, in microseconds, as the client timed them)
and the origin offload (the share of requests the origin never saw).
"""

import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BODY = b"x" * 2048
PATHS = 100


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    count = 0
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def do_GET(self):
        with Origin.lock:
            Origin.count += 1
        self.send_response(200)
        self.send_header("cache-control", "max-age=60")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bootstrap(listen, admin, origin):
    return f"""admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
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
          route_config:
            virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: origin }} }}] }}]
          http_filters:
          - name: envoy.filters.http.cache
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig
              typed_config: {{ "@type": type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig }}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - {{ name: origin, connect_timeout: 1s, load_assignment: {{ cluster_name: origin, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {origin} }} }} }} }}] }}] }} }}
"""


def wait_listening(port, proc, limit=20):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"proxy exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"port {port} not listening after {limit} s")


def run(name, cmd, origin_port, requests, seconds, workdir):
    listen, admin = free_port(), free_port()
    cfg = os.path.join(workdir, f"{name}.yaml")
    with open(cfg, "w") as f:
        f.write(bootstrap(listen, admin, origin_port))
    proc = subprocess.Popen(cmd + ["-c", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(listen, proc)
        before = Origin.count
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
        hits, sent, deadline = [], 0, time.time() + seconds
        while sent < requests and time.time() < deadline:
            t = time.perf_counter()
            conn.request("GET", f"/item/{sent % PATHS}", headers={"host": "bench"})
            r = conn.getresponse()
            body = r.read()
            took = (time.perf_counter() - t) * 1e6
            if r.status != 200 or len(body) != len(BODY):
                sys.exit(f"{name}: status {r.status}, {len(body)} bytes")
            if r.getheader("age") is not None:
                hits.append(took)
            sent += 1
        reached = Origin.count - before
        hits.sort()
        pct = lambda q: hits[min(len(hits) - 1, int(q * len(hits)))] if hits else float("nan")
        return name, sent, len(hits), pct(0.5), pct(0.99), 1 - reached / max(sent, 1), reached
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    legate, envoy = sys.argv[1], sys.argv[2]
    requests = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 20
    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    port = origin.server_address[1]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        common = ["--concurrency", "1", "-l", "warning"]
        rows.append(run("envoy", [envoy] + common + ["--disable-hot-restart"], port, requests, seconds, d))
        rows.append(run("legate", [legate, "proxy"] + common, port, requests, seconds, d))
    origin.shutdown()
    print(f"{'proxy':8} {'requests':>9} {'hits':>7} {'hit p50 us':>11} {'hit p99 us':>11} {'offload':>8} {'origin':>7}")
    for name, sent, hits, p50, p99, offload, reached in rows:
        print(f"{name:8} {sent:9d} {hits:7d} {p50:11.0f} {p99:11.0f} {offload:8.1%} {reached:7d}")


if __name__ == "__main__":
    main()
