#!/usr/bin/env python3
"""bench/soak.py — the helper of bench/soak.sh (Python 3 standard library only).

Subcommands (soak.sh drives them; each is bounded in count and time and talks to 127.0.0.x only):
  token   print an HS256 JWT (sub, exp, channels ["*"]) for the gateway's auth.hs256_secret
  users   well-behaved authenticated clients that come and go, and a pusher sending sequence-numbered
          POST /api/publish {"user": ...} pushes to the ones that are connected: counts every push a client missed
          while it was connected (and duplicates, reorders)
  swarm   misbehaving clients, like tests/torture.rs: fragmenting, not reading, closing mid-frame, trickling,
          oversize, invalid UTF-8, protocol violations, subscribe churn, slow subscribers, silent ones; tallies
          each one's ending (the documented close code / a TCP close, or "unexpected")
  sample  append one row per gateway to the CSV: RSS, fds, threads (/proc) and gauges/counters of GET /api/stats
  idle    wait (bounded) until a gateway has no connection and no lent read buffer; print its fd count
  finish  judge the run from the CSV and the JSON results, write the SVG, a summary and (full runs) a
          bench/RESULTS.md section; exit 1 with the reasons when a bound is broken
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import math
import os
import random
import socket
import struct
import sys
import threading
import time

# ----------------------------------------------------------------------------------------------------------------
# small shared pieces
# ----------------------------------------------------------------------------------------------------------------


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs256_token(secret, sub, ttl):
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"sub": sub, "exp": int(time.time()) + int(ttl), "channels": ["*"]}
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing = f"{header}.{body}".encode()
    sig = hmac.new(secret.encode(), signing, hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(sig)}"


def hostport(s):
    host, _, port = s.rpartition(":")
    if not host.startswith("127."):
        raise SystemExit(f"soak.py: {s}: loopback (127.x) addresses only")
    return host, int(port)


OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(fin, opcode, payload, rsv=0, mask=True):
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + mask_bytes(payload, key)


def mask_bytes(payload, key):
    if not payload:
        return b""
    k = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(len(payload), "big")


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


class Eof(Exception):
    pass


class Timeout(Exception):
    pass


class Ws:
    """A minimal blocking client WebSocket over one TCP connection (server frames are unmasked)."""

    def __init__(self, addr, path, timeout=10.0, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(addr)
            key = base64.b64encode(os.urandom(16))
            req = (
                f"GET {path} HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            self.sock.sendall(req)
            self.buf = b""
            deadline = time.monotonic() + timeout
            while b"\r\n\r\n" not in self.buf:
                if time.monotonic() > deadline:
                    raise Timeout("no upgrade response")
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise Eof("closed during the upgrade")
                self.buf += chunk
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            if " 101 " not in lines[0] + " ":
                raise Eof(f"upgrade refused: {lines[0]}")
            want = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
            if not any(line.lower().startswith("sec-websocket-accept:") and line.split(":", 1)[1].strip() == want
                       for line in lines[1:]):
                raise Eof("bad Sec-WebSocket-Accept")
        except BaseException:
            self.sock.close()
            raise

    def send(self, data):
        self.sock.sendall(data)

    def try_send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _need(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout("read timeout")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(262144)
            except socket.timeout:
                raise Timeout("read timeout") from None
            except OSError as e:
                raise Eof(f"read error: {e}") from None
            if not chunk:
                raise Eof("EOF")
            self.buf += chunk

    def read_frame(self, timeout):
        """(fin, opcode, payload) of the next frame; Timeout, Eof."""
        deadline = time.monotonic() + timeout
        self._need(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        off = 2
        if n == 126:
            self._need(4, deadline)
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self._need(10, deadline)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        if b1 & 0x80:
            raise Eof("masked server frame")
        self._need(off + n, deadline)
        payload = self.buf[off: off + n]
        self.buf = self.buf[off + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def next_message(self, timeout):
        """The next text/binary message (reassembled), answering pings; a close frame is returned as is."""
        deadline = time.monotonic() + timeout
        parts, op = [], None
        while True:
            fin, opcode, payload = self.read_frame(max(0.0, deadline - time.monotonic()))
            if opcode == OP_PING:
                self.try_send(frame(True, OP_PONG, payload))
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                return OP_CLOSE, payload
            if opcode != OP_CONT:
                op = opcode
            parts.append(payload)
            if fin:
                return op, b"".join(parts)

    def wait_closed(self, timeout):
        """True when the server ends the TCP connection (EOF or reset) within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.read_frame(left)
            except Eof:
                return True
            except Timeout:
                return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


class Api:
    """Keep-alive HTTP/1.1 client of the gateway API (reconnects after an error)."""

    def __init__(self, addr, timeout=10.0):
        self.addr, self.timeout, self.conn = addr, timeout, None

    def request(self, method, path, body=None):
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.addr[0], self.addr[1], timeout=self.timeout)
                data = json.dumps(body).encode() if body is not None else None
                headers = {"Content-Type": "application/json"} if data is not None else {}
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                return r.status, raw
            except (OSError, http.client.HTTPException) as e:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 1:
                    return 0, str(e).encode()
        return 0, b""


# ----------------------------------------------------------------------------------------------------------------
# token
# ----------------------------------------------------------------------------------------------------------------


def cmd_token(a):
    print(hs256_token(a.secret, a.sub, a.ttl))


# ----------------------------------------------------------------------------------------------------------------
# users: pushes to connected, authenticated users
# ----------------------------------------------------------------------------------------------------------------


class User:
    def __init__(self, name, addr, remote):
        self.name, self.addr, self.remote = name, addr, remote
        self.lock = threading.Lock()
        self.connected = False
        self.next_seq = 0
        self.expected = set()  # pushes accepted (or in flight) while connected, not received yet
        self.seen = set()  # received in this lifetime


def user_client(u, a, deadline, stats, rng):
    token = hs256_token(a.secret, u.name, a.duration + 600)
    path = f"/ws?token={token}" + ("&since=$" if a.cluster else "")
    while time.monotonic() < deadline - 2:
        try:
            ws = Ws(u.addr, path, timeout=10)
        except (OSError, Eof, Timeout) as e:
            stats.bump("connect_failures")
            stats.note(f"{u.name}: connect: {e}")
            time.sleep(1)
            continue
        try:
            op, payload = ws.next_message(10)
            welcome = json.loads(payload) if op == OP_TEXT else {}
            if welcome.get("type") != "welcome" or welcome.get("user") != u.name:
                raise Eof(f"no welcome frame: {payload[:200]!r}")
        except (Eof, Timeout, ValueError) as e:
            stats.bump("connect_failures")
            stats.note(f"{u.name}: welcome: {e}")
            ws.close()
            time.sleep(1)
            continue
        stats.bump("lifetimes")
        with u.lock:
            u.connected, u.seen, u.expected = True, set(), set()
        leave_at = min(deadline - 1, time.monotonic() + rng.uniform(a.min_life, a.max_life))
        ok = True
        last = -1

        def receive(timeout):
            nonlocal last
            op, payload = ws.next_message(timeout)
            if op == OP_CLOSE:
                raise Eof(f"server closed the connection with {close_code(payload)}")
            msg = json.loads(payload)
            if msg.get("user") != u.name:
                return  # pongs, heartbeat changes: not pushes
            seq = msg["data"]["seq"]
            with u.lock:
                if seq in u.seen:
                    stats.bump("duplicated")
                elif seq not in u.expected:
                    stats.bump("unexpected")  # published while we were not (yet) connected: not an error
                u.seen.add(seq)
                u.expected.discard(seq)
            if seq < last:
                stats.bump("out_of_order")
            last = max(last, seq)
            stats.bump("received_remote" if u.remote else "received")

        try:
            while time.monotonic() < leave_at:
                try:
                    receive(0.5)
                except Timeout:
                    pass
            # Leaving: no new pushes; wait (bounded) for everything accepted while we were here.
            with u.lock:
                u.connected = False
            wait_until = time.monotonic() + a.grace
            while time.monotonic() < wait_until:
                with u.lock:
                    if not u.expected:
                        break
                try:
                    receive(0.2)
                except Timeout:
                    pass
        except (Eof, ValueError, KeyError, TypeError) as e:
            ok = False
            stats.bump("dropped")
            stats.note(f"{u.name}: connection lost while connected: {e}")
        with u.lock:
            u.connected = False
            missed = len(u.expected)
            u.expected = set()
        stats.bump("lost_remote" if u.remote else "lost", missed)
        if ok:
            ws.try_send(frame(True, OP_CLOSE, close_payload(1000)))
            ws.wait_closed(5)
        ws.close()
        time.sleep(rng.uniform(0, 0.5))


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}
        self.notes = []

    def bump(self, k, n=1):
        with self.lock:
            self.c[k] = self.c.get(k, 0) + n

    def note(self, s):
        with self.lock:
            if len(self.notes) < 50:
                self.notes.append(s)


def cmd_users(a):
    rng = random.Random(a.seed)
    wss = [hostport(w) for w in a.ws.split(",")]
    api = hostport(a.api)
    tag = f"{os.getpid()}-{rng.randrange(1 << 30)}"
    users = [User(f"soak-{tag}-u{i}", wss[i % len(wss)], i % len(wss) != 0) for i in range(a.users)]
    stats = Stats()
    deadline = time.monotonic() + a.duration
    threads = [threading.Thread(target=user_client, args=(u, a, deadline, stats, random.Random(rng.random())),
                                daemon=True) for u in users]
    for t in threads:
        t.start()
    client = Api(api)
    pad = "p" * a.size
    interval = 1.0 / a.rate
    next_at = time.monotonic() + 1
    while time.monotonic() < deadline - 2 - a.grace:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += interval
        u = users[rng.randrange(len(users))]
        with u.lock:
            if not u.connected:
                stats.bump("skipped")
                continue
            seq = u.next_seq
            u.next_seq += 1
            u.expected.add(seq)
        status, body = client.request("POST", "/api/publish", {"user": u.name, "data": {"seq": seq, "pad": pad}})
        if status == 200:
            stats.bump("pushed_remote" if u.remote else "pushed")
        else:
            stats.bump("push_failed")
            stats.note(f"push to {u.name}: {status} {body[:200]!r}")
            with u.lock:
                u.expected.discard(seq)
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic() + a.grace + 15))
    out = dict(stats.c)
    out.update({"scenario": "users", "users": a.users, "nodes": len(wss), "rate": a.rate,
                "alive_threads": sum(t.is_alive() for t in threads), "notes": stats.notes})
    for k in ("pushed", "received", "lost", "duplicated", "out_of_order", "dropped", "pushed_remote",
              "received_remote", "lost_remote", "push_failed", "connect_failures", "lifetimes"):
        out.setdefault(k, 0)
    print(json.dumps(out))


# ----------------------------------------------------------------------------------------------------------------
# swarm: misbehaving clients
# ----------------------------------------------------------------------------------------------------------------

TEXT = b"abcdefghijklmnopqrstuvwxyz0123456789 "
KINDS = [("fragmented_echo", 14), ("not_reading", 10), ("close_mid_frame", 10), ("trickle", 8), ("oversize", 12),
         ("invalid_utf8", 12), ("violation", 14), ("sub_churn", 10), ("slow_subscriber", 5), ("silent", 2)]


def rbytes(rng, n, alphabet=TEXT):
    return bytes(rng.choice(alphabet) for _ in range(n)) if n < 4096 else (
        bytes(rng.choice(alphabet) for _ in range(4096)) * (n // 4096 + 1))[:n]


def fragments(rng, opcode, payload, parts, pings):
    cuts = sorted(rng.randint(0, len(payload)) for _ in range(parts - 1)) + [len(payload)]
    out, start = [], 0
    for i, end in enumerate(cuts):
        fin = i == len(cuts) - 1
        out.append(frame(fin, opcode if i == 0 else OP_CONT, payload[start:end]))
        if pings and not fin and rng.random() < 0.5:
            out.append(frame(True, OP_PING, b"between"))
        start = end
    return b"".join(out)


def send_split(ws, rng, data):
    off = 0
    while off < len(data):
        n = rng.randint(1, min(64, len(data) - off))
        if not ws.try_send(data[off: off + n]):
            return
        off += n
        time.sleep(rng.uniform(0, 0.015))


def ending(ws, allowed, wait):
    """A close frame with one of `allowed` followed by a TCP close, or a TCP close: "close N" / "tcp close"."""
    deadline = time.monotonic() + wait
    while True:
        try:
            _, op, payload = ws.read_frame(max(0.0, deadline - time.monotonic()))
        except Eof:
            return True, "tcp close"
        except Timeout:
            return False, "hang: neither a close frame nor a TCP close"
        if op == OP_CLOSE:
            code = close_code(payload)
            if code not in allowed:
                return False, f"close {code}, want one of {allowed}"
            ws.try_send(frame(True, OP_CLOSE, close_payload(code or 1000)))
            if ws.wait_closed(5):
                return True, f"close {code}"
            return False, f"close {code}, then no TCP close"


def drain_then_close(ws, allowed):
    until = time.monotonic() + 2
    while time.monotonic() < until:
        try:
            _, op, payload = ws.read_frame(0.3)
        except Eof:
            return True, "tcp close"
        except Timeout:
            continue
        if op == OP_CLOSE:
            code = close_code(payload)
            if code not in allowed:
                return False, f"close {code}, want one of {allowed}"
            return (True, f"close {code}") if ws.wait_closed(5) else (False, f"close {code}, then no TCP close")
        if op == OP_PING:
            ws.try_send(frame(True, OP_PONG, payload))
    ws.try_send(frame(True, OP_CLOSE, close_payload(1000)))
    return ending(ws, allowed, 10)


def run_client(kind, rng, addr, a, token):
    def connect(path, small=False):
        sep = "&" if "?" in path else "?"
        full = path if path == a.echo_path else f"{path}{sep}token={token}"
        return Ws(addr, full, timeout=10, rcvbuf=4096 if small else None)

    mm = a.max_message
    if kind == "fragmented_echo":
        ws = connect(a.echo_path)
        payload = rbytes(rng, rng.randint(0, 20000))
        data = fragments(rng, OP_TEXT, payload, rng.randint(1, 5), True)
        if rng.random() < 0.5:
            send_split(ws, rng, data[:2000])
            ws.send(data[2000:])
        else:
            ws.send(data)
        op, got = ws.next_message(10)
        if op != OP_TEXT or got != payload:
            return False, f"wrong echo ({op}, {len(got)} of {len(payload)} bytes)"
        ws.send(frame(True, OP_CLOSE, close_payload(1000)))
        return ending(ws, [1000], 5)
    if kind == "not_reading":
        ws = connect(a.echo_path, small=True)
        ws.sock.settimeout(5)
        # Kernel buffers on both ends absorb a few MiB before the gateway's own queue fills: aim past them.
        target = rng.randint(a.max_outbound, 4 * a.max_outbound)
        chunks, queued = [], 0
        while queued < target:
            n = rng.randint(4000, min(mm - 1, 60000))
            chunks.append(frame(True, OP_BINARY, rbytes(rng, n)))
            queued += n
        for c in chunks:
            if not ws.try_send(c):
                break
        time.sleep(rng.uniform(0, 0.5))
        return drain_then_close(ws, [1000, 1008])
    if kind == "close_mid_frame":
        ws = connect(a.echo_path if rng.random() < 0.5 else "/ws")
        f = frame(True, OP_BINARY, rbytes(rng, rng.randint(10, 30000)))
        ws.try_send(f[: rng.randint(1, len(f) - 1)])
        time.sleep(rng.uniform(0, 0.2))
        if rng.random() < 0.5:
            return True, "dropped"
        try:
            ws.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return True, "tcp close"
        return (True, "tcp close") if ws.wait_closed(5) else (False, "no TCP close after our FIN mid-frame")
    if kind == "trickle":
        ws = connect("/ws")
        ident = rng.randint(0, 1000000)
        send_split(ws, rng, fragments(rng, OP_TEXT, json.dumps({"op": "ping", "id": ident}).encode(),
                                      rng.randint(1, 3), True))
        deadline = time.monotonic() + 10
        while True:
            op, got = ws.next_message(max(0.0, deadline - time.monotonic()))
            if op == OP_TEXT and json.loads(got) == {"type": "pong", "id": ident}:
                break
            if op == OP_CLOSE:
                return False, f"close {close_code(got)} instead of a pong"
        ws.send(frame(True, OP_CLOSE, close_payload(1000)))
        return ending(ws, [1000], 5)
    if kind == "oversize":
        ws = connect(a.echo_path if rng.random() < 0.5 else "/ws")
        payload = rbytes(rng, rng.randint(mm + 1, mm + 50000))
        ws.sock.settimeout(5)
        ws.try_send(fragments(rng, OP_BINARY, payload, rng.randint(1, 3), rng.random() < 0.5))
        return ending(ws, [1009], 8)
    if kind == "invalid_utf8":
        ws = connect(a.echo_path if rng.random() < 0.5 else "/ws")
        payload = bytearray(rbytes(rng, rng.randint(0, 5000)))
        at = rng.randint(0, len(payload))
        payload[at:at] = rng.choice([b"\xc3\x28", b"\xff", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        data = fragments(rng, OP_TEXT, bytes(payload), rng.randint(1, 3), rng.random() < 0.5)
        for _ in range(rng.randint(0, 4)):
            data += frame(True, OP_BINARY, rbytes(rng, rng.randint(0, 30000)))
        ws.sock.settimeout(5)
        ws.try_send(data)
        return ending(ws, [1007], 8)
    if kind == "violation":
        ws = connect(a.echo_path if rng.random() < 0.5 else "/ws")
        choice = rng.randint(0, 5)
        if choice == 0:
            data = frame(True, rng.randint(3, 7), b"x")  # reserved opcode
        elif choice == 1:
            data = frame(True, OP_TEXT, b"{}", mask=False)  # unmasked client frame
        elif choice == 2:
            data = frame(True, OP_TEXT, b"{}", rsv=rng.randint(1, 7))  # reserved bits
        elif choice == 3:
            data = frame(True, OP_CONT, b"stray")  # continuation without a start
        elif choice == 4:
            data = frame(False, OP_PING, b"frag")  # fragmented control frame
        else:
            data = frame(True, OP_PING, b"p" * 126)  # control frame over 125 bytes
        data += rbytes(rng, rng.randint(0, 100000), b"\xff\x00\x81\x7f\x42")
        ws.sock.settimeout(5)
        ws.try_send(data)
        return ending(ws, [1002], 8)
    if kind == "sub_churn":
        ws = connect("/ws")
        for i in range(rng.randint(1, 9)):
            op = "subscribe" if rng.random() < 0.6 else "unsubscribe"
            req = json.dumps({"op": op, "channels": [f"swarm{rng.randint(0, 3)}" for _ in range(rng.randint(1, 2))],
                              "id": i}).encode()
            ws.send(fragments(rng, OP_TEXT, req, rng.randint(1, 2), True))
            deadline = time.monotonic() + 10
            while True:
                op_, got = ws.next_message(max(0.0, deadline - time.monotonic()))
                if op_ == OP_CLOSE:
                    return False, f"close {close_code(got)} instead of a reply"
                v = json.loads(got)
                if v.get("type") == "reply" and v.get("id") == i:
                    if v.get("ok") is not True:
                        return False, f"{req!r} refused: {v}"
                    break
        ws.send(frame(True, OP_CLOSE, close_payload(1000)))
        return ending(ws, [1000], 5)
    if kind == "slow_subscriber":
        ws = connect("/ws?channels=soak-flood", small=True)
        time.sleep(rng.uniform(1, 6))
        return drain_then_close(ws, [1000, 1008])
    if kind == "silent":
        # Never a byte: the idle timeout must close it with 1001.
        return ending(connect("/ws"), [1001], a.idle_timeout + 15)
    raise ValueError(kind)


def cmd_swarm(a):
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(6), "big")
    wss = [hostport(w) for w in a.ws.split(",")]
    api = hostport(a.api)
    token = hs256_token(a.secret, "soak-swarm", a.duration + 600)
    deadline = time.monotonic() + a.duration
    lock = threading.Lock()
    tally = {}  # kind -> {"runs": n, "ok": {how: n}, "unexpected": [why...]}
    total_w = sum(w for _, w in KINDS)

    def pick(rng):
        r = rng.randrange(total_w)
        for k, w in KINDS:
            if r < w:
                return k
            r -= w
        return KINDS[0][0]

    def worker(i):
        rng = random.Random(seed + i + 1)
        while time.monotonic() < deadline:
            kind = pick(rng)
            addr = wss[rng.randrange(len(wss))]
            try:
                ok, how = run_client(kind, rng, addr, a, token)
            except (Eof, Timeout, OSError, ValueError, KeyError) as e:
                ok, how = False, f"{type(e).__name__}: {e}"
            with lock:
                t = tally.setdefault(kind, {"runs": 0, "ok": {}, "unexpected": []})
                t["runs"] += 1
                if ok:
                    t["ok"][how] = t["ok"].get(how, 0) + 1
                else:
                    t["unexpected"].append(how)

    def flood():
        # Big publishes to the slow subscribers' channel: they fall behind and are cut off (1008).
        client = Api(api)
        body = {"channel": "soak-flood", "data": "f" * 32000}
        while time.monotonic() < deadline:
            client.request("POST", "/api/publish", body)
            time.sleep(0.025)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.workers)]
    threads.append(threading.Thread(target=flood, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic() + a.idle_timeout + 60))
    with lock:
        kinds = {k: {"runs": v["runs"], "ok": v["ok"], "unexpected": len(v["unexpected"]),
                     "examples": v["unexpected"][:3]} for k, v in sorted(tally.items())}
    print(json.dumps({"scenario": "swarm", "seed": seed, "workers": a.workers,
                      "clients": sum(v["runs"] for v in kinds.values()),
                      "unexpected": sum(v["unexpected"] for v in kinds.values()),
                      "alive_threads": sum(t.is_alive() for t in threads), "kinds": kinds}))


# ----------------------------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------------------------

STAT_TOTALS = ["connections", "channels", "read_buffers_lent", "handshakes_total", "closed_total",
               "messages_out_total", "slow_consumer_closes_total", "protocol_errors_total", "idle_timeouts_total",
               "publishes_total"]
STAT_SESSIONS = ["authenticated", "user_deliveries_total"]
STAT_CLUSTER = ["redis_connected", "outbox_events", "outbox_bytes", "events_dropped_total", "events_out_total",
                "events_in_total", "upstream_queue_events", "upstream_dropped_total", "state_events_dropped_total"]
COLUMNS = (["unix_time", "elapsed_s", "node", "pid", "alive", "rss_kb", "fds", "threads"] + STAT_TOTALS
           + ["api_publishes_total"] + STAT_SESSIONS + ["cluster_" + k for k in STAT_CLUSTER])


def proc_figures(pid):
    rss = threads = ""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = line.split()[1]
                elif line.startswith("Threads:"):
                    threads = line.split()[1]
        fds = str(len(os.listdir(f"/proc/{pid}/fd")))
    except OSError:
        return False, "", "", ""
    return True, rss, fds, threads


def get_stats(api):
    try:
        c = http.client.HTTPConnection(api[0], api[1], timeout=5)
        c.request("GET", "/api/stats")
        r = c.getresponse()
        body = r.read()
        c.close()
        return json.loads(body) if r.status == 200 else {}
    except (OSError, http.client.HTTPException, ValueError):
        return {}


def cmd_sample(a):
    new = not os.path.exists(a.csv) or os.path.getsize(a.csv) == 0
    now = time.time()
    rows = []
    for spec in a.node:
        name, pid, api = spec.split("=", 1)[0], *spec.split("=", 1)[1].split("@")
        alive, rss, fds, threads = proc_figures(int(pid))
        st = get_stats(hostport(api)) if alive else {}
        totals = st.get("totals") or {}
        sessions = st.get("sessions") or {}
        cluster = st.get("cluster") or {}
        row = [f"{now:.0f}", f"{now - a.start:.0f}", name, pid, "1" if alive else "0", rss, fds, threads]
        row += [str(totals.get(k, "")) for k in STAT_TOTALS]
        row += [str((st.get("api") or {}).get("publishes_total", ""))]
        row += [str(sessions.get(k, "")) for k in STAT_SESSIONS]
        row += [str(cluster.get(k, "")) for k in STAT_CLUSTER]
        rows.append(row)
        print(f"soak: {int(now - a.start):>5}s {name}: rss {rss} KiB, fds {fds}, conns {totals.get('connections', '?')}"
              + (f", redis {'up' if cluster.get('redis_connected') else 'down'}"
                 f", outbox {cluster.get('outbox_events', '?')}" if cluster else "") + ("" if alive else " DEAD"))
    with open(a.csv, "a") as f:
        if new:
            f.write(",".join(COLUMNS) + "\n")
        for row in rows:
            f.write(",".join(row) + "\n")


def cmd_idle(a):
    """Waits until connections and lent buffers are 0 (at most --timeout); prints "CONNS BUFFERS FDS"."""
    api = hostport(a.api)
    deadline = time.monotonic() + a.timeout
    while True:
        totals = get_stats(api).get("totals") or {}
        conns, bufs = totals.get("connections", -1), totals.get("read_buffers_lent", -1)
        if (conns == 0 and bufs == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(0.5)  # let deferred closes finish
    _, _, fds, _ = proc_figures(a.pid)
    print(conns, bufs, fds or -1)


# ----------------------------------------------------------------------------------------------------------------
# finish: judge, chart, record
# ----------------------------------------------------------------------------------------------------------------


def read_csv(path):
    with open(path) as f:
        head = f.readline().strip().split(",")
        rows = [dict(zip(head, line.rstrip("\n").split(","))) for line in f if line.strip()]
    return rows


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def read_jsonl(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    return out


def nice_step(x):
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least x."""
    p = 10 ** math.floor(math.log10(x)) if x > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if m * p >= x:
            return m * p
    return 10 * p


def svg_chart(series, events, title, width=900, height=420):
    """Two stacked line charts over time: RSS (MiB) and open fds, one line per node; vertical marks for events."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    pad_l, pad_r, pad_t, gap, pad_b = 70, 35, 40, 50, 40
    ph = (height - pad_t - gap - pad_b) / 2
    xs = [t for s in series.values() for t, _, _ in s]
    xmax = max(xs + [1])

    def esc(s):
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{esc(title)}</text>']
    for panel, (idx, label) in enumerate([(1, "RSS (MiB)"), (2, "open fds")]):
        top = pad_t + panel * (ph + gap)
        vals = [p[idx] for s in series.values() for p in s if p[idx] is not None]
        vmax = nice_step(max(vals + [1]) * 1.05 / 4) * 4
        x0, x1 = pad_l, width - pad_r

        def sx(t):
            return x0 + (x1 - x0) * t / xmax

        def sy(v):
            return top + ph - ph * v / vmax

        out.append(f'<rect x="{x0}" y="{top}" width="{x1 - x0}" height="{ph}" fill="none" stroke="#999"/>')
        out.append(f'<text x="15" y="{top + ph / 2}" transform="rotate(-90 15 {top + ph / 2})" '
                   f'text-anchor="middle">{label}</text>')
        for i in range(5):
            v = vmax * i / 4
            y = sy(v)
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
        for i in range(6):
            t = xmax * i / 5
            out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 15}" text-anchor="middle">{t / 60:.1f} min</text>')
        for t, what in events:
            out.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + ph}" stroke="#f90" '
                       f'stroke-dasharray="4 3"><title>{esc(what)}</title></line>')
        for n, (name, s) in enumerate(series.items()):
            pts = " ".join(f"{sx(p[0]):.1f},{sy(p[idx]):.1f}" for p in s if p[idx] is not None)
            c = colors[n % len(colors)]
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{pts}"/>')
            if panel == 0:
                out.append(f'<text x="{x0 + 10 + 110 * n}" y="{top + 15}" fill="{c}">{esc(name)}</text>')
    if events:
        out.append(f'<text x="{width - pad_r}" y="{height - 8}" text-anchor="end" fill="#f90">'
                   f'dashed: {esc(events[0][1].split(" ")[0])} restarts ({len(events)})</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def cmd_finish(a):
    rows = read_csv(a.csv)
    bench = read_jsonl(a.bench)
    users = read_jsonl(a.users)
    swarm = read_jsonl(a.swarm)
    idle = [line.split() for line in open(a.idle)] if a.idle and os.path.exists(a.idle) else []
    events = []
    if a.events and os.path.exists(a.events):
        for line in open(a.events):
            t, _, what = line.strip().partition(" ")
            if num(t) is not None:
                events.append((num(t), what))
    failures, lines = [], []

    # --- memory and fds per node: the last third of the run after warm-up against the first third.
    nodes = []
    for r in rows:
        if r["node"] not in nodes:
            nodes.append(r["node"])
    series = {}
    figures = {}
    for node in nodes:
        pts = [(num(r["elapsed_s"]), num(r["rss_kb"]), num(r["fds"]), r) for r in rows if r["node"] == node]
        pts = [p for p in pts if p[1] is not None and p[2] is not None]
        series[node] = [(t, rss / 1024, fds) for t, rss, fds, _ in pts]
        if not pts:
            failures.append(f"{node}: no samples")
            continue
        after = [p for p in pts if p[0] >= a.warmup]
        span = (after[-1][0] - after[0][0]) if after else 0
        f = {"rss_start_kb": pts[0][1], "rss_end_kb": pts[-1][1], "rss_max_kb": max(p[1] for p in pts),
             "fds_start": pts[0][2], "fds_end": pts[-1][2], "fds_max": max(p[2] for p in pts), "samples": len(pts)}
        if len(after) >= 3 and span > 0:
            first = [p for p in after if p[0] <= after[0][0] + span / 3] or after[:1]
            last = [p for p in after if p[0] >= after[-1][0] - span / 3] or after[-1:]
            f1_rss, f3_rss = max(p[1] for p in first), max(p[1] for p in last)
            f1_fds, f3_fds = max(p[2] for p in first), max(p[2] for p in last)
            rss_bound = f1_rss * (1 + a.rss_tolerance_pct / 100) + a.rss_slack_mib * 1024
            fds_bound = f1_fds * (1 + a.fds_tolerance_pct / 100) + a.fds_slack
            f.update({"rss_first_third_max_kb": f1_rss, "rss_last_third_max_kb": f3_rss, "rss_bound_kb": rss_bound,
                      "fds_first_third_max": f1_fds, "fds_last_third_max": f3_fds, "fds_bound": fds_bound})
            if f3_rss > rss_bound:
                failures.append(f"{node}: RSS grew: last third max {f3_rss / 1024:.1f} MiB > bound "
                                f"{rss_bound / 1024:.1f} MiB (first third max {f1_rss / 1024:.1f} MiB "
                                f"+ {a.rss_tolerance_pct}% + {a.rss_slack_mib} MiB)")
            if f3_fds > fds_bound:
                failures.append(f"{node}: open fds grew: last third max {f3_fds:.0f} > bound {fds_bound:.0f} "
                                f"(first third max {f1_fds:.0f} + {a.fds_tolerance_pct}% + {a.fds_slack})")
        else:
            failures.append(f"{node}: too few samples after the {a.warmup:.0f} s warm-up to judge growth")
        if any(r["alive"] == "0" for r in rows if r["node"] == node):
            failures.append(f"{node}: the gateway process exited during the run")
        figures[node] = f
        lines.append(
            f"{node}: RSS start {f['rss_start_kb'] / 1024:.1f} MiB, end {f['rss_end_kb'] / 1024:.1f} MiB, "
            f"max {f['rss_max_kb'] / 1024:.1f} MiB"
            + (f" (after warm-up: first third max {f['rss_first_third_max_kb'] / 1024:.1f}, last third max "
               f"{f['rss_last_third_max_kb'] / 1024:.1f}, bound {f['rss_bound_kb'] / 1024:.1f})"
               if "rss_bound_kb" in f else "")
            + f"; fds start {f['fds_start']:.0f}, end {f['fds_end']:.0f}, max {f['fds_max']:.0f}"
            + (f" (first third max {f['fds_first_third_max']:.0f}, last third max "
               f"{f['fds_last_third_max']:.0f}, bound {f['fds_bound']:.0f})" if "fds_bound" in f else ""))
    for spec in idle:
        # NODE BASELINE_FDS CONNS BUFS FDS
        node, base, conns, bufs, fds = spec[0], int(spec[1]), int(spec[2]), int(spec[3]), int(spec[4])
        lines.append(f"{node}: after the load: {conns} connections, {bufs} lent read buffers, {fds} fds "
                     f"(before the load {base})")
        if conns != 0 or bufs != 0:
            failures.append(f"{node}: not back to idle after the load: {conns} connections, {bufs} lent buffers")
        if fds > base + a.idle_fds_slack:
            failures.append(f"{node}: {fds} fds after the load, {base} before it (slack {a.idle_fds_slack}): "
                            f"descriptors leaked")

    # --- well-behaved subscribers: churn / fanout rounds of wsgate-bench.
    agg = {}
    for d in bench:
        r = d.get("results") or {}
        k = d.get("label", "?")
        g = agg.setdefault(k, {"rounds": 0, "deliveries": 0, "expected": 0, "lost": 0, "duplicated": 0,
                               "out_of_order": 0, "reconnects": 0, "server_closes": 0, "dropped": 0,
                               "protocol_errors": 0, "connect_failures": 0})
        g["rounds"] += 1
        for key in ("deliveries", "expected", "lost", "duplicated", "out_of_order", "reconnects", "dropped",
                    "protocol_errors"):
            g[key] += int(r.get(key) or 0)
        g["server_closes"] += sum(int(v) for v in (r.get("server_closes") or {}).values())
        g["connect_failures"] += int(r.get("failed") or 0) + sum(
            int(v) for v in (r.get("reconnect_failures") or {}).values())
        if r.get("aborted"):
            failures.append(f"wsgate-bench {k} round aborted: {r.get('aborted')}")
    for k, g in sorted(agg.items()):
        lines.append(f"{k}: {g['rounds']} rounds, {g['deliveries']} deliveries of {g['expected']} expected, "
                     f"lost while connected {g['lost']}, duplicated {g['duplicated']}, out of order "
                     f"{g['out_of_order']}" + (f", {g['reconnects']} reconnects" if k == "churn" else "")
                     + f"; server closes {g['server_closes']}, dropped {g['dropped']}, protocol errors "
                     f"{g['protocol_errors']}, connect failures {g['connect_failures']}")
        if g["lost"] or g["duplicated"] or g["out_of_order"]:
            failures.append(f"{k}: well-behaved subscribers lost {g['lost']}, duplicated {g['duplicated']}, "
                            f"reordered {g['out_of_order']} messages while connected")
        if g["server_closes"] or g["dropped"] or g["protocol_errors"]:
            failures.append(f"{k}: well-behaved subscribers were closed by the gateway ({g['server_closes']}), "
                            f"dropped without a close ({g['dropped']}) or saw protocol errors "
                            f"({g['protocol_errors']})")
    for name, want in (("churn", a.expect_churn), ("fanout", a.expect_fanout)):
        if want and agg.get(name, {}).get("rounds", 0) == 0:
            failures.append(f"no completed {name} round")
    failed_rounds = [line.strip() for line in open(a.round_failures)] if a.round_failures and os.path.exists(
        a.round_failures) else []
    for fr in failed_rounds[:5]:
        failures.append(f"round failed: {fr}")
    if len(failed_rounds) > 5:
        failures.append(f"... and {len(failed_rounds) - 5} more failed rounds ({a.round_failures})")

    # --- user pushes.
    u = users[-1] if users else None
    if u:
        lines.append(f"users: {u['users']} users on {u['nodes']} node(s), {u['lifetimes']} connections; pushes "
                     f"{u['pushed']} local / {u['pushed_remote']} cross-node, received {u['received']} / "
                     f"{u['received_remote']}, lost while connected {u['lost']} / {u['lost_remote']}, duplicated "
                     f"{u['duplicated']}, out of order {u['out_of_order']}, dropped connections {u['dropped']}, "
                     f"push failures {u['push_failed']}, connect failures {u['connect_failures']}")
        if u["lost"] or u["duplicated"] or u["out_of_order"] or u["dropped"]:
            failures.append(f"user pushes: lost {u['lost']}, duplicated {u['duplicated']}, out of order "
                            f"{u['out_of_order']}, connections dropped {u['dropped']} (well-behaved clients)")
        if u["lost_remote"]:
            lines.append(f"  note: {u['lost_remote']} cross-node user pushes lost (through Redis restarts; "
                         f"reported, not judged)")
        if u["pushed"] == 0:
            failures.append("user pushes: nothing was pushed")
        if u.get("alive_threads"):
            failures.append(f"user pushes: {u['alive_threads']} client threads did not finish (hang)")
        for n in u.get("notes", [])[:5]:
            lines.append(f"  users: {n}")
    elif a.expect_users:
        failures.append("user pushes: no result (the users client did not finish)")

    # --- misbehaving clients.
    s = swarm[-1] if swarm else None
    if s:
        lines.append(f"misbehaving clients: {s['clients']} (seed {s['seed']}, {s['workers']} workers), unexpected "
                     f"endings {s['unexpected']}")
        for kind, v in s["kinds"].items():
            oks = ", ".join(f"{how} {n}" for how, n in sorted(v["ok"].items()))
            lines.append(f"  {kind:<16} {v['runs']:>5} runs: {oks}" + (
                f"; UNEXPECTED {v['unexpected']}: {'; '.join(v['examples'])}" if v["unexpected"] else ""))
        if s["unexpected"]:
            failures.append(f"misbehaving clients: {s['unexpected']} saw neither the documented close code nor a "
                            f"TCP close (or hung)")
        if s.get("alive_threads"):
            failures.append(f"misbehaving clients: {s['alive_threads']} worker threads did not finish (hang)")
    elif a.expect_swarm:
        failures.append("misbehaving clients: no result (the swarm did not finish)")

    failures[:0] = a.extra_failure or []  # a gateway that died explains everything else: first

    title = f"wsgate soak: {a.params}"
    with open(a.svg, "w") as f:
        f.write(svg_chart(series, events, title))
    verdict = "PASS" if not failures else "FAIL"
    summary = "\n".join(lines + [f"verdict: {verdict}"] + [f"  FAIL: {x}" for x in failures])
    print(summary)
    with open(a.summary, "w") as f:
        f.write(summary + "\n")
    if a.md:
        section = [f"\n## {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())} — soak (bench/soak.sh), {a.params}: "
                   f"{verdict} — commit {a.commit}\n",
                   f"`{('bench/soak.sh ' + a.args).strip()}`; {a.params}.\n",
                   f"Gateway: {a.gateway}.\n", f"Load: {a.load}.\n",
                   f"Bounds: after a {a.warmup:.0f} s warm-up, the last third's max RSS ≤ the first third's × "
                   f"{1 + a.rss_tolerance_pct / 100:.2f} + {a.rss_slack_mib} MiB, max fds ≤ × "
                   f"{1 + a.fds_tolerance_pct / 100:.2f} + {a.fds_slack}; back to 0 connections and ≤ "
                   f"{a.idle_fds_slack} fds over the pre-load count after the load.\n",
                   "```", *lines, f"verdict: {verdict}", *[f"  FAIL: {x}" for x in failures], "```\n",
                   f"![RSS and fds over the run]({a.svg_link})\n"]
        with open(a.md, "a") as f:
            f.write("\n".join(section))
    sys.exit(0 if not failures else 1)


# ----------------------------------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("token")
    t.add_argument("--secret", required=True)
    t.add_argument("--sub", required=True)
    t.add_argument("--ttl", type=int, default=3600)

    u = sub.add_parser("users")
    u.add_argument("--ws", required=True, help="IP:PORT[,IP:PORT]: users i connect to node i mod N")
    u.add_argument("--api", required=True, help="API of the node the pushes are posted to (node 0)")
    u.add_argument("--secret", required=True)
    u.add_argument("--users", type=int, default=40)
    u.add_argument("--rate", type=float, default=20.0, help="pushes per second")
    u.add_argument("--size", type=int, default=200)
    u.add_argument("--duration", type=float, required=True)
    u.add_argument("--min-life", type=float, default=5.0)
    u.add_argument("--max-life", type=float, default=40.0)
    u.add_argument("--grace", type=float, default=5.0, help="seconds a leaving client waits for pushes in flight")
    u.add_argument("--cluster", action="store_true", help="connect with since=$ (no replay of missed pushes)")
    u.add_argument("--seed", type=int, default=None)

    s = sub.add_parser("swarm")
    s.add_argument("--ws", required=True)
    s.add_argument("--api", required=True)
    s.add_argument("--secret", required=True)
    s.add_argument("--workers", type=int, default=4)
    s.add_argument("--duration", type=float, required=True)
    s.add_argument("--max-message", type=int, required=True)
    s.add_argument("--max-outbound", type=int, required=True)
    s.add_argument("--idle-timeout", type=float, required=True)
    s.add_argument("--echo-path", default="/echo")
    s.add_argument("--seed", type=int, default=None)

    m = sub.add_parser("sample")
    m.add_argument("--csv", required=True)
    m.add_argument("--start", type=float, required=True, help="unix time of the start (for elapsed_s)")
    m.add_argument("--node", action="append", required=True, help="NAME=PID@IP:PORT (API address)")

    i = sub.add_parser("idle")
    i.add_argument("--api", required=True)
    i.add_argument("--pid", type=int, required=True)
    i.add_argument("--timeout", type=float, default=20)

    f = sub.add_parser("finish")
    f.add_argument("--csv", required=True)
    f.add_argument("--bench", required=True)
    f.add_argument("--users", required=True)
    f.add_argument("--swarm", required=True)
    f.add_argument("--idle")
    f.add_argument("--events")
    f.add_argument("--round-failures")
    f.add_argument("--svg", required=True)
    f.add_argument("--svg-link", default="")
    f.add_argument("--summary", required=True)
    f.add_argument("--md", default="")
    f.add_argument("--warmup", type=float, default=60)
    f.add_argument("--rss-tolerance-pct", type=float, default=20)
    f.add_argument("--rss-slack-mib", type=float, default=32)
    f.add_argument("--fds-tolerance-pct", type=float, default=10)
    f.add_argument("--fds-slack", type=float, default=128)
    f.add_argument("--idle-fds-slack", type=int, default=8)
    f.add_argument("--expect-churn", action="store_true")
    f.add_argument("--expect-fanout", action="store_true")
    f.add_argument("--expect-users", action="store_true")
    f.add_argument("--expect-swarm", action="store_true")
    f.add_argument("--extra-failure", action="append")
    f.add_argument("--params", default="")
    f.add_argument("--args", default="")
    f.add_argument("--commit", default="")
    f.add_argument("--gateway", default="")
    f.add_argument("--load", default="")

    a = p.parse_args()
    {"token": cmd_token, "users": cmd_users, "swarm": cmd_swarm, "sample": cmd_sample, "idle": cmd_idle,
     "finish": cmd_finish}[a.cmd](a)


if __name__ == "__main__":
    main()
