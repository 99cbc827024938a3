#!/usr/bin/env python3
"""bench/idle_slope.py — the memory an idle connection really costs: the slope of the gateway's RSS between 5000
and 15000 open connections, which leaves out one-time costs (code and stack pages, allocator arenas) that a
before/after figure spreads over the connections.

Usage: bench/idle_slope.py WSGATE_BINARY   (needs RLIMIT_NOFILE >= 15100; loopback only, bounded: 15k sockets)
Prints RSS growth after 10, 5000 and 15000 connections and the slope in bytes per connection."""
import re
import socket
import subprocess
import sys
import time

binary = sys.argv[1]
gw = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"],
                      stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
addr = None
for line in gw.stderr:
    m = re.search(r"wsgate ready ws=([0-9.:]+)", line)
    if m:
        addr = m.group(1)
        break
host, port = addr.rsplit(":", 1)
port = int(port)


def rss():
    with open(f"/proc/{gw.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024


request = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
socks = []


def open_more(n):
    for _ in range(n):
        s = socket.socket()
        s.bind((f"127.0.0.{2 + len(socks) % 2}", 0))  # two source addresses: room beyond one port range
        s.connect((host, port))
        s.sendall(request)
        socks.append(s)
    for s in socks[-n:]:
        s.settimeout(5)
        if not s.recv(4096).startswith(b"HTTP/1.1 101"):
            sys.exit("upgrade refused")
    time.sleep(0.5)


try:
    base = rss()
    points = []
    for more, total in ((10, 10), (4990, 5000), (10000, 15000)):
        open_more(more)
        points.append((total, rss() - base))
finally:
    gw.terminate()
    gw.wait()
print(" ".join(f"{n} conns: +{b // 1024} KiB;" for n, b in points),
      "slope 5k..15k: %.1f B/conn" % ((points[2][1] - points[1][1]) / 10000))
