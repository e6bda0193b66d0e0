"""marserver and marsim: --config files, SIGHUP reload, rate-limited bad-input logs.

Real programs on 127.0.0.1 with ephemeral ports.
"""

from __future__ import annotations

import signal
import socket

import pytest

from marserver import protocol as P
from tests.support import procs
from tests.support.marserver_rig import HOST, connect, recv_exact

pytestmark = pytest.mark.timeout(90)

HW = P.MAR345


def count(path, text: str) -> int:
    try:
        return path.read_text().count(text)
    except FileNotFoundError:
        return 0


def hup_and_wait(proc, logf) -> None:
    def verdicts() -> int:
        return count(logf, "configuration reloaded") + count(logf, "configuration rejected")

    before = verdicts()
    proc.send_signal(signal.SIGHUP)
    assert procs.wait_until(lambda: verdicts() > before), logf.read_text()


def is_open(sock: socket.socket, wait: float = 0.3) -> bool:
    """True if the server kept the connection (no EOF within ``wait`` s)."""
    sock.settimeout(wait)
    try:
        return sock.recv(1 << 16) != b""
    except TimeoutError:
        return True
    except OSError:
        return False


def is_refused(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1 << 16) == b""
    except OSError:
        return True


def start_marserver(tmp_path, *args: str):
    hw_base = procs.free_port_block(4)  # nothing listens there: no hardware needed
    cbase = procs.free_port_block(4)
    logf = tmp_path / "marserver.log"
    proc = procs.start(
        "marserver",
        "-mar",
        HOST,
        str(hw_base),
        "-a",
        str(cbase - hw_base),
        "--listen",
        HOST,
        "--logfile",
        str(logf),
        *args,
    )
    procs.wait_port(cbase + int(P.Port.MESS), proc=proc)
    # let wait_port's probe connection leave the client table
    assert procs.wait_until(lambda: count(logf, "disconnected") >= 1)
    return proc, cbase, logf


def test_marserver_sighup_applies_max_clients_and_keeps_old_on_bad_file(tmp_path):
    conf = tmp_path / "marserver.conf"
    conf.write_text("max-clients = 2\n")
    proc, cbase, logf = start_marserver(tmp_path, "--config", str(conf))
    stat = cbase + int(P.Port.STAT)
    socks = []
    try:
        socks = [connect(stat) for _ in range(2)]
        assert procs.wait_until(lambda: count(logf, "(2 clients)") == 1)
        third = connect(stat)
        assert is_refused(third), "the file's limit of 2 is in force"
        third.close()
        conf.write_text("max-clients = 3\n")
        hup_and_wait(proc, logf)
        assert count(logf, "applied max-clients") == 1
        socks.append(connect(stat))
        assert is_open(socks[-1]), "the new limit of 3 is applied"
        conf.write_text("max-clients = none\n")
        hup_and_wait(proc, logf)
        assert count(logf, "configuration rejected, keeping the old one") == 1
        fourth = connect(stat)
        assert is_refused(fourth), "the limit of 3 stays after a bad file"
        fourth.close()
        # a restart-only option is named, not applied
        conf.write_text("max-clients = 3\nswap = true\n")
        hup_and_wait(proc, logf)
        assert "need a restart: swap" in logf.read_text()
    finally:
        for s in socks:
            s.close()
        assert procs.stop(proc) == 0


def test_marserver_junk_on_the_command_port_keeps_the_log_small(tmp_path):
    proc, cbase, logf = start_marserver(tmp_path)
    try:
        size0 = logf.stat().st_size
        c = connect(cbase + int(P.Port.COMM))
        bogus = b"IPS\x00" + (999).to_bytes(4, "big") + bytes(52)
        for _ in range(200):
            c.sendall(bogus + b"\xa5" * 1000)
        c.close()
        assert procs.wait_until(lambda: count(logf, "bytes of garbage rejected") == 1)
        grown = logf.stat().st_size - size0
        assert count(logf, "rejected (") <= 5
        assert grown < 3000, logf.read_text()[-2000:]
    finally:
        assert procs.stop(proc) == 0


def _scan_started(comm: socket.socket, mess: socket.socket) -> str:
    """Send SCAN; return the text of marsim's "SCAN_DATA Started" message."""
    comm.sendall(P.encode_command(HW, P.Command(P.Cmd.SCAN)))
    for _ in range(1000):  # after junk, one "unknown command" message per junk record
        text = P.decode_message(recv_exact(mess, 84, timeout=10))
        if "SCAN_DATA" in text and "Started" in text:
            return text
    raise AssertionError("no SCAN_DATA Started message")


def test_marsim_sighup_applies_scan_blocks(tmp_path):
    base = procs.free_port_block(4)
    conf = tmp_path / "marsim.conf"
    logf = tmp_path / "marsim.log"
    conf.write_text("scan-blocks = 4\nscan-rate = 1000\n")
    proc = procs.start(
        "marserver.sim", "-mar", "-p", str(base), "--config", str(conf), "--logfile", str(logf)
    )
    try:
        procs.wait_port(base + 3, proc=proc)
        mess = connect(base + int(P.Port.MESS))
        comm = connect(base + int(P.Port.COMM))
        me = f"127.0.0.1:{mess.getsockname()[1]}"
        # our MESSAGE connection, not wait_port's probe, owns the port now
        assert procs.wait_until(lambda: count(logf, f"client {me}") >= 1)
        assert _scan_started(comm, mess).endswith("Started: 4 blocks")
        conf.write_text("scan-blocks = 7\nscan-rate = 1000\n")
        hup_and_wait(proc, logf)
        assert count(logf, "applied scan-blocks") == 1
        assert _scan_started(comm, mess).endswith("Started: 7 blocks")
        conf.write_text("scan-blocks = -1\n")
        hup_and_wait(proc, logf)
        assert count(logf, "configuration rejected") == 1
        assert _scan_started(comm, mess).endswith("Started: 7 blocks")
        # junk on the COMMAND port: answered, but logged only a few times
        size0 = logf.stat().st_size
        comm.sendall(b"\xff" * 60 * 500)
        assert procs.wait_until(lambda: count(logf, "unknown command code") >= 1)
        assert _scan_started(comm, mess).endswith("Started: 7 blocks")
        assert count(logf, "unknown command code") <= 5
        assert logf.stat().st_size - size0 < 3000
        comm.close()
        mess.close()
    finally:
        assert procs.stop(proc) == 0


def test_shipped_example_option_files_parse():
    """contrib/config/*.conf are valid option files of their programs."""
    from pathlib import Path

    from common.options import parse_quietly
    from marserver import cli as mcli
    from marserver import sim
    from specsrv.hdw.cli import build_parser
    from specsrv.hdw.img import SimImage
    from specsrv.hdw.mca import SimMca

    conf = Path(__file__).resolve().parent.parent / "contrib" / "config"
    parsers = {
        "marserver": mcli.build_parser(),
        "marsim": sim.build_parser(),
        "mca_server": build_parser(SimMca, "mca_server"),
        "img_server": build_parser(SimImage, "img_server"),
    }
    for prog, parser in parsers.items():
        args = parse_quietly(parser, ["--config", str(conf / f"{prog}.conf")])
        assert args.config_file == str(conf / f"{prog}.conf")
        if prog == "marserver":
            assert args.hardware == "mar345" and args.max_clients == 10
        if prog in ("mca_server", "img_server"):
            assert args.max_connections == 8 and args.idle_timeout == 0
