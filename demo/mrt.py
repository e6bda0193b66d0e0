"""Mr. T: an EIGER stream from eiger-zmq-sim through mr_t to a UDP client and NXmx HDF5 files

Starts ``eiger-zmq-sim`` (EIGER2 500K-sized 16-bit bslz4 frames at 200 Hz)
and ``mr_t`` with a small frame cache and HDF5 output on free loopback
ports, fetches the series with the UDP client, checks the frames against what
the simulator sent and the HDF5 files against the pixels, then plays an
aborted series with stray parts and throws bad datagrams at the server.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - filter 32008 for reading
import numpy as np

from mrt import protocol
from mrt.sim import FrameSource
from tests.support import mrt_rig as harness
from tests.support import procs

W, H, N = 1028, 512, 40


def run(report) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mrt-demo-"))
    zp, up = procs.free_port(), procs.free_port(socket.SOCK_DGRAM)
    log = tmp / "mr_t.log"
    server = harness.start_mrt(
        up, zp, "--frame-cache-limit", 8, "--hdf5-output", tmp, "--extended-pong", "-l", log
    )
    sims = []
    try:
        report.step(f"mr_t: UDP 127.0.0.1:{up}, stream tcp://127.0.0.1:{zp}, cache 8 frames")
        sims.append(
            harness.start_sim(
                zp, "--width", W, "--height", H, "--frames", N, "--rate", 200,
                "--header-detail", "all", "--header-appendix", "lysozyme_01",
            )
        )  # fmt: skip
        report.step(f"eiger-zmq-sim: {N} frames {W}x{H} uint16 bs16-lz4< at 200 Hz")
        t0 = time.monotonic()
        data = harness.fetch_series(up, extended_pong=True)
        dt = time.monotonic() - t0
        src = FrameSource(W, H, 16)
        report.step(
            f"client: series {data.series_id} {data.name!r}: {len(data.frames)} frames, "
            f"{data.nbytes} bytes in {dt:.2f} s"
        )
        report.check(
            "frames byte-identical to what the simulator sent",
            data.frames == [src.blob(k) for k in range(N)],
        )
        pixels = data.pixels()
        report.check(
            "decoded pixels match",
            bool((pixels == np.stack([src.pixels(k) for k in range(N)])).all()),
            f"{pixels.shape} {pixels.dtype}",
        )
        master = tmp / "series_1_master.h5"
        procs.wait_until(lambda: "series_1_master.h5 complete" in log.read_text())
        with h5py.File(master, "r") as f:
            d = f["entry/data/data"]
            ok = d.shape == (N, H, W) and bool((d[()] == pixels).all())
            desc = f["entry/instrument/detector/description"][()].decode()
            report.check(
                "HDF5 master + data file read back with h5py/hdf5plugin",
                ok,
                f"{master.name}: {d.shape}, detector {desc}",
            )
        sims.append(
            harness.start_sim(
                zp, "--width", 64, "--height", 64, "--frames", 20, "--abort-after", 5,
                "--stray-after-abort", "--series-id", 2, "--rate", 100,
            )
        )  # fmt: skip
        aborted = harness.fetch_series(up, series_id=2, extended_pong=True)
        report.check(
            "aborted series: premature end after 5 of 20 frames",
            aborted.premature_end == 5 and len(aborted.frames) == 5,
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for bad in (b"", b"\x02\x00", b"\x09junk", b"\x03" * 40):
                s.sendto(bad, ("127.0.0.1", up))
        procs.wait_until(lambda: log.read_text().count("stray") >= 3, 5)
        pong = protocol.decode_reply(_ping(up), extended=True)
        report.check(
            "bad datagrams and stray stream parts logged, server still answers",
            server.poll() is None and isinstance(pong, protocol.ExtendedPong),
            f"pong: series {getattr(pong, 'series_id', '?')}",
        )
    finally:
        for p in sims:
            procs.stop(p)
        procs.stop(server)
        shutil.rmtree(tmp, ignore_errors=True)


def _ping(port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"\x00", ("127.0.0.1", port))
        return s.recv(1000)
