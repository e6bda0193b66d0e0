"""contrib/ works as shipped: systemd units and SysV init scripts, run for real.

* every unit passes ``systemd-analyze verify`` and rates at most 4.0 in
  ``systemd-analyze security --offline=yes`` (skipped, saying so, where
  systemd-analyze is not installed);
* every unit's ``ExecStart=`` line, with only its paths moved into a
  temporary directory (``/run``, ``/var/log``, ``/etc``, ``/usr/local/bin``)
  and loopback settings in its environment, starts the real program, which
  sends ``READY=1`` to ``NOTIFY_SOCKET`` (``Type=notify``) and holds its lock
  file under ``RuntimeDirectory=`` and its log under ``LogsDirectory=``;
* every init script is shellcheck-clean and, with its /etc/default file
  moved into a temporary directory, starts the real daemon (exit 0 only once
  it runs), reports its status with LSB exit codes, reloads, stops, and
  reports a failed start with a non-zero exit status and the daemon's message.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from common.lock import holder_pid, is_program, pid_alive, read_pid
from tests.support import archon_rig, mrt_rig, procs

pytestmark = pytest.mark.timeout(180)

CONTRIB = procs.ROOT / "contrib"
UNITS = sorted((CONTRIB / "systemd").glob("*.service"))
SCRIPTS = sorted(p for p in (CONTRIB / "init.d").iterdir() if p.is_file())
BIN = Path(sys.executable).parent  # the console scripts of this install (make test: .venv/bin)
LOOP = "127.0.0.1"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed here (make tools installs it on Debian)")
    return path


def _bin(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"console script {name} is not installed next to {sys.executable}")
    return str(path)


# -- systemd units ----------------------------------------------------------


def _unit_keys(unit: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def test_every_program_with_a_daemon_mode_has_a_unit_and_a_script():
    units = {u.name.split(".")[0].rstrip("@") for u in UNITS}
    assert units == {
        "archonsim",
        "camerad",
        "img_server",
        "marserver",
        "mca_server",
        "mr_t",
        "specsrv",
    }
    assert {s.name for s in SCRIPTS} == units - {"archonsim"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_is_hardened(unit):
    keys = _unit_keys(unit)
    assert keys["Type"] == ["notify"] and keys["NotifyAccess"] == ["main"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert keys.get(key) == [value], f"{unit.name}: {key}={value} expected"
    assert "AF_PACKET" not in keys["RestrictAddressFamilies"][0]
    assert "LogsDirectory" in keys
    # nothing written outside the unit's own directories (ProtectSystem=strict)
    exec_start = keys["ExecStart"][0]
    for path in re.findall(r"(/(?:run|var/log|tmp|var/tmp)/\S*)", exec_start):
        assert path.startswith(("/run/", "/var/log/")), f"{unit.name}: {path}"
    if "/run/" in exec_start:
        assert "RuntimeDirectory" in keys
    assert "User" in keys or keys.get("DynamicUser") == ["yes"], "never root"


def test_units_verify(tmp_path):
    analyze = _tool("systemd-analyze")
    for unit in UNITS:
        # the executables as installed here, not in /usr/local/bin
        text = unit.read_text().replace("/usr/local/bin/", f"{BIN}/")
        (tmp_path / unit.name).write_text(text)
    res = subprocess.run(
        [analyze, "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_security_exposure_at_most_4(unit, tmp_path):
    analyze = _tool("systemd-analyze")
    # systemd-analyze cannot analyse a template; an instance of it is the same
    target = tmp_path / unit.name.replace("@.", "@test.")
    target.write_text(unit.read_text())
    res = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= 4.0, res.stdout


def _expand(words: list[str], env: dict[str, str]) -> list[str]:
    """systemd's ExecStart= expansion: ``$VAR`` splits into words, ``${VAR}`` does not."""
    out: list[str] = []
    for w in words:
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", w)
        if m:
            out.extend(env.get(m.group(1), "").split())
        else:
            out.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda g: env[g.group(1)], w))
    return out


# prctl(PR_SET_NO_NEW_PRIVS) and prctl(PR_SET_MDWE) as systemd sets them, then exec
_RESTRICTED_EXEC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0
libc.prctl(65, 1, 0, 0, 0)  # MDWE; older kernels refuse it (EINVAL): run without
os.execv(sys.argv[1], sys.argv[1:])
"""


def _unit_case(name: str, tmp: Path) -> tuple[dict[str, str], dict[str, str], int | None]:
    """Environment overrides (loopback, free ports), path moves, port to probe."""
    if name in ("mca_server", "img_server"):
        port = procs.free_port()
        return {"PORT": str(port), "ARGS": f"--bind {LOOP}"}, {}, port
    if name == "marserver":
        cbase = procs.free_port_block(4)
        # hardware ports 4441-4444 (nobody there: marserver keeps retrying)
        return {"HOST": LOOP, "ARGS": f"--listen {LOOP} -a {cbase - 4441}"}, {}, cbase + 1
    if name == "specsrv":
        port = procs.free_port()
        conf = {"/etc/specsrv/unittest.conf": str(CONTRIB / "config" / "fourc.conf")}
        return {"PORTS": str(port), "ARGS": f"-H {LOOP}"}, conf, port
    if name == "mr_t":
        zp, up = procs.free_port(), procs.free_port(socket.SOCK_DGRAM)
        opts = f"--eiger-zmq-host-and-port {mrt_rig.endpoint(zp)} --udp-host {LOOP}"
        return {"MRT_OPTS": f"{opts} --udp-port {up}"}, {}, None
    if name in ("camerad", "archonsim"):
        rig = archon_rig.Rig(tmp / "rig", LOGPATH=tmp / "var/log/camerad")
        port = rig.nbport if name == "camerad" else rig.sim_port
        return {}, {"/etc/camerad/camerad.cfg": str(rig.cfgfile)}, port
    raise AssertionError(name)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_exec_start_runs_the_real_program(unit, tmp_path, monkeypatch):
    name = unit.name.split(".")[0].rstrip("@")
    keys = _unit_keys(unit)
    env_over, moves, port = _unit_case(name, tmp_path)
    env: dict[str, str] = {}
    for assignment in keys.get("Environment", []):
        k, v = assignment.split("=", 1)
        env[k] = v
    env.update(env_over)
    line = keys["ExecStart"][0].replace("%i", "unittest")
    for old, new in moves.items():
        line = line.replace(old, new)
    line = line.replace("/usr/local/bin/", "/BIN/")
    line = line.replace("/run/", f"{tmp_path}/run/").replace("/var/log/", f"{tmp_path}/var/log/")
    argv = _expand(shlex.split(line), env)
    argv[0] = _bin(Path(argv[0]).name)
    for d in keys.get("RuntimeDirectory", []):
        (tmp_path / "run" / d.replace("%i", "unittest")).mkdir(parents=True)
    for d in keys.get("LogsDirectory", []):
        (tmp_path / "var/log" / d).mkdir(parents=True, exist_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    stderr = open(tmp_path / "stderr", "wb")
    if keys.get("MemoryDenyWriteExecute") == ["yes"] and keys.get("NoNewPrivileges") == ["yes"]:
        # what the kernel enforces for those two settings, where it can (Linux >= 6.3)
        argv = [sys.executable, "-c", _RESTRICTED_EXEC, *argv]
    p = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=procs.env()
    )
    try:
        msg = b""
        with contextlib.suppress(TimeoutError):
            msg = notify.recv(4096)
        assert b"READY=1" in msg, (argv, (tmp_path / "stderr").read_text())
        assert f"MAINPID={p.pid}".encode() in msg
        assert is_program(p.pid, name)
        if port is not None:
            procs.wait_port(port, proc=p)
        locks = list((tmp_path / "run").rglob("*.pid"))
        if "RuntimeDirectory" in keys:
            assert [read_pid(f) for f in locks] == [p.pid]
            assert holder_pid(locks[0]) == p.pid
        logs = [f for f in (tmp_path / "var/log").rglob("*") if f.is_file()]
        assert logs, "nothing written under LogsDirectory="
        p.send_signal(signal.SIGHUP)  # ExecReload=
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
        assert not list((tmp_path / "run").rglob("*.pid"))
    finally:
        procs.stop(p)
        stderr.close()
        notify.close()


# -- SysV init scripts ------------------------------------------------------


def test_init_scripts_pass_shellcheck():
    shellcheck = _tool("shellcheck")
    res = subprocess.run(
        [shellcheck, "--shell=sh", *map(str, SCRIPTS)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and not res.stdout, res.stdout


def _script_case(name: str, tmp: Path) -> tuple[str, int | None, Path]:
    """/etc/default settings for a loopback run, the port to probe, the PID file."""
    run, logdir = tmp / "run", tmp / "log"
    common = f'RUNDIR="{run}"\nLOGDIR="{logdir}"\nRUNAS=""\nDAEMON="{_bin(name)}"\n'
    if name in ("mca_server", "img_server"):
        port = procs.free_port()
        text = f'PORT={port}\nARGS="--bind {LOOP}"\n'
        return common + text, port, run / f"{name}-{port}.pid"
    if name == "marserver":
        cbase = procs.free_port_block(4)
        text = f'HOST={LOOP}\nARGS="--listen {LOOP} -a {cbase - 4441}"\n'
        return common + text, cbase + 1, run / "marserver.pid"
    if name == "specsrv":
        port = procs.free_port()
        conf = CONTRIB / "config" / "fourc.conf"
        text = f'SPECNAME=inittest\nPORTS={port}\nCONFIG="{conf}"\nARGS="-H {LOOP}"\n'
        return common + text, port, run / "specsrv-inittest.pid"
    if name == "mr_t":
        zp, up = procs.free_port(), procs.free_port(socket.SOCK_DGRAM)
        opts = f"--eiger-zmq-host-and-port {mrt_rig.endpoint(zp)} --udp-host {LOOP}"
        return common + f'MRT_OPTS="{opts} --udp-port {up}"\n', None, run / "mr_t.pid"
    if name == "camerad":
        rig = archon_rig.Rig(tmp / "rig", LOGPATH=logdir)
        return common + f'CONFIG="{rig.cfgfile}"\n', rig.nbport, run / "camerad.pid"
    raise AssertionError(name)


def _install_script(script: Path, tmp: Path, defaults: str) -> Path:
    """The script, reading its /etc/default file from ``tmp`` instead."""
    (tmp / "default").mkdir(exist_ok=True)
    (tmp / "default" / script.name).write_text(defaults)
    copy = tmp / script.name
    copy.write_text(script.read_text().replace("/etc/default/", f"{tmp}/default/"))
    copy.chmod(0o755)
    return copy


def _sh(script: Path, action: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in procs.env().items() if k != "NOTIFY_SOCKET"}
    return subprocess.run(
        [str(script), action], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_init_script_start_status_reload_stop(script, tmp_path):
    _tool("start-stop-daemon")
    defaults, port, pidfile = _script_case(script.name, tmp_path)
    sh = _install_script(script, tmp_path, defaults)
    pid = None
    try:
        res = _sh(sh, "start")
        assert res.returncode == 0, res.stdout + res.stderr
        # no waiting: the script returned once the daemon was ready
        pid = read_pid(pidfile)
        assert pid and holder_pid(pidfile) == pid and is_program(pid, script.name)
        if port is not None:
            procs.wait_port(port)
        status = _sh(sh, "status")
        assert status.returncode == 0 and f"(PID {pid})" in status.stdout, status.stdout
        again = _sh(sh, "start")  # already running: success, nothing new started
        assert again.returncode == 0 and read_pid(pidfile) == pid
        assert _sh(sh, "reload").returncode == 0
        assert pid_alive(pid)
        restart = _sh(sh, "restart")
        assert restart.returncode == 0, restart.stdout + restart.stderr
        old, pid = pid, read_pid(pidfile)
        assert pid != old and not pid_alive(old) and holder_pid(pidfile) == pid
        stop = _sh(sh, "stop")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert not pid_alive(pid) and not pidfile.exists()
        assert _sh(sh, "status").returncode == 3
        assert _sh(sh, "stop").returncode == 0  # stopping a stopped service succeeds
        assert _sh(sh, "bogus").returncode == 2
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("name", ["mca_server", "specsrv"])
def test_init_script_reports_a_failed_start(name, tmp_path):
    _tool("start-stop-daemon")
    script = CONTRIB / "init.d" / name
    defaults, port, pidfile = _script_case(name, tmp_path)
    sh = _install_script(script, tmp_path, defaults)
    with socket.socket() as busy:
        busy.bind((LOOP, port))
        busy.listen()
        res = _sh(sh, "start")
    assert res.returncode == 1, res.stdout
    assert "Address already in use" in res.stderr and "failed" in res.stdout
    assert not pidfile.exists()
    assert _sh(sh, "status").returncode == 3


def test_init_script_status_ignores_a_foreign_pid(tmp_path):
    _tool("start-stop-daemon")
    script = CONTRIB / "init.d" / "mca_server"
    defaults, _port, pidfile = _script_case("mca_server", tmp_path)
    sh = _install_script(script, tmp_path, defaults)
    pidfile.parent.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pidfile.write_text(f"{sleeper.pid}\n")
        assert _sh(sh, "status").returncode == 1  # dead, PID file left
        assert _sh(sh, "stop").returncode == 0
        assert sleeper.poll() is None, "stop signalled a process that is not mca_server"
    finally:
        sleeper.kill()
        sleeper.wait(5)
