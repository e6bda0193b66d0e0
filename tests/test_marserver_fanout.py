"""marserver's fan-out classes on real loopback TCP connections (in-process)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from common.outqueue import OutQueue
from marserver import protocol as P
from marserver.client import recv_exact
from marserver.relay import Fanout
from marserver.server import MarServer, Settings
from tests.support.marserver_rig import is_closed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pairs():
    """pairs(n, rcvbuf=None) -> [(server_side, client_side)] over 127.0.0.1."""
    made: list[socket.socket] = []

    def make(n: int, rcvbuf: int | None = None):
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(n)
        out = []
        for _ in range(n):
            c = socket.socket()
            if rcvbuf:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            c.connect(lst.getsockname())
            s, _ = lst.accept()
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
            out.append((s, c))
            made.extend((s, c))
        lst.close()
        return out

    yield make
    for s in made:
        s.close()


def outputs(fan: Fanout, socks, limit: int) -> list[OutQueue]:
    outs = []
    for i, (s, _) in enumerate(socks):
        o = OutQueue(s, max_bytes=limit, name=f"TEST-client{i}")
        o.start()
        fan.add(o)
        outs.append(o)
    return outs


def records(n: int, size: int = 404) -> list[bytes]:
    return [i.to_bytes(4, "big") * (size // 4) for i in range(n)]


def test_every_client_gets_every_record_in_order(pairs):
    socks = pairs(3)
    fan = Fanout("TEST", high_water=1 << 20)
    outs = outputs(fan, socks, 2 << 20)
    recs = records(2000)
    got: list[bytes] = [b""] * 3

    def read(i):
        got[i] = recv_exact(socks[i][1], 404 * len(recs))

    ts = [threading.Thread(target=read, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for r in recs:
        fan.publish(r)
    for t in ts:
        t.join(20)
    assert got == [b"".join(recs)] * 3
    for o in outs:
        o.close()
        o.thread.join(2)
        assert not o.thread.is_alive()


def test_stalled_client_is_dropped_and_the_others_lose_nothing(pairs):
    socks = pairs(2, rcvbuf=8192)
    fan = Fanout("TEST", high_water=100_000)
    fast, stalled = outputs(fan, socks, 200_000)
    recs = records(3000, 1000)
    got = bytearray()

    def read():
        got.extend(recv_exact(socks[0][1], len(recs) * 1000, timeout=30))

    t = threading.Thread(target=read)
    t.start()
    for r in recs:
        fan.publish(r)
    t.join(30)
    assert bytes(got) == b"".join(recs)
    assert stalled.closed and "fell behind" in stalled.reason
    assert not fast.closed
    assert is_closed(socks[1][1])


def test_when_every_client_is_behind_the_publisher_waits_instead_of_dropping(pairs):
    socks = pairs(2, rcvbuf=8192)
    fan = Fanout("TEST", high_water=20_000)
    outs = outputs(fan, socks, 60_000)
    recs = records(400, 1000)
    got = [bytearray(), bytearray()]

    def slow_read(i):
        s = socks[i][1]
        while len(got[i]) < len(recs) * 1000:
            s.settimeout(10)
            chunk = s.recv(4096)
            if not chunk:
                return
            got[i] += chunk
            time.sleep(0.001)

    ts = [threading.Thread(target=slow_read, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for r in recs:
        fan.publish(r)
    for t in ts:
        t.join(30)
    assert fan.waits > 0
    assert not any(o.closed for o in outs)
    assert [bytes(g) for g in got] == [b"".join(recs)] * 2


def test_a_lone_stalled_client_holds_the_publisher_only_briefly(pairs):
    socks = pairs(1, rcvbuf=4096)
    fan = Fanout("TEST", high_water=20_000)
    (out,) = outputs(fan, socks, 60_000)
    for r in records(400, 1000):
        fan.publish(r)
    assert out.closed and "fell behind" in out.reason
    # a pause of at most STALL_WAIT after the client's last progress, not one
    # per record (about 40 records fit between the high-water mark and the limit)
    assert 1 <= fan.waits <= 3


def _fanout_of(**kw) -> Fanout:
    """The DATA fan-out exactly as marserver wires it (nothing is started)."""
    srv = MarServer(Settings(hw=P.MAR345, ports=frozenset({P.Port.DATA}), **kw))
    return srv.fanouts[P.Port.DATA]


def test_by_default_the_hardware_reader_never_waits_for_a_stalled_client(pairs):
    # "neither the hardware reader nor any other client ever waits for it":
    # without --backpressure a lone stalled client is dropped at its bound
    # and publish() never pauses, not even once
    socks = pairs(1, rcvbuf=4096)
    fan = _fanout_of(queue_limit=60_000)
    assert fan.high_water == 0
    (out,) = outputs(fan, socks, 60_000)
    for r in records(400, 1000):
        fan.publish(r)
    assert out.closed and "fell behind" in out.reason
    assert fan.waits == 0
    assert is_closed(socks[0][1])


def test_backpressure_is_opt_in():
    assert _fanout_of(queue_limit=60_000, backpressure=True).high_water == 30_000
