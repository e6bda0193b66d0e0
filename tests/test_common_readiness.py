"""``-d`` returns only when the daemon is ready; systemd ``Type=notify`` readiness.

After ``prog -d`` exits 0 the lock file names the daemon, the daemon holds
its lock and its port answers, with no waiting.  A daemon that fails after
the fork makes ``prog -d`` exit 1 with the daemon's message.  With
``NOTIFY_SOCKET`` set, a foreground program sends ``READY=1`` (with its
``MAINPID``), ``RELOADING=1``/``READY=1`` around SIGHUP and ``STOPPING=1``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket

import pytest

from common.lock import holder_pid, pid_alive, read_pid
from tests.support import procs

pytestmark = pytest.mark.timeout(240)

LOOP = "127.0.0.1"
ROUNDS = 20

PROGRAMS = {
    "echod": ("tests.echod", lambda port: ["-p", str(port)]),
    "mca_server": ("specsrv.hdw.mca", lambda port: ["-p", str(port), "--bind", LOOP, "-v", "1"]),
}


def _stop(pid: int | None) -> None:
    if pid and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not procs.wait_until(lambda: not pid_alive(pid), 5):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("which", sorted(PROGRAMS))
def test_daemon_returns_with_pid_file_present_every_time(tmp_path, which):
    module, make_args = PROGRAMS[which]
    port = procs.free_port()
    lock, logf = tmp_path / "d.lock", tmp_path / "d.log"
    args = [*make_args(port), "-L", str(lock), "-l", str(logf)]
    pid = None
    try:
        for round_ in range(ROUNDS):
            res = procs.run(module, *args, "-d", timeout=30)
            assert res.returncode == 0, (round_, res.stderr)
            # no waiting: the parent returned only once all of this was true
            pid = read_pid(lock)
            assert pid is not None, f"round {round_}: no PID in the lock file"
            assert holder_pid(lock) == pid, f"round {round_}: the daemon does not hold its lock"
            with socket.create_connection((LOOP, port), timeout=5):
                pass
            os.kill(pid, signal.SIGTERM)
            assert procs.wait_until(lambda: not lock.exists(), 10), f"round {round_}"
            assert procs.wait_until(lambda p=pid: not pid_alive(p), 5)
            pid = None
    finally:
        _stop(pid)
        _stop(read_pid(lock))
    assert logf.read_text().count(" started (PID ") == ROUNDS


@pytest.mark.parametrize("which", sorted(PROGRAMS))
def test_daemon_failing_after_fork_makes_the_parent_fail(tmp_path, which):
    module, make_args = PROGRAMS[which]
    port = procs.free_port()
    # checked before the fork (nobody holds it), created only after it: fails there
    lock = tmp_path / "missing-dir" / "d.lock"
    logf = tmp_path / "d.log"
    res = procs.run(module, *make_args(port), "-L", str(lock), "-l", str(logf), "-d", timeout=30)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert f"cannot create lock file {lock}: No such file or directory" in err
    assert "cannot create lock file" in logf.read_text()
    with pytest.raises(OSError):
        socket.create_connection((LOOP, port), timeout=1).close()


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A unix datagram socket standing in for systemd's notification socket."""
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield s
    s.close()


def _receive(s: socket.socket, key: str, limit: int = 10) -> dict[str, str]:
    """The next notification carrying ``key``, as a dict."""
    for _ in range(limit):
        msg = s.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in msg.splitlines() if "=" in line)
        if key in fields:
            return fields
    raise AssertionError(f"no {key} notification in {limit} messages")


@pytest.mark.parametrize("which", sorted(PROGRAMS))
def test_notify_socket_ready_reloading_stopping(notify_socket, which, spawn):
    module, make_args = PROGRAMS[which]
    port = procs.free_port()
    p = spawn(module, *make_args(port))
    ready = _receive(notify_socket, "READY")
    assert ready["READY"] == "1" and ready["MAINPID"] == str(p.pid)
    # ready means listening
    with socket.create_connection((LOOP, port), timeout=5):
        pass
    p.send_signal(signal.SIGHUP)
    reloading = _receive(notify_socket, "RELOADING")
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert _receive(notify_socket, "READY")["READY"] == "1"
    p.send_signal(signal.SIGTERM)
    assert _receive(notify_socket, "STOPPING")["STOPPING"] == "1"
    assert p.wait(10) == 0


def test_notify_abstract_socket_and_daemon_mainpid(tmp_path, monkeypatch):
    """``@NAME`` is the abstract namespace; after -d, MAINPID is the daemon's PID."""
    name = f"beamline-servers-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    port = procs.free_port()
    lock = tmp_path / "d.lock"
    pid = None
    try:
        res = procs.run("tests.echod", "-p", str(port), "-L", str(lock), "-d", timeout=30)
        assert res.returncode == 0, res.stderr
        pid = read_pid(lock)
        assert _receive(s, "READY")["MAINPID"] == str(pid)
    finally:
        s.close()
        _stop(pid)


@pytest.mark.parametrize(
    "how,needle",
    [
        ("error", "start-up failed: simulated start-up failure"),
        ("exit", "the daemon exited during start-up (see its log file)"),
    ],
)
def test_daemon_start_failure_reaches_the_parent(tmp_path, how, needle):
    port = procs.free_port()
    lock = tmp_path / "d.lock"
    res = procs.run(
        "tests.echod", "-p", str(port), "-L", str(lock), "-l", str(tmp_path / "log"),
        "-d", "--fail-start", how, timeout=30,
    )  # fmt: skip
    assert res.returncode == 1
    assert f"echod: {needle}" in res.stderr.decode()
    # the daemon is gone and its lock with it (released by the kernel if not removed)
    assert procs.wait_until(lambda: holder_pid(lock) is None, 5)


@pytest.mark.parametrize("value", ["/nonexistent/notify.sock", "relative.sock", "@"])
def test_unusable_notify_socket_does_not_stop_the_program(value, monkeypatch, spawn):
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    port = procs.free_port()
    p = spawn("tests.echod", "-p", str(port))
    procs.wait_port(port, proc=p)
    p.send_signal(signal.SIGHUP)
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
