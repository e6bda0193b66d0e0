"""Bad input never crashes, hangs or corrupts a server-hardware server."""

from __future__ import annotations

import random
import socket
import threading

import numpy as np
import pytest

from specsrv.hdw import protocol as P
from specsrv.hdw.client import Client
from specsrv.hdw.device import McaDevice
from specsrv.hdw.img import SimImage
from specsrv.hdw.mca import SimMca
from tests.support import procs
from tests.support.hdw_helpers import LOOP, Raw, inproc, make_device

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def mca_proc():
    port = procs.free_port()
    with procs.running(
        "specsrv.hdw.mca", "-p", port, "--bind", LOOP, "-L", f"/tmp/hdwbad-{port}.lock",
        "-n", "64", "-e", "2", wait_for=port,
    ) as p:  # fmt: skip
        yield p, port
        assert p.poll() is None, "the server died"


def still_serving(port: int) -> None:
    with Raw(port) as raw:
        assert raw.ask(1, "get_status").ok
        assert raw.ask(2, "config").text == "long 64"


def test_lines_without_prefix_are_ignored(mca_proc):
    _, port = mca_proc
    with Raw(port) as raw:
        raw.send(b"hello mca_server\n@: 1 0#\n=: notanumber get_status\n\n")
        assert raw.ask(7, "get_status") == P.Reply(7, "0")  # the next reply is for 7


def test_errors_for_bad_commands_and_counts(mca_proc):
    _, port = mca_proc
    with Raw(port) as raw:
        cases = {
            "nosuch 1 2": "unknown command",
            "=:": "unknown command",
            "run": "usage: run",
            "run 1 2 3": "usage: run",
            "halt 2 3": "usage: halt",
            "get_status now": "usage: get_status",
            "get": "usage: get",
            "set rate": "usage: set",
            "read 0": "expected FIRST LAST",
            "read 0 64": "outside 0 to 63",
            "read 10 5": "reversed",
            "read a=0.7 0 5": "no element 7",
            "write 0 64": "outside",
            "write 0 1 2 3": "expected FIRST LAST",
            "set byte_order middle": "byte order",
        }
        for sn, (line, msg) in enumerate(cases.items(), 10):
            rep = raw.ask(sn, line)
            assert not rep.ok and msg in rep.text, (line, rep)
        raw.send(b"=: 99\n")
        assert P.parse_reply(raw.line()) == P.Reply(99, "missing command", ok=False)
    still_serving(port)


def test_megabyte_line_and_binary_garbage(mca_proc):
    _, port = mca_proc
    with Raw(port) as raw:
        raw.send(b"=: 1 get_status " + b"x" * (1 << 20))
        raw.send(b"\n")
        rnd = random.Random(5)
        raw.send(bytes(rnd.getrandbits(8) for _ in range(200_000)))
        raw.send(b"\n=: 500 get_status\n")
        # every reply that comes is well formed; the last one is for 500
        for _ in range(2000):
            rep = P.parse_reply(raw.line())
            if rep.sn == 500:
                assert rep == P.Reply(500, "0")
                break
        else:
            pytest.fail("no reply to the request after the garbage")
    still_serving(port)


def test_disconnects_mid_transfer(mca_proc):
    _, port = mca_proc
    with Client(LOOP, port) as c:
        c.clear()
        c.write(0, 63, np.arange(64), addr="0.1")
    # write: half the data, then gone
    with Raw(port) as raw:
        raw.send(b"=: 1 write a=0.1 0 63\n")
        assert raw.line() == b"@: 1 7#okay 64"
        raw.send(b"\x00" * 100)
    # read: request and leave without reading
    for _ in range(3):
        s = socket.create_connection((LOOP, port))
        s.sendall(b"=: 1 read a=0.1 0 63\n=: 2 read 0 63\n")
        s.close()
    with Client(LOOP, port) as c:
        assert c.read(0, 63, addr="0.1").tolist() == list(range(64))


@pytest.fixture
def mca_fast():
    dev = make_device(SimMca, "-n", "100", "-e", "1")
    with inproc(dev, data_timeout=0.4) as srv:
        with Client(LOOP, srv.port) as c:
            c.write(0, 99, np.full(100, 5))
        yield srv, dev


def test_write_data_that_never_arrive(mca_fast):
    srv, dev = mca_fast
    with Raw(srv.port) as raw:
        raw.send(b"=: 1 write 0 99\n")
        assert raw.line() == b"@: 1 8#okay 100"
        # nothing comes; after the time limit the server reads lines again
        assert raw.nothing_within(0.6)
        assert raw.ask(2, "get_status") == P.Reply(2, "0")
        assert raw.ask(3, "xfer_done") == P.Reply(3, "")  # nothing pending: harmless
    assert dev.counts[0].tolist() == [5.0] * 100


def test_short_write_gets_an_error_for_its_xfer_done(mca_fast):
    srv, dev = mca_fast
    with Raw(srv.port) as raw:
        raw.send(b"=: 1 write 0 99\n")
        assert raw.line() == b"@: 1 8#okay 100"
        raw.send(np.arange(10, dtype="<i4").tobytes() + b"=: 2 xfer_done\n")
        rep = P.parse_reply(raw.line())
        assert rep.sn == 2 and not rep.ok and "short write: 55 of 400" in rep.text
        assert raw.ask(3, "get_status").ok
    assert dev.counts[0].tolist() == [5.0] * 100


def test_long_data_then_more_lines_in_one_segment(mca_fast):
    srv, dev = mca_fast
    with Raw(srv.port) as raw:
        payload = np.arange(100, dtype="<i4").tobytes()
        raw.send(b"=: 1 write 0 99\n" + payload + b"=: 2 xfer_done\n=: 3 read 98 99\n")
        assert raw.line() == b"@: 1 8#okay 100"
        assert raw.line() == b"@: 2 0#"
        assert raw.line() == b"@: 3 1#2"
        assert raw.data(8) == np.array([98, 99], dtype="<i4").tobytes()
    assert dev.counts[0].tolist() == list(range(100))


def test_busy_while_another_command_runs():
    dev = make_device(SimImage, "-r", "8", "-c", "8")
    with inproc(dev) as srv, Raw(srv.port) as raw:
        srv.shared.lock_wait = 0.2
        with srv.shared.lock:
            rep = raw.ask(1, "get_status")
        assert rep == P.Reply(1, "busy", ok=False)
        assert raw.ask(2, "get_status") == P.Reply(2, "0")


class Broken(McaDevice):
    name = "broken"

    def poll(self, addr):
        raise ZeroDivisionError("oops")

    def send_data(self, addr, block):
        block.data = np.zeros(3)  # wrong size


def test_device_bugs_become_error_replies():
    with inproc(Broken()) as srv, Raw(srv.port) as raw:
        rep = raw.ask(1, "get_status")
        assert not rep.ok and "internal error: oops" in rep.text
        rep = raw.ask(2, "read 0 9")
        assert not rep.ok and "3 points for a region of 10" in rep.text
        rep = raw.ask(3, "write 0 9")
        assert not rep.ok and "does not accept data" in rep.text
        assert raw.ask(4, "hello broken").ok


def test_many_clients_at_once_and_connection_limit():
    dev = make_device(SimMca, "-n", "32")
    with inproc(dev, max_connections=4) as srv:
        errors = []

        def worker(k):
            try:
                with Client(LOOP, srv.port) as c:
                    for i in range(20):
                        c.write(0, 0, [k * 100 + i], addr=f"0.{k % 4}")
                        assert c.read(0, 0, addr=f"0.{k % 4}")[0] // 100 in (k % 4, k % 4 + 4)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        extra = [Raw(srv.port) for _ in range(4)]
        with Raw(srv.port) as over:
            assert over.sock.recv(1) == b""  # the fifth connection is closed at once
        for r in extra:
            r.close()
        assert procs.wait_until(lambda: srv.client_count() == 0)


def test_xfer_done_right_after_a_timed_out_write_is_an_error(mca_fast):
    """Its reply says whether the data were stored: they were not."""
    srv, dev = mca_fast
    with Raw(srv.port) as raw:
        raw.send(b"=: 1 write 0 99\n")
        assert raw.line() == b"@: 1 8#okay 100"
        raw.send(np.arange(10, dtype="<i4").tobytes())
        assert raw.nothing_within(0.6)  # past the 0.4 s limit: the write is dropped
        rep = raw.ask(2, "xfer_done")
        assert not rep.ok and "short write: 40 of 400" in rep.text
        assert raw.ask(3, "xfer_done") == P.Reply(3, "")  # only the next request
    assert dev.counts[0].tolist() == [5.0] * 100
