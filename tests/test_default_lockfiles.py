"""Daemons started without a lock file option get one that the kill option finds."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from common.lock import pid_alive, read_pid
from tests.support import procs

pytestmark = pytest.mark.timeout(90)


def _marsim(tmp_path):
    port = procs.free_port_block(4)
    args = ["-mar", "-p", str(port), "--logfile", str(tmp_path / "log")]
    return "marserver.sim", args, ["--daemon"], ["--kill"], Path(f"/tmp/marsim-{port}.lock"), port


def _specsrv(tmp_path):
    port = procs.free_port()
    name = f"locktest{os.getpid()}"
    args = ["-S", str(port), "-H", "127.0.0.1", "-N", name, "-l", str(tmp_path / "log")]
    return "specsrv.cli", args, ["-d"], ["-k"], Path(f"/tmp/specsrv-{name}.lock"), port


def _mr_t(tmp_path):
    udp, status = procs.free_port(socket.SOCK_DGRAM), procs.free_port()
    args = [
        "--eiger-zmq-host-and-port",
        f"tcp://127.0.0.1:{procs.free_port()}",
        "--udp-host",
        "127.0.0.1",
        "--udp-port",
        str(udp),
        "--status-port",
        str(status),
        "-l",
        str(tmp_path / "log"),
    ]
    return "mrt.cli", args, ["-d"], ["-k"], Path(f"/tmp/mr_t-{udp}.lock"), status


@pytest.mark.parametrize("setup", [_marsim, _specsrv, _mr_t], ids=["marsim", "specsrv", "mr_t"])
def test_daemon_default_lock_file_and_kill(tmp_path, setup):
    module, args, daemon, kill, lock, port = setup(tmp_path)
    lock.unlink(missing_ok=True)
    pid = None
    try:
        res = procs.run(module, *args, *daemon, timeout=30)
        assert res.returncode == 0, res.stderr
        assert procs.wait_until(lambda: read_pid(lock) is not None)
        pid = read_pid(lock)
        procs.wait_port(port)
        assert pid_alive(pid)
        again = procs.run(module, *args, *daemon, timeout=30)
        assert again.returncode == 1 and b"already running" in again.stderr
        stop = procs.run(module, *args, *kill, timeout=30)
        assert stop.returncode == 0, stop.stderr
        assert procs.wait_until(lambda: not pid_alive(pid), 5)
        assert not lock.exists()
    finally:
        for leftover in {pid, read_pid(lock)} - {None}:
            if pid_alive(leftover):
                os.kill(leftover, signal.SIGKILL)
        lock.unlink(missing_ok=True)
