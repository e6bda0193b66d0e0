"""The shared daemon runtime, exercised through a real program (tests/echod.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from common.lock import pid_alive, read_pid
from tests.support import procs

pytestmark = pytest.mark.timeout(60)

MOD = "tests.echod"


def ask(port: int, line: bytes, timeout: float = 3.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(line + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf


wait_for = procs.wait_until


def test_foreground_lock_second_start_and_sigterm(tmp_path, port, spawn):
    lock = tmp_path / "echod.lock"
    p = spawn(MOD, "-p", str(port), "-L", str(lock), stderr=subprocess.PIPE)
    procs.wait_port(port, proc=p)
    assert ask(port, b"ping") == b"ping DONE\n"
    assert read_pid(lock) == p.pid
    assert open(f"/proc/{p.pid}/comm").read().strip() == "echod"

    second = procs.run(MOD, "-p", str(procs.free_port()), "-L", str(lock))
    assert second.returncode == 1
    assert f"already running with PID {p.pid}" in second.stderr.decode()
    assert read_pid(lock) == p.pid, "a refused start must not touch the lock"

    # a client that stays connected must not delay shutdown
    idle = socket.create_connection(("127.0.0.1", port))
    p.send_signal(signal.SIGTERM)
    # the 2 s shutdown promise, with a margin for a loaded CI machine; a
    # server that waited for the idle client would raise TimeoutExpired
    p.wait(3)
    idle.close()
    err = p.stderr.read().decode()
    assert p.returncode == 0
    assert not lock.exists()
    assert "stopped in" in err and "(0 server threads left)" in err


def test_daemon_mode_and_kill(tmp_path, port):
    lock = tmp_path / "echod.lock"
    logf = tmp_path / "echod.log"
    res = procs.run(MOD, "-p", str(port), "-L", str(lock), "-l", str(logf), "-d", timeout=20)
    assert res.returncode == 0, res.stderr
    assert wait_for(lambda: read_pid(lock) is not None)
    pid = read_pid(lock)
    try:
        procs.wait_port(port)
        assert ask(port, b"hello") == b"hello DONE\n"
        assert pid_alive(pid)
        assert os.getppid() != pid
        # the daemon's parent is not the shell that started it
        ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        assert ppid != os.getpid()
        kill = procs.run(MOD, "-p", str(port), "-L", str(lock), "-k", timeout=20)
        assert kill.returncode == 0, kill.stderr
        assert f"PID {pid} stopped" in kill.stdout.decode()
        assert wait_for(lambda: not pid_alive(pid), 3)
        assert not lock.exists()
        log = logf.read_text()
        assert "echod started" in log and "daemon" in log and "received SIGTERM" in log
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_daemon_relative_log_file_stays_where_it_was_named(tmp_path, port):
    lock = tmp_path / "echod.lock"
    res = subprocess.run(
        procs.command(MOD, "-p", str(port), "-L", str(lock), "-l", "rel.log", "-d"),
        cwd=tmp_path,
        env=procs.env(),
        capture_output=True,
        timeout=20,
    )
    assert res.returncode == 0, res.stderr
    assert wait_for(lambda: read_pid(lock) is not None)
    pid = read_pid(lock)
    try:
        assert wait_for(lambda: (tmp_path / "rel.log").exists())
        assert wait_for(lambda: "echod started" in (tmp_path / "rel.log").read_text())
    finally:
        procs.run(MOD, "-p", str(port), "-L", str(lock), "-k", timeout=20)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_kill_when_not_running(tmp_path):
    res = procs.run(MOD, "-p", "1", "-L", str(tmp_path / "none.lock"), "-k")
    assert res.returncode == 1
    assert "not running" in res.stderr.decode()


@pytest.mark.parametrize(
    "module,args,needle",
    [
        (
            MOD,
            ["-p", "1", "-k"],
            "-k needs the lock file of the running instance: give -L LOCKFILE",
        ),
    ],
)
def test_kill_without_lock_file_names_the_options(module, args, needle):
    res = procs.run(module, *args)
    assert res.returncode == 1
    assert needle in res.stderr.decode()


def test_kill_message_uses_long_only_spellings(capsys):
    # a program that spells them --kill and --lockfile (-k and -L do not exist)
    from common import cli, runtime

    parser = cli.make_parser("longonly", "test")
    cli.add_runtime_args(
        parser, cli.RuntimeFlags(daemon=("--daemon",), kill=("--kill",), lockfile=("--lockfile",))
    )
    args = cli.parse_or_exit(parser, ["--kill"])
    status = runtime.run(runtime.Service(), runtime.options_from_args(args))
    assert status == 1
    err = capsys.readouterr().err
    assert "--kill needs the lock file of the running instance: give --lockfile LOCKFILE" in err


def test_stale_lock_is_replaced(tmp_path, port, spawn):
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / "echod.lock"
    lock.write_text(f"{dead.pid}\n")
    p = spawn(MOD, "-p", str(port), "-L", str(lock), stderr=subprocess.PIPE)
    procs.wait_port(port, proc=p)
    assert read_pid(lock) == p.pid
    procs.stop(p)
    err = p.stderr.read().decode()
    assert "stale lock file" in err and str(dead.pid) in err


def test_sighup_reload_and_broken_config(tmp_path, port, spawn):
    cfg = tmp_path / "echod.cfg"
    cfg.write_text("GREETING=first   # the greeting\nMAXCLIENTS=4\n")
    logf = tmp_path / "log"
    p = spawn(MOD, "-p", str(port), "-c", str(cfg), "-l", str(logf))
    procs.wait_port(port, proc=p)
    assert ask(port, b"greet") == b"first DONE\n"

    cfg.write_text('GREETING="second one"\n')
    p.send_signal(signal.SIGHUP)
    assert wait_for(lambda: ask(port, b"greet") == b"second one DONE\n")

    cfg.write_text("GREETING=third\nMAXCLIENTS=many\n")
    p.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "configuration rejected" in logf.read_text())
    assert ask(port, b"greet") == b"second one DONE\n"
    assert "MAXCLIENTS must be a number" in logf.read_text()
    assert p.poll() is None


def test_sighup_reopens_log_file(tmp_path, port, spawn):
    logf = tmp_path / "echod.log"
    p = spawn(MOD, "-p", str(port), "-l", str(logf))
    procs.wait_port(port, proc=p)
    assert wait_for(lambda: logf.exists() and "started" in logf.read_text())
    rotated = tmp_path / "echod.log.1"
    logf.rename(rotated)
    p.send_signal(signal.SIGHUP)
    assert wait_for(lambda: logf.exists() and "SIGHUP" in logf.read_text())


@pytest.mark.parametrize("daemon", [False, True])
def test_port_in_use_leaves_no_lock_and_no_empty_log(tmp_path, daemon):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        lock = tmp_path / "echod.lock"
        logf = tmp_path / "echod.log"
        busy_port = busy.getsockname()[1]
        args = ["-p", str(busy_port), "-L", str(lock), "-l", str(logf)] + (["-d"] if daemon else [])
        res = procs.run(MOD, *args, timeout=20)
    assert res.returncode == 1
    # the message names the address that is taken (a program may bind several)
    assert f"cannot listen: 127.0.0.1:{busy_port}: Address already in use" in res.stderr.decode()
    assert not lock.exists()
    assert not logf.exists(), "a refused start leaves no new empty log file"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["-p", "1", "--bogus"], "unrecognized arguments"),
        (["-p"], "expected one argument"),
        (["-p", "70000"], "out of range"),
        (["-p", "abc"], "invalid port number"),
    ],
)
def test_usage_errors_exit_2(tmp_path, args, needle):
    lock = tmp_path / "echod.lock"
    res = procs.run(MOD, *args, "-L", str(lock))
    assert res.returncode == 2
    err = res.stderr.decode()
    assert needle in err and "usage:" in err
    assert not lock.exists()


def test_unreadable_config_exit_2(tmp_path):
    res = procs.run(MOD, "-p", "1", "-c", str(tmp_path / "missing.cfg"))
    assert res.returncode == 2
    assert "cannot read configuration file" in res.stderr.decode()


def test_connection_limit_and_overlong_line(tmp_path, port, spawn):
    cfg = tmp_path / "c.cfg"
    cfg.write_text("MAXCLIENTS=2\n")
    p = spawn(MOD, "-p", str(port), "-c", str(cfg), stderr=subprocess.PIPE)
    procs.wait_port(port, proc=p)
    time.sleep(0.2)  # let the probe connection of wait_port go away
    a = socket.create_connection(("127.0.0.1", port), timeout=3)
    b = socket.create_connection(("127.0.0.1", port), timeout=3)
    a.sendall(b"x\n")
    assert a.recv(100) == b"x DONE\n"
    b.sendall(b"y\n")
    assert b.recv(100) == b"y DONE\n"
    c = socket.create_connection(("127.0.0.1", port), timeout=3)
    assert c.recv(100) == b"", "the third client is closed at once"
    c.close()
    a.sendall(b"z" * 5000 + b"\nafter\n")
    got = b""
    while got.count(b"\n") < 2:
        got += a.recv(100)
    assert got == b"ERROR line too long\nafter DONE\n"
    a.close()
    b.close()
    procs.stop(p)
    assert "already 2 clients, the limit" in p.stderr.read().decode()


def test_allow_list_refuses_other_networks(port, spawn):
    p = spawn(MOD, "-p", str(port), "-A", "10.0.0.0/8", stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    got = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"x\n")
                got = s.recv(100)
                break
        except OSError:
            time.sleep(0.05)
    assert got == b""
    procs.stop(p)
    assert "not in allow-list" in p.stderr.read().decode()


def _log_lines(path, needle: str) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if needle in line]
    except FileNotFoundError:
        return []


def test_junk_and_overlong_lines_cannot_flood_the_log(tmp_path, port, spawn):
    logf = tmp_path / "echod.log"
    p = spawn(MOD, "-p", str(port), "-l", str(logf), "--log-period", "1")
    procs.wait_port(port, proc=p)
    junk = b"".join(b"\x01junk\xff%d\n" % i for i in range(1000))
    overlong = b"".join(b"y" * 300 + b"\n" for _ in range(200))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(junk + overlong + b"end\n")
        got = b""
        while not got.endswith(b"end DONE\n"):
            chunk = s.recv(65536)
            assert chunk, "the server closed the connection"
            got += chunk
    assert got.count(b"ERROR bad line\n") == 1000
    assert got.count(b"ERROR line too long\n") == 200
    # the first five of each kind are written, the rest counted and summarised
    assert wait_for(lambda: _log_lines(logf, "messages suppressed") != [], 10)
    assert wait_for(lambda: len(_log_lines(logf, "messages suppressed")) == 2, 10)
    assert len(_log_lines(logf, "bad line from 127.0.0.1:")) == 5
    assert len(_log_lines(logf, "overlong line from 127.0.0.1:")) == 5
    summary = "\n".join(_log_lines(logf, "messages suppressed"))
    assert "995 more 'echod: bad line from 127.0.0.1' messages suppressed" in summary
    assert "195 more 'echod: overlong line from 127.0.0.1' messages suppressed" in summary
    # 1,200 bad lines in: a few lines of log, not one per line (about 140 bytes each)
    assert logf.stat().st_size < 4000


def test_refused_connections_cannot_flood_the_log(tmp_path, port, spawn):
    logf = tmp_path / "echod.log"
    p = spawn(MOD, "-p", str(port), "-A", "10.0.0.0/8", "-l", str(logf), "--log-period", "1")
    assert wait_for(lambda: "echod started" in logf.read_text() if logf.exists() else False)
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert s.recv(10) == b""
    assert wait_for(lambda: _log_lines(logf, "messages suppressed") != [], 10)
    assert len(_log_lines(logf, "not in allow-list")) == 6  # 5 lines and the summary
    summary = _log_lines(logf, "messages suppressed")[0]
    assert "195 more 'echod: refused 127.0.0.1 (not in allow-list)' messages suppressed" in summary
    assert logf.stat().st_size < 3000
    assert p.poll() is None
