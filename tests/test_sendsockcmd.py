"""sendsockcmd against real servers on loopback."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support import procs

pytestmark = pytest.mark.timeout(60)

MOD = "common.sendsockcmd"


@pytest.fixture
def echod(port):
    with procs.running("tests.echod", "-p", str(port), wait_for=port):
        yield port


def test_reply_printed(echod):
    res = procs.run(MOD, "-h", "127.0.0.1", "-p", str(echod), "exptime", "2000")
    assert res.returncode == 0
    assert res.stdout == b"exptime 2000 DONE\n"


def test_options_after_command(echod):
    res = procs.run(MOD, "-p", str(echod), "open", "-t", "2000", "-h", "localhost")
    assert (res.returncode, res.stdout) == (0, b"open DONE\n")


def test_timeout_honoured(echod):
    t0 = time.monotonic()
    res = procs.run(MOD, "-p", str(echod), "-t", "500", "silent")
    dt = time.monotonic() - t0
    assert res.returncode == 3
    assert b"TIMEOUT" in res.stdout
    assert dt < 10


def test_no_wait_mode(echod):
    res = procs.run(MOD, "-p", str(echod), "-m", "1", "silent")
    assert (res.returncode, res.stdout) == (0, b"cmd_sent\n")


def test_connection_refused():
    res = procs.run(MOD, "-p", str(procs.free_port()), "status")
    assert res.returncode == 1
    assert res.stdout.startswith(b"ERROR ")


def test_usage_errors():
    assert procs.run(MOD, "-p", "0", "x").returncode == 2
    assert procs.run(MOD).returncode == 2


def _serve_once(reply: bytes, close: bool, ready: threading.Event, holder: list):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        holder.append(srv.getsockname()[1])
        ready.set()
        srv.settimeout(10)
        conn, _ = srv.accept()
        with conn:
            conn.recv(1000)
            conn.sendall(reply)
            if not close:
                time.sleep(2)


@pytest.mark.parametrize(
    "reply,close,args,expect",
    [
        (b"@: 1 5#hello\n", True, [], b"@: 1 5#hello\n"),  # until the server closes
        (b"line one\nERROR bad\n", False, [], b"line one\nERROR bad\n"),  # ERROR line ends it
        (b"no end marker\n", False, ["-i", "200"], b"no end marker\n"),  # idle time ends it
    ],
)
def test_reply_ends(reply, close, args, expect):
    ready = threading.Event()
    holder: list = []
    t = threading.Thread(target=_serve_once, args=(reply, close, ready, holder), daemon=True)
    t.start()
    assert ready.wait(5)
    t0 = time.monotonic()
    res = procs.run(MOD, "-p", str(holder[0]), "-t", "5000", *args, "cmd")
    assert res.returncode == 0
    assert res.stdout == expect
    assert time.monotonic() - t0 < 1.9
    t.join(5)


def test_a_value_then_error_line_ends_the_reply(port):
    """camerad answers a refused set command with ``VALUE ERROR``: that ends
    the reply (exit 0) instead of waiting out the timeout."""
    srv = socket.create_server(("127.0.0.1", port))
    got = []

    def serve():
        conn, _ = srv.accept()
        with conn:
            got.append(conn.recv(100))
            conn.sendall(b"100 ERROR\n")
            conn.settimeout(30)
            try:
                conn.recv(100)  # keep the connection open until the client leaves
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        res = procs.run(MOD, "-p", str(port), "-t", "20000", "exptime", "abc")
    finally:
        srv.close()
    t.join(5)
    assert got == [b"exptime abc\n"]
    assert (res.returncode, res.stdout) == (0, b"100 ERROR\n")
