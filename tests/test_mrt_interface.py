"""mr_t's newer interface and hardening, real processes on loopback.

JSON pongs, --status-port, --mask-path, --udp-allow with rate-limited refusal
lines, --config with SIGHUP reload, and the ZeroMQ receiver restarting after
an unexpected error.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from mrt import protocol
from mrt.protocol import Image
from mrt.server import MrT
from mrt.sim import FrameSource
from tests.support import mrt_rig as harness
from tests.support import procs
from tests.support.mrt_rig import ports, read_log

started = harness.started  # the fixture: processes stopped at teardown

pytestmark = pytest.mark.timeout(120)


def ping(port: int, data: bytes = b"\x00", timeout: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        try:
            s.send(data)
            return s.recv(70000)
        except (TimeoutError, ConnectionRefusedError):
            return None


def status(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        out = b""
        while True:
            chunk = c.recv(100)
            if not chunk:
                return out
            out += chunk


def test_json_pong_status_port_and_client(tmp_path, started):
    zp, up = ports()
    sp = procs.free_port()
    log = tmp_path / "mr_t.log"
    mask = tmp_path / "mask.npy"
    np.save(mask, np.zeros((8, 16), dtype=np.uint32))
    started.append(harness.start_mrt(up, zp, "--pong-format", "json", "--mask-path", mask,
                                     "--status-port", sp, "-l", log))  # fmt: skip
    assert procs.wait_until(lambda: ping(up) is not None, timeout=20)
    assert ping(up) == b"\x01" + b"\x00" * 10  # no series: 11-byte header, length 0
    assert ping(up, b"\x00" * 9) == b"\x01" + b"\x00" * 10  # a padded ping is a ping
    procs.wait_port(sp)
    assert status(sp) == b"idle"
    sim = harness.start_sim(zp, "--width", 16, "--height", 8, "--frames", 30, "--rate", 10,
                            "--header-appendix", "lyso_7")  # fmt: skip
    started.append(sim)
    assert procs.wait_until(lambda: status(sp) == b"running", timeout=20)
    assert procs.wait_until(lambda: (ping(up) or b"")[1:5] != b"\0\0\0\0", timeout=20)
    pong = ping(up)
    sid, count, n = struct.unpack_from(">IIH", pong, 1)
    assert pong[0] == 1 and sid == 1 and count == 30 and len(pong) == 11 + n
    inner = json.loads(pong[11:].decode("latin-1"))
    assert isinstance(inner, str)  # the upstream's double-encoded form
    meta = json.loads(inner)
    assert meta == {"id": 1, "name": "lyso_7", "shape": [8, 16], "bits_per_pixel": 16,
                    "frame_count": 30, "mask_path": str(mask)}  # fmt: skip
    # the real client reads the JSON pong (auto) and decodes with its shape and bits
    out = tmp_path / "s.npy"
    res = procs.run("mrt.client", f"127.0.0.1:{up}", "-o", out, "--wait", "20", timeout=60)
    assert res.returncode == 0, res.stderr
    arr = np.load(out)
    src = FrameSource(16, 8)
    assert arr.shape == (30, 8, 16) and (arr == [src.pixels(k) for k in range(30)]).all()
    assert procs.wait_until(lambda: status(sp) == b"idle", timeout=20)


def test_status_port_binds_the_configured_host_only(tmp_path, started):
    zp, up = ports()
    sp = procs.free_port()
    log = tmp_path / "mr_t.log"
    started.append(harness.start_mrt(up, zp, "--status-port", sp, "-l", log))
    procs.wait_port(sp)
    out = subprocess.run(["ss", "-ltnH", f"sport = :{sp}"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("ss is not available")
    local = [line.split()[3] for line in out.stdout.splitlines()]
    assert local == [f"127.0.0.1:{sp}"]  # the UDP host, not every interface


def test_udp_allow_list_refuses_counts_and_limits_log_lines(tmp_path, started):
    zp, up = ports()
    log = tmp_path / "mr_t.log"
    conf = tmp_path / "mr_t.conf"
    conf.write_text("udp-allow = [10.9.0.0/16]\n")
    p = harness.start_mrt(up, zp, "--config", conf, "-l", log)
    started.append(p)
    assert procs.wait_until(lambda: "mr_t started" in read_log(log), timeout=20)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", up))
        for _ in range(200):
            s.send(b"\x00")
        s.send(protocol.PacketRequest(0xFFFFFFFF, 0).encode())
    assert ping(up) is None  # refused: no pong
    assert procs.wait_until(lambda: "refused a datagram from 127.0.0.1" in read_log(log))
    time.sleep(0.3)
    lines = read_log(log).count("refused a datagram")
    assert 1 <= lines <= 5  # rate-limited, not one line per datagram
    # SIGHUP re-reads the file: loopback allowed now, without a restart
    conf.write_text("udp-allow = [127.0.0.0/8]\nframe-cache-limit = 5\n")
    p.send_signal(signal.SIGHUP)
    assert procs.wait_until(lambda: ping(up) == protocol.Pong().encode(), timeout=10)
    text = read_log(log)
    assert "applied frame-cache-limit, udp-allow" in text
    assert re.search(r"(\d{3}) refused", text)  # the reload line counts the refused datagrams
    # a setting that needs a restart is named, and the old value stays
    conf.write_text("udp-allow = [127.0.0.0/8]\nudp-payload-size = 100\n")
    p.send_signal(signal.SIGHUP)
    assert procs.wait_until(lambda: "need a restart: udp-payload-size" in read_log(log))
    # a broken file is rejected as a whole; the server keeps serving
    conf.write_text("no-such-option = 1\n")
    p.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert ping(up) == protocol.Pong().encode() and p.poll() is None


def test_receiver_restarts_after_an_unexpected_error(tmp_path, caplog):
    zp, up = ports()
    svc = MrT(udp_host="127.0.0.1", udp_port=up, endpoint=harness.endpoint(zp), byte_limit=1 << 24)
    svc.bind()
    svc.start()
    failures = []

    def inspect(msg):
        if isinstance(msg, Image) and msg.frame == 2 and not failures:
            failures.append(msg.frame)
            raise RuntimeError("injected fault")

    svc.source.inspect = inspect
    sim = harness.start_sim(zp, "--width", 8, "--height", 8, "--frames", 6, "--rate", 50)
    try:
        assert procs.wait_until(lambda: svc.store.current is not None
                                and svc.store.current.ended, timeout=30)  # fmt: skip
        assert svc.source.restarts == 1 and failures == [2]
        assert svc.source.is_alive()
        # the frame in hand when it failed is lost; every other one came in
        assert svc.store.current.received == 5
        assert "zmq receiver failed; it restarts" in caplog.text
    finally:
        procs.stop(sim)
        assert svc.stop() == 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def test_hdf5_output_never_stalls_and_serves_released_frames_from_disk(tmp_path, started):
    """With HDF5 output a full cache releases frames already in the files: the
    series goes through with no client at all, and a client that comes later
    gets every frame, those no longer in memory read back from the files."""
    zp, up = ports()
    log = tmp_path / "mr_t.log"
    out = tmp_path / "h5"
    out.mkdir()
    n = 300
    started.append(harness.start_mrt(up, zp, "--hdf5-output", out, "--frame-cache-bytes", "64K",
                                     "--hdf5-frames-per-file", 100, "-l", log))  # fmt: skip
    sim = harness.start_sim(zp, "--width", 64, "--height", 48, "--frames", n, "--rate", 0)
    started.append(sim)
    assert procs.wait_until(lambda: f"series 1 ended: {n} frames" in read_log(log), timeout=60)
    assert sim.wait(timeout=30) == 0  # the simulator was not held back for good
    assert procs.wait_until(lambda: "series_1_master.h5 complete" in read_log(log), timeout=30)
    data = harness.fetch_series(up, series_id=1, wait=30)
    src = FrameSource(64, 48)
    assert len(data.frames) == n and data.frames == [src.blob(k) for k in range(n)]
    p = started[0]
    p.send_signal(signal.SIGHUP)
    assert procs.wait_until(lambda: "served from disk" in read_log(log), timeout=10)
    m = re.search(r"(\d+) frames released to disk, (\d+) served from disk", read_log(log))
    assert int(m.group(1)) > 0 and int(m.group(2)) > 0


def test_without_hdf5_output_a_full_cache_still_holds_the_stream(tmp_path, started):
    zp, up = ports()
    log = tmp_path / "mr_t.log"
    started.append(harness.start_mrt(up, zp, "--frame-cache-limit", 5, "-l", log))
    sim = harness.start_sim(zp, "--width", 64, "--height", 48, "--frames", 200, "--rate", 0)
    started.append(sim)
    time.sleep(3)
    assert "series 1 ended" not in read_log(log)  # held back: nothing dropped
    data = harness.fetch_series(up, series_id=1, wait=30)
    src = FrameSource(64, 48)
    assert data.frames == [src.blob(k) for k in range(200)]
