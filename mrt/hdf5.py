"""HDF5 files of Mr. T: NXmx series output, and frames read back for replay.

Output follows the DECTRIS FileWriter layout: ``NAME_master.h5`` holds
``/entry`` (NXentry, definition NXmx), the detector configuration under
``/entry/instrument/detector/`` (and ``detectorSpecific/``), and external
links ``/entry/data/data_000001`` ... to ``/entry/data/data`` in the data files
``NAME_data_000001.h5`` ..., plus ``/entry/data/data``, a virtual data set
of all frames (written at the end of the series).  Each data set is ``(n, Y, X)``, one frame per
chunk, filter 32008 (bitshuffle) with options (0, 2) (LZ4).  The stream's
bslz4 blobs go in unchanged with direct chunk writes; ``lz4<`` and raw frames
are decoded and written through the filter.  A series' files are closed (and
complete) at its end, at an early end, at a new header and at shutdown.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import h5py
import hdf5plugin
import numpy as np

from . import codec
from .protocol import Header, Image

log = logging.getLogger(__name__)

BITSHUFFLE = 32008
BSLZ4_OPTS = (0, 2)
DEFAULT_FRAMES_PER_FILE = 1000
GROW_FRAMES = 64

#: config keys that NXmx places directly in the NXdetector group
DETECTOR_KEYS = {
    "beam_center_x",
    "beam_center_y",
    "bit_depth_readout",
    "count_time",
    "countrate_correction_applied",
    "description",
    "detector_distance",
    "detector_number",
    "detector_readout_time",
    "flatfield_correction_applied",
    "frame_time",
    "pixel_mask_applied",
    "sensor_material",
    "sensor_thickness",
    "threshold_energy",
    "virtual_pixel_correction_applied",
    "x_pixel_size",
    "y_pixel_size",
}
UNITS = {
    "count_time": "s",
    "frame_time": "s",
    "detector_readout_time": "s",
    "detector_distance": "m",
    "sensor_thickness": "m",
    "x_pixel_size": "m",
    "y_pixel_size": "m",
    "threshold_energy": "eV",
    "photon_energy": "eV",
    "incident_energy": "eV",
}
_ARRAY_TYPES = {"float32": "<f4", "uint32": "<u4", "uint16": "<u2", "uint8": "<u1"}


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(text))[:100] or "series"


def _store_value(group: h5py.Group, key: str, value) -> None:
    if value is None:
        return
    if isinstance(value, dict | list) and not (
        isinstance(value, list) and value and all(isinstance(v, int | float) for v in value)
    ):
        value = json.dumps(value)
    if isinstance(value, bool):
        value = np.bool_(value)
    path = key.strip("/")
    if not path or path in group:
        return
    try:
        try:
            ds = group.create_dataset(path, data=value)
        except (TypeError, ValueError):
            ds = group.create_dataset(path, data=str(value))
    except (TypeError, ValueError, KeyError) as exc:
        # e.g. "a/b" after a value "a": the path cannot exist in HDF5
        log.warning("config key %r not stored in the HDF5 master file: %s", key, exc)
        return
    unit = UNITS.get(key)
    if unit:
        ds.attrs["units"] = unit


def _nx(group: h5py.Group, cls: str) -> h5py.Group:
    group.attrs["NX_class"] = cls
    return group


class SeriesWriter:
    """Writes one series: master file plus data files.  Not thread-safe."""

    def __init__(
        self,
        directory: str,
        header: Header,
        series_id: int,
        frames_per_file: int = DEFAULT_FRAMES_PER_FILE,
        mask_path: str | None = None,
    ) -> None:
        self.directory = directory
        self.mask_path = mask_path
        self.header = header
        self.series_id = series_id
        self.frames_per_file = max(1, frames_per_file)
        base = safe_name(f"series_{header.series}")
        name = base
        n = 1
        while os.path.exists(os.path.join(directory, f"{name}_master.h5")):
            n += 1
            name = f"{base}_{n}"
        self.name = name
        self.master_path = os.path.join(directory, f"{name}_master.h5")
        self.data_paths: list[str] = []
        self.written = 0
        self.skipped = 0
        self.shape: tuple[int, int] | None = None
        self.dtype: np.dtype | None = None
        self._data_file: h5py.File | None = None
        self._dset = None
        self._file_first = 0
        self._capacity = 0
        self._kind: tuple | None = None  # (shape, type, encoding) checked by _check_kind
        self._direct = False
        self._total = 0
        self._write_chunk = None
        # frames of the stream handled (written or skipped), and the stream
        # numbers of those skipped: stream frame k is file frame k - skips below k
        self.processed = 0
        self._skipped_frames: list[int] = []
        #: stream frames 0 .. on_disk-1 are in flushed files (readable by read_frame)
        self.on_disk = 0
        self._all_direct = True
        self.lock = threading.Lock()  # write/close vs read_frame from the UDP thread
        self._reader: tuple[str, h5py.File] | None = None
        self.master = h5py.File(self.master_path, "w")
        self._write_master(series_id)

    # -- master ------------------------------------------------------------------
    def _write_master(self, series_id: int) -> None:
        m = self.master
        m.attrs["creator"] = "mr_t (beamline-servers)"
        entry = _nx(m.create_group("entry"), "NXentry")
        entry.attrs["default"] = "data"
        entry.create_dataset("definition", data="NXmx")
        _nx(entry.create_group("data"), "NXdata").attrs["signal"] = "data_000001"
        inst = _nx(entry.create_group("instrument"), "NXinstrument")
        det = _nx(inst.create_group("detector"), "NXdetector")
        spec = _nx(det.create_group("detectorSpecific"), "NXcollection")
        h = self.header
        spec.create_dataset("mrt_series_id", data=np.uint32(series_id))
        spec.create_dataset("series_name", data=h.name)
        spec.create_dataset("header_detail", data=h.detail)
        if h.series is not None:
            _store_value(spec, "detector_series", h.series)
        for key, value in (h.config or {}).items():
            if not isinstance(key, str):
                continue
            _store_value(det if key in DETECTOR_KEYS else spec, key, value)
        for label, arr in (
            ("flatfield", h.flatfield),
            ("pixel_mask", h.pixel_mask),
            ("countrate_correction_table", h.countrate),
        ):
            if arr is None:
                continue
            shape, typ, data = arr
            dt = np.dtype(_ARRAY_TYPES.get(typ, "<u1"))
            want = int(np.prod(shape)) * dt.itemsize
            if len(data) != want or label in spec:
                log.warning("header %s: %d bytes, expected %d: not written", label, len(data), want)
                continue
            a = np.frombuffer(data, dtype=dt).reshape(list(reversed(shape)))
            spec.create_dataset(label, data=a, compression="gzip", compression_opts=1)
        if h.appendix is not None:
            spec.create_dataset("header_appendix", data=np.void(bytes(h.appendix)))

    # -- data ------------------------------------------------------------------------
    def _open_data_file(self) -> None:
        idx = len(self.data_paths) + 1
        path = os.path.join(self.directory, f"{self.name}_data_{idx:06d}.h5")
        f = h5py.File(path, "w")
        entry = _nx(f.create_group("entry"), "NXentry")
        data = _nx(entry.create_group("data"), "NXdata")
        data.attrs["signal"] = "data"
        y, x = self.shape
        self._dset = data.create_dataset(
            "data",
            shape=(0, y, x),
            maxshape=(None, y, x),
            chunks=(1, y, x),
            dtype=self.dtype,
            compression=BITSHUFFLE,
            compression_opts=BSLZ4_OPTS,
        )
        self._dset.attrs["image_nr_low"] = np.int64(self.written + 1)
        self._dset.attrs["image_nr_high"] = np.int64(self.written)
        self._data_file = f
        self._write_chunk = self._dset.id.write_direct_chunk
        self._capacity = 0
        self._file_first = self.written
        self.data_paths.append(path)
        link = f"data_{idx:06d}"
        self.master["entry/data"][link] = h5py.ExternalLink(
            os.path.basename(path), "/entry/data/data"
        )

    def _close_data_file(self) -> None:
        if self._data_file is None:
            return
        try:
            self._dset.resize(self.written - self._file_first, axis=0)  # drop the spare room
            self._dset.attrs["image_nr_high"] = np.int64(self.written)
        finally:
            f, self._data_file, self._dset = self._data_file, None, None
            self._write_chunk = None
            f.close()

    def _check_kind(self, img: Image) -> str | None:
        """Validate a frame's shape, type and encoding (once per kind); None if writable.

        Sets ``self._direct`` (the blob goes in as it is) and ``self._total``
        (its uncompressed size) for the frames of this kind.
        """
        bits = img.bits
        dtype = np.dtype(codec.DTYPES.get(bits, np.dtype("<u4")))
        if self.shape is None:
            self.shape, self.dtype = img.shape, dtype
        elif img.shape != self.shape or dtype != self.dtype:
            return f"frame {self.written} has another shape or type"
        try:
            enc = codec.parse_encoding(img.encoding)
        except codec.CodecError as exc:
            return str(exc)
        self._direct = enc.is_bslz4 and enc.little_endian and enc.bitshuffle_bits == bits
        self._total = self.shape[0] * self.shape[1] * dtype.itemsize
        self._kind = (img.shape, img.dtype, img.encoding)
        return None

    def write(self, img: Image) -> bool:
        """Append one frame; False (and a log line) if it cannot go in this series."""
        with self.lock:
            ok = self._write(img)
            if not ok:
                self._skipped_frames.append(self.processed)
            self.processed += 1
            return ok

    def _write(self, img: Image) -> bool:
        if (img.shape, img.dtype, img.encoding) != self._kind:
            problem = self._check_kind(img)
            if problem is not None:
                self._kind = None
                self.skipped += 1
                log.warning("hdf5 %s: %s: not written", self.name, problem)
                return False
        blob = pixels = None
        if self._direct:
            blob = img.data
            try:
                total, _ = codec.bslz4_header(blob)
            except codec.CodecError as exc:
                self.skipped += 1
                log.warning("hdf5 %s: %s: not written", self.name, exc)
                return False
            if total != self._total:
                self.skipped += 1
                log.warning("hdf5 %s: bslz4 blob of the wrong size: not written", self.name)
                return False
        else:
            try:
                pixels = codec.decode_frame(img.data, img.encoding, img.shape, img.bits)
            except codec.CodecError as exc:
                self.skipped += 1
                log.warning("hdf5 %s: frame does not decode (%s): not written", self.name, exc)
                return False
        k = self.written - self._file_first
        if self._data_file is None or k >= self.frames_per_file:
            self._close_data_file()
            self._open_data_file()
            k = 0
        if k >= self._capacity:
            # grow in steps: a resize per frame costs more than the write; the
            # frames written so far are flushed first, so they are safely in the
            # file (a reader, or read_frame, sees them)
            if self._all_direct and k:
                self._data_file.flush()
                self.on_disk = self.processed
            self._capacity = min(k + GROW_FRAMES, self.frames_per_file)
            self._dset.resize(self._capacity, axis=0)
        if blob is not None:
            self._write_chunk((k, 0, 0), blob, filter_mask=0)
        else:
            self._all_direct = False
            self.on_disk = 0
            self._dset[k] = pixels
        self.written += 1
        return True

    @property
    def unflushed(self) -> bool:
        """Frames written since the last flush (not yet counted in :attr:`on_disk`)."""
        return self._all_direct and self._data_file is not None and self.on_disk < self.processed

    def flush(self) -> None:
        """Flush the data file: every frame written so far is safely in it."""
        with self.lock:
            if self._data_file is not None:
                self._data_file.flush()
                if self._all_direct:
                    self.on_disk = self.processed

    def read_frame(self, frame: int):
        """Stream frame ``frame`` as written (its bslz4 chunk), or None.

        Only frames counted in :attr:`on_disk` and written as direct chunks
        (the stream's own bslz4 blobs) can be read back."""
        with self.lock:
            if frame >= self.on_disk or not self._all_direct:
                return None
            i = bisect.bisect_left(self._skipped_frames, frame)
            if i < len(self._skipped_frames) and self._skipped_frames[i] == frame:
                return None
            index = frame - i
            n = index // self.frames_per_file
            if n >= len(self.data_paths):
                return None
            k = index - n * self.frames_per_file
            try:
                if n == len(self.data_paths) - 1 and self._data_file is not None:
                    return self._dset.id.read_direct_chunk((k, 0, 0))[1]
                path = self.data_paths[n]
                if self._reader is None or self._reader[0] != path:
                    self._close_reader()
                    self._reader = (path, h5py.File(path, "r"))
                return self._reader[1]["entry/data/data"].id.read_direct_chunk((k, 0, 0))[1]
            except (OSError, KeyError, ValueError) as exc:
                log.warning("hdf5 %s: frame %d cannot be read back: %s", self.name, frame, exc)
                return None

    def _close_reader(self) -> None:
        r, self._reader = self._reader, None
        if r is not None:
            r[1].close()

    def close(self) -> None:
        """Close the data file and the master file (always both, even after errors)."""
        with self.lock:
            self._close_locked()
            if self._all_direct:
                self.on_disk = self.processed

    def _close_locked(self) -> None:
        self._close_reader()
        try:
            self._close_data_file()
        finally:
            m, self.master = self.master, None
            if m is not None:
                try:
                    spec = m["entry/instrument/detector/detectorSpecific"]
                    spec.create_dataset("nimages_written", data=np.int64(self.written))
                    self._write_vds(m)
                finally:
                    m.close()

    def _write_vds(self, m: h5py.File) -> None:
        """``/entry/data/data`` in the master: a virtual view of every frame written."""
        if not self.written or self.shape is None:
            return
        y, x = self.shape
        layout = h5py.VirtualLayout(shape=(self.written, y, x), dtype=self.dtype)
        pos = 0
        for path in self.data_paths:
            n = min(self.frames_per_file, self.written - pos)
            if n <= 0:
                break
            src = h5py.VirtualSource(os.path.basename(path), "/entry/data/data", shape=(n, y, x))
            layout[pos : pos + n] = src
            pos += n
        m["entry/data"].create_virtual_dataset("data", layout)

    def abandon(self) -> None:
        """Close what can be closed after a write error (a full disk)."""
        self.on_disk = 0
        self._close_reader()
        for f in (self._data_file, self.master):
            if f is None:
                continue
            try:
                f.close()
            except Exception as exc:  # noqa: BLE001 - the file is lost anyway; keep going
                log.debug("closing after an error: %s", exc)
        self._data_file = self._dset = self.master = None


# -- reading frames back (replay) ---------------------------------------------------
@dataclass
class StoredFrame:
    blob: bytes
    encoding: str
    shape: tuple[int, int]
    dtype: str


def _datasets(f: h5py.File, path: str) -> list[h5py.Dataset]:
    if path in f and isinstance(f[path], h5py.Dataset):
        return [f[path]]
    group = f.get(os.path.dirname(path) or "/")
    if group is None:
        raise KeyError(f"no dataset {path} in {f.filename}")
    names = sorted(k for k in group if re.fullmatch(r"data_\d{6}", k))
    if not names:
        raise KeyError(f"no dataset {path} (nor data_NNNNNN links) in {f.filename}")
    return [group[n] for n in names]


def frame_count(path: str, dataset: str = "/entry/data/data") -> int:
    with h5py.File(path, "r") as f:
        return sum(d.shape[0] for d in _datasets(f, dataset))


def read_frames(path: str, dataset: str = "/entry/data/data") -> Iterator[StoredFrame]:
    """Frames of an HDF5 file as stream blobs.

    Bitshuffle/LZ4 data sets chunked one frame per chunk give their chunks
    unchanged (``bs<bits>-lz4<``, exactly what the detector sent); anything
    else is read through h5py and given as raw ``<`` pixels.
    """
    with h5py.File(path, "r") as f:
        for ds in _datasets(f, dataset):
            if ds.ndim != 3 or ds.dtype.kind != "u" or ds.dtype.itemsize not in (1, 2, 4):
                raise ValueError(f"{ds.name}: need (n, y, x) unsigned 8/16/32-bit pixels")
            y, x = ds.shape[1:]
            bits = ds.dtype.itemsize * 8
            dtype = f"uint{bits}"
            plist = ds.id.get_create_plist()
            filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
            # bitshuffle options: version, version, element size, block size, compression (2=LZ4)
            direct = (
                len(filters) == 1
                and filters[0][0] == BITSHUFFLE
                and len(filters[0][2]) >= 5
                and filters[0][2][4] == 2
                and ds.chunks == (1, y, x)
            )
            direct = direct and ds.dtype.byteorder in ("<", "|", "=")
            for k in range(ds.shape[0]):
                if direct:
                    mask, chunk = ds.id.read_direct_chunk((k, 0, 0))
                    if mask == 0:
                        yield StoredFrame(chunk, codec.encoding_name("bslz4", bits), (y, x), dtype)
                        continue
                pixels = np.ascontiguousarray(ds[k], dtype=ds.dtype.newbyteorder("<"))
                yield StoredFrame(pixels.tobytes(), "<", (y, x), dtype)


__all__ = ["SeriesWriter", "read_frames", "frame_count", "hdf5plugin"]
