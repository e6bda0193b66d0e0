"""Lock file, -k, -d, -Q, exit, verbosity: the server life cycle of the framework."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from common.lock import pid_alive, read_pid
from specsrv.hdw import protocol as P
from specsrv.hdw.client import Client
from tests.support import procs
from tests.support.hdw_helpers import LOOP, Raw

pytestmark = pytest.mark.timeout(90)

MCA = "specsrv.hdw.mca"
IMG = "specsrv.hdw.img"


def test_default_lock_file_second_instance_and_kill(port, spawn):
    lock = f"/tmp/mca_server-{port}.lock"
    p = spawn(MCA, "-p", port, "--bind", LOOP, stderr=subprocess.PIPE)
    try:
        procs.wait_port(port, proc=p)
        assert read_pid(lock) == p.pid
        with Client(LOOP, port) as c:
            assert c.hello("mca_server").pid == p.pid
        second = procs.run(MCA, "-p", port, "--bind", LOOP)
        assert second.returncode == 1
        assert f"already running with PID {p.pid}" in second.stderr.decode()
        assert read_pid(lock) == p.pid
        kill = procs.run(MCA, "-p", port, "-k")
        assert kill.returncode == 0, kill.stderr
        assert p.wait(10) == 0
        assert not os.path.exists(lock)
    finally:
        if p.poll() is None:
            procs.stop(p)
        if os.path.exists(lock) and read_pid(lock) == p.pid:
            os.unlink(lock)


def test_port_in_use_refused(tmp_path):
    with socket.socket() as busy:
        busy.bind((LOOP, 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = procs.run(IMG, "-p", port, "--bind", LOOP, "-L", str(tmp_path / "l"))
        assert res.returncode == 1 and b"cannot listen" in res.stderr
        assert not (tmp_path / "l").exists()


def test_daemon_log_verbosity_and_kill(tmp_path, port):
    lock, logf = tmp_path / "img.lock", tmp_path / "img.log"
    args = ("-p", port, "--bind", LOOP, "-L", str(lock), "-l", str(logf))
    res = procs.run(IMG, *args, "-d", "-v", "2", "-r", "32", "-c", "32", timeout=20)
    assert res.returncode == 0, res.stderr
    assert procs.wait_until(lambda: read_pid(lock) is not None)
    pid = read_pid(lock)
    try:
        procs.wait_port(port)
        with Client(LOOP, port) as c:
            assert c.hello("img_server").pid == pid  # the daemon's PID, not the parent's
            assert c.config().text() == "ushort 32 32"
        assert procs.wait_until(lambda: "request 2 config" in logf.read_text())
        log = logf.read_text()
        assert "img_server started" in log and "daemon" in log
        kill = procs.run(IMG, *args, "-k", timeout=20)
        assert kill.returncode == 0, kill.stderr
        assert procs.wait_until(lambda: not pid_alive(pid))
        assert not lock.exists()
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_no_v_logs_only_problems(tmp_path, port, spawn):
    logf = tmp_path / "mca.log"
    p = spawn(MCA, "-p", port, "--bind", LOOP, "-L", str(tmp_path / "l"), "-l", str(logf))
    procs.wait_port(port, proc=p)
    with Raw(port) as raw:
        raw.send(b"not a request\n")
        assert raw.ask(1, "get_status").text == "0"
    procs.stop(p)
    log = logf.read_text()
    assert "ignored not a request" in log  # warnings always
    assert "started" not in log and "request 1" not in log


def test_quit_on_goodbye_1(tmp_path, port, spawn):
    p = spawn(MCA, "-p", port, "--bind", LOOP, "-L", str(tmp_path / "l"), "-Q")
    procs.wait_port(port, proc=p)
    with Client(LOOP, port) as c:
        c.hello("mca_server")
        c.goodbye(0)  # a reconfig: stay
    with Client(LOOP, port) as c:
        assert c.status() == 0
        c.goodbye(1)  # spec exits: with -Q, so do we
    assert p.wait(10) == 0
    assert not (tmp_path / "l").exists()


def test_exit_command(tmp_path, port, spawn):
    p = spawn(IMG, "-p", port, "--bind", LOOP, "-L", str(tmp_path / "l"), "-r", "8", "-c", "8")
    procs.wait_port(port, proc=p)
    with Raw(port) as raw:
        assert raw.ask(1, "exit") == P.Reply(1, "")
        assert raw.reader.read_exact(0) == b"" and raw.sock.recv(10) == b""  # then it closes
    assert p.wait(10) == 0
    assert not (tmp_path / "l").exists()


def test_daemon_without_l_logs_to_tmp_name_port_log(tmp_path, port):
    """The seed: a daemon with no -l logs to /tmp/NAME-PORT.log (opened to append)."""
    logf = f"/tmp/mca_server-{port}.log"
    lock = tmp_path / "mca.lock"
    with open(logf, "w") as f:
        f.write("earlier line\n")
    pid = None
    try:
        res = procs.run(MCA, "-p", port, "--bind", LOOP, "-L", str(lock), "-d", "-v", "1",
                        timeout=20)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert procs.wait_until(lambda: read_pid(lock) is not None)
        pid = read_pid(lock)
        procs.wait_port(port)
        assert procs.wait_until(lambda: "mca_server started" in open(logf).read())
        assert open(logf).read().startswith("earlier line\n")
        assert procs.run(MCA, "-p", port, "-L", str(lock), "-k", timeout=20).returncode == 0
        assert procs.wait_until(lambda: not pid_alive(pid))
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        os.unlink(logf)
