"""mrt end to end: eiger-zmq-sim -> mr_t -> UDP client and HDF5 files, real processes."""

from __future__ import annotations

import socket
import time

import h5py
import hdf5plugin  # noqa: F401 - registers filter 32008 for reading
import numpy as np
import pytest

from mrt import codec, protocol
from mrt.sim import FrameSource
from tests.support import mrt_rig as harness
from tests.support import procs
from tests.support.mrt_rig import ports, read_log

started = harness.started  # the fixture: processes stopped at teardown

pytestmark = pytest.mark.timeout(90)


def wait_for(pred, timeout=15.0) -> bool:
    return procs.wait_until(pred, timeout)


def master_frames(directory, name="series_1") -> np.ndarray:
    with h5py.File(directory / f"{name}_master.h5", "r") as f:
        return f["entry/data/data"][()]


@pytest.mark.parametrize("kind", ["bslz4", "lz4", "raw"])
@pytest.mark.parametrize("bits", [8, 16, 32])
def test_every_encoding_and_depth(tmp_path, started, kind, bits):
    zp, up = ports()
    w, h, n = 37, 29, 5
    started.append(harness.start_mrt(up, zp, "--hdf5-output", tmp_path, "--udp-payload-size", 500))
    started.append(
        harness.start_sim(
            zp, "--width", w, "--height", h, "--bits", bits, "--encoding", kind,
            "--frames", n, "--rate", 0, "--seed", bits, "--header-detail", "all",
        )
    )  # fmt: skip
    data = harness.fetch_series(up)
    src = FrameSource(w, h, bits, kind, seed=bits)
    assert data.frame_count == n and data.premature_end is None
    assert data.frames == [src.blob(k) for k in range(n)]  # byte-identical
    assert (data.pixels(bits=bits, shape=(h, w)) == [src.pixels(k) for k in range(n)]).all()
    assert wait_for(lambda: (tmp_path / "series_1_master.h5").exists())
    assert wait_for(lambda: started[1].poll() is not None)
    time.sleep(0.3)
    procs.stop(started[0])  # closing at shutdown also completes the files
    with h5py.File(tmp_path / "series_1_data_000001.h5", "r") as f:
        d = f["entry/data/data"]
        assert d.chunks == (1, h, w)
        fid, _, opts, _ = d.id.get_create_plist().get_filter(0)
        assert fid == 32008 and opts[4] == 2  # bitshuffle with LZ4
        assert (d[()] == [src.pixels(k) for k in range(n)]).all()
        if kind == "bslz4":  # the stream's blobs went in unchanged
            assert d.id.read_direct_chunk((1, 0, 0))[1] == src.blob(1)
    with h5py.File(tmp_path / "series_1_master.h5", "r") as f:
        assert f["entry/definition"][()] == b"NXmx"
        assert f["entry/instrument/detector/data_files/data_000001"].shape == (n, h, w)
        det = f["entry/instrument/detector"]
        assert det["x_pixel_size"][()] == pytest.approx(75e-6)
        assert det["detectorSpecific/nimages"][()] == n
        assert det["pixel_mask"].shape == (h, w) and det["pixel_mask"][0, w // 2] == 1
    assert (master_frames(tmp_path) == [src.pixels(k) for k in range(n)]).all()


def test_premature_end_stray_parts_and_next_series(tmp_path, started):
    zp, up = ports()
    log = tmp_path / "mr_t.log"
    started.append(harness.start_mrt(up, zp, "--hdf5-output", tmp_path, "-l", log))
    started.append(
        harness.start_sim(
            zp, "--width", 16, "--height", 8, "--frames", 10, "--abort-after", 3,
            "--stray-after-abort", "--series", 2, "--rate", 200, "--pause", 1.0,
        )
    )  # fmt: skip
    first = harness.fetch_series(up, series_id=1)
    src = FrameSource(16, 8)
    assert first.frame_count == 10 and first.premature_end == 3
    assert first.frames == [src.blob(k) for k in range(3)]
    second = harness.fetch_series(up, series_id=2)
    assert second.premature_end == 3 and len(second.frames) == 3
    assert wait_for(lambda: "series 2 ended: 3 frames of 10 (ended early)" in read_log(log))

    def strays() -> int:  # logged by the receiver, maybe after the lines awaited above
        text = read_log(log)
        return text.count("stray or garbage") + text.count("unknown or stray")

    wait_for(lambda: strays() >= 6)
    assert strays() == 6  # 3 per aborted series
    assert wait_for(lambda: "series_2_master.h5 complete" in read_log(log))
    # the aborted series' files are complete and valid: 3 frames
    assert (master_frames(tmp_path) == [src.pixels(k) for k in range(3)]).all()
    assert len(master_frames(tmp_path, "series_2")) == 3


def test_back_pressure_loses_no_frame(tmp_path, started):
    zp, up = ports()
    w, h, n = 1028, 512, 40  # 1 MB raw frames: more than ZeroMQ and TCP buffer
    started.append(harness.start_mrt(up, zp, "--frame-cache-limit", 2, "--zmq-rcvhwm", 2,
                                     "-l", tmp_path / "log"))  # fmt: skip
    sim_log = open(tmp_path / "sim.log", "wb")
    sim = harness.start_sim(
        zp, "--width", w, "--height", h, "--encoding", "raw", "--frames", n, "--rate", 0,
        "--distinct", 4, stderr=sim_log,
    )  # fmt: skip
    started.append(sim)
    assert wait_for(lambda: "series 1 started" in read_log(tmp_path / "log"))
    time.sleep(1.5)
    assert sim.poll() is None, "the simulator finished although nobody read the frames"
    assert "series 1:" not in read_log(tmp_path / "sim.log")
    data = harness.fetch_series(up, series_id=1)
    src = FrameSource(w, h, 16, "raw", distinct=4)
    assert len(data.frames) == n
    assert all(data.frames[k] == src.blob(k) for k in range(n))
    assert wait_for(lambda: sim.poll() == 0)


def test_byte_bound_and_eviction_on_the_wire(tmp_path, started):
    zp, up = ports()
    started.append(harness.start_mrt(up, zp, "--frame-cache-bytes", "1K", "-l", tmp_path / "l"))
    started.append(harness.start_sim(zp, "--width", 20, "--height", 20, "--encoding", "raw",
                                     "--frames", 6, "--rate", 0))  # fmt: skip
    # 800-byte frames, 1 KiB bound: one frame cached at a time, plus none waiting
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.connect(("127.0.0.1", up))

        def ask(frame, start=0):
            s.send(protocol.PacketRequest(frame, start).encode())
            return protocol.decode_reply(s.recv(70000))

        def first_there():
            try:
                return ask(0).frame_bytes == 800
            except OSError:  # not up yet (port unreachable) or no series yet (no reply)
                return False

        assert wait_for(first_there, timeout=20)
        time.sleep(0.5)
        assert ask(0, 790).payload == FrameSource(20, 20, 16, "raw").blob(0)[790:]
        assert ask(1).frame_bytes == 0  # not received: the cache is full with frame 0
        assert wait_for(lambda: ask(1).frame_bytes == 800)  # frame 0 evicted, 1 came in
        assert ask(0) == protocol.PacketReply(0, 0, 0, 0)  # evicted


def send_datagrams(port, datagrams, expect_reply):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        s.connect(("127.0.0.1", port))
        for d in datagrams:
            s.send(d)
            try:
                got = s.recv(70000)
            except TimeoutError:
                got = None
            assert (got is not None) == expect_reply, d


def test_malformed_udp_and_ping_flood(tmp_path, started):
    zp, up = ports()
    log = tmp_path / "mr_t.log"
    p = harness.start_mrt(up, zp, "-l", log)
    started.append(p)
    assert wait_for(lambda: "mr_t started" in read_log(log))
    send_datagrams(up, [b"\x00", b"\x00\x00", b"\x00" + b"pad" * 300], True)  # all pings
    bad = [b"", b"\x01", b"\x02\x00", b"\x02" + b"\x00" * 9, b"\x03" * 20,
           b"\x07abc", b"\xff" * 3000, protocol.PacketRequest(0, 0).encode()]  # fmt: skip
    send_datagrams(up, bad, False)  # the last: no series yet, so ignored
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.connect(("127.0.0.1", up))
        for _ in range(3000):
            s.send(b"\x00")
        s.settimeout(1.0)
        pongs = 0
        try:
            while pongs < 3000:
                assert s.recv(100) == protocol.Pong().encode()
                pongs += 1
        except TimeoutError:
            pass
    assert pongs > 100  # UDP may drop some under a flood; the server must keep answering
    assert p.poll() is None
    started.append(harness.start_sim(zp, "--width", 8, "--height", 8, "--frames", 4))
    data = harness.fetch_series(up)
    assert len(data.frames) == 4
    send_datagrams(
        up,
        [protocol.PacketRequest(0xFFFFFFFF, 0xFFFFFFFF).encode(),
         protocol.PacketRequest(3, 0xFFFFFFFF).encode()],
        True,
    )  # fmt: skip
    assert p.poll() is None
    assert "udp: ignored empty datagram" in read_log(log)


def test_garbage_on_the_stream(tmp_path, started):
    import zmq

    zp, up = ports()
    log = tmp_path / "mr_t.log"
    started.append(harness.start_mrt(up, zp, "-l", log))
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.bind(harness.endpoint(zp))
    try:
        img = protocol.encode_image(1, 0, b"\x01\x02\x03\x04", (2, 2), "uint8", "<")
        for parts in [
            [b"garbage"],
            [b'{"htype":"dimage_d-1.0"}', b"xx"],
            [b'{"htype":"nonsense-1.0"}'],
            img,  # before any header
            [b'{"htype":"dheader-1.0","series":5,"header_detail":"basic"}'],  # no config
            [b'{"htype":"dimage-1.0"}', b"{not json", b"x", b"{}"],
            protocol.encode_header(6, "none"),
            img,
            protocol.encode_image(6, 7, b"\x05\x06\x07\x08", (2, 2), "uint8", "<"),  # a gap
            protocol.encode_end(6),
        ]:
            push.send_multipart(parts)
        data = harness.fetch_series(up, series_id=2)
        assert data.frame_count == 0 and data.frames == [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"]
        assert data.premature_end == 2
        push.send_multipart(protocol.encode_header(7, "basic", {"nimages": 1, "ntrigger": 1}))
        push.send_multipart(img)
        push.send_multipart(protocol.encode_end(7))
        again = harness.fetch_series(up, series_id=3)
        assert again.frames == [b"\x01\x02\x03\x04"] and again.premature_end is None
    finally:
        push.close()
        ctx.term()
    text = read_log(log)
    for needle in ("stray or garbage", "unknown or stray htype 'nonsense-1.0'",
                   "image before any series header", "frame gap", "invalid JSON",
                   "series 1 replaced by a new header before its end"):  # fmt: skip
        assert needle in text, needle
    assert started[0].poll() is None


def test_detector_disappears_and_comes_back(tmp_path, started):
    zp, up = ports()
    log = tmp_path / "mr_t.log"
    started.append(harness.start_mrt(up, zp, "-l", log))
    sim = harness.start_sim(zp, "--width", 8, "--height", 8, "--frames", 1000, "--rate", 20)
    started.append(sim)
    assert wait_for(lambda: "series 1 started" in read_log(log))
    time.sleep(0.3)
    sim.kill()
    sim.wait(5)
    started.append(harness.start_sim(zp, "--width", 8, "--height", 8, "--frames", 3,
                                     "--series-id", 9, "--seed", 3))  # fmt: skip
    data = harness.fetch_series(up, series_id=2)
    assert data.frames == [FrameSource(8, 8, seed=3).blob(k) for k in range(3)]
    assert "series 1 replaced by a new header before its end" in read_log(log)


def test_hdf5_full_disk_keeps_serving(tmp_path, started):
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    zp, up = ports()
    out = tmp_path / "out"
    out.mkdir()
    log = tmp_path / "mr_t.log"
    p = harness.start_mrt(up, zp, "--hdf5-output", out, "-l", log, preexec_fn=small_files)
    started.append(p)
    started.append(harness.start_sim(zp, "--width", 256, "--height", 256, "--encoding", "raw",
                                     "--frames", 12, "--rate", 0, "--bits", 32))  # fmt: skip
    first = harness.fetch_series(up, series_id=1)
    assert len(first.frames) == 12  # UDP unaffected by the failing disk
    assert wait_for(lambda: "File too large" in read_log(log))  # EFBIG logged, not fatal
    # no partial file under a final name: the failed series' files are renamed away
    assert wait_for(lambda: "incomplete" in read_log(log) or any(out.glob("*.incomplete")))
    names = sorted(x.name for x in out.iterdir())
    assert names and all(x.endswith(".incomplete") for x in names), names
    started.append(harness.start_sim(zp, "--width", 16, "--height", 16, "--frames", 2,
                                     "--series-id", 2))  # fmt: skip
    second = harness.fetch_series(up, series_id=2)
    assert len(second.frames) == 2 and p.poll() is None
    assert wait_for(lambda: "series_2_master.h5 complete" in read_log(log))
    assert (master_frames(out, "series_2") == [FrameSource(16, 16).pixels(k) for k in (0, 1)]).all()


def test_hdf5_replay_in_server_and_simulator(tmp_path, started):
    src = FrameSource(24, 12, 16)
    frames = np.stack([src.pixels(k) for k in range(4)])
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=frames, chunks=(1, 12, 24),
                         **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))  # fmt: skip
    up = procs.free_port(socket.SOCK_DGRAM)
    started.append(harness.start_mrt(up, None, "--input-h5-file", path, "--frame-cache-limit", 1))
    data = harness.fetch_series(up)
    assert data.frame_count == 4 and len(data.frames) == 4
    assert all(codec.guess_encoding(b, (12, 24), 16) == "bs16-lz4<" for b in data.frames)
    assert (data.pixels(bits=16, shape=(12, 24)) == frames).all()
    zp, up2 = ports()
    started.append(harness.start_mrt(up2, zp, "--extended-pong"))
    started.append(harness.start_sim(zp, "--input-h5-file", path, "--header-appendix", "lyso"))
    data = harness.fetch_series(up2, extended_pong=True)
    assert (data.bits, data.width, data.height, data.name) == (16, 24, 12, "lyso")
    assert (data.pixels() == frames).all()
