#!/usr/bin/env python3
"""One HTTP/2 attack against a proxy's h2c listener for a bounded time,
reconnecting whenever the proxy ends a connection, with the frames of the
conformance client (crates/cli/tests/data/h2_conformance.py).

    h2_attacks.py PORT ATTACK SECONDS

ATTACK: rapid-reset, continuation-flood, settings-flood, ping-flood,
zero-window. Prints `<attack> connections=<n> units=<n> served=<bool>`: the
connections it opened, the frames (or stalled streams) it sent, and whether
a fresh request was answered at the end.
"""

import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "cli", "tests", "data"))
import h2_conformance as h  # noqa: E402

# Connections a flood may leave blocked (the proxy stopped reading) before
# the attacker stops opening new ones; stalled zero-window connections.
MAX_HELD = 20
STALLED_CONNS, STALLED_STREAMS = 200, 100


def opener(port):
    return lambda preface=True, client_settings=(): h.Conn("127.0.0.1", port, False, preface, client_settings)


def frames_for(attack):
    field = h.lit("x-flood", "a" * 16000)
    if attack == "rapid-reset":
        def make(i):
            s = 1 + 2 * i
            return h.headers(s) + h.frame(h.RST_STREAM, 0, s, struct.pack(">I", h.CANCEL))
        return make
    if attack == "continuation-flood":
        return lambda i: (h.frame(h.HEADERS, h.END_STREAM, 1, h.block(h.request_fields())) if i == 0
                          else h.frame(h.CONTINUATION, 0, 1, field))
    if attack == "settings-flood":
        return lambda i: h.settings((4, 65535 + i % 2))
    if attack == "ping-flood":
        return lambda i: h.frame(h.PING, 0, 0, struct.pack(">Q", i))
    raise SystemExit("unknown attack " + attack)


def flood(port, attack, seconds):
    make = frames_for(attack)
    end = time.time() + seconds
    conns = units = 0
    held = []
    while time.time() < end and len(held) < MAX_HELD:
        try:
            c = opener(port)()
        except OSError:
            time.sleep(0.05)
            continue
        conns += 1
        c.sock.settimeout(1.0)
        i = 0
        while time.time() < end:
            batch = b"".join(make(j) for j in range(i, i + 100))
            try:
                c.sock.sendall(batch)
            except socket.timeout:
                held.append(c)  # the proxy stopped reading: keep it so
                break
            except OSError:
                c.close()
                break
            i += 100
            units += 100
            if attack in ("rapid-reset", "continuation-flood"):
                h.drain(c)
                if c.closed:
                    c.close()
                    break
    # Hold what is blocked until the time is up.
    while time.time() < end:
        time.sleep(0.1)
    for c in held:
        c.close()
    return conns, units


def stall(port, seconds):
    end = time.time() + seconds
    stalled = []
    for _ in range(STALLED_CONNS):
        if time.time() >= end:
            break
        c = opener(port)(client_settings=[(4, 0)])
        c.send(b"".join(h.headers(1 + 2 * i) for i in range(STALLED_STREAMS)))
        stalled.append(c)
    while time.time() < end:
        time.sleep(0.1)
    for c in stalled:
        c.close()
    return len(stalled), len(stalled) * STALLED_STREAMS


def main():
    port, attack, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    if attack == "zero-window":
        conns, units = stall(port, seconds)
    else:
        conns, units = flood(port, attack, seconds)
    served = h.serves_fresh(opener(port))
    print("%s connections=%d units=%d served=%s" % (attack, conns, units, served), flush=True)


if __name__ == "__main__":
    main()
