#!/usr/bin/env python3
"""Samples one proxy during a flood (bench/overload-flood.sh): every 100 ms
it times a GET of the admin `/ready` (a new connection each time, as a
health checker makes; 2 s timeout), and every second it reads the proxy's
served-request counter. Prints one JSON object per second, for `seconds`
seconds, then a summary line of the seconds between the first and the last.

    flood_probe.py ADMIN_PORT STAT SECONDS
"""
import json
import socket
import sys
import time


def get(port, path, timeout=2.0):
    """The status and body of a GET on 127.0.0.1:port, or None on failure."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return None


def counter(port, name):
    r = get(port, "/stats")
    if not r:
        return None
    for line in r[1].splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return 0


def main():
    port, stat, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    start = time.monotonic()
    last = counter(port, stat)
    rows = []
    for sec in range(seconds):
        lat, failed = [], 0
        while time.monotonic() < start + sec + 1:
            t = time.monotonic()
            r = get(port, "/ready")
            if r and r[0] == 200:
                lat.append((time.monotonic() - t) * 1000)
            else:
                failed += 1
            time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))
        now = counter(port, stat)
        served = (now - last) if (now is not None and last is not None) else None
        last = now if now is not None else last
        lat.sort()
        row = {
            "second": sec + 1,
            "served": served,
            "ready_ok": len(lat),
            "ready_failed": failed,
            "ready_p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
            "ready_max_ms": round(lat[-1], 1) if lat else None,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    # The summary leaves out the first second (the load generator ramping
    # up) and the last (the flood ending).
    steady = rows[1:-1] if len(rows) > 2 else rows
    served = sorted(r["served"] for r in steady if r["served"] is not None)
    lat_max = [r["ready_max_ms"] for r in steady if r["ready_max_ms"] is not None]
    p50s = sorted(r["ready_p50_ms"] for r in steady if r["ready_p50_ms"] is not None)
    print(json.dumps({
        "summary": True,
        "served_per_s_min": served[0] if served else None,
        "served_per_s_median": served[len(served) // 2] if served else None,
        "served_per_s_max": served[-1] if served else None,
        "ready_answered": sum(r["ready_ok"] for r in steady),
        "ready_failed": sum(r["ready_failed"] for r in steady),
        "ready_p50_ms_median": p50s[len(p50s) // 2] if p50s else None,
        "ready_max_ms": max(lat_max) if lat_max else None,
    }), flush=True)


if __name__ == "__main__":
    main()
