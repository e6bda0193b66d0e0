"""Fuzz: any bytes to the Archon and camerad cores and servers (common.badinput).

The pure stream cores give typed messages or BadInput values for any input
in any split and never hold more than their line limit; the real programs
keep serving and stay bounded in memory after a burst of junk.
"""

from __future__ import annotations

import os
import random
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archonsrv import archon as A
from archonsrv import protocol as P
from tests.support import procs
from tests.support.archon_rig import Rig

pytestmark = pytest.mark.timeout(120)

chunks = st.lists(st.binary(max_size=300), max_size=30)
lines = st.lists(
    st.one_of(
        st.binary(max_size=80),
        st.just(b"\n"),
        st.builds(
            lambda r, t: b">%02X" % r + t + b"\n", st.integers(0, 255), st.binary(max_size=40)
        ),
        st.builds(
            lambda r, t: b"<%02X" % r + t + b"\n", st.integers(0, 255), st.binary(max_size=40)
        ),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(parts=st.one_of(chunks, lines))
def test_archon_stream_cores_never_raise_and_stay_bounded(parts):
    for stream, message in (
        (A.CommandStream(64), A.ArchonCommand),
        (A.ReplyStream(64), A.ArchonReply),
    ):
        for part in parts:
            stream.feed(part)
            for _ in range(1000):
                event = stream.next_event()
                if event is None:
                    break
                assert isinstance(event, message | A.BadInput)
            assert len(stream) <= 64 + 1
        assert stream.next_event() is None


@settings(max_examples=150, deadline=None)
@given(parts=st.one_of(chunks, lines))
def test_command_port_core_never_raises_and_stays_bounded(parts):
    stream = P.CommandStream(max_line=64)
    for part in parts:
        stream.feed(part)
        for _ in range(2000):
            event = stream.next_event()
            if event is None:
                break
            assert isinstance(event, P.CommandLine | P.BadInput)
            if isinstance(event, P.CommandLine):
                assert all(32 <= ord(c) < 127 for c in event.text)
        assert len(stream.frames) <= 64
    tail = stream.at_eof()
    assert tail is None or isinstance(tail, P.CommandLine | P.BadInput)
    stream.clear()
    assert stream.next_event() is None


@given(data=st.binary(max_size=9000))
def test_async_decoder_total(data):
    assert isinstance(P.decode_async(data), P.AsyncMessage | P.BadInput)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_junk_bursts_leave_the_servers_serving_and_bounded(tmp_path):
    rng = random.Random(1234)
    with Rig(tmp_path) as rig:
        assert rig.blk("echo warm") == "warm DONE"
        rig.close_blk()  # the junk connections get the blocking port in turn
        rss0 = {p.pid: _rss_kb(p.pid) for p in (rig.cam, rig.sim)}
        for _ in range(60):
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 6000)))
            for port in (rig.nbport, rig.blkport, rig.sim_port):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    try:
                        s.sendall(junk)
                        s.shutdown(socket.SHUT_WR)
                        s.settimeout(0.05 if port != rig.nbport else 4)
                        while s.recv(65536):
                            pass
                    except (TimeoutError, OSError):
                        pass
        rig.close_blk()
        assert procs.wait_until(lambda: rig.nb("echo alive") == "alive DONE", timeout=10)
        assert rig.blk("open") == "DONE"  # archonsim answers camerad still
        assert rig.blk("isopen") == "true DONE"
        for pid, before in rss0.items():
            assert _rss_kb(pid) - before < 50_000, f"RSS of {pid} grew by more than 50 MB"
        assert os.path.exists(f"/proc/{rig.cam.pid}")
        # repeated bad-input lines are rate-limited per kind and peer (5, then a count)
        text = "".join(p.read_text() for p in rig.logdir.glob("camerad_*.log"))
        for kind in ("non-printable", "sent together", "previous one completed"):
            assert text.count(kind) <= 5, kind
