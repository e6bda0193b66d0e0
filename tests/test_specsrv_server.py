"""specsrv.server in process: the command queue and ^C, with real sockets."""

from __future__ import annotations

import socket
import threading

import pytest

from specsrv import protocol as P
from specsrv.engine import SpecEngine
from specsrv.motors import parse_config
from specsrv.server import ClientConnection

pytestmark = pytest.mark.timeout(60)

CONFIG = "motor m1 steps=1000 low=-50 high=50\ncounter sec type=timer\n"


@pytest.fixture
def spec():
    srv = SpecEngine("unit", parse_config(CONFIG))
    pairs = []

    def client():
        a, b = socket.socketpair()
        pairs.append((a, b))
        c = ClientConnection(srv, a, "unit-peer")
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
        out += [p for p in P.events(dec, sock.recv(65536)) if isinstance(p, P.Packet)]
    return out


def run_with_guard(spec: SpecEngine, job) -> bool:
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


def test_queued_command_text_per_client_is_bounded(spec):
    from specsrv.engine import MAX_PENDING_BYTES_PER_CLIENT, PropError

    c, _ = spec.client()
    other, _ = spec.client()
    big = "x=1;" * (MAX_PENDING_BYTES_PER_CLIENT // 16)  # a quarter of the bound
    for _ in range(4):
        spec.push(c, big)
    with pytest.raises(PropError):
        spec.push(c, big)  # nothing runs the queue: a fifth would pass the bound
    spec.push(other, big)  # another client is not affected
    spec.abort_from(c)  # and SV_ABORT frees the space
    spec.push(c, big)
    assert [j.client for j in spec.queue] == [other, c]


def test_initial_event_cannot_follow_a_newer_event(spec):
    """A move that starts while REGISTER reads move_done: 0 must not come after 1."""
    c, peer = spec.client()
    read = spec.read_property
    mover = threading.Thread(target=spec.hw.start_moves, args=({"m1": 1.0},), daemon=True)

    def read_then_move(prop):
        value = read(prop)
        if prop == "motor/m1/move_done":
            mover.start()  # the move starts between the read and the initial event
            mover.join(0.5)
        return value

    spec.read_property = read_then_move
    c.handle_packet(P.Packet(cmd=P.Cmd.REGISTER, name="motor/m1/move_done"))
    mover.join(5)
    events = [(p.name, p.text()) for p in replies(peer, 2)]
    assert events == [("motor/m1/move_done", "0"), ("motor/m1/move_done", "1")]
    spec.hw.abort()


def test_commands_of_a_client_that_left_stay_queued_and_the_queue_is_bounded(spec):
    from specsrv.engine import MAX_QUEUE, PropError

    c, _ = spec.client()
    spec.push(c, "left_behind = 1")
    spec.push(c, "2+2", sn=3, reply=True)
    spec.forget(c)
    assert [(j.client, j.text) for j in spec.queue] == [(None, "left_behind = 1"), (None, "2+2")]
    while len(spec.queue) < MAX_QUEUE:
        spec.push(None, "x = 1")
    other, _ = spec.client()
    with pytest.raises(PropError):
        spec.push(other, "1")


def test_count_send_needs_a_number(spec):
    from specsrv.engine import PropError

    c, _ = spec.client()
    with pytest.raises(PropError):
        spec.send_property(c, P.make_packet(P.Cmd.CHAN_SEND, "2; exit", name="scaler/.all./count"))
    assert not spec.queue
    spec.send_property(c, P.make_packet(P.Cmd.CHAN_SEND, " 0.5 ", name="scaler/.all./count"))
    assert [j.text for j in spec.queue] == ["count_em 0.5\n"]
