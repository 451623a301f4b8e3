#!/usr/bin/env python3
"""An HTTP/2 server conformance client, frame by frame.

The cases follow h2spec's published list for servers (RFC 9113 sections
3.4 to 8.1 and HPACK, RFC 7541), each with h2spec's verdict rule: a
connection error passes on a GOAWAY with the expected code or the
connection closed; a stream error passes on an RST_STREAM (or GOAWAY) with
the expected code or the connection closed; a frame to be ignored passes
when a PING after it is answered. Then the attacks: rapid reset, a
CONTINUATION flood, SETTINGS and PING floods and a zero-window stall, each
bounded in frames and time; what passes is said at each.

Standard library only: frames and HPACK blocks are written by hand, so
malformed ones can be. Usage:

    h2_conformance.py HOST PORT [--tls]

prints one line per case, `<id> PASS|FAIL <what was seen>`, then
`TOTAL <passed>/<cases>`.
"""

import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h2_client import *  # noqa: E402,F401,F403


def big_frame(n):
    return frame(DATA, END_STREAM, 1, b"x" * n)


def post(stream, length=None):
    extra = [("content-length", str(length))] if length is not None else []
    return headers(stream, request_fields(method="POST", extra=extra), flags=END_HEADERS)


# --- 3.4, 4: preface and frames -------------------------------------------

@case("3.4/1", "invalid connection preface")
def _(open_):
    c = open_(preface=False)
    return run_conn(c, [b"INVALID CONNECTION PREFACE\r\n\r\n"], conn_error(PROTOCOL_ERROR))


@case("4.1/1", "frame of unknown type is ignored")
def _(open_):
    return still_alive(open_(), [frame(0x16, 0, 0, b"\x00" * 8)])


@case("4.1/2", "undefined flags are ignored")
def _(open_):
    c = open_()
    c.send(frame(PING, 0x16 & ~ACK, 0, b"unknownf"))
    out = c.expect(ping_ack(b"unknownf"))
    return verdict(out, False), describe(out)


@case("4.1/3", "reserved bit in the stream identifier is ignored")
def _(open_):
    c = open_()
    f = bytearray(headers(1))
    f[5] |= 0x80
    return run_conn(c, [bytes(f)], response(1), False)


@case("4.2/1", "DATA of SETTINGS_MAX_FRAME_SIZE is accepted")
def _(open_):
    c = open_()
    return run_conn(c, [post(1), big_frame(16384)], response(1), False)


@case("4.2/2", "DATA over SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR")
def _(open_):
    c = open_()
    return run_conn(c, [post(1), big_frame(16385)], stream_error(1, FRAME_SIZE_ERROR))


@case("4.2/3", "HEADERS over SETTINGS_MAX_FRAME_SIZE: connection FRAME_SIZE_ERROR")
def _(open_):
    c = open_()
    fields = request_fields(extra=[("x-pad%d" % i, "a" * 4000) for i in range(5)])
    return run_conn(c, [frame(HEADERS, END_STREAM | END_HEADERS, 1, block(fields))], conn_error(FRAME_SIZE_ERROR))


@case("4.3/1", "invalid header block fragment: COMPRESSION_ERROR")
def _(open_):
    # A literal with indexing whose name length runs past the block.
    return run_conn(open_(), [frame(HEADERS, END_STREAM | END_HEADERS, 1, b"\x40\x7f\x7f")],
                    conn_error(COMPRESSION_ERROR))


@case("4.3/2", "PRIORITY between HEADERS and CONTINUATION: PROTOCOL_ERROR")
def _(open_):
    b = block(request_fields())
    frames = [frame(HEADERS, END_STREAM, 1, b[:10]), frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
              frame(CONTINUATION, END_HEADERS, 1, b[10:])]
    return run_conn(open_(), frames, conn_error(PROTOCOL_ERROR))


# --- 5.1: stream states ---------------------------------------------------

@case("5.1/1", "idle: DATA: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [frame(DATA, END_STREAM, 1, b"x")], conn_error(PROTOCOL_ERROR))


@case("5.1/2", "idle: RST_STREAM: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL))], conn_error(PROTOCOL_ERROR))


@case("5.1/3", "idle: WINDOW_UPDATE: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 100))], conn_error(PROTOCOL_ERROR))


@case("5.1/4", "idle: CONTINUATION: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [frame(CONTINUATION, END_HEADERS, 1, block(request_fields()))],
                    conn_error(PROTOCOL_ERROR))


@case("5.1/5", "half closed (remote): DATA: STREAM_CLOSED")
def _(open_):
    return run_conn(open_(), [headers(1), frame(DATA, END_STREAM, 1, b"x")],
                    stream_error(1, STREAM_CLOSED))


@case("5.1/6", "half closed (remote): HEADERS: STREAM_CLOSED")
def _(open_):
    return run_conn(open_(), [headers(1), headers(1)], stream_error(1, STREAM_CLOSED))


@case("5.1/7", "closed: DATA after RST_STREAM: STREAM_CLOSED")
def _(open_):
    c = open_()
    c.send(post(1) + frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)))
    time.sleep(0.2)
    return run_conn(c, [frame(DATA, 0, 1, b"x")], stream_error(1, STREAM_CLOSED))


@case("5.1/8", "closed: HEADERS after the stream ended: STREAM_CLOSED")
def _(open_):
    c = open_()
    c.send(headers(1))
    c.expect(lambda f: True if f[0] == DATA and f[1] & END_STREAM else None)
    return run_conn(c, [headers(1)], conn_error(STREAM_CLOSED, PROTOCOL_ERROR))


@case("5.1.1/1", "even-numbered stream identifier: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [headers(2)], conn_error(PROTOCOL_ERROR))


@case("5.1.1/2", "stream identifier lower than a previous one: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [headers(5), headers(3)], conn_error(PROTOCOL_ERROR))


@case("5.1.2/1", "over SETTINGS_MAX_CONCURRENT_STREAMS: PROTOCOL_ERROR or REFUSED_STREAM")
def _(open_):
    c = open_()
    limit = c.server_settings.get(3)
    if limit is None or limit > 1000:
        return False, "no usable SETTINGS_MAX_CONCURRENT_STREAMS: %r" % limit
    frames = [post(1 + 2 * i) for i in range(limit + 1)]
    return run_conn(c, frames, stream_error(1 + 2 * limit, PROTOCOL_ERROR, REFUSED_STREAM))


@case("5.3.1/1", "HEADERS depending on itself: PROTOCOL_ERROR")
def _(open_):
    payload = struct.pack(">IB", 1, 15) + block(request_fields())
    return run_conn(open_(), [frame(HEADERS, END_STREAM | END_HEADERS | PRIO, 1, payload)],
                    stream_error(1, PROTOCOL_ERROR))


@case("5.3.1/2", "PRIORITY depending on itself: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 15))], stream_error(1, PROTOCOL_ERROR))


@case("5.4.1/1", "after a connection error's GOAWAY the connection closes")
def _(open_):
    c = open_()
    c.send(frame(DATA, END_STREAM, 1, b"x"))
    out = c.expect(lambda f: None)
    return out == "closed", describe(out)


@case("5.5/1", "unknown extension frame is ignored")
def _(open_):
    return still_alive(open_(), [frame(0xFF, 0, 0, b"\x00" * 8)])


@case("5.5/2", "unknown frame inside a header block: PROTOCOL_ERROR")
def _(open_):
    b = block(request_fields())
    frames = [frame(HEADERS, END_STREAM, 1, b), frame(0xFF, 0, 1, b"\x00" * 8)]
    return run_conn(open_(), frames, conn_error(PROTOCOL_ERROR))


# --- 6: frame definitions -------------------------------------------------

@case("6.1/1", "DATA on stream 0: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [frame(DATA, END_STREAM, 0, b"x")], conn_error(PROTOCOL_ERROR))


@case("6.1/2", "DATA on a half-closed (remote) stream: STREAM_CLOSED")
def _(open_):
    return run_conn(open_(), [headers(1), frame(DATA, END_STREAM, 1, b"x")], stream_error(1, STREAM_CLOSED))


@case("6.1/3", "DATA with a pad length past its payload: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [post(1), frame(DATA, END_STREAM | PADDED, 1, b"\x06xxxx")],
                    conn_error(PROTOCOL_ERROR))


@case("6.2/1", "HEADERS followed by another stream's frame: PROTOCOL_ERROR")
def _(open_):
    b = block(request_fields())
    return run_conn(open_(), [frame(HEADERS, END_STREAM, 1, b), frame(DATA, 0, 3, b"x")],
                    conn_error(PROTOCOL_ERROR))


@case("6.2/2", "HEADERS on stream 0: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [headers(0)], conn_error(PROTOCOL_ERROR))


@case("6.2/3", "HEADERS with a pad length past its payload: PROTOCOL_ERROR")
def _(open_):
    b = block(request_fields())
    payload = bytes([len(b) + 1]) + b
    return run_conn(open_(), [frame(HEADERS, END_STREAM | END_HEADERS | PADDED, 1, payload)],
                    conn_error(PROTOCOL_ERROR))


@case("6.3/1", "PRIORITY on stream 0: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [frame(PRIORITY, 0, 0, struct.pack(">IB", 1, 15))], conn_error(PROTOCOL_ERROR))


@case("6.3/2", "PRIORITY of 4 bytes: FRAME_SIZE_ERROR")
def _(open_):
    return run_conn(open_(), [frame(PRIORITY, 0, 1, b"\x00\x00\x00\x03")], stream_error(1, FRAME_SIZE_ERROR))


@case("6.4/1", "RST_STREAM on stream 0: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [frame(RST_STREAM, 0, 0, struct.pack(">I", CANCEL))], conn_error(PROTOCOL_ERROR))


@case("6.4/2", "RST_STREAM on an idle stream: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [frame(RST_STREAM, 0, 7, struct.pack(">I", CANCEL))], conn_error(PROTOCOL_ERROR))


@case("6.4/3", "RST_STREAM of 3 bytes: FRAME_SIZE_ERROR")
def _(open_):
    return run_conn(open_(), [post(1), frame(RST_STREAM, 0, 1, b"\x00\x00\x08")], conn_error(FRAME_SIZE_ERROR))


@case("6.5/1", "SETTINGS ACK with a payload: FRAME_SIZE_ERROR")
def _(open_):
    return run_conn(open_(), [settings((3, 100), flags=ACK)], conn_error(FRAME_SIZE_ERROR))


@case("6.5/2", "SETTINGS on a stream: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [settings((3, 100), stream=1)], conn_error(PROTOCOL_ERROR))


@case("6.5/3", "SETTINGS of 3 bytes: FRAME_SIZE_ERROR")
def _(open_):
    return run_conn(open_(), [frame(SETTINGS, 0, 0, b"\x00\x03\x00")], conn_error(FRAME_SIZE_ERROR))


@case("6.5.2/1", "SETTINGS_ENABLE_PUSH of 2: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [settings((2, 2))], conn_error(PROTOCOL_ERROR))


@case("6.5.2/2", "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1: FLOW_CONTROL_ERROR")
def _(open_):
    return run_conn(open_(), [settings((4, 1 << 31))], conn_error(FLOW_CONTROL_ERROR))


@case("6.5.2/3", "SETTINGS_MAX_FRAME_SIZE under 16384: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [settings((5, 16383))], conn_error(PROTOCOL_ERROR))


@case("6.5.2/4", "SETTINGS_MAX_FRAME_SIZE over 2^24-1: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [settings((5, 1 << 24))], conn_error(PROTOCOL_ERROR))


@case("6.5.2/5", "unknown SETTINGS identifier is ignored")
def _(open_):
    return still_alive(open_(), [settings((0xFF, 1))])


@case("6.5.3/1", "SETTINGS are acknowledged")
def _(open_):
    c = open_()
    c.send(settings((4, 65535)))
    out = c.expect(lambda f: True if f[0] == SETTINGS and f[1] & ACK else None)
    return verdict(out, False), describe(out)


@case("6.7/1", "PING is answered with its payload")
def _(open_):
    return still_alive(open_(), [])


@case("6.7/2", "a PING ACK is not answered")
def _(open_):
    c = open_()
    c.send(frame(PING, ACK, 0, b"notreply") + frame(PING, 0, 0, b"h2specOK"))
    out = c.expect(lambda f: (f[3] == b"h2specOK") if f[0] == PING else None)
    return verdict(out, False), describe(out)


@case("6.7/3", "PING on a stream: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [frame(PING, 0, 1, b"\x00" * 8)], conn_error(PROTOCOL_ERROR))


@case("6.7/4", "PING of 6 bytes: FRAME_SIZE_ERROR")
def _(open_):
    return run_conn(open_(), [frame(PING, 0, 0, b"\x00" * 6)], conn_error(FRAME_SIZE_ERROR))


@case("6.8/1", "GOAWAY on a stream: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [frame(GOAWAY, 0, 1, struct.pack(">II", 0, 0))], conn_error(PROTOCOL_ERROR))


@case("6.9/1", "connection WINDOW_UPDATE of 0: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0))], conn_error(PROTOCOL_ERROR))


@case("6.9/2", "stream WINDOW_UPDATE of 0: PROTOCOL_ERROR")
def _(open_):
    return run_conn(open_(), [post(1), frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0))],
                    stream_error(1, PROTOCOL_ERROR))


@case("6.9/3", "WINDOW_UPDATE of 3 bytes: FRAME_SIZE_ERROR")
def _(open_):
    return run_conn(open_(), [frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01")], conn_error(FRAME_SIZE_ERROR))


@case("6.9.1/1", "connection window over 2^31-1: FLOW_CONTROL_ERROR")
def _(open_):
    wu = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFFFFFF))
    return run_conn(open_(), [wu, wu], conn_error(FLOW_CONTROL_ERROR))


@case("6.9.1/2", "stream window over 2^31-1: FLOW_CONTROL_ERROR")
def _(open_):
    wu = frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0x7FFFFFFF))
    return run_conn(open_(), [post(1), wu, wu], stream_error(1, FLOW_CONTROL_ERROR))


@case("6.9.2/1", "SETTINGS_INITIAL_WINDOW_SIZE of 1 limits DATA to 1 byte")
def _(open_):
    c = open_(client_settings=[(4, 1)])
    c.send(headers(1))
    out = c.expect(lambda f: (len(f[3]) == 1) if f[0] == DATA and f[2] == 1 else None)
    return verdict(out, False), describe(out)


@case("6.9.2/2", "a window made negative by SETTINGS is honoured")
def _(open_):
    c = open_(client_settings=[(4, 3)])
    c.send(headers(1))
    first = c.expect(lambda f: True if f[0] == DATA and f[2] == 1 else None)
    if not verdict(first, False):
        return False, "no first DATA: " + describe(first)
    # Window 3 - 3 = 0, then 0 - 2 = -2: a WINDOW_UPDATE of 2 sends nothing.
    c.send(settings((4, 1)))
    c.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2)))
    early = c.expect(lambda f: True if f[0] == DATA and f[2] == 1 else None, 0.5)
    if early not in (None,):
        return False, "DATA with a negative window: " + describe(early)
    c.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1)))
    out = c.expect(lambda f: (len(f[3]) == 1) if f[0] == DATA and f[2] == 1 else None)
    return verdict(out, False), describe(out)


@case("6.10/1", "several CONTINUATION frames are accepted")
def _(open_):
    b = block(request_fields(extra=[("x-a", "1"), ("x-b", "2")]))
    frames = [frame(HEADERS, END_STREAM, 1, b[:8]), frame(CONTINUATION, 0, 1, b[8:20]),
              frame(CONTINUATION, END_HEADERS, 1, b[20:])]
    return run_conn(open_(), frames, response(1), False)


@case("6.10/2", "CONTINUATION after END_HEADERS: PROTOCOL_ERROR")
def _(open_):
    frames = [headers(1), frame(CONTINUATION, END_HEADERS, 1, lit("x-a", "1"))]
    return run_conn(open_(), frames, conn_error(PROTOCOL_ERROR))


@case("6.10/3", "CONTINUATION on stream 0: PROTOCOL_ERROR")
def _(open_):
    b = block(request_fields())
    frames = [frame(HEADERS, END_STREAM, 1, b), frame(CONTINUATION, END_HEADERS, 0, lit("x-a", "1"))]
    return run_conn(open_(), frames, conn_error(PROTOCOL_ERROR))


@case("6.10/4", "CONTINUATION on another stream: PROTOCOL_ERROR")
def _(open_):
    b = block(request_fields())
    frames = [frame(HEADERS, END_STREAM, 1, b), frame(CONTINUATION, END_HEADERS, 3, lit("x-a", "1"))]
    return run_conn(open_(), frames, conn_error(PROTOCOL_ERROR))


# --- 8.1: HTTP messages ---------------------------------------------------

def malformed(cid, title, fields, flags=END_STREAM | END_HEADERS, more=()):
    @case(cid, title + ": PROTOCOL_ERROR")
    def _(open_):
        frames = [frame(HEADERS, flags, 1, block(fields))] + list(more)
        return run_conn(open_(), frames, stream_error(1, PROTOCOL_ERROR))


R = request_fields()
malformed("8.1/1", "trailers without END_STREAM", R, END_HEADERS,
          [frame(DATA, 0, 1, b"x"), frame(HEADERS, END_HEADERS, 1, lit("x-trailer", "1"))])
malformed("8.1.2/1", "an upper-case header name", R + [("X-Upper", "1")])
malformed("8.1.2.1/1", "an unknown pseudo-header", R + [(":unknown", "1")])
malformed("8.1.2.1/2", "a response pseudo-header in a request", R + [(":status", "200")])
malformed("8.1.2.1/3", "a pseudo-header after a regular one", R[:3] + [("x-a", "1"), R[3]])
malformed("8.1.2.1/4", "a duplicated pseudo-header", R + [(":path", "/again")])
malformed("8.1.2.2/1", "a connection-specific header", R + [("connection", "keep-alive")])
malformed("8.1.2.2/2", "TE other than trailers", R + [("te", "gzip")])
malformed("8.1.2.3/1", "an empty :path", [(":method", "GET"), (":scheme", "http"), (":path", ""),
                                          (":authority", "example.com")])
malformed("8.1.2.3/2", "no :method", R[1:])
malformed("8.1.2.3/3", "no :scheme", [R[0]] + R[2:])
malformed("8.1.2.3/4", "no :path", R[:2] + R[3:])
malformed("8.1.2.6/1", "content-length above the DATA", request_fields(method="POST", extra=[("content-length", "3")]),
          END_HEADERS, [frame(DATA, END_STREAM, 1, b"x")])
malformed("8.1.2.6/2", "content-length below the DATA", request_fields(method="POST", extra=[("content-length", "1")]),
          END_HEADERS, [frame(DATA, 0, 1, b"xx"), frame(DATA, END_STREAM, 1, b"x")])


@case("8.1/2", "a request with a body is answered")
def _(open_):
    return run_conn(open_(), [post(1, 4), frame(DATA, END_STREAM, 1, b"body")], response(1), False)


# --- HPACK (RFC 7541) ------------------------------------------------------

def hpack_error(cid, title, fragment):
    @case(cid, title + ": COMPRESSION_ERROR")
    def _(open_):
        payload = fragment + block(request_fields())
        return run_conn(open_(), [frame(HEADERS, END_STREAM | END_HEADERS, 1, payload)],
                        conn_error(COMPRESSION_ERROR))


hpack_error("hpack/2.3.3/1", "an index past the tables", b"\xff\x80\x03")
hpack_error("hpack/4.2/1", "a table size update over SETTINGS_HEADER_TABLE_SIZE", hpack_int(4097, 5, 0x20))
hpack_error("hpack/5.2/1", "a Huffman string padded past 7 bits", b"\x00\x85\xf2\xb2\x4a\x84\xff\x84\x49\x50\x9f\xff")
hpack_error("hpack/5.2/2", "a Huffman string with EOS", b"\x00\x87\xf2\xb2\x4a\x87\xff\xff\xff\xfd\x25\x42\x7f")
hpack_error("hpack/6.1/1", "index 0", b"\x80")


@case("hpack/6.3/1", "a table size update after a header field: COMPRESSION_ERROR")
def _(open_):
    payload = block(request_fields()) + b"\x20"
    return run_conn(open_(), [frame(HEADERS, END_STREAM | END_HEADERS, 1, payload)], conn_error(COMPRESSION_ERROR))


@case("hpack/dyn/1", "the dynamic table is kept across blocks")
def _(open_):
    # `x-kept: v` added to the dynamic table (index 62), used by the next block.
    add = b"\x40" + hpack_int(6, 7) + b"x-kept" + hpack_int(1, 7) + b"v"
    first = frame(HEADERS, END_STREAM | END_HEADERS, 1, block(request_fields()) + add)
    second = frame(HEADERS, END_STREAM | END_HEADERS, 3, block(request_fields()) + b"\xbe")
    c = open_()
    c.send(first + second)
    seen = set()

    def want(f):
        if f[0] == HEADERS:
            seen.add(f[2])
            return True if seen >= {1, 3} else None
        return False if f[0] in (GOAWAY, RST_STREAM) else None

    out = c.expect(want)
    return verdict(out, False), describe(out)


# --- the connection manager's header limits (Envoy's codec) ----------------
# Over `max_headers_count` (100, pseudo-headers counted) or far over
# `max_request_headers_kb` (60 KiB): the stream reset with INTERNAL_ERROR,
# nothing answered, the connection kept.

def split_block(stream, b):
    frames = [frame(HEADERS, END_STREAM if len(b) > 16384 else END_STREAM | END_HEADERS, stream, b[:16384])]
    rest = b[16384:]
    while rest:
        frames.append(frame(CONTINUATION, END_HEADERS if len(rest) <= 16384 else 0, stream, rest[:16384]))
        rest = rest[16384:]
    return frames


def reset_internal(open_, fields):
    c = open_()
    c.send(b"".join(split_block(1, block(fields))))

    def want(f):
        if f[0] == RST_STREAM and f[2] == 1:
            return code_of(f[3], RST_STREAM) == INTERNAL_ERROR
        return False if f[0] in (HEADERS, GOAWAY) else None

    out = c.expect(want)
    if not verdict(out, False):
        return False, describe(out)
    alive, seen = still_alive(c, [])
    return alive, describe(out) + "; then " + seen


@case("limits/1", "one header over max_headers_count: INTERNAL_ERROR")
def _(open_):
    return reset_internal(open_, request_fields(extra=[("x-h%d" % i, "v") for i in range(97)]))


@case("limits/2", "a 600 KB header block: INTERNAL_ERROR")
def _(open_):
    return reset_internal(open_, request_fields(extra=[("x-big%d" % i, "a" * 60000) for i in range(10)]))


# --- attacks ---------------------------------------------------------------
# Each bounded in frames and in time. Passing needs the server to stop the
# attack (end the stream or connection, or stop reading) and to serve a
# fresh connection afterwards.

ATTACK_SECONDS = 10.0


def serves_fresh(open_):
    c = open_()
    c.send(headers(1))
    out = c.expect(response(1))
    c.close()
    return verdict(out, False)


def ended(f):
    """The server ended the connection (GOAWAY) or refused streams."""
    return True if f[0] == GOAWAY else None


def drain(c):
    """Reads what the server has sent, without waiting; the last GOAWAY."""
    c.sock.setblocking(False)
    try:
        while True:
            data = c.sock.recv(1 << 20)
            if not data:
                c.closed = True
                break
            c.buf += data
    except (BlockingIOError, ssl.SSLWantReadError):
        pass
    except OSError:
        c.closed = True
    finally:
        c.sock.setblocking(True)
    goaway = None
    while True:
        f = c.next_frame(0)
        if f is None:
            return goaway
        if f[0] == GOAWAY:
            goaway = code_of(f[3], GOAWAY)


def flood(open_, make, total, read=True):
    """Sends `make(i)` for i below `total` (in batches) until the server
    ends the connection or stops reading (a send blocked 2 s); says what
    stopped it and how many were sent."""
    c = open_()
    sent, start = 0, time.time()
    c.sock.settimeout(2.0)
    stopped = "not stopped"
    while sent < total and time.time() - start < ATTACK_SECONDS:
        batch = b"".join(make(i) for i in range(sent, min(sent + 100, total)))
        try:
            c.sock.sendall(batch)
        except socket.timeout:
            stopped = "stopped reading"
            break
        except OSError:
            stopped = "closed"
            break
        sent = min(sent + 100, total)
        if read:
            code = drain(c)
            if code is not None:
                stopped = "GOAWAY %d" % code
                break
            if c.closed:
                stopped = "closed"
                break
    if stopped == "not stopped" and read:
        time.sleep(0.5)
        code = drain(c)
        stopped = "GOAWAY %d" % code if code is not None else ("closed" if c.closed else stopped)
    c.close()
    return stopped, sent


def attack_verdict(open_, stopped, sent, unit):
    fresh = serves_fresh(open_)
    ok = stopped != "not stopped" and fresh
    return ok, "%s after %d %s; fresh connection served: %s" % (stopped, sent, unit, fresh)


@case("attack/rapid-reset", "HEADERS then RST_STREAM, over and over (CVE-2023-44487)")
def _(open_):
    def make(i):
        s = 1 + 2 * i
        return headers(s) + frame(RST_STREAM, 0, s, struct.pack(">I", CANCEL))

    stopped, sent = flood(open_, make, 20000)
    return attack_verdict(open_, stopped, sent, "streams")


@case("attack/continuation-flood", "an endless header block of CONTINUATION frames (CVE-2024-27316)")
def _(open_):
    field = lit("x-flood", "a" * 16000)

    def make(i):
        if i == 0:
            return frame(HEADERS, END_STREAM, 1, block(request_fields()))
        return frame(CONTINUATION, 0, 1, field)

    stopped, sent = flood(open_, make, 4096)
    return attack_verdict(open_, stopped, sent, "frames of 16 KB")


@case("attack/settings-flood", "SETTINGS frames, their ACKs never read")
def _(open_):
    stopped, sent = flood(open_, lambda i: settings((4, 65535 + i % 2)), 1500000, read=False)
    return attack_verdict(open_, stopped, sent, "SETTINGS")


@case("attack/ping-flood", "PING frames, their ACKs never read")
def _(open_):
    stopped, sent = flood(open_, lambda i: frame(PING, 0, 0, struct.pack(">Q", i)), 1500000, read=False)
    return attack_verdict(open_, stopped, sent, "PINGs")


@case("attack/zero-window", "responses stalled on zero windows while a fresh connection is served")
def _(open_):
    # Ten connections of 50 streams each, every response held by a zero
    # stream window (and the connection window never opened).
    stalled = []
    for _ in range(10):
        c = open_(client_settings=[(4, 0)])
        c.send(b"".join(headers(1 + 2 * i) for i in range(50)))
        stalled.append(c)
    time.sleep(1.0)
    fresh = serves_fresh(open_)
    for c in stalled:
        c.close()
    return fresh, "fresh connection served beside 500 stalled responses: %s" % fresh


def main():
    host, port, tls = sys.argv[1], int(sys.argv[2]), "--tls" in sys.argv[3:]
    only = [a for a in sys.argv[3:] if not a.startswith("--")]

    def open_(preface=True, client_settings=()):
        return Conn(host, port, tls, preface, client_settings)

    passed = total = 0
    for cid, title, fn in CASES:
        if only and not any(cid.startswith(o) for o in only):
            continue
        total += 1
        try:
            ok, seen = fn(open_)
        except Exception as e:  # a case that breaks fails, with why
            ok, seen = False, "error: %r" % (e,)
        passed += bool(ok)
        print("%s %s %s -- %s" % (cid, "PASS" if ok else "FAIL", title, seen), flush=True)
    print("TOTAL %d/%d" % (passed, total), flush=True)


if __name__ == "__main__":
    main()
