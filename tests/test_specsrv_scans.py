"""specsrv's standard macros and scans (issue 14 item 5): the real server, the
wire protocol, the data file opened with silx's ``specfile`` reader, and the
scan data read by certif-pyspec."""

from __future__ import annotations

import ast
import json
import struct
import time

import pytest

from tests.support import procs
from tests.test_specsrv_spec import start
from tests.test_specsrv_wire import ABORT, CMD, ERROR, EVENT, REGISTER, REPLY, Raw, text

pytestmark = pytest.mark.timeout(120)

FAST = """\
motor m1 name="Motor One" steps=1000 low=-50 high=50 base=20000 slew=400000 accel=5
motor m2 name="Motor Two" steps=1000 low=-50 high=50 base=20000 slew=400000 accel=5
counter sec name=Seconds type=timer
counter mon name=Monitor type=monitor rate=1000
counter det name=Detector type=detector rate=500
"""


@pytest.fixture
def server(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    proc, port, log = start(tmp_path, "--data-dir", str(data), "--update", "0.01", config=FAST)
    yield port, data
    procs.stop(proc)


def ok(c: Raw, cmd: str, sn: int = 11, timeout: float = 60) -> str:
    r = c.eval(cmd, sn=sn, timeout=timeout)
    assert r["err"] == 0 and r["type"] != ERROR, (cmd, r["data"])
    return text(r)


def test_scans_write_a_file_silx_reads(server):
    specfile = pytest.importorskip("silx.io.specfile", reason="silx not installed")
    port, data = server
    c = Raw(port)
    assert "Next scan is number 1" in ok(c, "newfile scans.dat")
    ok(c, "umv m1 1")
    ok(c, "ascan m1 0 2 4 0.01")
    ok(c, "dscan m2 -1 1 2 0.01")
    assert text(c.read("motor/m2/position")) == "0"  # dscan went back
    ok(c, "a2scan m1 0 1 m2 0 -1 2 0.01")
    ok(c, "d2scan m1 -0.5 0.5 m2 0 1 1 0.01")
    ok(c, "mesh m1 0 1 1 m2 0 1 2 0.01")
    ok(c, "loopscan 3 0.01")
    assert text(c.read("var/SCAN_N")) == "6"
    c.close()

    sf = specfile.SpecFile(str(data / "scans.dat"))
    assert sf.keys() == ["1.1", "2.1", "3.1", "4.1", "5.1", "6.1"]
    s = sf["1.1"]
    assert s.scan_header_dict["S"] == "1  ascan m1 0 2 4 0.01"
    assert s.labels == ["Motor One", "Epoch", "Seconds", "Monitor", "Detector"]
    assert s.data.shape == (5, 5)
    assert list(s.data_column_by_name("Motor One")) == [0, 0.5, 1, 1.5, 2]
    assert list(s.data_column_by_name("Seconds")) == [0.01] * 5
    assert s.motor_names == ["Motor One", "Motor Two"]
    assert s.motor_positions == [1.0, 0.0]  # #P: where the motors were at the start
    assert s.file_header_dict["F"] == "scans.dat"
    assert s.file_header_dict["o0"] == "m1  m2"
    epochs = s.data_column_by_name("Epoch")
    assert all(b > a for a, b in zip(epochs, epochs[1:], strict=False))
    assert list(sf["2.1"].data_column_by_name("Motor Two")) == [-1, 0, 1]
    a2 = sf["3.1"]
    assert a2.labels[:2] == ["Motor One", "Motor Two"]
    assert [list(r) for r in a2.data[:2].T] == [[0, 0], [0.5, -0.5], [1, -1]]
    mesh = sf["5.1"]
    assert mesh.data.shape == (6, 6)
    assert list(mesh.data_column_by_name("Motor One")) == [0, 1, 0, 1, 0, 1]
    assert list(mesh.data_column_by_name("Motor Two")) == [0, 0, 0.5, 0.5, 1, 1]
    loop = sf["6.1"]
    assert loop.labels[0] == "Time" and loop.data.shape == (5, 3)


def test_scan_data_published_to_clients(server):
    port, _ = server
    c = Raw(port)
    for prop in ("var/_SC_NEWSCAN", "var/_SC_NEWSCANDATA"):
        c.send(REGISTER, name=prop)
    c.send(CMD, sn=1, data=b"ascan m1 0 1 2 0.01\0")
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        h = c.recv()
        if h["cmd"] == EVENT and h["name"].startswith("var/_SC_"):
            seen.append((h["name"], text(h)))
            if seen[-1] == ("var/_SC_NEWSCAN", "0"):
                break
    start = [ast.literal_eval(v) for n, v in seen if n == "var/_SC_NEWSCAN" and v not in ("0",)]
    start = [s for s in start if isinstance(s, dict)]
    assert start and start[-1]["npts"] == 3 and start[-1]["counter"] == "det"
    assert start[-1]["title"] == "ascan m1 0 1 2 0.01"
    points = [ast.literal_eval(v) for n, v in seen if n == "var/_SC_NEWSCANDATA"]
    assert [p["i"] for p in points] == [0, 1, 2]
    assert [p["m1"] for p in points] == [0, 0.5, 1]
    assert all(p["sec"] == 0.01 for p in points)
    # SCAN_D: one row per point, the columns of #L
    r = c.read("var/SCAN_D")
    assert (r["type"], r["rows"], r["cols"]) == (5, 3, 5)  # SV_ARR_DOUBLE
    rows = struct.unpack("<15d", r["data"][:120])
    assert rows[0::5] == (0, 0.5, 1)
    info = json.loads(text(c.read("var/SCAN_D_INFO")))
    assert info[:2] == [2, "idle"]
    cols, meta, _ = json.loads(text(c.read("var/SCAN_D_META")))
    assert cols == {"0": "Motor One", "1": "Epoch", "2": "Seconds", "3": "Monitor", "4": "Detector"}
    assert meta["npts"] == 3
    c.close()


def test_timescan_runs_until_abort_and_says_so_in_the_file(server):
    port, data = server
    c = Raw(port)
    ok(c, "newfile ts.dat")
    c.send(CMD, data=b"timescan 0.01\0")
    assert procs.wait_until(lambda: len((data / "ts.dat").read_text().splitlines()) > 14, 20)
    c.send(ABORT)
    assert procs.wait_until(lambda: "aborted" in (data / "ts.dat").read_text(), 10)
    assert ok(c, "1+1", sn=50) == "2"
    c.close()


@pytest.mark.parametrize("name", ["/etc/passwd_copy", "../escape.dat", "sub/../../x.dat"])
def test_newfile_is_confined_to_the_data_directory(server, name):
    port, data = server
    c = Raw(port)
    r = c.eval(f"newfile {name}")
    assert r["type"] == ERROR and "outside the data directory" in text(r)
    r = c.eval(f'fprintf("{name}", "x")', sn=12)
    assert r["type"] == ERROR
    assert not (data.parent / "escape.dat").exists()
    c.close()


def test_scan_usage_errors_and_listing(server):
    port, _ = server
    c = Raw(port)
    for sn, cmd in enumerate(["ascan", "ascan m1 0 1", "ascan m1 0 100 2 0.1", "mesh m1 0 1"], 1):
        r = c.eval(cmd, sn=sn)
        assert r["type"] == ERROR and r["err"] == 1, cmd
    assert "limit" in text(c.eval("ascan m1 0 100 2 0.1", sn=9))  # checked before moving
    assert text(c.read("motor/m1/position")) == "0"
    listed = ok(c, "lscmd *scan*").split()
    assert listed == ["a2scan", "ascan", "d2scan", "dscan", "loopscan", "timescan"]
    assert {"mv", "umv", "mvr", "umvr", "wm", "wa", "ct", "newfile", "prdef"} <= set(
        ok(c, "lscmd").split()
    )
    ok(c, "def hello '{ p \"hi\" }'")
    assert ok(c, "prdef hello") == "def hello '{ p \"hi\" }'\n"
    assert "hello" in ok(c, "lsdef")
    assert "built in" in ok(c, "prdef ascan")
    c.close()


def test_certif_pyspec_reads_the_scan(server):
    pytest.importorskip("asyncore", reason="certif-pyspec needs asyncore (Python < 3.12)")
    sc = pytest.importorskip("pyspec.client.SpecConnection", reason="certif-pyspec not installed")
    port, _ = server
    c = Raw(port)
    ok(c, "ascan m2 0 3 3 0.01")
    c.close()
    conn = sc.SpecConnection(f"127.0.0.1:{port}")
    try:
        conn.wait_connected(timeout=10)
        assert conn.scan_columns == ["Motor Two", "Epoch", "Seconds", "Monitor", "Detector"]
        assert conn.scan_npts == 4
        assert [list(r[:1]) for r in conn.scan_data] == [[0], [1], [2], [3]]
        assert conn.scan_status == "idle"
    finally:
        conn.close_connection()


def test_reply_of_a_scan_comes_after_its_points(server):
    port, _ = server
    c = Raw(port)
    c.send(REGISTER, name="output/tty")
    reply, seen = c.eval_events("loopscan 2 0.01", sn=77)
    assert reply["cmd"] == REPLY and reply["err"] == 0
    tty = "".join(text(h) for h in seen if h["cmd"] == EVENT)
    assert "Scan" in tty and "loopscan 2 0.01" in tty and "\n   1 " in tty
    c.close()
