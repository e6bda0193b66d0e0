"""camerad + archonsim benchmark: full-frame exposure, blocking-port round trip, NB rate.

Every figure is a ratio against a baseline measured in the same run:

* a 4200 x 4200 16-bit exposure (exptime 0, simulated readout 1 ms) from
  ``expose`` to the FITS file complete, against moving the same bytes over
  raw loopback TCP plus writing and fsyncing them to the same disk
  (target <= 1.5);
* ``echo`` round trip on the blocking port against a raw Python TCP echo
  on loopback (target: median < 0.5 ms);
* non-blocking port commands per second (connect, command, reply, close)
  against the same pattern on a raw TCP server (target >= 0.9).

``python -m bench archon [--quick]``
"""

from __future__ import annotations

import os
import socket
import socketserver
import statistics
import sys
import tempfile
import threading
import time

from tests.support.archon_rig import Rig

FRAME = 4200 * 4200 * 2


def _percentile(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


# -- baselines ---------------------------------------------------------------------


def baseline_transfer_write(nbytes: int, directory: str) -> float:
    """Loopback TCP transfer of nbytes plus write + fsync of them; seconds."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    payload = os.urandom(1 << 20) * (nbytes // (1 << 20) + 1)
    payload = memoryview(payload)[:nbytes]

    def sender() -> None:
        c, _ = srv.accept()
        with c:
            c.recv(16)
            c.sendall(payload)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    buf = bytearray(nbytes)
    view = memoryview(buf)
    with socket.create_connection(srv.getsockname()) as s:
        t0 = time.perf_counter()
        s.sendall(b"go\n")
        got = 0
        while got < nbytes:
            n = s.recv_into(view[got:])
            if not n:
                break
            got += n
        path = os.path.join(directory, "baseline.bin")
        with open(path, "wb") as fh:
            fh.write(buf)
            fh.flush()
            os.fsync(fh.fileno())
        dt = time.perf_counter() - t0
    os.unlink(path)
    t.join(2)
    srv.close()
    return dt


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.rstrip(b"\n") + b" DONE\n")
            self.wfile.flush()
            if self.server.one_shot:
                return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    one_shot = False


def _roundtrips(port: int, n: int) -> list[float]:
    out = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        for i in range(n):
            t0 = time.perf_counter()
            s.sendall(b"echo x%d\n" % i)
            f.readline()
            out.append(time.perf_counter() - t0)
    return out


def _oneshot_rate(port: int, seconds: float, command: bytes) -> float:
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(command)
            while s.recv(4096):
                pass
        n += 1
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    frames = 2 if quick else 5
    echo_n = 500 if quick else 2000
    rate_s = 1.0 if quick else 2.0
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-archon-") as tmp:
        # baseline servers
        echo = _Server(("127.0.0.1", 0), _Echo)
        oneshot = _Server(("127.0.0.1", 0), _Echo)
        oneshot.one_shot = True
        for srv in (echo, oneshot):
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        # the simulated readout takes ~1 ms; camerad allows 5.5 s for it
        rig = Rig(tmp, readout_ms=5000, sim_readout_ms=1)
        rig.start(listen=False)
        try:
            for cmd in (
                "longerror true",
                "open",
                "load",
                "geometry 4200 4200",
                "exptime 0",
                "autodir no",
            ):
                rig.blk(cmd)
            warm = rig.blk("expose", timeout=120)  # the simulator builds its image once
            if warm != "DONE":
                print(f"expose failed: {warm}")
                return 1
            for f in rig.fits_files():
                f.unlink()
            walls, bases = [], []
            for _ in range(frames):
                bases.append(baseline_transfer_write(FRAME, str(rig.imdir)))
                t0 = time.perf_counter()
                reply = rig.blk("expose", timeout=120)
                walls.append(time.perf_counter() - t0)
                if reply != "DONE":
                    print(f"expose failed: {reply}")
                    return 1
                for f in rig.fits_files():
                    f.unlink()
            wall, base = statistics.median(walls), statistics.median(bases)
            ratio = wall / base
            ok &= ratio <= 1.5
            print(
                f"full frame 4200x4200x16 bit: expose->FITS {wall * 1000:.0f} ms, "
                f"baseline (loopback + write + fsync of {FRAME / 1e6:.1f} MB) "
                f"{base * 1000:.0f} ms, ratio {ratio:.2f} (target <= 1.5: "
                f"{'met' if ratio <= 1.5 else 'NOT met'})"
            )
            rig.blk("geometry 256 256")
            rig.close_blk()
            time.sleep(0.2)  # let camerad's handler thread finish
            cam = _roundtrips(rig.blkport, echo_n)
            raw = _roundtrips(echo.server_address[1], echo_n)
            med, rawmed = statistics.median(cam), statistics.median(raw)
            ok &= med < 0.0005
            print(
                f"blocking-port echo round trip: median {med * 1e3:.3f} ms, "
                f"p99 {_percentile(cam, 0.99) * 1e3:.3f} ms; raw TCP echo median "
                f"{rawmed * 1e3:.3f} ms; ratio {med / rawmed:.2f} (target median < 0.5 ms: "
                f"{'met' if med < 0.0005 else 'NOT met'})"
            )
            nb = _oneshot_rate(rig.nbport, rate_s, b"echo x\n")
            rawnb = _oneshot_rate(oneshot.server_address[1], rate_s, b"echo x\n")
            nbratio = nb / rawnb
            ok &= nbratio >= 0.9
            print(
                f"non-blocking port: {nb:.0f} commands/s (connect, command, reply, close); "
                f"raw TCP one-shot server {rawnb:.0f}/s; ratio {nbratio:.2f} (target >= 0.9: "
                f"{'met' if nbratio >= 0.9 else 'NOT met'})"
            )
        finally:
            rig.stop()
            echo.shutdown()
            oneshot.shutdown()
            echo.server_close()
            oneshot.server_close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
