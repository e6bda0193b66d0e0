"""mrt server classes in process: the ingest path into the HDF5 writer."""

from __future__ import annotations

import threading

import h5py
import hdf5plugin  # noqa: F401 - registers filter 32008 for reading
import numpy as np
import pytest

from mrt import hdf5
from mrt.protocol import Header, Image, SeriesEnd
from mrt.series import SeriesStore
from mrt.server import Hdf5Writer, Ingest, StoreAccess
from mrt.sim import FrameSource

WRITER_QUEUE_FRAMES_TEST = 64

pytestmark = pytest.mark.timeout(60)


def run_ingest(tmp_path, messages) -> None:
    writer = Hdf5Writer(str(tmp_path), 1000, 1 << 30)
    writer.start()
    ingest = Ingest(StoreAccess(SeriesStore()), writer)
    for msg in messages:
        ingest.apply(msg)
    assert not writer.stop()


def test_writer_gets_every_frame_the_store_takes(tmp_path):
    """Whether a message goes on to the HDF5 writer must not depend on the words
    of a log line: warnings quote the detector's own strings."""
    src = FrameSource(8, 4, 16, "bslz4", distinct=3)
    header = Header(7, "basic", {"nimages": 3, "ntrigger": 1}, warnings=["part 3 htype 'skipped'"])
    images = [
        Image(7, k, src.shape, src.dtype, src.encoding, src.blob(k), warnings=["note: skipped"])
        for k in range(3)
    ]
    run_ingest(tmp_path, [header, *images, SeriesEnd(7)])
    with h5py.File(tmp_path / "series_7_master.h5", "r") as f:
        assert (f["entry/data/data"][()] == [src.pixels(k) for k in range(3)]).all()


def test_skipped_messages_do_not_reach_the_writer(tmp_path):
    src = FrameSource(8, 4, 16, "bslz4", distinct=2)
    stray = Image(1, 0, src.shape, src.dtype, src.encoding, src.blob(1))
    frame = Image(1, 0, src.shape, src.dtype, src.encoding, src.blob(0))
    msgs = [stray, SeriesEnd(1), Header(1, "basic", {"nimages": 1}), frame, SeriesEnd(1), stray]
    run_ingest(tmp_path, msgs)
    with h5py.File(tmp_path / "series_1_master.h5", "r") as f:
        assert (f["entry/data/data"][()] == [src.pixels(0)]).all()
    assert not (tmp_path / "series_1_2_master.h5").exists()


def test_unstorable_config_keys_do_not_lose_the_series(tmp_path):
    """A key below another key's value ("a" then "a/b") cannot be an HDF5 path;
    the key is left out, the series is still written."""
    src = FrameSource(8, 4, 8, "bslz4", distinct=1)
    cfg = {"nimages": 1, "threshold": 5.0, "threshold/1/energy": 6000.0, "x_pixel_size": 7.5e-5}
    w = hdf5.SeriesWriter(str(tmp_path), Header(3, "basic", cfg), 1)
    assert w.write(Image(3, 0, src.shape, src.dtype, src.encoding, src.blob(0)))
    w.close()
    with h5py.File(tmp_path / "series_3_master.h5", "r") as f:
        spec = f["entry/instrument/detector/detectorSpecific"]
        assert spec["threshold"][()] == 5.0 and "threshold/1" not in spec
        assert f["entry/instrument/detector/x_pixel_size"][()] == pytest.approx(7.5e-5)
        assert (f["entry/data/data"][()] == [src.pixels(0)]).all()


def test_writer_queue_is_bounded_and_loses_nothing(tmp_path):
    """A producer faster than the disk blocks at the bound; every frame is written."""
    src = FrameSource(16, 8, 32, "raw", distinct=4)
    writer = Hdf5Writer(str(tmp_path), 50, 1 << 30, max_frames=WRITER_QUEUE_FRAMES_TEST)
    stop = threading.Event()
    n = 150
    assert writer.put(1, Header(1, "basic", {"nimages": n}), stop)
    for k in range(n):  # the writer thread is not started yet: the queue fills up
        if k == WRITER_QUEUE_FRAMES_TEST:
            assert not writer.has_room()  # full: put would block here
            writer.start()
        assert writer.put(1, Image(1, k, src.shape, src.dtype, src.encoding, src.blob(k)), stop)
    assert writer.put(1, SeriesEnd(1), stop)
    assert not writer.stop()
    with h5py.File(tmp_path / "series_1_master.h5", "r") as f:
        data = f["entry/data/data"][()]
    assert data.dtype == np.uint32 and len(data) == n
    assert (data == [src.pixels(k) for k in range(n)]).all()
