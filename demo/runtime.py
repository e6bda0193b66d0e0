"""the shared runtime: a line server on the common base, driven by sendsockcmd"""

from __future__ import annotations

import logging

from common.server import LineHandler, ThreadedTCPServer
from tests.support import procs


class _EchoHandler(LineHandler):
    def handle(self) -> None:
        from common.framing import OverlongLine
        from common.server import ConnectionClosed

        while True:
            try:
                line = self.reader.read_line()
            except (ConnectionClosed, TimeoutError):
                return
            if isinstance(line, OverlongLine):
                self.send_line("ERROR line too long")
                continue
            self.send_line(f"{line.decode('ascii', 'replace')} DONE")


def run(report) -> None:
    logging.getLogger("common").setLevel(logging.ERROR)
    srv = ThreadedTCPServer((procs.LOOPBACK, 0), _EchoHandler, name="demo-echo", max_connections=2)
    srv.start()
    try:
        report.step(f"line server on 127.0.0.1:{srv.port} (limit 2 clients)")
        res = procs.run(
            "common.sendsockcmd",
            "-h",
            "127.0.0.1",
            "-p",
            str(srv.port),
            "exptime 2000",
            "-t",
            "2000",
        )
        out = res.stdout.decode().strip()
        report.step(f'sendsockcmd "exptime 2000" -> {out!r} (exit {res.returncode})')
        report.check(
            "sendsockcmd gets the DONE reply", res.returncode == 0 and out == "exptime 2000 DONE"
        )
        dead = procs.free_port()
        res = procs.run("common.sendsockcmd", "-p", str(dead), "status", "-t", "1000")
        report.check(
            "sendsockcmd to a closed port exits non-zero with ERROR",
            res.returncode == 1 and res.stdout.startswith(b"ERROR"),
            res.stdout.decode().strip(),
        )
    finally:
        left = srv.stop()
    report.check("server stops with no client thread left", left == 0)
