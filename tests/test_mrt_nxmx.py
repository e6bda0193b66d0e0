"""mr_t's HDF5 output read by the field's readers, live and after the end, real processes.

h5py with hdf5plugin and fabio (PyPI) open the NXmx master; frame counts and
pixels must agree with what the simulator sent.  Readers open the master and
the current data file while the series is written; SIGTERM mid-series leaves
complete files; odd metadata is skipped with a log line and the frames are
still written.  (A failing disk: test_mrt_e2e.)
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import h5py
import hdf5plugin  # noqa: F401 - registers filter 32008 for reading
import numpy as np
import pytest

from mrt import protocol
from mrt.sim import FrameSource
from tests.support import mrt_rig as harness
from tests.support import procs
from tests.support.mrt_rig import ports, read_log

started = harness.started  # the fixture: processes stopped at teardown

pytestmark = pytest.mark.timeout(120)


def run_series(tmp_path, started, *sim_args, mrt_args=(), frames=20, w=40, h=24):
    zp, up = ports()
    log = tmp_path / "mr_t.log"
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    started.append(harness.start_mrt(up, zp, "--hdf5-output", out, "-l", log, *mrt_args))
    started.append(harness.start_sim(zp, "--width", w, "--height", h, "--frames", frames,
                                     "--rate", 0, *sim_args))  # fmt: skip
    assert procs.wait_until(lambda: "master.h5 complete" in read_log(log), timeout=60)
    return out, log


NXMX_REQUIRED = [
    "entry/definition",
    "entry/start_time",
    "entry/end_time",
    "entry/data/data",
    "entry/instrument/name",
    "entry/source/name",
    "entry/sample/name",
    "entry/sample/depends_on",
    "entry/sample/beam/incident_wavelength",
    "entry/instrument/detector/depends_on",
    "entry/instrument/detector/distance",
    "entry/instrument/detector/saturation_value",
    "entry/instrument/detector/pixel_mask",
    "entry/instrument/detector/module/data_origin",
    "entry/instrument/detector/module/data_size",
    "entry/instrument/detector/module/fast_pixel_direction",
    "entry/instrument/detector/module/slow_pixel_direction",
]


def resolve(f: h5py.File, path: str) -> None:
    """Follow a depends_on chain to '.', every step an existing transformation."""
    seen = 0
    while path != ".":
        seen += 1
        assert seen < 10 and path in f, path
        ds = f[path]
        assert ds.attrs["transformation_type"] in (b"rotation", b"translation", "rotation",
                                                   "translation")  # fmt: skip
        assert len(ds.attrs["vector"]) == 3 and "units" in ds.attrs
        dep = ds.attrs["depends_on"]
        path = dep.decode() if isinstance(dep, bytes) else dep


def test_master_is_nxmx_and_readers_agree(tmp_path, started):
    n = 25
    mask = np.zeros((24, 40), dtype=np.uint32)
    mask[3, 5] = 4  # a --mask-path mask, combined with the header's (a gap column)
    with h5py.File(tmp_path / "mask.h5", "w") as f:
        f["mask"] = mask
    out, _ = run_series(tmp_path, started, "--header-detail", "all",
                        mrt_args=("--hdf5-frames-per-file", 10, "--mask-path",
                                  tmp_path / "mask.h5"), frames=n)  # fmt: skip
    src = FrameSource(40, 24)
    want = np.stack([src.pixels(k) for k in range(n)])
    master = out / "series_1_master.h5"
    with h5py.File(master, "r") as f:
        for p in NXMX_REQUIRED:
            assert p in f, p
        data = f["entry/data"]
        assert data.attrs["NX_class"] == "NXdata" and data.attrs["signal"] == "data"
        frame_sets = [k for k in data if isinstance(data[k], h5py.Dataset) and data[k].ndim == 3]
        assert frame_sets == ["data"]  # exactly one frame data set
        assert (data["data"][()] == want).all()
        links = f["entry/instrument/detector/data_files"]
        assert sorted(links) == ["data_000001", "data_000002", "data_000003"]
        assert sum(links[k].shape[0] for k in links) == n
        assert f["entry/sample/beam/incident_wavelength"].attrs["units"] == "angstrom"
        assert f["entry/sample/beam/incident_wavelength"][()] == pytest.approx(1.0, rel=1e-3)
        det = f["entry/instrument/detector"]
        assert det["distance"][()] == pytest.approx(0.12)
        assert det["saturation_value"][()] == 65535
        assert det["beam_center_x"].attrs["units"] == "pixel"
        assert list(det["module/data_size"][()]) == [24, 40]
        pm = det["pixel_mask"][()]
        assert pm[3, 5] == 4 and (pm[:, 20] == 1).all() and pm.sum() == 4 + 24
        assert det["detectorSpecific/mask_path"][()].decode() == str(tmp_path / "mask.h5")
        resolve(f, f["entry/instrument/detector/depends_on"][()].decode())
        resolve(f, f["entry/sample/depends_on"][()].decode())
        resolve(f, "entry/instrument/detector/module/fast_pixel_direction")
    fabio = pytest.importorskip("fabio")
    img = fabio.open(str(master))
    assert img.nframes == n  # once each, not twice
    for k in (0, 9, 10, 24):
        assert (img.getframe(k).data == want[k]).all()


def test_readers_follow_a_series_while_it_is_written(tmp_path, started):
    zp, up = ports()
    log = tmp_path / "mr_t.log"
    out = tmp_path / "out"
    out.mkdir()
    n = 200
    started.append(harness.start_mrt(up, zp, "--hdf5-output", out, "-l", log,
                                     "--hdf5-frames-per-file", 50))  # fmt: skip
    started.append(harness.start_sim(zp, "--width", 40, "--height", 24, "--frames", n,
                                     "--rate", 40))  # fmt: skip
    master = out / "series_1_master.h5"
    assert procs.wait_until(lambda: (out / "series_1_data_000002.h5").exists(), timeout=30)
    assert "series 1 ended" not in read_log(log)
    src = FrameSource(40, 24)
    # a plain reader in another process: no swmr flag, no locking option
    code = (
        "import sys, h5py, hdf5plugin\n"
        "with h5py.File(sys.argv[1], 'r') as f:\n"
        "    d = f['entry/data/data']\n"
        "    print(d.shape[0], int(d[10].sum()))\n"
        "with h5py.File(sys.argv[2], 'r', swmr=True) as f:\n"
        "    print(f['entry/data/data'].shape[0])\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(master),
                          str(out / "series_1_data_000002.h5")],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert res.returncode == 0, res.stderr
    total, s10, current = res.stdout.split()
    assert int(total) == n  # the view spans the announced frames from the start
    assert int(s10) == int(src.pixels(10).sum())
    assert 0 <= int(current) <= 50
    assert procs.wait_until(lambda: "master.h5 complete" in read_log(log), timeout=60)


def test_sigterm_mid_series_leaves_complete_files(tmp_path, started):
    zp, up = ports()
    log = tmp_path / "mr_t.log"
    out = tmp_path / "out"
    out.mkdir()
    p = harness.start_mrt(up, zp, "--hdf5-output", out, "-l", log)
    started.append(p)
    started.append(harness.start_sim(zp, "--width", 40, "--height", 24, "--frames", 1000,
                                     "--rate", 50))  # fmt: skip
    assert procs.wait_until(lambda: (out / "series_1_data_000001.h5").exists(), timeout=30)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0
    src = FrameSource(40, 24)
    with h5py.File(out / "series_1_master.h5", "r") as f:
        d = f["entry/data/data"]
        n = d.shape[0]
        assert 0 < n < 1000  # the frames received, not the 1000 announced
        assert (d[()] == [src.pixels(k) for k in range(n)]).all()
        assert f["entry/instrument/detector/detectorSpecific/nimages_written"][()] == n
        assert "end_time" in f["entry"]


def test_odd_metadata_is_skipped_and_frames_are_written(tmp_path, started):
    """A NUL byte in the series name, a flatfield and mask of another shape,
    a --mask-path of another shape: log lines, and every frame in the files."""
    mask = tmp_path / "mask.npy"
    np.save(mask, np.ones((5, 5), dtype=np.uint8))
    zp, up = ports()
    log = tmp_path / "mr_t.log"
    out = tmp_path / "out"
    out.mkdir()
    started.append(harness.start_mrt(up, zp, "--hdf5-output", out, "-l", log,
                                     "--mask-path", mask))  # fmt: skip
    import zmq

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.bind(harness.endpoint(zp))
    src = FrameSource(16, 8)
    try:
        cfg = {"nimages": 3, "ntrigger": 1, "description": "bad\0name"}
        parts = protocol.encode_header(
            5, "all", cfg, flatfield=np.ones((4, 4), "<f4").tobytes(),
            pixel_mask=np.zeros((4, 4), "<u4").tobytes(),
            countrate=np.zeros((2, 10), "<f4").tobytes(), shape_xy=(4, 4),
            appendix=b"lyso\0_7",
        )  # fmt: skip
        time.sleep(0.5)
        push.send_multipart(parts)
        for k in range(3):
            push.send_multipart(protocol.encode_image(5, k, src.blob(k), src.shape, src.dtype,
                                                      src.encoding))  # fmt: skip
        push.send_multipart(protocol.encode_end(5))
        assert procs.wait_until(lambda: "master.h5 complete" in read_log(log), timeout=30)
    finally:
        push.close()
        ctx.term()
    text = read_log(log)
    assert "NUL" in text and "does not match the frames" in text
    with h5py.File(out / "series_5_master.h5", "r") as f:
        assert (f["entry/data/data"][()] == [src.pixels(k) for k in range(3)]).all()
        assert f["entry/sample/name"][()] == b"lyso_7"
        assert f["entry/instrument/detector/pixel_mask"].shape == (8, 16)
