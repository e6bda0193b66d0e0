"""marserver / marsim command lines: documented flags, port selection, daemon."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from common.lock import pid_alive, read_pid
from marserver import cli
from marserver import protocol as P
from tests.support import procs
from tests.support.marserver_rig import wait_for

pytestmark = pytest.mark.timeout(60)


def settings(*argv: str):
    parser = cli.build_parser()
    return cli.settings_from_args(parser, parser.parse_intermixed_args(list(argv)))


def test_defaults_are_dtb_all_ports_plus_1000():
    s = settings()
    assert s.hw is P.DTB and s.host == "localhost" and s.add == 1000 and not s.swap
    assert s.ports == set(P.ALL_PORTS)
    assert [s.client_port(p) for p in P.ALL_PORTS] == [5451, 5452, 5453, 5454]


def test_backpressure_is_off_unless_asked_for():
    assert not settings().backpressure
    assert settings("--backpressure").backpressure


def test_man_page_example_mar_status_only_plus_5000():
    s = settings("-mar", "-s", "-a", "5000")
    assert s.hw is P.MAR345 and s.ports == {P.Port.STAT}
    assert s.client_port(P.Port.STAT) == 9442


@pytest.mark.parametrize(
    "argv,ports",
    [
        (["-mar", "-port", "4443"], {P.Port.DATA}),
        (["-port", "STAT,MESS"], {P.Port.STAT, P.Port.MESS}),
        (["-port", "comm", "-port", "DATA"], {P.Port.COMM, P.Port.DATA}),
        (["-port", "ALL", "--nodata"], {P.Port.COMM, P.Port.STAT, P.Port.MESS}),
        (["--nocomm", "--nomess"], {P.Port.STAT, P.Port.DATA}),
        (["-c", "-m"], {P.Port.COMM, P.Port.MESS}),
        (["-d"], {P.Port.DATA}),
        (["--all", "-s"], set(P.ALL_PORTS)),
        (["-mar", "host", "6000", "-port", "6001"], {P.Port.STAT}),
    ],
)
def test_port_selection(argv, ports):
    assert settings(*argv).ports == ports


def test_positional_host_port_and_swap_spellings():
    s = settings("-mar", "scanner.example", "7000", "-swap")
    assert s.host == "scanner.example" and s.hw_base == 7000 and s.swap
    assert s.client_port(P.Port.MESS) == 8003
    assert settings("--swap", "--scanner").swap


def test_a_lone_number_is_the_port_not_the_hostname():
    # synopsis "marserver [OPTION] [hostname] port": "marserver -mar 7000"
    s = settings("-mar", "7000")
    assert s.host == "localhost" and s.hw_base == 7000
    assert s.client_port(P.Port.STAT) == 8001
    assert settings("-mar", "scanner1").host == "scanner1"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["-port", "FOO"], "unknown port"),
        (["-mar", "-port", "4451"], "not a mar345 hardware port"),
        (["-s", "--nostat"], "no hardware port left"),
        (["-a", "x"], "invalid int value"),
        (["-a", "70000"], "out of range"),
        (["-dtb", "-mar"], "not allowed with argument"),
        (["--bogus"], "unrecognized arguments"),
        (["--backoff", "0"], "must be greater than 0"),
        (["host", "99999"], "port number out of range"),
        (["99999"], "port number out of range"),
    ],
)
def test_bad_flags_exit_2_with_a_message(argv, needle):
    res = procs.run("marserver", *argv)
    assert res.returncode == 2
    assert needle in res.stderr.decode()


def test_marsim_bad_flags_exit_2():
    res = procs.run("marserver.sim", "--rate", "0")
    assert res.returncode == 2 and "must be greater than 0" in res.stderr.decode()


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_mar_status_only_listens_on_9442_only(spawn):
    if not all(_free(p) for p in (9441, 9442, 9443, 9444)):
        pytest.skip("ports 9441-9444 are in use on this machine")
    p = spawn("marserver", "-mar", "-s", "-a", "5000", "--listen", "127.0.0.1", "127.0.0.1")
    procs.wait_port(9442, proc=p)
    for other in (9441, 9443, 9444, 5442):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", other), timeout=2).close()


def test_client_port_in_use_is_reported_with_exit_1():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = procs.run(
            "marserver", "-mar", "-m", "127.0.0.1", "6000", "-a", str(port - 6003), "--listen",
            "127.0.0.1",
        )  # fmt: skip
    assert res.returncode == 1
    assert f"cannot listen: 127.0.0.1:{port}: Address already in use" in res.stderr.decode()


def test_daemon_lockfile_logfile_and_kill(tmp_path):
    lock, logf = tmp_path / "marserver.lock", tmp_path / "marserver.log"
    base = procs.free_port_block(4)
    cbase = procs.free_port_block(4)
    common = ["-mar", "127.0.0.1", str(base), "-a", str(cbase - base), "--listen", "127.0.0.1"]
    common += ["--lockfile", str(lock)]
    res = procs.run("marserver", *common, "--daemon", "--logfile", str(logf), timeout=20)
    assert res.returncode == 0, res.stderr
    assert wait_for(lambda: read_pid(lock) is not None)
    pid = read_pid(lock)
    try:
        procs.wait_port(cbase + 1)
        assert pid_alive(pid)
        kill = procs.run("marserver", *common, "--kill", timeout=20)
        assert kill.returncode == 0, kill.stderr
        assert wait_for(lambda: not pid_alive(pid), 5)
        assert not lock.exists()
        text = logf.read_text()
        assert "marserver started" in text and "cannot connect" in text
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
