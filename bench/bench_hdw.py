"""Benchmark of the spec server-hardware servers (``python -m bench hdw``).

* image ``read`` of a 4096 x 4096 ``ulong`` array through the protocol
  (request, reply line, 64 MiB of data, ``xfer_done``), in bytes per second,
  divided by raw loopback throughput of the same size between two processes
  measured in the same run (target >= 0.7);
* ``get_status`` round trip: median and p99, and requests per second from one
  client (target median < 200 us), next to a raw one-line echo round trip.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from specsrv.hdw.client import Client
from tests.support import procs

LOOP = "127.0.0.1"
SIDE = 4096

# a raw sender / echo process: the baseline, with no protocol at all
RAW_PEER = r"""
import socket, sys
mode, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(1)
payload = memoryview(bytearray(b"\x5a" * size))
while True:
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = conn.makefile("rb")
    for line in f:
        if mode == "send":
            conn.sendall(payload)
        else:
            conn.sendall(line)
    conn.close()
"""


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 22))
        if not k:
            raise ConnectionError("raw peer closed")
        got += k


def raw_peer(mode: str, size: int):
    port = procs.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", RAW_PEER, mode, str(port), str(size)], env=procs.env()
    )
    procs.wait_port(port, proc=proc)
    return proc, port


class RawReceiver:
    """Client of the raw sender: one 'go' line, ``size`` bytes back."""

    def __init__(self, port: int, size: int) -> None:
        self.sock = socket.create_connection((LOOP, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.view = memoryview(np.empty(size, dtype=np.uint8))

    def once(self) -> float:
        t0 = time.perf_counter()
        self.sock.sendall(b"go\n")
        _recv_into(self.sock, self.view)
        return time.perf_counter() - t0


class RawEcho:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOP, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def once(self) -> float:
        t0 = time.perf_counter()
        self.sock.sendall(b"=: 1 get_status\n")
        self.file.readline()
        return time.perf_counter() - t0


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench hdw")
    ap.add_argument("--repeats", type=int, default=8, help="image reads per measurement")
    ap.add_argument("--requests", type=int, default=3000, help="get_status round trips")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    args = ap.parse_args(argv or [])
    if args.quick:
        args.repeats, args.requests = 2, 500
    size = SIDE * SIDE * 4

    port = procs.free_port()
    sender, sender_port = raw_peer("send", size)
    echo, echo_port = raw_peer("echo", 0)
    raw, proto, raw_rt, rtts = [], [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server_args = ("-p", port, "--bind", LOOP, "-L", f"{tmp}/img.lock")
            with procs.running(
                "specsrv.hdw.img", *server_args, "-r", SIDE, "-c", SIDE, "-t", "ulong",
                wait_for=port, timeout=30,
            ):  # fmt: skip
                with Client(LOOP, port, timeout=60) as c:
                    c.hello("img_server")
                    c.config()
                    c.run(0.05, 2)
                    c.wait(60)
                    first = c.read_image(0, SIDE - 1, 0, SIDE - 1)  # warm-up, and a check
                    assert first.shape == (SIDE, SIDE) and first.dtype == np.uint32
                    rr, re_ = RawReceiver(sender_port, size), RawEcho(echo_port)
                    rr.once()
                    # alternate baseline and protocol so that both see the same load
                    for _ in range(args.repeats):
                        raw.append(rr.once())
                        proto.append(timed(lambda: c.read_image(0, SIDE - 1, 0, SIDE - 1)))
                    for _ in range(200):  # warm-up
                        c.status(), re_.once()
                    block = 100
                    t_proto = 0.0
                    for _ in range(max(1, args.requests // block)):
                        for _ in range(block):
                            raw_rt.append(re_.once())
                        t_block = time.perf_counter()
                        for _ in range(block):
                            rtts.append(timed(c.status))
                        t_proto += time.perf_counter() - t_block
                    rate = len(rtts) / t_proto
    finally:
        procs.stop(sender)
        procs.stop(echo)

    raw_bps = size / min(raw)
    proto_bps = size / min(proto)
    med, p99 = statistics.median(rtts), pct(rtts, 0.99)
    raw_med = statistics.median(raw_rt)
    print("(baseline and protocol measured alternately in this run)")
    print(f"image read {SIDE}x{SIDE} ulong ({size / 2**20:.0f} MiB), best of {args.repeats}:")
    print(f"  raw loopback           {raw_bps / 2**20:8.0f} MiB/s  (baseline)")
    ratio = proto_bps / raw_bps
    print(f"  through the protocol   {proto_bps / 2**20:8.0f} MiB/s  ratio {ratio:.2f}"
          f"  (target >= 0.7: {'met' if ratio >= 0.7 else 'NOT met'})")  # fmt: skip
    med_ratio = statistics.median(raw) / statistics.median(proto)
    print(f"  median of the {args.repeats} reads: ratio {med_ratio:.2f}")
    print(f"get_status round trip, {args.requests} requests, one client:")
    print(f"  raw one-line echo      median {raw_med * 1e6:7.1f} us  (baseline)")
    print(f"  get_status             median {med * 1e6:7.1f} us  ratio {med / raw_med:.2f}"
          f"  (target < 200 us: {'met' if med < 200e-6 else 'NOT met'})")  # fmt: skip
    print(
        f"                         p99    {p99 * 1e6:7.1f} us  ratio {p99 / pct(raw_rt, 0.99):.2f}"
    )
    print(f"  requests per second    {rate:9.0f}  ratio {rate * raw_med:.2f} of the raw echo rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
