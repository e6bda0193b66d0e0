"""Benchmark of the spec server mode (``python -m bench specsrv``).

Every figure is set against a baseline measured in the same run against a
protocol-free peer process on loopback:

* CHAN_READ ``motor/tth/position`` round trip through ``specsrv.client``:
  median and p99, and reads per second from one client (target median
  < 200 us), beside a raw 132-byte ping-pong;
* event fan-out: position events per second delivered to 10 registered
  clients while 4 motors move, against the number the update interval
  promises;
* ``var/ARR`` read of a 1,000,000-element double array: bytes per second
  divided by raw loopback throughput of the same 8 MB (target >= 0.5).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from specsrv import protocol as P
from specsrv.client import SpecConnection
from tests.support import procs

HOST = "127.0.0.1"
ARRAY_N = 1_000_000

# Protocol-free peer: byte b"p" + 131 bytes -> the same 132 bytes back;
# byte b"b" -> N bytes of payload.  Baseline for latency and throughput.
PEER = r"""
import socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port)); ls.listen(4)
blob = bytes(size)
while True:
    s, _ = ls.accept()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        buf += d
        while len(buf) >= 132:
            msg, buf = buf[:132], buf[132:]
            s.sendall(blob if msg[:1] == b"b" else msg)
    s.close()
"""

CONFIG = """\
motor tth steps=1000 low=-1000 high=1000 base=1000 slew=20000 accel=50
motor th  steps=1000 low=-1000 high=1000 base=1000 slew=20000 accel=50
motor chi steps=1000 low=-1000 high=1000 base=1000 slew=20000 accel=50
motor phi steps=1000 low=-1000 high=1000 base=1000 slew=20000 accel=50
counter sec type=timer
"""


def _exact(sock: socket.socket, view: memoryview) -> None:
    pos = 0
    while pos < len(view):
        n = sock.recv_into(view[pos:])
        if not n:
            raise ConnectionError("peer closed")
        pos += n


class RawPeer:
    """The protocol-free peer process and a connection to it."""

    def __init__(self, size: int) -> None:
        self.size = size
        port = procs.free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", PEER, str(port), str(size)])
        procs.wait_port(port, proc=self.proc)
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.back = memoryview(bytearray(132))
        self.big = memoryview(bytearray(size))

    def ping(self) -> float:
        t0 = time.perf_counter()
        self.sock.sendall(b"p" + bytes(131))
        _exact(self.sock, self.back)
        return time.perf_counter() - t0

    def bulk(self) -> float:
        """Bytes per second of one transfer of ``size`` bytes."""
        t0 = time.perf_counter()
        self.sock.sendall(b"b" + bytes(131))
        _exact(self.sock, self.big)
        return self.size / (time.perf_counter() - t0)

    def close(self) -> None:
        self.sock.close()
        procs.stop(self.proc)


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def bench_reads_sync(port: int, rounds: int) -> tuple[list[float], float]:
    """CHAN_READ from a single-threaded client built on the protocol core."""
    s = socket.create_connection((HOST, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    dec = P.Decoder()
    times = []
    t_start = time.perf_counter()
    for sn in range(1, rounds + 1):
        req = P.encode_packet(P.Packet(cmd=P.Cmd.CHAN_READ, sn=sn, name="motor/tth/position"))
        t0 = time.perf_counter()
        s.sendall(req)
        got: list = []
        while not got:
            got = P.events(dec, s.recv(65536))
        times.append(time.perf_counter() - t0)
        assert got[0].sn == sn and got[0].cmd == P.Cmd.REPLY
    rate = rounds / (time.perf_counter() - t_start)
    s.close()
    return times, rate


def bench_reads(conn: SpecConnection, rounds: int) -> tuple[list[float], float]:
    times = []
    t_start = time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        conn.prop_get("motor/tth/position")
        times.append(time.perf_counter() - t0)
    return times, rounds / (time.perf_counter() - t_start)


def bench_fanout(port: int, clients: int, update: float, seconds: float) -> tuple[float, float]:
    motors = ("tth", "th", "chi", "phi")
    counts = [0] * clients
    lock = threading.Lock()
    conns = []
    for i in range(clients):
        c = SpecConnection(f"{HOST}:{port}")
        c.connect()

        def cb(value, prop, flags, i=i):
            with lock:
                counts[i] += 1

        for m in motors:
            c.prop_watch(f"motor/{m}/position", cb)
        conns.append(c)
    time.sleep(0.3)
    with lock:
        for i in range(clients):
            counts[i] = 0
    driver = conns[0]
    # far targets: they keep moving for the whole measurement
    driver.remote_cmd("{get_angles;" + "".join(f"A[{m}]=A[{m}]+500;" for m in motors) + "move_em;}")
    time.sleep(0.3)
    with lock:
        start = sum(counts)
    t0 = time.perf_counter()
    time.sleep(seconds)
    with lock:
        got = sum(counts) - start
    dt = time.perf_counter() - t0
    driver.remote_par("abort")
    for c in conns:
        c.close()
    rate = got / dt
    promised = clients * len(motors) / update
    return rate, promised


def bench_array(conn: SpecConnection, raw: RawPeer, rounds: int) -> tuple[float, float, float]:
    """(median MB/s through specsrv, median raw MB/s, median of the per-pair ratios).

    The raw transfer and the var/ARR read alternate, so that both see the
    same load on a shared machine.
    """
    conn.prop_put("var/ARR", np.arange(ARRAY_N, dtype=np.float64))
    arr = conn.prop_get("var/ARR")
    assert arr.shape == (ARRAY_N,) and arr[-1] == ARRAY_N - 1
    ours, base, ratios = [], [], []
    for _ in range(rounds):
        b = raw.bulk()
        t0 = time.perf_counter()
        conn.prop_get("var/ARR")
        o = ARRAY_N * 8 / (time.perf_counter() - t0)
        ours.append(o)
        base.append(b)
        ratios.append(o / b)
    return statistics.median(ours), statistics.median(base), statistics.median(ratios)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench specsrv")
    p.add_argument("--rounds", type=int, default=2000, help="CHAN_READ round trips")
    p.add_argument("--seconds", type=float, default=2.0, help="fan-out measurement time")
    p.add_argument("--quick", action="store_true", help="short run")
    args, _ = p.parse_known_args(argv or [])
    if args.quick:
        args.rounds, args.seconds = 300, 1.0
    update = 0.02

    raw = RawPeer(ARRAY_N * 8)
    raw_times = [raw.ping() for _ in range(args.rounds)]
    raw_med = statistics.median(raw_times)
    raw_p99 = pct(raw_times, 0.99)
    print(
        f"baseline raw 132-byte round trip: median {raw_med * 1e6:.0f} us, "
        f"p99 {raw_p99 * 1e6:.0f} us"
    )

    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as fh:
        fh.write(CONFIG)
        cfg = fh.name
    port = procs.free_port()
    with procs.running(
        "specsrv.cli",
        "-S",
        str(port),
        "-H",
        HOST,
        "-c",
        cfg,
        "--update",
        str(update),
        wait_for=port,
    ):
        conn = SpecConnection(f"{HOST}:{port}", timeout=30)
        conn.connect()
        for _ in range(200):
            conn.prop_get("motor/tth/position")
        for label, (times, per_s) in (
            ("single-threaded client", bench_reads_sync(port, args.rounds)),
            ("specsrv.client (threaded)", bench_reads(conn, args.rounds)),
        ):
            med, p99 = statistics.median(times), pct(times, 0.99)
            verdict = "met" if med < 200e-6 else "NOT met"
            print(
                f"CHAN_READ motor/tth/position, {label}: median {med * 1e6:.0f} us "
                f"({med / raw_med:.1f} x raw), p99 {p99 * 1e6:.0f} us ({p99 / raw_p99:.1f} x raw), "
                f"{per_s:.0f} reads/s (target median < 200 us: {verdict})"
            )
        bps, raw_bps, ratio = bench_array(conn, raw, 5 if args.quick else 15)
        raw.close()
        verdict = "met" if ratio >= 0.5 else "NOT met"
        print(
            f"var/ARR read, 1e6 doubles: {bps / 1e6:.0f} MB/s, raw loopback "
            f"{raw_bps / 1e6:.0f} MB/s (alternating, medians): {ratio:.2f} x raw "
            f"(target >= 0.5: {verdict})"
        )
        conn.close()
        rate, promised = bench_fanout(port, 10, update, args.seconds)
        print(
            f"event fan-out, 10 clients x 4 moving motors: {rate:.0f} position events/s "
            f"= {rate / promised:.2f} x the {promised:.0f}/s promised by the "
            f"{update * 1000:.0f} ms update interval"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
