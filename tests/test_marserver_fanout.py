"""marserver's fan-out classes on real loopback TCP connections (in-process)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from common.outqueue import OutQueue
from marserver import protocol as P
from marserver.client import recv_exact
from marserver.relay import Fanout, SpliceFanout
from marserver.server import MarServer, Settings
from tests.support.marserver_rig import is_closed
from tests.support.marserver_rig import wait_for as wait_until

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


# -- the by-reference fan-out (splice/tee), as marserver uses it for DATA

needs_tee = pytest.mark.skipif(not SpliceFanout.available(), reason="no tee(2) here")


def _pump(fan: SpliceFanout, src: socket.socket, size: int) -> threading.Thread:
    t = threading.Thread(target=fan.pump, args=(src, size, threading.Event()), daemon=True)
    t.start()
    return t


@needs_tee
def test_splice_fanout_every_client_gets_whole_records_in_order(pairs):
    (hw, src), *clients = pairs(4)
    fan = SpliceFanout("TEST")
    outs = [fan.attach(s, max_bytes=8 << 20, name=f"c{i}") for i, (s, _) in enumerate(clients)]
    pump = _pump(fan, src, 1000)
    recs = records(3000, 1000)
    wire = b"".join(recs) + b"\x01" * 333  # and an unfinished record, held back
    got: list[bytes] = [b""] * 3

    def read(i):
        got[i] = recv_exact(clients[i][1], 1000 * len(recs), timeout=30)

    ts = [threading.Thread(target=read, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for i in range(0, len(wire), 7777):  # pieces that split records anywhere
        hw.sendall(wire[i : i + 7777])
    for t in ts:
        t.join(30)
    assert got == [b"".join(recs)] * 3
    assert fan.records == 3000
    hw.close()
    pump.join(5)
    assert not pump.is_alive() and fan.pending == 333
    for o in outs:
        o.close()
        o.join(2)
        assert not o.thread.is_alive()


@needs_tee
def test_splice_fanout_slow_reader_goes_through_the_queue_and_back_losing_nothing(pairs):
    (hw, src), (fs, fc), (ss, sc) = pairs(1)[0], *pairs(1), *pairs(1, rcvbuf=4096)
    fan = SpliceFanout("TEST")
    fast = fan.attach(fs, max_bytes=64 << 20, name="fast")
    slow = fan.attach(ss, max_bytes=64 << 20, name="slow")
    _pump(fan, src, 1000)
    recs = records(6000, 1000)
    got = [bytearray(), bytearray()]

    def read(i, sock, pause):
        sock.settimeout(30)
        while len(got[i]) < len(recs) * 1000:
            chunk = sock.recv(65536)
            if not chunk:
                return
            got[i] += chunk
            if pause and len(got[i]) < 3_000_000:
                time.sleep(0.002)  # slow at first: its pipe fills, the queue takes over

    ts = [
        threading.Thread(target=read, args=(0, fc, False)),
        threading.Thread(target=read, args=(1, sc, True)),
    ]
    for t in ts:
        t.start()
    hw.sendall(b"".join(recs))
    for t in ts:
        t.join(60)
    assert [bytes(g) for g in got] == [b"".join(recs)] * 2
    assert not fast.closed and not slow.closed
    hw.close()


@needs_tee
def test_splice_fanout_stalled_client_is_dropped_and_the_others_lose_nothing(pairs):
    (hw, src), (fs, fc), (ss, sc) = pairs(1)[0], *pairs(1), *pairs(1, rcvbuf=4096)
    fan = SpliceFanout("TEST")
    fast = fan.attach(fs, max_bytes=2_000_000, name="fast")
    stalled = fan.attach(ss, max_bytes=2_000_000, name="stalled")
    _pump(fan, src, 1000)
    recs = records(8000, 1000)
    got = bytearray()

    def read():
        fc.settimeout(30)
        while len(got) < len(recs) * 1000:
            chunk = fc.recv(1 << 20)
            if not chunk:
                return
            got.extend(chunk)

    t = threading.Thread(target=read)
    t.start()
    for i in range(0, len(recs), 100):
        hw.sendall(b"".join(recs[i : i + 100]))
        # the source goes at the pace of the reading client (no back-pressure here):
        # the stalled one falls behind, the reading one never does
        assert wait_until(lambda i=i: len(got) >= (i + 100) * 1000 - 500_000, 10)
    t.join(30)
    assert bytes(got) == b"".join(recs)
    assert stalled.closed and "fell behind" in stalled.reason
    assert not fast.closed
    assert is_closed(sc)
    hw.close()


def test_marserver_uses_the_splice_fanout_for_data_unless_swapping():
    if not SpliceFanout.available():
        pytest.skip("no tee(2) here")
    assert isinstance(_fanout_of(), SpliceFanout)
    srv = MarServer(Settings(hw=P.MAR345, swap=True))
    assert not any(isinstance(f, SpliceFanout) for f in srv.fanouts.values())
    assert type(MarServer(Settings(hw=P.MAR345)).fanouts[P.Port.STAT]) is Fanout


def _pipe_fds() -> set[int]:
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("pipe:"):
                out.add(int(name))
        except OSError:
            pass
    return out


@needs_tee
def test_pipes_have_the_asked_size_and_leak_nothing():
    from common.outqueue import PIPE_MAX, make_pipe

    for want in (1, 60_000, PIPE_MAX, 1 << 40):  # the last is refused: default size
        before = _pipe_fds()
        r, w, size = make_pipe(want)
        try:
            # exactly the two ends were opened (the size fallback opens nothing)
            assert _pipe_fds() - before == {r, w}
            assert size >= min(want, PIPE_MAX) if want <= PIPE_MAX else size >= 4096
        finally:
            os.close(r)
            os.close(w)


# -- common.outqueue.OutQueue itself


def test_outqueue_gathered_partial_writes_keep_every_byte_in_order(pairs):
    ((s, c),) = pairs(1, rcvbuf=8192)
    q = OutQueue(s, max_bytes=64 << 20, name="t").start()
    parts = [bytes([i % 251]) * (1 + (i * 37) % 5000) for i in range(3000)]
    for i in range(0, len(parts), 3):
        assert q.put(*parts[i : i + 3])  # several parts queued together, in order
    want = b"".join(parts)
    assert recv_exact(c, len(want), timeout=30) == want
    assert q.flush_and_close(5) and q.sent == len(want)
    q.join(2)
    assert not q.thread.is_alive()


def test_outqueue_record_bound_drops_the_client(pairs):
    ((s, c),) = pairs(1, rcvbuf=4096)
    seen = []
    q = OutQueue(
        s, max_bytes=1 << 30, max_records=50, name="t", on_overflow=lambda *a: seen.append(a[1:])
    ).start()
    ok = [q.put(b"x" * 1000) for _ in range(2000)]
    assert not all(ok) and q.closed and "50 records" in q.reason
    assert seen and seen[0][1] <= 50
    assert not q.put(b"more")
    assert is_closed(c)
