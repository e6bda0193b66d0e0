"""specsrv.server in process: the command queue and ^C, with real sockets."""

from __future__ import annotations

import socket
import threading

import pytest

from specsrv import protocol as P
from specsrv.server import ClientHandler, SpecServer
from specsrv.sim import parse_config

pytestmark = pytest.mark.timeout(60)

CONFIG = "motor m1 steps=1000 low=-50 high=50\ncounter sec type=timer\n"


@pytest.fixture
def spec():
    srv = SpecServer("unit", parse_config(CONFIG))
    pairs = []

    def client():
        a, b = socket.socketpair()
        pairs.append((a, b))
        c = ClientHandler(srv, a, "unit-peer")
        c.writer.start()
        return c, b

    srv.client = client
    yield srv
    for a, b in pairs:
        a.close()
        b.close()


def replies(sock: socket.socket, n: int) -> list[P.Packet]:
    dec = P.Decoder()
    out: list[P.Packet] = []
    sock.settimeout(5)
    while len(out) < n:
        out += [p for p in dec.feed(sock.recv(65536)) if isinstance(p, P.Packet)]
    return out


def run_with_guard(spec: SpecServer, job) -> bool:
    """Run one job in a thread; True if it ended by itself within 5 s."""
    t = threading.Thread(target=spec._run_job, args=(job,), daemon=True)
    t.start()
    t.join(5)
    ended = not t.is_alive()
    if not ended:
        spec.interp.abort()
        t.join(5)
    return ended


def test_abort_between_dequeue_and_start_stops_the_command(spec):
    c, peer = spec.client()
    spec.push(c, "while (1) { unit_loop++ }", sn=1, reply=True)
    job = spec.next_job(0)
    assert job is not None and spec.current is job
    spec.abort_from(c)  # SV_ABORT arrives before the interpreter starts the job
    assert run_with_guard(spec, job), "the abort was lost: the loop kept running"
    assert spec.interp.lookup("unit_loop") is None  # not one statement ran


def test_abort_while_idle_does_not_abort_the_next_command(spec):
    c, peer = spec.client()
    spec.interp.abort()  # ^C with nothing running
    spec.push(c, "1+1", sn=7, reply=True)
    job = spec.next_job(0)
    assert run_with_guard(spec, job)
    (r,) = replies(peer, 1)
    assert (r.cmd, r.sn, r.type, r.text()) == (P.Cmd.REPLY, 7, P.Type.STRING, "2")
