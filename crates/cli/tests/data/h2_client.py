#!/usr/bin/env python3
"""The HTTP/2 client the conformance cases (h2_conformance.py) and the
attack bench use: frames and HPACK blocks written by hand (so malformed
ones can be), a connection that reads frames with deadlines, and h2spec's
verdict rules. Standard library only."""


import socket
import ssl
import struct
import sys
import time

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0, 1, 2, 3, 4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 5, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 5, 6, 7, 8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 9, 11

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WAIT = 2.0


def frame(kind, flags, stream, payload=b""):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def settings(*pairs, flags=0, stream=0):
    return frame(SETTINGS, flags, stream, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def hpack_int(value, prefix, first=0):
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def lit(name, value):
    """A literal header field without indexing, new name, no Huffman."""
    name, value = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def request_fields(path="/", method="GET", extra=()):
    fields = [(":method", method), (":scheme", "http"), (":path", path), (":authority", "example.com")]
    return fields + list(extra)


def block(fields):
    return b"".join(lit(n, v) for n, v in fields)


def headers(stream, fields=None, flags=END_STREAM | END_HEADERS):
    return frame(HEADERS, flags, stream, block(fields if fields is not None else request_fields()))


class Conn:
    def __init__(self, host, port, tls, preface=True, client_settings=()):
        raw = socket.create_connection((host, port), timeout=5)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            raw = ctx.wrap_socket(raw, server_hostname="example.com")
        self.sock = raw
        self.buf = b""
        self.closed = False
        self.server_settings = {}
        if preface:
            self.send(PREFACE + settings(*client_settings))
            self.handshake()

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def next_frame(self, deadline):
        """The next frame (kind, flags, stream, payload), or None when the
        connection closed or the deadline passed (self.closed tells)."""
        while True:
            if len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + n:
                    kind, flags = self.buf[3], self.buf[4]
                    stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                    payload = self.buf[9 : 9 + n]
                    self.buf = self.buf[9 + n :]
                    return kind, flags, stream, payload
            left = deadline - time.time()
            if left <= 0 or self.closed:
                return None
            self.sock.settimeout(min(left, 0.5))
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return None
            self.buf += data

    def handshake(self):
        """Reads until the server's SETTINGS, acknowledges them."""
        deadline = time.time() + WAIT
        while True:
            f = self.next_frame(deadline)
            if f is None:
                return
            if f[0] == SETTINGS and not f[1] & ACK:
                for i in range(0, len(f[3]) - 5, 6):
                    k, v = struct.unpack(">HI", f[3][i : i + 6])
                    self.server_settings[k] = v
                self.send(settings(flags=ACK))
                return

    def expect(self, want, wait=WAIT):
        """Reads frames until `want(frame)` says True or False; None on
        timeout, 'closed' when the connection closed first."""
        deadline = time.time() + wait
        while True:
            f = self.next_frame(deadline)
            if f is None:
                return "closed" if self.closed else None
            if f[0] == PING and not f[1] & ACK:
                self.send(frame(PING, ACK, 0, f[3]))
            verdict = want(f)
            if verdict is not None:
                return (verdict, f)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def describe(f):
    if f is None:
        return "timeout"
    if f == "closed":
        return "connection closed"
    kind, flags, stream, payload = f[1]
    names = {0: "DATA", 1: "HEADERS", 3: "RST_STREAM", 4: "SETTINGS", 6: "PING", 7: "GOAWAY", 8: "WINDOW_UPDATE"}
    name = names.get(kind, str(kind))
    if kind == GOAWAY and len(payload) >= 8:
        return "GOAWAY %d %r" % (int.from_bytes(payload[4:8], "big"), payload[8:40])
    if kind == RST_STREAM and len(payload) == 4:
        return "RST_STREAM stream %d code %d" % (stream, int.from_bytes(payload, "big"))
    return "%s stream %d flags %d" % (name, stream, flags)


def code_of(payload, kind):
    return int.from_bytes(payload[4:8] if kind == GOAWAY else payload[:4], "big")


def conn_error(*codes):
    """h2spec's connection error: GOAWAY with one of `codes`, or closed."""

    def want(f):
        kind, _, _, payload = f
        if kind == GOAWAY:
            return code_of(payload, kind) in codes
        return None

    return want


def stream_error(stream, *codes):
    """h2spec's stream error: RST_STREAM on `stream` or GOAWAY with one of
    `codes`, or closed."""

    def want(f):
        kind, _, s, payload = f
        if kind == GOAWAY or (kind == RST_STREAM and s == stream):
            return code_of(payload, kind) in codes
        if kind == HEADERS and s == stream:
            return False
        return None

    return want


def response(stream):
    def want(f):
        kind, _, s, payload = f
        if kind == HEADERS and s == stream:
            return True
        if kind in (GOAWAY, RST_STREAM) and s in (0, stream):
            return False
        return None

    return want


def ping_ack(data):
    def want(f):
        kind, flags, _, payload = f
        if kind == PING and flags & ACK:
            return payload == data
        if kind == GOAWAY:
            return False
        return None

    return want


CASES = []


def case(cid, title):
    def register(fn):
        CASES.append((cid, title, fn))
        return fn

    return register


def verdict(outcome, allow_closed=True):
    if outcome == "closed":
        return allow_closed
    return bool(outcome) and outcome[0] is True


def run_conn(c, frames, want, allow_closed=True):
    c.send(b"".join(frames))
    out = c.expect(want)
    return verdict(out, allow_closed), describe(out)


def still_alive(c, frames):
    """Frames to be ignored: a PING after them is answered."""
    data = b"h2specOK"
    c.send(b"".join(frames) + frame(PING, 0, 0, data))
    out = c.expect(ping_ack(data))
    return verdict(out, allow_closed=False), describe(out)
