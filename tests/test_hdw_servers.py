"""mca_server and img_server end to end over real loopback sockets."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from specsrv.hdw import protocol as P
from specsrv.hdw.client import Client, HdwError
from specsrv.hdw.img import DARK, SimImage
from specsrv.hdw.mca import SimMca
from tests.support import procs
from tests.support.hdw_helpers import LOOP, MemoryMca, Raw, inproc, make_device

pytestmark = pytest.mark.timeout(120)

TYPES = sorted(P.DATA_TYPES)


def small_values(type_name: str, n: int) -> np.ndarray:
    dt = P.dtype_for(type_name, "=")
    vals = np.arange(n) * 3 + 1
    if dt.kind == "i":
        vals = vals * (-1) ** np.arange(n)
    if dt.kind == "f":
        return (vals * 0.25).astype(dt)
    return vals.astype(dt)


@pytest.mark.parametrize("type_name", TYPES)
def test_mca_every_type_both_byte_orders(type_name):
    dev = make_device(SimMca, "-t", type_name, "-n", "64", "-e", "1", "-s", "1", "-r", "5000")
    with inproc(dev) as srv:
        little = Client(LOOP, srv.port).connect()
        big = Client(LOOP, srv.port, byte_order=">").connect()
        raw = Raw(srv.port)
        try:
            assert little.hello("mca_server").description == "Simulated MCA, 1 elements"
            assert little.config() == P.Config(type_name, (64,))
            little.clear()
            little.run(0.15, 2)
            assert little.wait(5)
            a = little.read(0, 63)
            assert a.dtype == P.dtype_for(type_name, "=") and a.shape == (64,)
            assert a.sum() > 0
            assert np.array_equal(big.read(0, 63), a)
            # the bytes on the wire, in each order
            for order, name in (("<", "little"), (">", "big")):
                assert raw.ask(1 if order == "<" else 3, f"set byte_order {name}").text == name
                sn = 2 if order == "<" else 4
                raw.send(f"=: {sn} read 10 19\n".encode())
                assert raw.line() == b"@: %d 2#10" % sn
                assert (
                    raw.data(10 * a.itemsize)
                    == a[10:20].astype(a.dtype.newbyteorder(order)).tobytes()
                )
                assert raw.ask(sn + 10, "xfer_done") == P.Reply(sn + 10, "")
            # write in both orders and read back
            vals = small_values(type_name, 5)
            big.write(3, 7, vals)
            assert np.array_equal(little.read(3, 7), vals)
            little.write(0, 4, vals[::-1])
            assert np.array_equal(big.read(0, 4), vals[::-1])
        finally:
            little.close(), big.close(), raw.close()


@pytest.mark.parametrize("type_name", TYPES)
def test_image_every_type_both_byte_orders_and_roi(type_name):
    dev = make_device(SimImage, "-t", type_name, "-r", "24", "-c", "40", "-s", "2")
    with inproc(dev) as srv:
        with Client(LOOP, srv.port) as c, Client(LOOP, srv.port, byte_order=">") as cb:
            c.hello("img_server")
            assert c.config() == P.Config(type_name, (24, 40))
            c.run(0.1, 2)
            assert c.wait(5)
            full = c.read_image(0, 23, 0, 39)
            assert full.shape == (24, 40) and full.dtype == P.dtype_for(type_name, "=")
            assert np.array_equal(cb.read_image(0, 23, 0, 39), full)
            roi = c.read_image(5, 9, 17, 30)
            assert np.array_equal(roi, full[5:10, 17:31])
            with Raw(srv.port) as raw:
                raw.ask(1, "set byte_order big")
                raw.send(b"=: 2 read 1 2 3 5\n")
                assert raw.line() == f"@: 2 {len(f'6 {type_name}')}#6 {type_name}".encode()
                want = full[1:3, 3:6].astype(full.dtype.newbyteorder(">")).tobytes()
                assert raw.data(len(want)) == want
                assert raw.ask(3, "xfer_done").ok
            vals = small_values(type_name, 6).reshape(2, 3)
            cb.write_image(10, 11, 20, 22, vals)
            assert np.array_equal(c.read_image(10, 11, 20, 22), vals)
            assert np.array_equal(c.read_image(9, 9, 20, 22), full[9, 20:23].reshape(1, 3))


def test_mca_sub_addresses():
    dev = make_device(SimMca, "-e", "3", "-n", "16")
    with inproc(dev) as srv, Client(LOOP, srv.port) as c:
        c.hello()
        c.clear()
        c.write(0, 2, [1, 2, 3], addr="0.1")
        c.write(0, 2, [7, 8, 9], addr="0:2")
        assert c.read(0, 2).tolist() == [0, 0, 0]  # no address = -1 = element 0
        assert c.read(0, 2, addr="0.0").tolist() == [0, 0, 0]
        assert c.read(0, 2, addr="0.1").tolist() == [1, 2, 3]
        assert c.read(0, 2, addr="0:2").tolist() == [7, 8, 9]
        assert c.get("total", addr="0.2") == "24"
        with pytest.raises(HdwError, match="no element 3"):
            c.read(0, 2, addr="0.3")
        with pytest.raises(HdwError, match="bad device address"):
            c.get("total", addr="x.y")
    img = make_device(SimImage, "-r", "8", "-c", "8")
    with inproc(img) as srv, Client(LOOP, srv.port) as c:
        assert c.read_image(0, 1, 0, 1, addr="0.0").shape == (2, 2)
        with pytest.raises(HdwError, match="sub-address 1"):
            c.read_image(0, 1, 0, 1, addr="0.1")


def test_mca_server_process_acquisition(port, spawn):
    p = spawn("specsrv.hdw.mca", "-p", port, "--bind", LOOP, "-L", f"/tmp/hdwtest-{port}.lock",
              "-n", "2048", "-r", "50000", "-s", "3")  # fmt: skip
    procs.wait_port(port, proc=p)
    with Client(LOOP, port) as c:
        with pytest.raises(HdwError, match="this is mca_server, not img_server"):
            c.hello("img_server")
        info = c.hello("mca_server")
        assert info.version == "V2" and info.pid == p.pid
        assert c.config("0") == P.Config("long", (2048,))
        c.clear()
        assert c.read(0, 2047).sum() == 0
        # preset in seconds (tcount), honoured exactly in counted time
        c.run(0.4, 2)
        assert c.status() == 1
        assert c.wait(10)
        assert c.get("real_time") == "0.400"
        spec1 = c.read(0, 2047)
        total = int(spec1.sum())
        assert total == int(c.get("total")) and 10000 < total < 30000
        # peaks on a background: the top channels sit near the configured peaks
        assert abs(int(np.argmax(spec1)) - int(0.16 * 2048)) < 40
        assert spec1[1900:].mean() < spec1.max() / 20
        # a second run adds counts (no clear), halt ends an open-ended run
        c.run(0, 3)
        assert c.status() == 1
        c.halt(1)
        assert c.status() == 0
        assert c.read(0, 2047).sum() >= total
        # mcount: preset in monitor counts
        c.set("monitor_rate", 1000)
        c.clear()
        c.run(150, 1)
        assert c.wait(10)
        assert c.get("real_time") == "0.150"
        assert c.get("preset") == "150"
        with pytest.raises(HdwError, match="read-only"):
            c.set("total", 5)
        with pytest.raises(HdwError, match="unknown parameter"):
            c.get("nonsense")
        c.goodbye(1)  # without -Q the server stays
    with Client(LOOP, port) as c:
        assert c.status() == 0


def test_img_server_process_exposure_and_roi(port, spawn):
    p = spawn("specsrv.hdw.img", "-p", port, "--bind", LOOP, "-L", f"/tmp/hdwtest-{port}.lock",
              "-s", "4")  # fmt: skip
    procs.wait_port(port, proc=p)
    with Client(LOOP, port) as c:
        assert "Simulated image detector 512x512" in c.hello("img_server").description
        assert c.config() == P.Config("ushort", (512, 512))
        c.clear()
        c.run(0.3, 2)
        assert c.status() == 1
        assert c.wait(10)
        assert c.get("exposure") == "0.300" and c.get("frames") == "1"
        img = c.read_image(0, 511, 0, 511)
        assert img.dtype == np.uint16
        assert str(int(img.sum())) == c.get("sum")
        # rings: the radial profile around the beam centre has clear maxima
        cy, cx = (float(v) for v in c.get("beam_center").split())
        yy, xx = np.indices(img.shape)
        r = np.hypot(yy - cy, xx - cx).astype(int)
        profile = np.bincount(r.ravel(), img.ravel()) / np.maximum(np.bincount(r.ravel()), 1)
        assert profile[int(0.12 * 362)] > 3 * profile[int(0.16 * 362)]
        assert profile[:5].mean() < profile[int(0.12 * 362)] / 10  # beam stop
        roi = c.read_image(100, 163, 200, 327)
        assert np.array_equal(roi, img[100:164, 200:328])
        # a longer exposure gives proportionally more signal
        c.run(0.6, 2)
        assert c.wait(10)
        dark = DARK * img.size
        ratio = (float(c.get("sum")) - dark) / (float(img.sum()) - dark)
        assert 1.6 < ratio < 2.4
        with pytest.raises(HdwError, match="rows 0 to 512 outside"):
            c.read_image(0, 512, 0, 10)


def test_hdw_client_command_line(port, spawn, tmp_path):
    p = spawn("specsrv.hdw.mca", "-p", port, "--bind", LOOP, "-L", f"/tmp/hdwtest-{port}.lock",
              "-n", "8")  # fmt: skip
    procs.wait_port(port, proc=p)
    mod = "specsrv.hdw.client_cli"

    def cli(*args, input=None):
        return procs.run(mod, "-H", LOOP, "-p", port, *args, input=input)

    res = cli("-n", "mca_server", "config", ";", "clear", ";", "get_status")
    assert res.returncode == 0 and res.stdout.decode().split("\n")[:2] == ["long 8", "0"]
    res = cli("write", "2", "4", input=b"5 6 7\n")
    assert res.returncode == 0, res.stderr
    res = cli("read", "0", "7")
    assert res.stdout.decode().split() == ["0", "0", "5", "6", "7", "0", "0", "0"]
    res = cli("-a", "0.1", "read", "2", "4", ";", "run", "0.1", "2;", "wait", ";", "get_status")
    assert res.stdout.decode().split() == ["0", "0", "0", "0"]
    out = tmp_path / "d.npy"
    assert cli("-o", str(out), "read", "0", "7").returncode == 0
    assert np.load(out).shape == (8,)
    res = cli("nosuch")
    assert res.returncode == 1 and "unknown command" in res.stderr.decode()
    res = cli("-n", "img_server", "config")
    assert res.returncode == 1 and "this is mca_server" in res.stderr.decode()
    closed = procs.free_port()
    res = procs.run(mod, "-H", LOOP, "-p", closed, "get_status")
    assert res.returncode == 3
    assert res.stderr.decode() == f"hdw-client: {LOOP}:{closed}: Connection refused\n"
    res = procs.run(mod, "-p", "x", "get_status")
    assert res.returncode == 2
    res = cli("exit")
    assert res.returncode == 0
    assert p.wait(10) == 0


def test_server_help_and_bad_options():
    res = procs.run("specsrv.hdw.mca", "-h")
    out = res.stdout.decode()
    assert res.returncode == 0
    for flag in ("-p PORT", "-l LOGFILE", "-L LOCKFILE", "-v LEVEL", "-d", "-k", "-Q"):
        assert flag in out
    assert "/tmp/mca_server-PORT.lock" in out
    bad = procs.run("specsrv.hdw.img", "-t", "int", "-p", "1")
    assert bad.returncode == 2 and b"unknown data type" in bad.stderr
    bad = procs.run("specsrv.hdw.img", "-v", "5")
    assert bad.returncode == 2


def test_goodbye_gets_no_reply(port, spawn):
    p = spawn("specsrv.hdw.mca", "-p", port, "--bind", LOOP, "-L", f"/tmp/hdwtest-{port}.lock",
              stderr=subprocess.DEVNULL)  # fmt: skip
    procs.wait_port(port, proc=p)
    with Raw(port) as raw:
        assert raw.ask(1, "hello mca_server").text.startswith("hello back V2 ")
        raw.send(b"=: 2 goodbye 0\n")
        assert raw.reader.read_exact(0) == b""
        assert raw.nothing_within(0.3)
        assert raw.sock.recv(64) == b""  # no reply at all: the server just closed
    with Raw(port) as raw:
        assert raw.ask(1, "get_status").text == "0"


def man_page_example() -> str:
    """The Python example in specsrv-hdw(7), as mandoc renders it."""
    page = (procs.ROOT / "man" / "specsrv-hdw.7").read_text()
    block = page.split(".Sh WRITING A DEVICE SERVER", 1)[1].split(
        ".Bd -literal -offset indent\n", 1
    )[1]
    return block.split("\n.Ed\n", 1)[0].replace("\\e", "\\")


def test_the_man_page_example_device_works():
    namespace: dict = {"__name__": "example"}
    exec(compile(man_page_example(), "specsrv-hdw.7", "exec"), namespace)
    counter = namespace["Counter"]()
    with inproc(counter) as srv, Client(LOOP, srv.port) as c:
        assert c.hello("scaler_server").description == "Scaler card"
        assert c.config() == P.Config("ulong", (8,))
        c.run(1, 4)
        assert c.status() == 1
        c.halt()
        assert c.status() == 0
        assert c.get("gate") == "1"
        assert c.read(0, 7).tolist() == [0] * 8
        with pytest.raises(HdwError, match="unknown parameter"):
            c.get("other")


def test_client_write_refuses_values_the_native_type_cannot_hold():
    dev = make_device(SimMca, "-t", "ushort", "-n", "8", "-e", "1")
    with inproc(dev) as srv, Client(LOOP, srv.port) as c:
        c.write(0, 2, [1, 2, 65535])
        for bad in ([-1, 0, 0], [0, 65536, 0], [0.5, 1, 2]):
            with pytest.raises(P.ProtocolError):
                c.write(0, 2, bad)
        # nothing was sent: the connection is in step and the data unchanged
        assert c.read(0, 2).tolist() == [1, 2, 65535]


def test_hdw_client_writes_64_bit_values_exactly():
    dev = MemoryMca("ulong64", 4)  # exact, unlike the simulators' float64 counts
    with inproc(dev) as srv:

        def cli(*args, input=None):
            return procs.run("specsrv.hdw.client_cli", "-H", LOOP, "-p", srv.port, *args,
                             input=input)  # fmt: skip

        values = [2**64 - 1, 2**63 + 5, 2**53 + 1, 7]
        res = cli("write", "0", "3", input=" ".join(map(str, values)).encode())
        assert res.returncode == 0, res.stderr
        assert dev.data.tolist() == values
        assert cli("read", "0", "3").stdout.decode().split() == list(map(str, values))
        for text, msg in ((b"1.5 2 3 4", b"whole numbers"), (b"1 x 3 4", b"not a number"),
                          (b"-1 0 0 0", b"must lie in"),
                          (f"{2**64} 0 0 0".encode(), b"must lie in")):  # fmt: skip
            res = cli("write", "0", "3", input=text)
            assert res.returncode == 1 and msg in res.stderr, res.stderr
        assert dev.data.tolist() == values
        assert cli("-t", "0", "get_status").returncode == 2


def test_beam_center_may_lie_off_the_sensor():
    dev = make_device(SimImage, "-r", "16", "-c", "16")
    with inproc(dev) as srv, Client(LOOP, srv.port) as c:
        assert c.set("beam_center", -20, 0) == "-20 0"
        assert c.get("beam_center") == "-20 0"
        for bad in (("nan", 3), ("x", 3)):
            with pytest.raises(HdwError, match="beam_center"):
                c.set("beam_center", *bad)
        assert c.get("beam_center") == "-20 0"


@pytest.mark.parametrize("cls", [SimMca, SimImage])
def test_numeric_parameters_refuse_infinity_and_nan(cls):
    dev = make_device(cls, "-n", "8") if cls is SimMca else make_device(cls, "-r", "8", "-c", "8")
    rate = "rate" if cls is SimMca else "flux"
    with inproc(dev) as srv, Client(LOOP, srv.port) as c:
        for par in ("monitor_rate", rate):
            before = c.get(par)
            for bad in ("inf", "nan", "-1", "0", "x"):
                with pytest.raises(HdwError, match=par):
                    c.set(par, bad)
            assert c.get(par) == before
