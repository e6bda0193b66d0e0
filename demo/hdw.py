"""spec server hardware: a simulated MCA and 2-D detector driven as spec drives them.

Starts ``mca_server`` and ``img_server`` as real processes on free loopback
ports, then plays spec's part: hello, config, clear, run with a preset,
polling, reading spectra per element and image regions of interest, writing
channels, a bad request, and ``goodbye 1`` to a server started with ``-Q``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from specsrv.hdw import protocol as P
from specsrv.hdw.client import Client, HdwError
from tests.support import procs

LOOP = "127.0.0.1"


def _mca(report, port: int, tmp: Path) -> None:
    args = ("-p", port, "--bind", LOOP, "-L", tmp / "mca.lock", "-n", "4096", "-t", "ulong")
    with procs.running("specsrv.hdw.mca", *args, "-Q", wait_for=port) as proc:
        report.step(f"mca_server -n 4096 -t ulong -Q on port {port}")
        with Client(LOOP, port) as c:
            hello = c.hello("mca_server")
            report.check(
                "hello mca_server",
                hello.pid == proc.pid,
                P.hello_text(hello.host, hello.pid, hello.description),
            )
            cfg = c.config("0")
            report.check("config", cfg == P.Config("ulong", (4096,)), cfg.text())
            try:
                c.hello("img_server")
                report.check("wrong server name refused", False)
            except HdwError as exc:
                report.check("wrong server name refused", True, exc.text)
            c.clear()
            c.run(1.0, 2)  # tcount(1) with soft_preset
            busy = c.status()
            c.wait(10)
            report.check(
                "run 1 2: busy, then idle after the preset",
                busy == 1 and c.status() == 0,
                f"real_time {c.get('real_time')} s",
            )
            spectra = [c.read(0, 4095, addr=f"0.{e}") for e in range(4)]
            totals = [int(s.sum()) for s in spectra]
            report.check(
                "read a=0.0 .. a=0.3: about 20000 counts each",
                all(15000 < t < 25000 for t in totals),
                f"totals {totals}",
            )
            peak = int(np.argmax(spectra[0]))
            report.check(
                "the strongest peak where the simulator puts it",
                abs(peak - 655) < 40,
                f"channel {peak}",
            )
            c.write(100, 102, [7, 8, 9], addr="0.2")
            back = c.read(99, 103, addr="0.2").tolist()
            report.check("write a=0.2 100 102, read back", back[1:4] == [7, 8, 9], str(back))
            try:
                c.read(0, 4096)
                report.check("read past the last channel is an error", False)
            except HdwError as exc:
                report.check("read past the last channel is an error", True, exc.text)
            c.goodbye(1)
        report.check("goodbye 1 with -Q: the server exits", proc.wait(10) == 0)


def _img(report, port: int, tmp: Path) -> None:
    args = ("-p", port, "--bind", LOOP, "-L", tmp / "img.lock", "-r", "1024", "-c", "1024")
    with procs.running("specsrv.hdw.img", *args, wait_for=port):
        report.step(f"img_server -r 1024 -c 1024 on port {port} (ushort)")
        with Client(LOOP, port) as c:
            c.hello("img_server")
            report.check("config", c.config().text() == "ushort 1024 1024", c.config().text())
            c.clear()
            c.run(0.5, 4)
            c.wait(10)
            img = c.read_image(0, 1023, 0, 1023)
            report.check(
                "0.5 s exposure read as 1024 x 1024 ushort",
                img.shape == (1024, 1024) and img.dtype == np.uint16,
                f"sum {int(img.sum())}, max {int(img.max())}",
            )
            roi = c.read_image(0, 64, 0, 127)
            report.check(
                "ROI rows 65: 0 -> 64, cols 128: 0 -> 127",
                np.array_equal(roi, img[:65, :128]),
                f"{roi.size} points",
            )
            with Client(LOOP, port, byte_order=">") as big:
                same = np.array_equal(big.read_image(500, 520, 500, 520), img[500:521, 500:521])
            report.check("a big-endian client gets the same pixels", same)
            c.exit()
        report.step("exit: server stopped")


def run(report) -> None:
    with tempfile.TemporaryDirectory(prefix="hdw-demo-") as d:
        tmp = Path(d)
        _mca(report, procs.free_port(), tmp)
        _img(report, procs.free_port(), tmp)
