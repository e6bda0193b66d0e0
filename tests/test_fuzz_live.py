"""Property-based fuzzing of live servers: any bytes a peer sends leave the
server alive, answering honest clients, with bounded memory.

One real process per protocol (marserver's command port, server_hdw's line
protocol, Mr. T's UDP port), started once per module on 127.0.0.1; hypothesis
sends it bounded junk; after every example the server must still answer a
well-formed request, and at the end its resident memory must not have grown
by more than ``RSS_GROWTH``.  (spec server mode and camerad have their own
live fuzz tests: test_specsrv_spec.py, test_archon_fuzz.py.)
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marserver import protocol as P
from mrt import protocol as MP
from tests.support import procs
from tests.support.marserver_rig import HOST, connect, recv_exact

pytestmark = pytest.mark.timeout(180)

RSS_GROWTH = 64 << 20
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JUNK = st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=6)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def send_junk(port: int, parts: list[bytes]) -> None:
    with socket.create_connection((HOST, port), timeout=5) as s:
        for p in parts:
            try:
                s.sendall(p)
            except OSError:
                return  # the server may close a connection that misbehaves


@pytest.fixture(scope="module")
def marsim_and_marserver(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mar")
    hw = procs.free_port_block(4)
    cbase = procs.free_port_block(4)
    sim = procs.start("marserver.sim", "-mar", "-p", str(hw), "-r", "50")
    srv = None
    try:
        procs.wait_port(hw + int(P.Port.MESS), proc=sim)
        srv = procs.start(
            "marserver",
            "-mar",
            HOST,
            str(hw),
            "-a",
            str(cbase - hw),
            "--listen",
            HOST,
            "--logfile",
            str(tmp / "marserver.log"),
        )
        procs.wait_port(cbase + int(P.Port.MESS), proc=srv)
        yield srv, cbase
    finally:
        if srv is not None:
            procs.stop(srv)
        procs.stop(sim)


@pytest.fixture(scope="module")
def mca_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mca")
    port = procs.free_port()
    proc = procs.start("specsrv.hdw.mca", "-p", str(port), "-l", str(tmp / "mca.log"))
    try:
        procs.wait_port(port, proc=proc)
        yield proc, port
    finally:
        procs.stop(proc)


@pytest.fixture(scope="module")
def mr_t(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mrt")
    port = procs.free_port(socket.SOCK_DGRAM)
    zport = procs.free_port()
    proc = procs.start(
        "mrt.cli",
        "--eiger-zmq-host-and-port",
        f"tcp://{HOST}:{zport}",
        "--udp-host",
        HOST,
        "--udp-port",
        str(port),
        "-l",
        str(tmp / "mr_t.log"),
    )
    try:
        assert procs.wait_until(lambda: udp_pong(port) is not None, 15), "mr_t never answered"
        yield proc, port
    finally:
        procs.stop(proc)


def udp_pong(port: int, junk: list[bytes] = ()):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.connect((HOST, port))
        for d in junk:
            s.send(d[:1400])
        s.send(MP.Ping().encode())
        for _ in range(len(junk) + 2):  # junk may draw replies of its own
            try:
                data = s.recv(65536)
            except OSError:
                return None
            msg = MP.decode_reply(data, "auto")
            if isinstance(msg, MP.Pong | MP.ExtendedPong | MP.JsonPong):
                return msg
        return None


def fuzz_live(proc, strategy, example) -> None:
    """Run ``example`` on every value hypothesis draws from ``strategy``; then
    the process must be alive, having run the examples, with bounded memory."""
    start = rss(proc.pid)
    runs = []

    @EXAMPLES
    @given(strategy)
    def check(value):
        runs.append(1)
        example(value)

    check()
    assert len(runs) >= 20, "hypothesis ran the examples"
    assert proc.poll() is None
    assert rss(proc.pid) - start < RSS_GROWTH


def test_marserver_command_port_survives_any_bytes(marsim_and_marserver):
    srv, cbase = marsim_and_marserver

    def example(parts):
        send_junk(cbase + int(P.Port.COMM), parts)
        stat = connect(cbase + int(P.Port.STAT))
        try:
            assert len(recv_exact(stat, 404)) == 404, "STATUS records keep flowing"
        finally:
            stat.close()

    fuzz_live(srv, JUNK, example)


def test_server_hdw_survives_any_bytes(mca_server):
    proc, port = mca_server

    def example(parts):
        send_junk(port, parts)
        with socket.create_connection((HOST, port), timeout=5) as s:
            s.sendall(b"=: 7 get_status\n")
            assert s.recv(100).startswith(b"@: 7 "), "an honest client is served"

    fuzz_live(proc, JUNK, example)


def test_mr_t_udp_port_survives_any_datagrams(mr_t):
    proc, port = mr_t

    def example(datagrams):
        assert udp_pong(port, datagrams) is not None, "a ping is answered after junk"

    fuzz_live(proc, st.lists(st.binary(min_size=1, max_size=1400), min_size=1, max_size=8), example)
