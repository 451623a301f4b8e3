#!/usr/bin/env python3
"""A closed-loop HTTP/1.1 client for bench/lb-slow-host.sh: CONCURRENCY
keep-alive connections send GET PATH until REQUESTS have been answered or
SECS have passed, whichever comes first. Prints one line: the requests, the
share each upstream (`x-upstream`) answered, and p50/p99 latency in ms.

    python3 bench/lb_slow_host.py PORT PATH REQUESTS CONCURRENCY SECS SLOW_NAME
"""

import http.client
import sys
import threading
import time


def main():
    port, path, total, conc, secs, slow = (
        int(sys.argv[1]),
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
        float(sys.argv[5]),
        sys.argv[6],
    )
    lock = threading.Lock()
    sent = [0]
    seen = []  # (upstream, seconds)
    errors = [0]
    deadline = time.monotonic() + secs

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= total:
                    return
                sent[0] += 1
            t0 = time.monotonic()
            try:
                conn.request("GET", path, headers={"host": "bench"})
                r = conn.getresponse()
                r.read()
                up = r.getheader("x-upstream") if r.status == 200 else None
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                up = None
            dt = time.monotonic() - t0
            with lock:
                if up is None:
                    errors[0] += 1
                else:
                    seen.append((up, dt))

    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = len(seen)
    if n == 0:
        print(f"requests=0 errors={errors[0]}")
        return
    lat = sorted(dt for _, dt in seen)
    p = lambda q: lat[min(n - 1, int(q * n))] * 1000.0
    slow_share = sum(1 for up, _ in seen if up == slow) / n
    print(f"requests={n} errors={errors[0]} slow_share={slow_share:.3f} p50_ms={p(0.50):.1f} p99_ms={p(0.99):.1f}")


if __name__ == "__main__":
    main()
