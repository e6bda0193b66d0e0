"""archonsim alone over TCP: framing, config memory, parameters, exposures, FETCH."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from archonsrv import acf as ACF
from archonsrv import archon as A
from archonsrv import sim
from archonsrv.controller import ArchonClient, ArchonError
from tests.support import procs

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def archon():
    port = procs.free_port()
    with procs.running("archonsrv.sim", "-p", str(port), "--readout-time", "100", wait_for=port):
        a = ArchonClient(timeout=1.0)
        a.connect("127.0.0.1", port)
        a.port_number = port
        yield a
        a.close()


def load_demo(a: ArchonClient) -> ACF.Acf:
    acf = ACF.parse_acf(
        sim.Path(__file__).parent.parent.joinpath("archonsrv/data/demo.acf").read_text()
    )
    a.command("CLEARCONFIG")
    for i, (k, v) in enumerate(acf.lines):
        a.command(f"WCONFIG{i:04X}{k}={v}")
    a.command("APPLYALL")
    return acf


def test_raw_framing_and_silence_on_unknown(archon):
    with socket.create_connection(("127.0.0.1", archon.port_number), timeout=2) as s:
        s.sendall(b">1ASYSTEM\n")
        line = s.makefile("rb").readline()
        assert line.startswith(b"<1ABACKPLANE_TYPE=") and line.endswith(b"\n")
        s.sendall(b">1BNOSUCHCOMMAND\ngarbage without a prefix\n>1CTIMER\n")
        s.settimeout(2)
        data = s.recv(100)
        assert data.startswith(b"<1CTIMER=")  # nothing for the unknown and the garbage
        timer = data[len(b"<1CTIMER=") :].strip()
        assert len(timer) == 16 and int(timer, 16) > 0


def test_config_memory_and_parameters(archon):
    acf = load_demo(archon)
    params = acf.params()
    line = params["exptime"]
    assert archon.command(f"RCONFIG{line:04X}").endswith("=exptime=0")
    archon.command("WCONFIG0000BIGBUF=0")
    assert archon.command("RCONFIG0000") == "BIGBUF=0"
    assert archon.command("RCONFIGFFFF") == ""  # an unused line reads back empty (issue 13)
    with pytest.raises(ArchonError):
        archon.command("FASTLOADPARAM NoSuchParam 1")
    entries = []
    for _ in range(100):
        entries.append(archon.command("FETCHLOG"))
        if entries[-1] == "(null)":
            break
    assert any("NoSuchParam" in e for e in entries) and entries[-1] == "(null)"
    assert A.parse_kv(archon.command("STATUS"))["POWER"] == "2"
    archon.command("POWERON")
    assert A.parse_kv(archon.command("STATUS"))["POWER"] == "4"
    archon.command("POWEROFF")


def test_exposure_frame_progress_and_fetch(archon):
    load_demo(archon)
    fs = A.parse_frame(archon.command("FRAME"))
    last = fs.newest().frame if fs.newest() else 0
    archon.command("FASTLOADPARAM exptime 50")
    archon.command("FASTLOADPARAM Expose 1")
    deadline = time.monotonic() + 5
    seen_lines = set()
    while time.monotonic() < deadline:
        fs = A.parse_frame(archon.command("FRAME"))
        w = fs.writing()
        seen_lines.add(w.lines if w else -1)
        b = fs.find_frame(last + 1)
        if b is not None:
            break
        time.sleep(0.005)
    assert b is not None and (b.width, b.height, b.sample) == (256, 256, 0)
    assert len(seen_lines) > 1  # lines advanced during the readout
    archon.command(f"LOCK{b.index}")
    data = archon.fetch(b.base, A.blocks_for(256 * 256 * 2))
    archon.command("LOCK0")
    img = data[: 256 * 256 * 2].view("<u2").reshape(256, 256)
    assert np.array_equal(img, sim.synthetic_image(256, 256, sim.DEFAULT_SEED, b.frame))
    # a partial FETCH from an offset
    part = archon.fetch(b.base + 2048, 2)
    assert np.array_equal(part.view("<u2"), img.reshape(-1)[1024:2048])


def test_synthetic_image_is_deterministic():
    a = sim.synthetic_image(64, 32, 7, 3)
    b = sim.synthetic_image(64, 32, 7, 3)
    c = sim.synthetic_image(64, 32, 8, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.uint16 and 900 < int(np.median(a)) < 1500
    g = sim.SimGeometry(width=64, height=32)
    wire, _ = sim.build_wire(g, 7, 3)
    A.set_fetch_headers(wire, 5)
    dec = A.FetchDecoder(5, len(wire))
    dec.writable()[:] = wire.reshape(-1)
    dec.advance(wire.size)
    assert np.array_equal(dec.payload(64 * 32 * 2).view("<u2").reshape(32, 64), a)
