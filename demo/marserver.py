"""marserver relaying a simulated mar345 (marsim) to several clients at once

A data-collection program, a status monitor and a message logger share one
simulated scanner through marserver: commands from two programs, status to
three monitors, scan data to two readers, then a hardware restart that no
client notices except for a pause.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from marserver import protocol as P
from marserver.client import connect, recv_exact, recv_for, whole
from tests.support import procs

HW = P.MAR345


def _connect(port: int) -> socket.socket:
    return connect(port, procs.LOOPBACK)


def _recv_exact(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    try:
        return recv_exact(sock, n, timeout)
    except (TimeoutError, ConnectionError):
        return b""


def _wait_log(path: Path, needle: str, count: int = 1, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.read_text(errors="replace").count(needle) >= count:
            return True
        time.sleep(0.05)
    return False


def run(report) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="marserver-demo-"))
    logpath = tmp / "marserver.log"
    base = procs.free_port_block(4)
    cbase = procs.free_port_block(4)
    started: list[subprocess.Popen] = []
    socks: list[socket.socket] = []

    def sim() -> subprocess.Popen:
        p = procs.start("marserver.sim", "-mar", "-p", str(base), "-r", "20", "--scan-blocks", "16")
        started.append(p)
        return p

    try:
        simproc = sim()
        procs.wait_port(base + 3, proc=simproc)
        report.step(f"marsim: a mar345 on 127.0.0.1:{base}-{base + 3}, 20 status records/s")
        logf = open(logpath, "wb")  # closed with the process below
        relay = procs.start(
            "marserver",
            "-mar",
            "127.0.0.1",
            str(base),
            "-a",
            str(cbase - base),
            "--listen",
            "127.0.0.1",
            "--backoff",
            "1",
            "-v",
            stderr=logf,
        )
        started.append(relay)
        procs.wait_port(cbase + 3, proc=relay)
        report.step(
            f"marserver: clients on 127.0.0.1:{cbase}-{cbase + 3} (hardware port + {cbase - base})"
        )
        report.check(
            "marserver connected all four hardware ports", _wait_log(logpath, "connected (COMMAND")
        )

        monitors = [_connect(cbase + 1) for _ in range(3)]
        loggers = [_connect(cbase + 3) for _ in range(2)]
        readers = [_connect(cbase + 2) for _ in range(2)]
        collect = _connect(cbase)
        second = _connect(cbase)
        socks += monitors + loggers + readers + [collect, second]
        report.step("3 status monitors, 2 message loggers, 2 data readers, 2 command clients")
        for s in socks:  # marserver has taken each of them on
            _wait_log(logpath, f"client 127.0.0.1:{s.getsockname()[1]} connected (")

        data = [recv_for(m, 1.0) for m in monitors]
        counts = [[P.status_counter(HW, r) for r in whole(d, 404)] for d in data]
        common = set(counts[0]) & set(counts[1]) & set(counts[2])
        report.check(
            "every monitor gets the same STATUS records, in step",
            len(common) >= 10 and all(c == list(range(c[0], c[0] + len(c))) for c in counts),
            f"{len(common)} records seen by all three",
        )

        # SET READ from two different programs; replies reach both loggers
        def setread(sock, param):
            sock.sendall(P.encode_command(HW, P.Command(P.Cmd.SET, 0, (param, 0))))

        setread(collect, 97)
        setread(second, 278)
        msgs = [[P.decode_message(r) for r in whole(recv_for(g, 1.0), 84)] for g in loggers]
        params = {P.parse_setparam(P.encode_message(m)) for m in msgs[0]} - {None}
        report.step(f"SET READ 97 and 278 from two command clients -> {sorted(params)}")
        report.check(
            "both loggers receive both SETPARAM replies, identical",
            msgs[0] == msgs[1] and {(97, 3020), (278, 240)} <= params,
        )

        collect.sendall(P.encode_command(HW, P.Command(P.Cmd.SCAN, 1)))
        blocks = [_recv_exact(r, 16 * 16386) for r in readers]
        nums = [P.data_block_number(b) for b in whole(blocks[0], 16386)]
        report.check(
            "SCAN: both data readers get the same 16 DATA blocks, numbered 1..16",
            blocks[0] == blocks[1] and nums == list(range(1, 17)),
            f"{len(blocks[0])} bytes each",
        )

        collect.sendall(
            P.encode_command(HW, P.Command(P.Cmd.MOVE, P.Axis.OMEGA, (P.MoveKind.ABS, 800, 400)))
        )
        wa, wt, _ = P.stepper_words(P.Axis.OMEGA)
        mon = _connect(cbase + 1)  # a fresh monitor joins mid-stream
        socks.append(mon)
        reached = False
        deadline = time.monotonic() + 5
        while not reached and time.monotonic() < deadline:
            for r in whole(_recv_exact(mon, 404 * 4), 404):
                s = P.decode_status(HW, r)
                reached |= s.word(wa) == s.word(wt) == 800
        report.check("MOVE OMEGA 800: a monitor joining mid-stream sees the motor arrive", reached)
        report.check(
            "each command is logged with the client address and a decoded summary",
            _wait_log(logpath, "COMMAND from 127.0.0.1:")
            and "MOVE mode=2(OMEGA) ABS steps=800" in logpath.read_text(),
        )

        report.step("the scanner is switched off (marsim stopped) ...")
        procs.stop(simproc)
        _wait_log(logpath, "lost after")
        collect.sendall(P.encode_command(HW, P.Command(P.Cmd.SHUTTER, 1)))
        report.check(
            "a command sent meanwhile is dropped with a log line",
            _wait_log(logpath, "hardware not connected, command from"),
        )
        for m in monitors:
            recv_for(m, 0.2)
        simproc = sim()
        report.step("... and switched on again")
        again = [_recv_exact(m, 404 * 3) for m in monitors]
        report.check(
            "after the restart the same client connections get STATUS again",
            all(len(a) == 404 * 3 for a in again) and relay.poll() is None,
        )
    finally:
        for s in socks:
            s.close()
        for p in reversed(started):
            procs.stop(p)
        shutil.rmtree(tmp, ignore_errors=True)
    report.check("marserver stopped cleanly", relay.returncode == 0, f"exit {relay.returncode}")
