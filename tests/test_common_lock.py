"""Lock files are kernel locks: -k never signals a process that does not hold the lock.

Every daemon of the suite that has a lock file option is started for real
over a lock file naming a live, unrelated ``sleep``: its kill option reports
the lock as stale and leaves the ``sleep`` alive; a start takes the lock over
(with a log line) and the kill option then stops the program, still leaving
the ``sleep`` alive.  archonsim has no lock file option and is not listed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys

import pytest

from common.lock import PidLock, holder_pid, pid_alive, read_pid
from tests.support import archon_rig, mrt_rig, procs

pytestmark = pytest.mark.timeout(120)

LOOP = "127.0.0.1"


def _echod(tmp):
    port = procs.free_port()
    return "tests.echod", "echod", ["-p", str(port)], "-L", ["-k"], port


def _marserver(tmp):
    base, cbase = procs.free_port_block(4), procs.free_port_block(4)
    args = ["-mar", LOOP, str(base), "-a", str(cbase - base), "--listen", LOOP]
    return "marserver.cli", "marserver", args, "--lockfile", ["--kill"], cbase + 1


def _marsim(tmp):
    base = procs.free_port_block(4)
    return "marserver.sim", "marsim", ["-mar", "-p", str(base)], "--lockfile", ["--kill"], base


def _hdw(module, name):
    def make(tmp):
        port = procs.free_port()
        return module, name, ["-p", str(port), "--bind", LOOP], "-L", ["-k"], port

    return make


def _specsrv(tmp):
    port = procs.free_port()
    args = ["-S", str(port), "-H", LOOP, "-N", f"lk{os.getpid()}"]
    return "specsrv.cli", "specsrv", args, "-L", ["-k"], port


def _mr_t(tmp):
    zp, up = procs.free_port(), procs.free_port(socket.SOCK_DGRAM)
    args = ["--eiger-zmq-host-and-port", mrt_rig.endpoint(zp), "--udp-host", LOOP]
    return "mrt.cli", "mr_t", [*args, "--udp-port", str(up)], "-L", ["-k"], None


def _camerad(tmp):
    rig = archon_rig.Rig(tmp)
    # camerad has no kill option; only the start over a foreign lock applies
    return "archonsrv.cli", "camerad", [str(rig.cfgfile)], "--lockfile", None, rig.nbport


DAEMONS = {
    "echod": _echod,
    "marserver": _marserver,
    "marsim": _marsim,
    "mca_server": _hdw("specsrv.hdw.mca", "mca_server"),
    "img_server": _hdw("specsrv.hdw.img", "img_server"),
    "specsrv": _specsrv,
    "mr_t": _mr_t,
    "camerad": _camerad,
}


@pytest.fixture
def foreign():
    """A live process that has nothing to do with the suite."""
    p = subprocess.Popen(["sleep", "120"])
    yield p
    p.kill()
    p.wait(5)


@pytest.mark.parametrize("which", sorted(DAEMONS))
def test_foreign_pid_survives_kill_and_start_takes_over(tmp_path, foreign, which):
    module, name, args, lockopt, kill, port = DAEMONS[which](tmp_path)
    lock = tmp_path / f"{name}.lock"
    lock.write_text(f"{foreign.pid}\n")
    if kill is not None:
        res = procs.run(module, *args, lockopt, str(lock), *kill, timeout=30)
        err = res.stderr.decode()
        assert res.returncode == 1, (res.stdout, err)
        assert f"stale lock file {lock}" in err and f"PID {foreign.pid} (sleep)" in err, err
        assert "nothing signalled" in err
        assert foreign.poll() is None, "-k signalled a process that does not hold the lock"
        assert read_pid(lock) == foreign.pid

    logf = tmp_path / "stderr"
    with open(logf, "wb") as out:
        p = procs.start(module, *args, lockopt, str(lock), stderr=out)
    try:
        assert procs.wait_until(lambda: read_pid(lock) == p.pid, 20), logf.read_text()
        assert procs.wait_until(lambda: holder_pid(lock) == p.pid, 5)
        if port is not None:
            procs.wait_port(port, proc=p)
        assert "taking over stale lock file" in logf.read_text()
        assert f"PID {foreign.pid} (sleep) is alive but does not hold the lock" in logf.read_text()
        if kill is not None:
            res = procs.run(module, *args, lockopt, str(lock), *kill, timeout=30)
            assert res.returncode == 0, res.stderr
            assert f"PID {p.pid} stopped" in res.stdout.decode()
            p.wait(10)
        else:
            assert procs.stop(p) == 0
        assert not lock.exists()
        assert foreign.poll() is None
    finally:
        procs.stop(p)


def test_kill_refuses_a_lock_held_by_another_program(tmp_path, port, spawn):
    """mca_server -k pointed at echod's lock: held, but not by an mca_server."""
    lock = tmp_path / "echod.lock"
    p = spawn("tests.echod", "-p", str(port), "-L", str(lock))
    procs.wait_port(port, proc=p)
    assert procs.wait_until(lambda: holder_pid(lock) == p.pid)
    res = procs.run("specsrv.hdw.mca", "-p", "1", "-L", str(lock), "-k", timeout=30)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert f"held by PID {p.pid} (echod), which is not mca_server; nothing signalled" in err
    assert p.poll() is None and read_pid(lock) == p.pid


def test_killed_owner_leaves_a_stale_lock_that_kill_reports(tmp_path, port, spawn):
    lock = tmp_path / "echod.lock"
    p = spawn("tests.echod", "-p", str(port), "-L", str(lock))
    procs.wait_port(port, proc=p)
    p.send_signal(signal.SIGKILL)
    p.wait(5)
    assert read_pid(lock) == p.pid and holder_pid(lock) is None
    res = procs.run("tests.echod", "-p", str(port), "-L", str(lock), "-k")
    assert res.returncode == 1
    assert f"stale lock file {lock} (PID {p.pid} is not running)" in res.stderr.decode()


def test_lock_is_exclusive_between_processes_and_released_at_exit(tmp_path):
    lock = tmp_path / "x.lock"
    code = (
        "import sys, time; from common.lock import PidLock; "
        f"PidLock({str(lock)!r}).acquire(); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=procs.env(),
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        assert holder_pid(lock) == holder.pid == read_pid(lock)
        mine = PidLock(lock)
        with pytest.raises(Exception, match=f"already running with PID {holder.pid}"):
            mine.acquire()
        assert not mine.held
        holder.stdin.close()  # it exits without releasing: the kernel drops the lock
        holder.wait(10)
        assert holder_pid(lock) is None
        mine.acquire()
        assert read_pid(lock) == os.getpid()
        mine.release()
        assert not lock.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            holder.kill()
        holder.wait(5)


def test_pid_alive_probe(foreign):
    assert pid_alive(foreign.pid)
    assert not pid_alive(0)
    with contextlib.suppress(ProcessLookupError):
        os.kill(foreign.pid, signal.SIGKILL)
    foreign.wait(5)
    assert not pid_alive(foreign.pid)


def test_planted_symlink_is_refused_and_its_target_untouched(tmp_path, port):
    target = tmp_path / "precious"
    target.write_text("do not truncate me\n")
    lock = tmp_path / "echod.lock"
    lock.symlink_to(target)
    res = procs.run("tests.echod", "-p", str(port), "-L", str(lock), timeout=30)
    assert res.returncode == 1
    assert f"lock file {lock} is a symbolic link; refused" in res.stderr.decode()
    assert target.read_text() == "do not truncate me\n"
    res = procs.run("tests.echod", "-p", str(port), "-L", str(lock), "-k", timeout=30)
    assert res.returncode == 1 and target.read_text() == "do not truncate me\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file of another user")
def test_lock_file_of_another_user_is_refused(tmp_path, port):
    lock = tmp_path / "echod.lock"
    lock.write_text("1\n")
    os.chown(lock, 65534, 65534)
    res = procs.run("tests.echod", "-p", str(port), "-L", str(lock), timeout=30)
    assert res.returncode == 1
    assert f"lock file {lock} belongs to another user (uid 65534); refused" in res.stderr.decode()
    assert lock.read_text() == "1\n"
