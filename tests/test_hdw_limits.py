"""mca_server / img_server on a shared network: idle connections, junk, allow-list, reload.

Real programs on loopback (127.0.0.1; 127.0.0.2 as a second client host),
except the log-summary test, which runs the real HdwServer in process with a
short LogLimiter period.
"""

from __future__ import annotations

import logging
import signal
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import badinput
from common.ratelimit import LogLimiter
from specsrv.hdw import protocol as P
from specsrv.hdw.mca import SimMca
from specsrv.hdw.server import MIN_IDLE, Connection, eviction_order
from tests.support import procs
from tests.support.hdw_helpers import LOOP, Raw, inproc, make_device

pytestmark = pytest.mark.timeout(90)

OTHER = "127.0.0.2"  # a second loopback host, outside a 127.0.0.1/32 allow-list


def connect_from(src: str, port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect((LOOP, port))
    return s


def served(src: str, port: int) -> bool:
    """True if a client from ``src`` gets a reply to get_status."""
    try:
        s = connect_from(src, port)
    except OSError:
        return False
    try:
        s.sendall(b"=: 1 get_status\n")
        return s.recv(100).startswith(b"@: 1 ")
    except OSError:
        return False
    finally:
        s.close()


def log_lines(path, text: str) -> int:
    try:
        return path.read_text().count(text)
    except FileNotFoundError:
        return 0


def hup_and_wait(proc, logf, what: str = "configuration") -> None:
    """SIGHUP, then wait for the reload's verdict in the log."""
    before = log_lines(logf, f"{what} reloaded") + log_lines(logf, f"{what} rejected")
    proc.send_signal(signal.SIGHUP)
    assert procs.wait_until(
        lambda: log_lines(logf, f"{what} reloaded") + log_lines(logf, f"{what} rejected") > before
    ), logf.read_text()


def start(tmp_path, module: str, *args: str):
    port = procs.free_port()
    logf = tmp_path / "server.log"
    lock = tmp_path / "server.lock"
    proc = procs.start(
        module, "-p", str(port), "--bind", LOOP, "-L", str(lock), "-l", str(logf), "-v", "1", *args
    )
    procs.wait_port(port, proc=proc)
    return proc, port, logf


def test_eviction_order_prefers_silent_then_least_recent():
    now = 100.0
    a = Connection(None, "a", since=10, last=10)  # never sent a request, oldest
    b = Connection(None, "b", since=20, last=20)  # never sent a request
    c = Connection(None, "c", since=5, last=50, requests=3)  # spec, idle since 50
    d = Connection(None, "d", since=5, last=99.5, requests=9)  # active just now
    assert [x.peer for x in eviction_order([d, c, b, a], now)] == ["a", "b", "c"]
    assert eviction_order([d], now) == []
    assert eviction_order([a], 10 + MIN_IDLE / 2) == []


@pytest.mark.parametrize("module", ["specsrv.hdw.mca", "specsrv.hdw.img"])
def test_idle_connections_never_lock_out_a_new_client(tmp_path, module):
    proc, port, logf = start(tmp_path, module)
    try:
        time.sleep(0.3)  # wait_port's probe connection has left the server's table
        # 8 connections that never say anything fill the server
        squatters = [Raw(port) for _ in range(8)]
        time.sleep(MIN_IDLE + 0.2)  # let them all become idle (not a timing assertion)
        spec = Raw(port)
        assert spec.ask(1, "get_status").ok, "spec locked out"
        time.sleep(MIN_IDLE + 0.2)  # spec idle too now, but it has sent requests
        newcomers = [Raw(port) for _ in range(2)]
        for k, r in enumerate(newcomers):
            assert r.ask(1, "get_status").ok, f"newcomer {k} locked out"
        # the silent ones went first, oldest first; spec's connection is still served
        assert spec.ask(2, "get_status").ok
        for r in squatters[:3]:
            r.sock.settimeout(10)
            assert r.sock.recv(1) == b""
        assert all(r.nothing_within(0.1) for r in squatters[3:])
        assert log_lines(logf, "all 8 connections in use: closing") == 3
        for r in [*squatters, *newcomers, spec]:
            r.close()
    finally:
        assert procs.stop(proc) == 0


def test_idle_timeout_closes_a_silent_connection(tmp_path):
    proc, port, logf = start(tmp_path, "specsrv.hdw.mca", "--idle-timeout", "0.5")
    try:
        with Raw(port) as raw:
            raw.sock.settimeout(10)
            assert raw.sock.recv(1) == b""
        assert procs.wait_until(lambda: log_lines(logf, "idle for 0.5 s") == 1)
        assert served(LOOP, port)
    finally:
        procs.stop(proc)


def test_junk_flood_keeps_the_log_small(tmp_path):
    proc, port, logf = start(tmp_path, "specsrv.hdw.mca")
    try:
        size0 = logf.stat().st_size
        junk = b"\n" * 20000 + b"junk line\n" * 5000 + b"=: 5 get_status\n" * 2000
        with Raw(port) as raw:
            raw.send(junk)
            assert P.parse_reply(raw.line()).sn == 5  # answered once, repeats ignored
            assert raw.ask(9, "get_status").ok
        grown = logf.stat().st_size - size0
        # 5 lines per kind and host, then only counted: not 140 bytes per byte
        assert grown < 4000, logf.read_text()[-2000:]
        assert served(LOOP, port)
    finally:
        procs.stop(proc)


def test_junk_flood_summary_says_suppressed(caplog):
    dev = make_device(SimMca, "-n", "16")
    with inproc(dev) as srv:
        now = [0.0]  # the limiter's clock, moved by the test (no real waiting)
        srv.shared.limiter = LogLimiter(
            logging.getLogger("specsrv.hdw.session"), period=60.0, clock=lambda: now[0]
        )
        with caplog.at_level(logging.INFO), Raw(srv.port) as raw:
            raw.send(b"garbage\n" * 200)
            assert raw.ask(1, "get_status").ok
            now[0] += 61.0  # the limiter's period ends
            raw.send(b"more garbage\n")
            assert raw.ask(2, "get_status").ok
        text = caplog.text
        assert text.count("ignored not a request") == 6  # 5, then 1 in the next period
        key = f"{srv.shared.name}: bad input from 127.0.0.1"
        assert f"195 more '{key}' messages suppressed" in text


def test_allow_list_refuses_other_networks(tmp_path):
    proc, port, logf = start(tmp_path, "specsrv.hdw.img", "--allow", "127.0.0.1/32")
    try:
        assert served(LOOP, port)
        assert not served(OTHER, port)
        assert procs.wait_until(lambda: log_lines(logf, f"refused connection from {OTHER}") >= 1)
    finally:
        procs.stop(proc)


@pytest.mark.parametrize("module", ["specsrv.hdw.mca", "specsrv.hdw.img"])
def test_sighup_reloads_the_option_file(tmp_path, module):
    conf = tmp_path / "server.conf"
    conf.write_text("allow = 127.0.0.1/32\nmax-connections = 8\n")
    proc, port, logf = start(tmp_path, module, "--config", str(conf))
    try:
        assert served(LOOP, port) and not served(OTHER, port)
        # a live setting changed: applied on SIGHUP, over a real socket
        conf.write_text("allow = [127.0.0.1/32, 127.0.0.2/32]\nmax-connections = 8\n")
        hup_and_wait(proc, logf)
        assert "applied allow" in logf.read_text()
        assert served(OTHER, port)
        # a broken file: rejected, the settings in force stay
        conf.write_text("allow = 127.0.0.1/32\nmax-connections = lots\n")
        hup_and_wait(proc, logf)
        assert log_lines(logf, "configuration rejected, keeping the old one") == 1
        assert served(OTHER, port)
        # a restart-only option is named, not applied
        conf.write_text("allow = [127.0.0.1/32, 127.0.0.2/32]\nbyte-order = big\n")
        hup_and_wait(proc, logf)
        assert "need a restart" in logf.read_text() and "byte-order" in logf.read_text()
        with Raw(port) as raw:
            assert raw.ask(1, "get byte_order").text == "little"
    finally:
        assert procs.stop(proc) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000), st.lists(st.integers(0, 10**4), max_size=10))
def test_fuzz_request_stream_follows_the_bad_input_convention(data, points):
    stream = P.RequestStream(max_line=128)
    pts = sorted({p % (len(data) + 1) for p in points}) + [len(data)]
    last = 0
    for p in pts:
        stream.feed(data[last:p])
        last = p
        while (ev := stream.next_event()) is not None:
            assert isinstance(ev, P.Request | badinput.BadInput)
            if isinstance(ev, badinput.BadInput):
                assert isinstance(ev, P.BadRequest | P.Garbage | P.Overlong) and ev.reason
        assert stream.buffered() <= 128 + 1
    assert issubclass(P.ProtocolError, badinput.ProtocolError)
